#!/usr/bin/env python
"""Raw videos -> one HERO feature file per video (DESIGN.md 2.1 and 3).

    python scripts/extract_features.py --video_dir videos/ --output_dir features/ \\
        [--config configs/extract/default.yaml] [--device cuda] [--num_workers 4] \\
        [--modalities clip videomae hubert au transcript bert] [--openface_dir of_csv/] \\
        [--options visual.path=/models/clip-vit-large-patch14 text.language=zh]

Writes `<output_dir>/<video_id>.npz` (float16 arrays `clip`, `videomae`, `hubert`, `au`,
`bert`, the `transcript` string and `meta_*` strings) atomically, so an interrupted run never
leaves a partial file and a rerun (`--skip_existing`, the default) only does what is missing.
Failures (unreadable video, bad OpenFace CSV, ...) are written to `<output_dir>/failures.jsonl`
and the others go on; the exit code is 1 when anything failed.

Pipeline: worker processes (a torch DataLoader) decode each video in time segments, sample
frames by presentation time, and run the models' own preprocessors; the main process loads
every model once and runs them batched. Only the sampled frames of one segment per worker are
in memory at a time, whatever the video length.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402  (light; torch and transformers are imported only when extracting)

DEFAULT_CONFIG = REPO_ROOT / "configs" / "extract" / "default.yaml"
MODALITIES: tuple[str, ...] = ("clip", "videomae", "hubert", "au", "transcript", "bert")
AUDIO_MODALITIES = ("hubert", "transcript", "bert")
FAILURES_FILE = "failures.jsonl"
EXTRACTOR_VERSION = "hero-extract-1"


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extract_features.py",
        description="Extract HERO features (CLIP, VideoMAE, HuBERT, OpenFace AUs, Whisper + BERT) "
        "from raw videos into one .npz per video.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video_dir", help="folder of videos (searched recursively; id = file stem)")
    src.add_argument("--video_list", help="text file with one video path per line (relative to the list's folder)")
    p.add_argument("--output_dir", required=True, help="where <video_id>.npz and failures.jsonl go")
    p.add_argument("--config", "--cfg-path", dest="config", default=str(DEFAULT_CONFIG),
                   help="extraction YAML (default: configs/extract/default.yaml)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the config's extract.device)")
    p.add_argument("--batch_size", type=int, help="frames / clips / windows per encoder forward")
    p.add_argument("--num_workers", type=int, help="decoding worker processes (0 = decode in the main process)")
    p.add_argument("--modalities", nargs="+", choices=MODALITIES, metavar="NAME",
                   help=f"subset of {' '.join(MODALITIES)} (default: the config's extract.modalities)")
    p.add_argument("--skip_existing", action=argparse.BooleanOptionalAction, default=None,
                   help="skip videos whose feature file already holds the requested modalities (default: on)")
    p.add_argument("--openface_dir", help="folder of OpenFace 2.0 CSVs named <video_id>.csv")
    p.add_argument("--openface_bin", help="OpenFace FeatureExtraction binary, run when a video has no CSV")
    p.add_argument("--num_shards", type=int, default=1, help="split the video list into N shards (one per GPU/machine)")
    p.add_argument("--shard_id", type=int, default=0, help="which shard this process extracts (0-based)")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. visual.fps=2 text.language=zh decode.backend=pyav")
    return p


def load_extract_config(path: str, options: Sequence[str] = ()):
    """The extraction YAML with `--options` applied (unknown keys are an error naming the nearest one)."""
    from minigpt4.common.config import apply_options, load_yaml_with_includes

    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    cfg = load_yaml_with_includes(path)
    apply_options(cfg, list(options), source=str(path))
    return cfg


def list_videos(video_dir: Optional[str] = None, video_list: Optional[str] = None) -> list[tuple[str, Path]]:
    """(video_id, path) pairs, sorted by id; duplicate ids are an error (they would overwrite each other)."""
    from minigpt4.extraction.video_io import VIDEO_EXTENSIONS

    if video_dir is not None:
        root = Path(video_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"--video_dir {root} is not a folder")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    else:
        lst = Path(video_list)
        if not lst.is_file():
            raise FileNotFoundError(f"--video_list {lst} does not exist")
        paths = []
        for line in lst.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            paths.append(p if p.is_absolute() else lst.parent / p)
    seen: dict[str, Path] = {}
    for p in paths:
        vid = p.stem
        if vid in seen:
            raise ValueError(f"two videos share the id {vid!r}: {seen[vid]} and {p} (ids are file stems)")
        seen[vid] = p
    return sorted(seen.items())


# ----------------------------------------------------------------------------- decoding side (workers)


@dataclass
class DecodePlan:
    """Everything a decoding worker needs (picklable)."""

    modalities: tuple[str, ...]
    backend: str = "auto"
    segment_seconds: float = 30.0
    threads: int = 1
    short_side: Optional[int] = 224
    visual_fps: float = 1.0
    motion_fps: float = 8.0
    clip_len: int = 16
    silence_dbfs: float = -45.0
    openface_dir: Optional[str] = None
    openface_bin: Optional[str] = None
    au_min_confidence: float = 0.8
    au_fps: Optional[float] = 1.0
    au_timeout: float = 3600.0

    @property
    def want_audio(self) -> bool:
        return any(m in self.modalities for m in AUDIO_MODALITIES)


@dataclass
class Preprocessors:
    """The models' own preprocessors, run in the workers (None where the modality is off)."""

    image: Any = None  # ImagePreprocessor (CLIP)
    clip: Any = None  # ClipPreprocessor (VideoMAE)
    wave: Any = None  # WaveformPreprocessor (HuBERT)
    mel: Any = None  # LogMelPreprocessor (Whisper)


