"""Evaluate a trained HERO model: CoT reports for a split, scores, plots, robustness to missing senses.

    python eval_hero.py --cfg-path CFG --ckpt CKPT [--split test] [--out DIR] [--options k=v ...]
        [--missing MOD[,MOD]] [--no_cot] [--use_cls_head] [--batch_size N]
        [--max_new_tokens N] [--num_beams N]

`CKPT` is a checkpoint folder, a `.safetensors` file or a run folder (its best checkpoint by
validation, as `checkpoints/best.json` records it; the latest when there is none).
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
`--no_cot` asks for the label only; `--use_cls_head` reads the prediction from the model's
classification head (no LLM generation; needs a model trained with `model.use_cls_head: true`).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from minigpt4.common.config import add_config_args, load_config
from minigpt4.common.modalities import EXPERT_ORDER, STACK_ORDER

logger = logging.getLogger("eval_hero")

DEFAULT_COT_TOKENS = 300
DEFAULT_LABEL_TOKENS = 32


class EvalError(RuntimeError):
    """An evaluation that cannot run as asked; the message says what to change."""


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
    parser.add_argument("--batch_size", type=int, default=None, help="clips per batch (default: run.batch_size_eval)")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help=f"generation budget (default: {DEFAULT_COT_TOKENS} with CoT, "
                             f"{DEFAULT_LABEL_TOKENS} with --no_cot)")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width (default: 1, greedy)")
    args = parser.parse_args(argv)
    if args.no_cot and args.use_cls_head:
        parser.error("--no_cot and --use_cls_head exclude each other (the classification head writes no text)")
    if args.no_brief and args.use_cls_head:
        parser.error("--no_brief and --use_cls_head exclude each other (the classification head reads no prompt)")
    for name in ("batch_size", "max_new_tokens", "num_beams"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    return args


# ------------------------------------------------------------------------ predicting
def _tensors_to(samples: Mapping[str, Any], device: Any) -> dict[str, Any]:
    import torch

    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in samples.items()}


def classify_batch(model: Any, samples: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Predictions of the classification head (softmax over `model.label_names`), one dict per clip.

    Same keys as `model.generate` items, with `report` and `format_ok` None (no text written).
    """
    import torch

    stack = getattr(model, "evidence_stack", None)
    if stack is None or not getattr(stack, "use_cls_head", False):
        raise EvalError(f"--use_cls_head: {type(model).__name__} has no classification head; train with "
                        "model.use_cls_head=true (or model.lambda_cls > 0), or evaluate the reports instead")
    device = next(model.parameters()).device
    with torch.no_grad():
        output = stack(_tensors_to(samples, device), None, compute_losses=False)
        if output.cls_logits is None:
            raise EvalError("--use_cls_head: the evidence stack returned no cls_logits")
        readings = model.classify(output)
        evidence = model.generated_evidence(output)
    weights = output.modality_weights.detach().float().cpu().tolist()
    synergy = output.synergy_score.detach().float().cpu().tolist()
    return [{"report": None, "emotion": label, "confidence": conf, "format_ok": None,
             "evidence": evidence[b], "synergy_score": float(synergy[b]),
             "modality_weights": {name: float(weights[b][e]) for e, name in enumerate(EXPERT_ORDER)},
             "head_emotion": label, "head_confidence": conf}
            for b, (label, conf) in enumerate(readings)]


def predict_shard(
    model: Any,
    batches: Any,
    label_names: Sequence[str],
    missing: Sequence[str] = (),
    use_cls_head: bool = False,
    use_cot: bool = True,
    gen_kwargs: Optional[Mapping[str, Any]] = None,
    autocast: Any = None,
    brief: Optional[bool] = None,
) -> dict[str, list[dict[str, Any]]]:
    """Predictions for this rank's batches: `{"full": records}` plus `{"missing": records}` with `missing`.

    The missing-modality run sees `drop_modalities(batch, missing)`: the same clips with those
    modalities zeroed and their feature and modality masks False. `brief` reaches
    `model.generate` only when set (None: the model's configured default).
    """
    import contextlib

    from minigpt4.common.eval_utils import records_from_batch
    from minigpt4.datasets.datasets.hero_dataset import drop_modalities

    conditions = {"full": ()}
    if missing:
        conditions["missing"] = tuple(missing)
    records: dict[str, list[dict[str, Any]]] = {c: [] for c in conditions}
    source = "cls_head" if use_cls_head else "report"
    for batch in batches:
        for cond, mods in conditions.items():
            seen = drop_modalities(batch, mods) if mods else batch
            with autocast() if autocast is not None else contextlib.nullcontext():
                if use_cls_head:
                    outputs = classify_batch(model, seen)
                else:
                    extra = {} if brief is None else {"brief": bool(brief)}
                    outputs = model.generate(seen, use_cot=use_cot, **extra, **dict(gen_kwargs or {}))
            records[cond].extend(records_from_batch(seen, outputs, source, label_names, use_cot))
    return records


