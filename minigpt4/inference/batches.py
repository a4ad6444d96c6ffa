"""Feature files -> the model's batches -> ClipResults, the way `hero-eval` predicts.

A clip without an annotation is a record of an unlabeled `test` split (emotion -1), read and
prepared by the run's SampleBuilder and padded by the run's collater (`collate_hero`), then
moved to the device and given to `model.generate(batch, use_cot=True, max_new_tokens=...,
num_beams=1)` under the run's autocast: the same call `hero-eval` makes, so the same clips in
the same batch give the same reports and confidences.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from minigpt4.common import cot
from minigpt4.common.modalities import STACK_ORDER
from minigpt4.inference.results import ClipResult, InferenceFailure, clip_result

DEFAULT_MAX_NEW_TOKENS = cot.REPORT_TOKENS  # hero-eval's default budget with CoT
Progress = Callable[[str, float], None]


@dataclass
class ClipInput:
    """One clip to predict: its id, the feature file, the path reported as its source, and its
    share of the extraction time."""

    video_id: str
    features: Path
    source: str
    extract_s: float = 0.0


def prepare(run: Any, clip: ClipInput) -> Any:
    """The clip's PreparedSample (unpadded), read as the run's dataset reads a file; raises
    FeatureFileError / ValueError / OSError naming the file for a file it cannot use."""
    from minigpt4.datasets.annotations import Annotation
    from minigpt4.datasets.feature_io import read_features

    feat = read_features(clip.features, max_dim=run.builder.max_dim, dtype=None)
    record = Annotation(video_id=clip.video_id, split="test", emotion=None, source=str(clip.features))
    return run.builder.prepare(record, feat, str(clip.features), training=False)


def _autocast(run: Any) -> Any:
    import torch

    if run.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=run.device.type, dtype=run.amp_dtype)


def generate_batch(run: Any, samples: Sequence[Any], max_new_tokens: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(collated batch, `model.generate` items) for prepared samples: eval's batch and call."""
    from minigpt4.datasets.datasets.hero_dataset import collate_hero
    from minigpt4.runners.loaders import move_to_device

    batch = collate_hero(list(samples))
    moved = move_to_device(batch, run.device, non_blocking=run.device.type == "cuda")
    with _autocast(run):
        outputs = run.model.generate(moved, use_cot=True, max_new_tokens=int(max_new_tokens), num_beams=1)
    if len(outputs) != len(samples):
        raise RuntimeError(f"the model returned {len(outputs)} results for a batch of {len(samples)} clips")
    return batch, outputs


def predict_clips(run: Any, clips: Sequence[ClipInput], batch_size: int, max_new_tokens: int,
                  progress: Optional[Progress] = None, start: float = 0.0,
                  span: float = 1.0) -> tuple[list[ClipResult], list[InferenceFailure]]:
    """Results for the clips that read, in input order, and a failure for each that did not.

    Files are read one batch at a time (memory stays that of one batch). `progress(message,
    fraction)` is called after each batch, fractions running from `start` to `start + span`.
    """
    from minigpt4.datasets.feature_io import FeatureFileError

    results: list[ClipResult] = []
    failures: list[InferenceFailure] = []
    total = max(1, len(clips))
    done = 0
    for lo in range(0, len(clips), batch_size):
        group = clips[lo:lo + batch_size]
        ready: list[tuple[ClipInput, Any]] = []
        for clip in group:
            try:
                ready.append((clip, prepare(run, clip)))
            except (FeatureFileError, ValueError, OSError) as exc:
                failures.append(InferenceFailure(clip.source, _reason(exc, clip)))
        if ready:
            t0 = time.perf_counter()
            batch, outputs = generate_batch(run, [s for _, s in ready], max_new_tokens)
            share = (time.perf_counter() - t0) / len(ready)
            mask = batch["modality_mask"].tolist()
            for b, ((clip, _), out) in enumerate(zip(ready, outputs)):
                present = [m for m, on in zip(STACK_ORDER, mask[b]) if on]
                results.append(clip_result(out, clip.video_id, clip.source, batch["transcript"][b], present,
                                           {"extract_s": clip.extract_s, "model_s": share}))
        done += len(group)
        if progress is not None:
            progress(f"predicted {done} of {len(clips)} clips", start + span * done / total)
    return results, failures


def _reason(exc: BaseException, clip: ClipInput) -> str:
    """The problem, without the file name when the message starts with it (the failure names the file)."""
    text = str(exc) or type(exc).__name__
    for prefix in (f"{clip.features}: ", f"{clip.features} "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if str(clip.features) != clip.source and str(clip.features) in text:
        text = text.replace(str(clip.features), "its features")
    return text
