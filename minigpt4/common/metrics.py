"""Emotion-recognition scores of an evaluation run (DESIGN.md section 5), from scikit-learn.

Conventions, fixed here so every report reads the same way:

- Labels are strings of the label set, in its order (the confusion matrix rows and the
  per-class entries follow it). Comparison ignores case and surrounding spaces.
- A prediction outside the label set (the parser's `unknown`, a format failure) is *wrong*:
  it counts in the denominator of accuracy and as a miss for its gold class. The confusion
  matrix has an extra last column `unknown` so these misses stay visible.
- Clips without a gold label (gold `unknown`, `None` or empty: an unlabeled test split) are
  left out of the label metrics; they still count for `format_compliance`.
- `uar` = unweighted average recall = mean recall over the classes present in the gold labels
  (scikit-learn's balanced accuracy). `war` = support-weighted recall, which equals accuracy.
- `weighted_f1` weights each class's F1 by its gold support; `macro_f1` is the plain mean of
  F1 over the classes present in the gold labels or the (valid) predictions, i.e.
  scikit-learn's default label set minus `unknown`.
- Precision of a class never predicted is 0 (scikit-learn's `zero_division=0`); `pred_count`
  says when that happened.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

UNKNOWN = "unknown"
# metrics.json keys whose difference between two runs is reported by `metric_drop`
HEADLINE_KEYS: tuple[str, ...] = ("accuracy", "weighted_f1", "macro_f1", "uar", "war", "format_compliance")


def _norm(label: Any) -> str:
    return "" if label is None else str(label).strip().lower()


def _check_label_names(label_names: Sequence[str]) -> list[str]:
    names = [_norm(n) for n in label_names]
    if not names or len(set(names)) != len(names) or "" in names:
        raise ValueError(f"label_names must be non-empty and unique, got {list(label_names)}")
    if UNKNOWN in names:
        raise ValueError(f"{UNKNOWN!r} is reserved for unparseable predictions and cannot be a class name")
    return names


def encode_labels(labels: Sequence[Any], label_names: Sequence[str]) -> np.ndarray:
    """Strings -> int64 indices into `label_names`; anything outside the set -> len(label_names)."""
    index = {n: i for i, n in enumerate(_check_label_names(label_names))}
    other = len(index)
    return np.array([index.get(_norm(l), other) for l in labels], dtype=np.int64)


def format_compliance(format_ok: Sequence[Optional[bool]]) -> Optional[float]:
    """Share of reports with a parseable prediction; None when no record says (e.g. no reports)."""
    flags = [bool(f) for f in format_ok if f is not None]
    return sum(flags) / len(flags) if flags else None


def mean_modality_weights(
    gold: Sequence[Any],
    weights: Sequence[Optional[Mapping[str, float]]],
    label_names: Sequence[str],
    experts: Sequence[str],
) -> dict[str, Optional[dict[str, float]]]:
    """Mean modality weight of each expert, per gold class (label-set order), plus `all`.

    A class without clips (or without weights) maps to None. Records with unlabeled gold
    count only in `all`.
    """
    names = _check_label_names(label_names)
    sums = {n: np.zeros(len(experts)) for n in names + ["all"]}
    counts = {n: 0 for n in names + ["all"]}
    for g, w in zip(gold, weights):
        if not w:
            continue
        missing = [e for e in experts if e not in w]
        if missing:
            raise ValueError(f"modality weights {dict(w)} lack expert(s) {missing}")
        vec = np.array([float(w[e]) for e in experts])
        g = _norm(g)
        for key in ((g, "all") if g in sums else ("all",)):
            sums[key] += vec
            counts[key] += 1
    return {
        n: ({e: float(v) for e, v in zip(experts, sums[n] / counts[n])} if counts[n] else None)
        for n in names + ["all"]
    }


def _labeled(gold: Sequence[Any], label_names: Sequence[str]) -> np.ndarray:
    """Boolean mask of clips that carry a gold label; a gold label outside the set is an error."""
    names = set(_check_label_names(label_names))
    keep = []
    for i, g in enumerate(gold):
        g = _norm(g)
        if g in ("", UNKNOWN):
            keep.append(False)
        elif g not in names:
            raise ValueError(f"gold label {g!r} (clip {i}) is not in the label set {sorted(names)}")
        else:
            keep.append(True)
    return np.array(keep, dtype=bool)


def classification_metrics(gold: Sequence[Any], pred: Sequence[Any], label_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, W-F1, macro-F1, UAR, WAR, per-class scores and the confusion matrix.

    `gold` and `pred` are label strings, one per clip. Unlabeled gold clips are skipped
    (counted in `n_unlabeled`); predictions outside the label set count as wrong.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    names = _check_label_names(label_names)
    k = len(names)
    mask = _labeled(gold, names)
    y_true = encode_labels([g for g, m in zip(gold, mask) if m], names)
    y_pred = encode_labels([p for p, m in zip(pred, mask) if m], names)
    n = int(mask.sum())
    out: dict[str, Any] = {"n_clips": len(gold), "n_labeled": n, "n_unlabeled": len(gold) - n,
                           "n_unknown_pred": int((y_pred == k).sum())}
    classes = list(range(k))
    cm = confusion_matrix(y_true, y_pred, labels=classes + [k]) if n else np.zeros((k + 1, k + 1), dtype=np.int64)
    out["confusion_matrix"] = {
        "rows": names,  # gold
        "cols": names + [UNKNOWN],  # predicted
        "matrix": cm[:k].astype(int).tolist(),
    }
    if n == 0:
        for key in ("accuracy", "weighted_f1", "macro_f1", "uar", "war"):
            out[key] = None
        out["per_class"] = {c: {"precision": None, "recall": None, "f1": None, "support": 0, "pred_count": 0}
                            for c in names}
        return out
    present_gold = sorted(set(y_true.tolist()))
    present_any = sorted(set(y_true.tolist()) | (set(y_pred.tolist()) - {k}))
    out["accuracy"] = float(accuracy_score(y_true, y_pred))
    out["weighted_f1"] = float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0))
    out["macro_f1"] = float(f1_score(y_true, y_pred, labels=present_any, average="macro", zero_division=0))
    out["uar"] = float(recall_score(y_true, y_pred, labels=present_gold, average="macro", zero_division=0))
    out["war"] = float(recall_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0))
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    pred_count = np.bincount(y_pred, minlength=k + 1)
    out["per_class"] = {
        c: {
            "precision": float(prec[i]),
            "recall": float(rec[i]) if support[i] else None,  # undefined without gold clips
            "f1": float(f1[i]),
            "support": int(support[i]),
            "pred_count": int(pred_count[i]),
        }
        for i, c in enumerate(names)
    }
    return out


def compute_metrics(
    gold: Sequence[Any],
    pred: Sequence[Any],
    label_names: Sequence[str],
    format_ok: Optional[Sequence[Optional[bool]]] = None,
    modality_weights: Optional[Sequence[Optional[Mapping[str, float]]]] = None,
    experts: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Everything metrics.json reports for one condition of an eval run."""
    out = classification_metrics(gold, pred, label_names)
    out["format_compliance"] = format_compliance(format_ok) if format_ok is not None else None
    if modality_weights is not None:
        if experts is None:
            from minigpt4.common.modalities import EXPERT_ORDER

            experts = EXPERT_ORDER
        out["modality_weights_per_class"] = mean_modality_weights(gold, modality_weights, label_names, experts)
    return out


