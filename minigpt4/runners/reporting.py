"""What `RunnerBase` reports: the training record of a log interval (each term's mean over the
batches of all ranks that had it, to the metric logger) and the end-of-run summary (returned,
and printed by rank 0)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from minigpt4.common.dist_utils import DistInfo, all_reduce_sum, union_of_keys
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

    def _log_train(self, terms: Dict[str, Tuple[float, int]], stats: Dict[str, float], samples: int,
                   elapsed: float) -> Dict[str, Any]:
        """terms: per loss term, (sum over the interval's batches that had it, how many had it);
        the record holds each term's mean over those batches, over all ranks together."""
        if self.dist.distributed:  # every rank calls, with the same keys in the same order
            keys = union_of_keys(terms)
            flat = [x for k in keys for x in terms.get(k, (0.0, 0))]
            vals = all_reduce_sum(flat + [float(samples)], self.device)
            terms = {k: (vals[2 * i], int(vals[2 * i + 1])) for i, k in enumerate(keys)}
            samples = int(vals[-1])
        means = {k: total / count for k, (total, count) in terms.items() if count > 0}
        record: Dict[str, Any] = {"step": self.step, "epoch": self.epoch, "phase": "train", "lr": stats["lr"]}
        record.update(means)
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
