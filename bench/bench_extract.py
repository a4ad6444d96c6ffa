#!/usr/bin/env python
"""Benchmark feature extraction (minigpt4/extraction, behind scripts/extract_features.py):
videos/s, and total time against pure decoding.

Goal: with the tiny encoders on CPU, the whole extraction takes <= 1.5x the time
of just decoding the same videos the same way (same sampled frames, same audio), i.e. the
worker pipeline keeps decoding busy and the encoders hidden behind it.

    python bench/bench_extract.py [--videos 12 --seconds 8] [--workers 0 1 2]
    python bench/bench_extract.py --video_dir DIR --config my_models.yaml   # your own videos/models

Prints one line per measurement and a final summary; nothing is timed inside the tests. A file
no decoder can read is reported, skipped and counted in the summary; the others are timed.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minigpt4.extraction.decode import DecodePlan


def make_videos(folder: Path, n: int, seconds: float) -> None:
    """`n` synthetic 640x360 clips cycling through speech, tone and no audio track."""
    from minigpt4.extraction.synthetic import make_video

    for i in range(n):
        audio = ("speech", "tone", None)[i % 3]
        make_video(folder / f"bench_{i:03d}.mp4", seconds=seconds, fps=25, size=(640, 360), audio=audio, seed=i,
                   text="this is a short benchmark sentence")


def split_decodable(
    jobs: list[tuple[str, Path]], plan: "DecodePlan"
) -> tuple[list[tuple[str, Path]], list[tuple[str, Path, str]]]:
    """Decode every video once, as the extractor does (this also warms the file cache and the
    decoder libraries): the decodable (id, path) pairs, and (id, path, error) for each file that
    cannot be decoded, so one broken file in a folder is skipped instead of ending the benchmark."""
    from minigpt4.extraction.decode import decode_video

    good: list[tuple[str, Path]] = []
    bad: list[tuple[str, Path, str]] = []
    for vid, path in jobs:
        error = None
        try:
            for seg in decode_video(vid, path, plan, pre=None, preprocess=False):
                if "error" in seg:
                    error = str(seg["error"])
                    break
        except Exception as exc:  # a decoder may raise instead of yielding an error segment
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            good.append((vid, path))
        else:
            bad.append((vid, path, error))
    return good, bad


def pure_decode(jobs: list[tuple[str, Path]], plan: "DecodePlan") -> float:
    """Seconds to decode every video exactly as the extractor does (frames + audio), no models."""
    from minigpt4.extraction.decode import decode_video

    start = time.perf_counter()
    for vid, path in jobs:
        for seg in decode_video(vid, path, plan, pre=None, preprocess=False):
            if "error" in seg:  # it decoded in split_decodable: a flaky decoder, worth stopping for
                raise RuntimeError(f"{path}: {seg['error']}")
    return time.perf_counter() - start


def main() -> int:
    """Time pure decoding, then whole extractions per worker count; print a verdict on the 1.5x goal."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video_dir", help="benchmark these videos instead of generated ones")
    ap.add_argument("--config", help="extraction config (default: the tiny encoders)")
    ap.add_argument("--videos", type=int, default=12, help="number of generated videos")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each generated video")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="--num_workers values to time")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="time each measurement N times and keep the fastest "
                    "(the machine is shared; the minimum is the least disturbed run)")
    args = ap.parse_args()

    import torch

    from minigpt4.extraction.cli import main as extract_main
    from minigpt4.extraction.config import DEFAULT_CONFIG, load_extract_config
    from minigpt4.extraction.decode import build_plan
    from minigpt4.extraction.jobs import list_videos
    from minigpt4.extraction.synthetic import make_tiny_encoders, tiny_options

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        tmp = Path(tmp)
        video_dir = Path(args.video_dir) if args.video_dir else tmp / "videos"
        if not args.video_dir:
            video_dir.mkdir()
            make_videos(video_dir, args.videos, args.seconds)
        config = args.config or str(DEFAULT_CONFIG)
        options = [] if args.config else tiny_options(make_tiny_encoders(tmp / "encoders"))
        cfg = load_extract_config(config, options)
        modalities = tuple(cfg.extract.modalities)
        plan, _ = build_plan(cfg, modalities)
        jobs, undecodable = split_decodable(list_videos(str(video_dir)), plan)
        for _, path, error in undecodable:
            print(f"skipped undecodable {path}: {error}")
        if not jobs:
            raise SystemExit(f"no decodable video in {video_dir} ({len(undecodable)} undecodable)")
        video_list = tmp / "decodable.txt"  # extraction times the same files as pure decoding
        video_list.write_text("".join(f"{path.resolve()}\n" for _, path in jobs), encoding="utf-8")
        print(f"{len(jobs)} videos in {video_dir} ({len(undecodable)} undecodable skipped), modalities "
              f"{','.join(modalities)}, torch threads {torch.get_num_threads()}, decode short side {plan.short_side}")

        decode_s = min(pure_decode(jobs, plan) for _ in range(args.repeat))
        print(f"pure decode (1 process, best of {args.repeat}): {decode_s:.2f} s, {len(jobs) / decode_s:.2f} videos/s")

        results = []
        for w in args.workers:
            out = tmp / f"out_w{w}"
            argv = ["--video_list", str(video_list), "--output_dir", str(out), "--config", config,
                    "--device", args.device, "--num_workers", str(w), "--batch_size", str(args.batch_size),
                    "--no-skip_existing"]
            if options:
                argv += ["--options", *options]
            threads = torch.get_num_threads()  # the script may lower it for its workers; restore per run
            total = float("inf")
            for _ in range(args.repeat):
                torch.set_num_threads(threads)
                log = io.StringIO()
                start = time.perf_counter()
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):
                    rc = extract_main(argv)
                total = min(total, time.perf_counter() - start)
                torch.set_num_threads(threads)
                if rc != 0:
                    print(log.getvalue())
                    raise SystemExit(f"extraction failed with exit code {rc}")
            results.append((w, total))
            print(f"extract --num_workers {w}: {total:.2f} s, {len(jobs) / total:.2f} videos/s, "
                  f"{total / decode_s:.2f}x pure decode (model loading included)")
        best_w, best = min(results, key=lambda r: r[1])
        verdict = "meets" if best <= 1.5 * decode_s else "misses"
        print(f"summary: best {best:.2f} s with {best_w} workers = {best / decode_s:.2f}x pure decode "
              f"({verdict} the <= 1.5x goal); {len(jobs) / best:.2f} videos/s; "
              f"{len(undecodable)} undecodable file(s) skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
