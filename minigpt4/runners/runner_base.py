"""RunnerBase (registry name "runner_base"): the training loop.

Owns devices, DDP, data loaders, optimisers, LR schedule, mixed precision, gradient
accumulation and clipping, logging, validation and checkpoints; the task owns what a step
computes. The loop counts *optimiser steps* (`self.step`); one step consumes
`run.accum_grad_iters` batches ("iterations").

Exact resume: a checkpoint records the epoch, the batches already consumed in it, the
optimisers/scheduler/scaler, and every rank's RNG states. Data order depends only on
`(run.seed, epoch)` (the sampler and the loader have their own generators, never the global
one), so a resumed run starts the epoch's sampler past the consumed batches and continues
with the same batches and random numbers as an uninterrupted run.

Auxiliary optimisers (docs/ARCHITECTURE.md "Runner <-> model"): parameters named by
`model.auxiliary_parameter_groups()` get their own AdamW each and never enter the main one;
the runner back-propagates `loss + sum(aux_losses)` once and steps every optimiser.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, IterableDataset
from torch.utils.data.dataloader import default_collate

from minigpt4.common import checkpoint as ckpt
from minigpt4.common.config import save_config
from minigpt4.common.dist_utils import DistInfo, all_reduce_sum, init_distributed_mode
from minigpt4.common.logger import MetricLogger
from minigpt4.common.optims import build_adamw, build_param_groups
from minigpt4.common.registry import registry
from minigpt4.common.seed import capture_rng_state, restore_rng_state, set_seed
from minigpt4.tasks.base_task import BaseTask, scalar_terms

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ samplers
class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle, `set_epoch`) that can start part-way into an epoch.

    `set_start(n)` skips this rank's first `n` indices of the current epoch, so a resumed run
    does not load the batches it already trained on. Also used with one replica, so single-
    process and DDP runs draw the same permutation.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = max(0, int(start))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker distinct python/numpy seeds derived from its torch seed."""
    import random

    import numpy as np

    seed = torch.initial_seed() % (2**32)
    random.seed(seed)
    np.random.seed(seed)


# ------------------------------------------------------------------------------ helpers
def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Tensors (also inside dicts/lists/tuples) to `device`; everything else untouched.

    A list or tuple without tensors comes back as the same object (string fields stay as-is).
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [move_to_device(v, device, non_blocking) for v in obj]
        if all(m is o for m, o in zip(moved, obj)):
            return obj
        return moved if isinstance(obj, list) else tuple(moved)
    return obj


def batch_size_of(samples: Any) -> int:
    """Leading size of the first tensor in a batch (dict or sequence), else of the first list; else 1."""
    values = list(samples.values()) if isinstance(samples, Mapping) else \
        list(samples) if isinstance(samples, (list, tuple)) else [samples]
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    for v in values:
        if isinstance(v, (list, tuple)):
            return len(v)
    return 1


def _collater_of(ds: Any):
    while isinstance(ds, ConcatDataset):
        ds = ds.datasets[0]
    return getattr(ds, "collater", None) or default_collate


def _set_dataset_epoch(ds: Any, epoch: int) -> None:
    if isinstance(ds, ConcatDataset):
        for sub in ds.datasets:
            _set_dataset_epoch(sub, epoch)
    elif hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)


def sharded_loader(dataset: Any, batch_size: int, num_workers: int, rank: int, world_size: int,
                   pin_memory: bool, seed: int = 0) -> DataLoader:
    """The evaluation loader of validation (runner) and `hero-eval`: rank `r` of `w` reads
    dataset indices r, r+w, ... in order (`records.shard_indices`: no padding, no shuffle),
    so gathering the ranks' results covers every clip exactly once; a streaming dataset
    splits its shards by rank itself."""
    from minigpt4.evaluation.records import shard_indices

    common = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=_collater_of(dataset),
                  pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
    _set_dataset_epoch(dataset, 0)
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, **common)
    return DataLoader(dataset, sampler=shard_indices(len(dataset), rank, world_size), **common)


