#!/usr/bin/env python
"""Tokens/s of HERO's batched report generation with the KV cache vs without it.

Builds a random Llama of moderate size (real SmolLM2 tokenizer) in a temp folder, loads it
through `LLMReasoner` exactly as HEROModel does (LoRA on, chat template, a realistic
evidence brief and the CoT instruction, 64 context vectors in the video slot), then times
greedy generation of a fixed number of new tokens (EOS suppressed by `min_new_tokens`) with
`use_cache=True` and `use_cache=False`. One run per setting, after a short warm-up.

Usage: python bench/bench_generate.py [--hidden 256 --layers 4 --batch 4 --new-tokens 128 256]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=64, help="context vectors in the video slot")
    p.add_argument("--new-tokens", type=int, nargs="+", default=[128, 256])
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--skip-no-cache", action="store_true", help="time only the cached path")
    args = p.parse_args(argv)

    import torch

    from minigpt4.common.cot import build_instruction
    from minigpt4.common.modalities import DEFAULT_EMOTIONS
    from minigpt4.models.hero.llm_reasoner import LLMReasoner, ReasonerConfig
    from minigpt4.models.hero.user_turn import compose_user_turn
    from minigpt4.common.tiny_llm import make_tiny_llm

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_llm(Path(tmp) / "llm", hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                             intermediate_size=args.intermediate, max_position_embeddings=2048, seed=0)
        cfg = ReasonerConfig.from_model_cfg({"llm": {"path": str(path), "dtype": args.dtype, "lora_r": 8}})
        reasoner = LLMReasoner(cfg).to(device).eval()
    n_params = sum(p.numel() for p in reasoner.parameters())
    brief = [("audio", "The voice rises and trembles near the end of the sentence."),
             ("visual", "The brows are drawn together and the mouth is tight."),
             ("au", "AU4 and AU15 are strongly active."),
             ("text", "She says she cannot believe this happened again.")]
    turn = compose_user_turn(build_instruction(DEFAULT_EMOTIONS, use_cot=True), brief)
    turns = [turn] * args.batch
    context = torch.randn(args.batch, args.context, reasoner.hidden_size, device=device)
    prompt_len = sum(len(x) for x in reasoner.prompt_ids(turns[:1])[0]) + args.context
    print(f"model: {n_params / 1e6:.1f}M params (hidden {args.hidden}, {args.layers} layers), dtype {args.dtype}, "
          f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}, prompt {prompt_len} positions")

    def run(new_tokens: int, use_cache: bool) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ids = reasoner.generate_ids(context, turns, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    use_cache=use_cache)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        assert ids.shape == (args.batch, new_tokens), ids.shape
        return elapsed

    run(8, True)
    run(8, False)  # warm-up both paths
    print(f"{'new tokens':>10} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speed-up':>9}")
    for n in args.new_tokens:
        t_cache = run(n, True)
        tps_cache = args.batch * n / t_cache
        if args.skip_no_cache:
            print(f"{n:>10} {tps_cache:>12.1f} {'-':>15} {'-':>9}")
            continue
        t_nocache = run(n, False)
        tps_nocache = args.batch * n / t_nocache
        print(f"{n:>10} {tps_cache:>12.1f} {tps_nocache:>15.1f} {t_nocache / t_cache:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