# ------------------------------------------------------------------------- set-up
def _model_cfg_diff(saved_yaml: Path, cfg: Any) -> list[str]:
    """Dotted `model.*` keys whose value differs between a run's saved config.yaml and `cfg`."""
    from omegaconf import OmegaConf

    from minigpt4.common.config import flatten_keys

    try:
        saved = OmegaConf.load(saved_yaml)
    except Exception:  # an unreadable config.yaml only loses the hint
        return []
    old, new = saved.get("model"), cfg.get("model")
    if old is None or new is None:
        return []
    keys = set(flatten_keys(old)) | set(flatten_keys(new))
    diff = []
    for k in sorted(keys):
        a = OmegaConf.select(old, k, default="<unset>", throw_on_missing=False)
        b = OmegaConf.select(new, k, default="<unset>", throw_on_missing=False)
        if OmegaConf.is_config(a) or OmegaConf.is_config(b):
            continue
        if a != b:
            diff.append(f"model.{k} ({a!r} in the run, {b!r} here)")
    return diff


def build_eval_dataset(cfg: Any, task: Any, split: str) -> tuple[Any, Optional[list[str]], list[str]]:
    """(dataset of `split`, its video_ids in order or None for streams, its label names)."""
    from omegaconf import OmegaConf
    from torch.utils.data import ConcatDataset, IterableDataset

    from minigpt4.common.registry import registry
    from minigpt4.datasets.builders.hero_builder import HEROBuilder

    for name in list(cfg.get("datasets") or {}):
        builder_cls = registry.get_builder_class(name)
        if builder_cls is not None and issubclass(builder_cls, HEROBuilder):
            # build only the evaluated split (other splits' files need not exist here)
            OmegaConf.update(cfg, f"datasets.{name}.splits", [split], force_add=True)
    built = task.build_datasets(cfg)
    found = [(name, splits[split]) for name, splits in built.items() if split in splits]
    if not found:
        have = {name: sorted(s) for name, s in built.items()}
        raise EvalError(f"no dataset has a split {split!r}; built splits: {have}")
    label_sets = {tuple(getattr(ds, "label_names", ()) or ()) for _, ds in found} - {()}
    if len(label_sets) > 1:
        raise EvalError(f"datasets of split {split!r} disagree on label_names: {sorted(label_sets)}")
    labels = list(next(iter(label_sets))) if label_sets else []
    datasets = [ds for _, ds in found]
    if any(isinstance(ds, IterableDataset) for ds in datasets):
        if len(datasets) > 1:
            raise EvalError(f"split {split!r} comes from several datasets and one streams; evaluate them one at a time")
        return datasets[0], None, labels
    ids = [str(rec.video_id) for ds in datasets for rec in getattr(ds, "annotations", [])]
    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    if len(ids) != len(dataset):
        ids = None  # a dataset without annotation records: only duplicates can be checked
    return dataset, ids, labels


def _loader(dataset: Any, batch_size: int, num_workers: int, rank: int, world: int, pin: bool) -> Any:
    from torch.utils.data import ConcatDataset, DataLoader, IterableDataset

    from minigpt4.common.eval_utils import shard_indices

    inner = dataset.datasets[0] if isinstance(dataset, ConcatDataset) else dataset
    collate = getattr(inner, "collater", None)
    common = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate, pin_memory=pin)
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, **common)  # the stream splits its shards by rank itself
    return DataLoader(dataset, sampler=shard_indices(len(dataset), rank, world), shuffle=False, **common)


