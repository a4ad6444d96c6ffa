#!/usr/bin/env python
"""Speed of HERO's ModalityQFormer vs transformers' Blip2QFormerModel, and of the whole evidence stack.

Part 1: one modality expert (`ModalityQFormer`, SDPA with a boolean key-padding mask) against
`Blip2QFormerModel` (cross-attention in every layer) at the same config: hidden size, layers,
heads, FFN width, queries, encoder width (the raw feature dim, e.g. HuBERT's 1024) and the same
padded batch. Times forward + backward and prints the ratio ours / HF (< 1: ours is faster).
Both are warmed up, then run interleaved; the minimum of the repeats is the headline number
(see `_times`).

Part 2: one training step of the whole `HEROEvidenceStack` (five experts + synergy + decoder
teacher forcing on golden evidence + integration + STMIL/SCCL, backward, AdamW step) at paper
dims (hidden 768, 32 queries, 2 layers, 64 output queries) for T = 64 ... 512 frames, to show
how the step grows with T.

Usage: python bench/bench_qformer.py [--device cpu|cuda] [--dtype float32|bfloat16]
       [--lengths 64 128 256 512] [--batch 8] [--stack-batch 4] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable

PAPER_DIMS = {"video_dim": 768, "audio_dim": 1024, "au_dim": 35, "text_dim": 768, "visual_dim": 1024}


def _timer(device: Any) -> Callable[[], float]:
    import torch

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def _times(steps: list[Callable[[], None]], repeats: int, now: Callable[[], float]) -> list[tuple[float, float]]:
    """(min, median) seconds of each step; one warm-up each, then the steps interleaved `repeats` times.

    Interleaving and the minimum keep a comparison fair on a shared, busy machine: a burst of
    load from elsewhere hits both sides, and the minimum is the run least disturbed by it.
    """
    for step in steps:
        step()  # warm-up (allocations, kernel selection)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            start = now()
            step()
            times[i].append(now() - start)
    return [(min(t), statistics.median(t)) for t in times]


def bench_qformer(args: argparse.Namespace, device: Any, dtype: Any) -> None:
    import torch
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    from minigpt4.models.hero.observation_experts import ModalityQFormer

    b, t, h = args.batch, args.frames, args.hidden
    ours = ModalityQFormer(args.enc_dim, h, args.queries, args.layers, args.heads, dropout=0.1).to(device)
    hf_cfg = Blip2QFormerConfig(hidden_size=h, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                intermediate_size=4 * h, encoder_hidden_size=args.enc_dim, cross_attention_frequency=1)
    hf = Blip2QFormerModel(hf_cfg).to(device)
    hf_queries = torch.nn.Parameter(torch.randn(1, args.queries, h, device=device) * 0.02)
    feats = torch.randn(b, t, args.enc_dim, device=device)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    for i in range(b):  # realistic padding: lengths from T/2 to T
        mask[i, t // 2 + (i * t) // (2 * b):] = False
    ours.train()
    hf.train()
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step_ours() -> None:
        with autocast:
            tokens, summary = ours(feats, mask)
            loss = tokens.float().pow(2).mean() + summary.float().mean()
        loss.backward()

    def step_hf() -> None:
        with autocast:
            out = hf(query_embeds=hf_queries.expand(b, -1, -1), encoder_hidden_states=feats,
                     encoder_attention_mask=mask.long())
            loss = out.last_hidden_state.float().pow(2).mean() + out.last_hidden_state.float().mean()
        loss.backward()

    (t_ours, med_ours), (t_hf, med_hf) = _times([step_ours, step_hf], args.repeats, _timer(device))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters()) + hf_queries.numel()
    print(f"[qformer] B={b} T={t} enc_dim={args.enc_dim} hidden={h} queries={args.queries} layers={args.layers} "
          f"heads={args.heads} dtype={args.dtype} device={device}")
    for name, best, med, n in (("ours  ModalityQFormer  ", t_ours, med_ours, n_ours),
                               ("HF    Blip2QFormerModel", t_hf, med_hf, n_hf)):
        print(f"  {name} fwd+bwd min {best * 1e3:9.1f} ms  median {med * 1e3:9.1f} ms   params {n / 1e6:6.2f} M")
    print(f"  ratio ours / HF (min) = {t_ours / t_hf:.2f}")


def _stack_batch(b: int, t: int, vocab: int, llm_dim: int, device: Any) -> tuple[dict, Any]:
    import torch

    from minigpt4.common.modalities import SYNERGY
    from minigpt4.models.hero.evidence_stack import EvidenceTargets

    dims = [PAPER_DIMS[k] for k in ("video_dim", "audio_dim", "au_dim", "text_dim", "visual_dim")]
    feats = torch.zeros(b, 5, t, 1024, device=device)
    fmask = torch.zeros(b, 5, t, dtype=torch.bool, device=device)
    for i in range(b):
        n = t - (i * t) // (4 * b)  # up to 25% time padding
        for k, d in enumerate(dims):
            feats[i, k, :n, :d] = torch.randn(n, d, device=device)
            fmask[i, k, :n] = True
    samples = {"video_features": feats, "feature_mask": fmask,
               "modality_mask": torch.ones(b, 5, dtype=torch.bool, device=device),
               "emotion": torch.arange(b, device=device) % 6}
    length = 24
    present = torch.ones(b, 6, dtype=torch.bool, device=device)
    present[:, SYNERGY] = False
    targets = EvidenceTargets(torch.randint(3, vocab, (b, 6, length), device=device),
                              torch.ones(b, 6, length, dtype=torch.long, device=device), present,
                              torch.randn(b, 6, llm_dim, device=device))
    return samples, targets


def bench_stack(args: argparse.Namespace, device: Any, dtype: Any) -> None:
    import torch
    from omegaconf import OmegaConf

    from minigpt4.models.hero.evidence_stack import HEROEvidenceStack

    cfg = OmegaConf.create(dict(PAPER_DIMS, hidden_dim=768, num_queries=32, num_qformer_layers=2, num_output_queries=64,
                                integration_strategy="audio", lambda_stmil=0.1, lambda_sccl=0.1))
    stack = HEROEvidenceStack(cfg, llm_dim=args.llm_dim, vocab_size=args.vocab, bos_token_id=1, eos_token_id=2,
                              pad_token_id=0).to(device).train()
    est = set(map(id, stack.estimator_parameters()))
    opt = torch.optim.AdamW([p for p in stack.parameters() if id(p) not in est], lr=1e-4)
    opt_est = torch.optim.AdamW(stack.estimator_parameters(), lr=1e-4)
    n_params = sum(p.numel() for p in stack.parameters())
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    print(f"[stack] paper dims: hidden 768, 32 queries, 2 layers, 64 output queries, llm_dim {args.llm_dim}, "
          f"vocab {args.vocab}, params {n_params / 1e6:.1f} M, B={args.stack_batch}, dtype={args.dtype}, "
          f"device={device}")
    now = _timer(device)
    for t in args.lengths:
        samples, targets = _stack_batch(args.stack_batch, t, args.vocab, args.llm_dim, device)

        def step() -> None:
            with autocast:
                out = stack(samples, targets)
                total = out.context.float().pow(2).mean() + out.loss_aux + out.estimator_loss
            opt.zero_grad(set_to_none=True)
            opt_est.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            opt_est.step()

        ((sec, med),) = _times([step], args.repeats, now)
        print(f"  T={t:4d}  train step min {sec * 1e3:9.1f} ms  median {med * 1e3:9.1f} ms   "
              f"({args.stack_batch / sec:6.2f} clips/s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="autocast dtype")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8, help="Q-Former comparison batch")
    p.add_argument("--frames", type=int, default=256, help="Q-Former comparison T")
    p.add_argument("--enc-dim", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--stack-batch", type=int, default=4)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--llm-dim", type=int, default=4096, help="LLM width the context is projected to")
    p.add_argument("--vocab", type=int, default=32000, help="LLM vocabulary (evidence decoder)")
    p.add_argument("--skip-qformer", action="store_true")
    p.add_argument("--skip-stack", action="store_true")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_qformer:
        bench_qformer(args, device, dtype)
    if not args.skip_stack:
        bench_stack(args, device, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
