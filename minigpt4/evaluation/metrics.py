"""Emotion-recognition scores of an evaluation run (README "Outputs"), from scikit-learn.

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
- `pred_distribution` is over *all* clips (labeled or not: it describes the model), the gold
  shares (`per_class` support / `n_labeled`) and `majority_baseline` over the labeled ones.
- Collapse checks (`collapse_warnings`) exist because a model can collapse to one class and
  one sentence per expert while the headline numbers still look like numbers; their
  thresholds are the constants below, nowhere else.
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

from minigpt4.evaluation.calibration import calibration_from_records
from minigpt4.evaluation.evidence import evidence_metrics
from minigpt4.evaluation.faithfulness import faithfulness_metrics

UNKNOWN = "unknown"
# metrics.json keys whose difference between two runs is reported by `metric_drop`
HEADLINE_KEYS: tuple[str, ...] = ("accuracy", "weighted_f1", "macro_f1", "uar", "war", "format_compliance")

# Collapse thresholds (used by `collapse_warnings` only).
# Accuracy at most this far above the majority-class baseline (or below it) is a warning.
MAJORITY_MARGIN = 0.05
# One class taking more than this share of all predictions is a warning ...
MAX_PRED_SHARE = 0.5
# ... and so is taking more than this many times its gold share (when the gold is known) ...
GOLD_SHARE_RATIO = 2.0
# ... provided the class takes at least this share (so a rare class predicted 3 times, not
# once, raises nothing).
MIN_SHARE_FOR_RATIO = 0.25
# An expert with at least this many generated sentences ...
MIN_SENTENCES_FOR_DIVERSITY = 10
# ... and at most this many distinct ones has a collapsed evidence decoder. One: corpora whose
# annotations use two or three levels per expert legitimately give two or three sentences
# under greedy decoding; a single sentence for every clip is a decoder that ignores its input.
MAX_DISTINCT_COLLAPSED = 1


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


def pred_distribution(pred: Sequence[Any], label_names: Sequence[str]) -> Optional[dict[str, float]]:
    """Share of all predictions per class (label-set order) plus `unknown`; None without clips.

    The first thing to look at when a model collapses onto one class.
    """
    names = _check_label_names(label_names)
    if not len(pred):
        return None
    counts = np.bincount(encode_labels(pred, names), minlength=len(names) + 1)
    return {n: float(c) / len(pred) for n, c in zip(names + [UNKNOWN], counts.tolist())}


def max_pred_class(distribution: Optional[Mapping[str, float]]) -> tuple[Optional[str], Optional[float]]:
    """(class, share) of the most predicted class, `unknown` excluded (that is format failure,
    reported by format_compliance); ties go to the first in label-set order."""
    if not distribution:
        return None, None
    shares = [(c, s) for c, s in distribution.items() if c != UNKNOWN]
    best = max(shares, key=lambda cs: cs[1])  # max keeps the first of equal shares
    return (best[0] if best[1] > 0 else None), float(best[1])


def majority_baseline(gold: Sequence[Any], label_names: Sequence[str]) -> Optional[dict[str, Any]]:
    """`{"class", "accuracy"}` of always predicting the most frequent gold class (ties: first in
    label-set order); None without labeled clips. A model must beat this to have learned anything."""
    names = _check_label_names(label_names)
    mask = _labeled(gold, names)
    if not mask.any():
        return None
    counts = np.bincount(encode_labels([g for g, m in zip(gold, mask) if m], names), minlength=len(names))
    best = int(np.argmax(counts))
    return {"class": names[best], "accuracy": float(counts[best]) / int(mask.sum())}


def compute_metrics(
    gold: Sequence[Any],
    pred: Sequence[Any],
    label_names: Sequence[str],
    format_ok: Optional[Sequence[Optional[bool]]] = None,
    modality_weights: Optional[Sequence[Optional[Mapping[str, float]]]] = None,
    experts: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Everything metrics.json reports for one condition of an eval run, evidence aside
    (`metrics_from_records` adds that and the collapse warnings)."""
    out = classification_metrics(gold, pred, label_names)
    out["format_compliance"] = format_compliance(format_ok) if format_ok is not None else None
    dist = pred_distribution(pred, label_names)
    out["pred_distribution"] = dist
    out["max_pred_class"], out["max_pred_share"] = max_pred_class(dist)
    out["majority_baseline"] = majority_baseline(gold, label_names)
    if modality_weights is not None:
        if experts is None:
            from minigpt4.common.modalities import EXPERT_ORDER

            experts = EXPERT_ORDER
        out["modality_weights_per_class"] = mean_modality_weights(gold, modality_weights, label_names, experts)
    return out