def stretch_to(frames: np.ndarray, length: int) -> np.ndarray:
    """`[n, ...]` -> `[length, ...]` by repeating frames evenly (frame i of the output is floor(i * n / length))."""
    n = len(frames)
    idx = (np.arange(length) * n) // length
    return frames[idx]


def openface_aus(video_id: str, path: Path, plan: DecodePlan, duration: float) -> tuple[Optional[np.ndarray], str, str]:
    """(au `[M, 35]` or None, au_source, note). A bad CSV or a failing binary raises OpenFaceError."""
    import shutil
    import tempfile

    from minigpt4.extraction.action_units import (
        BUILTIN_ESTIMATOR_NOTE,
        find_openface_csv,
        read_openface_csv,
        resample_track,
        run_openface,
    )

    csv_path = find_openface_csv(plan.openface_dir, video_id) if plan.openface_dir else None
    tmp_dir = None
    source = "openface_csv"
    try:
        if csv_path is None and plan.openface_bin:
            tmp_dir = tempfile.mkdtemp(prefix="hero_openface_")
            csv_path = run_openface(path, plan.openface_bin, out_dir=tmp_dir, timeout=plan.au_timeout)
            source = "openface_bin"
        if csv_path is None:
            where = f"no {video_id}.csv in {plan.openface_dir}" if plan.openface_dir else "no --openface_dir/--openface_bin"
            return None, "none", f"{where} ({BUILTIN_ESTIMATOR_NOTE})"
        track = read_openface_csv(csv_path, min_confidence=plan.au_min_confidence)
        note = f"{track.rows_total} frames, {track.rows_dropped} dropped (success 0 or confidence < {plan.au_min_confidence})"
        if track.values.shape[0] == 0:
            return None, source, f"no usable face frame ({note})"
        return resample_track(track, plan.au_fps, duration), source, note
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _to_shared(x: Optional[np.ndarray]):
    """numpy -> torch tensor, so DataLoader workers pass it through shared memory instead of a pipe."""
    if x is None:
        return None
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


