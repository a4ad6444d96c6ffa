"""Checkpoints: trainable-only weights, path resolution, mismatch errors, pruning, atomicity."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from minigpt4.common import checkpoint as ckpt
from minigpt4.common.checkpoint import (CheckpointMismatchError, find_best_checkpoint, find_latest_checkpoint,
                                        load_model_weights, load_training_state, save_checkpoint,
                                        trainable_state_dict)
from minigpt4.common.seed import capture_rng_state


class Net(nn.Module):
    """A frozen 'backbone' plus trainable layers and a buffer, like LLM + LoRA + experts."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, hidden)
        self.backbone.requires_grad_(False)
        self.adapter = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.register_buffer("scale", torch.ones(1))


def state(step: int) -> dict:
    return {"step": step, "epoch": 0, "rng": [capture_rng_state()], "config": "run: {}\n",
            "optimizers": {"main": torch.optim.AdamW(Net().parameters()).state_dict()}}


def test_only_trainable_parameters_are_saved_and_roundtrip(tmp_path: Path):
    torch.manual_seed(1)
    src = Net()
    path = save_checkpoint(tmp_path, 10, trainable_state_dict(src), state(10))
    assert path == tmp_path / "checkpoints" / "ckpt_00000010"
    from safetensors.torch import load_file

    assert sorted(load_file(path / ckpt.MODEL_FILE)) == ["adapter.bias", "adapter.weight", "norm.bias", "norm.weight"]
    torch.manual_seed(2)
    dst = Net()
    frozen_before = dst.backbone.weight.clone()
    used = load_model_weights(dst, path)
    assert used == str(path / ckpt.MODEL_FILE)
    for name, p in src.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, dict(dst.named_parameters())[name])
    assert torch.equal(dst.backbone.weight, frozen_before)  # frozen weights are not in the checkpoint
    # the same weights through the other accepted paths
    for target in (tmp_path, tmp_path / "checkpoints", path / ckpt.MODEL_FILE):
        torch.manual_seed(3)
        other = Net()
        load_model_weights(other, target)
        assert torch.equal(other.adapter.weight, src.adapter.weight)
    st = load_training_state(path)
    assert st["step"] == 10 and isinstance(st["rng"][0]["torch"], torch.Tensor)


def test_mismatches_name_the_keys(tmp_path: Path):
    path = save_checkpoint(tmp_path, 1, trainable_state_dict(Net()), state(1))
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: adapter\.bias \(file \(4,\) vs model \(5,\)\), adapter\.weight \(file \(4, 4\) vs model \(5, 5\)\)"):
        load_model_weights(Net(hidden=5), path)

    class Bigger(Net):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(2, 2)

    with pytest.raises(CheckpointMismatchError, match=r"missing trainable keys: extra\.weight, extra\.bias"):
        load_model_weights(Bigger(), path)
    big = save_checkpoint(tmp_path / "big", 1, trainable_state_dict(Bigger()), state(1))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: extra\.bias, extra\.weight"):
        load_model_weights(Net(), big)
    # non-strict loads what fits
    net = Net()
    load_model_weights(net, big, strict=False)
    from safetensors.torch import load_file

    assert torch.equal(net.adapter.weight, load_file(big / ckpt.MODEL_FILE)["adapter.weight"])


