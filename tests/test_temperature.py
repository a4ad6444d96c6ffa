"""Temperature scaling of the head's confidence: hand-computed values, recovery of a known
temperature, the inverse used for the before/after report, and the run's calibration.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from minigpt4.evaluation import temperature as ts


def test_rescale_by_hand_and_invariants():
    # log-odds ln 4 halved at T = 2: odds 2:1
    np.testing.assert_allclose(ts.rescale([[0.8, 0.2]], 2.0), [[2 / 3, 1 / 3]], rtol=1e-12)
    p = np.random.default_rng(0).dirichlet(np.ones(6), size=50)
    np.testing.assert_allclose(ts.rescale(p, 1.0), p, rtol=1e-9)
    for t in (0.3, 2.5):
        q = ts.rescale(p, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
        assert (q.argmax(axis=1) == p.argmax(axis=1)).all()
        np.testing.assert_allclose(ts.rescale(q, 1 / t), p, rtol=1e-6)  # what `uncalibrated` relies on
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ts.rescale(p, 0.0)


def test_mean_nll_by_hand():
    p = [[0.5, 0.5], [0.9, 0.1]]
    assert ts.mean_nll(p, [0, 1]) == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)
    # at T = 2 the second row becomes 3:1
    assert ts.mean_nll(p, [0, 1], 2.0) == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)


def test_fit_recovers_a_known_over_confidence():
    """Labels drawn from softmax(z), probabilities reported as softmax(3 z): T = 3 is the truth."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 1.5, size=(4000, 6))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    gold = np.array([rng.choice(6, p=row) for row in true])
    over = np.exp(3 * z) / np.exp(3 * z).sum(axis=1, keepdims=True)
    fit = ts.fit_temperature(over, gold)
    assert fit.temperature == pytest.approx(3.0, rel=0.06)
    assert fit.n == 4000 and fit.nll_after < fit.nll_before
    assert fit.nll_after == pytest.approx(ts.mean_nll(over, gold, fit.temperature))
    # calibrated probabilities already: T stays near 1
    assert ts.fit_temperature(true, gold).temperature == pytest.approx(1.0, rel=0.06)
    with pytest.raises(ValueError, match="N >= 1"):
        ts.fit_temperature(np.zeros((0, 6)), [])


def test_fit_from_records_skips_clips_it_cannot_use():
    names = ["happy", "sad"]
    recs = [{"label_probs": {"happy": 0.9, "sad": 0.1}, "gold_emotion": "happy"},
            {"label_probs": {"happy": 0.8, "sad": 0.2}, "gold_emotion": "sad"},
            {"label_probs": None, "gold_emotion": "sad"},          # no head
            {"label_probs": {"happy": 0.5, "sad": 0.5}, "gold_emotion": None},  # unlabelled
            {"label_probs": {"happy": 0.5, "sad": 0.5}, "gold_emotion": "angry"}]  # outside the label set
    fit = ts.fit_from_records(recs, names)
    assert fit.n == 2
    assert fit.temperature == pytest.approx(ts.fit_temperature([[0.9, 0.1], [0.8, 0.2]], [0, 1]).temperature)
    with pytest.raises(ValueError, match="no clip with head probabilities"):
        ts.fit_from_records(recs[2:], names)


def test_uncalibrated_maps_head_confidences_back():
    t = 2.0
    rec = {"pred_emotion": "happy", "confidence": 2 / 3, "confidence_source": "head", "head_confidence": 2 / 3,
           "label_probs": {"happy": 2 / 3, "sad": 1 / 3}}
    back = ts.uncalibrated([rec, {"pred_emotion": "sad", "confidence": 0.7, "confidence_source": "report",
                                  "label_probs": None}], t)
    assert back[0]["confidence"] == pytest.approx(0.8) and back[0]["head_confidence"] == pytest.approx(0.8)
    assert back[0]["label_probs"]["sad"] == pytest.approx(0.2)
    assert back[1]["confidence"] == 0.7  # the LLM's own number is left as written
    assert rec["confidence"] == 2 / 3  # the input is not changed


def test_calibration_file_round_trip(tmp_path: Path):
    ckpt = tmp_path / "checkpoints" / "ckpt_00000010"
    ckpt.mkdir(parents=True)
    fit = ts.TemperatureFit(temperature=1.7, n=40, nll_before=0.9, nll_after=0.6)
    path = ts.save_calibration(tmp_path, fit, ckpt, "val")
    data = json.loads(path.read_text())
    assert data["fitted_on_split"] == "val" and data["n"] == 40 and path.name == ts.CALIBRATION_FILE
    assert ts.load_temperature(tmp_path, ckpt) == pytest.approx(1.7)
    other = tmp_path / "checkpoints" / "ckpt_00000020"
    other.mkdir()
    assert ts.load_temperature(tmp_path, other) is None  # fitted for another checkpoint: not applied
    assert ts.load_temperature(tmp_path / "checkpoints", ckpt) is None  # no file
    path.write_text("{\"temp\": 2}")
    with pytest.raises(ValueError, match=r"calibration\.json: not a calibration record"):
        ts.load_temperature(tmp_path, ckpt)
