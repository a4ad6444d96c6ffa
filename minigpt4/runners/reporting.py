"""What `RunnerBase` reports: the per-step training record (the mean over ranks, to the metric
logger) and the end-of-run summary (returned, and printed by rank 0)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from minigpt4.common.dist_utils import DistInfo, all_reduce_sum
from minigpt4.common.logger import MetricLogger

__all__ = ["ReportingMixin"]


class ReportingMixin:
    """`RunnerBase._log_train` and `_summary`."""

    dist: DistInfo
    device: torch.device
    world_size: int
    is_main: bool
    output_dir: Path
    step: int
    epoch: int
    best: Optional[Dict[str, Any]]
    last_train: Dict[str, Any]
    last_val: Dict[str, float]
    _logger: Optional[MetricLogger]

    def _log_train(self, terms: Dict[str, float], stats: Dict[str, float], samples: int, elapsed: float) -> Dict[str, Any]:
        if self.dist.distributed:  # every rank calls: the mean over ranks is the global batch's value
            keys = sorted(terms)
            vals = all_reduce_sum([terms[k] for k in keys] + [float(samples)], self.device)
            terms = {k: v / self.world_size for k, v in zip(keys, vals[:-1])}
            samples = int(vals[-1])
        record: Dict[str, Any] = {"step": self.step, "epoch": self.epoch, "phase": "train", "lr": stats["lr"]}
        record.update(terms)
        record.update({k: v for k, v in stats.items() if k != "lr"})
        record["samples_per_s"] = samples / max(elapsed, 1e-9)
        if self._logger is not None:
            self._logger.log(record, self.step)
        return record

    def _summary(self, seconds: float) -> Dict[str, Any]:
        summary = {"steps": self.step, "epochs": self.epoch, "seconds": round(seconds, 2),
                   "last_loss": self.last_train.get("loss"), "val": self.last_val,
                   "best": self.best, "output_dir": str(self.output_dir)}
        if self.is_main:
            best = (f", best val {self.best['metric']} {self.best['value']:.4f} at step {self.best['step']}"
                    if self.best else "")
            last = f", last loss {summary['last_loss']:.4f}" if summary["last_loss"] is not None else ""
            val = f", val loss {self.last_val['loss']:.4f}" if "loss" in self.last_val else ""
            print(f"HERO run done: {self.step} steps, {self.epoch} epochs in {seconds:.1f} s{last}{val}{best}; "
                  f"outputs in {self.output_dir}", flush=True)
        return summary
