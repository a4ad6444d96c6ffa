"""Faithfulness metrics (minigpt4/evaluation/faithfulness.py) against hand-checked reports."""
from __future__ import annotations

import pytest

from minigpt4.common import cot
from minigpt4.datasets.annotations import Annotation
from minigpt4.evaluation.faithfulness import (
    annotated_rationale_grounding,
    evidence_line_agreement,
    faithfulness_metrics,
    rationale_conclusion,
    rationale_consistent,
    rationale_grounding,
)
from minigpt4.evaluation.metrics import metrics_from_records, summary_line

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
EVIDENCE = {"visual": "The face is smiling.", "motion": "The person barely moves.", "audio": "The voice is bright.",
            "text": "I got the job!"}


def _report(evidence, rationale="The cues point to happy.", label="happy"):
    return cot.build_cot_target(label, evidence, rationale)


def test_a_report_built_from_its_experts_agrees_everywhere():
    agreement = evidence_line_agreement(_report(EVIDENCE), EVIDENCE)
    # no au sentence: the Physiological line must be the "no evidence" line, which it is
    assert agreement == {"Visual": True, "Audio": True, "Physiological": True}


def test_a_contradicting_line_disagrees():
    said = dict(EVIDENCE, motion="The person gestures vigorously.")  # the report's words, not the expert's
    agreement = evidence_line_agreement(_report(said), EVIDENCE)
    assert agreement == {"Visual": False, "Audio": True, "Physiological": True}
    # an expert sentence the line leaves out, and a line claiming evidence where none was given
    assert evidence_line_agreement(_report({"visual": "The face is smiling."}), EVIDENCE)["Audio"] is False
    assert evidence_line_agreement(_report(dict(EVIDENCE, au="AU12 is active.")), EVIDENCE)["Physiological"] is False
    # case and punctuation do not matter; a missing line disagrees; no section at all: None
    shouted = {e: t.upper().replace(".", " ;") for e, t in EVIDENCE.items()}
    assert evidence_line_agreement(_report(shouted), EVIDENCE)["Visual"] is True
    no_audio = "\n".join(l for l in _report(EVIDENCE).splitlines() if not l.startswith("- Audio"))
    assert evidence_line_agreement(no_audio, EVIDENCE)["Audio"] is False
    assert evidence_line_agreement('{"emotion": "happy"}', EVIDENCE) is None


def test_rationale_conclusion_and_consistency():
    text = _report(EVIDENCE, "The voice sounds angry; the face looks happy. Weighing these cues, the person is happy.")
    assert rationale_conclusion(text) == "Weighing these cues, the person is happy."
    assert rationale_consistent(text, "happy", LABELS) is True        # earlier sentences may name others
    assert rationale_consistent(text, "angry", LABELS) is False       # concludes another label
    surprised = _report(EVIDENCE, "Together these point to surprised.", "surprise")
    assert rationale_consistent(surprised, "surprise", LABELS) is True  # a word form of the label
    both = _report(EVIDENCE, "It is happy or sad.")
    assert rationale_consistent(both, "happy", LABELS) is False
    assert rationale_consistent('{"emotion": "happy"}', "happy", LABELS) is None


def test_rationale_grounding_names_the_cues_spoken_of_without_evidence():
    no_face = {"motion": "The body stays still.", "audio": "The voice is calm.", "text": "The words are plain."}
    text = _report(no_face, "The voice is calm and the body is still. The face reads negative. "
                            "The words agree with the face. Together these point to neutral.", "neutral")
    assert rationale_grounding(text, no_face) == {"face": False, "voice": True, "body": True, "words": True}
    # an au sentence backs the face as a visual one does; empty sentences back nothing
    assert rationale_grounding(text, dict(no_face, au="AU04 is active."))["face"] is True
    assert rationale_grounding(text, dict(no_face, visual="  "))["face"] is False
    # a cue not spoken of is not judged; case and punctuation do not matter; no rationale: None
    assert rationale_grounding(_report(no_face, "FACIAL cues: none. So, neutral.", "neutral"), {}) == {"face": False}
    assert rationale_grounding(_report(no_face, "Together these point to neutral.", "neutral"), no_face) == {}
    assert rationale_grounding('{"emotion": "happy"}', no_face) is None


def _record(report, pred, evidence, weights=None):
    return {"video_id": pred, "gold_emotion": "happy", "pred_emotion": pred, "confidence": None, "format_ok": True,
            "report": report, "evidence": evidence, "modality_weights": weights}


def test_faithfulness_block_by_hand():
    weights = {"motion": 0.2, "audio": 0.2, "au": 0.0, "text": 0.2, "visual": 0.2, "synergy": 0.2}
    recs = [
        _record(_report(EVIDENCE), "happy", EVIDENCE, weights),                                        # 3/3 lines, consistent
        _record(_report(dict(EVIDENCE, audio="Loud.")), "happy", EVIDENCE, weights),                    # 2/3, consistent
        _record(_report(EVIDENCE, "So, sad."), "happy", dict(EVIDENCE, au="AU12."), weights),          # 2/3 (au), inconsistent
        _record(None, "happy", {}, None),                                                              # head-only: no report
    ]
    f = faithfulness_metrics(recs, LABELS)
    assert f["n_lines"] == 9 and f["evidence_line_agreement"] == pytest.approx(7 / 9)
    assert f["per_section"] == {"Visual": 1.0, "Audio": pytest.approx(2 / 3), "Physiological": pytest.approx(2 / 3)}
    assert f["n_rationales"] == 3 and f["rationale_consistency"] == pytest.approx(2 / 3)
    assert f["absent_expert_sentences"] == 1  # clip 3 has an au sentence although au's weight is 0
    # clip 4 speaks of the face and the voice while only the motion expert spoke
    recs.append(_record(_report(EVIDENCE, "The face and the voice say happy."), "happy",
                        {"motion": "The person barely moves."}, weights))
    f = faithfulness_metrics(recs, LABELS)
    assert f["rationale_grounding"] == pytest.approx(3 / 4)  # clips 1-3 speak of no cue, or of a backed one
    assert f["ungrounded_cues"] == {"face": 1, "voice": 1, "body": 0, "words": 0}
    m = metrics_from_records(recs, LABELS)
    assert m["faithfulness"] == f and "| faithful 0.7500 | rationale 0.7500 | grounded 0.7500" in summary_line(m)
    assert faithfulness_metrics([_record(None, "happy", {})], LABELS) is None


def test_annotated_rationale_grounding_scores_the_annotations_against_their_own_evidence():
    face_only = {"visual": "The face is smiling."}
    records = [
        Annotation("a", "test", "happy", evidence=face_only, reasoning="The face says happy."),      # grounded
        Annotation("b", "test", "happy", evidence=face_only, reasoning="A bright voice: happy."),     # voice unannotated
        Annotation("c", "test", "sad", evidence={}, reasoning="Taken together, sad."),               # speaks of no cue
        Annotation("d", "test", "sad", evidence=face_only),                                          # no reasoning: not scored
        Annotation("e", "test", "sad", evidence=EVIDENCE, reasoning="   "),                         # blank: not scored
    ]
    assert annotated_rationale_grounding(records) == pytest.approx(2 / 3)
    assert annotated_rationale_grounding(records[3:]) is None
    # shown beside the model's own grounding when the faithfulness block carries it
    recs = [_record(_report(EVIDENCE, "The voice says happy."), "happy", EVIDENCE)]
    m = metrics_from_records(recs, LABELS)
    m["faithfulness"]["rationale_grounding_annotated"] = 2 / 3
    assert "| grounded 1.0000 (annotations 0.6667)" in summary_line(m)