def decode_video(
    video_id: str, path: Path, plan: DecodePlan, pre: Optional[Preprocessors], preprocess: bool = True
) -> Iterator[dict]:
    """Yield one dict per time segment of the video (`last` marks the final one).

    Keys: video_id, path, seg, last, info (first segment), and per requested modality:
    `clip` `[n, 3, h, w]`, `videomae` `[c, L, 3, h, w]` (the model inputs; raw uint8 frames
    when preprocess=False), `hubert` `[S']`, `mel` `[M, 3000]` or None when silent, `silent`,
    `has_audio`; on the last segment `au`, `au_source`, `au_note`. A problem yields a single
    dict with `error` (and last=True) instead, so the main process records it and goes on.
    """
    from minigpt4.extraction.action_units import OpenFaceError
    from minigpt4.extraction.encoders import is_silent
    from minigpt4.extraction.video_io import VideoDecodeError, VideoSource, sample_times

    base = {"video_id": video_id, "path": str(path)}
    mods = plan.modalities
    try:
        src = VideoSource(path, backend=plan.backend, short_side=plan.short_side,
                          want_audio=plan.want_audio, num_threads=plan.threads)
    except VideoDecodeError as exc:
        yield {**base, "error": f"decode: {exc.problem}", "last": True}
        return
    except Exception as exc:  # anything else a broken file can raise inside a decoder
        yield {**base, "error": f"decode: {type(exc).__name__}: {exc}", "last": True}
        return
    try:
        info = src.info
        dur = info.duration
        vis_t = sample_times(dur, plan.visual_fps) if "clip" in mods else np.zeros(0)
        mot_t = sample_times(dur, plan.motion_fps) if "videomae" in mods else np.zeros(0)
        seg_len = float(plan.segment_seconds)
        n_seg = max(1, int(math.ceil(dur / seg_len - 1e-9)))
        carry: list[np.ndarray] = []
        for k in range(n_seg):
            t0, t1, last = k * seg_len, (k + 1) * seg_len, k == n_seg - 1
            v = vis_t[(vis_t >= t0) & ((vis_t < t1) | last)]
            m = mot_t[(mot_t >= t0) & ((mot_t < t1) | last)]
            seg: dict[str, Any] = {**base, "seg": k, "last": last}
            if k == 0:
                seg["info"] = asdict(info)
            if len(v) or len(m):
                times = np.concatenate([v, m])
                order = np.argsort(times, kind="stable")
                frames = np.empty((len(times),) + (info.height, info.width, 3), np.uint8)
                frames[order] = src.frames_at(times[order])  # one pass in time order (streaming backends)
                vf, mf = frames[: len(v)], frames[len(v):]
            else:
                vf = mf = np.zeros((0, info.height, info.width, 3), np.uint8)
            if "clip" in mods:
                seg["clip"] = _to_shared(pre.image(vf) if preprocess else vf)
            if "videomae" in mods:
                carry.extend(mf)
                full = len(carry) // plan.clip_len
                clips = [np.stack(carry[i * plan.clip_len:(i + 1) * plan.clip_len]) for i in range(full)]
                carry = carry[full * plan.clip_len:]
                if last and carry:  # the tail (or a video shorter than one clip): repeat frames evenly
                    clips.append(stretch_to(np.stack(carry), plan.clip_len))
                    carry = []
                arr = np.stack(clips) if clips else np.zeros((0, plan.clip_len, info.height, info.width, 3), np.uint8)
                seg["videomae"] = _to_shared(pre.clip(arr) if (preprocess and len(arr)) else arr)
            seg["has_audio"] = info.has_audio
            if src.audio is not None:
                # Audio is cut to the video's time span: a long tail after the last frame would
                # overflow the last Whisper window and the segment memory bound.
                wave = src.audio.read_until(dur if last else t1)
                silent = is_silent(wave, plan.silence_dbfs)
                seg["silent"] = silent
                seg["audio_samples"] = int(wave.size)
                if "hubert" in mods and wave.size:
                    seg["hubert"] = _to_shared(pre.wave(wave) if preprocess else wave)
                if ("transcript" in mods or "bert" in mods) and not silent:
                    seg["mel"] = _to_shared(pre.mel(wave) if preprocess else wave)
            if last and "au" in mods:
                au, seg["au_source"], seg["au_note"] = openface_aus(video_id, path, plan, dur)
                seg["au"] = _to_shared(au)
            yield seg
    except (VideoDecodeError, OpenFaceError) as exc:
        stage = "au" if isinstance(exc, OpenFaceError) else "decode"
        yield {**base, "error": f"{stage}: {exc.problem}", "last": True}
    except Exception as exc:  # a decoder or preprocessor failing on this file must not stop the run
        yield {**base, "error": f"decode: {type(exc).__name__}: {exc}", "last": True}
    finally:
        src.close()