def resolve_amp(amp: str, device: torch.device) -> Tuple[Optional[torch.dtype], bool]:
    """`run.amp` -> (autocast dtype or None, use a GradScaler).

    auto: bf16 on CUDA when supported, else fp16 with a GradScaler; fp32 on CPU.
    bf16 is allowed on CPU when asked for explicitly; fp16 on CPU is refused (slow, no scaler).
    """
    amp = str(amp or "none").lower()
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise ValueError(f"run.amp must be auto, bf16, fp16 or none; got {amp!r}")
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None, False
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ValueError("run.amp=fp16 needs CUDA; on CPU use run.amp=bf16 or none")
    return torch.float16, True


# -------------------------------------------------------------------------------- runner
@registry.register_runner("runner_base")
class RunnerBase:
    """Train `model` on `datasets` as `task` says, under the `run` section of `cfg`."""

    def __init__(self, cfg: DictConfig, task: BaseTask, model: nn.Module,
                 datasets: Mapping[str, Mapping[str, Any]], dist_info: Optional[DistInfo] = None) -> None:
        self.cfg = cfg
        self.run_cfg = cfg.run
        self.task = task
        self.datasets = datasets
        self.dist = dist_info or init_distributed_mode(self.run_cfg.get("device", "auto"))
        self.device = self.dist.device
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.rank == 0
        self.output_dir = Path(str(self.run_cfg.output_dir))
        self.seed = int(self.run_cfg.seed)
        self.accum = max(1, int(self.run_cfg.get("accum_grad_iters") or 1))
        self.amp_dtype, use_scaler = resolve_amp(self.run_cfg.get("amp", "auto"), self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None

        self.model_raw = model.to(self.device)
        self.model: nn.Module = self.model_raw
        if self.dist.distributed:
            self.model = DDP(self.model_raw, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             find_unused_parameters=bool(self.run_cfg.get("find_unused_parameters", True)))
        # Model init used run.seed on every rank; from here on each rank draws its own numbers.
        set_seed(self.seed + self.rank)

        self.step = 0  # optimiser steps done
        self.epoch = 0  # current epoch
        self.iter_in_epoch = 0  # batches of the current epoch already consumed
        self.best: Optional[Dict[str, Any]] = None
        self.last_train: Dict[str, Any] = {}
        self.last_val: Dict[str, float] = {}
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.scheduler = None
        self._aux_params: Dict[str, List[nn.Parameter]] = {}
        self._logger: Optional[MetricLogger] = None

    # ----------------------------------------------------------------- datasets
    def _split_dataset(self, splits: Sequence[str]) -> Optional[Any]:
        found = [ds for name in self.datasets for split, ds in self.datasets[name].items() if split in splits]
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        if any(isinstance(d, IterableDataset) for d in found):
            raise ValueError(f"splits {list(splits)} come from several datasets and one streams (IterableDataset); "
                             "give one streaming dataset per split")
        return ConcatDataset(found)

    @property
    def train_dataset(self) -> Any:
        ds = self._split_dataset(list(self.run_cfg.train_splits))
        if ds is None:
            have = {name: sorted(s) for name, s in self.datasets.items()}
            raise ValueError(f"no dataset has a split in run.train_splits={list(self.run_cfg.train_splits)}; "
                             f"built splits: {have}")
        return ds

    @property
    def valid_dataset(self) -> Optional[Any]:
        return self._split_dataset(list(self.run_cfg.get("valid_splits") or []))

    def iters_per_epoch(self, dataset: Any) -> int:
        """Batches per epoch on each rank: len(loader), capped by run.iters_per_epoch."""
        cap = self.run_cfg.get("iters_per_epoch")
        bs = int(self.run_cfg.batch_size_train)
        if isinstance(dataset, IterableDataset):
            if not cap:
                raise ValueError("run.iters_per_epoch is required for streaming (IterableDataset) training data")
            return int(cap)
        per_rank = math.ceil(len(dataset) / self.world_size)
        n = per_rank // bs if self.run_cfg.get("drop_last", True) else math.ceil(per_rank / bs)
        if n == 0:
            raise ValueError(f"train data has {len(dataset)} samples ({per_rank} per rank), fewer than "
                             f"run.batch_size_train={bs}: no full batch (lower the batch size or set run.drop_last=false)")
        return min(n, int(cap)) if cap else n

    def _train_batches(self, dataset: Any, epoch: int, skip: int) -> Iterator[Any]:
        """This rank's batches of `epoch`, starting after the first `skip` ones."""
        bs = int(self.run_cfg.batch_size_train)
        _set_dataset_epoch(dataset, epoch)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + self.rank)
        common = dict(batch_size=bs, num_workers=int(self.run_cfg.get("num_workers") or 0),
                      collate_fn=_collater_of(dataset), pin_memory=self.device.type == "cuda",
                      worker_init_fn=_seed_worker, generator=gen)
        if isinstance(dataset, IterableDataset):
            loader = DataLoader(dataset, **common)
            return self._cycle(loader, skip)
        sampler = ResumableDistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        sampler.set_start(skip * bs)
        loader = DataLoader(dataset, sampler=sampler, drop_last=bool(self.run_cfg.get("drop_last", True)), **common)
        return iter(loader)

    @staticmethod
    def _cycle(loader: DataLoader, skip: int) -> Iterator[Any]:
        """Stream batches, restarting the stream when it runs dry (every rank sees iters_per_epoch)."""
        skipped = 0
        while True:
            empty = True
            for batch in loader:
                empty = False
                if skipped < skip:
                    skipped += 1
                    continue
                yield batch
            if empty:
                raise ValueError("the streaming training dataset yielded no batch")

    def _valid_loader(self, dataset: Any) -> DataLoader:
        return sharded_loader(dataset, int(self.run_cfg.batch_size_eval), int(self.run_cfg.get("num_workers") or 0),
                              self.rank, self.world_size, self.device.type == "cuda", self.seed)

    # --------------------------------------------------------------- optimisers
    def _build_optimizers(self, total_steps: int) -> None:
        rc = self.run_cfg
        betas = (float(rc.get("beta1", 0.9)), float(rc.get("beta2", 0.999)))
        wd = float(rc.get("weight_decay") or 0.0)
        names = {id(p): n for n, p in self.model_raw.named_parameters()}
        aux_ids: set[int] = set()
        hook = getattr(self.model_raw, "auxiliary_parameter_groups", None)
        aux_groups = hook() if callable(hook) else {}
        for gname, group in (aux_groups or {}).items():
            params = list(group["params"])
            for p in params:
                if id(p) not in names:
                    raise ValueError(f"auxiliary group {gname!r} holds a tensor that is not a parameter of the model")
                if not p.requires_grad:
                    raise ValueError(f"auxiliary group {gname!r}: parameter {names[id(p)]} has requires_grad=False")
                if id(p) in aux_ids:
                    raise ValueError(f"parameter {names[id(p)]} is in more than one auxiliary group")
                aux_ids.add(id(p))
            lr = float(rc.init_lr if group.get("lr") is None else group["lr"])
            gwd = group.get("weight_decay")
            if gwd is None:
                groups = build_param_groups(((names[id(p)], p) for p in params), wd)
            else:
                groups = [{"params": params, "weight_decay": float(gwd)}]
            self.optimizers[f"aux_{gname}"] = build_adamw(groups, lr=lr, betas=betas)
            self._aux_params[gname] = params
        main_groups = build_param_groups(self.model_raw.named_parameters(), wd, exclude=aux_ids)
        if not main_groups:
            raise ValueError(f"{type(self.model_raw).__name__} has no trainable parameters outside auxiliary groups")
        self.optimizers = {"main": build_adamw(main_groups, lr=float(rc.init_lr), betas=betas), **self.optimizers}
        sched_cls = registry.get_lr_scheduler_class(str(rc.get("lr_sched") or "linear_warmup_cosine_lr"))
        self.scheduler = sched_cls.from_config(list(self.optimizers.values()), rc, total_steps)
        n_main = sum(p.numel() for g in main_groups for p in g["params"])
        n_aux = sum(p.numel() for ps in self._aux_params.values() for p in ps)
        logger.info("optimisers: main %d params%s", n_main,
                    f", auxiliary {sorted(self._aux_params)} {n_aux} params" if self._aux_params else "")

    def _main_params(self) -> List[nn.Parameter]:
        return [p for g in self.optimizers["main"].param_groups for p in g["params"]]

    def _optimizer_step(self) -> Dict[str, float]:
        """Unscale, clip (each optimiser on its own parameters), step all, zero grads."""
        lr = self.scheduler.step(self.step)
        stats = {"lr": lr}
        if self.scaler is not None:
            for opt in self.optimizers.values():
                self.scaler.unscale_(opt)
        max_norm = self.run_cfg.get("max_grad_norm")
        if max_norm is not None and float(max_norm) > 0:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self._main_params(), float(max_norm)))
            for gname, params in self._aux_params.items():
                torch.nn.utils.clip_grad_norm_(params, float(max_norm))
        for opt in self.optimizers.values():
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
            stats["loss_scale"] = float(self.scaler.get_scale())
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.step += 1
        return stats

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ---------------------------------------------------------------- checkpoints
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
                                        state, keep_last_k=self.run_cfg.get("keep_last_k"), best=best)
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
            if key in old and old[key] != self.run_cfg.get(key):
                logger.warning("run.%s changed since the checkpoint (%r -> %r): the resumed run will not match "
                               "an uninterrupted one", key, old[key], self.run_cfg.get(key))

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def evaluate(self, dataset: Optional[Any] = None) -> Dict[str, float]:
        """Sample-weighted mean of `task.valid_step` terms over the validation splits (all ranks)."""
        dataset = self.valid_dataset if dataset is None else dataset
        if dataset is None:
            return {}
        was_training = self.model_raw.training
        self.model_raw.eval()
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
                                                            int(self.run_cfg.get("val_max_new_tokens") or 300)))
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
        result = {k: v / count for k, v in sorted(sums.items())} if count else {}
        if generate and records:
            scored = self.task.generation_terms(records, list(self.model_raw.label_names))
            result.update(scored["terms"])
            if self.is_main:
                for warning in scored["warnings"]:
                    logger.warning("validation by generation: %s", warning)
        return result

    def _generates_at_validation(self) -> bool:
        """`run.val_generate` and a task/model pair that can generate reports (HERO's can)."""
        return (bool(self.run_cfg.get("val_generate", True)) and hasattr(self.task, "valid_generate")
                and hasattr(self.model_raw, "generate") and hasattr(self.model_raw, "label_names"))

    def best_metric(self) -> tuple[str, str]:
        """(validation term, min|max) that picks the best checkpoint; `auto` resolves here.

        auto metric: `gen_accuracy` when validation generates, else `loss`. auto mode: max for
        accuracy-like terms (accuracy, f1, uar, agreement, compliance), min for the rest.
        """
        metric = str(self.run_cfg.get("best_metric") or "auto")
        if metric == "auto":
            metric = "gen_accuracy" if self._generates_at_validation() else "loss"
        mode = str(self.run_cfg.get("best_mode") or "auto")
        if mode == "auto":
            higher = ("accuracy", "f1", "uar", "agreement", "compliance")
            mode = "max" if any(h in metric for h in higher) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"run.best_mode must be min, max or auto; got {mode!r}")
        return metric, mode

    def _is_better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        mode = self.best_metric()[1]
        return value < self.best["value"] if mode == "min" else value > self.best["value"]

    # ------------------------------------------------------------------ training
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

    def train(self) -> Dict[str, Any]:
        """Run training (or only validation when run.evaluate); returns the end-of-run summary."""
        rc = self.run_cfg
        if self.is_main:
            save_config(self.cfg, self.output_dir / "config.yaml")
        if rc.get("evaluate"):
            return self._evaluate_only()
        train_ds = self.train_dataset
        n_iters = self.iters_per_epoch(train_ds)
        steps_per_epoch = math.ceil(n_iters / self.accum)
        max_epoch = int(rc.max_epoch)
        self._build_optimizers(total_steps=max_epoch * steps_per_epoch)
        resume = rc.get("resume_ckpt_path")
        if resume == "auto":
            resume = ckpt.find_latest_checkpoint(self.output_dir)
            if resume is None:
                logger.info("run.resume_ckpt_path=auto: no checkpoint in %s yet, starting fresh", self.output_dir)
        if resume:
            self.resume(str(resume))
        self._logger = MetricLogger(self.output_dir, enabled=self.is_main, purge_step=self.step + 1 if resume else None)
        use_no_sync = self.dist.distributed and not isinstance(train_ds, IterableDataset)
        log_freq = max(1, int(rc.get("log_freq") or 1))
        save_freq = int(rc.get("save_freq") or 0)
        save_every_epoch = bool(rc.get("save_every_epoch", True))
        t_start = time.time()
        logger.info("training: %d epochs x %d steps (%d batches of %d per rank, accum %d, %d ranks), device %s, amp %s",
                    max_epoch, steps_per_epoch, n_iters, int(rc.batch_size_train), self.accum, self.world_size,
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
                   disable=not (self.is_main and self.run_cfg.get("progress_bar", True)))
        batches = self._train_batches(train_ds, epoch, skip) if skip < n_iters else iter(())
        step_terms: Dict[str, float] = {}
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
                step_terms[k] = step_terms.get(k, 0.0) + v / group_size
            samples_since += batch_size_of(samples)  # this rank; summed over ranks when logged
            it += 1
            self.iter_in_epoch = it
            bar.update(1)
            if not last_in_group:
                continue
            stats = self._optimizer_step()
            if self.step % log_freq == 0 or it == n_iters:
                now = time.time()
                self.last_train = self._log_train(step_terms, stats, samples_since, now - t_log)
                t_log, samples_since = now, 0
                bar.set_postfix(loss=f"{self.last_train.get('loss', float('nan')):.4f}", lr=f"{stats['lr']:.2e}")
            step_terms = {}
            end_of_epoch = it == n_iters
            if save_freq > 0 and self.step % save_freq == 0 and not (end_of_epoch and save_every_epoch):
                self.save_checkpoint()
        bar.close()
        # end of epoch: validate, then advance the counters and checkpoint (so resume starts the next epoch)
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
            self.save_checkpoint(best=best)

    def _evaluate_only(self) -> Dict[str, Any]:
        path = self.run_cfg.get("resume_ckpt_path")
        if path:
            loaded = ckpt.load_model_weights(self.model_raw, str(path))
            logger.info("evaluating weights from %s", loaded)
        t0 = time.time()
        val = self.evaluate()
        if not val:
            raise ValueError(f"run.evaluate=true but no dataset has a split in run.valid_splits="
                             f"{list(self.run_cfg.get('valid_splits') or [])}")
        self.last_val = val
        if self.is_main:
            log = MetricLogger(self.output_dir, tensorboard=False)
            log.log({"step": self.step, "epoch": self.epoch, "phase": "val", **{f"val_{k}": v for k, v in val.items()}},
                    self.step)
            log.close()
        return self._summary(time.time() - t0)

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