# ------------------------------------------------------------------------ collapse
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def collapse_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """Human-readable signs that the model collapsed (thresholds: the module constants).

    - accuracy within MAJORITY_MARGIN of the majority-class baseline, or below it;
    - a class with more than MAX_PRED_SHARE of all predictions, or (gold share known) more than
      GOLD_SHARE_RATIO times its gold share while taking at least MIN_SHARE_FOR_RATIO;
    - an expert with >= MIN_SENTENCES_FOR_DIVERSITY generated sentences of which at most
      MAX_DISTINCT_COLLAPSED are distinct.
    Missing keys (an older metrics.json, no labels, no evidence) just skip their check.
    """
    warnings: list[str] = []
    acc, base = metrics.get("accuracy"), metrics.get("majority_baseline")
    if acc is not None and base:
        if acc <= base["accuracy"] + MAJORITY_MARGIN:
            where = "below" if acc < base["accuracy"] else f"within {MAJORITY_MARGIN:g} of"
            warnings.append(f"accuracy {acc:.4f} is {where} the majority baseline {base['accuracy']:.4f} "
                            f"(always predicting {base['class']!r}): no better than guessing the most frequent class")
    dist = metrics.get("pred_distribution") or {}
    n_labeled = metrics.get("n_labeled") or 0
    per_class = metrics.get("per_class") or {}
    for cls, share in dist.items():
        if cls == UNKNOWN or not share:
            continue
        support = (per_class.get(cls) or {}).get("support")
        gold_share = support / n_labeled if n_labeled and support is not None else None
        gold_txt = "" if gold_share is None else f" (gold share {_pct(gold_share)})"
        if share > MAX_PRED_SHARE:
            warnings.append(f"class {cls!r} takes {_pct(share)} of the predictions{gold_txt}, more than "
                            f"{_pct(MAX_PRED_SHARE)}: the model may have collapsed onto one class")
        elif gold_share is not None and share >= MIN_SHARE_FOR_RATIO and share > GOLD_SHARE_RATIO * gold_share:
            warnings.append(f"class {cls!r} takes {_pct(share)} of the predictions, more than "
                            f"{GOLD_SHARE_RATIO:g}x its gold share {_pct(gold_share)}: the model over-predicts it")
    for expert, ev in (metrics.get("evidence") or {}).items():
        n, distinct = ev.get("n_sentences", 0), ev.get("n_distinct", 0)
        if n >= MIN_SENTENCES_FOR_DIVERSITY and distinct <= MAX_DISTINCT_COLLAPSED:
            warnings.append(f"expert {expert!r}: {n} generated evidence sentences but only {distinct} distinct: "
                            "its evidence decoder writes the same sentence whatever the clip")
    return warnings


