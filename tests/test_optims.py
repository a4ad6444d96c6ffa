"""The AdamW every run builds: fused where it can be, and the same steps as the reference loop."""
from __future__ import annotations

import torch
from torch import nn

from minigpt4.common.optims import build_adamw


def _steps(opt_of, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    opt = opt_of(model)
    for i in range(5):
        torch.manual_seed(100 + i)
        loss = model(torch.randn(4, 6)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


def test_fused_adamw_on_cpu_takes_the_reference_steps():
    groups = lambda m: [{"params": [m[0].weight, m[2].weight], "weight_decay": 0.05},  # noqa: E731
                        {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0, "lr": 3e-3}]
    fused = _steps(lambda m: build_adamw(groups(m), lr=1e-2))
    reference = _steps(lambda m: torch.optim.AdamW(groups(m), lr=1e-2, foreach=False))
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    opt = build_adamw(groups(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2))), lr=1e-2)
    assert opt.defaults["fused"] and [g["base_lr"] for g in opt.param_groups] == [1e-2, 3e-3]


def test_integer_or_meta_parameters_fall_back_to_the_loop():
    weird = nn.Parameter(torch.zeros(3, device="meta"))
    opt = build_adamw([{"params": [weird]}], lr=1e-3)
    assert not opt.defaults["fused"]