def metric_drop(full: Mapping[str, Any], reduced: Mapping[str, Any],
                keys: Sequence[str] = HEADLINE_KEYS) -> dict[str, Optional[float]]:
    """`full[key] - reduced[key]` for each headline metric (positive = the reduced run is worse).

    Also the per-class recall drop under `per_class_recall`. None where either side is None.
    """
    drop: dict[str, Any] = {}
    for key in keys:
        a, b = full.get(key), reduced.get(key)
        drop[key] = None if a is None or b is None else float(a) - float(b)
    per_a, per_b = full.get("per_class") or {}, reduced.get("per_class") or {}
    drop["per_class_recall"] = {
        c: (None if per_a[c]["recall"] is None or per_b.get(c, {}).get("recall") is None
            else float(per_a[c]["recall"]) - float(per_b[c]["recall"]))
        for c in per_a
    }
    return drop


def summary_line(metrics: Mapping[str, Any]) -> str:
    """`accuracy 0.5000 | W-F1 0.4667 | UAR 0.5000 | format 0.8000` (n/a where undefined)."""
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{float(v):.4f}"

    return (f"accuracy {fmt(metrics.get('accuracy'))} | W-F1 {fmt(metrics.get('weighted_f1'))} | "
            f"UAR {fmt(metrics.get('uar'))} | format {fmt(metrics.get('format_compliance'))}")
