"""Train HERO: `python train_hero.py --cfg-path configs/models/hero.yaml [--options k=v ...]`.

DDP: `torchrun --nproc_per_node N train_hero.py ...` (gloo on CPU, nccl on CUDA).
Writes into run.output_dir: config.yaml, log.txt (JSON lines), tensorboard/, checkpoints/.
Resume: `--resume` (latest checkpoint in run.output_dir) or `--resume PATH`
(= `--options run.resume_ckpt_path=PATH`).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Optional, Sequence

from minigpt4.common.config import add_config_args, apply_options, load_config

logger = logging.getLogger("train_hero")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a HERO model (MiniGPT-4 style runner).")
    add_config_args(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                        help="continue from a checkpoint folder or run folder; without PATH: the latest "
                             "checkpoint in run.output_dir (a fresh start if there is none)")
    return parser.parse_args(argv)


def build_runner(cfg: Any, dist_info: Any = None) -> Any:
    """Registry set-up, then task -> datasets -> model -> runner, as the config names them."""
    import minigpt4
    from minigpt4.common.dist_utils import init_distributed_mode
    from minigpt4.common.registry import registry
    from minigpt4.common.seed import set_seed

    dist_info = dist_info or init_distributed_mode(cfg.run.device)
    minigpt4.setup_registry()
    for module in cfg.run.get("imports") or []:
        importlib.import_module(str(module))
    set_seed(int(cfg.run.seed))  # same on every rank: identical model init
    task = registry.get_task_class(cfg.run.task).setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner_cls = registry.get_runner_class(cfg.run.get("runner") or "runner_base")
    return runner_cls(cfg, task, model, datasets, dist_info)


def main(argv: Optional[Sequence[str]] = None) -> Any:
    """Train (or only validate, with run.evaluate=true); returns the runner for callers/tests."""
    args = parse_args(argv)
    cfg = load_config(args.cfg_path, args.options)
    if args.resume is not None:
        apply_options(cfg, [f"run.resume_ckpt_path={args.resume}"], source=args.cfg_path)

    from minigpt4.common.dist_utils import destroy_distributed, init_distributed_mode
    from minigpt4.common.logger import setup_logging

    dist_info = init_distributed_mode(cfg.run.device)
    setup_logging(dist_info.rank)
    try:
        runner = build_runner(cfg, dist_info)
        runner.summary = runner.train()
    finally:
        destroy_distributed()
    return runner


if __name__ == "__main__":
    main(sys.argv[1:])
