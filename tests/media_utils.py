"""Test-only media: a variable-frame-rate video and OpenFace 2.0 CSVs.

The videos and tiny encoders that the benchmark shares live in minigpt4/extraction/synthetic.py.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


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


# ----------------------------------------------------------------------------- OpenFace output


def openface_header() -> list[str]:
    """The column layout of OpenFace 2.0 FeatureExtraction (gaze, pose, 2D landmarks, AUs)."""
    from minigpt4.extraction.action_units import AU_INTENSITY_COLUMNS, AU_PRESENCE_COLUMNS

    cols = ["frame", "face_id", "timestamp", "confidence", "success"]
    cols += [f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"] + ["gaze_angle_x", "gaze_angle_y"]
    cols += [f"pose_{k}" for k in ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")]
    cols += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    cols += list(AU_INTENSITY_COLUMNS) + list(AU_PRESENCE_COLUMNS)
    return cols


def write_openface_csv(path: Path, rows: list[dict]) -> Path:
    """Rows give frame/face_id/timestamp/confidence/success and optional `aus` [35]; the rest is filler."""
    from minigpt4.extraction.action_units import AU_COLUMNS, AU_DIM

    header = openface_header()
    lines = [", ".join(header)]  # OpenFace separates with ", "
    rng = np.random.default_rng(1)
    for r in rows:
        aus = r.get("aus", np.zeros(AU_DIM))
        vals = {c: v for c, v in zip(AU_COLUMNS, aus)}
        vals.update({k: r[k] for k in ("frame", "face_id", "timestamp", "confidence", "success")})
        cells = [f"{vals[c]:g}" if c in vals else f"{rng.normal():.3f}" for c in header]
        lines.append(", ".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- real-format damage


def write_av_video(path: Path, seconds: float = 8.0, fps: int = 25, size: tuple[int, int] = (64, 48),
                   audio_codec: Optional[str] = "aac", audio_rate: int = 16000, faststart: bool = False,
                   seed: int = 0) -> Path:
    """A video in the container its suffix names (.mp4 / .mkv / .avi), MPEG-4 frames and a tone, all
    written by PyAV; `faststart` moves an mp4's index to the front (as streaming sites serve it)."""
    import av

    from minigpt4.extraction.synthetic import make_frames, tone

    path = Path(path)
    frames = make_frames(int(round(seconds * fps)), size=size, seed=seed)
    wave = tone(seconds, sr=audio_rate)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = out.add_stream(audio_codec, rate=audio_rate) if audio_codec else None
        if audio is not None:
            audio.layout = "mono"
        done = 0  # audio samples encoded so far: interleave audio with the frames, as a real muxer gets them
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[..., ::-1]), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
            while audio is not None and done < min(len(wave), (i + 1) * audio_rate // fps):
                out.mux(audio.encode(_audio_frame(audio, wave[done:done + 1024], audio_rate, done)))
                done += len(wave[done:done + 1024])
        out.mux(video.encode())
        if audio is not None:
            out.mux(audio.encode())
    return path


def _audio_frame(stream, piece: np.ndarray, rate: int, pts: int):
    import av

    fmt = stream.codec_context.format.name
    data = (piece[None] * 32767).astype(np.int16) if fmt.startswith("s16") else piece[None].astype(np.float32)
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
    frame.sample_rate, frame.pts = rate, pts
    return frame


def cut_file(src: Path, dst: Path, fraction: float) -> Path:
    """The first `fraction` of `src`'s bytes (a download or copy that stopped part-way)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def damage_audio_packets(src: Path, dst: Path, count: int, seed: int = 0) -> Path:
    """A copy of `src` whose first `count` non-empty audio packets are random bytes (the container intact)."""
    import av

    with av.open(str(src)) as c:
        spans = [(p.pos, p.size) for p in c.demux(audio=0) if p.size and p.pos is not None][:count]
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    for pos, size in spans:
        data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)
