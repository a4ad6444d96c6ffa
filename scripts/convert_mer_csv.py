#!/usr/bin/env python
"""Convert MER2023/2024 label CSVs (`name, discrete, valence`) to HERO's annotations JSON.

Example:
  python scripts/convert_mer_csv.py --csv train_label.csv test_label.csv --split train test \
      --val_fraction 0.1 --output labels.json
"""
from __future__ import annotations

import argparse
import sys

from minigpt4.common.atomic_io import atomic_write_json
from minigpt4.datasets.annotations import (
    AnnotationError,
    carve_validation,
    load_annotation_file,
    mer_csv_to_records,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", nargs="+", required=True, help="MER label CSV file(s)")
    p.add_argument("--split", nargs="+", required=True, help="split name of each CSV, in the same order")
    p.add_argument("--output", required=True, help="annotations JSON to write (atomically)")
    p.add_argument("--val_fraction", type=float, default=0.0, help="move this fraction of train records to 'val'")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/val draw")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.csv) != len(args.split):
        print(f"error: {len(args.csv)} --csv files but {len(args.split)} --split names", file=sys.stderr)
        return 2
    try:
        records = []
        for path, split in zip(args.csv, args.split):
            records.extend(mer_csv_to_records(path, split))
        if args.val_fraction:
            carve_validation(records, args.val_fraction, args.seed)
        atomic_write_json(args.output, records)
        load_annotation_file(args.output)  # the written file must load (e.g. no duplicate ids)
    except (AnnotationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec["split"]] = counts.get(rec["split"], 0) + 1
    print(f"wrote {len(records)} records to {args.output}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
