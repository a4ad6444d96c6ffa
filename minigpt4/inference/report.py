"""`format_report`: one clip's result as text a person reads in a terminal.

The layout (a header line, then labelled blocks) is what `hero-infer` prints per clip without
`--json`; the machine-readable form is `ClipResult.to_json`.
"""
from __future__ import annotations

import textwrap

from minigpt4.common.modalities import EXPERT_ORDER, STACK_ORDER
from minigpt4.inference.results import ClipResult

_WIDTH = 100
_CONFIDENCE_FROM = {"head": "the classification head's probability of this label", "report": "as the report wrote it"}


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line.strip() else line for line in text.splitlines())


def _prediction_line(result: ClipResult) -> str:
    if result.emotion is None:
        return "emotion: none (the report has no parseable prediction)"
    line = f"emotion: {result.emotion}"
    if result.confidence is not None:
        how = _CONFIDENCE_FROM.get(result.confidence_source or "", result.confidence_source or "")
        line += f" (confidence {result.confidence:.2f}" + (f", {how})" if how else ")")
    return line


def _probabilities_line(result: ClipResult) -> str | None:
    if not result.label_probs:
        return None
    ranked = sorted(result.label_probs.items(), key=lambda kv: -kv[1])
    return "label probabilities: " + ", ".join(f"{name} {p:.2f}" for name, p in ranked)


def _evidence_lines(result: ClipResult) -> list[str]:
    """One line per expert: name, sentence source, modality weight, sentence (wrapped)."""
    lines = []
    for name in EXPERT_ORDER:
        source = result.evidence_source.get(name, "none")
        weight = result.modality_weights.get(name)
        sentence = result.evidence.get(name) or "-"
        head = f"  {name:<8} {'[' + source + ']':<12} {'' if weight is None else f'{weight:.2f}':>5}  "
        wrapped = textwrap.wrap(sentence, width=max(20, _WIDTH - len(head))) or ["-"]
        lines.append(head + wrapped[0])
        lines.extend(" " * len(head) + rest for rest in wrapped[1:])
    return lines


def format_report(result: ClipResult) -> str:
    """A readable multi-line report of one clip: prediction, probabilities, modalities, transcript,
    each expert's evidence (source and weight), the synergy score, the CoT report and the timings."""
    absent = [m for m in STACK_ORDER if m not in result.present_modalities]
    lines = [f"== {result.video_id}  ({result.source})", _prediction_line(result)]
    probs = _probabilities_line(result)
    if probs:
        lines.append(probs)
    modalities = ", ".join(result.present_modalities) or "none"
    lines.append(f"modalities: {modalities}" + (f" (absent: {', '.join(absent)})" if absent else ""))
    transcript = " ".join(result.transcript.split())
    lines.append(f"transcript: {transcript!r}" if transcript else "transcript: (none)")
    lines.append("evidence (expert, source, weight, sentence):")
    lines.extend(_evidence_lines(result))
    if result.synergy_score is not None:
        lines.append(f"synergy (audio belongs to this video): {result.synergy_score:.2f}")
    lines.append("report:")
    lines.append(_indent(result.report.strip()) if result.report and result.report.strip() else "    (no report)")
    if result.timings:
        lines.append("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in result.timings.items()))
    return "\n".join(lines)
