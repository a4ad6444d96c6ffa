"""The CoT report format (README, top): target template, instructions and the parser."""
from __future__ import annotations

import json

import pytest

from minigpt4.common.cot import (
    UNKNOWN,
    build_cot_target,
    build_instruction,
    build_label_target,
    parse_report,
    report_evidence,
)
from minigpt4.common.modalities import DEFAULT_EMOTIONS, VIDEO_PLACEHOLDER

LABELS = DEFAULT_EMOTIONS


def test_round_trip_of_built_target():
    target = build_cot_target("sad", {"visual": "Eyes cast down.", "audio": "Low voice."}, "Both are subdued.", 0.8)
    parsed = parse_report(target, LABELS)
    assert parsed.format_ok and parsed.error is None
    assert parsed.emotion == "sad" and parsed.confidence == pytest.approx(0.8)
    lines = target.splitlines()
    assert lines[0] == "### Evidence Analysis" and "### Rationale" in lines and "### Prediction" in lines
    assert json.loads(lines[-1]) == {"emotion": "sad", "confidence": 0.8}


def test_target_folds_modalities_and_marks_missing_ones():
    target = build_cot_target("happy", {"visual": "Smiles.", "motion": "Nods.", "text": "Says thanks.", "audio": "Bright tone."})
    ev = report_evidence(target)
    assert ev["visual"] == "Smiles. Nods."
    assert ev["audio"] == "Bright tone. Says thanks."
    assert ev["physiological"] == "No facial action-unit evidence was observed."
    assert "point to happy" in target


def test_instructions_hold_the_placeholder_and_labels():
    for use_cot in (True, False):
        text = build_instruction(LABELS, use_cot)
        assert text.count(VIDEO_PLACEHOLDER) == 1
        assert all(label in text for label in LABELS)
    assert build_instruction(LABELS, True) != build_instruction(LABELS, False)
    label_target = build_label_target("angry")
    assert parse_report(label_target, LABELS, require_header=False).emotion == "angry"


def test_missing_header_is_a_format_failure():
    parsed = parse_report('The person is happy. {"emotion": "happy", "confidence": 0.9}', LABELS)
    assert not parsed.format_ok and parsed.emotion == UNKNOWN and "Prediction" in parsed.error
    # without the header requirement the same text parses
    assert parse_report('{"emotion": "happy"}', LABELS, require_header=False).emotion == "happy"


def test_free_text_is_never_guessed():
    parsed = parse_report("### Prediction\nThe emotion is clearly happy.", LABELS)
    assert not parsed.format_ok and parsed.emotion == UNKNOWN and parsed.confidence is None


@pytest.mark.parametrize(
    "body",
    [
        '{"emotion": "happy", "confidence": 0.9',  # unterminated
        "{'emotion': 'happy'}",  # python dict, not JSON
        '{"emotion": happy}',  # bare word
        '{"confidence": 0.9}',  # no emotion key
    ],
)
def test_malformed_json_is_a_format_failure(body):
    parsed = parse_report(f"### Rationale\nx\n### Prediction\n{body}", LABELS)
    assert not parsed.format_ok and parsed.emotion == UNKNOWN


def test_non_string_emotion_is_rejected():
    parsed = parse_report('### Prediction\n{"emotion": 3}', LABELS)
    assert not parsed.format_ok and "not a string" in parsed.error


def test_label_not_in_set():
    parsed = parse_report('### Prediction\n{"emotion": "bored", "confidence": 0.5}', LABELS)
    assert not parsed.format_ok and parsed.emotion == UNKNOWN and "label set" in parsed.error
    # without a label set any string is accepted (lower-cased)
    assert parse_report('### Prediction\n{"emotion": "Bored"}').emotion == "bored"


def test_last_json_after_last_header_wins():
    report = (
        "### Evidence Analysis\n- Visual: {\"emotion\": \"angry\"} shows in the brows\n"
        "### Prediction\n{\"emotion\": \"sad\", \"confidence\": 0.2}\n"
        "Second thoughts:\n### Prediction\n"
        "{\"emotion\": \"worried\", \"confidence\": 0.4} and finally {\"emotion\": \"neutral\", \"confidence\": 0.6}"
    )
    parsed = parse_report(report, LABELS)
    assert parsed.format_ok and parsed.emotion == "neutral" and parsed.confidence == pytest.approx(0.6)


def test_nested_and_non_emotion_objects_are_skipped():
    report = '### Prediction\n{"emotion": "happy", "meta": {"emotion": "sad"}} {"note": 1}'
    parsed = parse_report(report, LABELS)
    assert parsed.format_ok and parsed.emotion == "happy"


def test_confidence_is_clamped_and_validated():
    def conf(value: str):
        return parse_report('### Prediction\n{"emotion": "happy", "confidence": ' + value + "}", LABELS).confidence

    assert conf("1.7") == 1.0 and conf("-0.3") == 0.0 and conf("0.25") == pytest.approx(0.25)
    assert conf('"high"') is None and conf("true") is None and conf("NaN") is None and conf("Infinity") is None
    assert parse_report('### Prediction\n{"emotion": "happy"}', LABELS).confidence is None


def test_label_case_follows_the_label_set():
    labels = ("Neutral", "Happy", "Sad")
    parsed = parse_report('### Prediction\n{"emotion": " HAPPY "}', labels)
    assert parsed.format_ok and parsed.emotion == "Happy" and labels.index(parsed.emotion) == 1
