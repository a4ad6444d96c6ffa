"""Window means: a timestamped frame track resampled to a lower, fixed rate.

Used for OpenFace action units (tracked at the video's frame rate) and HuBERT states (50 Hz):
the loader keeps at most `max_len` frames per modality anyway, and the mean of each window
summarises all of its frames, where keeping every k-th frame would drop the rest.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def _window_of(timestamps: np.ndarray, fps: float, duration: Optional[float]) -> np.ndarray:
    """The window index of each timestamp (a frame at or just past `duration` joins the last window)."""
    end = duration if duration is not None else float(timestamps.max()) + 1e-6
    n_windows = max(1, int(math.ceil(end * fps - 1e-6)))
    return np.clip(np.floor(timestamps * fps + 1e-9).astype(np.int64), 0, n_windows - 1)


def kept_windows(timestamps: np.ndarray, fps: float, duration: Optional[float] = None) -> np.ndarray:
    """Sorted indices of the windows `window_means` returns a row for (the windows holding a frame)."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.size == 0:
        return np.zeros(0, np.int64)
    return np.unique(_window_of(timestamps, fps, duration))


def index_ranges(indices: np.ndarray) -> str:
    """Sorted integers as compact ranges: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (minigpt4/datasets/measured_evidence.py reads it back)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts, ends = idx[np.r_[0, breaks + 1]], idx[np.r_[breaks, idx.size - 1]]
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts, ends))


def window_means(values: np.ndarray, timestamps: np.ndarray, fps: float, duration: Optional[float] = None) -> np.ndarray:
    """float32 `[M, D]`: the mean of the frames whose timestamp lies in each window
    [k/fps, (k+1)/fps), in time order.

    values `[N, D]`, timestamps `[N]` seconds. Windows without a frame are left out (no
    invented values), so M <= the number of windows. `duration` caps the window index, so a
    frame stamped at (or just past) the end joins the last window.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    values = np.asarray(values)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if values.ndim != 2 or timestamps.shape != (values.shape[0],):
        raise ValueError(f"expected values [N, D] and timestamps [N], got {values.shape} and {timestamps.shape}")
    if values.shape[0] == 0:
        return values.astype(np.float32)
    win = _window_of(timestamps, fps, duration)
    order = np.argsort(win, kind="stable")
    win = win[order]
    starts = np.flatnonzero(np.r_[True, win[1:] != win[:-1]])
    sums = np.add.reduceat(values[order].astype(np.float64), starts, axis=0)
    counts = np.diff(np.r_[starts, len(win)])
    return (sums / counts[:, None]).astype(np.float32)
