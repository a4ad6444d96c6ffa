"""Evaluate a trained HERO model: CoT reports for a split, scores, plots, robustness to missing senses.

    hero-eval --cfg-path CFG --ckpt CKPT [--split test] [--out DIR] [--options k=v ...]
        [--missing MOD[,MOD]] [--no_cot] [--use_cls_head] [--batch_size N]
        [--max_new_tokens N] [--num_beams N] [--calibrate [SPLIT]]

(the same as `python eval_hero.py ...`). `CKPT` is a checkpoint folder, a `.safetensors` file
or a run folder (its best checkpoint by validation, as `checkpoints/best.json` records it; the
latest when there is none).
DDP: `torchrun --nproc_per_node N eval_hero.py ...`: rank r evaluates clips r, r+N, ...; rank 0
gathers every prediction (each clip exactly once) and writes, into DIR (default
`<run_dir>/eval_<split>[_missing-<mods>][_nocot|_clshead]/`):

- `predictions.jsonl`: one line per clip (video_id, gold and predicted emotion, confidence,
  raw report, evidence sentences, modality weights, synergy score, parse error);
- `metrics.json`: accuracy, weighted_f1, macro_f1, uar, war, per-class precision/recall,
  confusion matrix, format_compliance, mean modality weights per gold class;
- `confusion_matrix.png`, `modality_weights.png`.

`--missing audio[,text]` evaluates every clip twice, as it is and with those modalities removed
(zeros with both masks False, through the dataset's `drop_modalities`), writes the removed
run as above plus `predictions_full.jsonl` / `*_full.png` for the reference run, and puts the
reference metrics under `full` and the difference (full - removed) under `drop`.
`--calibrate [val]` fits a temperature for the classification head's confidence on that split
(minigpt4/evaluation/temperature.py; the head only, no generation), evaluates with it (the
predictions are unchanged, their confidences scaled), records it under `temperature` with the
calibration before scaling under `calibration_uncalibrated`, and writes it to
`<run_dir>/calibration.json`, which hero-infer and hero-app then apply to that checkpoint.
Without it, the temperature the run's calibration.json holds for the checkpoint (training writes
one for every new best checkpoint, `run.calibrate`) is applied and recorded the same way, unless
`--no_calibration` or the file was fitted on the split being scored.
A run finished by `hero-finish-evidence` is evaluated with that decoder (recorded under
`evidence_finish`); `--no_finished_decoder` uses the checkpoint's own.
`--content_probe [topic]` adds STMIL's disentanglement read-out to metrics.json: linear probes
of the annotations' content label (default field `topic`) and of the emotion from the audio
expert's summaries, fitted on the train split (minigpt4/evaluation/content_probe.py).
`--no_cot` asks for the label only; `--use_cls_head` reads the prediction from the model's
classification head (no LLM generation; needs a model trained with `model.use_cls_head: true`).

Set-up (config -> task -> datasets -> model) is `minigpt4.runners.components.build_components`,
the same as training's; predicting is `eval_predict`, writing `eval_report`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from minigpt4.cli.eval_predict import EvalError, build_eval_dataset, classify_batch, predict_shard, split_annotations
from minigpt4.cli.eval_report import is_eval_output, write_outputs
from minigpt4.common import cot
from minigpt4.common.atomic_io import check_replaceable_dir
from minigpt4.common.config import add_config_args, load_config
from minigpt4.common.modalities import STACK_ORDER

__all__ = ["EvalError", "build_eval_dataset", "classify_batch", "evaluate", "main", "parse_args", "predict_shard",
           "run", "write_outputs"]

logger = logging.getLogger(__name__)

DEFAULT_COT_TOKENS = cot.REPORT_TOKENS
DEFAULT_LABEL_TOKENS = 32


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate a HERO checkpoint on a split: predictions.jsonl, metrics.json and plots.")
    add_config_args(parser)
    parser.add_argument("--ckpt", required=True,
                        help="checkpoint folder, model .safetensors file, or run folder (its best checkpoint by "
                             "validation, else its latest)")
    parser.add_argument("--split", default="test", help="dataset split to evaluate (default: test)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <run_dir>/eval_<split>, with a suffix for "
                             "--missing/--no_cot/--use_cls_head/--no_brief)")
    parser.add_argument("--missing", default=None, metavar="MOD[,MOD]",
                        help=f"also evaluate with these modalities removed ({', '.join(STACK_ORDER)}) and "
                             "report the drop")
    parser.add_argument("--no_cot", action="store_true", help="label-only instruction instead of the CoT report")
    parser.add_argument("--use_cls_head", action="store_true",
                        help="predict with the model's classification head instead of parsing a report")
    parser.add_argument("--no_brief", action="store_true",
                        help="leave the evidence brief out of the prompt: the LLM reads only the integrated "
                             "video context and the instruction (what the context alone carries)")
    parser.add_argument("--allow_config_drift", action="store_true",
                        help="evaluate even if the config's model section differs from the run's config.yaml "
                             "(a warning instead of an error)")
    parser.add_argument("--calibrate", nargs="?", const="val", default=None, metavar="SPLIT",
                        help="fit a temperature for the head's confidence on SPLIT (default: val) first, evaluate "
                             "with it and save it as <run_dir>/calibration.json for hero-infer / hero-app")
    parser.add_argument("--no_calibration", action="store_true",
                        help="report the head's confidence as trained, ignoring the temperature the run's "
                             "calibration.json holds for this checkpoint (output folder suffix _uncalibrated)")
    parser.add_argument("--no_finished_decoder", action="store_true",
                        help="write the evidence with the checkpoint's own decoder, not the one hero-finish-evidence "
                             "finished for it (output folder suffix _unfinished)")
    parser.add_argument("--content_probe", nargs="?", const="topic", default=None, metavar="FIELD",
                        help="also fit linear probes of the annotation field FIELD (default: topic) and of the "
                             "emotion on the audio expert's summaries (train split) and score them on this split")
    parser.add_argument("--batch_size", type=int, default=None, help="clips per batch (default: run.batch_size_eval)")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help=f"generation budget (default: {DEFAULT_COT_TOKENS} with CoT, "
                             f"{DEFAULT_LABEL_TOKENS} with --no_cot)")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width (default: 1, greedy)")
    args = parser.parse_args(argv)
    args.command = list(sys.argv[1:] if argv is None else argv)  # recorded in metrics.json
    if args.no_cot and args.use_cls_head:
        parser.error("--no_cot and --use_cls_head exclude each other (the classification head writes no text)")
    if args.no_brief and args.use_cls_head:
        parser.error("--no_brief and --use_cls_head exclude each other (the classification head reads no prompt)")
    if args.calibrate is not None and args.no_calibration:
        parser.error("--calibrate and --no_calibration exclude each other")
    if args.calibrate is not None and args.calibrate == args.split:
        parser.error(f"--calibrate {args.calibrate}: fit the temperature on another split than the one you "
                     "score (e.g. --calibrate val --split test)")
    for name in ("batch_size", "max_new_tokens", "num_beams"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    return args


def evaluate(args: argparse.Namespace, cfg: Any, dist_info: Any) -> Optional[dict[str, Any]]:
    """Run the evaluation; returns metrics.json's content on rank 0 (None on other ranks)."""
    import torch

    from minigpt4.common import checkpoint as ckpt_api
    from minigpt4.common.dist_utils import barrier
    from minigpt4.evaluation.faithfulness import annotated_rationale_grounding
    from minigpt4.evaluation.records import (
        default_out_dir, gather_records, iter_batches_with_progress, parse_modalities, run_dir_of)
    from minigpt4.evaluation.temperature import TemperatureFit, load_calibration, save_calibration
    from minigpt4.runners.components import ConfigDriftError, build_components, check_config_drift, load_weights
    from minigpt4.runners.runner_base import resolve_amp, sharded_loader

    t0 = time.time()
    missing = parse_modalities(args.missing, STACK_ORDER)
    ckpt_path = ckpt_api.resolve_checkpoint(args.ckpt, prefer_best=True)
    calibrate = getattr(args, "calibrate", None)
    out_dir = Path(args.out) if args.out else default_out_dir(args.ckpt, args.split, missing, args.no_cot,
                                                             args.use_cls_head, args.no_brief, calibrate is not None,
                                                             args.no_finished_decoder, args.no_calibration)
    check_replaceable_dir(out_dir, is_eval_output)  # fail now, not after the predictions
    probe_field = getattr(args, "content_probe", None)
    parts = build_components(cfg, splits=[args.split] + ([calibrate] if calibrate else [])
                             + (["train"] if probe_field and args.split != "train" else []))
    dataset, expected_ids, data_labels = build_eval_dataset(parts.datasets, args.split)
    model = parts.model
    model_labels = [str(l) for l in getattr(model, "label_names", data_labels)]
    labels = data_labels or model_labels
    if [l.lower() for l in model_labels] != [l.lower() for l in labels]:
        raise EvalError(f"model.label_names {model_labels} differ from the dataset's label_names {labels}; "
                        "set both to the same list in the config")
    has_head = getattr(getattr(model, "evidence_stack", None), "use_cls_head", False)
    if calibrate and not has_head:
        raise EvalError(f"--calibrate scales the classification head's confidence, and the model built from "
                        f"{args.cfg_path} has none (model.use_cls_head is false)")
    if args.use_cls_head and not has_head:
        raise EvalError(f"--use_cls_head: the model built from {args.cfg_path} has no classification head "
                        "(model.use_cls_head is false); evaluate the reports instead, or train with "
                        "model.use_cls_head=true")
    if not args.use_cls_head and not getattr(model, "can_generate", True):
        raise EvalError(f"the model built from {args.cfg_path} is an observation pre-training run "
                        "(model.train_stage: observation): its LLM was never trained and writes no reports; "
                        "evaluate its classification head with --use_cls_head")
    loaded = load_weights(model, ckpt_path, cfg, str(args.cfg_path), finished_decoder=not args.no_finished_decoder)
    try:
        check_config_drift(ckpt_path, cfg, str(args.cfg_path))
    except ConfigDriftError as exc:
        if not args.allow_config_drift:
            raise
        logger.warning("--allow_config_drift: %s", exc)
    device = dist_info.device
    model.to(device).eval()
    amp_dtype, _ = resolve_amp(cfg.run.get("amp", "auto"), device)

    def autocast() -> Any:
        return torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else \
            torch.autocast(device_type=device.type, enabled=False)

    use_cot = not args.no_cot
    batch_size = int(args.batch_size or cfg.run.batch_size_eval)
    gen_kwargs = {"max_new_tokens": int(args.max_new_tokens or (DEFAULT_COT_TOKENS if use_cot else DEFAULT_LABEL_TOKENS)),
                  "num_beams": int(args.num_beams)}
    loader = sharded_loader(dataset, batch_size, int(cfg.run.get("num_workers") or 0), dist_info.rank,
                            dist_info.world_size, device.type == "cuda", int(cfg.run.seed))
    total = len(loader) if expected_ids is not None else None
    is_main = dist_info.rank == 0
    temperature = None
    if calibrate:
        temperature = fit_head_temperature(model, parts.datasets, calibrate, labels, batch_size, cfg, dist_info,
                                           autocast, device)
        model.head_temperature = temperature["temperature"]
        if is_main:
            path = save_calibration(run_dir_of(ckpt_path), TemperatureFit(**{k: temperature[k] for k in (
                "temperature", "n", "nll_before", "nll_after")}), ckpt_path, calibrate)
            logger.info("head temperature %.4f fitted on %d %s clips (NLL %.4f -> %.4f), saved to %s",
                        temperature["temperature"], temperature["n"], calibrate, temperature["nll_before"],
                        temperature["nll_after"], path)
    elif not args.no_calibration and has_head:
        temperature = temperature_from_record(load_calibration(run_dir_of(ckpt_path), ckpt_path), args.split)
        if temperature is not None:
            model.head_temperature = temperature["temperature"]
    logger.info("evaluating %s (%s) on split %r: %s clips, %d rank(s), batch %d, %s", ckpt_path, loaded, args.split,
                len(expected_ids) if expected_ids is not None else "streamed", dist_info.world_size, batch_size,
                "classification head" if args.use_cls_head else f"reports ({'CoT' if use_cot else 'label only'})")
    batches = iter_batches_with_progress(loader, total, is_main and bool(cfg.run.get("progress_bar", True)),
                                         f"eval {args.split}")
    brief = False if args.no_brief else None
    t_predict = time.time()
    records = predict_shard(model, batches, labels, missing, args.use_cls_head, use_cot, gen_kwargs, autocast,
                            brief=brief, device=device)
    predict_seconds = time.time() - t_predict
    gathered = {cond: gather_records(recs) for cond, recs in records.items()}
    probe = None
    if probe_field and is_main:
        probe = run_content_probe(model, parts.datasets, args.split, probe_field, batch_size, cfg, autocast)
    result = None
    if is_main:
        result = write_outputs(out_dir, gathered, expected_ids, labels, missing, {
            "split": args.split, "checkpoint": str(ckpt_path), "config": str(args.cfg_path),
            "command": getattr(args, "command", None),  # the arguments that produced this folder
            "world_size": dist_info.world_size, "prediction_source": "cls_head" if args.use_cls_head else "report",
            "use_cot": None if args.use_cls_head else use_cot,
            # was the evidence brief in the prompt: false with --no_brief, else as the model is configured
            "brief": None if args.use_cls_head else (brief if brief is not None else (
                None if getattr(model, "brief_source", None) is None else model.brief_source != "none")),
            "generation": None if args.use_cls_head else gen_kwargs,
            "batch_size": batch_size,
            "predict_seconds": round(predict_seconds, 3),  # the model's part (rank 0), set-up and scoring aside
            "temperature": temperature,  # None: the head's confidence as trained
            # the hero-finish-evidence decoder used for the evidence (its numbers), None: the checkpoint's own
            "evidence_finish": getattr(model, "evidence_finish", None),
            "content_probe": probe,  # --content_probe: the audio expert's content and emotion probes
        }, t0, grounding_reference=None if args.use_cls_head
            else annotated_rationale_grounding(split_annotations(dataset)))
    barrier()
    return result


