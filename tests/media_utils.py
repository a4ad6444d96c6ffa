"""Test-only media: a variable-frame-rate video and OpenFace 2.0 CSVs.

The videos and tiny encoders that the benchmark shares live in minigpt4/extraction/synthetic.py.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

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
