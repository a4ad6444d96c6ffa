"""The shift corpus's frame oracle (`frame_oracle` says why): the cues read back from a clip's files,
then the cue oracle's standardised logistic regression fitted on the train split's reads, its C
chosen on the validation split."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS, STACK_ORDER
from minigpt4.synthetic.common import PathLike
from minigpt4.synthetic.frame_oracle import Segments, au_apex, burst_mask, read_split, score_reads, shift_in_burst
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
from minigpt4.synthetic.shift_oracles import CUE_BLOCKS

# The logistic regression's C, chosen on the validation split (ties: the smaller, more regularised).
C_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
# read_cue_vector's layout after the presence flags: per modality what it reads, as wide as the cue
# oracle's block (so `CUE_BLOCKS` prices the reads too, cue_probe --worth --frame)
READ_BLOCKS: dict[str, int] = {m: cols.stop - cols.start for m, cols in CUE_BLOCKS.items()}


def read_audio(x: np.ndarray, segments: Segments, enc: ShiftEncoders) -> list[float]:
    """[energy, tone] from `hubert [T, 56]`: the burst's shift along the energy direction, and the
    least-squares fit of the pitch direction to each segment's zero-mean ramp."""
    u_energy, u_pitch = enc.directions["audio"]
    energy = shift_in_burst(x @ u_energy, burst_mask(len(x), segments)) / AUDIO_ENERGY_GAIN
    pitch = x @ u_pitch
    num = den = 0.0
    for start, k in segments:
        ramp = pitch_ramp(int(k))
        num += float(pitch[int(start) : int(start) + int(k)] @ ramp)
        den += float(ramp @ ramp)
    return [energy, num / den / AUDIO_PITCH_GAIN]


def read_motion(x: np.ndarray, segments: Segments, enc: ShiftEncoders) -> list[float]:
    """[gesture, posture] from `videomae [T, 24]`: the oscillation's amplitude from the burst's
    power in the gesture plane (its period and phase are not recorded; the noise's share removed),
    and the burst's shift along the posture direction."""
    u_gx, u_gy, u_posture = enc.directions["motion"]
    mask = burst_mask(len(x), segments)
    power = (x[mask] @ u_gx) ** 2 + (x[mask] @ u_gy) ** 2
    amplitude2 = float(power.mean()) - 2.0 * FRAME_NOISE**2
    gesture = float(np.sqrt(max(amplitude2, 0.0))) / MOTION_GESTURE_GAIN
    return [gesture, shift_in_burst(x @ u_posture, mask) / MOTION_POSTURE_GAIN]


def read_text(x: np.ndarray, enc: ShiftEncoders) -> list[float]:
    """[polarity mean, max, min, one keyword score per named emotion] from `bert [n_words, 40]`:
    the tokens' projections on the polarity direction, and each keyword direction's largest."""
    proj = x @ enc.directions["text"].T  # [n_words, 6]
    return [float(proj[:, 0].mean()), float(proj[:, 0].max()), float(proj[:, 0].min())] + list(proj[:, 1:].max(axis=0))


def read_cue_vector(cues: ShiftCues, arrays: Mapping[str, np.ndarray], enc: Optional[ShiftEncoders] = None) -> np.ndarray:
    """One clip's cues read from its feature arrays (feature key -> [T, D], as in its file): per
    modality a presence flag (the file has it), then `READ_BLOCKS` reads (zeros when absent). The
    burst segments come from `cues.bursts`."""
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
            parts.append(list(au_apex(x, cues.bursts[m])))
        elif m == "text":
            parts.append(read_text(x, enc))
        else:
            parts.append([float((x @ enc.directions["visual"][0]).mean()) / VISUAL_VALENCE_GAIN])
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


def read_split_cues(features_dir: PathLike, latents: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(read cue vectors [N, F], label indices [N]) of one split's clips."""
    enc = make_encoders()
    return read_split(features_dir, load_latents(latents), split, lambda c, a: read_cue_vector(c, a, enc), latents)


def frame_oracle(features_dir: PathLike, latents: PathLike, train_split: str = "train", val_split: str = "val",
                 test_split: str = "test", c_grid: Sequence[float] = C_GRID) -> dict[str, float]:
    """{"accuracy": on test_split, "val_accuracy", "param": C}: the logistic regression on read
    cues, fitted on train_split, its C the best on val_split (ties: the smaller)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    enc = make_encoders()
    return score_reads(features_dir, latents, load_latents(latents), lambda c, a: read_cue_vector(c, a, enc),
                       lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)),
                       sorted(c_grid), (train_split, val_split, test_split))


def frame_oracle_accuracy(features_dir: PathLike, latents: PathLike, train_split: str = "train",
                          val_split: str = "val", test_split: str = "test") -> float:
    """`frame_oracle`'s test accuracy alone (the corpus report's number)."""
    return frame_oracle(features_dir, latents, train_split, val_split, test_split)["accuracy"]
