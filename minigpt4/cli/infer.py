"""Predict new clips with a trained HERO run: `hero-infer` (the same as `python infer_hero.py`).

    hero-infer --ckpt RUN_DIR --video clip.mp4 [more.mp4 ...]
    hero-infer --ckpt RUN_DIR --video_dir videos/
    hero-infer --ckpt RUN_DIR --features features/clip.npz [...] [--json]

`RUN_DIR` is what `hero-train` wrote (its best checkpoint by validation is used, else its
latest), or a checkpoint folder inside it. Videos are extracted into a temporary folder
(`--work_dir` keeps them) with the settings the run's training features were made with (the
run's extraction.json), or with `--extract-config FILE`; `--extract-options k=v ...` override
single keys. An encoder whose output width differs from the model's is an error before any
video is decoded.

Without `--json` each clip is printed as a text report, then one summary line (clips,
failures, seconds). With `--json` stdout holds one JSON object per clip (ClipResult fields)
and the summary goes to stderr. A video or file that cannot be used is one stderr line naming
it and the problem; the others go on, and the exit status is 1 when any failed. An error in
the arguments, the run or the extraction settings is one line `error: ...` (exit status 1;
`--debug` or HERO_DEBUG=1 shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from minigpt4.common import cot

PROG = "hero-infer"
DEFAULT_MAX_NEW_TOKENS = cot.REPORT_TOKENS  # as hero-eval (minigpt4.common.cot is light: --help stays torch-free)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Predict the emotion of new videos (or feature files) with a "
                                "trained HERO run, with the experts' evidence and the CoT report.")
    p.add_argument("--ckpt", required=True, metavar="RUN_DIR",
                   help="run folder hero-train wrote (its best checkpoint, else its latest), or a checkpoint folder in it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", nargs="+", metavar="FILE", help="video files to predict")
    src.add_argument("--video_dir", metavar="DIR", help="folder of videos (searched recursively)")
    src.add_argument("--features", nargs="+", metavar="FILE", help="feature files (.npz / .safetensors) to predict")
    p.add_argument("--json", action="store_true", help="one JSON object per clip on stdout (summary on stderr)")
    p.add_argument("--extract-config", "--extract_config", dest="extract_config", metavar="FILE",
                   help="extraction YAML to use instead of the run's recorded settings (extraction.json)")
    p.add_argument("--extract-options", "--extract_options", dest="extract_options", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override extraction config keys, e.g. au.openface_bin=/path extract.num_workers=0")
    p.add_argument("--work_dir", metavar="DIR", help="keep the extracted features here (default: a temporary folder)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--batch_size", type=int, default=8, help="clips per model batch (default: 8)")
    p.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"generation budget of a report (default: {DEFAULT_MAX_NEW_TOKENS}, as hero-eval)")
    p.add_argument("--no_calibration", action="store_true",
                   help="report the head's confidence as trained, ignoring the run's calibration.json "
                        "(the temperature training or hero-eval --calibrate fitted)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: env HERO_DEBUG=1)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


@dataclass
class InferOutcome:
    """What a `run` produced: results, failures, and seconds spent (load, extract, model, total)."""

    results: list[Any] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def list_video_dir(folder: str) -> list[Path]:
    """Videos under `folder` (recursively, by extension), sorted."""
    from minigpt4.extraction.video_io import VIDEO_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--video_dir {root} is not a folder")
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not videos:
        raise FileNotFoundError(f"--video_dir {root} holds no video ({', '.join(VIDEO_EXTENSIONS)})")
    return videos


def _predict(session: Any, args: argparse.Namespace, videos: Optional[list[Path]]) -> tuple[list[Any], list[Any]]:
    if videos is None:
        return session.predict_features([Path(f) for f in args.features])
    if args.work_dir:
        return session.predict_videos(videos, Path(args.work_dir))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hero-infer-") as tmp:
        return session.predict_videos(videos, Path(tmp))


def run(argv: Optional[Sequence[str]] = None) -> InferOutcome:
    """Predict as the command line says, printing reports (or JSON lines), failures and the summary."""
    args = parse_args(argv)
    import logging

    from minigpt4.common.logger import setup_logging
    from minigpt4.inference import InferenceSession, format_report

    setup_logging(0, logging.WARNING)
    t0 = time.perf_counter()
    videos = None
    if args.video is not None:
        videos = [Path(v) for v in args.video]
    elif args.video_dir is not None:
        videos = list_video_dir(args.video_dir)
    session = InferenceSession.from_run(args.ckpt, extract_config=args.extract_config,
                                        extract_options=args.extract_options, device=args.device,
                                        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                        require_extraction=videos is not None,  # before the model loads
                                        calibrated=not args.no_calibration)
    load_s = time.perf_counter() - t0
    results, failures = _predict(session, args, videos)
    for result in results:
        if args.json:
            print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        else:
            print(format_report(result) + "\n", flush=True)
    for failure in failures:
        print(f"{PROG}: {failure.source}: {failure.reason}", file=sys.stderr, flush=True)
    seconds = {"load_s": load_s, "extract_s": sum(r.timings.get("extract_s", 0.0) for r in results),
               "model_s": sum(r.timings.get("model_s", 0.0) for r in results), "total_s": time.perf_counter() - t0}
    summary = (f"{PROG}: {len(results)} clip(s) predicted, {len(failures)} failed, {seconds['total_s']:.1f} s "
               f"(load {seconds['load_s']:.1f} s, extract {seconds['extract_s']:.1f} s, model {seconds['model_s']:.1f} s)"
               f" with {session.checkpoint}"
               + (f", confidence at head temperature {session.head_temperature:.3f} (calibration.json)"
                  if session.head_temperature != 1.0 else ""))
    print(summary, file=sys.stderr if args.json else sys.stdout, flush=True)
    return InferOutcome(results=results, failures=failures, seconds=seconds)


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what is wrong and where (bad run folder, config, settings, file)."""
    from minigpt4.common.checkpoint import CheckpointMismatchError
    from minigpt4.common.config import ConfigError

    return (CheckpointMismatchError, ConfigError, ValueError, KeyError, FileNotFoundError, NotADirectoryError,
            PermissionError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (`hero-infer`): 0 when every clip was predicted, 1 when any failed or on an
    expected error (one line on stderr; the traceback with --debug or HERO_DEBUG=1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HERO_DEBUG", "") not in ("", "0")
    try:
        return run(args).exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # imports stay lazy: --help must not load torch
        if debug or not isinstance(exc, _known_errors()):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
        print(f"{PROG}: error: {message}  (--debug shows the traceback)", file=sys.stderr, flush=True)
        return 1
