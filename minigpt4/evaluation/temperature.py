"""Temperature scaling of the classification head: one number that makes its confidence honest.

Why: a head trained to a low cross-entropy is often over-confident on new clips (the shift
corpus: ECE 0.135). Dividing its logits by one temperature T fitted on held-out clips (the
validation split) keeps every prediction (argmax is unchanged) and fixes most of the gap
(Guo et al., 2017, "On Calibration of Modern Neural Networks").

`fit_temperature` minimises the mean negative log-likelihood of the gold labels over log T in
[log 0.05, log 20] (scipy's bounded scalar search). The head's probabilities are enough:
softmax(log p / T) equals softmax(logits / T), since log p and the logits differ by a constant
per row. Training fits T on the validation split for every new best checkpoint (`run.calibrate`,
runners/validation.py), as `hero-eval --calibrate` does on demand, and writes `calibration.json`
(CALIBRATION_FILE) into the run folder; `hero-eval`, `hero-infer` and `hero-app` apply it to the
checkpoint it was fitted for.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

CALIBRATION_FILE = "calibration.json"
T_BOUNDS = (0.05, 20.0)
_TINY = 1e-30  # floor before the log: a probability that underflowed to 0 stays finite


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature, the clips it was fitted on, and their NLL before and after."""

    temperature: float
    n: int
    nll_before: float
    nll_after: float


def rescale(probs: Any, temperature: float) -> np.ndarray:
    """Probabilities `[N, C]` -> softmax(log p / T) `[N, C]` (rows sum to 1; argmax kept)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _TINY)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


def mean_nll(probs: Any, gold_index: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `gold_index` under `rescale(probs, temperature)`."""
    p = rescale(probs, temperature)
    gold = np.asarray(gold_index, dtype=np.int64)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(gold)), gold], _TINY))))


def fit_temperature(probs: Any, gold_index: Sequence[int]) -> TemperatureFit:
    """The T in T_BOUNDS that minimises `mean_nll`; at least one clip is needed."""
    from scipy.optimize import minimize_scalar

    p = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold_index, dtype=np.int64)
    if p.ndim != 2 or gold.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ValueError(f"need probs [N, C] and gold_index [N] with N >= 1, got {p.shape} and {gold.shape}")
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda s: mean_nll(p, gold, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = float(math.exp(res.x))
    return TemperatureFit(temperature=t, n=int(p.shape[0]), nll_before=mean_nll(p, gold), nll_after=mean_nll(p, gold, t))


def fit_from_records(records: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> TemperatureFit:
    """Fit on prediction records (`label_probs` and a gold `emotion` in the label set); others are skipped."""
    lower = [str(n).lower() for n in label_names]
    rows, gold = [], []
    for rec in records:
        probs, g = rec.get("label_probs"), rec.get("gold_emotion")
        if not probs or g is None or str(g).lower() not in lower:
            continue
        rows.append([float(probs[name]) for name in label_names])
        gold.append(lower.index(str(g).lower()))
    if not rows:
        raise ValueError("no clip with head probabilities and a gold label in the label set to fit a temperature on")
    return fit_temperature(rows, gold)


def uncalibrated(records: Sequence[Mapping[str, Any]], temperature: float) -> list[dict[str, Any]]:
    """Records as the head gave them before scaling by `temperature` (label_probs and a head
    confidence mapped back with T' = 1/T), to report the calibration before and after."""
    out = []
    for rec in records:
        rec = dict(rec)
        probs = rec.get("label_probs")
        if probs:
            names = list(probs)
            back = rescale([[probs[n] for n in names]], 1.0 / temperature)[0]
            rec["label_probs"] = {n: float(v) for n, v in zip(names, back)}
            if rec.get("confidence_source") == "head" and rec.get("pred_emotion") in rec["label_probs"]:
                rec["confidence"] = rec["label_probs"][rec["pred_emotion"]]
            if rec.get("head_confidence") is not None:
                rec["head_confidence"] = float(back.max())
        out.append(rec)
    return out


def save_calibration(run_dir: Union[str, Path], fit: TemperatureFit, checkpoint: Union[str, Path], split: str) -> Path:
    """Write `<run_dir>/calibration.json` atomically: the fit, the checkpoint and split it belongs to."""
    from minigpt4.common.atomic_io import atomic_write_text

    path = Path(run_dir) / CALIBRATION_FILE
    payload = {**asdict(fit), "checkpoint": str(Path(checkpoint).resolve()), "fitted_on_split": split}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def load_calibration(run_dir: Union[str, Path], checkpoint: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The run's calibration record (`temperature`, `n`, `nll_before`, `nll_after`, `checkpoint`,
    `fitted_on_split`) when it was fitted for `checkpoint`, else None (no file, or fitted for another
    checkpoint of the run). A file that is not a calibration record is an error naming it."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        t, ckpt = float(data["temperature"]), str(data["checkpoint"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a calibration record ({type(exc).__name__}: {exc}); delete it or rerun "
                         "hero-eval --calibrate") from exc
    if not T_BOUNDS[0] <= t <= T_BOUNDS[1]:
        raise ValueError(f"{path}: temperature {t} outside {T_BOUNDS}")
    return {**data, "temperature": t} if Path(ckpt) == Path(checkpoint).resolve() else None


def load_temperature(run_dir: Union[str, Path], checkpoint: Union[str, Path]) -> Optional[float]:
    """The temperature of `load_calibration`, or None."""
    record = load_calibration(run_dir, checkpoint)
    return None if record is None else float(record["temperature"])
