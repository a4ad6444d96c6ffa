"""A `ClipResult` (minigpt4.inference.session) as the values the page shows: plain text and rows.

Kept apart from the layout so what the page says about a clip is tested without a browser, and
the evaluated-clip and uploaded-video paths show a result the same way.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from minigpt4.app.eval_browser import ordered_experts

if TYPE_CHECKING:
    from minigpt4.inference.session import ClipResult, InferenceFailure

EVIDENCE_HEADERS: tuple[str, ...] = ("expert", "evidence", "source", "weight")
WEIGHT_HEADERS: tuple[str, ...] = ("expert", "weight")
CONFIDENCE_SOURCES = {"head": "the classification head's probability of this label",
                      "report": "the number the report wrote"}


def _seconds(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{float(value):.1f} s"


def timings_text(timings: Mapping[str, float]) -> str:
    """`extraction 3.2 s, model 0.8 s` (extraction only when a video was extracted)."""
    parts = []
    if timings.get("extract_s"):  # 0 (or absent) for a clip read from its feature file
        parts.append(f"extraction {_seconds(timings['extract_s'])}")
    parts.append(f"model {_seconds(timings.get('model_s'))}")
    return ", ".join(parts)


def _ranked(probs: Optional[Mapping[str, float]]) -> list[tuple[str, float]]:
    return sorted((probs or {}).items(), key=lambda kv: -kv[1])


def _decision_lines(result: "ClipResult") -> list[str]:
    """The label with its confidence and the runners-up; for a report without a parsable
    prediction, the classification head's reading instead (shown, never taken as the answer)."""
    ranked = _ranked(result.label_probs)
    if result.emotion is None:
        lines = ["### Prediction: none",
                 "The report has no parsable prediction (an evaluation counts it wrong; it is never guessed)."]
        if ranked:
            rest = ", ".join(f"{n} {p:.2f}" for n, p in ranked[1:3])
            lines.append(f"The classification head reads: **{ranked[0][0]}** {ranked[0][1]:.2f}"
                         + (f", then {rest}" if rest else ""))
        return lines
    lines = [f"### Prediction: {result.emotion}"]
    if result.confidence is not None:
        src = CONFIDENCE_SOURCES.get(result.confidence_source or "", result.confidence_source or "")
        lines.append(f"Confidence **{result.confidence:.2f}**" + (f" ({src})" if src else ""))
    others = [(n, p) for n, p in ranked if n != result.emotion][:2]
    if others:
        lines.append("Next most likely: " + ", ".join(f"{n} {p:.2f}" for n, p in others))
    return lines


def prediction_markdown(result: "ClipResult") -> str:
    """The headline: the label, its confidence and where that number comes from, the synergy score, timings."""
    lines = _decision_lines(result)
    synergy = "n/a (audio or motion absent)" if result.synergy_score is None else f"{result.synergy_score:.2f}"
    lines.append(f"Synergy score (does this audio belong to this motion?): {synergy}")
    present = ", ".join(result.present_modalities) or "none"
    lines.append(f"Modalities present: {present}")
    lines.append(f"Clip `{result.video_id}`; timings: {timings_text(result.timings)}")
    return "\n\n".join(lines)


def evidence_rows(result: "ClipResult") -> list[list[str]]:
    """One row per expert: its sentence, where the sentence comes from, its attention weight."""
    names = ordered_experts(list(dict.fromkeys([*result.evidence, *result.evidence_source, *result.modality_weights])))
    rows = []
    for name in names:
        w = result.modality_weights.get(name)
        rows.append([name, result.evidence.get(name) or "", result.evidence_source.get(name, "none"),
                     "" if w is None else f"{float(w):.3f}"])
    return rows


def weight_rows(weights: Mapping[str, Any]) -> list[list[Any]]:
    """[[expert, weight], ...] in EXPERT_ORDER, for the bar chart."""
    return [[name, float(weights[name] or 0.0)] for name in ordered_experts(list(weights))]


def transcript_text(result: "ClipResult") -> str:
    """The transcript, or a sentence saying there is none."""
    return result.transcript.strip() or "(no transcript: the clip has no speech, or the run reads no text)"


def report_markdown(report: Optional[str]) -> str:
    """The CoT report as markdown (its sections are `###` headings already)."""
    return report.strip() if report and report.strip() else "*(no report: this run predicts without one)*"


def failures_markdown(failures: Sequence["InferenceFailure"]) -> str:
    """Why a clip gave no result, one bullet each."""
    return "\n".join(f"- **{f.source}**: {f.reason}" for f in failures)
