"""The decoding side of extraction, run in worker processes: video -> model inputs, segment by segment.

Workers (a torch DataLoader) decode each video in time segments, sample frames by
presentation time and run the models' own preprocessors, so the main process only runs the
networks. Only the sampled frames of one segment per worker are in memory at a time,
whatever the video length.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np

from minigpt4.extraction.config import AUDIO_MODALITIES, CLIP_FRAME_MODALITIES
from minigpt4.extraction.media_checks import DEFAULT_TOLERANCE

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from torch.utils.data import DataLoader

    from minigpt4.extraction.flow import FlowSettings
    from minigpt4.extraction.prosody import ProsodySettings


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
    tolerance: float = DEFAULT_TOLERANCE  # decode.truncation_tolerance: seconds a file may hold less than it declares
    prosody: Optional["ProsodySettings"] = None  # set when `prosody` is requested (measured in the workers)
    flow: Optional["FlowSettings"] = None  # set when `flow` is requested

    @property
    def want_audio(self) -> bool:
        """Whether any requested modality needs the audio track (else it is never decoded)."""
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


def signal_settings(cfg: "DictConfig", modalities: Sequence[str]) -> tuple[Optional["ProsodySettings"], Optional["FlowSettings"]]:
    """The checked `prosody` and `flow` settings of the requested ones (a bad value is a ValueError)."""
    from minigpt4.extraction.flow import FlowSettings
    from minigpt4.extraction.prosody import ProsodySettings

    return (ProsodySettings.from_config(cfg) if "prosody" in modalities else None,
            FlowSettings.from_config(cfg) if "flow" in modalities else None)


def openface_aus(video_id: str, path: Path, plan: DecodePlan, duration: float) -> tuple[Optional[np.ndarray], str, str, str]:
    """(au `[M, 35]` or None, au_source, note, windows). A bad CSV or a failing binary raises OpenFaceError.

    Windows without a usable face are left out of `au`; `windows` then lists the kept windows'
    indices ("0-9,15-30", `meta_au_windows`) so each row's time stays known ("" when none is missing)."""
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
            return None, "none", f"{where} ({BUILTIN_ESTIMATOR_NOTE})", ""
        track = read_openface_csv(csv_path, min_confidence=plan.au_min_confidence)
        note = f"{track.rows_total} frames, {track.rows_dropped} dropped (success 0 or confidence < {plan.au_min_confidence})"
        if track.values.shape[0] == 0:
            return None, source, f"no usable face frame ({note})", ""
        au = resample_track(track, plan.au_fps, duration)
        windows = ""
        if plan.au_fps is not None and len(au) < max(1, int(math.ceil(duration * plan.au_fps - 1e-6))):
            from minigpt4.extraction.resample import index_ranges, kept_windows

            windows = index_ranges(kept_windows(track.timestamps, plan.au_fps, duration))
        return au, source, note, windows
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _to_shared(x: Optional[np.ndarray]) -> Optional["torch.Tensor"]:
    """numpy -> torch tensor, so DataLoader workers pass it through shared memory instead of a pipe."""
    if x is None:
        return None
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


