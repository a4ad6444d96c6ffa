"""Does a report say what its experts said, does its reasoning reach its own label, and does it
speak only of what its experts saw?

Definitions (README, "Outputs"), all on predictions.jsonl records:
- **Evidence-line agreement**: a report has three evidence lines (`cot.EVIDENCE_SECTIONS`:
  Visual = visual + motion experts, Audio = audio + text, Physiological = au). A line *agrees*
  with the experts' sentences it was given when, after normalising both (lowercase, every run
  of non-alphanumerics one space), each of its experts' sentences occurs in the line, and a
  line none of whose experts has a sentence is the "no evidence" line (`cot.no_evidence_line`).
  The metric is the share of agreeing lines over every line of every report that has them;
  a missing line counts as disagreeing.
- **Rationale consistency**: the last sentence of the rationale (between `### Rationale` and
  `### Prediction`) names the predicted label (the label or one of its word forms,
  `LABEL_FORMS`) and no other label of the set. Over reports with a parsed prediction.
- **Rationale grounding**: every cue the rationale speaks of (`RATIONALE_CUES`: the face, the
  voice, the body, the words, each a set of cue words) is backed by a sentence of one of that
  cue's experts in the record's `evidence`; "The face reads negative." over a clip whose
  visual and au experts said nothing is ungrounded. The share of rationales with no ungrounded
  cue, and per cue how many rationales spoke of it without its evidence. Its reference is the
  split's annotated rationales scored the same way against their annotated evidence
  (`annotated_rationale_grounding`): a model trained on annotations that speak of unannotated
  cues learns to speak of them too.
- **Absent-expert sentences**: sentences from experts whose modality weight is exactly 0
  (the expert was absent for the clip); must be 0.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from minigpt4.common import cot

# word forms that name an emotion in a sentence (a label not listed is matched as itself)
LABEL_FORMS: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral",),
    "angry": ("angry", "anger"),
    "happy": ("happy", "happiness"),
    "sad": ("sad", "sadness"),
    "worried": ("worried", "worry"),
    "surprise": ("surprise", "surprised"),
    "fear": ("fear", "fearful", "afraid"),
    "contempt": ("contempt", "contemptuous"),
    "doubt": ("doubt", "doubtful"),
}
# what a rationale can speak of -> (its cue words, the experts whose sentence backs it)
RATIONALE_CUES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "face": (("face", "faces", "facial", "smile", "smiles", "smiling", "frown", "frowns", "frowning",
              "brow", "brows", "eyes"), ("visual", "au")),
    "voice": (("voice", "voices", "tone", "pitch", "vocal", "prosody", "speech"), ("audio",)),
    "body": (("body", "posture", "gesture", "gestures", "gesturing", "movement", "movements"), ("motion",)),
    "words": (("words", "transcript", "utterance"), ("text",)),
}
_NON_WORD = re.compile(r"[^0-9a-z]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def normalise(text: str) -> str:
    """Lowercase, every run of non-alphanumerics one space, stripped."""
    return _NON_WORD.sub(" ", str(text).lower()).strip()


def evidence_line_agreement(report: str, evidence: Mapping[str, str]) -> Optional[dict[str, bool]]:
    """Section -> whether the report's line agrees with its experts' sentences (module docstring);
    None for a report without an evidence section."""
    lines = cot.report_evidence(report)
    if not lines:
        return None
    out: dict[str, bool] = {}
    for section, experts in cot.EVIDENCE_SECTIONS:
        line = lines.get(section.lower())
        if line is None:
            out[section] = False
            continue
        said = [normalise(evidence[e]) for e in experts if isinstance(evidence.get(e), str) and evidence[e].strip()]
        padded = f" {normalise(line)} "
        if said:
            out[section] = all(f" {s} " in padded for s in said if s)
        else:
            out[section] = normalise(line) == normalise(cot.no_evidence_line(section))
    return out


def rationale_text(report: str) -> Optional[str]:
    """The report's rationale (between `### Rationale` and `### Prediction`), or None without one."""
    start = report.find("### Rationale")
    if start < 0:
        return None
    body = report[start + len("### Rationale"):]
    end = body.find("### Prediction")
    return (body if end < 0 else body[:end]).strip()


