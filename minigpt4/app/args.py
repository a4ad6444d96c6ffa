"""The `hero-app` command line: what to load, where to listen, which uploads to accept."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

DEFAULT_HOST = "127.0.0.1"  # local only: exposing the demo to a network is the user's explicit choice
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 200.0
DEFAULT_MAX_DURATION_S = 120.0


@dataclass(frozen=True)
class AppOptions:
    """The parsed command line."""

    ckpt: Path
    eval_dir: Optional[Path]
    host: str
    port: int
    max_upload_mb: float
    max_duration_s: float
    device: str
    batch_size: int
    extract_config: Optional[Path]
    extract_options: tuple[str, ...]
    debug: bool


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so `--help` needs neither torch nor Gradio)."""
    p = argparse.ArgumentParser(
        prog="hero-app",
        description="A local web demo of a trained HERO run: ask about a video or one of the run's "
                    "evaluated clips, and browse an evaluation folder.",
    )
    p.add_argument("--ckpt", required=True, type=Path,
                   help="the run folder (its best checkpoint) or one checkpoint folder inside it")
    p.add_argument("--eval_dir", type=Path, default=None,
                   help="an evaluation folder of this run (e.g. RUN/eval_test) to browse and to pick clips from")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest video accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    p.add_argument("--max_duration_s", type=float, default=DEFAULT_MAX_DURATION_S,
                   help=f"longest video accepted, in seconds (default {DEFAULT_MAX_DURATION_S:g})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch_size", type=int, default=8, help="clips per model batch (default 8)")
    p.add_argument("--extract_config", type=Path, default=None,
                   help="extraction settings for uploads, when the run's own are not wanted")
    p.add_argument("--extract_options", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the extraction settings, as for hero-extract --options")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> AppOptions:
    """Parse and check `argv`; a bad value exits through argparse with a one-line message."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not 0 < ns.port < 65536:
        parser.error(f"--port must be in 1..65535, got {ns.port}")
    if not ns.max_upload_mb > 0:
        parser.error(f"--max_upload_mb must be > 0, got {ns.max_upload_mb:g}")
    if not ns.max_duration_s > 0:
        parser.error(f"--max_duration_s must be > 0, got {ns.max_duration_s:g}")
    if ns.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {ns.batch_size}")
    return AppOptions(ckpt=ns.ckpt, eval_dir=ns.eval_dir, host=ns.host, port=ns.port,
                      max_upload_mb=float(ns.max_upload_mb), max_duration_s=float(ns.max_duration_s),
                      device=ns.device, batch_size=int(ns.batch_size), extract_config=ns.extract_config,
                      extract_options=tuple(ns.extract_options), debug=bool(ns.debug))
