"""Validation of `RunnerBase`: task terms (and generated reports) over the validation splits,
and which checkpoint is best.

Every rank evaluates its shard (`loaders.sharded_loader`); the sample-weighted sums, counts and
generated records are gathered, so the result is the mean over every validation clip once.

`preflight` runs before the first epoch what would otherwise fail only at its end: every
validation sample is read once (a corrupt file is an error at start, not after an epoch of
work) and `run.best_metric` is checked against the terms one validation batch produces.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import ConcatDataset, IterableDataset

from minigpt4.common.dist_utils import DistInfo
from minigpt4.common.schema import ConfigError, RunConfig
from minigpt4.common.seed import capture_rng_state, restore_rng_state
from minigpt4.evaluation.temperature import fit_from_records, save_calibration
from minigpt4.runners.loaders import batch_size_of, move_to_device
from minigpt4.tasks.base_task import BaseTask

__all__ = ["ValidationMixin"]

# log under the runner module's name, as before the runner was split, so log lines stay the same
logger = logging.getLogger("minigpt4.runners.runner_base")


class ValidationMixin:
    """`RunnerBase.evaluate`, `best_metric` and the best-checkpoint test."""

    run_cfg: RunConfig
    task: BaseTask
    dist: DistInfo
    device: torch.device
    world_size: int
    is_main: bool
    model_raw: nn.Module
    output_dir: Path
    best: Optional[Dict[str, Any]]
    val_records: List[Dict[str, Any]]  # the last validation's generated records (all ranks')

    @torch.no_grad()
    def evaluate(self, dataset: Optional[Any] = None) -> Dict[str, float]:
        """Sample-weighted mean of `task.valid_step` terms over the validation splits (all ranks)."""
        dataset = self.valid_dataset if dataset is None else dataset
        if dataset is None:
            return {}
        was_training = self.model_raw.training
        self.model_raw.eval()
        t0 = time.perf_counter()
        sums: Dict[str, float] = {}
        count = 0
        records: List[Dict[str, Any]] = []
        generate = self._generates_at_validation()
        loader = self._valid_loader(dataset)
        for samples in loader:
            samples = move_to_device(samples, self.device, non_blocking=self.device.type == "cuda")
            with self._autocast():
                terms = self.task.valid_step(self.model_raw, samples)
                if generate:
                    records.extend(self.task.valid_generate(self.model_raw, samples,
                                                            self.run_cfg.val_max_new_tokens))
            n = batch_size_of(samples)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
        if self.dist.distributed:
            gathered: List[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, (sums, count, records))
            sums, count, records = {}, 0, []
            for s, c, r in gathered:
                for k, v in s.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += c
                records.extend(r)
        self.model_raw.train(was_training)
        seconds = time.perf_counter() - t0
        if self.is_main and count:
            logger.info("validation: %d clips in %.1f s (%.2f clips/s%s)", count, seconds, count / max(seconds, 1e-9),
                        ", reports generated" if generate else "")
        result = {k: v / count for k, v in sorted(sums.items())} if count else {}
        self.val_records = records
        if generate and records:
            scored = self.task.generation_terms(records, list(self.model_raw.label_names))
            result.update(scored["terms"])
            if self.is_main:
                for warning in scored["warnings"]:
                    logger.warning("validation by generation: %s", warning)
        return result

    def preflight(self) -> None:
        """Before epoch 1: read every validation sample of this rank's shard (a broken file fails now,
        naming it) and check `run.best_metric` against what validation produces. Leaves the model,
        its train/eval flags and every RNG state as they were (resume stays bit-exact)."""
        dataset = self.valid_dataset
        if dataset is None:
            names = list(self.run_cfg.valid_splits)
            if names and self.is_main:
                logger.warning("run.valid_splits=%s: no dataset has these splits; no validation, no best checkpoint",
                               names)
            return
        failure: Optional[BaseException] = None
        terms: Optional[set[str]] = None
        try:
            n = _read_samples(dataset, self.dist.rank, self.world_size)
            terms = self._validation_terms(dataset)
        except (ValueError, OSError, KeyError) as exc:
            failure = exc
        if self.dist.distributed:  # every rank stops, or none: a lone failure would hang the others
            gathered: List[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, (None if failure is None else str(failure), terms))
            if failure is None and any(f for f, _ in gathered):
                raise RuntimeError(f"another rank failed the validation check: {next(f for f, _ in gathered if f)}")
            terms = set().union(*(t for _, t in gathered if t)) if any(t for _, t in gathered) else None
        if failure is not None:
            raise failure
        metric = self.best_metric()[0]
        if terms is not None and metric not in terms:
            raise ConfigError(f"run.best_metric={metric!r} is not a term validation produces; "
                              f"it produces: {', '.join(sorted(terms))}")
        logger.info("validation data checked: %d samples read on this rank, best checkpoint by %s", n, metric)

    def _validation_terms(self, dataset: Any) -> Optional[set[str]]:
        """Names of the terms validation reports, from one batch (generation with a 1-token budget);
        None when this rank has no validation batch. The model's flags are set directly (no
        `train()`/`eval()` call a model might count) and restored, as are the RNG states."""
        rng = capture_rng_state()
        flags = {m: m.training for m in self.model_raw.modules()}
        try:
            samples = next(iter(self._valid_loader(dataset)), None)
            if samples is None:
                return None
            for m in flags:
                m.training = False
            samples = move_to_device(samples, self.device, non_blocking=self.device.type == "cuda")
            with torch.no_grad(), self._autocast():
                names = set(self.task.valid_step(self.model_raw, samples))
                if self._generates_at_validation():
                    records = self.task.valid_generate(self.model_raw, samples, 1)
                    names |= set(self.task.generation_terms(records, list(self.model_raw.label_names))["terms"])
            return names
        finally:
            for m, training in flags.items():
                m.training = training
            restore_rng_state(rng)

    def _generates_at_validation(self) -> bool:
        """`run.val_generate` and a task/model pair that can generate reports (HERO's can, but for
        observation pre-training, whose model says `can_generate` False: its LLM is not trained)."""
        return (self.run_cfg.val_generate and hasattr(self.task, "valid_generate")
                and hasattr(self.model_raw, "generate") and hasattr(self.model_raw, "label_names")
                and bool(getattr(self.model_raw, "can_generate", True)))

    def best_metric(self) -> tuple[str, str]:
        """(validation term, min|max) that picks the best checkpoint; `auto` resolves here.

        auto metric: `gen_accuracy` when validation generates, else the model's `auto_best_metric`
        (HERO's observation pre-training: `cls_accuracy`), else `loss`. auto mode: max for
        accuracy-like terms (accuracy, f1, uar, agreement, compliance), min for the rest.
        """
        metric = self.run_cfg.best_metric
        if metric == "auto":
            own = getattr(self.model_raw, "auto_best_metric", None)
            metric = "gen_accuracy" if self._generates_at_validation() else str(own or "loss")
        mode = self.run_cfg.best_mode
        if mode == "auto":
            higher = ("accuracy", "f1", "uar", "agreement", "compliance")
            mode = "max" if any(h in metric for h in higher) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"run.best_mode must be min, max or auto; got {mode!r}")
        return metric, mode

    def calibrate_best(self, checkpoint: Path) -> None:
        """`run.calibrate`: fit the classification head's temperature on the validation clips just
        generated (their head probabilities, at T = 1) for `checkpoint`, the new best, and save it as
        the run's calibration.json, which hero-eval, hero-infer and hero-app apply to it. Why: the
        head fits its training clips and is over-confident on new ones; one temperature fitted on
        held-out clips fixes most of that and keeps every prediction (evaluation/temperature.py)."""
        if not (self.run_cfg.calibrate and self.is_main and self.val_records):
            return
        try:
            fit = fit_from_records(self.val_records, list(self.model_raw.label_names))
        except ValueError as exc:  # e.g. no classification head: no head probabilities to scale
            logger.info("run.calibrate: no head temperature fitted (%s)", exc)
            return
        path = save_calibration(self.output_dir, fit, checkpoint, "+".join(self.run_cfg.valid_splits))
        logger.info("head temperature %.4f fitted on %d validation clips (NLL %.4f -> %.4f) for %s, saved to %s",
                    fit.temperature, fit.n, fit.nll_before, fit.nll_after, Path(checkpoint).name, path)

    def _is_better(self, value: float) -> bool:
        """Whether `value` moves the best checkpoint here. A tie moves it too under `run.best_tie:
        later`: accuracy on a few dozen val clips ties often, and the later checkpoint has trained
        longer, at a lower learning rate."""
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        mode, best = self.best_metric()[1], self.best["value"]
        if value == best:
            return self.run_cfg.best_tie == "later"
        return value < best if mode == "min" else value > best


def _read_samples(dataset: Any, rank: int, world_size: int) -> int:
    """Read this rank's share of every map-style part of `dataset` (as validation will: each file is
    opened and checked); returns the count. Streaming parts are read by validation itself."""
    if isinstance(dataset, ConcatDataset):
        return sum(_read_samples(d, rank, world_size) for d in dataset.datasets)
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return 0
    indices = range(rank, len(dataset), world_size)
    for i in indices:
        dataset[i]
    return len(indices)
