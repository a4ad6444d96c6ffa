#!/usr/bin/env python
"""Convert legacy pickled `.npy` feature dicts (one per clip) to safe `.npz` feature files.

Unpickling runs code from the file, so do this once, on files you trust, and then train
with `allow_pickle: false`. Keys are mapped to HERO's (video_mae -> videomae); arrays are
validated and stored as float16; a 1-D pooled vector becomes one frame [1, D].

Example:
  python scripts/convert_legacy_features.py --input_dir old_feats --output_dir feats
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minigpt4.datasets.feature_io import FeatureFileError, read_features, write_features


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", required=True, help="folder of legacy <video_id>.npy files")
    p.add_argument("--output_dir", required=True, help="folder for <video_id>.npz files")
    p.add_argument("--max_dim", type=int, default=1024, help="refuse features wider than this")
    p.add_argument("--overwrite", action="store_true", help="replace existing .npz files")
    p.add_argument("--keep_going", action="store_true", help="report bad files and continue")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    src, dst = Path(args.input_dir), Path(args.output_dir)
    if not src.is_dir():
        print(f"error: {src} is not a folder", file=sys.stderr)
        return 2
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.npy"))
    if not files:
        print(f"error: no .npy files in {src}", file=sys.stderr)
        return 2
    done = skipped = failed = 0
    for path in files:
        out = dst / f"{path.stem}.npz"
        if out.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            rec = read_features(path, max_dim=args.max_dim, allow_pickle=True)
            write_features(out, rec.arrays, transcript=rec.transcript or None, meta=rec.meta)
        except FeatureFileError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            if not args.keep_going:
                return 1
            continue
        done += 1
    print(f"converted {done}, skipped {skipped} existing, failed {failed} of {len(files)} files -> {dst}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