# ---------------------------------------------------------------------- evaluating
def evaluate(args: argparse.Namespace, cfg: Any, dist_info: Any) -> Optional[dict[str, Any]]:
    """Run the evaluation; returns metrics.json's content on rank 0 (None on other ranks)."""
    import importlib

    import torch

    import minigpt4
    from minigpt4.common import checkpoint as ckpt_api
    from minigpt4.common.dist_utils import barrier
    from minigpt4.common.eval_utils import default_out_dir, gather_records, iter_batches_with_progress, parse_modalities
    from minigpt4.common.registry import registry
    from minigpt4.common.seed import set_seed
    from minigpt4.runners.runner_base import resolve_amp

    t0 = time.time()
    missing = parse_modalities(args.missing, STACK_ORDER)
    ckpt_path = ckpt_api.resolve_checkpoint(args.ckpt, prefer_best=True)
    out_dir = Path(args.out) if args.out else default_out_dir(args.ckpt, args.split, missing, args.no_cot,
                                                             args.use_cls_head, args.no_brief)
    minigpt4.setup_registry()
    for module in cfg.run.get("imports") or []:
        importlib.import_module(str(module))
    set_seed(int(cfg.run.seed))
    task = registry.get_task_class(cfg.run.task).setup_task(cfg)
    dataset, expected_ids, data_labels = build_eval_dataset(cfg, task, args.split)

    model = task.build_model(cfg)
    model_labels = [str(l) for l in getattr(model, "label_names", data_labels)]
    labels = data_labels or model_labels
    if [l.lower() for l in model_labels] != [l.lower() for l in labels]:
        raise EvalError(f"model.label_names {model_labels} differ from the dataset's label_names {labels}; "
                        "set both to the same list in the config")
    if args.use_cls_head and not getattr(getattr(model, "evidence_stack", None), "use_cls_head", False):
        raise EvalError(f"--use_cls_head: the model built from {args.cfg_path} has no classification head "
                        "(model.use_cls_head is false); evaluate the reports instead, or train with "
                        "model.use_cls_head=true")
    try:
        loaded = ckpt_api.load_model_weights(model, ckpt_path)
    except ckpt_api.CheckpointMismatchError as exc:
        from minigpt4.common.eval_utils import run_dir_of

        hint = ""
        saved = run_dir_of(ckpt_path) / "config.yaml"
        diff = _model_cfg_diff(saved, cfg) if saved.is_file() else []
        if diff:
            hint = f"; the run's {saved} differs in " + ", ".join(diff[:5])
        raise ckpt_api.CheckpointMismatchError(
            f"checkpoint does not match the model built from {args.cfg_path}: {exc}{hint}") from None
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
    loader = _loader(dataset, batch_size, int(cfg.run.get("num_workers") or 0), dist_info.rank,
                     dist_info.world_size, device.type == "cuda")
    total = len(loader) if expected_ids is not None else None
    is_main = dist_info.rank == 0
    logger.info("evaluating %s (%s) on split %r: %s clips, %d rank(s), batch %d, %s", ckpt_path, loaded, args.split,
                len(expected_ids) if expected_ids is not None else "streamed", dist_info.world_size, batch_size,
                "classification head" if args.use_cls_head else f"reports ({'CoT' if use_cot else 'label only'})")
    batches = iter_batches_with_progress(loader, total, is_main and bool(cfg.run.get("progress_bar", True)),
                                         f"eval {args.split}")
    brief = False if args.no_brief else None
    records = predict_shard(model, batches, labels, missing, args.use_cls_head, use_cot, gen_kwargs, autocast,
                            brief=brief)
    gathered = {cond: gather_records(recs) for cond, recs in records.items()}
    result = None
    if is_main:
        result = write_outputs(out_dir, gathered, expected_ids, labels, missing, {
            "split": args.split, "checkpoint": str(ckpt_path), "config": str(args.cfg_path),
            "world_size": dist_info.world_size, "prediction_source": "cls_head" if args.use_cls_head else "report",
            "use_cot": None if args.use_cls_head else use_cot,
            # was the evidence brief in the prompt: false with --no_brief, else as the model is configured
            "brief": None if args.use_cls_head else (brief if brief is not None else (
                None if getattr(model, "brief_source", None) is None else model.brief_source != "none")),
            "generation": None if args.use_cls_head else gen_kwargs,
            "batch_size": batch_size,
        }, t0)
    barrier()
    return result


