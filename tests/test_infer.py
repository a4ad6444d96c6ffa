"""hero-infer (`minigpt4.cli.infer`, `python infer_hero.py`) and `minigpt4.inference` on a tiny trained run.

The run (tests/infer_utils.py) is trained on features extracted from real videos by tiny
encoders, so inference extracts new videos exactly as a user's run would: with the settings the
run recorded in extraction.json at train start.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from minigpt4.cli.infer import main
from minigpt4.common.modalities import EXPERT_ORDER, STACK_ORDER
from minigpt4.inference import ClipResult, InferenceSession, format_report
from tests.infer_utils import EVAL_BATCH, LABELS, MAX_NEW_TOKENS, tiny_video_run  # noqa: F401 (module fixture)

REPO = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(ClipResult)]


def _eval_records(eval_dir: Path) -> dict[str, dict]:
    lines = (eval_dir / "predictions.jsonl").read_text().splitlines()
    return {r["video_id"]: r for r in map(json.loads, lines)}


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _assert_same_prediction(got: dict, rec: dict) -> None:
    """An inference result equals hero-eval's predictions.jsonl line for the same clip."""
    assert got["report"] == rec["report"]
    assert got["emotion"] == (rec["pred_emotion"] if rec["format_ok"] else None)
    assert got["confidence"] == rec["confidence"]
    assert got["label_probs"] == rec["label_probs"]
    assert got["evidence"] == rec["evidence"]
    assert got["modality_weights"] == rec["modality_weights"]
    assert got["synergy_score"] == rec["synergy_score"]


def _args(run, *extra: str) -> list[str]:
    return ["--ckpt", str(run.run_dir), "--max_new_tokens", str(MAX_NEW_TOKENS), "--batch_size", str(EVAL_BATCH),
            *extra]


# ----------------------------------------------------------------- extraction.json
def test_training_records_the_extraction_settings(tiny_video_run):
    from minigpt4.datasets.feature_io import read_features

    run = tiny_video_run
    record = json.loads((run.run_dir / "extraction.json").read_text())
    meta = read_features(run.features_dir / "train_a.npz", dtype=None).meta
    assert record["settings"] == json.loads(meta["settings"])  # the first training file's, as recorded
    assert record["source_file"] == str(run.features_dir / "train_a.npz")
    assert record["modalities"] == meta["modalities"].split(",")
    assert record["settings"]["clip"]["path"] == str(run.encoders["clip"])


def test_no_extraction_settings_without_extracted_features(tmp_path):
    from minigpt4.datasets.feature_io import write_features
    from minigpt4.runners.extraction_record import write_extraction_settings

    paths = []
    for i in range(3):  # what the synthetic demo writes: arrays, no meta_settings
        paths.append(tmp_path / f"c{i}.npz")
        write_features(paths[-1], {"clip": np.ones((2, 4), np.float32)}, transcript="hi")
    concat = SimpleNamespace(datasets=[SimpleNamespace(paths=paths[:1]), SimpleNamespace(paths=paths[1:])])
    assert write_extraction_settings(concat, tmp_path / "run") is None
    assert not (tmp_path / "run").exists()
    write_features(paths[2], {"clip": np.ones((2, 4), np.float32)}, meta={"settings": '{"clip": {"fps": "1.0"}}',
                                                                          "modalities": "clip"})
    written = write_extraction_settings(concat, tmp_path / "run")
    assert json.loads(written.read_text())["settings"] == {"clip": {"fps": "1.0"}}


def test_recorded_settings_rebuild_the_extraction_config(tiny_video_run):
    from minigpt4.extraction.rerun import modality_settings
    from minigpt4.inference.extraction_plan import config_from_settings

    settings = json.loads((tiny_video_run.run_dir / "extraction.json").read_text())["settings"]
    cfg = config_from_settings(settings)
    assert modality_settings(cfg, list(settings)) == settings
    assert cfg.text.whisper.max_new_tokens == 12 and isinstance(cfg.audio.num_layers, int)
    bad = {**settings, "clip": {**settings["clip"], "resolution": "7"}}
    config_from_settings(bad)  # a setting this version does not record is left to its default
    with pytest.raises(ValueError, match="cannot be made"):
        config_from_settings({**settings, "smell": {"path": "nose"}})


