"""The chain-of-thought report (its format: README, top): instructions, target template, parser.

One module so the dataset (which builds training targets) and the model / eval (which parse
generated reports) can never disagree on the format.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from minigpt4.common.modalities import VIDEO_PLACEHOLDER

UNKNOWN = "unknown"
CONFIDENCE_DECIMALS = 4  # places of the confidence a report prints (the record keeps the same number)
REPORT_TOKENS = 300  # default generation budget of a CoT report (hero-eval, hero-infer, the web app)

COT_INSTRUCTION = (
    "{video} Observe the clip's face, motion, voice and words. Write an evidence analysis, "
    "a rationale, and a prediction as JSON with the emotion (one of: {labels}) and a confidence."
)
LABEL_INSTRUCTION = (
    "{video} Which emotion does the person show? Answer with one of: {labels}."
)


def build_instruction(label_names: Sequence[str], use_cot: bool = True) -> str:
    """The user turn of the prompt, with the `<video><VideoHere></video>` placeholder."""
    template = COT_INSTRUCTION if use_cot else LABEL_INSTRUCTION
    return template.format(video=VIDEO_PLACEHOLDER, labels=", ".join(label_names))


def _join(*parts: Optional[str]) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


# The report's three evidence lines and the experts each one folds (EXPERT_ORDER names), in order.
EVIDENCE_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Visual", ("visual", "motion")),
    ("Audio", ("audio", "text")),
    ("Physiological", ("au",)),
)
# the experts whose sentences a given evidence section carries (model.brief_lines: unreported)
REPORTED_EXPERTS: frozenset[str] = frozenset(e for _, experts in EVIDENCE_SECTIONS for e in experts)
EVIDENCE_HEADER = "### Evidence Analysis\n"
RATIONALE_HEADER = "### Rationale\n"


def no_evidence_line(section: str) -> str:
    """What a line says when none of its experts has a sentence (true at training and inference alike)."""
    what = "facial action-unit" if section == "Physiological" else section.lower()
    return f"No {what} evidence was observed."


def build_evidence_section(evidence: Optional[Mapping[str, str]] = None) -> str:
    """`### Evidence Analysis` and its three lines, from one sentence per expert: Visual = visual
    global + motion, Audio = voice + words, Physiological = facial action units. A line without
    any sentence says so rather than inventing some."""
    ev = dict(evidence or {})
    lines = [f"- {section}: {_join(*(ev.get(e) for e in experts)) or no_evidence_line(section)}\n"
             for section, experts in EVIDENCE_SECTIONS]
    return EVIDENCE_HEADER + "".join(lines)


def build_cot_target(
    emotion: str,
    evidence: Optional[Mapping[str, str]] = None,
    reasoning: Optional[str] = None,
    confidence: float = 1.0,
) -> str:
    """Format a CoT report from annotation fields: the evidence section (`build_evidence_section`),
    the rationale, the prediction."""
    rationale = (reasoning or "").strip() or f"Taken together, the cues point to {emotion}."
    prediction = json.dumps({"emotion": emotion, "confidence": round(float(confidence), 2)})
    return f"{build_evidence_section(evidence)}{RATIONALE_HEADER}{rationale}\n### Prediction\n{prediction}"


def given_section(evidence: Optional[Mapping[str, str]]) -> str:
    """The start of a report whose evidence section is given rather than written (training and
    generation alike): that section, built from `evidence`, and the rationale header."""
    return build_evidence_section(evidence) + RATIONALE_HEADER


def given_section_and_rest(report: str, evidence: Mapping[str, str]) -> tuple[str, str]:
    """A target report whose evidence section is given rather than written: (`given_section` of
    `evidence`; the report's rest, to learn). A report that does not start with an evidence
    section (a label-only target): ("", the report)."""
    head, sep, rest = report.partition(RATIONALE_HEADER)
    if not sep or not head.startswith(EVIDENCE_HEADER):
        return "", report
    return given_section(evidence), rest


def build_label_target(emotion: str) -> str:
    """The target of the label-only (no CoT) instruction."""
    return json.dumps({"emotion": emotion})


@dataclass(frozen=True)
class ParsedPrediction:
    emotion: str
    confidence: Optional[float]
    format_ok: bool
    error: Optional[str] = None


_DECODER = json.JSONDecoder()


def _json_spans(text: str) -> list[tuple[dict, int, int]]:
    """Every top-level JSON object in `text` with its [start, end) span, in order (scans each '{')."""
    found: list[tuple[dict, int, int]] = []
    i = 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return found
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict):
            found.append((obj, i, end))
        i = end


def _prediction_object(report: str, require_header: bool) -> tuple[Optional[tuple[dict, int, int]], Optional[str]]:
    """The prediction object `parse_report` reads, with its [start, end) span in `report`, else
    (None, why): the last JSON object with an `emotion` key after the last `### Prediction`
    header (anywhere when `require_header` is False)."""
    start = report.rfind("### Prediction") if require_header else 0
    if start < 0:
        return None, "no '### Prediction' section"
    spans = [(obj, start + a, start + b) for obj, a, b in _json_spans(report[start:]) if "emotion" in obj]
    if not spans:
        return None, "no JSON object with an 'emotion' key"
    return spans[-1], None


def with_confidence(report: str, confidence: float, require_header: bool = True) -> str:
    """`report` with the confidence of its prediction object (the one `parse_report` reads)
    replaced by `confidence` (rounded to CONFIDENCE_DECIMALS places), so the printed number is the
    measured one; a report without a prediction object is returned unchanged."""
    found, _ = _prediction_object(report, require_header)
    if found is None:
        return report
    obj, a, b = found
    return report[:a] + json.dumps({**obj, "confidence": round(float(confidence), CONFIDENCE_DECIMALS)}) + report[b:]


def parse_report(report: str, label_names: Optional[Sequence[str]] = None, require_header: bool = True) -> ParsedPrediction:
    """Parse a generated report into a prediction.

    Takes the last JSON object after the last `### Prediction` header (anywhere in the text
    when `require_header` is False, as for label-only answers). A report without one, or
    whose emotion is not a string in `label_names` (when given), is a format failure with
    emotion `unknown`: the label is never guessed from free text.
    """
    found, why = _prediction_object(report, require_header)
    if found is None:
        return ParsedPrediction(UNKNOWN, None, False, why)
    obj = found[0]
    emotion = obj.get("emotion")
    if not isinstance(emotion, str):
        return ParsedPrediction(UNKNOWN, None, False, "'emotion' is not a string")
    emotion = emotion.strip().lower()
    if label_names is not None:
        # Return the label as the label set spells it, so callers can index the set with it.
        canonical = {l.strip().lower(): l for l in label_names}
        if emotion not in canonical:
            return ParsedPrediction(UNKNOWN, None, False, f"emotion {emotion!r} is not in the label set")
        emotion = canonical[emotion]
    conf = obj.get("confidence")
    confidence: Optional[float] = None
    # json accepts NaN/Infinity; a non-finite confidence is no confidence.
    if isinstance(conf, (int, float)) and not isinstance(conf, bool) and math.isfinite(conf):
        confidence = min(max(float(conf), 0.0), 1.0)
    return ParsedPrediction(emotion, confidence, True)


_EVIDENCE_LINE = re.compile(r"^- (Visual|Audio|Physiological):\s*(.*)$", re.MULTILINE)


def report_evidence(report: str) -> dict[str, str]:
    """The evidence lines of a report, keyed by their section name (for display)."""
    return {m.group(1).lower(): m.group(2).strip() for m in _EVIDENCE_LINE.finditer(report)}
