"""Train HERO: `hero-train --cfg-path configs/models/hero.yaml [--options k=v ...]`
(the same as `python train_hero.py ...`).

DDP: `torchrun --nproc_per_node N train_hero.py ...` (gloo on CPU, nccl on CUDA).
Writes into run.output_dir: config.yaml, log.txt (JSON lines), tensorboard/, checkpoints/.
Resume: `--resume` (latest checkpoint in run.output_dir) or `--resume PATH`
(= `--options run.resume_ckpt_path=PATH`).

An expected error (a bad config value, a missing or broken file, a used run folder) ends with
one line `error: ...` naming the key or file and exit status 1; `--debug` (or HERO_DEBUG=1)
shows the full traceback instead. Anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from minigpt4.common.config import add_config_args, apply_options, load_config


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a HERO model (MiniGPT-4 style runner).")
    add_config_args(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                        help="continue from a checkpoint folder or run folder; without PATH: the latest "
                             "checkpoint in run.output_dir (a fresh start if there is none)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: env HERO_DEBUG=1)")
    return parser.parse_args(argv)


def build_runner(cfg: Any, dist_info: Any = None) -> Any:
    """`build_components(cfg)` (task, datasets, model), then the runner the config names."""
    from minigpt4.common.dist_utils import init_distributed_mode
    from minigpt4.common.registry import registry
    from minigpt4.runners.components import build_components

    dist_info = dist_info or init_distributed_mode(cfg.run.device)
    parts = build_components(cfg)
    runner_cls = registry.get_runner_class(cfg.run.get("runner") or "runner_base")
    return runner_cls(cfg, parts.task, parts.model, parts.datasets, dist_info)


def run(argv: Optional[Sequence[str]] = None) -> Any:
    """Train (or only validate, with run.evaluate=true); returns the runner (its `summary` set)."""
    args = parse_args(argv)
    cfg = load_config(args.cfg_path, args.options)
    if args.resume is not None:
        apply_options(cfg, [f"run.resume_ckpt_path={args.resume}"], source=args.cfg_path)

    from minigpt4.common.dist_utils import destroy_distributed, init_distributed_mode
    from minigpt4.common.logger import setup_logging

    if not cfg.run.get("evaluate") and not cfg.run.get("resume_ckpt_path"):
        from minigpt4.runners.checkpointing import refuse_used_folder

        refuse_used_folder(Path(str(cfg.run.output_dir)))  # before minutes of building, not after
    dist_info = init_distributed_mode(cfg.run.device)
    setup_logging(dist_info.rank)
    try:
        runner = build_runner(cfg, dist_info)
        runner.summary = runner.train()
    finally:
        destroy_distributed()
    return runner


# errors whose message already says what is wrong and where (config checks, files, annotations)
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, FileExistsError,
                                                    NotADirectoryError, IsADirectoryError, PermissionError)


def error_line(exc: BaseException) -> str:
    """`error: <message>` (a KeyError's message without the quotes str() adds)."""
    message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return f"error: {message}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (`hero-train`); exit status 0 when training finished, 1 on an expected error
    (one line on stderr; the traceback with --debug or HERO_DEBUG=1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HERO_DEBUG", "") not in ("", "0")
    try:
        run(args)
    except EXPECTED_ERRORS as exc:
        if debug:
            raise
        print(error_line(exc) + "  (--debug shows the traceback)", file=sys.stderr, flush=True)
        return 1
    return 0
