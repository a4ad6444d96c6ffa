"""bench/bench_train.py's arithmetic: what it counts as matmul work and its MFU budget (no timing)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matmul_budget_against_hand_computed_values(bench):
    # a 1 TFLOP step on a 100 GFLOP/s peak: 12 s of matmul kernels doing 0.9 TFLOP, 20 s in all
    b = bench.matmul_budget(1e12, 1e11, matmul_s=12.0, matmul_flops=9e11, step_s=20.0)
    assert b["matmul_share"] == pytest.approx(0.6)
    assert b["matmul_efficiency"] == pytest.approx(0.75)
    assert b["mfu_if_others_free"] == pytest.approx(1e12 / 12.0 / 1e11)
    assert b["other_s"] == pytest.approx(8.0)
    assert b["other_s_allowed"] == pytest.approx(8.0)  # 1e12 / (0.5 * 1e11) = 20 s, less 12 s
    # matmul kernels alone slower than MFU 0.5 allows: no budget left for anything else
    assert bench.matmul_budget(1e12, 1e11, 25.0, 9e11, 30.0)["other_s_allowed"] == pytest.approx(-5.0)


def test_only_matrix_products_count_as_matmul_flops(bench):
    a, b = torch.randn(32, 48), torch.randn(48, 16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        c = a @ b
        torch.nn.functional.linear(a, b.t(), torch.zeros(16))
        c * c + c  # the profiler gives mul and add a FLOP per element; the matmul peak has none of it
    events = prof.events()
    assert any(ev.name == "aten::mul" and ev.flops > 0 for ev in events)
    counted = sum(bench._matmul_flops(ev) for ev in events)
    assert counted == 2 * (2 * 32 * 48 * 16)
    outer = [ev for ev in events if ev.cpu_parent is None]
    assert sum(bench._subtree_flops(ev) for ev in outer) == counted
