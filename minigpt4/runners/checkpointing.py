"""Checkpoints of `RunnerBase`: what a checkpoint holds, writing it, and resuming from one.

Exact resume: a checkpoint records the epoch, the batches already consumed in it, the
optimisers/scheduler/scaler, and every rank's RNG states; with the seeded data order
(`loaders.py`) a resumed run continues with the same batches and random numbers as an
uninterrupted run. Resuming under a different world size or changed run settings is allowed
but warned about.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from minigpt4.common import checkpoint as ckpt
from minigpt4.common.dist_utils import DistInfo
from minigpt4.common.schema import RunConfig
from minigpt4.common.seed import capture_rng_state, restore_rng_state

__all__ = ["CheckpointMixin"]

# log under the runner module's name, as before the runner was split, so log lines stay the same
logger = logging.getLogger("minigpt4.runners.runner_base")


class CheckpointMixin:
    """`RunnerBase.save_checkpoint` / `resume`: rank 0 writes, every rank contributes its RNG state."""

    cfg: DictConfig
    run_cfg: RunConfig
    dist: DistInfo
    rank: int
    world_size: int
    is_main: bool
    output_dir: Path
    model_raw: nn.Module
    optimizers: Dict[str, torch.optim.Optimizer]
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    step: int
    epoch: int
    iter_in_epoch: int
    best: Optional[Dict[str, Any]]

    def _training_state(self) -> Dict[str, Any]:
        rng = capture_rng_state()
        if self.dist.distributed:
            gathered: List[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        return {
            "step": self.step, "epoch": self.epoch, "iter_in_epoch": self.iter_in_epoch,
            "sampler_epoch": self.epoch, "world_size": self.world_size,
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_all, "best": dict(self.best) if self.best else None,
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
        }

    def save_checkpoint(self, best: Optional[Dict[str, Any]] = None) -> Optional[Path]:
        """Every rank gathers RNG states; rank 0 writes. Returns the folder (rank 0) or None."""
        state = self._training_state()
        path = None
        if self.is_main:
            path = ckpt.save_checkpoint(self.output_dir, self.step, ckpt.trainable_state_dict(self.model_raw),
                                        state, keep_last_k=self.run_cfg.keep_last_k, best=best)
            logger.info("saved %s", path)
        if self.dist.distributed:
            dist.barrier()
        return path

    def resume(self, path: str) -> None:
        """Load weights, optimisers, scheduler, scaler, counters and RNG from a checkpoint."""
        ckpt_dir = ckpt.resolve_checkpoint(path)
        ckpt.load_model_weights(self.model_raw, ckpt_dir)
        state = ckpt.load_training_state(ckpt_dir)
        missing = set(self.optimizers) ^ set(state["optimizers"])
        if missing:
            raise ckpt.CheckpointMismatchError(f"{ckpt_dir}: optimisers {sorted(state['optimizers'])} in the checkpoint, "
                                               f"{sorted(self.optimizers)} in this run")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.iter_in_epoch = int(state["iter_in_epoch"])
        self.best = state.get("best")
        self._warn_config_drift(state.get("config"), state.get("world_size"))
        rngs = state["rng"]
        restore_rng_state(rngs[self.rank % len(rngs)])
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt_dir, self.step, self.epoch, self.iter_in_epoch)

    def _warn_config_drift(self, saved_yaml: Optional[str], saved_world: Optional[int]) -> None:
        if saved_world is not None and int(saved_world) != self.world_size:
            logger.warning("resuming with %d processes, checkpoint was written by %d: data order and per-rank "
                           "RNG differ from the original run", self.world_size, saved_world)
        if not saved_yaml:
            return
        old = OmegaConf.create(saved_yaml).get("run") or {}
        for key in ("batch_size_train", "accum_grad_iters", "seed", "max_epoch", "iters_per_epoch", "lr_sched", "init_lr"):
            if key in old and old[key] != getattr(self.run_cfg, key):
                logger.warning("run.%s changed since the checkpoint (%r -> %r): the resumed run will not match "
                               "an uninterrupted one", key, old[key], getattr(self.run_cfg, key))


def refuse_used_folder(output_dir: Path) -> None:
    """A fresh run must not start in another run's folder: its checkpoints would be pruned
    against the old ones, config.yaml overwritten, both runs mixed in log.txt, and
    `hero-eval --ckpt` would pick the old run's weights."""
    output_dir = Path(output_dir)
    existing = ckpt.list_checkpoints(output_dir)
    log = output_dir / "log.txt"
    if existing or (log.is_file() and log.stat().st_size > 0):
        held = f"checkpoints up to {existing[-1].name}" if existing else "a log.txt"
        raise FileExistsError(
            f"run.output_dir {output_dir} already holds a run ({held}); continue it with --resume "
            f"(run.resume_ckpt_path=auto), or start this one in another run.output_dir")
