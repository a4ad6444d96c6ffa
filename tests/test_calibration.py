"""Calibration metrics (minigpt4/evaluation/calibration.py) against hand-computed values."""
from __future__ import annotations

import pytest

from minigpt4.evaluation.calibration import (
    brier_score,
    calibration_from_records,
    calibration_metrics,
    expected_calibration_error,
    reliability_bins,
    selective_accuracy,
)
from minigpt4.evaluation.metrics import metrics_from_records, summary_line

CONF = [0.95, 0.85, 0.65, 0.62, 0.3]
HIT = [True, True, False, True, False]


def test_ece_by_hand():
    # bins: [0.9,1): 0.95 right (gap .05); [0.8,.9): .85 right (.15); [0.6,.7): .65 wrong + .62 right
    # (mean conf .635, acc .5: gap .135, two clips); [0.3,.4): .3 wrong (.3)
    assert expected_calibration_error(CONF, HIT) == pytest.approx((0.05 + 0.15 + 2 * 0.135 + 0.3) / 5)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0  # 1.0 falls in the last bin
    assert expected_calibration_error([1.0, 1.0], [True, False]) == pytest.approx(0.5)
    assert expected_calibration_error([], []) is None


def test_reliability_bins_by_hand():
    rows = reliability_bins(CONF, HIT)
    assert len(rows) == 10 and sum(r["n"] for r in rows) == 5
    assert rows[6] == {"lo": 0.6, "hi": 0.7, "n": 2, "accuracy": 0.5, "confidence": pytest.approx(0.635)}
    assert rows[0] == {"lo": 0.0, "hi": 0.1, "n": 0, "accuracy": None, "confidence": None}
    assert rows[9]["n"] == 1 and rows[9]["accuracy"] == 1.0


def test_brier_top_label_and_multiclass_by_hand():
    top = (0.05 ** 2 + 0.15 ** 2 + 0.65 ** 2 + 0.38 ** 2 + 0.3 ** 2) / 5
    assert brier_score(CONF, HIT) == pytest.approx(top)
    probs = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]
    # clip 0: gold 0 -> .3^2 + .2^2 + .1^2 = .14; clip 1: gold 2 (predicted 1, wrong) -> .2^2 + .5^2 + .7^2 = .78
    assert brier_score([0.7, 0.5], [True, False], probs, [0, 2]) == pytest.approx((0.14 + 0.78) / 2)
    with pytest.raises(ValueError, match="probs must be"):
        brier_score([0.7], [True], probs, [0, 2])


def test_selective_accuracy_by_hand():
    assert selective_accuracy(CONF, HIT, 0.8) == pytest.approx(0.75)  # the 4 surest: right, right, wrong, right
    assert selective_accuracy(CONF, HIT, 1.0) == pytest.approx(0.6)
    assert selective_accuracy(CONF, HIT, 0.2) == 1.0
    with pytest.raises(ValueError, match="coverage"):
        selective_accuracy(CONF, HIT, 0.0)


def test_bad_confidence_is_an_error():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        expected_calibration_error([1.2], [True])
    with pytest.raises(ValueError, match="one length"):
        expected_calibration_error([0.5, 0.4], [True])


def test_calibration_block_separates_right_and_wrong():
    cal = calibration_metrics(CONF, HIT)
    assert cal["mean_confidence_correct"] == pytest.approx((0.95 + 0.85 + 0.62) / 3)
    assert cal["mean_confidence_wrong"] == pytest.approx((0.65 + 0.3) / 2)
    assert cal["selective_accuracy@0.8"] == pytest.approx(0.75) and cal["brier_kind"] == "top_label"


def _record(gold, pred, conf, probs=None):
    return {"video_id": f"{gold}-{pred}-{conf}", "gold_emotion": gold, "pred_emotion": pred, "confidence": conf,
            "format_ok": pred != "unknown", "label_probs": probs}


def test_records_use_multiclass_brier_when_every_record_has_the_distribution():
    labels = ["happy", "sad", "angry"]
    recs = [_record("happy", "happy", 0.7, {"happy": 0.7, "sad": 0.2, "angry": 0.1}),
            _record("angry", "sad", 0.5, {"happy": 0.2, "sad": 0.5, "angry": 0.3}),
            _record("sad", "unknown", None, {"happy": 0.3, "sad": 0.3, "angry": 0.4}),  # no parsed prediction
            _record(None, "sad", 0.9, {"happy": 0.0, "sad": 0.9, "angry": 0.1})]        # unlabelled
    cal = calibration_from_records(recs, labels)
    assert cal["n_clips"] == 2 and cal["n_left_out"] == 1 and cal["brier_kind"] == "multiclass"
    assert cal["brier"] == pytest.approx((0.14 + 0.78) / 2)
    assert cal["ece"] == pytest.approx((0.3 + 0.5) / 2)
    recs[0]["label_probs"] = None
    assert calibration_from_records(recs, labels)["brier_kind"] == "top_label"
    m = metrics_from_records(recs, labels)
    assert m["calibration"]["n_clips"] == 2
    assert "| ECE 0.4000 | Brier " in summary_line(m)
    assert calibration_from_records([_record("sad", "unknown", None)], labels) is None
