#!/usr/bin/env python
"""Import Emotion-LLaMA's pre-extracted features (a folder of `<clip>.npy` per encoder) as HERO
feature files (`<out>/<clip>.npz`, one per clip, every modality in it).

Each `--map FOLDER=MODALITY[:KEY]` feeds one HERO modality (motion, audio, au, text, visual);
KEY is the name the array gets in the file (default: the known folder's, else HERO's key for
the modality). Without `--map`, the known folders found under `--root` are used:
HL-UTT -> audio (hubert), maeV_399_UTT -> motion (videomae), mae_340_UTT -> visual (facemae),
and their MER2024 names (HL_23_UTT, maeVideo_399_23_UTT, mae_340_23_UTT).

A clip missing from a folder is written without that modality (never zero-filled); a file that
cannot be used is reported and its clip skipped, and the exit status is then 1. Writes
`<out>/import_report.json` (per folder: clips, width, missing clips) and prints the `--options`
that train on the result.

Example:
  python scripts/import_emotion_llama_features.py --root MER2023 --map HL-UTT=audio \
      --map maeV_399_UTT=motion --map mae_340_UTT=visual \
      --transcripts MER2023/transcription_en_all.csv --out features
"""
from __future__ import annotations

import argparse
import shlex
import sys

from tqdm import tqdm

from minigpt4.datasets.importers.emotion_llama_features import (
    REPORT_NAME,
    ImportReport,
    default_maps,
    import_features,
    parse_maps,
)
from minigpt4.datasets.importers.sources import SourceError, read_transcripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", action="append", default=[], metavar="FOLDER=MODALITY[:KEY]",
                   help="an input folder and the HERO modality it feeds (repeat per folder)")
    p.add_argument("--root", default=".", help="folder the --map folders are in (default: the current one)")
    p.add_argument("--out", required=True, help="folder for the <clip>.npz feature files")
    p.add_argument("--transcripts", help="CSV with 'name' and a sentence column: stored as each file's transcript")
    p.add_argument("--transcript_column", help="the CSV's sentence column (default: sentence, sentence_en, "
                                                "english, chinese: the first present)")
    return p.parse_args(argv)


def summary_line(report: ImportReport, out: str) -> str:
    """One line: clips written, and per folder its modality, key, width, clips and missing ones."""
    parts = []
    for f in report.folders:
        extra = [f"{len(f.missing)} missing"] if f.missing else []
        extra += [f"{f.broken} broken"] if f.broken else []
        parts.append(f"{f.folder} -> {f.modality} ({f.key}, dim {f.dim}) {f.count}"
                     + (f" ({', '.join(extra)})" if extra else ""))
    failed = f"; {report.failed} clip(s) skipped (see above)" if report.failed else ""
    return (f"imported {report.written} of {report.clips} clips -> {out}: {' | '.join(parts)}{failed}; "
            f"report {out}/{REPORT_NAME}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        maps = parse_maps(args.map, args.root) if args.map else default_maps(args.root)
        transcripts = read_transcripts(args.transcripts, args.transcript_column) if args.transcripts else None
    except (ValueError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not maps:
        print(f"error: no --map given and no known Emotion-LLaMA folder under {args.root!r}", file=sys.stderr)
        return 2
    report = import_features(maps, args.out, transcripts,
                             on_error=lambda msg: tqdm.write(f"error: {msg}", file=sys.stderr))
    if report.clips == 0:
        print(f"error: no .npy files in {', '.join(str(m.folder) for m in maps)}", file=sys.stderr)
        return 2
    print(summary_line(report, args.out))
    if report.transcripts is not None:
        t = report.transcripts
        print(f"transcripts ({t['column']}): {t['clips_with']} clips with one, {t['clips_without']} without, "
              f"{t['rows_without_features']} rows for clips with no features")
    print("train HERO on it: python train_hero.py --cfg-path configs/models/hero_paper.yaml --options "
          + shlex.join(report.train_options))
    print("  plus the label set and annotations options scripts/import_merr.py prints")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
