#!/usr/bin/env python
"""Data-loading benchmark: HERO's feature layout vs a naive padded one, side by side.

Ours: one float16 `.npz` per clip holding each modality at its true dim and length, read by
HERODataset (validation, uniform subsampling to max_len, stacking, masks) and collated to
the longest clip of the batch, in float16 as stored (the experts cast on input).
Naive (the legacy layout `scripts/convert_legacy_features.py` reads): one pickled float32 dict per clip with every modality padded to
[64, 1024], i.e. a [5, 64, 1024] block, read with np.load(allow_pickle=True) (only because
this script generated those files itself) and stacked to a fixed [B, 5, 64, 1024].

Both go through a torch DataLoader (batch_size, num_workers=0: per-process cost) in
`--repeats` alternating passes. Reported: each loader's best pass, and the median over passes
of the ratio of adjacent passes (the steadier number on a shared machine, where the naive
loader alone varies ~2x between passes), for two cache states:
  warm: the files sit in the page cache (RAM-speed reads; the naive pickle is one memcpy)
  cold: each file is evicted (posix_fadvise DONTNEED) before every pass, so it is read from
        the disk, as for a dataset larger than RAM
Target: >= 3x the naive samples/s and <= 1/4 of its bytes per sample.

Length profiles (frames per modality, drawn uniformly per clip):
  capped: every modality <= 64 frames, the information the naive format can hold at all
  extractor: 2-10 s clips at the rates scripts/extract_features.py writes by default:
          CLIP and AUs at 1 fps, VideoMAE 16-frame clips at 8 fps, HuBERT as 10 Hz window
          means (audio.fps: 10)
  extractor_50hz: the same with every 50 Hz HuBERT frame kept (audio.fps: null); HERODataset
          subsamples audio to max_len 64 when loading

Usage: python bench/bench_data.py [--num_samples 128] [--batch_size 8] [--profile capped extractor extractor_50hz]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS, STACK_ORDER
from minigpt4.datasets.annotations import parse_record
from minigpt4.datasets.datasets.hero_dataset import HERODataset
from minigpt4.datasets.feature_io import write_features

DIMS = {"motion": 768, "audio": 1024, "au": 35, "text": 768, "visual": 1024}
PROFILES = {
    "capped": {"motion": (2, 16), "audio": (16, 64), "au": (16, 64), "text": (4, 48), "visual": (2, 16)},
    "extractor": {"motion": (1, 5), "audio": (20, 100), "au": (2, 10), "text": (4, 48), "visual": (2, 10)},
    "extractor_50hz": {"motion": (1, 5), "audio": (100, 500), "au": (2, 10), "text": (4, 48), "visual": (2, 10)},
}
MAX_LEN = {"motion": 32, "audio": 64, "au": 64, "text": 64, "visual": 32}
NAIVE_T, NAIVE_D = 64, 1024
LEGACY_NAMES = {"motion": "video_mae", "audio": "hubert", "au": "au", "text": "bert", "visual": "clip"}


def make_corpus(root: Path, n: int, profile: str, seed: int) -> list:
    """Write n clips in both layouts; returns the annotation records."""
    rng = np.random.default_rng(seed)
    ours, naive = root / "ours", root / "naive"
    ours.mkdir(parents=True)
    naive.mkdir(parents=True)
    records = []
    for i in range(n):
        vid = f"sample_{i:05d}"
        arrays = {}
        legacy: dict = {"transcript": f"transcript of clip {i}"}
        for m in STACK_ORDER:
            lo, hi = PROFILES[profile][m]
            t = int(rng.integers(lo, hi + 1))
            arr = rng.standard_normal((t, DIMS[m])).astype(np.float32)
            arrays[DEFAULT_FEATURE_KEYS[m]] = arr
            padded = np.zeros((NAIVE_T, NAIVE_D), dtype=np.float32)
            take = min(t, NAIVE_T)
            padded[:take, : DIMS[m]] = arr[:take]  # the legacy layout truncated at the tail
            legacy[LEGACY_NAMES[m]] = padded
        write_features(ours / f"{vid}.npz", arrays, transcript=legacy["transcript"])
        np.save(naive / f"{vid}.npy", legacy, allow_pickle=True)
        records.append(parse_record({"video_id": vid, "emotion": DEFAULT_EMOTIONS[i % 6], "split": "train"}, "bench", i))
    return records


class NaiveDataset(torch.utils.data.Dataset):
    """The naive loader: unpickle the padded dict, stack to [5, 64, 1024]."""

    def __init__(self, folder: Path, records: list) -> None:
        self.paths = [folder / f"{r.video_id}.npy" for r in records]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        d = np.load(self.paths[i], allow_pickle=True).item()  # our own generated file (bench only)
        return torch.from_numpy(np.stack([d[LEGACY_NAMES[m]] for m in STACK_ORDER]))


def count_batches(loader: torch.utils.data.DataLoader, key: str | None) -> int:
    done = 0
    for batch in loader:
        done += (batch[key] if key else batch).shape[0]
    return done


def naive_loader(folder: Path, records: list, batch_size: int) -> Callable[[], int]:
    loader = torch.utils.data.DataLoader(NaiveDataset(folder, records), batch_size=batch_size)
    return lambda: count_batches(loader, None)


def ours_loader(folder: Path, records: list, batch_size: int) -> Callable[[], int]:
    ds = HERODataset(records, folder, max_dim=1024, max_len=MAX_LEN, training=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=ds.collater)
    return lambda: count_batches(loader, "video_features")


def drop_cache(folder: Path) -> None:
    """Evict the folder's files from the page cache (POSIX_FADV_DONTNEED, no root needed),
    so the next pass reads from the disk: the case of a dataset larger than RAM."""
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def compare(
    runs: dict[str, tuple[Callable[[], int], Path]], repeats: int, cold: bool
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) samples/s of each loader in every pass. Passes alternate between loaders,
    so a pass of ours and the naive pass next to it see the same load from other processes
    on a shared machine (their ratio is the steadiest number there); the CPU-time rate
    (samples per second of this process's CPU time) excludes waiting for the disk (cold)."""
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for fn, _ in runs.values():
        fn()  # warm-up (allocator, imports)
    for _ in range(repeats):
        for name, (fn, folder) in runs.items():
            if cold:
                drop_cache(folder)
            w0, c0 = time.perf_counter(), time.process_time()
            n = fn()
            wall, cpu = time.perf_counter() - w0, max(time.process_time() - c0, 1e-9)
            rates[name].append((n / wall, n / cpu))
    return rates


