#!/usr/bin/env python
"""Per-expert evidence accuracy of a demo evaluation by *state*, beside the ceiling the demo's
frames allow (minigpt4/synthetic/demo_evidence_oracle.py).

hero-eval's exact match undercounts on the demo: it picks one of two paraphrases per state at
random for audio, visual and text. This script scores each predicted sentence by the state it
names, on the clips that have a golden sentence, and reads the same clips' states back from
their feature files with an oracle that knows the generator but not the noise. `--learned N`
adds what a small reader trained directly on the training clips' states reads on the same clips
(minigpt4/synthetic/demo_evidence_learned.py; mean over N seeds; a few minutes on a CPU).

Usage:
  python scripts/demo_evidence_states.py --data demo/data --predictions RUN/eval_test/predictions.jsonl [--learned 3]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo/data", help="the demo folder (latents.json, features/)")
    p.add_argument("--predictions", required=True, help="a hero-eval predictions.jsonl on that demo")
    p.add_argument("--learned", type=int, default=0, metavar="N",
                   help="also train the supervised state reader with N seeds and print its accuracy (0: off)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from minigpt4.common.modalities import EXPERT_ORDER
    from minigpt4.datasets.feature_io import find_feature_file, read_features
    from minigpt4.synthetic.demo import make_encoders
    from minigpt4.synthetic.demo_cues import load_latents
    from minigpt4.synthetic.demo_evidence_oracle import evidence_state, oracle_states

    data = Path(args.data)
    cues = {c.video_id: c for c in load_latents(data / "latents.json")}
    enc = make_encoders()
    counts = {name: [0, 0, 0, 0] for name in EXPERT_ORDER}  # n, exact, state, oracle
    golden: dict[str, dict[str, str]] = {name: {} for name in EXPERT_ORDER}  # expert -> video id -> state
    with open(args.predictions, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    for rec in records:
        vid = rec["video_id"]
        if vid not in cues:
            print(f"{args.predictions}: {vid} is not a clip of {data / 'latents.json'}", file=sys.stderr)
            return 2
        path = find_feature_file(data / "features", vid)
        oracle = oracle_states(cues[vid], read_features(path).arrays, enc)
        for name, gold in (rec.get("golden_evidence") or {}).items():
            if name not in counts:
                continue
            said = (rec.get("evidence") or {}).get(name)
            c = counts[name]
            c[0] += 1
            c[1] += said is not None and " ".join(said.split()) == " ".join(gold.split())
            golden[name][vid] = state = evidence_state(name, gold)
            c[2] += evidence_state(name, said) == state
            c[3] += oracle.get(name) == state
    learned = {name: _learned_accuracy(data, name, golden[name], args.learned) for name in EXPERT_ORDER
               if golden[name] and args.learned > 0}
    header = f"{'expert':8s} {'clips':>5s} {'exact':>6s} {'state':>6s} {'oracle':>6s}"
    print(header + (f" {'learned':>7s}" if learned else ""))
    for name, (n, exact, state, orc) in counts.items():
        if n:
            tail = f" {learned[name]:7.3f}" if name in learned else ""
            print(f"{name:8s} {n:5d} {exact / n:6.3f} {state / n:6.3f} {orc / n:6.3f}{tail}")
    return 0


def _learned_accuracy(data: Path, expert: str, golden: dict[str, str], seeds: int) -> float:
    """Mean accuracy over `seeds` seeds of the supervised reader on the clips of `golden` (video id -> state)."""
    from minigpt4.synthetic.demo_evidence_learned import learned_states

    clips = sorted(golden)
    hits = []
    for seed in range(seeds):
        read = learned_states(data, expert, clips, seed)
        hits.append(sum(read.get(v) == golden[v] for v in clips) / len(clips))
    return sum(hits) / len(hits)


if __name__ == "__main__":
    sys.exit(main())
