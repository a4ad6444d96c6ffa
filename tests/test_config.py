"""Config loading: includes, run defaults, checked and typed --options, atomic saving."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from minigpt4.common import atomic_io
from minigpt4.common.config import (RUN_DEFAULTS, ConfigError, add_config_args, apply_options, load_config,
                                    parse_value, save_config)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    write(tmp_path / "parts" / "base.yaml", "model:\n  arch: base\n  hidden_dim: 64\n  llm: {path: a, lora_r: 8}\n")
    write(tmp_path / "parts" / "more.yaml", "includes: [base.yaml]\nmodel:\n  hidden_dim: 128\n  num_queries: 4\n")
    return write(tmp_path / "main.yaml",
                 "includes:\n  - parts/more.yaml\n  - configs/datasets/hero_dataset.yaml\n"
                 "model:\n  arch: hero\nrun:\n  max_epoch: 3\n  init_lr: 3e-4\n")


def test_includes_merge_in_order_and_own_keys_win(cfg_file: Path):
    cfg = load_config(cfg_file)
    assert "includes" not in cfg
    assert cfg.model.arch == "hero"  # own key beats included
    assert cfg.model.hidden_dim == 128  # later include (more.yaml) beats its own include (base.yaml)
    assert cfg.model.llm.lora_r == 8 and cfg.model.num_queries == 4
    # resolved against the repository root, since it is not next to main.yaml
    assert cfg.datasets.hero_dataset.max_dim == 1024


def test_run_defaults_fill_gaps_but_file_values_win(cfg_file: Path):
    cfg = load_config(cfg_file)
    assert cfg.run.max_epoch == 3 and cfg.run.init_lr == pytest.approx(3e-4)
    assert cfg.run.output_dir == "output/hero_pretrain" and cfg.run.runner == "runner_base"
    assert set(RUN_DEFAULTS) <= set(cfg.run)


def test_missing_include_and_cycles_name_the_files(tmp_path: Path):
    bad = write(tmp_path / "a.yaml", "includes: [nowhere.yaml]\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: included file 'nowhere\.yaml' not found"):
        load_config(bad)
    write(tmp_path / "x.yaml", "includes: [y.yaml]\n")
    write(tmp_path / "y.yaml", "includes: [x.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(write(tmp_path / "bad.yaml", "model: [unclosed\n"))


@pytest.mark.parametrize("text,expected", [
    ("3", 3), ("1e-4", 1e-4), ("-2.5E3", -2500.0), ("0.1", 0.1), ("true", True), ("False", False),
    ("null", None), ("[a, 1]", ["a", 1]), ("{x: 1}", {"x": 1}), ("hello", "hello"), ("'3'", "3"), ("", ""),
    ("a=b", "a=b"),
])
def test_parse_value(text, expected):
    assert parse_value(text) == expected and type(parse_value(text)) is type(expected)


def test_options_are_typed(cfg_file: Path):
    cfg = load_config(cfg_file, ["run.init_lr=1e-5", "run.max_epoch=7", "run.evaluate=true",
                                 "run.train_splits=[train,val]", "model.llm.path=2024", "run.iters_per_epoch=50",
                                 "run.resume_ckpt_path=null", "run.max_grad_norm=2", "model.hidden_dim=32"])
    assert cfg.run.init_lr == 1e-5 and isinstance(cfg.run.init_lr, float)
    assert cfg.run.max_epoch == 7 and cfg.run.evaluate is True
    assert list(cfg.run.train_splits) == ["train", "val"]
    assert cfg.model.llm.path == "2024"  # a text key keeps the literal text
    assert cfg.run.iters_per_epoch == 50 and cfg.run.resume_ckpt_path is None
    assert cfg.run.max_grad_norm == 2.0 and isinstance(cfg.run.max_grad_norm, float)
    assert cfg.model.hidden_dim == 32


def test_unknown_key_names_the_nearest_valid_key(cfg_file: Path):
    with pytest.raises(ConfigError) as exc:
        load_config(cfg_file, ["run.max_epochs=3"])
    assert "'run.max_epochs'" in str(exc.value) and "did you mean 'run.max_epoch'" in str(exc.value)
    with pytest.raises(ConfigError, match="did you mean 'datasets.hero_dataset.max_len.audio'"):
        load_config(cfg_file, ["datasets.hero_dataset.max_len.audoi=3"])
    with pytest.raises(ConfigError, match="valid keys under 'model'"):
        load_config(cfg_file, ["model.zzzzzzzzzzzzzzzzzzzz=1"])


def test_bad_overrides(cfg_file: Path):
    for opt, pattern in [("run.max_epoch=abc", "expects a number"), ("run.evaluate=maybe", "expects true or false"),
                         ("run.seed.x=1", "is a value"), ("model=3", "is a section"), ("noequals", "key.path=value"),
                         ("run.train_splits.5=x", "not a valid index")]:
        with pytest.raises(ConfigError, match=pattern):
            load_config(cfg_file, [opt])


def test_keys_below_a_null_are_open_slots(cfg_file: Path):
    cfg = load_config(cfg_file, ["datasets.hero_dataset.build_info.shards.train=a.tar",
                                 "datasets.hero_dataset.build_info.shards.val=b.tar"])
    assert dict(cfg.datasets.hero_dataset.build_info.shards) == {"train": "a.tar", "val": "b.tar"}
    # a path may be replaced by a split -> file mapping
    cfg = load_config(cfg_file, ["datasets.hero_dataset.build_info.annotations.storage={train: a.json, val: b.json}"])
    assert dict(cfg.datasets.hero_dataset.build_info.annotations.storage) == {"train": "a.json", "val": "b.json"}


def test_save_config_roundtrip_and_is_atomic(cfg_file: Path, tmp_path: Path, monkeypatch):
    cfg = load_config(cfg_file, ["run.seed=5"])
    out = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert OmegaConf.to_container(OmegaConf.load(out)) == OmegaConf.to_container(cfg)
    before = out.read_text()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_io.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_config(load_config(cfg_file, ["run.seed=6"]), out)
    assert out.read_text() == before  # the old file is intact
    assert os.listdir(out.parent) == ["config.yaml"]  # no temp file left behind


def test_cli_helper(cfg_file: Path):
    parser = add_config_args(argparse.ArgumentParser())
    args = parser.parse_args(["--cfg-path", str(cfg_file), "--options", "run.seed=1", "model.hidden_dim=8"])
    cfg = load_config(args.cfg_path, args.options)
    assert cfg.run.seed == 1 and cfg.model.hidden_dim == 8 and "hero_dataset" in cfg.datasets
    assert apply_options(cfg, ["run.seed=2"]).run.seed == 2


def test_hero_train_rejects_unknown_option(tmp_path: Path):
    from minigpt4.cli.train import run as train_run
    from tests.toy_components import write_toy_config

    path = write_toy_config(tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'run.batch_size_train'"):
        train_run(["--cfg-path", str(path), "--options", "run.batch_size_trian=4"])


def test_unknown_key_in_a_yaml_file_names_the_file_and_the_nearest_key(cfg_file: Path, tmp_path: Path):
    """A misspelled key in a file (not only in --options) is an error, wherever it sits."""
    for text, key, near in [("model:\n  lambda_stmill: 0.5\n", "model.lambda_stmill", "model.lambda_stmil"),
                            ("model:\n  llm: {lora_rr: 4}\n", "model.llm.lora_rr", "model.llm.lora_r"),
                            ("run:\n  max_epochs: 2\n", "run.max_epochs", "run.max_epoch")]:
        bad = write(tmp_path / "parts" / "typo.yaml", text)
        main = write(tmp_path / "typo_main.yaml", f"includes: [{cfg_file}, {bad}]\n")
        with pytest.raises(ConfigError) as err:
            load_config(main)
        msg = str(err.value)
        assert str(bad) in msg and repr(key) in msg and f"did you mean {near!r}" in msg, msg


@pytest.mark.parametrize("text, pattern", [
    ("model:\n  hidden_dim: wide\n", r"model\.hidden_dim must be an integer"),
    ("model:\n  video_dim: 0\n", r"model\.video_dim must be > 0"),
    ("model:\n  dropout: 1.5\n", r"model\.dropout must be in \[0, 1\)"),
    ("model:\n  include_synergy: 3\n", r"model\.include_synergy must be true or false"),
    ("model:\n  brief_source: answers\n", r"model\.brief_source must be one of generated, golden, none"),
    ("model:\n  evidence_decoder: {num_heads: 0}\n", r"model\.evidence_decoder\.num_heads must be > 0"),
    ("run:\n  batch_size_train: -2\n", r"run\.batch_size_train must be > 0"),
    ("run:\n  amp: fp8\n", r"run\.amp must be one of"),
])
def test_wrong_types_and_impossible_values_name_the_key(cfg_file: Path, tmp_path: Path, text: str, pattern: str):
    main = write(tmp_path / "bad_main.yaml", f"includes: [{cfg_file}]\n{text}")
    with pytest.raises(ConfigError, match=pattern):
        load_config(main)


def test_schema_defaults_fill_the_model_section_and_are_what_the_model_reads(cfg_file: Path):
    """Each default is written once (schema.ModelConfig); load_config puts it under the file's keys, so
    every key can be overridden and config.yaml records what the run used."""
    from minigpt4.common.schema import ModelConfig, model_config

    cfg = load_config(cfg_file, ["model.frame_encoder_layers=1"])
    assert cfg.model.hidden_dim == 128 and cfg.model.num_queries == 4  # the files' own values win
    assert cfg.model.sccl_temperature == ModelConfig.sccl_temperature  # a default from the schema
    typed = model_config(cfg.model)
    assert typed.frame_encoder_layers == 1 and typed.llm.lora_r == 8 and typed.llm.lora_alpha == 16
    assert model_config({"label_names": "a, b"}).label_names == ["a", "b"]


def test_readme_config_table_gives_the_schema_defaults():
    """README's table states defaults in prose; each number there must be the schema's default (one
    source of truth: schema.ModelConfig), and every shipped config passes the schema."""
    import re

    from minigpt4.common.config import REPO_ROOT
    from minigpt4.common.schema import ModelConfig

    checked = 0
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        if not line.startswith("| `model."):
            continue
        keys_cell, text_cell = line.split("|")[1:3]
        keys = [k.removeprefix("model.") for k in re.findall(r"`([\w.]+)`", keys_cell)]
        numbers = [float(n) for n in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", text_cell)]
        if len(numbers) < len(keys) or any(not hasattr(ModelConfig, k) for k in keys):
            continue
        for key, number in zip(keys, numbers):
            assert float(getattr(ModelConfig, key)) == number, (key, line)
            checked += 1
    assert checked >= 12
    shipped = sorted((REPO_ROOT / "configs/models").glob("*.yaml"))
    assert {"hero.yaml", "hero_paper.yaml", "hero_smollm2.yaml", "hero_smollm2_trunk.yaml"} <= {p.name for p in shipped}
    for path in shipped:  # every shipped recipe passes the schema (unknown keys, types, includes)
        load_config(path)