def summarize(rates: dict[str, list[tuple[float, float]]]) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """Best (wall, CPU) rate of each loader, and the median over passes of ours/naive for
    adjacent passes (wall, CPU)."""
    best = {name: (max(w for w, _ in r), max(c for _, c in r)) for name, r in rates.items()}
    pairs = list(zip(rates["ours"], rates["naive"]))
    paired = (statistics.median(o[0] / n[0] for o, n in pairs), statistics.median(o[1] / n[1] for o, n in pairs))
    return best, paired


def bytes_per_sample(folder: Path, n: int) -> float:
    return sum(p.stat().st_size for p in folder.iterdir()) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_samples", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--profile", nargs="+", default=list(PROFILES), choices=sorted(PROFILES))
    p.add_argument("--cache", nargs="+", default=["warm", "cold"], choices=["warm", "cold"],
                   help="warm: files in the page cache; cold: evicted before every pass (read from disk)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers use 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.num_samples} clips, batch {args.batch_size}, dims {DIMS}, max_len {MAX_LEN}, "
          f"torch threads {args.threads}, {args.repeats} alternating passes each")
    header = f"{'profile/cache':20} {'layout':30} {'samples/s':>10} {'per CPU-s':>10} {'KiB/sample':>11}"
    for profile in args.profile:
        root = Path(tempfile.mkdtemp(prefix="hero_bench_"))
        try:
            records = make_corpus(root, args.num_samples, profile, args.seed)
            os.sync()  # written-back pages can be evicted for the cold passes
            runs = {
                "naive": (naive_loader(root / "naive", records, args.batch_size), root / "naive"),
                "ours": (ours_loader(root / "ours", records, args.batch_size), root / "ours"),
            }
            rates = {cache: compare(runs, args.repeats, cache == "cold") for cache in args.cache}
            b_naive = bytes_per_sample(root / "naive", args.num_samples)
            b_ours = bytes_per_sample(root / "ours", args.num_samples)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"\nlengths ({profile}): " + ", ".join(f"{m} {lo}-{hi}" for m, (lo, hi) in PROFILES[profile].items()))
        print(header)
        for cache, r in rates.items():
            tag = f"{profile}/{cache}"
            best, (pw, pc) = summarize(r)
            (wn, cn), (wo, co) = best["naive"], best["ours"]
            print(f"{tag:20} {'naive pickled f32 [5,64,1024]':30} {wn:10.1f} {cn:10.1f} {b_naive / 1024:11.1f}")
            print(f"{tag:20} {'ours float16 .npz':30} {wo:10.1f} {co:10.1f} {b_ours / 1024:11.1f}")
            print(f"{tag:20} {'ratio ours/naive (best/best)':30} {wo / wn:9.2f}x {co / cn:9.2f}x {b_ours / b_naive:10.3f}x")
            print(f"{tag:20} {'ratio, median of paired passes':30} {pw:9.2f}x {pc:9.2f}x")
    print("\ntarget: >= 3x throughput, <= 0.25x bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
