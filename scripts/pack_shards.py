#!/usr/bin/env python
"""Pack feature files + annotations into webdataset tar shards, one set per split.

Writes <output_dir>/<prefix>-<split>-NNNNNN.tar and shards.json, and prints the
`build_info.shards` mapping to put in the dataset config.

Example:
  python scripts/pack_shards.py --features_dir feats --annotations labels.json \
      --output_dir shards --shard_size 1000
"""
from __future__ import annotations

import argparse
import json
import sys

from minigpt4.datasets.annotations import AnnotationError, load_annotations
from minigpt4.datasets.feature_io import FeatureFileError
from minigpt4.datasets.datasets.hero_dataset import MissingFeaturesError
from minigpt4.datasets.shards import pack_shards


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features_dir", required=True, help="folder of <video_id>.npz / .safetensors files")
    p.add_argument(
        "--annotations", nargs="+", required=True,
        help="labels JSON with a split field, or SPLIT=FILE pairs (one file per split)",
    )
    p.add_argument("--output_dir", required=True)
    p.add_argument("--shard_size", type=int, default=1000, help="clips per shard")
    p.add_argument("--prefix", default="hero")
    p.add_argument("--max_dim", type=int, default=1024)
    p.add_argument("--skip_missing", action="store_true", help="warn about clips without features instead of failing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.annotations) == 1 and "=" not in args.annotations[0]:
        storage = args.annotations[0]
    else:
        pairs = [a.split("=", 1) for a in args.annotations]
        if any(len(p) != 2 for p in pairs):
            print("error: give one labels JSON, or SPLIT=FILE pairs", file=sys.stderr)
            return 2
        storage = {k: v for k, v in pairs}
    try:
        by_split = load_annotations(storage)
        patterns = pack_shards(
            by_split, args.features_dir, args.output_dir, shard_size=args.shard_size,
            prefix=args.prefix, skip_missing=args.skip_missing, max_dim=args.max_dim,
        )
    except (AnnotationError, FeatureFileError, MissingFeaturesError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("datasets.hero_dataset.build_info.shards:")
    print(json.dumps(patterns, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
