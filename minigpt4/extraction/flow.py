"""Dense optical flow between sampled frames: how much the picture moves, step by step.

Why: VideoMAE states are opaque; "restless, movement peaks at 2.4 s" can be worded from a
measured flow magnitude (minigpt4/datasets/measured_evidence.py) for clips nobody annotated.

`flow [N - 1, 2]` for N frames sampled at `flow.fps` (the same instants as VideoMAE's when the
rates match, so the decoded frames are shared). Row k is the step from frame k to frame k + 1
(t = k/fps .. (k+1)/fps); columns FLOW_COLUMNS:
  mean_speed  mean flow magnitude over the frame
  p90_speed   its 90th percentile (a small fast region: a hand, a head turn)
both in frame diagonals per second (the pixel magnitude divided by the diagonal of the frame
the flow ran on, times fps), so neither the resolution nor the sampling rate changes the scale.

Frames are turned grey and scaled down (never up) to `flow.short_side` before the flow, so its
cost and its window sizes do not depend on the source. Methods (OpenCV), measured on 200x112
frames on one core with a textured patch moved 2..30 px: `dis` (the default; cv2.DISOpticalFlow,
ultrafast preset) 0.4 ms a step, within 15% of every displacement (2 px read as 1.7); `farneback`
(cv2.calcOpticalFlowFarneback, FARNEBACK_PARAMS) 6.4 ms a step, exact up to 15 px but a 20 or
30 px step read as 2-4 px. At 8 fps Farneback more than doubled the extraction time in
bench/bench_extract.py (+133%; goal: <= 25% for prosody and flow together), hence DIS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from omegaconf import DictConfig

FLOW_COLUMNS: tuple[str, ...] = ("mean_speed", "p90_speed")
FLOW_UNIT = "frame diagonals per second"
METHODS = ("farneback", "dis")
# cv2.calcOpticalFlowFarneback(prev, next, flow, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags).
# OpenCV's example values (0.5, 3, 15, 3, 5, 1.2) lose steps over ~10 px on 112-px frames (OpenCV
# builds no pyramid level under 32 px, so 0.5 gives one coarser level): a 12 px step read as 1-4 px.
# A 0.6 pyramid with 21 px windows follows steps up to ~15 px, ~10% slower.
FARNEBACK_PARAMS = (0.6, 4, 21, 3, 7, 1.5, 0)


@dataclass(frozen=True)
class FlowSettings:
    """The `flow` section of the extraction config (defaults live in configs/extract/default.yaml)."""

    fps: float
    short_side: int
    method: str

    @classmethod
    def from_config(cls, cfg: "DictConfig") -> "FlowSettings":
        """Read and check `cfg.flow`; a bad value is a ValueError naming the key."""
        f = cfg.flow
        s = cls(fps=float(f.fps), short_side=int(f.short_side), method=str(f.method))
        if s.fps <= 0:
            raise ValueError(f"flow.fps must be > 0, got {f.fps}")
        if s.short_side < 16:
            raise ValueError(f"flow.short_side must be >= 16 pixels, got {f.short_side}")
        if s.method not in METHODS:
            raise ValueError(f"flow.method must be one of {', '.join(METHODS)}, got {f.method!r}")
        return s


def grey_small(frame: np.ndarray, short_side: int) -> np.ndarray:
    """RGB uint8 `[H, W, 3]` -> grey uint8 with its short side scaled down to `short_side` (never up)."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    if min(h, w) > short_side:
        s = short_side / min(h, w)
        grey = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return grey


class FlowTracker:
    """Consumes sampled frames segment by segment, keeping only the last grey frame between calls."""

    def __init__(self, settings: FlowSettings) -> None:
        import cv2

        self.s = settings
        self._prev: Optional[np.ndarray] = None
        self._dis: Any = None
        if settings.method == "dis":
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import cv2

        if self._dis is not None:
            return self._dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK_PARAMS)

    def push(self, frames: np.ndarray) -> np.ndarray:
        """RGB uint8 `[n, H, W, 3]` (the next sampled frames, in time order) -> `[steps, 2]` rows."""
        import cv2

        rows = []
        for frame in frames:
            grey = grey_small(frame, self.s.short_side)
            if self._prev is not None:  # one VideoSource decodes every frame at one size
                uv = self._flow(self._prev, grey)
                mag = cv2.magnitude(uv[..., 0], uv[..., 1])  # 20x faster than np.linalg.norm(axis=2)
                scale = self.s.fps / math.hypot(*grey.shape)
                flat = mag.reshape(-1)
                p90 = np.partition(flat, int(0.9 * (flat.size - 1)))[int(0.9 * (flat.size - 1))]
                rows.append((float(flat.mean()) * scale, float(p90) * scale))
            self._prev = grey
        return np.asarray(rows, np.float32).reshape(-1, len(FLOW_COLUMNS))
