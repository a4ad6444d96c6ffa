#!/usr/bin/env python
"""How much of each hidden cue of a synthetic corpus a trained run's experts carry (ridge R^2 on
their summaries, beside the same regression on the frames' pooled [mean, std, slope]).

A cue the frames carry but the summary does not is lost in the expert's frame-level extraction
(minigpt4/evaluation/cue_probe.py). Needs the corpus's latents.json (make_demo_data.py and
make_shift_data.py write it).

With --worth it also prices each expert's reading (minigpt4/evaluation/cue_worth.py): the accuracy
of a logistic regression on the generator's noise-free cues (what its oracle reads) with that
modality's cues replaced by a read-out of the expert's summary, beside it without that modality.
With --frame as well, the cues priced are the frame oracle's reads of the clip's files (what knowing
the generator reads back through the noise, minigpt4/synthetic/frame_oracle.py) instead of the
noise-free values: what each expert loses against what is reachable.

Usage:
  python scripts/cue_probe.py --run output/hero_pretrain --data demo/data [--split test] [--worth [--frame]]
                               [--out cues.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a training run folder (its config.yaml and checkpoints)")
    p.add_argument("--data", required=True, help="the corpus folder (latents.json, features/)")
    p.add_argument("--split", default="test", help="the split the probes are scored on (fitted on train)")
    p.add_argument("--worth", action="store_true",
                   help="also price each expert's reading on the generator's noise-free cues (demo and shift corpora)")
    p.add_argument("--frame", action="store_true",
                   help="with --worth: price against the frame oracle's reads of the files, not the noise-free cues")
    p.add_argument("--out", default=None,
                   help="also write the result as JSON here (with --worth: {\"cues\": ..., \"worth\": ...})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from omegaconf import OmegaConf

    from minigpt4.common import checkpoint as ckpt_api
    from minigpt4.common.atomic_io import atomic_write_json
    from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS
    from minigpt4.cli.eval_predict import build_eval_dataset
    from minigpt4.datasets.datasets import without_training_dropout
    from minigpt4.datasets.feature_io import find_feature_file, read_features
    from minigpt4.evaluation.content_probe import expert_summaries
    from minigpt4.evaluation.cue_probe import CueProbeError, format_table, probe_cues, read_latents
    from minigpt4.evaluation.cue_worth import FRAME_VIEW, NOISE_FREE_VIEW, format_worth_table
    from minigpt4.runners.components import build_components, load_weights
    from minigpt4.runners.runner_base import sharded_loader

    run, data = Path(args.run), Path(args.data)
    try:
        records = read_latents(data / "latents.json")
    except CueProbeError as exc:
        print(f"cue_probe: {exc}", file=sys.stderr)
        return 2
    if args.frame and not args.worth:
        print("cue_probe: --frame prices the readings, so it needs --worth", file=sys.stderr)
        return 2
    oracle = generator_oracle(data) if args.worth else None
    if args.worth and oracle is None:
        print(f"cue_probe: {data}: no demo or shift manifest, so no generator oracle to price the readings",
              file=sys.stderr)
        return 2
    cfg = OmegaConf.load(run / "config.yaml")
    parts = build_components(cfg, splits=["train", args.split])
    model = parts.model
    load_weights(model, ckpt_api.resolve_checkpoint(run, prefer_best=True), cfg, str(run / "config.yaml"))
    summaries = {}
    for split in ("train", args.split):
        dataset, _, _ = build_eval_dataset(parts.datasets, split)
        with without_training_dropout(dataset):
            loader = sharded_loader(dataset, int(cfg.run.get("batch_size_eval", 16)), 0, 0, 1, False, int(cfg.run.seed))
            summaries.update(expert_summaries(model, loader, torch.no_grad))
    keys = {**DEFAULT_FEATURE_KEYS, **dict(cfg.datasets.hero_dataset.get("feature_keys") or {})}

    def frames(video_id: str, modality: str):
        path = find_feature_file(data / "features", video_id)
        return None if path is None else read_features(path).arrays.get(str(keys[modality]))

    try:
        result = probe_cues(records, summaries, "train", args.split, frames)
    except CueProbeError as exc:
        print(f"cue_probe: {data / 'latents.json'}: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if oracle is not None:
        try:
            worth = price_readings(data / "latents.json", records, oracle, summaries, args.split,
                                   frame_reader(data) if args.frame else None)
        except CueProbeError as exc:
            print(f"cue_probe: {exc}", file=sys.stderr)
            return 2
        print(format_worth_table(worth, oracle[2], FRAME_VIEW if args.frame else NOISE_FREE_VIEW))
        result = {"cues": result, "worth": worth}
    if args.out:
        atomic_write_json(args.out, result)
    return 0


Oracle = tuple[Callable[[dict], Any], Callable[[Any], Any], dict[str, slice]]


def generator_modules(data: Path) -> Optional[tuple[Any, Any, Any]]:
    """(clip record class, oracles module, frame oracle module) of the generator that wrote `data`, by
    its manifest; None if neither."""
    from minigpt4.synthetic import (
        demo,
        demo_cues,
        demo_frame_oracle,
        demo_oracles,
        shift,
        shift_cues,
        shift_frame_oracle,
        shift_oracles,
    )

    for generator, modules in ((demo, (demo_cues.ClipCues, demo_oracles, demo_frame_oracle)),
                               (shift, (shift_cues.ShiftCues, shift_oracles, shift_frame_oracle))):
        if (data / generator.MANIFEST).is_file():
            return modules
    return None


def generator_oracle(data: Path) -> Optional[Oracle]:
    """(its clip record's from_json, cue_vector, CUE_BLOCKS) of the generator that wrote `data`, by its
    manifest; None if neither."""
    modules = generator_modules(data)
    if modules is None:
        return None
    record, oracles, _ = modules
    return record.from_json, oracles.cue_vector, oracles.CUE_BLOCKS


def frame_reader(data: Path) -> Callable[[Any], Any]:
    """clip record -> its cue vector read back from its feature file by the generator's frame oracle
    (the same layout as the generator's cue_vector, so the same CUE_BLOCKS price it)."""
    from minigpt4.synthetic.frame_oracle import read_clip

    modules = generator_modules(data)
    if modules is None:
        raise ValueError(f"{data}: no demo or shift manifest, so no frame oracle to read the clips with")
    frame_oracle = modules[2]
    return lambda clip: read_clip(data / "features", clip, frame_oracle.read_cue_vector)


def price_readings(path: Path, records: list[dict], oracle: Oracle, summaries: dict,
                   split: str, vector: Optional[Callable[[Any], Any]] = None) -> dict[str, Optional[float]]:
    """`cue_worth.modality_worth` on the clips of train and `split` that have both latents (`records`,
    already read from `path`) and summaries; `vector` (clip -> cue vector) replaces the generator's
    noise-free cue_vector (--frame: `frame_reader`)."""
    import numpy as np

    from minigpt4.common.modalities import EXPERT_ORDER
    from minigpt4.evaluation.cue_probe import CueProbeError
    from minigpt4.evaluation.cue_worth import modality_worth

    from_json, cue_vector, blocks = oracle
    try:
        typed = [from_json(r) for r in records]
    except (KeyError, TypeError, ValueError) as exc:
        raise CueProbeError(f"{path}: not the latents its generator's manifest says ({exc!r})") from exc
    cues, labels, summ, present = {}, {}, {}, {}
    for name in ("train", split):
        clips = [c for c in typed if c.split == name and c.video_id in summaries]
        if not clips:
            raise CueProbeError(f"{path}: no {name} clip has both latents and an expert summary")
        try:
            cues[name] = np.stack([(vector or cue_vector)(c) for c in clips])
        except (FileNotFoundError, ValueError) as exc:
            raise CueProbeError(f"{path}: cannot read the clips' cues from their files ({exc})") from exc
        labels[name] = np.array([c.emotion for c in clips])
        summ[name] = {m: np.stack([summaries[c.video_id][0][EXPERT_ORDER.index(m)] for c in clips]) for m in blocks}
        present[name] = {m: np.array([bool(summaries[c.video_id][1][EXPERT_ORDER.index(m)]) for c in clips])
                         for m in blocks}
    return modality_worth(cues, labels, summ, present, blocks, "train", split)


if __name__ == "__main__":
    sys.exit(main())
