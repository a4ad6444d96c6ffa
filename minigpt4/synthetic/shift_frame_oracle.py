"""The shift corpus's frame oracle: what a model that knows the generator reads from the files.

The cue oracle (`shift_oracles`) reads the rendered cue values *before* frame noise, speaker,
scene and topic are added, which no model ever sees. This oracle reads the same cues back from
a clip's feature files, knowing everything the generator knows except the noise: the encoders'
cue directions, the rendering gains and where each burst lies (`latents.json`). A standardised
logistic regression (the cue oracle's classifier) is then fitted on the train split's read cues,
its C chosen on the validation split, and scored on the test split. It is the reachable bar a
learned model can be held to; the gap between it and the cue oracle is what the frame noise
alone costs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS, STACK_ORDER
from minigpt4.synthetic.common import AU_ORDER, EMOTIONS, PathLike, accuracy_one_thread, fit_one_thread
from minigpt4.synthetic.shift import (
    AUDIO_ENERGY_GAIN,
    AUDIO_PITCH_GAIN,
    FRAME_NOISE,
    MOTION_GESTURE_GAIN,
    MOTION_POSTURE_GAIN,
    VISUAL_VALENCE_GAIN,
    ShiftEncoders,
    make_encoders,
    pitch_ramp,
)
from minigpt4.synthetic.shift_cues import ShiftCues, load_latents

# The logistic regression's C, chosen on the validation split (ties: the smaller, more regularised).
C_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
NUM_TEXT_READINGS = 3 + len(EMOTIONS) - 1  # polarity mean / max / min, one keyword score per named emotion
# read_cue_vector's layout: presence flags, then per modality what it reads
READ_BLOCKS: dict[str, int] = {"audio": 2, "motion": 2, "au": len(AU_ORDER), "text": NUM_TEXT_READINGS, "visual": 1}


def _burst_mask(length: int, segments: Sequence[Sequence[int]]) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    for start, k in segments:
        mask[int(start) : int(start) + int(k)] = True
    return mask


def _shift_in_burst(proj: np.ndarray, mask: np.ndarray) -> float:
    """Mean of `proj` [T] over the burst frames minus its mean elsewhere (the clip's own level,
    e.g. the speaker's loudness, cancels)."""
    outside = float(proj[~mask].mean()) if (~mask).any() else 0.0
    return float(proj[mask].mean()) - outside


def _half_sine(k: int) -> np.ndarray:
    shape = np.sin(np.pi * (np.arange(k) + 0.5) / k)
    return shape / shape.max()


def read_audio(x: np.ndarray, segments: Sequence[Sequence[int]], enc: ShiftEncoders) -> list[float]:
    """[energy, tone] from `hubert [T, 56]`: the burst's shift along the energy direction, and the
    least-squares fit of the pitch direction to each segment's zero-mean ramp."""
    u_energy, u_pitch = enc.directions["audio"]
    energy = _shift_in_burst(x @ u_energy, _burst_mask(len(x), segments)) / AUDIO_ENERGY_GAIN
    pitch = x @ u_pitch
    num = den = 0.0
    for start, k in segments:
        ramp = pitch_ramp(int(k))
        num += float(pitch[int(start) : int(start) + int(k)] @ ramp)
        den += float(ramp @ ramp)
    return [energy, num / den / AUDIO_PITCH_GAIN]


def read_motion(x: np.ndarray, segments: Sequence[Sequence[int]], enc: ShiftEncoders) -> list[float]:
    """[gesture, posture] from `videomae [T, 24]`: the oscillation's amplitude from the burst's
    energy in the gesture plane (its period and phase are not recorded, the noise's share removed),
    and the burst's shift along the posture direction."""
    u_gx, u_gy, u_posture = enc.directions["motion"]
    mask = _burst_mask(len(x), segments)
    power = (x[mask] @ u_gx) ** 2 + (x[mask] @ u_gy) ** 2
    amplitude2 = float(power.mean()) - 2.0 * FRAME_NOISE**2
    gesture = float(np.sqrt(max(amplitude2, 0.0))) / MOTION_GESTURE_GAIN
    return [gesture, _shift_in_burst(x @ u_posture, mask) / MOTION_POSTURE_GAIN]


def read_au(x: np.ndarray, segments: Sequence[Sequence[int]]) -> list[float]:
    """Apex per AU intensity [17] from `au [T, 35]`: each segment's onset-apex-offset shape fitted
    by least squares to the intensities above the clip's level outside the burst."""
    inten = x[:, : len(AU_ORDER)]
    mask = _burst_mask(len(inten), segments)
    level = inten[~mask].mean(axis=0) if (~mask).any() else np.zeros(len(AU_ORDER))
    num, den = np.zeros(len(AU_ORDER)), 0.0
    for start, k in segments:
        shape = _half_sine(int(k))
        num += shape @ (inten[int(start) : int(start) + int(k)] - level)
        den += float(shape @ shape)
    return list(num / den)


def read_text(x: np.ndarray, enc: ShiftEncoders) -> list[float]:
    """[polarity mean, max, min, one keyword score per named emotion] from `bert [n_words, 40]`:
    the tokens' projections on the polarity direction, and each keyword direction's largest."""
    proj = x @ enc.directions["text"].T  # [n_words, 6]
    return [float(proj[:, 0].mean()), float(proj[:, 0].max()), float(proj[:, 0].min())] + list(proj[:, 1:].max(axis=0))


def read_cue_vector(cues: ShiftCues, arrays: Mapping[str, np.ndarray], enc: Optional[ShiftEncoders] = None) -> np.ndarray:
    """One clip's cues read from its feature arrays (feature key -> [T, D], as in its file) with the
    generator's knowledge but not its noise: per modality a presence flag (the file has it), then
    `READ_BLOCKS` readings (zeros when absent). The burst segments come from `cues.bursts`."""
    enc = enc or make_encoders()
    present = {m: DEFAULT_FEATURE_KEYS[m] in arrays for m in STACK_ORDER}
    parts: list[list[float]] = [[float(present[m]) for m in STACK_ORDER]]
    for m, width in READ_BLOCKS.items():
        if not present[m]:
            parts.append([0.0] * width)
            continue
        x = np.asarray(arrays[DEFAULT_FEATURE_KEYS[m]], dtype=np.float64)
        if m in ("audio", "motion", "au") and not cues.bursts.get(m):
            raise ValueError(f"{cues.video_id}: its file has {m} frames but latents.json records no {m} burst")
        if m == "audio":
            parts.append(read_audio(x, cues.bursts[m], enc))
        elif m == "motion":
            parts.append(read_motion(x, cues.bursts[m], enc))
        elif m == "au":
            parts.append(read_au(x, cues.bursts[m]))
        elif m == "text":
            parts.append(read_text(x, enc))
        else:
            parts.append([float((x @ enc.directions["visual"][0]).mean()) / VISUAL_VALENCE_GAIN])
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


def read_split_cues(features_dir: PathLike, latents: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(read cue vectors [N, F], label indices [N]) of one split's clips; a clip without a feature
    file is an error naming it (the oracle must see every clip the model is scored on)."""
    from minigpt4.datasets.feature_io import find_feature_file, read_features

    clips = [c for c in load_latents(latents) if c.split == split]
    if not clips:
        raise ValueError(f"{latents}: no clips in split {split!r}")
    enc = make_encoders()
    rows, labels = [], []
    for c in clips:
        path = find_feature_file(Path(features_dir), c.video_id)
        if path is None:
            raise FileNotFoundError(f"{features_dir}: no feature file for {c.video_id}")
        rows.append(read_cue_vector(c, read_features(path).arrays, enc))
        labels.append(EMOTIONS.index(c.emotion))
    return np.stack(rows), np.asarray(labels)


def frame_oracle(features_dir: PathLike, latents: PathLike, train_split: str = "train", val_split: str = "val",
                 test_split: str = "test", c_grid: Sequence[float] = C_GRID) -> dict[str, float]:
    """{"accuracy": on test_split, "val_accuracy", "C"}: the logistic regression on read cues, fitted
    on train_split, its C the best on val_split (ties: the smaller)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = read_split_cues(features_dir, latents, train_split)
    x_val, y_val = read_split_cues(features_dir, latents, val_split)
    x_test, y_test = read_split_cues(features_dir, latents, test_split)
    if not c_grid:
        raise ValueError("frame_oracle: c_grid is empty")
    best: Optional[tuple[float, float, object]] = None
    for c in sorted(c_grid):
        clf = fit_one_thread(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)), x_train, y_train)
        val = accuracy_one_thread(clf, x_val, y_val)
        if best is None or val > best[0]:
            best = (val, c, clf)
    val, c, clf = best  # type: ignore[misc]
    return {"accuracy": accuracy_one_thread(clf, x_test, y_test), "val_accuracy": val, "C": float(c)}


def frame_oracle_accuracy(features_dir: PathLike, latents: PathLike, train_split: str = "train",
                          val_split: str = "val", test_split: str = "test") -> float:
    """`frame_oracle`'s test accuracy alone (the corpus report's number)."""
    return frame_oracle(features_dir, latents, train_split, val_split, test_split)["accuracy"]
