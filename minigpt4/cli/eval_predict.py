"""The model-facing half of `hero-eval`: the evaluated split's dataset, and this rank's predictions.

`predict_shard` moves each batch to the device once, then asks the model for its report
(`model.generate`) or its classification head (`classify_batch`), as the batch is and, with
`missing`, once more without those modalities.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, Optional, Sequence

from minigpt4.common.modalities import EXPERT_ORDER


class EvalError(RuntimeError):
    """An evaluation that cannot run as asked; the message says what to change."""


def split_annotations(dataset: Any) -> list[Any]:
    """The annotation records behind an evaluation dataset (`build_eval_dataset`'s): one
    dataset's or a concatenation's, in order; [] for a dataset without records (a stream)."""
    parts = getattr(dataset, "datasets", None) or [dataset]
    return [rec for ds in parts for rec in (getattr(ds, "annotations", None) or [])]


def build_eval_dataset(datasets: Mapping[str, Mapping[str, Any]],
                       split: str) -> tuple[Any, Optional[list[str]], list[str]]:
    """(dataset of `split`, its video_ids in order or None for streams, its label names).

    `datasets`: `{dataset_name: {split: dataset}}` as the task built them. Several datasets with
    the split are concatenated (they must share one label set).
    """
    from torch.utils.data import ConcatDataset, IterableDataset

    from minigpt4.tasks.base_task import shared_label_names

    found = [(name, splits[split]) for name, splits in datasets.items() if split in splits]
    if not found:
        have = {name: sorted(s) for name, s in datasets.items()}
        raise EvalError(f"no dataset has a split {split!r}; built splits: {have}")
    labels = shared_label_names(found)
    parts = [ds for _, ds in found]
    if any(isinstance(ds, IterableDataset) for ds in parts):
        if len(parts) > 1:
            raise EvalError(f"split {split!r} comes from several datasets and one streams; evaluate them one at a time")
        return parts[0], None, labels
    dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    ids = [str(rec.video_id) for rec in split_annotations(dataset)]
    if len(ids) != len(dataset):
        ids = None  # a dataset without annotation records: only duplicates can be checked
    return dataset, ids, labels


def classify_batch(model: Any, samples: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Predictions of the classification head (softmax over `model.label_names`), one dict per clip.

    Same keys as `model.generate` items, with `report` and `format_ok` None (no text written).
    The evidence stack reads its inputs on its own device.
    """
    import torch

    stack = getattr(model, "evidence_stack", None)
    if stack is None or not getattr(stack, "use_cls_head", False):
        raise EvalError(f"--use_cls_head: {type(model).__name__} has no classification head; train with "
                        "model.use_cls_head=true (or model.lambda_cls > 0), or evaluate the reports instead")
    with torch.no_grad():
        output = stack(samples, None, compute_losses=False)
        if output.cls_logits is None:
            raise EvalError("--use_cls_head: the evidence stack returned no cls_logits")
        head_probs = model.head_probs(output, getattr(model, "head_temperature", 1.0))
        readings = model.readings(head_probs)
        probs = head_probs.cpu().tolist()
        evidence, sources = model.expert_evidence(samples, output)
    weights = output.modality_weights.detach().float().cpu().tolist()
    synergy = output.synergy_score.detach().float().cpu().tolist()
    return [{"report": None, "emotion": label, "confidence": conf, "format_ok": None,
             "evidence": evidence[b], "evidence_source": sources[b], "synergy_score": float(synergy[b]),
             "transcript": None,  # the head reads no prompt
             "modality_weights": {name: float(weights[b][e]) for e, name in enumerate(EXPERT_ORDER)},
             "head_emotion": label, "head_confidence": conf, "confidence_source": "head",
             "label_probs": dict(zip(model.label_names, probs[b]))}
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
    device: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Predictions for this rank's batches: `{"full": records}` plus `{"missing": records}` with `missing`.

    The missing-modality run sees `drop_modalities(batch, missing)`: the same clips with those
    modalities zeroed and their feature and modality masks False. `device`: where each batch
    goes once, before both runs (None: left where the loader put it). `brief` reaches
    `model.generate` only when set (None: the model's configured default).
    """
    from minigpt4.evaluation.records import records_from_batch
    from minigpt4.datasets.datasets.hero_dataset import drop_modalities

    conditions = {"full": ()}
    if missing:
        conditions["missing"] = tuple(missing)
    records: dict[str, list[dict[str, Any]]] = {c: [] for c in conditions}
    source = "cls_head" if use_cls_head else "report"
    if device is not None:
        from minigpt4.runners.runner_base import move_to_device
    for batch in batches:
        if device is not None:
            batch = move_to_device(batch, device, non_blocking=getattr(device, "type", None) == "cuda")
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
