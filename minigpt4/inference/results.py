"""What inference returns per clip (`ClipResult`) or per input it could not use (`InferenceFailure`).

Light on purpose (no torch): the command line and the web app import these types to print or
show results. `clip_result` turns one item of `model.generate` (docs/ARCHITECTURE.md
"Runner <-> model") plus the clip's batch fields into a `ClipResult`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

from minigpt4.common.cot import UNKNOWN
from minigpt4.common.modalities import EXPERT_ORDER

# where an expert's sentence came from (the model's `evidence_source`; "none": no sentence)
EVIDENCE_SOURCES: tuple[str, ...] = ("generated", "annotated", "measured", "none")


@dataclass
class ClipResult:
    """One clip's prediction and its explanation.

    `emotion` is None when the report has no parseable prediction (eval's `unknown`: counted
    wrong, never guessed); `confidence` is then None too. `label_probs` is the classification
    head's distribution (None without a head). `evidence` holds the experts with a sentence;
    `evidence_source` names every expert of EXPERT_ORDER. `timings`: `extract_s` (this clip's
    share of its extraction run, 0 for feature files) and `model_s` (its share of its batch).
    """

    video_id: str
    source: str
    emotion: Optional[str]
    confidence: Optional[float]
    confidence_source: Optional[str]
    label_probs: Optional[dict[str, float]]
    report: Optional[str]
    evidence: dict[str, str]
    evidence_source: dict[str, str]
    modality_weights: dict[str, float]
    synergy_score: Optional[float]
    transcript: str
    present_modalities: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (non-finite numbers become null), keys in field order."""
        return _finite(asdict(self))


@dataclass
class InferenceFailure:
    """An input that gave no result: `source` is the file, `reason` says what was wrong with it."""

    source: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _float(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def evidence_sources(output: Mapping[str, Any]) -> dict[str, str]:
    """Every expert's sentence source: the model's `evidence_source` where it gives one; else
    `generated` for an expert with a sentence and `none` for the rest (absent experts too)."""
    given = output.get("evidence_source") or {}
    evidence = output.get("evidence") or {}
    out = {}
    for name in EXPERT_ORDER:
        src = given.get(name)
        if src is None:
            src = "generated" if evidence.get(name) else "none"
        out[name] = str(src)
    return out


def clip_result(output: Mapping[str, Any], video_id: str, source: str, transcript: str,
                present: Sequence[str], timings: Mapping[str, float]) -> ClipResult:
    """A ClipResult from one `model.generate` item and the clip's own fields.

    `present`: the modalities (STACK_ORDER names) the clip had; `transcript`: the clip's (the prompt quotes it with model.use_transcript).
    """
    parsed_ok = output.get("format_ok") is not False and output.get("emotion") not in (None, UNKNOWN)
    confidence = _float(output.get("confidence")) if parsed_ok else None
    probs = output.get("label_probs")
    return ClipResult(
        video_id=str(video_id),
        source=str(source),
        emotion=str(output["emotion"]) if parsed_ok else None,
        confidence=confidence,
        confidence_source=(str(output.get("confidence_source") or "report") if confidence is not None else None),
        label_probs=None if probs is None else {str(k): float(v) for k, v in probs.items()},
        report=output.get("report"),
        evidence={str(k): str(v) for k, v in (output.get("evidence") or {}).items()},
        evidence_source=evidence_sources(output),
        modality_weights={str(k): float(v) for k, v in (output.get("modality_weights") or {}).items()},
        synergy_score=_float(output.get("synergy_score")),
        transcript=str(transcript or ""),
        present_modalities=list(present),
        timings={k: round(float(v), 4) for k, v in timings.items()},
    )
