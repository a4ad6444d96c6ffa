"""The `extract_features` command line: raw videos -> one HERO feature file per video.

    python scripts/extract_features.py --video_dir videos/ --output_dir features/ \\
        [--config configs/extract/default.yaml] [--device cuda] [--num_workers 4] \\
        [--modalities clip videomae hubert au transcript bert prosody flow scene] [--openface_dir of_csv/] \\
        [--options visual.path=/models/clip-vit-large-patch14 text.language=zh]

Writes `<output_dir>/<video_id>.npz` (float16 arrays `clip`, `videomae`, `hubert`, `au`,
`bert`, `prosody`, `flow`, `scene`, the `transcript` string and `meta_*` strings; format in docs/ARCHITECTURE.md,
"Feature files") atomically, so an interrupted run never leaves a partial file and a rerun
(`--skip_existing`, the default) only does what is missing. Failures (unreadable video, bad
OpenFace CSV, ...) are written to `<output_dir>/failures.jsonl` and the others go on.
Exit codes: 0 all done, 1 anything failed, 2 bad arguments or config, 130 interrupted.

Importing this module is light (no torch or transformers), so `--help` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from minigpt4.extraction.config import DEFAULT_CONFIG, MODALITIES, load_extract_config
from minigpt4.extraction.jobs import list_videos
from minigpt4.extraction.pipeline import RunSettings, RunSummary, extract


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (names and defaults are the interface scripts and docs rely on)."""
    p = argparse.ArgumentParser(
        description="Extract HERO features (CLIP, VideoMAE, HuBERT, OpenFace AUs, Whisper + BERT) and measured "
        "signals (prosody, optical flow, CLIP scene labels) from raw videos into one .npz per video.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video_dir", help="folder of videos (searched recursively; id = file stem)")
    src.add_argument("--video_list", help="text file with one video path per line (relative to the list's folder)")
    p.add_argument("--output_dir", required=True, help="where <video_id>.npz and failures.jsonl go")
    p.add_argument("--config", "--cfg-path", dest="config", default=str(DEFAULT_CONFIG),
                   help="extraction YAML (default: configs/extract/default.yaml)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the config's extract.device)")
    p.add_argument("--batch_size", type=int, help="frames / clips / windows per encoder forward")
    p.add_argument("--num_workers", type=int, help="decoding worker processes (0 = decode in the main process)")
    p.add_argument("--modalities", nargs="+", choices=MODALITIES, metavar="NAME",
                   help=f"subset of {' '.join(MODALITIES)} (default: the config's extract.modalities)")
    p.add_argument("--skip_existing", action=argparse.BooleanOptionalAction, default=None,
                   help="skip videos whose feature file already holds the requested modalities (default: on)")
    p.add_argument("--openface_dir", help="folder of OpenFace 2.0 CSVs named <video_id>.csv")
    p.add_argument("--openface_bin", help="OpenFace FeatureExtraction binary, run when a video has no CSV")
    p.add_argument("--num_shards", type=int, default=1, help="split the video list into N shards (one per GPU/machine)")
    p.add_argument("--shard_id", type=int, default=0, help="which shard this process extracts (0-based)")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. visual.fps=2 text.language=zh decode.backend=pyav")
    return p


def run(args: argparse.Namespace) -> int:
    """Extract every listed video; returns the process exit code (1 when anything failed)."""
    from minigpt4.common.config import ConfigError

    try:
        cfg = load_extract_config(args.config, args.options)
        if args.openface_dir is not None:
            cfg.au.openface_dir = args.openface_dir
        if args.openface_bin is not None:
            cfg.au.openface_bin = args.openface_bin
        modalities = tuple(args.modalities or cfg.extract.modalities)
        bad = [m for m in modalities if m not in MODALITIES]
        if bad:
            raise ValueError(f"unknown modality {bad[0]!r}; choose from {', '.join(MODALITIES)}")
        if not 0 <= args.shard_id < args.num_shards:
            raise ValueError(f"--shard_id must be in 0..{args.num_shards - 1}, got {args.shard_id}")
        jobs = list_videos(args.video_dir, args.video_list)[args.shard_id :: args.num_shards]
        from minigpt4.extraction.media_checks import tolerance_from

        tolerance_from(cfg)  # a bad value is an error now, not after the models load
        from minigpt4.extraction.decode import signal_settings

        signal_settings(cfg, modalities)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"extract_features: error: {exc}", file=sys.stderr)
        return 2
    settings = RunSettings(
        cfg=cfg,
        modalities=modalities,
        jobs=jobs,
        out_dir=Path(args.output_dir),
        device=args.device or str(cfg.extract.device),
        batch_size=int(args.batch_size or cfg.extract.batch_size),
        num_workers=int(args.num_workers if args.num_workers is not None else cfg.extract.num_workers),
        skip_existing=bool(cfg.extract.skip_existing if args.skip_existing is None else args.skip_existing),
        suffix=str(cfg.extract.output_suffix),
    )
    summary = extract(settings)
    report(summary)
    return summary.exit_code


def report(summary: RunSummary) -> None:
    """The closing line on stdout (and, when decoding broke, how to resume on stderr)."""
    status = "interrupted: " if summary.interrupted else ""
    print(f"extract_features: {status}{summary.done} done, {summary.skipped} skipped, {summary.failed} failed "
          f"({summary.videos} videos, {summary.elapsed:.1f} s) -> {summary.out_dir}" +
          (f"; see {summary.failures_path}" if summary.failed else ""))
    if summary.redone:
        print(f"extract_features: {summary.redone} existing file(s) extracted again (settings changed, damaged "
              f"or missing modalities; e.g. {summary.redo_example})")
    if summary.temps_removed:
        print(f"extract_features: removed {summary.temps_removed} temp file(s) left by an interrupted run")
    if summary.loader_error:
        print(f"extract_features: error: decoding stopped early ({summary.loader_error}); finished files are kept, "
              "rerun the same command to extract the rest", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), extract, and return the exit code."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run(args)
