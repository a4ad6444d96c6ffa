"""Small real media files for tests: OpenCV writes the frames, PyAV muxes the audio.

Everything is generated from a seed, so tests are deterministic. Speech comes from
`espeak-ng` when it is on PATH (Debian package `espeak-ng`), otherwise a tone stands in.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SAMPLE_RATE = 16000


def make_frames(n: int, size: tuple[int, int] = (160, 120), seed: int = 0) -> np.ndarray:
    """`n` BGR uint8 frames `[n, H, W, 3]` (size is (W, H)): a square moving over a textured ground.

    Each frame differs from the previous one, so a decoder that returns the wrong frame for a
    timestamp is visible in the pixels (frame i has its index encoded in the top-left block).
    """
    w, h = size
    rng = np.random.default_rng(seed)
    ground = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    side = max(8, min(w, h) // 4)
    for i in range(n):
        f = ground.copy()
        x = int((w - side) * (0.5 + 0.5 * np.sin(i / 5.0)))
        y = int((h - side) * (0.5 + 0.5 * np.cos(i / 7.0)))
        f[y : y + side, x : x + side] = (40 + (i * 37) % 200, 255 - (i * 13) % 200, 200)
        f[:16, :16] = min(255, 8 * i) if i < 32 else 255  # frame-index marker (brightness)
        out[i] = f
    return out


def write_video_cv2(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Write constant-frame-rate MPEG-4 video (no audio) with OpenCV's VideoWriter."""
    import cv2

    path = Path(path)
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot open a VideoWriter for {path}")
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def write_vfr_video(path: Path, frames: np.ndarray, timestamps: Sequence[float]) -> Path:
    """Write variable-frame-rate video: frame i is shown from `timestamps[i]` seconds (PyAV, ms pts)."""
    import av

    path = Path(path)
    h, w = frames.shape[1:3]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=1000)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for f, t in zip(frames, timestamps):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[..., ::-1]), format="rgb24")
            frame.pts = int(round(t * 1000))
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def tone(seconds: float, freq: float = 440.0, sr: int = SAMPLE_RATE, amplitude: float = 0.3) -> np.ndarray:
    """A float32 sine `[seconds * sr]`."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speech(text: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """`text` spoken by espeak-ng as float32 mono at `sr` (a tone of similar length if espeak-ng is missing)."""
    if not have_espeak():
        return tone(max(1.0, 0.08 * len(text)), sr=sr)
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        audio, native = sf.read(str(wav), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if native != sr:
        import librosa

        audio = librosa.resample(audio, orig_sr=native, target_sr=sr).astype(np.float32)
    return audio


def mux_audio(video_path: Path, audio: np.ndarray, out_path: Path, sr: int = SAMPLE_RATE, codec: str = "aac") -> Path:
    """Copy the video stream of `video_path` into `out_path` and add `audio` (float32 mono) as a track."""
    import av

    video_path, out_path = Path(video_path), Path(out_path)
    with av.open(str(video_path)) as src, av.open(str(out_path), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream(codec, rate=sr)
        aout.layout = "mono"
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            dst.mux(packet)
        pcm = np.clip(audio, -1.0, 1.0)
        chunk = 1024
        fmt = aout.codec_context.format.name  # e.g. "fltp" for aac
        for start in range(0, len(pcm), chunk):
            piece = pcm[start : start + chunk][None, :]
            if fmt.startswith("s16"):
                frame = av.AudioFrame.from_ndarray((piece * 32767).astype(np.int16), format=fmt, layout="mono")
            else:
                frame = av.AudioFrame.from_ndarray(piece.astype(np.float32), format=fmt, layout="mono")
            frame.sample_rate = sr
            frame.pts = start
            for packet in aout.encode(frame):
                dst.mux(packet)
        for packet in aout.encode():
            dst.mux(packet)
    return out_path


def make_video(
    path: Path,
    seconds: float = 3.0,
    fps: float = 25.0,
    size: tuple[int, int] = (160, 120),
    audio: Optional[str] = None,
    text: str = "I am so happy to see you today",
    seed: int = 0,
) -> Path:
    """A real `.mp4` of `seconds` at `fps`; `audio` is None, "tone", "speech" or "silence"."""
    path = Path(path)
    n = int(round(seconds * fps))
    frames = make_frames(n, size=size, seed=seed)
    if audio is None:
        return write_video_cv2(path, frames, fps)
    silent = path.with_name(f".{path.stem}.noaudio.mp4")
    write_video_cv2(silent, frames, fps)
    if audio == "tone":
        wave = tone(seconds)
    elif audio == "silence":
        wave = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    elif audio == "speech":
        wave = speech(text)
        total = int(seconds * SAMPLE_RATE)
        wave = np.pad(wave, (0, max(0, total - len(wave))))[: max(total, len(wave))]
    else:
        raise ValueError(f"audio must be None, 'tone', 'speech' or 'silence', got {audio!r}")
    try:
        mux_audio(silent, wave, path)
    finally:
        silent.unlink(missing_ok=True)
    return path