def _worker_init(_: int) -> None:
    """One thread per worker: the parallelism comes from the processes."""
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def _identity(x):
    return x


def make_segment_loader(jobs: list[tuple[str, Path]], plan: DecodePlan, pre: Preprocessors, num_workers: int):
    """A DataLoader over decoded segments; videos are dealt round-robin to the workers."""
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class SegmentStream(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            mine = jobs if info is None else jobs[info.id :: info.num_workers]
            for vid, path in mine:
                yield from decode_video(vid, path, plan, pre)

    kwargs: dict[str, Any] = dict(batch_size=None, num_workers=num_workers, collate_fn=_identity)
    if num_workers > 0:
        kwargs.update(prefetch_factor=2, worker_init_fn=_worker_init, in_order=False)
    return DataLoader(SegmentStream(), **kwargs)


# ----------------------------------------------------------------------------- encoding side (main process)


@dataclass
class VideoState:
    """One video on the encoding side: outputs gathered segment by segment.

    `outstanding` counts inputs still waiting in a BatchQueue; the file is written once the
    last segment has arrived (`complete`) and nothing is outstanding.
    """

    video_id: str
    path: str
    info: dict = field(default_factory=dict)
    parts: dict[str, list] = field(default_factory=dict)
    windows: int = 0  # non-silent audio windows sent to Whisper
    has_audio: bool = False
    audio_samples: int = 0
    au: Any = None
    au_source: str = ""
    au_note: str = ""
    outstanding: int = 0
    complete: bool = False
    error: Optional[str] = None


class BatchQueue:
    """Inputs of several videos gathered into full encoder batches; outputs go back in order.

    Short clips give a handful of frames each: batching across videos keeps a GPU (or the
    per-call overhead on a CPU) busy with `batch_size` items per forward. Each video's pieces
    keep their order, so `parts[name]` concatenates to the video's sequence.
    """

    def __init__(self, name: str, encode, batch_size: int) -> None:
        self.name, self.encode, self.batch_size = name, encode, max(1, batch_size)
        self.items: list[tuple[VideoState, Any]] = []
        self.size = 0

    def add(self, st: VideoState, x) -> None:
        if x is None or len(x) == 0:
            return
        self.items.append((st, x))
        self.size += len(x)
        st.outstanding += 1
        if self.size >= self.batch_size:
            self.run()

    def run(self) -> None:
        import torch

        if not self.items:
            return
        items, self.items, self.size = self.items, [], 0
        try:
            xs = [x for _, x in items]
            out = self.encode(torch.cat(xs) if isinstance(xs[0], torch.Tensor) else np.concatenate(xs))
        except Exception as exc:  # the whole shared batch failed: every video in it fails
            for st, _ in items:
                st.outstanding -= 1
                st.error = st.error or f"encode ({self.name}): {type(exc).__name__}: {exc}"
            return
        pos = 0
        for st, x in items:
            st.parts.setdefault(self.name, []).append(out[pos : pos + len(x)])
            pos += len(x)
            st.outstanding -= 1


class EncoderSet:
    """The encoders for the requested modalities, loaded once per process, fed through BatchQueues."""

    def __init__(self, cfg, modalities: Sequence[str], device: str, precision: str, batch_size: int) -> None:
        from minigpt4.extraction import encoders as fx

        self.cfg = cfg
        self.modalities = tuple(modalities)
        self.clip = self.videomae = self.hubert = self.whisper = self.bert = None
        self.queues: dict[str, BatchQueue] = {}
        if "clip" in modalities:
            self.clip = fx.CLIPFrameEncoder(cfg.visual.path, device, precision, batch_size, output=cfg.visual.output)
            self.queues["clip"] = BatchQueue("clip", self.clip.encode, batch_size)
        if "videomae" in modalities:
            clips_per_batch = max(1, batch_size // 4)  # a clip is 16 frames
            self.videomae = fx.VideoMAEClipEncoder(cfg.motion.path, device, precision, clips_per_batch)
            self.queues["videomae"] = BatchQueue("videomae", self.videomae.encode, clips_per_batch)
        if "hubert" in modalities:
            self.hubert = fx.HuBERTEncoder(cfg.audio.path, device, precision, num_layers=int(cfg.audio.num_layers))
        self.audio_fps = None if cfg.audio.get("fps") is None else float(cfg.audio.fps)
        if "transcript" in modalities or "bert" in modalities:
            w = cfg.text.whisper
            self.whisper = fx.WhisperTranscriber(
                w.path, device, precision, batch_size, language=cfg.text.language, task=w.task,
                max_new_tokens=int(w.max_new_tokens), num_beams=int(w.num_beams),
            )
            self.queues["whisper"] = BatchQueue("whisper", self.whisper.transcribe, batch_size)
        if "bert" in modalities:
            self.bert = fx.BertTextEncoder(bert_path(cfg), device, precision, batch_size, max_length=int(cfg.text.bert.max_length))

    @property
    def hubert_fps(self) -> float:
        """The stored HuBERT rate: `audio.fps` window means, or HuBERT's own rate when that is
        null or no lower (frames are never upsampled)."""
        rate = self.hubert.frame_rate
        return rate if self.audio_fps is None else min(self.audio_fps, rate)

    def consume(self, st: VideoState, seg: dict) -> None:
        """Queue a segment's inputs (CLIP, VideoMAE, Whisper) and run HuBERT on its audio."""
        if "info" in seg:
            st.info = seg["info"]
        st.has_audio = bool(seg.get("has_audio", False))
        st.audio_samples += int(seg.get("audio_samples", 0))
        if "clip" in self.queues:
            self.queues["clip"].add(st, seg.get("clip"))
        if "videomae" in self.queues:
            self.queues["videomae"].add(st, seg.get("videomae"))
        if self.hubert is not None and seg.get("hubert") is not None:
            # Segments differ in length and padding would change HuBERT's output: one forward each.
            # The segment's audio starts where the previous ones' samples end (for pooling).
            start = (st.audio_samples - int(seg.get("audio_samples", 0))) / self.hubert.sample_rate
            st.parts.setdefault("hubert", []).append(self.hubert.encode(seg["hubert"]))
            st.parts.setdefault("hubert_start", []).append(start)
        if "whisper" in self.queues and seg.get("mel") is not None:
            st.windows += 1
            self.queues["whisper"].add(st, seg["mel"][None])
        if seg.get("last"):
            st.complete = True
            if "au_source" in seg:
                st.au, st.au_source, st.au_note = seg.get("au"), seg["au_source"], seg["au_note"]

    def drain(self) -> None:
        """Run every queue, full or not (end of input, or to free waiting videos)."""
        for q in self.queues.values():
            q.run()

    def finalize(self, st: VideoState) -> tuple[dict[str, np.ndarray], Optional[str], dict[str, str]]:
        """BERT on the transcript, then the arrays, transcript and meta of the file."""
        arrays: dict[str, np.ndarray] = {}
        absent: list[str] = []
        for key in ("clip", "videomae", "hubert"):
            if key in self.modalities:
                if st.parts.get(key):
                    arrays[key] = np.concatenate(st.parts[key]).astype(np.float32)
                else:
                    absent.append(f"{key}: " + ("no audio track" if key == "hubert" else "no frames"))
        if "hubert" in arrays and self.hubert_fps < self.hubert.frame_rate:
            from minigpt4.extraction.resample import window_means

            rate = self.hubert.frame_rate
            times = np.concatenate([s + np.arange(len(p)) / rate for p, s in zip(st.parts["hubert"], st.parts["hubert_start"])])
            duration = float((st.info or {}).get("duration", 0.0)) or None
            arrays["hubert"] = window_means(arrays["hubert"], times, self.hubert_fps, duration)
        if "au" in self.modalities:
            if st.au is not None and len(st.au):
                arrays["au"] = np.asarray(st.au, dtype=np.float32)
            else:
                absent.append("au: " + st.au_note.split(" (")[0])
        audio_state = "none" if not st.has_audio else ("present" if st.audio_samples else "empty")
        transcript: Optional[str] = None
        if self.whisper is not None:
            if not st.has_audio:
                absent.append("transcript: no audio track")
            elif not st.windows:
                transcript = ""
                audio_state = "silent"
            else:
                texts = [t for part in st.parts.get("whisper", []) for t in part]
                transcript = " ".join(t for t in texts if t).strip()
        if self.bert is not None:
            vec = self.bert.encode(transcript) if transcript else None
            if vec is not None:
                arrays["bert"] = vec
            else:
                absent.append("bert: " + ("no audio track" if transcript is None else "empty transcript"))
        meta = self.meta(st, audio_state)
        if absent:
            meta["absent"] = "; ".join(absent)
        return arrays, transcript, meta

    def meta(self, st: VideoState, audio_state: str) -> dict[str, str]:
        cfg = self.cfg
        info = st.info or {}
        meta = {
            "extractor": EXTRACTOR_VERSION,
            "modalities": ",".join(self.modalities),
            "source": st.path,
            "duration": f"{float(info.get('duration', 0.0)):.3f}",
            "video_fps": f"{float(info.get('avg_fps', 0.0)):.3f}",
            "decoder": str(info.get("backend", "")),
            "audio": audio_state,
        }
        if self.clip is not None:
            meta.update(clip_model=str(cfg.visual.path), clip_fps=str(cfg.visual.fps), clip_output=str(cfg.visual.output))
        if self.videomae is not None:
            meta.update(videomae_model=str(cfg.motion.path), videomae_fps=str(cfg.motion.fps),
                        videomae_clip_len=str(self.videomae.clip_len))
        if self.hubert is not None:
            meta.update(hubert_model=str(cfg.audio.path), hubert_layers=str(cfg.audio.num_layers),
                        hubert_fps=f"{self.hubert_fps:g}")
        if self.whisper is not None:
            meta.update(whisper_model=str(cfg.text.whisper.path), language=str(cfg.text.language))
        if self.bert is not None:
            meta.update(bert_model=self.bert.path)
        if "au" in self.modalities:
            meta.update(au_source=st.au_source or "none", au_note=st.au_note)
        return meta


def bert_path(cfg) -> str:
    """The BERT for the configured language (text.bert.path_by_language), else text.bert.path."""
    by_lang = cfg.text.bert.get("path_by_language") or {}
    lang = cfg.text.language
    return str(by_lang[lang]) if lang is not None and lang in by_lang else str(cfg.text.bert.path)


def build_plan(cfg, modalities: Sequence[str]) -> tuple[DecodePlan, Preprocessors]:
    """Decode settings and the models' preprocessors (light: no weights are loaded here)."""
    from transformers import AutoConfig

    from minigpt4.extraction import encoders as fx

    pre = Preprocessors()
    sides = []
    clip_len = 16
    if "clip" in modalities:
        pre.image = fx.ImagePreprocessor(cfg.visual.path)
        sides.append(pre.image.short_side)
    if "videomae" in modalities:
        pre.clip = fx.ClipPreprocessor(cfg.motion.path)
        sides.append(pre.clip.short_side)
        clip_len = int(AutoConfig.from_pretrained(cfg.motion.path).num_frames)
    if "hubert" in modalities:
        pre.wave = fx.WaveformPreprocessor(cfg.audio.path)
    if "transcript" in modalities or "bert" in modalities:
        pre.mel = fx.LogMelPreprocessor(cfg.text.whisper.path)
    seg = float(cfg.decode.segment_seconds)
    if seg <= 0:
        raise ValueError(f"decode.segment_seconds must be > 0, got {seg}")
    if pre.mel is not None and seg > pre.mel.window_seconds:
        raise ValueError(f"decode.segment_seconds={seg} exceeds Whisper's {pre.mel.window_seconds:.0f} s window")
    for key in ("visual", "motion"):
        if float(cfg[key].fps) <= 0:
            raise ValueError(f"{key}.fps must be > 0, got {cfg[key].fps}")
    if cfg.audio.get("fps") is not None and float(cfg.audio.fps) <= 0:
        raise ValueError(f"audio.fps must be > 0 or null, got {cfg.audio.fps}")
    au_fps = cfg.au.fps if cfg.au.fps is not None else cfg.visual.fps
    plan = DecodePlan(
        modalities=tuple(modalities),
        backend=str(cfg.decode.backend),
        segment_seconds=seg,
        threads=int(cfg.decode.threads),
        short_side=max(sides) if sides else None,
        visual_fps=float(cfg.visual.fps),
        motion_fps=float(cfg.motion.fps),
        clip_len=clip_len,
        silence_dbfs=float(cfg.text.whisper.silence_dbfs),
        openface_dir=str(cfg.au.openface_dir) if cfg.au.openface_dir else None,
        openface_bin=str(cfg.au.openface_bin) if cfg.au.openface_bin else None,
        au_min_confidence=float(cfg.au.min_confidence),
        au_fps=float(au_fps) if au_fps is not None else None,
        au_timeout=float(cfg.au.timeout),
    )
    return plan, pre


def existing_covers(path: Path, modalities: Sequence[str]) -> bool:
    """True when `path` is a readable feature file made for (at least) these modalities."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "meta_modalities" not in z.files:
                    return False
                have = str(z["meta_modalities"][()])
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as fh:
                have = (fh.metadata() or {}).get("meta_modalities", "")
    except Exception:  # unreadable: extract it again
        return False
    return set(modalities) <= set(have.split(","))


# ----------------------------------------------------------------------------- driver


class FailureLog:
    """`failures.jsonl`: one JSON object per failed video, flushed as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fh = None

    def add(self, video_id: str, video: str, reason: str) -> None:
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8")
        self._fh.write(json.dumps({"video_id": video_id, "video": video, "reason": reason}) + "\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def run(args: argparse.Namespace) -> int:
    """Extract every listed video; returns the process exit code (1 when anything failed)."""
    from minigpt4.common.config import ConfigError

    try:
        cfg = load_extract_config(args.config, args.options)
        if args.openface_dir is not None:
            cfg.au.openface_dir = args.openface_dir
        if args.openface_bin is not None:
            cfg.au.openface_bin = args.openface_bin
        modalities = tuple(args.modalities or cfg.extract.modalities)
        bad = [m for m in modalities if m not in MODALITIES]
        if bad:
            raise ValueError(f"unknown modality {bad[0]!r}; choose from {', '.join(MODALITIES)}")
        if not 0 <= args.shard_id < args.num_shards:
            raise ValueError(f"--shard_id must be in 0..{args.num_shards - 1}, got {args.shard_id}")
        jobs = list_videos(args.video_dir, args.video_list)[args.shard_id :: args.num_shards]
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"extract_features: error: {exc}", file=sys.stderr)
        return 2
    device = args.device or str(cfg.extract.device)
    batch_size = int(args.batch_size or cfg.extract.batch_size)
    num_workers = int(args.num_workers if args.num_workers is not None else cfg.extract.num_workers)
    skip = bool(cfg.extract.skip_existing if args.skip_existing is None else args.skip_existing)
    suffix = str(cfg.extract.output_suffix)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures_path = out_dir / FAILURES_FILE
    failures_path.unlink(missing_ok=True)  # this run's failures only

    todo = [(vid, p) for vid, p in jobs if not (skip and existing_covers(out_dir / f"{vid}{suffix}", modalities))]
    skipped = len(jobs) - len(todo)
    start = time.time()
    failures = FailureLog(failures_path)
    done = 0
    interrupted = False
    loader_error: Optional[str] = None
    if todo:
        import torch
        import transformers
        from tqdm import tqdm

        transformers.logging.set_verbosity_error()  # keep the progress bar readable
        transformers.logging.disable_progress_bar()

        from minigpt4.datasets.feature_io import write_features
        from minigpt4.extraction.encoders import resolve_device

        if num_workers > 0 and resolve_device(device).type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # Leave the decoding workers their cores: an oversubscribed OpenMP pool spins and
            # made a 2-core run 2x slower than no workers at all.
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            torch.set_num_threads(max(1, cores - num_workers))
        plan, pre = build_plan(cfg, modalities)
        loader = make_segment_loader(todo, plan, pre, num_workers)
        segments = iter(loader)  # workers start decoding while the models load
        encoders = EncoderSet(cfg, modalities, device, str(cfg.extract.precision), batch_size)
        states: dict[str, VideoState] = {}  # videos with a segment seen and no file written yet
        dead: set[str] = set()  # failed in the main process: ignore their remaining segments
        bar = tqdm(total=len(todo), desc="extract", unit="video", dynamic_ncols=True, mininterval=1.0)

        def fail(vid: str, path: str, reason: str) -> None:
            failures.add(vid, path, reason)
            bar.update(1)
            bar.set_postfix(done=done, failed=failures.count, refresh=False)

        def finish_ready(force: bool = False) -> None:
            """Write every complete video whose queued inputs are all encoded."""
            nonlocal done
            if force:
                encoders.drain()
            for vid in [v for v, st in states.items() if st.complete and (st.outstanding == 0 or st.error)]:
                st = states.pop(vid)
                if st.error:
                    dead.add(vid)
                    fail(vid, st.path, st.error)
                    continue
                try:
                    arrays, text, meta = encoders.finalize(st)
                    if not arrays and text is None:
                        raise RuntimeError(f"nothing to write: {meta.get('absent', 'no modality extracted')}")
                    write_features(out_dir / f"{vid}{suffix}", arrays, transcript=text, meta=meta)
                except Exception as exc:  # one bad video must not stop the others
                    fail(vid, st.path, f"encode: {type(exc).__name__}: {exc}")
                    continue
                done += 1
                bar.update(1)
                bar.set_postfix(done=done, failed=failures.count, refresh=False)

        try:
            for seg in segments:
                vid = seg["video_id"]
                if vid in dead:
                    continue
                if "error" in seg:
                    st = states.pop(vid, None)
                    if st is not None:  # drop what it had queued with the others
                        st.error = seg["error"]
                    fail(vid, seg["path"], seg["error"])
                    continue
                st = states.setdefault(vid, VideoState(vid, seg["path"]))
                try:
                    encoders.consume(st, seg)
                except Exception as exc:  # OOM, odd shapes, ...: record it and go on
                    st.error = f"encode: {type(exc).__name__}: {exc}"
                    st.complete = True
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                if seg["last"] or st.error:
                    # Waiting videos hold only outputs; cap them so a stalled queue cannot grow without end.
                    finish_ready(force=sum(s.complete for s in states.values()) > max(8, batch_size))
            finish_ready(force=True)
        except KeyboardInterrupt:
            interrupted = True
        except Exception as exc:  # the loader itself broke (e.g. a decoder crashed a worker process)
            loader_error = f"{type(exc).__name__}: {exc}"
        finally:
            bar.close()
            failures.close()
            del segments
    elapsed = time.time() - start
    status = "interrupted: " if interrupted else ""
    print(f"extract_features: {status}{done} done, {skipped} skipped, {failures.count} failed "
          f"({len(jobs)} videos, {elapsed:.1f} s) -> {out_dir}" +
          (f"; see {failures_path}" if failures.count else ""))
    if loader_error:
        print(f"extract_features: error: decoding stopped early ({loader_error}); finished files are kept, "
              "rerun the same command to extract the rest", file=sys.stderr)
        return 1
    if interrupted:
        return 130
    return 1 if failures.count else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
