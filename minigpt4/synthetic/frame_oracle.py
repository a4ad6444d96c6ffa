"""Frame oracles, the part both generators share: reading a cue back from a clip's frames where the
generator says its burst lies, and scoring a classifier on those reads split by split.

A generator's cue oracle reads the cue values it rendered *before* frame noise and nuisance were
added, which no model sees. A frame oracle reads the same cues back from the feature files with
everything the generator knows except the noise (directions, gains, burst windows), so its
accuracy is what knowing the generator buys from the files: the reachable bar for a learned model.
The corpus-specific reads live in `demo_frame_oracle` and `shift_frame_oracle`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from minigpt4.synthetic.common import (
    AU_ORDER,
    EMOTIONS,
    PathLike,
    accuracy_one_thread,
    expression_shape,
    fit_one_thread,
)

Segments = Sequence[Sequence[int]]  # [(start, length), ...] of a modality's burst


def burst_mask(length: int, segments: Segments) -> np.ndarray:
    """[length] bool, True on the burst's frames."""
    mask = np.zeros(length, dtype=bool)
    for start, k in segments:
        mask[int(start) : int(start) + int(k)] = True
    return mask


def shift_in_burst(proj: np.ndarray, mask: np.ndarray) -> float:
    """Mean of `proj` [T] over the burst frames minus its mean elsewhere (the clip's own level,
    e.g. a speaker's loudness, cancels)."""
    outside = float(proj[~mask].mean()) if (~mask).any() else 0.0
    return float(proj[mask].mean()) - outside


def au_apex(x: np.ndarray, segments: Segments) -> np.ndarray:
    """Apex per AU intensity [17] from `au [T, 35]` (OpenFace's layout): each segment's
    onset-apex-offset shape fitted by least squares to the intensities above the clip's level
    outside the burst (its resting face)."""
    inten = np.asarray(x, dtype=np.float64)[:, : len(AU_ORDER)]
    mask = burst_mask(len(inten), segments)
    level = inten[~mask].mean(axis=0) if (~mask).any() else np.zeros(len(AU_ORDER))
    num, den = np.zeros(len(AU_ORDER)), 0.0
    for start, k in segments:
        shape = expression_shape(int(k))
        num += shape @ (inten[int(start) : int(start) + int(k)] - level)
        den += float(shape @ shape)
    return num / den


Reader = Callable[[Any, Mapping[str, np.ndarray]], np.ndarray]  # (clip record, its file's arrays) -> reads


def read_clip(features_dir: PathLike, clip: Any, read: Reader) -> np.ndarray:
    """`read(clip, arrays)` on the clip's feature file; a clip without a file is an error naming it."""
    from minigpt4.datasets.feature_io import find_feature_file, read_features

    path = find_feature_file(Path(features_dir), clip.video_id)
    if path is None:
        raise FileNotFoundError(f"{features_dir}: no feature file for {clip.video_id}")
    return read(clip, read_features(path).arrays)


def read_split(features_dir: PathLike, clips: Sequence[Any], split: str, read: Reader,
               source: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(reads [N, F], label indices [N]) of `split`'s clips (records with video_id, split, emotion).
    A split without clips or a clip without a file is an error naming it: the oracle must see every
    clip a model is scored on."""
    chosen = [c for c in clips if c.split == split]
    if not chosen:
        raise ValueError(f"{source}: no clips in split {split!r}")
    rows = [read_clip(features_dir, c, read) for c in chosen]
    return np.stack(rows), np.asarray([EMOTIONS.index(c.emotion) for c in chosen])


def score_reads(features_dir: PathLike, latents: PathLike, clips: Sequence[Any], read: Reader,
                make: Callable[[float], Any], grid: Sequence[float],
                splits: tuple[str, str, str]) -> dict[str, float]:
    """`fit_and_score` on the (train, val, test) `splits` of `clips` (read once from `latents`), each
    row `read` from its clip's feature file."""
    train, val, test = (read_split(features_dir, clips, s, read, latents) for s in splits)
    return fit_and_score(make, grid, train, val, test)


def fit_and_score(make: Callable[[float], Any], grid: Sequence[float], train: tuple[np.ndarray, np.ndarray],
                  val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """{"accuracy" on test, "val_accuracy", "param"}: `make(param)` fitted on train for each value of
    `grid`, the best on val kept (ties: the first in grid order)."""
    if not grid:
        raise ValueError("frame oracle: the parameter grid is empty")
    best = None
    for param in grid:
        clf = fit_one_thread(make(param), *train)
        score = accuracy_one_thread(clf, *val)
        if best is None or score > best[0]:
            best = (score, float(param), clf)
    score, param, clf = best
    return {"accuracy": accuracy_one_thread(clf, *test), "val_accuracy": score, "param": param}
