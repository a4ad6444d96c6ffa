"""One set-up path (`minigpt4.runners.components.build_components`) for hero-train and hero-eval:
from the same config both build the same model (parameter names, shapes and, with the same
`run.seed`, the same initial weights); plus the one label-set check both use."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from minigpt4.common.config import load_config
from minigpt4.runners import components as comp
from minigpt4.tasks.base_task import LabelSetError, shared_label_names


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)  # same parameter and buffer names, in the same order
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_hero_train_and_hero_eval_build_the_same_initial_model(tmp_path: Path, monkeypatch):
    """Both commands, end to end on the toy reporter; each model as build_components returned it."""
    from minigpt4.cli.evaluate import run as eval_run
    from minigpt4.cli.train import run as train_run
    from tests.toy_components import write_toy_config

    built: list[dict[str, Any]] = []
    real = comp.build_components

    def spy(cfg: Any, splits: Any = None) -> comp.Components:
        parts = real(cfg, splits)
        built.append({"splits": splits, "state": _state(parts.model), "datasets": parts.datasets})
        return parts

    monkeypatch.setattr(comp, "build_components", spy)
    cfg = write_toy_config(tmp_path, run={"max_epoch": 1}, model={"arch": "toy_reporter"})
    runner = train_run(["--cfg-path", str(cfg)])
    metrics = eval_run(["--cfg-path", str(cfg), "--ckpt", str(tmp_path / "run"), "--split", "val",
                        "--out", str(tmp_path / "eval")])
    assert [b["splits"] for b in built] == [None, ["val"]]  # train, then eval (its split only)
    train_init, eval_init = built[0]["state"], built[1]["state"]
    _assert_same_state(train_init, eval_init)
    # it is the initial model: training moved it, and eval loaded the trained weights over it
    trained = _state(runner.model_raw)
    assert not torch.equal(trained["encoder.0.weight"], train_init["encoder.0.weight"])
    assert metrics["n_clips"] == 16 and metrics["prediction_source"] == "report"


def test_build_components_hero_model_for_training_and_for_one_split(tmp_path: Path, tiny_llm_dir: Path):
    """The real HERO model: every parameter (LLM, LoRA, experts, heads) equal whether all splits
    are built (training) or only the evaluated one; another run.seed gives other weights."""
    from tests.test_eval import write_tiny_config, write_tiny_dataset

    labels = write_tiny_dataset(tmp_path / "data", {"train": 4, "test": 3})
    cfg_path = write_tiny_config(tmp_path, tiny_llm_dir, labels)

    train_parts = comp.build_components(load_config(cfg_path))
    eval_cfg = load_config(cfg_path)
    eval_parts = comp.build_components(eval_cfg, splits=["test"])
    assert sorted(train_parts.datasets["hero_dataset"]) == ["test", "train"]
    assert sorted(eval_parts.datasets["hero_dataset"]) == ["test"]
    assert list(eval_cfg.datasets.hero_dataset.splits) == ["test"]  # written into the config
    assert type(train_parts.task) is type(eval_parts.task)
    a, b = _state(train_parts.model), _state(eval_parts.model)
    _assert_same_state(a, b)
    trainable = [n for n, p in train_parts.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any(n.startswith("evidence_stack.") for n in trainable)

    other = _state(comp.build_components(load_config(cfg_path, ["run.seed=8"])).model)
    assert any(not torch.equal(a[n], other[n]) for n in trainable)


def test_load_weights_names_the_config_difference(tmp_path: Path):
    """A checkpoint that does not fit: the error names the model.* keys the run's config.yaml changes."""
    from minigpt4.cli.train import run as train_run
    from minigpt4.common.checkpoint import CheckpointMismatchError, resolve_checkpoint
    from tests.toy_components import write_toy_config

    cfg = write_toy_config(tmp_path, run={"max_epoch": 1, "valid_splits": []})
    train_run(["--cfg-path", str(cfg)])
    wider = load_config(cfg, ["model.hidden=24"])
    parts = comp.build_components(wider)
    ckpt = resolve_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointMismatchError, match=r"model\.hidden \(16 in the run, 24 here\)") as err:
        comp.load_weights(parts.model, ckpt, wider, "wider.yaml")
    assert "built from wider.yaml" in str(err.value)
    fits = comp.build_components(load_config(cfg)).model
    assert comp.load_weights(fits, ckpt, load_config(cfg)).endswith("model.safetensors")


class _Labeled:
    def __init__(self, labels: Any) -> None:
        self.label_names = labels


def test_shared_label_names():
    six = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    assert shared_label_names([("a", _Labeled(six)), ("b", _Labeled(list(six)))]) == six
    assert shared_label_names([("a", _Labeled(None)), ("b", object()), ("c", _Labeled(six))]) == six
    assert shared_label_names([("a", object())]) == []
    with pytest.raises(LabelSetError, match=r"a: \['neutral'.*b: \['happy', 'sad'\]"):
        shared_label_names([("a", _Labeled(six)), ("b", _Labeled(["happy", "sad"]))])
