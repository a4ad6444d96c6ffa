"""Training logs: `log.txt` (one JSON object per line) and TensorBoard scalars, rank 0 only.

JSON lines are what tools read back (eval, plots, tests); TensorBoard is for people. Both
get the same numbers. Other ranks get a disabled logger, so callers never check the rank.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from minigpt4.common.atomic_io import atomic_write_text

LOG_FILE = "log.txt"
TB_DIR = "tensorboard"


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Python logging to stderr: INFO on rank 0, WARNING elsewhere (so ranks don't repeat lines)."""
    root = logging.getLogger()
    if not any(getattr(h, "_hero", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._hero = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)


def to_float(value: Any) -> Optional[float]:
    """A scalar tensor / number -> float; anything else (strings, multi-element tensors) -> None."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        return float(value.detach().float().cpu().item())
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _json_number(v: float) -> Union[float, str]:
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf; keep them visible as text


class MetricLogger:
    """Appends JSON lines to `<output_dir>/log.txt` and scalars to `<output_dir>/tensorboard/`.

    `enabled=False` (non-zero ranks) makes every call a no-op. `purge_step` drops TensorBoard
    events at or after that step, so a resumed run does not draw two curves.
    """

    def __init__(self, output_dir: Union[str, Path], enabled: bool = True, tensorboard: bool = True,
                 purge_step: Optional[int] = None) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self._fh = None
        self._tb = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.output_dir / LOG_FILE, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.output_dir / TB_DIR), purge_step=purge_step)

    @property
    def log_path(self) -> Path:
        return self.output_dir / LOG_FILE

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Write one JSON line and its scalars to TensorBoard at `step`.

        TensorBoard tags: `val_<x>` -> `val/<x>`, anything else -> `train/<x>`. Non-scalar
        values are kept in the JSON line only when JSON can hold them (str, list, dict, None).
        """
        if not self.enabled:
            return
        line: Dict[str, Any] = {}
        for key, value in record.items():
            f = to_float(value)
            if f is not None:
                line[key] = int(value) if isinstance(value, int) and not isinstance(value, bool) else _json_number(f)
                if self._tb is not None and key not in ("step", "epoch"):
                    tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                    self._tb.add_scalar(tag, f, step)
            elif isinstance(value, (str, list, dict)) or value is None:
                line[key] = value
        self._fh.write(json.dumps(line, sort_keys=False) + "\n")
        self._fh.flush()

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def truncate_log(output_dir: Union[str, Path], step: int, epoch: int) -> int:
    """Cut `log.txt` back to what a run resumed at (`step`, `epoch`) has already done, so the steps it
    redoes are not logged twice: lines of steps <= `step` stay, except a validation line at `step` of
    an epoch the checkpoint had not finished (it is redone). A torn last line (a killed write) goes too.
    Returns the number of lines dropped."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for i, text in enumerate(lines):
        try:
            rec = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            rec = None if i == len(lines) - 1 else {}  # a torn last line is dropped; others are not ours to judge
        if rec is None:
            continue
        s = rec.get("step")
        if isinstance(s, int) and (s > step or (s == step and rec.get("phase") == "val"
                                                and int(rec.get("epoch", epoch)) >= epoch)):
            continue
        kept.append(text if text.endswith("\n") else text + "\n")
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped


def read_log(path: Union[str, Path]) -> list[dict]:
    """Parse a `log.txt` back into a list of dicts (blank lines skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, text in enumerate(fh, 1):
            text = text.strip()
            if not text:
                continue
            try:
                out.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({exc})") from None
    return out