def run_content_probe(model: Any, datasets: Any, split: str, field: str, batch_size: int, cfg: Any,
                      autocast: Any) -> dict[str, Any]:
    """`content_probe` of metrics.json (rank 0 alone: the probe reads whole splits). The train split
    is read without its training-time modality dropout."""
    from minigpt4.datasets.datasets import without_training_dropout
    from minigpt4.evaluation.content_probe import content_labels, content_probe
    from minigpt4.runners.runner_base import sharded_loader

    train, _, _ = build_eval_dataset(datasets, "train")
    test, _, _ = build_eval_dataset(datasets, split)
    parts = [d for ds in (train, test) for d in getattr(ds, "datasets", [ds])]
    with without_training_dropout(train, test):
        loaders = [sharded_loader(ds, batch_size, int(cfg.run.get("num_workers") or 0), 0, 1, False, int(cfg.run.seed))
                   for ds in (train, test)]
        result = content_probe(model, loaders[0], loaders[1], content_labels(parts, field), autocast, field)
    audio = result["audio"]
    logger.info("content probe (%s) on the audio expert: %.3f (chance %.3f), emotion %.3f; text expert %s",
                field, audio["content_accuracy"], audio["content_chance"], audio["emotion_accuracy"] or float("nan"),
                result["text"]["content_accuracy"])
    return result


