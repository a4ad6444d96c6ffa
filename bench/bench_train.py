#!/usr/bin/env python
"""One HERO training step measured against the machine: FLOPs, step time, MFU and where the time goes.

Builds the model, data and optimisers from a config exactly as `hero-train` does (the
registry, `RunnerBase`'s optimisers, its train loader, its autocast and optimiser step), then:

- counts the FLOPs of one step (forward + backward) with torch's `FlopCounterMode`: counted
  from the ops that ran, not estimated by hand; per component too;
- times `--steps` steps after `--warmup` (the median step; data loading included, as in a run);
- measures the matmul peak of this process for the dtype in use (a square matmul of
  `--peak-size`, best of a few) in the same run, and prints the achieved fraction of it (MFU);
- with `--breakdown`, profiles one step and attributes every op to a component: experts,
  synergy, integration, evidence decoder, LLM, the rest of the forward (losses, prompt
  building), each forward and backward; the optimiser step; data. Backward ops are matched to
  the component whose forward op created them (autograd sequence numbers).

Steps from a fresh initialisation are not typical of a run: the untrained evidence decoder
writes every sentence to its maximum length, and those sentences go into the prompt. Pass
`--options model.init_from=RUN_DIR` to measure the steps of a trained model instead.

`--paper` swaps the demo data for random features at paper dims (configs/models/hero_paper.yaml:
CLIP-L / VideoMAE / HuBERT-L widths, hidden 768, 32 queries) on the demo's annotations, and a
random Llama built from `--llm-hidden/--llm-layers/...` in a temp folder (the real SmolLM2
tokenizer; by default two layers of a 7B Llama's shape, `PAPER_LLM`); LoRA as that config places
it, the LLM's weights stored in the dtype of the precision measured, as that config's
`model.llm.dtype: auto` stores them on a GPU. `--device cuda` runs the same step on a GPU
(`--amp bf16` there gives the bf16 MFU, and the memory peak is printed).

The breakdown ends with the MFU budget: the matmul kernels' share of the step and their own
rate against the peak, the MFU the step would reach if every other op took no time, and how
many seconds those ops may take for MFU 0.5.

Usage:
  python bench/bench_train.py                                   # the demo config, fp32 and bf16
  python bench/bench_train.py --paper --breakdown               # paper dims, random LLM
  python bench/bench_train.py --paper --device cuda --amp bf16 --llm-hidden 2048 --llm-layers 16
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

# component -> (module path inside HEROModel, the methods that run it); a ModuleList's members are
# wrapped one by one. Methods other than forward are wrapped too: the evidence decoder trains
# through `loss` and writes the training brief through `generate`, never through `forward`.
COMPONENTS = {
    "experts": ("evidence_stack.experts", ("forward",)),
    "synergy": ("evidence_stack.synergy", ("forward",)),
    "integration": ("evidence_stack.integration", ("forward",)),
    "evidence decoder (loss)": ("evidence_stack.decoder", ("loss",)),
    "evidence decoder (brief)": ("evidence_stack.decoder", ("generate", "score")),
    "stmil": ("evidence_stack.stmil", ("forward",)),
    "llm": ("reasoner", ("forward", "generate_ids")),
}
PAPER_CFG = "configs/models/hero_paper.yaml"
DEMO_CFG = "configs/models/hero.yaml"
AMP_DTYPES = {"none": "float32", "bf16": "bfloat16", "fp16": "float16"}
# --paper's random LLM: the layer of a 7B chat Llama (LLaMA-2-7B, Vicuna-7B: 4096 wide, an 11008
# MLP, 32 heads), two of its 32 layers so that it fits a laptop. Per token, a layer's balance of
# matmul and other work (norms, activations, attention, LoRA) is the 7B's whatever the depth.
PAPER_LLM = {"hidden": 4096, "intermediate": 11008, "heads": 32, "layers": 2}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg-path", default=None, help=f"config (default {DEMO_CFG}; {PAPER_CFG} with --paper)")
    p.add_argument("--options", nargs="*", default=[], help="key=value overrides, as hero-train takes them")
    p.add_argument("--paper", action="store_true", help="paper dims: random features + a random Llama")
    p.add_argument("--llm-hidden", type=int, default=PAPER_LLM["hidden"])
    p.add_argument("--llm-layers", type=int, default=PAPER_LLM["layers"])
    p.add_argument("--llm-heads", type=int, default=PAPER_LLM["heads"])
    p.add_argument("--llm-intermediate", type=int, default=PAPER_LLM["intermediate"])
    p.add_argument("--clips", type=int, default=64, help="--paper: clips in the random corpus")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=sorted(AMP_DTYPES),
                   help="precisions to measure, one after another in this process")
    p.add_argument("--batch", type=int, default=None, help="run.batch_size_train (default: the config's)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--force", action="store_true", help="measure a precision even where its matmul is slow")
    p.add_argument("--breakdown", action="store_true", help="profile one step per precision, time per component")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- set-up
def paper_corpus(root: Path, clips: int, dims: dict[str, int], max_len: dict[str, int]) -> tuple[Path, Path]:
    """Random features at `dims` for the first `clips` train clips of the demo's annotations."""
    import numpy as np

    from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS
    from minigpt4.datasets.feature_io import write_features

    source = Path("demo/data/annotations.json")
    if not source.exists():
        raise SystemExit(f"{source} not found: python scripts/make_demo_data.py --out demo/data")
    records = [r for r in json.loads(source.read_text()) if r.get("split") == "train"][:clips]
    rng = np.random.default_rng(0)
    feats = root / "features"
    feats.mkdir(parents=True)
    for r in records:
        arrays = {DEFAULT_FEATURE_KEYS[m]: rng.standard_normal((max_len[m], dims[m])).astype(np.float32)
                  for m in dims}
        write_features(feats / f"{r['video_id']}.npz", arrays)
    ann = root / "annotations.json"
    ann.write_text(json.dumps(records))
    return feats, ann