def rationale_conclusion(report: str) -> Optional[str]:
    """The last sentence of the report's rationale, or None without a rationale section."""
    body = rationale_text(report)
    if body is None:
        return None
    sentences = [s for s in _SENTENCE_END.split(body) if s.strip()]
    return sentences[-1] if sentences else None


def rationale_grounding(report: str, evidence: Mapping[str, Any]) -> Optional[dict[str, bool]]:
    """Cue the rationale speaks of -> whether one of its experts has a sentence in `evidence`
    (module docstring); None without a rationale."""
    body = rationale_text(report)
    if body is None:
        return None
    words = set(normalise(body).split())
    spoke = {e for e, t in evidence.items() if isinstance(t, str) and t.strip()}
    return {cue: bool(spoke & set(experts)) for cue, (cue_words, experts) in RATIONALE_CUES.items()
            if words & set(cue_words)}


def annotated_rationale_grounding(annotations: Iterable[Any]) -> Optional[float]:
    """The share of annotated rationales that are grounded in their own annotated evidence.

    `annotations`: records with `emotion`, `evidence` and `reasoning` attributes (the dataset's
    `Annotation`s); each with a reasoning is formatted as its training target
    (`cot.build_cot_target`) and scored like a report. None when no record has a reasoning.
    """
    grounded: list[bool] = []
    for rec in annotations:
        reasoning = getattr(rec, "reasoning", None)
        if not (isinstance(reasoning, str) and reasoning.strip()):
            continue
        evidence = dict(getattr(rec, "evidence", None) or {})
        cues = rationale_grounding(cot.build_cot_target(str(rec.emotion), evidence, reasoning), evidence)
        if cues is not None:
            grounded.append(all(cues.values()))
    return sum(grounded) / len(grounded) if grounded else None


def names_labels(text: str, label_names: Sequence[str]) -> set[str]:
    """The labels whose word forms occur as words in `text`."""
    words = set(normalise(text).split())
    return {label for label in label_names if words & set(LABEL_FORMS.get(label, (label,)))}


def rationale_consistent(report: str, label: str, label_names: Sequence[str]) -> Optional[bool]:
    """Whether the rationale's conclusion names `label` and no other label; None without a rationale."""
    conclusion = rationale_conclusion(report)
    if conclusion is None:
        return None
    return names_labels(conclusion, label_names) == {label}


def faithfulness_metrics(records: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> Optional[dict[str, Any]]:
    """metrics.json's `faithfulness` block; None when no record has a report."""
    with_report = [r for r in records if isinstance(r.get("report"), str)]
    if not with_report:
        return None
    per_section: dict[str, list[bool]] = {section: [] for section, _ in cot.EVIDENCE_SECTIONS}
    reports_without_lines = 0
    consistent: list[bool] = []
    grounded: list[bool] = []
    ungrounded = {cue: 0 for cue in RATIONALE_CUES}
    for r in with_report:
        evidence = r.get("evidence") or {}
        cues = rationale_grounding(r["report"], evidence)
        if cues is not None:
            grounded.append(all(cues.values()))
            for cue, ok in cues.items():
                ungrounded[cue] += not ok
        agreement = evidence_line_agreement(r["report"], evidence)
        if agreement is None:
            reports_without_lines += 1
        else:
            for section, ok in agreement.items():
                per_section[section].append(ok)
        if r.get("pred_emotion") in label_names:
            verdict = rationale_consistent(r["report"], r["pred_emotion"], label_names)
            consistent.append(bool(verdict))
    lines = [ok for oks in per_section.values() for ok in oks]
    absent = sum(1 for r in records for e, w in (r.get("modality_weights") or {}).items()
                 if w == 0.0 and isinstance((r.get("evidence") or {}).get(e), str) and r["evidence"][e].strip())
    return {
        "evidence_line_agreement": sum(lines) / len(lines) if lines else None,
        "per_section": {s: (sum(v) / len(v) if v else None) for s, v in per_section.items()},
        "n_lines": len(lines),
        "reports_without_evidence": reports_without_lines,
        "rationale_consistency": sum(consistent) / len(consistent) if consistent else None,
        "n_rationales": len(consistent),
        "rationale_grounding": sum(grounded) / len(grounded) if grounded else None,
        "ungrounded_cues": ungrounded,
        "absent_expert_sentences": absent,
    }
