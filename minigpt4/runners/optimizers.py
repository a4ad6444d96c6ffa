"""Optimisers, LR schedule, mixed precision and the optimiser step of `RunnerBase`.

Auxiliary optimisers (docs/ARCHITECTURE.md "Runner <-> model"): parameters named by
`model.auxiliary_parameter_groups()` get their own AdamW each and never enter the main one;
every optimiser is clipped on its own parameters, and all are stepped together once per
`run.accum_grad_iters` batches.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from minigpt4.common.optims import build_adamw, build_param_groups
from minigpt4.common.precision import auto_half_dtype
from minigpt4.common.registry import registry

__all__ = ["OptimMixin", "resolve_amp"]

# log under the runner module's name, as before the runner was split, so log lines stay the same
logger = logging.getLogger("minigpt4.runners.runner_base")


def resolve_amp(amp: str, device: torch.device) -> Tuple[Optional[torch.dtype], bool]:
    """`run.amp` -> (autocast dtype or None, use a GradScaler).

    auto: bf16 on CUDA when supported, else fp16 with a GradScaler; fp32 on CPU.
    bf16 is allowed on CPU when asked for explicitly; fp16 on CPU is refused (slow, no scaler).
    """
    amp = str(amp or "none").lower()
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise ValueError(f"run.amp must be auto, bf16, fp16 or none; got {amp!r}")
    if amp == "auto":
        dtype = auto_half_dtype(device.type)
        amp = "none" if dtype is None else ("bf16" if dtype == torch.bfloat16 else "fp16")
    if amp == "none":
        return None, False
    if amp == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ValueError("run.amp=fp16 needs CUDA; on CPU use run.amp=bf16 or none")
    return torch.float16, True


class OptimMixin:
    """`RunnerBase`'s optimisers (main + auxiliary), scheduler, gradient clipping and autocast."""

    run_cfg: RunConfig
    device: torch.device
    model_raw: nn.Module
    optimizers: Dict[str, torch.optim.Optimizer]
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    amp_dtype: Optional[torch.dtype]
    step: int
    _aux_params: Dict[str, List[nn.Parameter]]

    def _build_optimizers(self, total_steps: int) -> None:
        rc = self.run_cfg
        betas = (rc.beta1, rc.beta2)
        wd = rc.weight_decay
        names = {id(p): n for n, p in self.model_raw.named_parameters()}
        aux_ids: set[int] = set()
        unscheduled: set[str] = set()
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
            if group.get("schedule") is False:  # e.g. an estimator that must track a moving target
                unscheduled.add(f"aux_{gname}")
        main_groups = build_param_groups(self.model_raw.named_parameters(), wd, exclude=aux_ids)
        if not main_groups:
            raise ValueError(f"{type(self.model_raw).__name__} has no trainable parameters outside auxiliary groups")
        self.optimizers = {"main": build_adamw(main_groups, lr=rc.init_lr, betas=betas), **self.optimizers}
        sched_cls = registry.get_lr_scheduler_class(rc.lr_sched)
        scheduled = [opt for name, opt in self.optimizers.items() if name not in unscheduled]
        self.scheduler = sched_cls.from_config(scheduled, rc, total_steps)
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
        max_norm = self.run_cfg.max_grad_norm
        if max_norm is not None and max_norm > 0:
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

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
