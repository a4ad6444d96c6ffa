"""Is the printed confidence worth reading? Calibration of a prediction's confidence.

All functions take per-clip `confidence` (the probability the model gives its own answer)
and `correct` (whether that answer is the gold label), for labelled clips only:
- `expected_calibration_error`: ECE over `n_bins` equal-width bins of [0, 1] (a confidence
  of exactly 1.0 falls in the last bin): sum over bins of |B|/n * |accuracy(B) - mean confidence(B)|.
- `reliability_bins`: the same bins as a table, for the reliability diagram.
- `brier_score`: the multi-class Brier score mean_i sum_k (p_ik - y_ik)^2 when the whole
  distribution over the label set is known, else the top-label one mean_i (conf_i - correct_i)^2.
- `selective_accuracy`: accuracy on the most confident `coverage` share of the clips
  (ceil(coverage * n) clips; ties keep clip order), i.e. answering only where the model is surest.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

DEFAULT_BINS = 10
DEFAULT_COVERAGE = 0.8


def _arrays(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=bool)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D of one length, got {conf.shape} and {hit.shape}")
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidence values must be finite and in [0, 1]")
    return conf, hit


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(confidence: Sequence[float], correct: Sequence[bool],
                     n_bins: int = DEFAULT_BINS) -> list[dict[str, Any]]:
    """One row per bin: lo, hi, n, accuracy and mean confidence (None for an empty bin)."""
    conf, hit = _arrays(confidence, correct)
    idx = _bin_index(conf, n_bins)
    rows = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        rows.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": n,
                     "accuracy": float(hit[sel].mean()) if n else None,
                     "confidence": float(conf[sel].mean()) if n else None})
    return rows


def _ece_from_bins(bins: Sequence[Mapping[str, Any]]) -> Optional[float]:
    n = sum(row["n"] for row in bins)
    if n == 0:
        return None
    return float(sum(row["n"] / n * abs(row["accuracy"] - row["confidence"]) for row in bins if row["n"]))


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool],
                               n_bins: int = DEFAULT_BINS) -> Optional[float]:
    """ECE (see the module docstring); None without clips."""
    return _ece_from_bins(reliability_bins(confidence, correct, n_bins))


def brier_score(confidence: Sequence[float], correct: Sequence[bool],
                probs: Optional[Sequence[Sequence[float]]] = None,
                gold_index: Optional[Sequence[int]] = None) -> Optional[float]:
    """Multi-class Brier score with `probs` [N, K] and `gold_index` [N], else the top-label one."""
    conf, hit = _arrays(confidence, correct)
    if conf.size == 0:
        return None
    if probs is None:
        return float(np.mean((conf - hit.astype(np.float64)) ** 2))
    p = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold_index, dtype=np.int64)
    if p.ndim != 2 or p.shape[0] != conf.size or gold.shape != (conf.size,):
        raise ValueError(f"probs must be [N, K] and gold_index [N] with N = {conf.size}")
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), gold] = 1.0
    return float(np.mean(((p - onehot) ** 2).sum(axis=1)))


def selective_accuracy(confidence: Sequence[float], correct: Sequence[bool],
                       coverage: float = DEFAULT_COVERAGE) -> Optional[float]:
    """Accuracy on the ceil(coverage * n) most confident clips; None without clips."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    conf, hit = _arrays(confidence, correct)
    if conf.size == 0:
        return None
    k = max(1, math.ceil(coverage * conf.size - 1e-9))
    order = np.argsort(-conf, kind="stable")[:k]
    return float(hit[order].mean())


def calibration_metrics(confidence: Sequence[float], correct: Sequence[bool],
                        probs: Optional[Sequence[Sequence[float]]] = None,
                        gold_index: Optional[Sequence[int]] = None,
                        n_bins: int = DEFAULT_BINS, coverage: float = DEFAULT_COVERAGE) -> Optional[dict[str, Any]]:
    """metrics.json's `calibration` block: ECE, Brier, selective accuracy, the mean confidence of
    right and wrong answers (a useful confidence is clearly lower on the wrong ones) and the bins."""
    conf, hit = _arrays(confidence, correct)
    if conf.size == 0:
        return None
    bins = reliability_bins(conf, hit, n_bins)
    return {
        "n_clips": int(conf.size),
        "ece": _ece_from_bins(bins),
        "brier": brier_score(conf, hit, probs, gold_index),
        "brier_kind": "top_label" if probs is None else "multiclass",
        f"selective_accuracy@{coverage:g}": selective_accuracy(conf, hit, coverage),
        "accuracy": float(hit.mean()),
        "mean_confidence": float(conf.mean()),
        "mean_confidence_correct": float(conf[hit].mean()) if hit.any() else None,
        "mean_confidence_wrong": float(conf[~hit].mean()) if (~hit).any() else None,
        "bins": bins,
    }


def calibration_from_records(records: Sequence[Mapping[str, Any]], label_names: Sequence[str],
                             n_bins: int = DEFAULT_BINS,
                             coverage: float = DEFAULT_COVERAGE) -> Optional[dict[str, Any]]:
    """Calibration of the reports' `confidence` over labelled clips with a parsed prediction and a
    confidence; multi-class Brier where every such record carries `label_probs` (label-set order).
    A clip without a parsed prediction or without a confidence is left out (its count is reported)."""
    names = list(label_names)
    rows = [r for r in records if r.get("gold_emotion") in names]
    used = [r for r in rows if r.get("pred_emotion") in names and r.get("confidence") is not None]
    if not used:
        return None
    conf = [float(r["confidence"]) for r in used]
    hit = [r["pred_emotion"] == r["gold_emotion"] for r in used]
    probs = None
    gold_index = None
    if all(isinstance(r.get("label_probs"), Mapping) for r in used):
        probs = [[float(r["label_probs"].get(n, 0.0)) for n in names] for r in used]
        gold_index = [names.index(r["gold_emotion"]) for r in used]
    out = calibration_metrics(conf, hit, probs, gold_index, n_bins, coverage)
    assert out is not None
    out["n_left_out"] = len(rows) - len(used)
    return out
