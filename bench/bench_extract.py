#!/usr/bin/env python
"""Benchmark feature extraction (minigpt4/extraction, behind scripts/extract_features.py):
videos/s, and total time against pure decoding.

Goal: with the tiny encoders on CPU, the whole extraction takes <= 1.5x the time
of just decoding the same videos the same way (same sampled frames, same audio, and the
measured signals computed as the decoding workers compute them), i.e. the worker pipeline
keeps decoding busy and the encoders hidden behind it.

Second goal (issue 16): the measured signals `prosody` (pyin) and `flow` (optical flow) add
<= 25% to the extraction without them (same videos, encoders and workers; `scene` is left out
of both: it costs one projection per frame). This comparison runs with image encoders at
`--signals_image_size` (default 224, the input size of CLIP and VideoMAE checkpoints): with the
32-px tiny encoders the extraction without the signals decodes 32-px frames, which no real
checkpoint does, so the flow's own 112-px frames would be counted as extra decoding. Also printed: each signal's own CPU time per video
second, measured in one process on the decoded audio and frames, and the one-time cost of
librosa's import and numba cache load (paid once per run, before the workers start).

    python bench/bench_extract.py [--videos 12 --seconds 8] [--workers 0 1 2]
    python bench/bench_extract.py --video_dir DIR --config my_models.yaml   # your own videos/models
    python bench/bench_extract.py --modalities clip videomae hubert --signal_workers 2 --options flow.method=dis

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


def pure_decode(jobs: list[tuple[str, Path]], plan: "DecodePlan", measure: bool = True) -> float:
    """Seconds to decode every video exactly as the extractor does (frames + audio), no models; with
    `measure`, the measured signals (prosody, flow) are computed as the workers compute them."""
    from minigpt4.extraction.decode import decode_video

    start = time.perf_counter()
    for vid, path in jobs:
        for seg in decode_video(vid, path, plan, pre=None, preprocess=False, measure=measure):
            if "error" in seg:  # it decoded in split_decodable: a flaky decoder, worth stopping for
                raise RuntimeError(f"{path}: {seg['error']}")
    return time.perf_counter() - start


def extract_seconds(argv: list[str], repeat: int) -> float:
    """Best of `repeat` in-process runs of the extraction command line (model loading included)."""
    import torch

    from minigpt4.extraction.cli import main as extract_main

    threads = torch.get_num_threads()  # the script may lower it for its workers; restore per run
    best = float("inf")
    for _ in range(repeat):
        torch.set_num_threads(threads)
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):
            rc = extract_main(argv)
        best = min(best, time.perf_counter() - start)
        torch.set_num_threads(threads)
        if rc != 0:
            print(log.getvalue())
            raise SystemExit(f"extraction failed with exit code {rc}")
    return best


def signal_seconds(jobs: list[tuple[str, Path]], cfg) -> tuple[float, float, float]:
    """(prosody s, flow s, media s): the trackers' own CPU time on every video's decoded audio and
    frames in this process (decoding not counted), and the seconds of video they covered."""
    from minigpt4.extraction.audio_stream import read_audio
    from minigpt4.extraction.decode import signal_settings
    from minigpt4.extraction.flow import FlowTracker
    from minigpt4.extraction.prosody import ProsodyTracker
    from minigpt4.extraction.video_io import VideoSource, sample_times

    pro, flo = signal_settings(cfg, ("prosody", "flow"))
    t_pro = t_flow = media = 0.0
    for _, path in jobs:
        with VideoSource(path, short_side=flo.short_side, want_audio=False) as src:
            dur = src.info.duration
            frames = src.frames_at(sample_times(dur, flo.fps))
            has_audio = src.info.has_audio
        media += dur
        start = time.perf_counter()
        FlowTracker(flo).push(frames)
        t_flow += time.perf_counter() - start
        if has_audio:
            wave = read_audio(path)[: int(dur * pro.sample_rate)]
            start = time.perf_counter()
            ProsodyTracker(pro).push(wave, final=True)
            t_pro += time.perf_counter() - start
    return t_pro, t_flow, media


def warm_up_seconds(config: str, options: list[str]) -> float:
    """Seconds a fresh process spends importing librosa and loading pyin's numba cache (build_plan's warm-up)."""
    import subprocess

    code = ("import time, sys; from minigpt4.extraction.config import load_extract_config\n"
            "from minigpt4.extraction.prosody import ProsodySettings, warm_up\n"
            "s = ProsodySettings.from_config(load_extract_config(sys.argv[1], sys.argv[2:]))\n"
            "t = time.perf_counter(); warm_up(s); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, config, *options], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1]))
    return float(out.stdout.strip().splitlines()[-1])


def signals_cost(video_list: Path, jobs: list[tuple[str, Path]], cfg, config: str, options: list[str],
                 base: tuple[str, ...], args: argparse.Namespace, tmp: Path) -> None:
    """Print the added cost of prosody + flow over the extraction of `base`, against the <= 25% goal."""
    if not args.config and args.signals_image_size != args.image_size:
        from minigpt4.extraction.config import load_extract_config
        from minigpt4.extraction.synthetic import make_tiny_encoders, tiny_options

        folder = tmp / f"encoders_{args.signals_image_size}"
        options = tiny_options(make_tiny_encoders(folder, image_size=args.signals_image_size)) + list(args.options)
        cfg = load_extract_config(config, options)
    print(f"signals: image encoders {'of ' + args.config if args.config else f'at {args.signals_image_size} px'}")
    workers = args.signal_workers
    runs = {"without": base, "with": base + ("prosody", "flow")}
    times = {name: float("inf") for name in runs}
    for _ in range(args.repeat):  # interleaved, so a busy spell on a shared machine hits both
        for name, mods in runs.items():
            argv = ["--video_list", str(video_list), "--output_dir", str(tmp / f"signals_{name}"), "--config", config,
                    "--device", args.device, "--num_workers", str(workers), "--batch_size", str(args.batch_size),
                    "--no-skip_existing", "--modalities", *mods] + (["--options", *options] if options else [])
            times[name] = min(times[name], extract_seconds(argv, 1))
    for name, mods in runs.items():
        print(f"signals: extract {','.join(mods)} --num_workers {workers}: {times[name]:.2f} s (best of {args.repeat})")
    added = times["with"] / times["without"] - 1
    from minigpt4.extraction.decode import build_plan

    plans = {name: build_plan(cfg, mods)[0] for name, mods in (("without", base), ("with", base + ("flow",)))}
    dec = {name: min(pure_decode(jobs, plan, measure=False) for _ in range(args.repeat)) for name, plan in plans.items()}
    print(f"signals: pure decode (1 process) {dec['without']:.2f} s at short side {plans['without'].short_side}, "
          f"{dec['with']:.2f} s at {plans['with'].short_side} with flow's frames")
    t_pro, t_flow, media = signal_seconds(jobs, cfg)
    warm = warm_up_seconds(config, options)
    verdict = "meets" if added <= 0.25 else "misses"
    print(f"signals: prosody + flow ({cfg.flow.method}) add {added:+.0%} to the extraction ({verdict} the <= 25% goal; "
          f"best of {args.repeat}, warm process)")
    print(f"signals: own CPU time per video second: prosody {1000 * t_pro / media:.1f} ms, flow {1000 * t_flow / media:.1f} ms "
          f"({media:.0f} s of video, one process); one-time librosa import + pyin warm-up {warm:.1f} s per run")


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
    ap.add_argument("--modalities", nargs="+", help="modalities of the main measurement (default: the config's)")
    ap.add_argument("--signal_workers", type=int, default=2, help="--num_workers of the prosody + flow cost runs")
    ap.add_argument("--image_size", type=int, default=32, help="input size of the tiny image encoders (224: frames "
                    "decoded and preprocessed at the paper encoders' size)")
    ap.add_argument("--signals_image_size", type=int, default=224, help="input size of the tiny image encoders in the "
                    "prosody + flow cost runs (224, as CLIP and VideoMAE checkpoints: see the module docstring)")
    ap.add_argument("--no_signals", action="store_true", help="skip the prosody + flow cost measurement")
    ap.add_argument("--options", nargs="*", default=[], help="extra config overrides (e.g. flow.method=dis)")
    args = ap.parse_args()

    import torch

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
        options = ([] if args.config else tiny_options(make_tiny_encoders(tmp / "encoders", image_size=args.image_size))) + list(args.options)
        cfg = load_extract_config(config, options)
        modalities = tuple(args.modalities or cfg.extract.modalities)
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
        print(f"pure decode (1 process, best of {args.repeat}; prosody/flow measured as the workers do): "
              f"{decode_s:.2f} s, {len(jobs) / decode_s:.2f} videos/s")

        results = []
        for w in args.workers:
            out = tmp / f"out_w{w}"
            argv = ["--video_list", str(video_list), "--output_dir", str(out), "--config", config,
                    "--device", args.device, "--num_workers", str(w), "--batch_size", str(args.batch_size),
                    "--no-skip_existing", "--modalities", *modalities]
            if options:
                argv += ["--options", *options]
            total = extract_seconds(argv, args.repeat)
            results.append((w, total))
            print(f"extract --num_workers {w}: {total:.2f} s, {len(jobs) / total:.2f} videos/s, "
                  f"{total / decode_s:.2f}x pure decode (model loading included)")
        best_w, best = min(results, key=lambda r: r[1])
        verdict = "meets" if best <= 1.5 * decode_s else "misses"
        print(f"summary: best {best:.2f} s with {best_w} workers = {best / decode_s:.2f}x pure decode "
              f"({verdict} the <= 1.5x goal); {len(jobs) / best:.2f} videos/s; "
              f"{len(undecodable)} undecodable file(s) skipped")
        if not args.no_signals:
            base = tuple(m for m in modalities if m not in ("prosody", "flow", "scene"))
            signals_cost(video_list, jobs, cfg, config, options, base, args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
