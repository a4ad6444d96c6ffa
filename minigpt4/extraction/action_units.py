"""Facial action units from OpenFace 2.0: read its CSV (or run its binary) -> `au [N, 35]`.

Column order of the 35 values (fixed; the AU expert's input layout depends on it), exactly
the order OpenFace 2.0's FeatureExtraction writes them:
  0..16  intensities AU01_r AU02_r AU04_r AU05_r AU06_r AU07_r AU09_r AU10_r AU12_r AU14_r
         AU15_r AU17_r AU20_r AU23_r AU25_r AU26_r AU45_r            (0..5 scale)
  17..34 presences   AU01_c AU02_c AU04_c AU05_c AU06_c AU07_c AU09_c AU10_c AU12_c AU14_c
         AU15_c AU17_c AU20_c AU23_c AU25_c AU26_c AU28_c AU45_c     (0/1; after resampling
         to `fps`, the fraction of frames in the window where the AU is present)

Frames where OpenFace lost the face (`success == 0`) or is unsure (`confidence <
min_confidence`) are dropped, never kept as zeros. There is deliberately no built-in
estimator: no face library that installs with its weights from PyPI predicts AUs (see
`BUILTIN_ESTIMATOR_NOTE`), and a vector of mostly-zero columns labelled as AUs would be a lie
the AU expert learns from. Without OpenFace output the `au` modality is absent.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from minigpt4.extraction.resample import window_means

PathLike = Union[str, "os.PathLike[str]"]

AU_INTENSITY_COLUMNS: tuple[str, ...] = tuple(
    f"AU{n:02d}_r" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
)
AU_PRESENCE_COLUMNS: tuple[str, ...] = tuple(
    f"AU{n:02d}_c" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)
)
AU_COLUMNS: tuple[str, ...] = AU_INTENSITY_COLUMNS + AU_PRESENCE_COLUMNS
AU_DIM = len(AU_COLUMNS)  # 35
REQUIRED_COLUMNS: tuple[str, ...] = ("frame", "timestamp", "confidence", "success")

BUILTIN_ESTIMATOR_NOTE = (
    "no OpenFace CSV or binary for this clip; HERO ships no built-in AU estimator because no "
    "PyPI face library bundles AU weights (dlib's 68 landmarks give geometry for at most a "
    "handful of AUs, uncalibrated, and fer predicts 7 emotions, not AUs)"
)


class OpenFaceError(ValueError):
    """An OpenFace CSV or run that cannot be used; the message names the file and the problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class AUTrack:
    """Per-frame AUs kept after filtering.

    timestamps: float64 `[N]` seconds; values: float32 `[N, 35]` in AU_COLUMNS order;
    rows_total / rows_dropped: CSV frames before filtering and how many were dropped.
    """

    timestamps: np.ndarray
    values: np.ndarray
    rows_total: int
    rows_dropped: int


def read_openface_csv(path: PathLike, min_confidence: float = 0.8) -> AUTrack:
    """Read an OpenFace 2.0 FeatureExtraction CSV, keep tracked confident frames, one face per frame.

    When the CSV holds several faces per frame (FaceLandmarkVidMulti), the most confident
    face of each frame is kept. Raises OpenFaceError for a missing file, missing columns or a
    non-numeric value (naming the line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise OpenFaceError(path, "OpenFace CSV not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise OpenFaceError(path, "empty CSV (no header)") from None
        col = {name: i for i, name in enumerate(header)}
        missing = [c for c in REQUIRED_COLUMNS + AU_COLUMNS if c not in col]
        if missing:
            raise OpenFaceError(
                path, f"not an OpenFace 2.0 AU CSV: missing column(s) {', '.join(missing[:8])}"
                + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            )
        wanted = [col[c] for c in REQUIRED_COLUMNS + AU_COLUMNS]
        names = REQUIRED_COLUMNS + AU_COLUMNS
        rows: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise OpenFaceError(path, f"line {line_no}: {len(row)} fields, header has {len(header)}")
            values = []
            for name, j in zip(names, wanted):
                try:
                    values.append(float(row[j]))
                except ValueError:
                    raise OpenFaceError(path, f"line {line_no}, column {name}: {row[j].strip()!r} is not a number") from None
            rows.append(values)
    if not rows:
        return AUTrack(np.zeros(0), np.zeros((0, AU_DIM), np.float32), 0, 0)
    data = np.asarray(rows, dtype=np.float64)
    frame, ts, conf, success = data[:, 0], data[:, 1], data[:, 2], data[:, 3]
    keep = (success > 0.5) & (conf >= min_confidence) & np.isfinite(data[:, 4:]).all(axis=1)
    # One face per frame: the most confident among the kept rows.
    order = np.lexsort((-conf, frame))  # by frame, then by falling confidence
    kept = order[keep[order]]
    _, first = np.unique(frame[kept], return_index=True)
    chosen = kept[first]
    frames_total = len(np.unique(frame))
    sel = chosen[np.argsort(ts[chosen], kind="stable")]
    return AUTrack(
        timestamps=ts[sel].astype(np.float64),
        values=data[sel, 4:].astype(np.float32),
        rows_total=frames_total,
        rows_dropped=frames_total - len(sel),
    )


def resample_track(track: AUTrack, fps: Optional[float], duration: Optional[float] = None) -> np.ndarray:
    """AUs at `fps`: the mean of the kept frames in each window [k/fps, (k+1)/fps).

    Windows without any kept frame are left out (no invented values), so the result has
    `[M, 35]` with M <= the number of windows. fps None returns the kept frames as they are.
    """
    if fps is None or track.values.shape[0] == 0:
        return track.values
    if fps <= 0:
        raise ValueError(f"au fps must be > 0, got {fps}")
    return window_means(track.values, track.timestamps, fps, duration)


def find_openface_csv(openface_dir: PathLike, video_id: str) -> Optional[Path]:
    """`<openface_dir>/<video_id>.csv` (OpenFace names its output after the input stem), or None."""
    candidate = Path(openface_dir) / f"{video_id}.csv"
    return candidate if candidate.is_file() else None


def run_openface(
    video_path: PathLike,
    binary: PathLike,
    out_dir: Optional[PathLike] = None,
    timeout: float = 3600.0,
    extra_args: Sequence[str] = (),
) -> Path:
    """Run OpenFace's `FeatureExtraction -f VIDEO -out_dir DIR -aus` and return the CSV it wrote.

    out_dir None writes into a fresh temporary folder (the caller deletes it). Raises
    OpenFaceError with the tail of OpenFace's output when it fails or writes no CSV.
    """
    video_path = Path(video_path)
    exe = shutil.which(str(binary)) or (str(binary) if Path(binary).is_file() else None)
    if exe is None:
        raise OpenFaceError(binary, "OpenFace binary not found (expected FeatureExtraction)")
    target = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="openface_"))
    target.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-f", str(video_path), "-out_dir", str(target), "-aus", *extra_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OpenFaceError(video_path, f"OpenFace timed out after {timeout:.0f} s") from None
    csv_path = target / f"{video_path.stem}.csv"
    if proc.returncode != 0 or not csv_path.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise OpenFaceError(
            video_path, f"OpenFace exited with {proc.returncode} and wrote no {csv_path.name}: {' | '.join(tail)}"
        )
    return csv_path