def write_outputs(
    out_dir: Path,
    gathered: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    expected_ids: Optional[Sequence[str]],
    labels: Sequence[str],
    missing: Sequence[str],
    meta: Mapping[str, Any],
    t0: float,
) -> dict[str, Any]:
    """Merge the ranks' records, score them, write predictions / metrics / plots; print the summary
    line, the evidence exact-match line (with golden evidence) and each collapse warning
    (`WARNING: ...` on stderr, and logged), so a collapsed model cannot pass unnoticed."""
    from minigpt4.common import eval_utils as eu
    from minigpt4.common.metrics import evidence_summary_line, metric_drop, metrics_from_records, summary_line
    from minigpt4.common.plots import plot_confusion_matrix, plot_modality_weights

    out_dir.mkdir(parents=True, exist_ok=True)
    scored: dict[str, dict[str, Any]] = {}
    files: list[str] = []
    dropped = 0
    for cond, per_rank in gathered.items():
        recs, n_drop = eu.merge_records(per_rank, expected_ids)
        dropped += n_drop
        suffix = "" if (cond == "missing" or not missing) else "_full"
        m = metrics_from_records(recs, labels, EXPERT_ORDER)
        scored[cond] = m
        what = f" without {'+'.join(missing)}" if cond == "missing" else (" (all modalities)" if missing else "")
        eu.write_jsonl(out_dir / f"predictions{suffix}.jsonl", recs)
        files.append(f"predictions{suffix}.jsonl")
        cm = m["confusion_matrix"]
        plot_confusion_matrix(cm["matrix"], cm["rows"], cm["cols"], out_dir / f"confusion_matrix{suffix}.png",
                              title=f"{meta['split']}{what}: confusion matrix (n={m['n_labeled']})")
        files.append(f"confusion_matrix{suffix}.png")
        per_class = m.get("modality_weights_per_class") or {}
        if any(v is not None for v in per_class.values()):
            plot_modality_weights(per_class, EXPERT_ORDER, out_dir / f"modality_weights{suffix}.png",
                                  title=f"{meta['split']}{what}: mean modality weight per gold class")
            files.append(f"modality_weights{suffix}.png")
        else:
            logger.warning("no modality weights in the predictions: modality_weights%s.png not drawn", suffix)
    main = scored["missing"] if missing else scored["full"]
    metrics: dict[str, Any] = {**meta, "missing_modalities": list(missing), "label_names": list(labels), **main}
    if missing:
        metrics["full"] = scored["full"]
        metrics["drop"] = metric_drop(scored["full"], scored["missing"])
    metrics["n_repeats_dropped"] = dropped
    metrics["seconds"] = round(time.time() - t0, 3)
    metrics["files"] = files + [eu.METRICS_FILE]
    eu.write_json(out_dir / eu.METRICS_FILE, metrics)
    line = f"eval {meta['split']} ({main['n_clips']} clips"
    line += f", without {'+'.join(missing)}): " if missing else "): "
    line += summary_line(main)
    if missing:
        full_acc, drop = scored["full"]["accuracy"], metrics["drop"]["accuracy"]
        line += (f" | all modalities: accuracy {'n/a' if full_acc is None else f'{full_acc:.4f}'}, "
                 f"drop {'n/a' if drop is None else f'{drop:+.4f}'}")
    line += f" -> {out_dir}"
    print(line, flush=True)
    evidence_line = evidence_summary_line(main.get("evidence") or {})
    if evidence_line:
        print(evidence_line, flush=True)
    warnings = list(main["collapse_warnings"])
    if missing:
        warnings += [f"(all modalities) {w}" for w in scored["full"]["collapse_warnings"]]
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
        logger.warning("collapse check: %s", warning)
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict[str, Any]]:
    """Evaluate as the command line says; returns metrics.json's content on rank 0."""
    args = parse_args(argv)
    from minigpt4.common.eval_utils import parse_modalities

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
    from minigpt4.common.eval_utils import GatherError

    return (CheckpointMismatchError, ConfigError, GatherError, EvalError, FileNotFoundError, ValueError)


def _cli() -> int:
    try:
        main(sys.argv[1:])
    except Exception as exc:  # imports stay lazy: --help must not load torch
        if not isinstance(exc, _known_errors()):
            raise
        print(f"eval_hero.py: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