def decode_video(
    video_id: str, path: Path, plan: DecodePlan, pre: Optional[Preprocessors], preprocess: bool = True,
    measure: Optional[bool] = None,
) -> Iterator[dict]:
    """Yield one dict per time segment of the video (`last` marks the final one).

    Keys: video_id, path, seg, last, info (first segment), and per requested modality:
    `clip` `[n, 3, h, w]`, `videomae` `[c, L, 3, h, w]` (the model inputs; raw uint8 frames
    when preprocess=False), `hubert` `[S']`, `mel` `[M, 3000]` or None when silent, `silent`,
    `has_audio`, the measured `prosody` `[w, 3]` and `flow` `[s, 2]` rows of the segment (when
    `measure`, which defaults to `preprocess`); on the last segment `au`, `au_source`, `au_note`.
    A problem yields a single dict with `error` (and last=True) instead, so the main process
    records it and goes on. Frames that several modalities sample at one instant are decoded once.
    """
    from minigpt4.extraction.action_units import OpenFaceError
    from minigpt4.extraction.encoders import is_silent
    from minigpt4.extraction.video_io import VideoDecodeError, VideoSource, sample_times

    base = {"video_id": video_id, "path": str(path)}
    mods = plan.modalities
    try:
        src = VideoSource(path, backend=plan.backend, short_side=plan.short_side,
                          want_audio=plan.want_audio, num_threads=plan.threads, tolerance=plan.tolerance)
    except VideoDecodeError as exc:
        yield {**base, "error": f"decode: {exc.problem}", "last": True}
        return
    except Exception as exc:  # anything else a broken file can raise inside a decoder
        yield {**base, "error": f"decode: {type(exc).__name__}: {exc}", "last": True}
        return
    try:
        info = src.info
        dur = info.duration
        clip_frames = any(m in mods for m in CLIP_FRAME_MODALITIES)
        vis_t = sample_times(dur, plan.visual_fps) if clip_frames else np.zeros(0)
        mot_t = sample_times(dur, plan.motion_fps) if "videomae" in mods else np.zeros(0)
        flo_t = sample_times(dur, plan.flow.fps) if plan.flow is not None else np.zeros(0)
        measure = preprocess if measure is None else measure
        flow = prosody = None  # the measured signals are worker-side CPU work, like decoding
        if measure and plan.flow is not None:
            from minigpt4.extraction.flow import FlowTracker

            flow = FlowTracker(plan.flow)
        if measure and plan.prosody is not None:
            from minigpt4.extraction.prosody import ProsodyTracker

            prosody = ProsodyTracker(plan.prosody)
        seg_len = float(plan.segment_seconds)
        n_seg = max(1, int(math.ceil(dur / seg_len - 1e-9)))
        carry: list[np.ndarray] = []
        for k in range(n_seg):
            t0, t1, last = k * seg_len, (k + 1) * seg_len, k == n_seg - 1
            picked = [t[(t >= t0) & ((t < t1) | last)] for t in (vis_t, mot_t, flo_t)]
            seg: dict[str, Any] = {**base, "seg": k, "last": last}
            if k == 0:
                seg["info"] = asdict(info)
            vf, mf, ff = _frames_for(src, picked, (info.height, info.width))
            if flow is not None:
                seg["flow"] = flow.push(ff)
            if clip_frames:
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
                if prosody is not None:
                    seg["prosody"] = prosody.push(wave, final=last)
                if "hubert" in mods and wave.size:
                    seg["hubert"] = _to_shared(pre.wave(wave) if preprocess else wave)
                if ("transcript" in mods or "bert" in mods) and not silent:
                    seg["mel"] = _to_shared(pre.mel(wave) if preprocess else wave)
            if last and plan.want_audio and info.has_audio:  # skipped or unreadable audio: the encoder decides
                seg["audio_damage"] = src.audio_error or src.audio.damage()
                if src.audio is not None:
                    seg["audio_packets"], seg["audio_bad_packets"] = src.audio.packets, src.audio.bad_packets
            if last and "au" in mods:
                au, seg["au_source"], seg["au_note"], seg["au_windows"] = openface_aus(video_id, path, plan, dur)
                seg["au"] = _to_shared(au)
            yield seg
    except (VideoDecodeError, OpenFaceError) as exc:
        stage = "au" if isinstance(exc, OpenFaceError) else "decode"
        yield {**base, "error": f"{stage}: {exc.problem}", "last": True}
    except Exception as exc:  # a decoder or preprocessor failing on this file must not stop the run
        yield {**base, "error": f"decode: {type(exc).__name__}: {exc}", "last": True}
    finally:
        src.close()


def _frames_for(src: Any, groups: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """The frames shown at each group's times (uint8 `[n, h, w, 3]` per group), every instant decoded
    once, in one pass in time order (streaming backends need that)."""
    times = np.concatenate(groups)
    if not len(times):
        return [np.zeros((0, *size, 3), np.uint8) for _ in groups]
    uniq, inverse = np.unique(times, return_inverse=True)
    frames = src.frames_at(uniq)
    bounds = np.cumsum([0] + [len(g) for g in groups])
    return [frames[inverse[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def _worker_init(_: int) -> None:
    """One thread per worker: the parallelism comes from the processes."""
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def _identity(x: Any) -> Any:
    """The collate function: segments pass through whole (module level, so workers can pickle it)."""
    return x


def _fork_safe_opencv() -> None:
    """Stop OpenCV's thread pool in this process before decoding workers fork from it.

    The pool does not survive fork: a worker forked from a process whose pool had run (optical
    flow measured in the main process, e.g. an earlier run with --num_workers 0) hung forever on
    its first OpenCV call. One thread here joins the pool; it leaves OpenCV single-threaded in
    this process, as the workers are (one core each)."""
    import sys

    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(1)


def make_segment_loader(jobs: list[tuple[str, Path]], plan: DecodePlan, pre: Preprocessors, num_workers: int) -> "DataLoader":
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
        _fork_safe_opencv()
        kwargs.update(prefetch_factor=2, worker_init_fn=_worker_init, in_order=False)
    return DataLoader(SegmentStream(), **kwargs)


def build_plan(cfg: "DictConfig", modalities: Sequence[str]) -> tuple[DecodePlan, Preprocessors]:
    """Decode settings and the models' preprocessors (light: no weights are loaded here)."""
    from transformers import AutoConfig

    from minigpt4.extraction import encoders as fx

    pre = Preprocessors()
    sides = []
    clip_len = 16
    if any(m in modalities for m in CLIP_FRAME_MODALITIES):
        pre.image = fx.ImagePreprocessor(cfg.visual.path)
        sides.append(pre.image.short_side)
    if "videomae" in modalities:
        pre.clip = fx.ClipPreprocessor(cfg.motion.path)
        sides.append(pre.clip.short_side)
        clip_len = int(AutoConfig.from_pretrained(cfg.motion.path).num_frames)
    prosody, flow = signal_settings(cfg, modalities)
    if flow is not None:
        sides.append(flow.short_side)
    if prosody is not None:
        from minigpt4.extraction.prosody import warm_up

        warm_up(prosody)  # before the workers fork: librosa's import and numba cache load happen once
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
    from minigpt4.extraction.media_checks import tolerance_from

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
        tolerance=tolerance_from(cfg),
        prosody=prosody,
        flow=flow,
    )
    return plan, pre