def random_llm_shape(args: argparse.Namespace) -> dict[str, int]:
    """--paper's random Llama, as the header line and --json name it (built in a temp folder)."""
    return {"layers": args.llm_layers, "hidden": args.llm_hidden, "intermediate": args.llm_intermediate,
            "heads": args.llm_heads}


def build_config(args: argparse.Namespace, tmp: Path) -> Any:
    from minigpt4.common.config import load_config

    options = list(args.options) + [f"run.output_dir={tmp / 'run'}", f"run.device={args.device}",
                                    "run.num_workers=0", "run.progress_bar=false"]
    if args.batch:
        options.append(f"run.batch_size_train={args.batch}")
    if not args.paper:
        return load_config(args.cfg_path or DEMO_CFG, options)
    from minigpt4.common.tiny_llm import make_tiny_llm

    llm = make_tiny_llm(tmp / "llm", hidden_size=args.llm_hidden, num_layers=args.llm_layers,
                        num_heads=args.llm_heads, intermediate_size=args.llm_intermediate,
                        max_position_embeddings=2048, seed=0)
    cfg = load_config(args.cfg_path or PAPER_CFG, options + [f"model.llm.path={llm}",
                                                             "model.llm.gradient_checkpointing=false"])
    m, d = cfg.model, cfg.datasets.hero_dataset
    dims = {"motion": int(m.video_dim), "audio": int(m.audio_dim), "au": int(m.au_dim), "text": int(m.text_dim),
            "visual": int(m.visual_dim)}
    feats, ann = paper_corpus(tmp / "data", args.clips, dims, {k: int(v) for k, v in d.max_len.items()})
    d.build_info.images.storage = str(feats)
    d.build_info.annotations.storage = str(ann)
    d.splits = ["train"]
    return cfg


def build_runner(cfg: Any, amp: str, paper: bool = False) -> Any:
    """The runner of `cfg` under precision `amp`; `paper`: the LLM's weights stored in the amp's
    dtype, as `model.llm.dtype: auto` stores them under `run.amp: auto` on a GPU (fp32 for none)."""
    from minigpt4.runners.components import build_components
    from minigpt4.runners.runner_base import RunnerBase

    from minigpt4.runners.init_from import apply_init_from

    cfg.run.amp = amp
    if paper:
        cfg.model.llm.dtype = AMP_DTYPES[amp]
    comps = build_components(cfg, splits=["train"])
    apply_init_from(comps.model, cfg)  # model.init_from: steps of a trained model (its brief is short)
    runner = RunnerBase(cfg, comps.task, comps.model, comps.datasets)
    runner._build_optimizers(total_steps=1000)
    runner.model.train()
    return runner


# ---------------------------------------------------------------------------- the step
def batches(runner: Any) -> Iterator[Any]:
    """Training batches forever, through the runner's own loader (epoch after epoch)."""
    from minigpt4.runners.loaders import move_to_device

    epoch = 0
    while True:
        for samples in runner._train_batches(runner.train_dataset, epoch, 0):
            yield move_to_device(samples, runner.device)
        epoch += 1