def test_bad_paths(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model_weights(Net(), tmp_path / "nope")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_model_weights(Net(), tmp_path / "empty_run")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a .safetensors file"):
        load_model_weights(Net(), tmp_path / "w.bin")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model_weights(Net(), tmp_path / "junk.safetensors")
    assert find_latest_checkpoint(tmp_path / "empty_run") is None


def test_training_state_is_loaded_without_unpickling_objects(tmp_path: Path):
    path = save_checkpoint(tmp_path, 1, trainable_state_dict(Net()), state(1))
    # replace the state by one holding an arbitrary object: weights_only loading must refuse it,
    # even when whoever replaced it also rewrote the checksums (they guard against accidents only)
    torch.save({"step": 1, "evil": argparse_namespace()}, path / ckpt.STATE_FILE)
    with pytest.raises(ckpt.CheckpointCorruptError, match="training_state.pt: sha256"):
        load_training_state(path)
    ckpt._write_checksums(path, (ckpt.MODEL_FILE, ckpt.STATE_FILE))
    with pytest.raises(ValueError, match="cannot load training state safely"):
        load_training_state(path)


def argparse_namespace():
    import argparse

    return argparse.Namespace(x=1)


def test_keep_last_k_and_best(tmp_path: Path):
    net = Net()
    for step in range(1, 7):
        best = {"metric": "loss", "value": 1.0 / step, "mode": "min", "epoch": step} if step == 2 else None
        save_checkpoint(tmp_path, step, trainable_state_dict(net), state(step), keep_last_k=2, best=best)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt_00000002", "ckpt_00000005", "ckpt_00000006"]  # last 2 + best
    assert find_latest_checkpoint(tmp_path).endswith("ckpt_00000006")
    assert find_best_checkpoint(tmp_path).endswith("ckpt_00000002")
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert best["path"] == "ckpt_00000002" and best["step"] == 2 and best["value"] == 0.5
    # re-saving an existing step replaces it whole
    torch.manual_seed(9)
    newer = Net()
    save_checkpoint(tmp_path, 6, trainable_state_dict(newer), state(6), keep_last_k=2)
    check = Net()
    load_model_weights(check, tmp_path)
    assert torch.equal(check.adapter.weight, newer.adapter.weight)


@pytest.mark.parametrize("fail_in", ["weights", "state"])
def test_interrupted_write_leaves_previous_checkpoint(tmp_path: Path, monkeypatch, fail_in: str):
    torch.manual_seed(0)
    good = Net()
    save_checkpoint(tmp_path, 5, trainable_state_dict(good), state(5))

    def half_write_then_die(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"\x00" * 10)  # a torn file
        raise KeyboardInterrupt("killed mid-save")

    if fail_in == "weights":
        monkeypatch.setattr(ckpt, "save_file", half_write_then_die)
    else:
        monkeypatch.setattr(ckpt.torch, "save", half_write_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 6, trainable_state_dict(Net()), state(6))
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["ckpt_00000005"]  # no half checkpoint, no temp folder
    assert find_latest_checkpoint(tmp_path).endswith("ckpt_00000005")
    fresh = Net()
    load_model_weights(fresh, tmp_path)
    assert torch.equal(fresh.adapter.weight, good.adapter.weight)
    assert load_training_state(tmp_path)["step"] == 5


def test_leftovers_of_a_killed_process_are_ignored_and_cleaned(tmp_path: Path):
    save_checkpoint(tmp_path, 1, trainable_state_dict(Net()), state(1))
    stale = tmp_path / "checkpoints" / ".tmp-ckpt_00000002-dead"
    stale.mkdir()
    (stale / ckpt.MODEL_FILE).write_bytes(b"partial")
    incomplete = tmp_path / "checkpoints" / "ckpt_00000003"  # a folder without the state file
    incomplete.mkdir()
    (incomplete / ckpt.MODEL_FILE).write_bytes(b"partial")
    assert find_latest_checkpoint(tmp_path).endswith("ckpt_00000001")
    save_checkpoint(tmp_path, 4, trainable_state_dict(Net()), state(4))
    assert not stale.exists()
    assert find_latest_checkpoint(tmp_path).endswith("ckpt_00000004")


def _flip_bit(path: Path, offset_from_end: int = 1) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) - offset_from_end] ^= 0x01  # the last bytes are tensor data, not the header
    path.write_bytes(bytes(raw))


def test_checksums_are_written_with_the_checkpoint(tmp_path: Path):
    path = save_checkpoint(tmp_path, 3, trainable_state_dict(Net()), state(3))
    record = json.loads((path / ckpt.CHECKSUM_FILE).read_text())
    assert record["algorithm"] == "sha256"
    assert record["files"] == {name: ckpt.file_sha256(path / name) for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE)}
    assert sorted(os.listdir(path)) == sorted([ckpt.CHECKSUM_FILE, ckpt.MODEL_FILE, ckpt.STATE_FILE])


def test_bit_flip_in_model_file_is_an_error_naming_it(tmp_path: Path, caplog):
    """Issue 20 case 8: one flipped bit in model.safetensors used to load silently (still a valid
    safetensors file, one weight changed); now the recorded sha256 catches it, in eval and resume."""
    from safetensors.torch import load_file

    torch.manual_seed(2)
    path = save_checkpoint(tmp_path, 4, trainable_state_dict(Net()), state(4))
    weights = path / ckpt.MODEL_FILE
    before = {k: v.clone() for k, v in load_file(weights).items()}
    _flip_bit(weights)
    after = load_file(weights)  # the old behaviour: readable, silently different
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for target in (path, tmp_path, weights):
        with pytest.raises(ckpt.CheckpointCorruptError) as err:
            load_model_weights(Net(), target)
        assert str(weights) in str(err.value) and "does not match" in str(err.value)
    _flip_bit(weights)  # flipped back: loads again, without a warning
    with caplog.at_level("WARNING", logger=ckpt.logger.name):
        load_model_weights(Net(), path)
    assert not caplog.records
    _flip_bit(path / ckpt.STATE_FILE, offset_from_end=40)
    with pytest.raises(ckpt.CheckpointCorruptError, match=str(path / ckpt.STATE_FILE)):
        load_training_state(path)
    (path / ckpt.CHECKSUM_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ckpt.CheckpointCorruptError, match="checksums.json: unreadable checksum record"):
        load_model_weights(Net(), path)


def test_checkpoint_without_checksums_loads_with_one_warning(tmp_path: Path, caplog):
    """A checkpoint written before checksums existed still loads (weights and state), warned once."""
    torch.manual_seed(5)
    src = Net()
    path = save_checkpoint(tmp_path, 7, trainable_state_dict(src), state(7))
    (path / ckpt.CHECKSUM_FILE).unlink()
    with caplog.at_level("WARNING", logger=ckpt.logger.name):
        for _ in range(2):
            dst = Net()
            load_model_weights(dst, path)
            assert torch.equal(dst.adapter.weight, src.adapter.weight)
            assert load_training_state(path)["step"] == 7
    warnings = [r for r in caplog.records if "loading it unverified" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