def metrics_from_records(
    records: Sequence[Mapping[str, Any]],
    label_names: Sequence[str],
    experts: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """metrics.json's content for one condition, from predictions.jsonl-style records:
    `compute_metrics` plus `evidence` (generated vs `golden_evidence`) and `collapse_warnings`."""
    if experts is None:
        from minigpt4.common.modalities import EXPERT_ORDER

        experts = EXPERT_ORDER
    fmt = [r.get("format_ok") for r in records]
    weights = [r.get("modality_weights") for r in records]
    out = compute_metrics([r.get("gold_emotion") for r in records], [r.get("pred_emotion") for r in records],
                          label_names, format_ok=fmt if any(f is not None for f in fmt) else None,
                          modality_weights=weights, experts=experts)
    out["evidence"] = evidence_metrics([r.get("evidence") for r in records],
                                       [r.get("golden_evidence") for r in records], experts)
    out["head"] = head_metrics(records, label_names)
    out["calibration"] = calibration_from_records(records, label_names)
    out["faithfulness"] = faithfulness_metrics(records, list(label_names))
    out["collapse_warnings"] = collapse_warnings(out)
    return out


def head_metrics(records: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> Optional[dict[str, Any]]:
    """The classification head's own accuracy and how often the report agrees with it.

    None when no record carries `head_emotion` (no head). `agreement` is over all clips with a
    head reading: the share whose report label equals the head's label (a report that failed
    to parse disagrees). A low agreement means the report does not follow what the features say.
    """
    rows = [r for r in records if r.get("head_emotion") is not None]
    if not rows:
        return None
    names = _check_label_names(label_names)
    head = encode_labels([r["head_emotion"] for r in rows], names)
    report = encode_labels([r.get("pred_emotion") for r in rows], names)
    gold_mask = _labeled([r.get("gold_emotion") for r in rows], names)
    gold = encode_labels([r.get("gold_emotion") for r in rows], names)
    return {
        "accuracy": float((head[gold_mask] == gold[gold_mask]).mean()) if gold_mask.any() else None,
        "agreement": float((head == report).mean()),
        "n_clips": len(rows),
    }


def generation_metrics(records: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> dict[str, Any]:
    """The few numbers a training loop needs to validate by generating (plain JSON values).

    accuracy, weighted_f1, uar, format_compliance, majority_baseline (its accuracy),
    max_pred_share, max_pred_class, n_distinct evidence per expert, head_accuracy and
    head_agreement (None without a classification head), collapse_warnings.
    """
    m = metrics_from_records(records, label_names)
    base = m.get("majority_baseline")
    return {
        "n_clips": m["n_clips"],
        "accuracy": m["accuracy"],
        "weighted_f1": m["weighted_f1"],
        "uar": m["uar"],
        "format_compliance": m["format_compliance"],
        "majority_baseline": None if base is None else base["accuracy"],
        "max_pred_share": m["max_pred_share"],
        "max_pred_class": m["max_pred_class"],
        "n_distinct_evidence": {e: v["n_distinct"] for e, v in m["evidence"].items()},
        "head_accuracy": None if m["head"] is None else m["head"]["accuracy"],
        "head_agreement": None if m["head"] is None else m["head"]["agreement"],
        "collapse_warnings": m["collapse_warnings"],
    }


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
    """`accuracy 0.5000 | W-F1 0.4667 | UAR 0.5000 | format 0.8000 | majority 0.3000`, plus
    `| ECE 0.0400 | Brier 0.2100` where the predictions carry a confidence and `| faithful 0.9800 |
    rationale 0.9900 | grounded 0.9500 (annotations 0.9700)` where they carry reports (the
    parenthesis: the split's annotated rationales, where the faithfulness block has them); n/a
    where undefined; `majority` is the majority-class baseline's accuracy."""
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{float(v):.4f}"

    base = metrics.get("majority_baseline")
    line = (f"accuracy {fmt(metrics.get('accuracy'))} | W-F1 {fmt(metrics.get('weighted_f1'))} | "
            f"UAR {fmt(metrics.get('uar'))} | format {fmt(metrics.get('format_compliance'))} | "
            f"majority {fmt(base.get('accuracy') if base else None)}")
    cal = metrics.get("calibration")
    if cal:
        line += f" | ECE {fmt(cal.get('ece'))} | Brier {fmt(cal.get('brier'))}"
        before = metrics.get("calibration_uncalibrated")
        if before:
            line += f" (before temperature scaling: ECE {fmt(before.get('ece'))}, Brier {fmt(before.get('brier'))})"
    faith = metrics.get("faithfulness")
    if faith:
        line += (f" | faithful {fmt(faith.get('evidence_line_agreement'))}"
                 f" | rationale {fmt(faith.get('rationale_consistency'))}"
                 f" | grounded {fmt(faith.get('rationale_grounding'))}")
        if faith.get("rationale_grounding_annotated") is not None:
            line += f" (annotations {fmt(faith['rationale_grounding_annotated'])})"
    return line
