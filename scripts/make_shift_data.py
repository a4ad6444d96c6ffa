#!/usr/bin/env python
"""Write HERO's second synthetic corpus ("shift"), built differently from the demo, in seconds.

Why: a recipe tuned on the demo alone can collapse on data built any other way. The shift
corpus has the demo's layout but other dims, lengths and encoders, skewed class priors,
bursts anywhere (split in two, weak to strong), cues in frame means and in temporal order,
a topic the words and the audio carry, more missing modalities, evidence that names the
emotion (true of the rendered cues) and partial annotation. See
minigpt4/synthetic/shift.py for the full design.

  <out>/features/<video_id>.npz   float16 videomae [T,24], hubert [T,56], au [T,35],
                                  bert [T,40], clip [T,48] (a missing modality is absent)
                                  + the transcript
  <out>/annotations.json          records: video_id, emotion, split, sentiment, topic, text,
                                  evidence {visual, motion, audio, au, text, synergy}, reasoning
  <out>/latents.json              the hidden cues of every clip (oracles and tests; never loaded)
  <out>/shift_manifest.json       seed, split sizes, priors, dims, suggested max_dim / max_len

Usage:
  python scripts/make_shift_data.py --out shift/data [--seed 0] [--num_clips 640 80 160]
  python scripts/make_shift_data.py --out shift/data --report   # + baselines and the oracle
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="shift/data", help="output folder (default: shift/data)")
    p.add_argument("--seed", type=int, default=0, help="clip sampling seed (default: 0)")
    p.add_argument(
        "--num_clips", type=int, nargs="+", default=None, metavar="N",
        help="one total (split 8:1:2 into train/val/test) or three sizes TRAIN VAL TEST (default: 640 80 160)",
    )
    p.add_argument(
        "--report", action="store_true",
        help="also measure majority class, the mean-pool and pooled-stats logistic-regression baselines, "
        "the generator oracle and the frame oracle on the test split; written to <out>/shift_report.json",
    )
    return p.parse_args(argv)


def summary_line(report: dict) -> str:
    """The report in one line, so a log shows at a glance how far the baselines sit below the oracle."""
    names = (("majority", "majority_class"), ("mean-pool LR", "mean_pool_logreg_baseline"),
             ("pooled-stats LR", "pooled_stats_logreg_baseline"), ("oracle", "cue_oracle_test"),
             ("frame oracle", "frame_oracle_test"))
    return "shift test accuracy: " + ", ".join(f"{label} {report[key]:.3f}" for label, key in names)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from minigpt4.common.atomic_io import atomic_write_json
    from minigpt4.synthetic import shift as shift_data

    try:
        sizes = shift_data.split_sizes(args.num_clips)
    except ValueError as exc:
        print(f"make_shift_data: {exc}", file=sys.stderr)
        return 2
    summary = shift_data.generate_shift(args.out, num_clips=sizes, seed=args.seed)
    options = shift_data.train_options(summary.out_dir)
    info = {
        "out_dir": str(summary.out_dir),
        "features_dir": str(summary.features_dir),
        "annotations": str(summary.annotations),
        "split_sizes": summary.split_sizes,
        "seconds": round(summary.seconds, 2),
        "dims": shift_data.SHIFT_DIMS,
        "max_dim": shift_data.SHIFT_MAX_DIM,
        "max_len": shift_data.SHIFT_MAX_LEN,
        "priors": shift_data.PRIORS,
        "train_options": options,
    }
    if args.report:
        info.update(shift_data.measure_report(summary, seed=args.seed))
        atomic_write_json(summary.out_dir / "shift_report.json", info)
    print(json.dumps(info, indent=1))
    if args.report:
        print(summary_line(info))
    print("train HERO on it: python train_hero.py --cfg-path configs/models/hero.yaml --options " + shlex.join(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
