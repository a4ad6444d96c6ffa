"""Issue 20 cases 6-8: an impossible config value is an error naming its key before anything is
built; what validation would fail on (a broken val file, a `run.best_metric` typo) fails before
the first epoch; hero-train ends an expected error with one line (the traceback behind --debug)."""
from __future__ import annotations

from pathlib import Path

import pytest

from minigpt4.cli.train import build_runner, main
from minigpt4.cli.train import run as train_run
from minigpt4.common.config import ConfigError, load_config
from tests.toy_components import write_toy_config

REPO = Path(__file__).resolve().parents[1]
HERO_CFG = REPO / "configs" / "models" / "hero.yaml"


def _nothing_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import minigpt4.runners.components as components

    def boom(*args, **kwargs):
        raise AssertionError("a component was built before the config was checked")

    monkeypatch.setattr(components, "build_components", boom)


@pytest.mark.parametrize("option, message", [
    ("run.batch_size_train=-4", "run.batch_size_train must be > 0, got -4"),
    ("run.iters_per_epoch=-1", "run.iters_per_epoch must be >= 1 or null, got -1"),
    ("run.max_epoch=0", "run.max_epoch must be > 0, got 0"),
    ("run.accum_grad_iters=0", "run.accum_grad_iters must be > 0, got 0"),
    ("run.warmup_steps=-5", "run.warmup_steps must be >= 0, got -5"),
    ("model.use_cls_head.enabled=false", "model.use_cls_head must be true or false, got {'enabled': False}"),
    ("model.lambda_stmil=abc", "model.lambda_stmil=abc: expects a number"),
    ("run.init_lr=fast", "run.init_lr=fast: expects a number"),
    ("run.batch_size_train=0", "run.batch_size_train must be > 0, got 0"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1), got 1.5"),
    ("model.llm.path=/nonexistent", "model.llm.path='/nonexistent': no such local folder, and not a hub id"),
    ("run.batch_size_eval=-1", "run.batch_size_eval must be > 0, got -1"),
    ("run.init_lr=.nan", "run.init_lr must be a finite number"),
    ("run.device=gpu", "run.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("model.llm.dtype=fp8", "model.llm.dtype must be one of auto"),
    ("model.use_cls_head=false", "model.lambda_cls > 0 needs the classification head"),
    ("model.evidence_max_len=48", "model.evidence_max_len must be <= model.evidence_decoder.max_len - 1 = 47"),
    ("model.frame_contrast=[motion,voice]", "model.frame_contrast names unknown modalities ['voice']"),
    ("model.frame_contrast=7", "model.frame_contrast=7: expects true or false"),
])
def test_impossible_values_stop_hero_train_naming_the_key(tmp_path: Path, capsys, monkeypatch, option: str,
                                                          message: str) -> None:
    """Case 6 (and 8): each used to train 0 steps, be coerced, or crash later with a traceback not
    naming the key; now one line `error: ...` naming it, exit 1, nothing built, no run folder."""
    _nothing_is_built(monkeypatch)
    out = tmp_path / "run"
    code = main(["--cfg-path", str(HERO_CFG), "--options", f"run.output_dir={out}", option])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("text, message", [("model:\n  lambda_stmil: abc\n", "model.lambda_stmil must be a number"),
                                           ("run:\n  init_lr: fast\n", "run.init_lr must be a number")])
def test_wrong_types_in_a_yaml_file_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"includes: [{HERO_CFG}]\n{text}")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_hand_made_config_is_checked_by_the_runner_too(tmp_path: Path) -> None:
    """`accum_grad_iters=0` used to become 1 silently in the runner; a config not from load_config is checked."""
    cfg = load_config(write_toy_config(tmp_path))
    cfg.run.accum_grad_iters = 0
    with pytest.raises(ConfigError, match=r"run\.accum_grad_iters must be > 0, got 0"):
        build_runner(cfg)


def test_a_bad_dataset_value_fails_before_any_dataset_or_model_is_built(monkeypatch) -> None:
    from minigpt4.datasets.builders.hero_builder import HEROBuilder

    def boom(self):
        raise AssertionError("datasets were built before their config was checked")

    monkeypatch.setattr(HEROBuilder, "build_datasets", boom)
    with pytest.raises(ConfigError, match=r"datasets\.hero_dataset: modality_dropout\[motion\] must be in \[0, 1\]"):
        train_run(["--cfg-path", str(HERO_CFG), "--options", "datasets.hero_dataset.modality_dropout=1.5"])


def test_debug_keeps_the_traceback(tmp_path: Path, monkeypatch) -> None:
    args = ["--cfg-path", str(HERO_CFG), "--options", "run.max_epoch=0"]
    with pytest.raises(ConfigError, match="run.max_epoch"):
        main([*args, "--debug"])
    monkeypatch.setenv("HERO_DEBUG", "1")
    with pytest.raises(ConfigError, match="run.max_epoch"):
        main(args)


def test_best_metric_typo_fails_before_the_first_step(tmp_path: Path, capsys) -> None:
    """Case 7: it used to fail after the first epoch, losing it."""
    cfg = write_toy_config(tmp_path, run={"best_metric": "los"})
    code = main(["--cfg-path", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1 and "error: run.best_metric='los' is not a term validation produces" in err, err
    assert "loss, loss_estimator, loss_penalty" in err
    assert not (tmp_path / "run").exists()  # no config.yaml, log or checkpoint: nothing ran


def test_hero_validation_problems_fail_at_start(tmp_path: Path, tiny_llm_dir: Path) -> None:
    """Case 7 on the real model: a generated-term typo and a corrupt val file are errors before
    epoch 1; a right term trains and picks the best checkpoint by it."""
    from minigpt4.datasets.feature_io import FeatureFileError
    from tests.test_eval import write_tiny_config, write_tiny_dataset

    labels = write_tiny_dataset(tmp_path / "data", {"train": 4, "val": 3})
    cfg = write_tiny_config(tmp_path, tiny_llm_dir, labels, valid_splits=["val"], val_max_new_tokens=4)
    with pytest.raises(ConfigError, match=r"run.best_metric='gen_acuracy'.*gen_accuracy"):
        train_run(["--cfg-path", str(cfg), "--options", "run.best_metric=gen_acuracy"])
    assert not (tmp_path / "run").exists()
    runner = train_run(["--cfg-path", str(cfg), "--options", "run.best_metric=gen_format_compliance"])
    assert runner.best is not None and runner.best["metric"] == "gen_format_compliance"
    bad = labels.parent / "features" / "val_002.npz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "run2"
    with pytest.raises(FeatureFileError, match="val_002.npz"):
        train_run(["--cfg-path", str(cfg), "--options", f"run.output_dir={out}"])
    assert not out.exists()


def test_a_used_run_folder_is_refused_before_anything_is_built(tmp_path: Path, capsys, monkeypatch) -> None:
    """Case 1 at the entry point: the refusal comes before minutes of building, as one line."""
    _nothing_is_built(monkeypatch)
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text('{"step": 10}\n')
    code = main(["--cfg-path", str(HERO_CFG), "--options", f"run.output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "already holds a run (a log.txt)" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["log.txt"]