# ----------------------------------------------------------------- the command line
def test_help_does_not_import_torch():
    code = ("import runpy, sys\nsys.argv = ['infer_hero.py', '--help']\n"
            f"try:\n    runpy.run_path({str(REPO / 'infer_hero.py')!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', 'torch' in sys.modules, 'transformers' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert "--ckpt RUN_DIR" in proc.stdout and "--extract-options" in proc.stdout
    assert "HEAVY False False" in proc.stdout


def test_videos_end_to_end_with_a_corrupt_one(tiny_video_run, capsys):
    run = tiny_video_run
    code = main(_args(run, "--json", "--video", *map(str, run.videos), str(run.corrupt),
                      "--extract-options", "extract.num_workers=0"))
    out, err = capsys.readouterr()
    assert code == 1  # one video failed; the others were predicted
    results = _json_lines(out)  # stdout: only JSON lines
    assert [r["video_id"] for r in results] == [v.stem for v in run.videos]
    assert [r["source"] for r in results] == [str(v) for v in run.videos]
    failed = [line for line in err.splitlines() if line.startswith(f"hero-infer: {run.corrupt}: ")]
    assert len(failed) == 1 and "cannot open" in failed[0]
    assert "2 clip(s) predicted, 1 failed" in err
    evals = _eval_records(run.eval_dir)
    for r in results:
        assert list(r) == FIELDS
        assert set(r["modality_weights"]) == set(EXPERT_ORDER) and set(r["evidence_source"]) == set(EXPERT_ORDER)
        assert set(r["evidence_source"].values()) <= {"generated", "annotated", "measured", "none"}
        assert set(r["present_modalities"]) <= set(STACK_ORDER) and "visual" in r["present_modalities"]
        assert set(r["label_probs"]) == set(LABELS) and sum(r["label_probs"].values()) == pytest.approx(1.0)
        assert r["timings"]["extract_s"] > 0 and r["timings"]["model_s"] > 0
        assert isinstance(r["report"], str) and r["report"].startswith("### Evidence Analysis")
        # extracted here exactly as for training and evaluation: the same prediction as hero-eval's
        _assert_same_prediction(r, evals[r["video_id"]])
    by_id = {r["video_id"]: r for r in results}
    assert "audio" in by_id["test_c"]["present_modalities"] and by_id["test_c"]["transcript"]
    assert "audio" not in by_id["test_d"]["present_modalities"] and by_id["test_d"]["transcript"] == ""


def test_features_give_eval_predictions_and_text_reports(tiny_video_run, capsys):
    run = tiny_video_run
    feats = [run.features_dir / f"{v.stem}.npz" for v in run.videos]
    assert main(_args(run, "--features", *map(str, feats))) == 0
    out, _ = capsys.readouterr()
    assert out.count("\n== ") + out.startswith("== ") == 2 and "evidence (expert, source, weight, sentence):" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("hero-infer: 2 clip(s) predicted, 0 failed, ") and "extract 0.0 s" in summary
    assert main(_args(run, "--json", "--features", *map(str, feats))) == 0
    results = _json_lines(capsys.readouterr().out)
    evals = _eval_records(run.eval_dir)
    assert [r["video_id"] for r in results] == list(evals)
    for r in results:
        _assert_same_prediction(r, evals[r["video_id"]])


def test_parsed_predictions_and_measured_confidence_equal_eval(tiny_video_run, tmp_path, monkeypatch, capsys):
    """With reports that parse (the LLM's text completed by a fixed prediction), emotion and the
    head-measured confidence of hero-infer equal hero-eval's, clip for clip."""
    from minigpt4.cli.evaluate import run as eval_run
    from minigpt4.models.hero.llm_reasoner import LLMReasoner

    original = LLMReasoner.generate

    def with_prediction(self, *args, **kwargs):
        texts = original(self, *args, **kwargs)
        return [f'{t}\n### Prediction\n{{"emotion": "{LABELS[len(t) % len(LABELS)]}", "confidence": 0.5}}'
                for t in texts]

    monkeypatch.setattr(LLMReasoner, "generate", with_prediction)
    run = tiny_video_run
    out_dir = tmp_path / "eval"
    eval_run(["--cfg-path", str(run.run_dir / "config.yaml"), "--ckpt", str(run.run_dir), "--split", "test",
              "--max_new_tokens", str(MAX_NEW_TOKENS), "--batch_size", str(EVAL_BATCH), "--out", str(out_dir)])
    capsys.readouterr()
    feats = [run.features_dir / f"{v.stem}.npz" for v in run.videos]
    assert main(_args(run, "--json", "--features", *map(str, feats))) == 0
    results = _json_lines(capsys.readouterr().out)
    evals = _eval_records(out_dir)
    for r in results:
        rec = evals[r["video_id"]]
        assert rec["format_ok"] and r["emotion"] in LABELS and r["confidence_source"] == "head"
        assert r["confidence"] == pytest.approx(r["label_probs"][r["emotion"]], abs=1e-3)
        _assert_same_prediction(r, rec)


def test_encoder_width_mismatch_fails_before_decoding_or_loading(tiny_video_run, monkeypatch, capsys):
    import minigpt4.extraction.pipeline as pipeline
    import minigpt4.inference.loading as loading

    def must_not_run(*args, **kwargs):
        raise AssertionError("reached after a width mismatch")

    monkeypatch.setattr(pipeline, "extract", must_not_run)
    monkeypatch.setattr(loading, "load_run", must_not_run)
    run = tiny_video_run
    # the projected CLIP embedding is 24 wide; the run was trained on the 48-wide pooled output
    code = main(_args(run, "--video", str(run.videos[0]), "--extract-options", "visual.output=image_embeds"))
    err = capsys.readouterr().err
    assert code == 1
    assert "error: " in err and "clip features would be 24 wide" in err and "model.visual_dim = 48" in err
    code = main(_args(run, "--video", str(run.videos[0]), "--extract-options", "visual.fsp=2"))
    assert code == 1 and "visual.fps" in capsys.readouterr().err  # a mistyped key names the nearest one


# ----------------------------------------------------------------- the session API (the web app's)
def test_session_without_extraction_settings_reads_features_only(tiny_video_run, tmp_path):
    run = tiny_video_run
    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy, ignore=shutil.ignore_patterns("eval_*", "tensorboard", "extraction.json"))
    session = InferenceSession.from_run(copy / "checkpoints", batch_size=EVAL_BATCH, max_new_tokens=4)
    assert session.run_dir == copy and not session.can_extract and session.label_names == LABELS
    seen = []
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a feature file")
    results, failures = session.predict_features([run.features_dir / "test_c.npz", bad],
                                                 progress=lambda msg, frac: seen.append((msg, frac)))
    assert [r.video_id for r in results] == ["test_c"] and seen[-1][1] == pytest.approx(1.0)
    assert [f.source for f in failures] == [str(bad)] and failures[0].reason
    text = format_report(results[0])
    assert text.startswith("== test_c") and "transcript:" in text and "report:" in text
    with pytest.raises(ValueError, match="extraction.json"):
        session.predict_videos(run.videos, tmp_path / "work")


def test_video_listing_and_ids(tmp_path):
    from minigpt4.cli.infer import list_video_dir
    from minigpt4.inference.videos import job_ids

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in (tmp_path / "a" / "x.mp4", tmp_path / "b" / "x.MOV", tmp_path / "b" / "notes.txt"):
        p.write_bytes(b"")
    videos = list_video_dir(str(tmp_path))
    assert videos == [tmp_path / "a" / "x.mp4", tmp_path / "b" / "x.MOV"]
    assert job_ids(videos) == ["x", "x__1"]  # two videos with one stem get two feature files
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no video"):
        list_video_dir(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        list_video_dir(str(tmp_path / "missing"))
