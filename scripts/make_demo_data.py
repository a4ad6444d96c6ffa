#!/usr/bin/env python
"""Write HERO's synthetic demo dataset (feature files and annotations as README "Your own data"
and docs/ARCHITECTURE.md "Feature files" describe them) in a few seconds.

  <out>/features/<video_id>.npz   float16 videomae [T,32], hubert [T,48], au [T,35],
                                  bert [T,32], clip [T,40] (a missing modality is absent)
                                  + the transcript
  <out>/annotations.json          records: video_id, emotion, split, sentiment, text,
                                  evidence {visual, motion, audio, au, text, synergy}, reasoning
  <out>/latents.json              the hidden state behind every clip (for oracles and tests;
                                  the loader never reads it)
  <out>/demo_manifest.json        seed, split sizes, dims, feature keys, suggested max_dim/max_len

Emotions can only be read by combining modalities: the voice and gestures carry arousal as
zero-mean swings inside a short burst, the face shows FACS action units in a brief burst over
a resting face, the words carry valence but are sarcastic in some negative clips, and any
modality may be missing. See minigpt4/synthetic/demo.py for the full design.

Usage:
  python scripts/make_demo_data.py --out demo/data [--seed 0] [--num_clips 480 60 120]
  python scripts/make_demo_data.py --out demo/data --report   # + baselines and ceilings
"""
from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo/data", help="output folder (default: demo/data)")
    p.add_argument("--seed", type=int, default=0, help="clip sampling seed (default: 0)")
    p.add_argument(
        "--num_clips", type=int, nargs="+", default=None, metavar="N",
        help="one total (split 8:1:2 into train/val/test) or three sizes TRAIN VAL TEST (default: 480 60 120)",
    )
    p.add_argument(
        "--label_only", action="store_true",
        help="also write <out>/annotations_label_only.json: the same records without any `evidence` or "
        "`reasoning` (labels, splits and transcripts kept), to see what HERO does with label-only data",
    )
    p.add_argument(
        "--report", action="store_true",
        help="also measure the mean-pool and pooled-stats logistic-regression baselines on the test split "
        "and the oracle ceilings; written to <out>/demo_report.json",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from minigpt4.common.atomic_io import atomic_write_json
    from minigpt4.synthetic import demo as demo_data

    try:
        sizes = demo_data.split_sizes(args.num_clips)
    except ValueError as exc:
        print(f"make_demo_data: {exc}", file=sys.stderr)
        return 2
    summary = demo_data.generate_demo(args.out, num_clips=sizes, seed=args.seed)
    info = {
        "out_dir": str(summary.out_dir),
        "features_dir": str(summary.features_dir),
        "annotations": str(summary.annotations),
        "split_sizes": summary.split_sizes,
        "seconds": round(summary.seconds, 2),
        "dims": demo_data.DEMO_DIMS,
        "max_dim": demo_data.DEMO_MAX_DIM,
        "max_len": demo_data.DEMO_MAX_LEN,
    }
    if args.label_only:
        records = json.loads(summary.annotations.read_text())
        stripped = [{k: v for k, v in r.items() if k not in ("evidence", "reasoning", "answer")} for r in records]
        info["annotations_label_only"] = str(atomic_write_json(summary.out_dir / "annotations_label_only.json", stripped))
    if args.report:
        info.update(demo_data.measure_report(summary, seed=args.seed))
        atomic_write_json(summary.out_dir / "demo_report.json", info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
