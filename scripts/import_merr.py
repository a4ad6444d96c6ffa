#!/usr/bin/env python
"""Import MERR annotations (Emotion-LLaMA's label lists, captions and transcripts) as HERO's
annotations JSON.

`--labels` takes `name frames emotion` lists, each `FILE[:SPLIT]` (no split: train);
`--split_fraction val=0.1,test=0.1` then moves a seeded, emotion-stratified share of the train
clips to those splits. The coarse caption (`caption`) and the fine-grained reasoning
(`smp_reason_caption`) become the rationale of the CoT target (`--reasoning`: fine first, the
default; coarse first; both); the transcript becomes `text`. A clip with no caption stays
label-only. An emotion outside the nine MERR labels (or `--labels_allowed`) and a clip listed
twice are errors naming the file and line. Prints the label set and the `--options` to train with.

Example:
  python scripts/import_merr.py --labels MERR_fine_grained.txt --split_fraction val=0.1,test=0.1 \
      --coarse MERR_coarse_grained.json --fine MERR_fine_grained.json \
      --transcripts transcription_en_all.csv --out annotations.json
"""
from __future__ import annotations

import argparse
import shlex
import sys

from minigpt4.common.atomic_io import atomic_write_json
from minigpt4.datasets.annotations import SPLIT_ORDER, AnnotationError, load_annotations
from minigpt4.datasets.importers import merr_annotations as merr
from minigpt4.datasets.importers.sources import SourceError, read_transcripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", nargs="+", required=True, metavar="FILE[:SPLIT]",
                   help="'name frames emotion' lists; SPLIT defaults to train")
    p.add_argument("--split_fraction", help="e.g. val=0.1,test=0.1: share of the train clips moved to each split")
    p.add_argument("--seed", type=int, default=0, help="seed of the --split_fraction draw")
    p.add_argument("--coarse", help="MERR_coarse_grained.json (per clip a 'caption')")
    p.add_argument("--fine", help="MERR_fine_grained.json (per clip a 'smp_reason_caption')")
    p.add_argument("--reasoning", choices=merr.REASONING_MODES, default="fine",
                   help="the rationale: fine reasoning else coarse caption (fine), the reverse (coarse), or both")
    p.add_argument("--transcripts", help="CSV with 'name' and a sentence column: each clip's 'text'")
    p.add_argument("--transcript_column", help="the CSV's sentence column (default: the first of sentence, "
                                                "sentence_en, english, chinese)")
    p.add_argument("--labels_allowed", help="comma-separated label set (default: the nine MERR labels)")
    p.add_argument("--priors_as_evidence", action="store_true",
                   help="use the JSONs' visual_prior_list / audio_prior_list as golden visual / audio evidence")
    p.add_argument("--out", required=True, help="annotations JSON to write (atomically)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """(records, label set); raises SourceError / ValueError on bad input."""
    allowed = ([s.strip().lower() for s in args.labels_allowed.split(",") if s.strip()]
               if args.labels_allowed else list(merr.MERR_LABELS))
    fractions = merr.parse_fractions(args.split_fraction) if args.split_fraction else None
    lines = []
    for item in args.labels:
        path, split = merr.parse_labels_arg(item)
        lines.extend(merr.read_label_list(path, split, allowed))
    if not lines:
        raise ValueError(f"no clips in {', '.join(args.labels)}")
    coarse = (args.coarse, merr.read_merr_json(args.coarse)) if args.coarse else None
    fine = (args.fine, merr.read_merr_json(args.fine)) if args.fine else None
    transcripts = read_transcripts(args.transcripts, args.transcript_column) if args.transcripts else None
    records = merr.build_records(lines, coarse, fine, transcripts, args.reasoning, args.priors_as_evidence)
    if fractions:
        merr.carve_splits(records, fractions, args.seed)
    return records, merr.label_set(records, allowed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        records, labels = run(args)
        atomic_write_json(args.out, records)
        load_annotations(args.out, splits=None)  # the written file loads with HERO's own loader
    except (SourceError, AnnotationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = merr.split_counts(records)
    print(f"wrote {len(records)} clips to {args.out}: "
          + " | ".join(f"{s} {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in c.items())})"
                       for s, c in counts.items()))
    n_why = sum("reasoning" in r for r in records)
    n_text = sum("text" in r for r in records)
    n_ev = sum("evidence" in r for r in records)
    print(f"{n_why} with a rationale, {len(records) - n_why} label-only; {n_text} with a transcript; "
          f"{n_ev} with evidence sentences")
    print(f"label set ({len(labels)}): {', '.join(labels)}")
    others = [s for s in counts if s not in SPLIT_ORDER]
    if others:
        print(f"note: split(s) {others} are not train/val/test: list them in datasets.hero_dataset.splits")
    print("train with: --options " + shlex.join(merr.train_options(labels, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
