"""RunnerBase (registry name "runner_base"): the training loop.

Owns devices, DDP, data loaders, optimisers, LR schedule, mixed precision, gradient
accumulation and clipping, logging, validation and checkpoints; the task owns what a step
computes. The loop counts *optimiser steps* (`self.step`); one step consumes
`run.accum_grad_iters` batches ("iterations").

Exact resume: a checkpoint records the epoch, the batches already consumed in it, the
optimisers/scheduler/scaler, and every rank's RNG states. Data order depends only on
`(run.seed, epoch)` (the sampler and the loader have their own generators, never the global
one), so a resumed run starts the epoch's sampler past the consumed batches and continues
with the same batches and random numbers as an uninterrupted run, and `log.txt` is cut back to
the checkpoint's step so the redone steps are logged once.

Before the first epoch (`ValidationMixin.preflight`) every validation sample is read and
`run.best_metric` is checked against the terms validation produces, so neither fails only
after an epoch of work.

A fresh run (not a resumed one) first loads `model.init_from`'s weights (`init_from.py`: weights
only, refused from a run with an incompatible model config), before anything is written.

Auxiliary optimisers (docs/ARCHITECTURE.md "Runner <-> model"): parameters named by
`model.auxiliary_parameter_groups()` get their own AdamW each and never enter the main one;
the runner back-propagates `loss + sum(aux_losses)` once and steps every optimiser.

This module holds the loop; `RunnerBase` takes the rest from one mixin per job: `loaders.py`
(samplers, loaders, batch helpers), `optimizers.py` (optimisers, schedule, AMP, the step),
`checkpointing.py` (save / resume), `validation.py` (evaluate, best checkpoint) and
`reporting.py` (train records, summary). Their public names stay importable from here.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import IterableDataset

from minigpt4.common import checkpoint as ckpt
from minigpt4.common.config import save_config
from minigpt4.common.dist_utils import DistInfo, init_distributed_mode
from minigpt4.common.logger import MetricLogger, truncate_log
from minigpt4.common.registry import registry
from minigpt4.common.schema import RunConfig, build
from minigpt4.common.seed import capture_rng_state, restore_rng_state, set_seed
from minigpt4.datasets.datasets import without_training_dropout
from minigpt4.runners.checkpointing import CheckpointMixin, refuse_used_folder
from minigpt4.runners.extraction_record import write_extraction_settings
from minigpt4.runners.init_from import apply_init_from
from minigpt4.runners.loaders import (
    DataMixin,
    ResumableDistributedSampler,
    batch_size_of,
    move_to_device,
    sharded_loader,
)
from minigpt4.runners.optimizers import OptimMixin, resolve_amp
from minigpt4.runners.reporting import ReportingMixin
from minigpt4.runners.validation import ValidationMixin
from minigpt4.tasks.base_task import BaseTask, scalar_terms

__all__ = [
    "ResumableDistributedSampler",
    "RunnerBase",
    "batch_size_of",
    "move_to_device",
    "resolve_amp",
    "sharded_loader",
]

logger = logging.getLogger(__name__)


@registry.register_runner("runner_base")
class RunnerBase(DataMixin, OptimMixin, CheckpointMixin, ValidationMixin, ReportingMixin):
    """Train `model` on `datasets` as `task` says, under the `run` section of `cfg`."""

    def __init__(self, cfg: DictConfig, task: BaseTask, model: nn.Module,
                 datasets: Mapping[str, Mapping[str, Any]], dist_info: Optional[DistInfo] = None) -> None:
        self.cfg = cfg
        # the run section, typed and checked (a runner may get a hand-made config): every run key is
        # read from here, so each default lives in schema.RunConfig only
        self.run_cfg: RunConfig = build(RunConfig, cfg.run, "run.", "run config")
        self.task = task
        self.datasets = datasets
        self.dist = dist_info or init_distributed_mode(self.run_cfg.device)
        self.device = self.dist.device
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.rank == 0
        self.output_dir = Path(self.run_cfg.output_dir)
        self.seed = self.run_cfg.seed
        self.accum = self.run_cfg.accum_grad_iters
        self.amp_dtype, use_scaler = resolve_amp(self.run_cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None

        self.model_raw = model.to(self.device)
        self.model: nn.Module = self.model_raw
        if self.dist.distributed:
            self.model = DDP(self.model_raw, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             find_unused_parameters=self.run_cfg.find_unused_parameters)
        # Model init used run.seed on every rank; from here on each rank draws its own numbers.
        set_seed(self.seed + self.rank)

        self.step = 0  # optimiser steps done
        self.epoch = 0  # current epoch
        self.iter_in_epoch = 0  # batches of the current epoch already consumed
        self.best: Optional[Dict[str, Any]] = None
        self.last_train: Dict[str, Any] = {}
        self.last_val: Dict[str, float] = {}
        self.val_records: List[Dict[str, Any]] = []
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.scheduler = None
        self._aux_params: Dict[str, List[nn.Parameter]] = {}
        self._logger: Optional[MetricLogger] = None

    def train(self) -> Dict[str, Any]:
        """Run training (or only validation when run.evaluate); returns the end-of-run summary."""
        rc = self.run_cfg
        if not rc.evaluate and not rc.resume_ckpt_path:
            refuse_used_folder(self.output_dir)
        resume = None if rc.evaluate else self._resume_source()
        if not rc.evaluate and not resume:  # weights only, before the run folder is written
            apply_init_from(self.model_raw, self.cfg)
        if not rc.evaluate:  # what the first epoch would fail on, found before the run folder is written
            train_ds = self.train_dataset
            n_iters = self.iters_per_epoch(train_ds)
            self.preflight()
        if self.is_main:
            save_config(self.cfg, self.output_dir / "config.yaml")
            if not rc.evaluate:  # how the features were made, so inference can make them the same way
                write_extraction_settings(train_ds, self.output_dir)
        if rc.evaluate:
            return self._evaluate_only()
        steps_per_epoch = math.ceil(n_iters / self.accum)
        max_epoch = rc.max_epoch
        self._build_optimizers(total_steps=max_epoch * steps_per_epoch)
        if resume:
            self.resume(str(resume))
            if self.is_main:  # the steps after the checkpoint are redone: log them once
                truncate_log(self.output_dir, self.step, self.epoch)
        else:
            self._warm_up_estimators(train_ds)
            self._refit_statistics(train_ds)
        self._logger = MetricLogger(self.output_dir, enabled=self.is_main, purge_step=self.step + 1 if resume else None)
        use_no_sync = self.dist.distributed and not isinstance(train_ds, IterableDataset)
        log_freq, save_freq, save_every_epoch = rc.log_freq, rc.save_freq, rc.save_every_epoch
        t_start = time.time()
        logger.info("training: %d epochs x %d steps (%d batches of %d per rank, accum %d, %d ranks), device %s, amp %s",
                    max_epoch, steps_per_epoch, n_iters, rc.batch_size_train, self.accum, self.world_size,
                    self.device, self.amp_dtype)
        self.model.train()
        try:
            while self.epoch < max_epoch:
                self._train_epoch(train_ds, n_iters, use_no_sync, log_freq, save_freq, save_every_epoch)
        finally:
            if self._logger is not None:
                self._logger.close()
        return self._summary(time.time() - t_start)

    def _train_epoch(self, train_ds: Any, n_iters: int, use_no_sync: bool, log_freq: int, save_freq: int,
                     save_every_epoch: bool) -> None:
        epoch, skip = self.epoch, self.iter_in_epoch
        from tqdm.auto import tqdm

        bar = tqdm(total=n_iters, initial=skip, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False,
                   disable=not (self.is_main and self.run_cfg.progress_bar))
        batches = self._train_batches(train_ds, epoch, skip) if skip < n_iters else iter(())
        # per term: (sum, batches that had it) since the last log line; a term can be missing from a
        # batch (e.g. no evidence target in it), so each is averaged over its own batches, also
        # within a step of several accumulated batches and over ranks
        interval_terms: Dict[str, Tuple[float, int]] = {}
        t_log, samples_since = time.time(), 0
        it = skip
        while it < n_iters:
            samples = next(batches, None)
            if samples is None:
                raise RuntimeError(f"epoch {epoch}: the train loader stopped after {it} of {n_iters} batches")
            group_start = (it // self.accum) * self.accum
            group_size = min(self.accum, n_iters - group_start)
            last_in_group = it + 1 == group_start + group_size
            samples = move_to_device(samples, self.device, non_blocking=self.device.type == "cuda")
            sync = contextlib.nullcontext() if (last_in_group or not use_no_sync) else self.model.no_sync()
            with sync:
                with self._autocast():
                    out = self.task.train_step(self.model, samples)
                    total = out["loss"] + sum(out.get("aux_losses", {}).values(), torch.zeros((), device=self.device))
                if self.scaler is None and not torch.isfinite(total.detach()):
                    terms = scalar_terms(out)
                    raise FloatingPointError(f"non-finite loss at step {self.step} (epoch {epoch}, batch {it}): {terms}")
                scaled = total.float() / group_size
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            for k, v in scalar_terms(out).items():
                total_k, count_k = interval_terms.get(k, (0.0, 0))
                interval_terms[k] = (total_k + v, count_k + 1)
            samples_since += batch_size_of(samples)  # this rank; summed over ranks when logged
            it += 1
            self.iter_in_epoch = it
            bar.update(1)
            if not last_in_group:
                continue
            stats = self._optimizer_step()
            if self.step % log_freq == 0 or it == n_iters:
                now = time.time()
                # the mean over the interval, as HF Trainer logs it: one step's value of a
                # few-clip estimate (the vCLUB bound on 8 clips) is mostly noise
                self.last_train = self._log_train(interval_terms, stats, samples_since, now - t_log)
                t_log, samples_since = now, 0
                interval_terms = {}
                bar.set_postfix(loss=f"{self.last_train.get('loss', float('nan')):.4f}", lr=f"{stats['lr']:.2e}")
            end_of_epoch = it == n_iters
            if save_freq > 0 and self.step % save_freq == 0 and not (end_of_epoch and save_every_epoch):
                self.save_checkpoint()
        bar.close()
        # end of epoch: refit data statistics, validate, then advance the counters and checkpoint
        # (so resume starts the next epoch with the statistics the checkpoint holds)
        self._refit_statistics(train_ds)
        val = self.evaluate()
        best = None
        if val:
            self.last_val = val
            metric, mode = self.best_metric()
            if metric not in val:
                raise KeyError(f"run.best_metric={metric!r} is not a validation term; terms: {sorted(val)}")
            if self._is_better(val[metric]):
                best = {"metric": metric, "value": val[metric], "mode": mode,
                        "epoch": epoch}
                self.best = dict(best, step=self.step)
            if self._logger is not None:
                self._logger.log({"step": self.step, "epoch": epoch, "phase": "val",
                                  **{f"val_{k}": v for k, v in val.items()}}, self.step)
            logger.info("epoch %d validation: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in val.items()))
        self.epoch, self.iter_in_epoch = epoch + 1, 0
        if save_every_epoch:
            path = self.save_checkpoint(best=best)
            if best is not None and path is not None:
                self.calibrate_best(path)

    def _warm_up_estimators(self, train_ds: Any) -> None:
        """A fresh run only (a resume restores the fitted estimators): the model's mutual-information
        estimators are fitted on its initial representations of training batches
        (`model.warm_up_estimators`), every RNG state left as it was; with DDP, rank 0's fit is
        broadcast so every rank starts from the same estimator."""
        warm_up = getattr(self.model_raw, "warm_up_estimators", None)
        if not callable(warm_up):
            return
        lr = self.run_cfg.init_lr
        stats, seconds = self._read_training_batches(lambda batches: warm_up(batches, lr),
                                                     self._train_batches(train_ds, 0, 0))
        if self.dist.distributed:
            for group in self._aux_params.values():
                for p in group:
                    dist.broadcast(p.data, src=0)
        self._log_pass("estimator warm-up", stats, seconds)

    def _refit_statistics(self, train_ds: Any) -> None:
        """Statistics the model takes from one epoch's training batches (the whole split unless
        `run.iters_per_epoch` caps it) rather than from gradients (`model.refit_statistics`, e.g.
        HERO's content eraser), read without training-time dropout, RNG states left as they were; with DDP each rank reads its shard and rank 0's
        statistics reach the others with the module buffers at the next forward."""
        refit = getattr(self.model_raw, "refit_statistics", None)
        if not callable(refit):
            return
        with without_training_dropout(train_ds):
            batches = itertools.islice(self._train_batches(train_ds, self.epoch, 0), self.iters_per_epoch(train_ds))
            stats, seconds = self._read_training_batches(refit, batches)
        self._log_pass("statistics refit", stats, seconds)

    def _read_training_batches(self, read: Any, batches: Any) -> tuple[Any, float]:
        """(what `read` returns for `batches` moved to the device, seconds); every RNG state is
        restored afterwards, so the training run draws the same numbers as without it.

        Read in full precision, outside the training step's autocast: these passes fit statistics in
        closed form (content eraser, read-outs) or warm estimators up, and fitted on bf16 summaries
        the demo recipe trained under `run.amp=bf16` read 0.02-0.06 lower on both synthetic corpora
        than with the same passes in fp32 (README, "bf16 and accuracy")."""
        rng = capture_rng_state()
        t0 = time.time()
        try:
            with torch.autocast(self.device.type, enabled=False):
                stats = read(move_to_device(s, self.device, non_blocking=self.device.type == "cuda") for s in batches)
        finally:
            restore_rng_state(rng)
        return stats, time.time() - t0

    def _log_pass(self, what: str, stats: Optional[Mapping[str, float]], seconds: float) -> None:
        if stats and self.is_main:
            logger.info("%s (%.1f s): %s", what, seconds, ", ".join(f"{k}={v:.4f}" for k, v in stats.items()))

    def _resume_source(self) -> Optional[str]:
        """The checkpoint a training run resumes from (`run.resume_ckpt_path`; `auto`: the latest in
        `run.output_dir`), or None for a fresh start."""
        resume = self.run_cfg.resume_ckpt_path
        if resume == "auto":
            resume = ckpt.find_latest_checkpoint(self.output_dir)
            if resume is None:
                logger.info("run.resume_ckpt_path=auto: no checkpoint in %s yet, starting fresh", self.output_dir)
        return str(resume) if resume else None

    def _evaluate_only(self) -> Dict[str, Any]:
        path = self.run_cfg.resume_ckpt_path
        if path:
            loaded = ckpt.load_model_weights(self.model_raw, str(path))
            logger.info("evaluating weights from %s", loaded)
        t0 = time.time()
        val = self.evaluate()
        if not val:
            raise ValueError(f"run.evaluate=true but no dataset has a split in run.valid_splits="
                             f"{self.run_cfg.valid_splits}")
        self.last_val = val
        if self.is_main:
            log = MetricLogger(self.output_dir, tensorboard=False)
            log.log({"step": self.step, "epoch": self.epoch, "phase": "val", **{f"val_{k}": v for k, v in val.items()}},
                    self.step)
            log.close()
        return self._summary(time.time() - t0)
