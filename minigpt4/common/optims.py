"""Optimiser parameter groups and the registered learning-rate schedulers.

Weight decay pulls weights towards zero, which is right for matrices but wrong for biases,
norm gains and other 1-D parameters (it fights the normalisation), so those go to a group
with `weight_decay=0`.

Schedulers are per optimiser step (not per epoch) and stateless apart from the step count:
`lr(step)` is a pure function, so resuming only needs the step. Every param group keeps its
own `base_lr`; the scheduler scales it by `lr(step) / init_lr`, so an auxiliary optimiser
with its own learning rate follows the same warmup/cosine shape.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from minigpt4.common.registry import registry

if TYPE_CHECKING:
    from minigpt4.common.schema import RunConfig

NO_DECAY_NAME_PARTS = ("norm", "ln_", ".ln", "layernorm", "bias")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, normalisation gains and every parameter with fewer than two dims."""
    lname = name.lower()
    return param.ndim < 2 or lname.endswith(".bias") or lname == "bias" or any(p in lname for p in NO_DECAY_NAME_PARTS)


def build_param_groups(named_params: Iterable[Tuple[str, nn.Parameter]], weight_decay: float,
                       exclude: Optional[Set[int]] = None) -> List[Dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    `exclude` holds `id(param)` of parameters owned by another optimiser. Empty groups are
    dropped; each group records its names under `"names"` for debugging and tests.
    """
    exclude = exclude or set()
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    decay_names: List[str] = []
    no_decay_names: List[str] = []
    for name, p in named_params:
        if not p.requires_grad or id(p) in exclude:
            continue
        if is_no_decay(name, p):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay), "names": decay_names})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "names": no_decay_names})
    return groups


FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def build_adamw(groups: List[Dict[str, Any]], lr: float, betas: Tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over `groups`; each group gets `base_lr` (what schedulers scale) = its lr or `lr`.

    The fused implementation where every parameter allows it (floating point, on CPU or CUDA):
    one kernel per step instead of a dozen small ops per tensor (the for-loop default on CPU
    was 10 % of a demo training step, measured with bench/bench_train.py)."""
    clean = []
    for g in groups:
        g = {k: v for k, v in g.items() if k != "names"}
        g.setdefault("lr", lr)
        g["base_lr"] = g["lr"]
        clean.append(g)
    params = [p for g in clean for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in params)
    return torch.optim.AdamW(clean, lr=lr, betas=betas, eps=eps, fused=fused or None)


class _StepScheduler:
    """Shared machinery: set every group's lr from `self.lr_at(step)` before optimiser step `step`."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], init_lr: float) -> None:
        if init_lr <= 0:
            raise ValueError(f"run.init_lr must be > 0, got {init_lr}")
        self.optimizers = list(optimizers)
        self.init_lr = float(init_lr)
        self.last_step = -1
        for opt in self.optimizers:
            for g in opt.param_groups:
                g.setdefault("base_lr", g["lr"])

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def step(self, step: int) -> float:
        """Set learning rates for optimiser step `step` (0-based); return the main lr."""
        lr = self.lr_at(step)
        scale = lr / self.init_lr
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
        self.last_step = step
        return lr

    def state_dict(self) -> Dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        if self.last_step >= 0:
            self.step(self.last_step)


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler(_StepScheduler):
    """Linear warmup `warmup_lr -> init_lr` over `warmup_steps`, then cosine to `min_lr` at `total_steps`."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], total_steps: int, init_lr: float,
                 min_lr: float = 0.0, warmup_lr: float = 0.0, warmup_steps: int = 0) -> None:
        super().__init__(optimizers, init_lr)
        self.total_steps = max(1, int(total_steps))
        self.min_lr = float(min_lr)
        self.warmup_lr = float(warmup_lr)
        self.warmup_steps = max(0, int(warmup_steps))

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @classmethod
    def from_config(cls, optimizers: Sequence[torch.optim.Optimizer], run_cfg: "RunConfig",
                    total_steps: int) -> "LinearWarmupCosineLRScheduler":
        return cls(optimizers, total_steps, init_lr=run_cfg.init_lr, min_lr=run_cfg.min_lr,
                   warmup_lr=run_cfg.warmup_lr, warmup_steps=run_cfg.warmup_steps)


@registry.register_lr_scheduler("constant_lr")
class ConstantLRScheduler(_StepScheduler):
    """Linear warmup `warmup_lr -> init_lr` over `warmup_steps`, then `init_lr`."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], init_lr: float,
                 warmup_lr: float = 0.0, warmup_steps: int = 0) -> None:
        super().__init__(optimizers, init_lr)
        self.warmup_lr = float(warmup_lr)
        self.warmup_steps = max(0, int(warmup_steps))

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * step / self.warmup_steps
        return self.init_lr

    @classmethod
    def from_config(cls, optimizers: Sequence[torch.optim.Optimizer], run_cfg: "RunConfig",
                    total_steps: int) -> "ConstantLRScheduler":
        return cls(optimizers, init_lr=run_cfg.init_lr, warmup_lr=run_cfg.warmup_lr,
                   warmup_steps=run_cfg.warmup_steps)