def temperature_from_record(record: Optional[dict[str, Any]], split: str) -> Optional[dict[str, Any]]:
    """metrics.json's `temperature` from the run's calibration.json record for this checkpoint (its
    `source`: the file), or None: no record, or one fitted on the very split being scored (scaling
    a split by a temperature fitted on it would flatter its calibration)."""
    if record is None:
        return None
    fitted_on = str(record.get("fitted_on_split", ""))
    if split in fitted_on.split("+"):
        logger.info("calibration.json was fitted on split %r, the one scored: the head's confidence is "
                    "reported as trained", fitted_on)
        return None
    logger.info("head confidence at temperature %.4f (calibration.json, fitted on %s; --no_calibration: as "
                "trained)", record["temperature"], fitted_on or "?")
    return {"temperature": float(record["temperature"]), "n": record.get("n"), "nll_before": record.get("nll_before"),
            "nll_after": record.get("nll_after"), "fitted_on_split": fitted_on or None, "source": "calibration.json"}


def fit_head_temperature(model: Any, datasets: Any, split: str, labels: Sequence[str], batch_size: int, cfg: Any,
                         dist_info: Any, autocast: Any, device: Any) -> dict[str, Any]:
    """Fit the head's temperature on `split` (every rank predicts its shard; rank 0 fits; all get it).

    Returns {"temperature", "n", "nll_before", "nll_after", "fitted_on_split"}.
    """
    import torch.distributed as dist

    from minigpt4.evaluation.records import gather_records, merge_records
    from minigpt4.evaluation.temperature import fit_from_records
    from minigpt4.runners.runner_base import sharded_loader

    dataset, ids, _ = build_eval_dataset(datasets, split)
    loader = sharded_loader(dataset, batch_size, int(cfg.run.get("num_workers") or 0), dist_info.rank,
                            dist_info.world_size, device.type == "cuda", int(cfg.run.seed))
    saved = getattr(model, "head_temperature", 1.0)
    model.head_temperature = 1.0  # fitted on the head as trained
    try:
        recs = predict_shard(model, loader, labels, use_cls_head=True, autocast=autocast, device=device)["full"]
    finally:
        model.head_temperature = saved
    per_rank = gather_records(recs)
    box: list[Any] = [None]
    if dist_info.rank == 0:
        fit = fit_from_records(merge_records(per_rank, ids)[0], labels)
        box = [{"temperature": fit.temperature, "n": fit.n, "nll_before": fit.nll_before,
                "nll_after": fit.nll_after, "fitted_on_split": split, "source": "--calibrate"}]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def run(argv: Optional[Sequence[str]] = None) -> Optional[dict[str, Any]]:
    """Evaluate as the command line says; returns metrics.json's content on rank 0 (errors raise)."""
    args = parse_args(argv)
    from minigpt4.evaluation.records import parse_modalities

    parse_modalities(args.missing, STACK_ORDER)  # fail before anything is loaded
    cfg = load_config(args.cfg_path, args.options)

    from minigpt4.common.dist_utils import destroy_distributed, init_distributed_mode
    from minigpt4.common.logger import setup_logging

    dist_info = init_distributed_mode(cfg.run.device)
    setup_logging(dist_info.rank)
    try:
        return evaluate(args, cfg, dist_info)
    finally:
        destroy_distributed()


def _known_errors() -> tuple[type, ...]:
    """Errors that describe bad input (shown as one line, no traceback)."""
    from minigpt4.common.checkpoint import CheckpointMismatchError
    from minigpt4.common.config import ConfigError
    from minigpt4.evaluation.records import GatherError

    return (CheckpointMismatchError, ConfigError, GatherError, EvalError, FileNotFoundError, ValueError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (`hero-eval`): 0 on success, 1 with a one-line error for bad input."""
    try:
        run(argv)
    except Exception as exc:  # imports stay lazy: --help must not load torch
        if not isinstance(exc, _known_errors()):
            raise
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
