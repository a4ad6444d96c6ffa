"""`run.calibrate`: training fits the head's temperature on the validation clips for each new best
checkpoint (calibration.json), and hero-eval applies it unless told not to."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from minigpt4.cli import evaluate as eval_cli
from minigpt4.cli.train import run as train_run
from minigpt4.common.checkpoint import resolve_checkpoint
from minigpt4.evaluation import records as eu
from minigpt4.evaluation import temperature as ts
from tests.test_eval import LABELS, write_tiny_config, write_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(root: Path, llm_dir: Path, labels: Path, **run: object) -> Path:
    cfg = write_tiny_config(root, llm_dir, labels, max_epoch=2, valid_splits=["val"], val_max_new_tokens=8,
                            **run)
    train_run(["--cfg-path", str(cfg)])
    return cfg


def test_training_writes_the_best_checkpoints_temperature_and_eval_applies_it(tmp_path, tiny_llm_dir):
    labels = write_tiny_dataset(tmp_path / "data", {"train": 8, "val": 6, "test": 7}, unlabeled_test=1)
    cfg = _train(tmp_path, tiny_llm_dir, labels)
    run = tmp_path / "run"
    saved = json.loads((run / ts.CALIBRATION_FILE).read_text())
    best = resolve_checkpoint(run, prefer_best=True)
    assert saved["checkpoint"] == str(best.resolve()) and saved["fitted_on_split"] == "val" and saved["n"] == 6
    assert saved["nll_after"] <= saved["nll_before"]

    base = ["--cfg-path", str(cfg), "--ckpt", str(run), "--use_cls_head"]
    # the reference: the same fit on the val split's head probabilities read by hero-eval itself
    val = eval_cli.run(base + ["--split", "val", "--out", str(tmp_path / "val_head")])
    assert val["temperature"] is None  # never applied to the split it was fitted on
    expected = ts.fit_from_records(eu.read_jsonl(tmp_path / "val_head" / "predictions.jsonl"), LABELS)
    assert saved["temperature"] == pytest.approx(expected.temperature, rel=1e-4)
    assert saved["temperature"] != pytest.approx(1.0, abs=1e-3)

    plain = eval_cli.run(base + ["--no_calibration"])
    applied = eval_cli.run(base)
    assert plain["temperature"] is None
    t = applied["temperature"]
    assert t["source"] == "calibration.json" and t["temperature"] == pytest.approx(saved["temperature"])
    assert applied["calibration_uncalibrated"]["ece"] == pytest.approx(plain["calibration"]["ece"], abs=1e-5)
    before = eu.read_jsonl(run / "eval_test_clshead_uncalibrated" / "predictions.jsonl")
    after = eu.read_jsonl(run / "eval_test_clshead" / "predictions.jsonl")
    assert [r["pred_emotion"] for r in after] == [r["pred_emotion"] for r in before]
    for b, a in zip(before, after):
        scaled = ts.rescale([[b["label_probs"][n] for n in LABELS]], t["temperature"])[0]
        assert a["confidence"] == pytest.approx(float(scaled[LABELS.index(a["pred_emotion"])]), abs=1e-5)
    with pytest.raises(SystemExit):
        eval_cli.parse_args(base + ["--calibrate", "--no_calibration"])


def test_calibrate_false_writes_no_temperature(tmp_path, tiny_llm_dir):
    labels = write_tiny_dataset(tmp_path / "data", {"train": 8, "val": 6, "test": 3})
    _train(tmp_path, tiny_llm_dir, labels, calibrate=False)
    assert resolve_checkpoint(tmp_path / "run", prefer_best=True).is_dir()
    assert not (tmp_path / "run" / ts.CALIBRATION_FILE).exists()