def forward_backward(runner: Any, samples: Any) -> None:
    import torch

    with runner._autocast():
        out = runner.task.train_step(runner.model, samples)
        total = out["loss"] + sum(out.get("aux_losses", {}).values(), torch.zeros((), device=runner.device))
    total.float().backward()


def train_step(runner: Any, data: Iterator[Any]) -> None:
    forward_backward(runner, next(data))
    runner._optimizer_step()


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(runner: Any, data: Iterator[Any], steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        train_step(runner, data)
    times = []
    for _ in range(steps):
        sync(runner.device)
        t0 = time.perf_counter()
        train_step(runner, data)
        sync(runner.device)
        times.append(time.perf_counter() - t0)
    return times


def count_flops(runner: Any, samples: Any) -> float:
    """FLOPs of one forward + backward (no optimiser step), counted by torch from the ops that ran."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        forward_backward(runner, samples)
    for p in runner.model_raw.parameters():
        p.grad = None
    return float(counter.get_total_flops())


def matmul_peak(device: Any, dtype: Any, n_max: int, budget_s: float = 3.0) -> float:
    """Best FLOP/s of a square matmul in `dtype` on `device`, measured now, in this process.

    Sizes double from 256 up to `n_max` while one product stays under a tenth of `budget_s`
    (a CPU without native bf16 emulates it some 100x slower than fp32: it gets a small size)."""
    import torch

    best, n = 0.0, 256
    while n <= n_max:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        elapsed = float("inf")
        for _ in range(6):  # the best of several: a busy moment on a shared machine only lowers it
            sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            elapsed = min(elapsed, time.perf_counter() - t0)
        best = max(best, 2.0 * n ** 3 / elapsed)
        if elapsed > budget_s / 10:
            break
        n *= 2
    return best


# ---------------------------------------------------------------------------- breakdown
@contextlib.contextmanager
def component_scopes(model: Any) -> Iterator[None]:
    """Every component method runs inside a profiler range `hero::<component>` (instance-level wrappers)."""
    import torch
    from torch import nn

    wrapped: list[tuple[Any, str]] = []
    for name, (path, methods) in COMPONENTS.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if module is None:
            continue
        members = list(module) if isinstance(module, nn.ModuleList) else [module]
        for member in members:
            for method in methods:
                original = getattr(member, method, None)
                if original is None:
                    continue

                def call(*a: Any, _f: Callable[..., Any] = original, _n: str = name, **k: Any) -> Any:
                    with torch.profiler.record_function(f"hero::{_n}"):
                        return _f(*a, **k)

                setattr(member, method, call)  # an instance attribute shadows the class's method
                wrapped.append((member, method))
    try:
        yield
    finally:
        for member, method in wrapped:
            del member.__dict__[method]


# the matrix-product kernels; the profiler also counts one FLOP per element of `mul` and `add`,
# which are not what a matmul peak measures
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"})


def _matmul_flops(ev: Any) -> int:
    return int(getattr(ev, "flops", 0) or 0) if ev.name in MATMUL_OPS else 0


def _subtree_flops(ev: Any) -> int:
    return _matmul_flops(ev) + sum(_subtree_flops(c) for c in ev.cpu_children)


def matmul_budget(step_flops: float, peak: float, matmul_s: float, matmul_flops: float, step_s: float,
                  target: float = 0.5) -> dict[str, float]:
    """Amdahl for MFU: the matmul kernels' share of a step and their own rate against the peak, the
    MFU the step would reach if every other op took no time, and the seconds those other ops may
    take for MFU `target` (negative: out of reach even then). Seconds from one profiled step."""
    return {
        "matmul_s": matmul_s, "other_s": step_s - matmul_s, "matmul_share": matmul_s / step_s,
        "matmul_efficiency": matmul_flops / matmul_s / peak,
        "mfu_if_others_free": step_flops / matmul_s / peak,
        "other_s_allowed": step_flops / (target * peak) - matmul_s, "target": target,
    }


def breakdown(runner: Any, data: Iterator[Any]) -> dict[str, Any]:
    """One profiled step: seconds and matmul FLOPs per component, forward and backward apart;
    the optimiser step and data loading; the matmul kernels' self time and FLOPs; the ops with
    the most self time."""
    import torch

    on_gpu = runner.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with component_scopes(runner.model_raw), torch.profiler.profile(activities=activities, with_flops=True) as prof:
        with torch.profiler.record_function("hero::data"):
            samples = next(data)
        with torch.profiler.record_function("hero::forward"):
            with runner._autocast():
                out = runner.task.train_step(runner.model, samples)
                total = out["loss"] + sum(out.get("aux_losses", {}).values(), torch.zeros((), device=runner.device))
        with torch.profiler.record_function("hero::backward"):
            total.float().backward()
        with torch.profiler.record_function("hero::optimizer"):
            runner._optimizer_step()
    events = prof.events()

    def scope(ev: Any) -> Optional[str]:
        node = ev
        while node is not None:
            if node.name.startswith("hero::") and node.name[6:] in COMPONENTS:
                return node.name[6:]
            node = node.cpu_parent
        return None

    seconds: dict[str, float] = {}
    flops: dict[str, float] = {}
    top: dict[str, tuple[float, float]] = {}
    scope_of_seq: dict[int, str] = {}
    for ev in events:
        if ev.name in ("hero::data", "hero::forward", "hero::backward", "hero::optimizer"):
            top[ev.name[6:]] = (ev.cpu_time_total / 1e6, _subtree_flops(ev))
        elif ev.name.startswith("hero::") and ev.name[6:] in COMPONENTS and scope(ev.cpu_parent) is None:
            key = f"{ev.name[6:]} forward"
            seconds[key] = seconds.get(key, 0.0) + ev.cpu_time_total / 1e6
            flops[key] = flops.get(key, 0.0) + _subtree_flops(ev)
        if ev.sequence_nr >= 0 and not ev.name.startswith("autograd::engine"):
            s = scope(ev)
            if s is not None:
                scope_of_seq.setdefault(ev.sequence_nr, s)
    for ev in events:
        if ev.name.startswith("autograd::engine::evaluate_function") and ev.sequence_nr in scope_of_seq:
            key = f"{scope_of_seq[ev.sequence_nr]} backward"
            seconds[key] = seconds.get(key, 0.0) + ev.cpu_time_total / 1e6
            flops[key] = flops.get(key, 0.0) + _subtree_flops(ev)
    for phase in ("forward", "backward"):
        t, f = top.get(phase, (0.0, 0))
        seconds[f"rest of {phase}"] = max(0.0, t - sum(v for k, v in seconds.items() if k.endswith(phase)))
        flops[f"rest of {phase}"] = max(0.0, f - sum(v for k, v in flops.items() if k.endswith(phase)))
    for phase in ("optimizer", "data"):
        seconds[phase], flops[phase] = top.get(phase, (0.0, 0))
    ops = sorted(prof.key_averages(), key=lambda o: -o.self_cpu_time_total)[:10]
    matmuls = [ev for ev in events if ev.name in MATMUL_OPS]
    # on a GPU an op's CPU time is its launch: the kernels' own time is device time
    kernel_us = sum((ev.self_device_time_total if on_gpu else ev.self_cpu_time_total) for ev in matmuls)
    return {"seconds": seconds, "profiled_s": sum(seconds.values()), "matmul_flops": flops,
            "matmul_kernels": (kernel_us / 1e6, float(sum(_matmul_flops(ev) for ev in matmuls))),
            "top_ops": [(o.key, o.self_cpu_time_total / 1e6) for o in ops]}


# ---------------------------------------------------------------------------- main
def measure(args: argparse.Namespace, cfg: Any, amp: str, peak: float) -> dict[str, Any]:
    import torch

    runner = build_runner(cfg.copy(), amp, paper=args.paper)
    data = batches(runner)
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runner.device)
    flops = count_flops(runner, next(data))
    times = step_times(runner, data, args.steps, args.warmup)
    step = statistics.median(times)
    peak = max(peak, matmul_peak(runner.device, getattr(torch, AMP_DTYPES[amp]), args.peak_size))  # again, after
    res: dict[str, Any] = {
        "amp": amp, "dtype": AMP_DTYPES[amp], "batch": int(cfg.run.batch_size_train),
        "llm": random_llm_shape(args) if args.paper else str(cfg.model.llm.path),
        "gflop_per_step": flops / 1e9, "step_s": step, "step_s_min": min(times),
        "samples_per_s": int(cfg.run.batch_size_train) / step, "achieved_gflops": flops / step / 1e9,
        "peak_gflops": peak / 1e9, "mfu": flops / step / peak,
    }
    if runner.device.type == "cuda":
        res["memory_peak_gib"] = torch.cuda.max_memory_allocated(runner.device) / 2 ** 30
    if args.breakdown:
        res["breakdown"] = bd = breakdown(runner, data)
        matmul_s, matmul_flops = bd["matmul_kernels"]
        # the profiled step's own total on a CPU (the matmul seconds come from it); on a GPU, whose
        # CPU-side totals are launch times, the synchronised median step
        profiled = bd["profiled_s"] if runner.device.type != "cuda" else step
        if matmul_s > 0:
            res["matmul_budget"] = matmul_budget(flops, peak, matmul_s, matmul_flops, profiled)
    return res


def report(res: dict[str, Any]) -> None:
    print(f"\n== amp {res['amp']} ({res['dtype']}), batch {res['batch']}")
    print(f"  {res['gflop_per_step']:.1f} GFLOP/step (forward+backward, counted); step {res['step_s']:.3f} s "
          f"(median; min {res['step_s_min']:.3f}); {res['samples_per_s']:.1f} samples/s")
    print(f"  achieved {res['achieved_gflops']:.1f} GFLOP/s of a {res['peak_gflops']:.1f} GFLOP/s {res['dtype']} "
          f"matmul peak measured now: MFU {res['mfu']:.2f}")
    if "memory_peak_gib" in res:
        print(f"  memory peak {res['memory_peak_gib']:.2f} GiB")
    if "breakdown" in res:
        sec, fl = res["breakdown"]["seconds"], res["breakdown"]["matmul_flops"]
        total, total_f = res["breakdown"]["profiled_s"], sum(fl.values()) or 1.0
        print(f"  one profiled step, {total:.3f} s (profiler overhead included); matmul GFLOP as the profiler counts them:")
        for k, v in sorted(sec.items(), key=lambda kv: -kv[1]):
            print(f"    {k:<38} {v:8.3f} s {v / total:6.1%}   {fl.get(k, 0) / 1e9:7.2f} GFLOP {fl.get(k, 0) / total_f:6.1%}")
        print("  top ops (self time): " + ", ".join(f"{k} {v:.3f} s" for k, v in res["breakdown"]["top_ops"]))
    if "matmul_budget" in res:
        b = res["matmul_budget"]
        allowed = (f"leaves them {b['other_s_allowed']:.3f} s" if b["other_s_allowed"] > 0
                   else "is out of reach even if they took none")
        print(f"  matmul kernels: {b['matmul_s']:.3f} s of the step ({b['matmul_share']:.0%}) at "
              f"{b['matmul_efficiency']:.2f} of the peak; the other ops take {b['other_s']:.3f} s. "
              f"With them free the step's MFU would be {b['mfu_if_others_free']:.2f}; MFU {b['target']:.1f} {allowed}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(args, Path(tmp))
        shape = random_llm_shape(args)
        llm = (f", random Llama {shape['layers']} x {shape['hidden']} wide (MLP {shape['intermediate']}, "
               f"{shape['heads']} heads)" if args.paper else "")
        print(f"config {args.cfg_path or (PAPER_CFG if args.paper else DEMO_CFG)}{llm}, device {args.device}, "
              f"threads {torch.get_num_threads()}, torch {torch.__version__}")
        device = torch.device(args.device)
        peaks = {amp: matmul_peak(device, getattr(torch, AMP_DTYPES[amp]), args.peak_size) for amp in args.amp}
        fp32 = matmul_peak(device, torch.float32, args.peak_size) if "none" not in peaks else peaks["none"]
        print("matmul peak now: " + ", ".join(f"{AMP_DTYPES[a]} {p / 1e9:.1f} GFLOP/s" for a, p in peaks.items()))
        for amp in args.amp:
            if amp != "none" and peaks[amp] < fp32 / 2 and not args.force:
                print(f"\n== amp {amp}: skipped, its matmul runs at {peaks[amp] / fp32:.3f}x fp32 here "
                      f"(no native {AMP_DTYPES[amp]} on this {device.type}; --force measures it anyway)")
                continue
            res = measure(args, cfg, amp, peaks[amp])
            report(res)
            results.append(res)
    if len(results) > 1:
        base = results[0]
        print("\nratios to " + base["amp"] + ": " + ", ".join(
            f"{r['amp']} step x{base['step_s'] / r['step_s']:.2f} faster" for r in results[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
