"""RunnerBase end to end on the toy model through the real entry point (hero-train: `minigpt4.cli.train`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.cli.train import run as train_run
from minigpt4.common.checkpoint import find_latest_checkpoint, load_training_state, resolve_checkpoint
from minigpt4.common.logger import read_log
from minigpt4.common.schema import ConfigError
from minigpt4.runners.runner_base import batch_size_of, move_to_device, resolve_amp
from minigpt4.tasks.base_task import ModelOutputError, check_model_output, scalar_terms
from tests.toy_components import ToyCrash, ToyRegressor, write_toy_config


def train(tmp_path: Path, run=None, model=None, data=None, extra=()):
    cfg = write_toy_config(tmp_path, run=run, model=model, data=data)
    return train_run(["--cfg-path", str(cfg), *extra])


def train_records(run_dir: Path) -> dict[int, dict]:
    """Per-step train records; a step logged twice (crash, then resume) keeps the last line."""
    return {r["step"]: r for r in read_log(run_dir) if r.get("phase") == "train"}


def val_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_log(run_dir) if r.get("phase") == "val"}


def test_training_reduces_loss_and_writes_every_output(tmp_path: Path):
    runner = train(tmp_path, run={"max_epoch": 4})
    out = tmp_path / "run"
    recs = train_records(out)
    assert sorted(recs) == list(range(1, 33))  # 64 samples / batch 8 = 8 steps x 4 epochs, logged every step
    first = sum(recs[s]["loss"] for s in range(1, 5)) / 4
    last = sum(recs[s]["loss"] for s in range(29, 33)) / 4
    assert last < 0.6 * first, (first, last)
    for key in ("step", "epoch", "phase", "lr", "loss", "loss_task", "loss_reg", "loss_penalty", "loss_estimator",
                "grad_norm", "samples_per_s"):
        assert key in recs[1], key
    assert "pred" not in recs[1]  # non-scalar outputs are not logged
    assert recs[1]["loss"] == pytest.approx(recs[1]["loss_task"] + recs[1]["loss_reg"] + recs[1]["loss_penalty"],
                                            rel=1e-6)
    vals = val_records(out)
    assert sorted(vals) == [8, 16, 24, 32] and vals[32]["val_loss"] < vals[8]["val_loss"]
    # the resolved config, TensorBoard scalars, checkpoints and the best one
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.run.max_epoch == 4 and saved.model.arch == "toy_regressor"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/loss_estimator", "train/lr", "val/loss"} <= tags
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, 33))
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["value"] == pytest.approx(min(v["val_loss"] for v in vals.values()))
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt_*")) == \
        ["ckpt_00000016", "ckpt_00000024", "ckpt_00000032"]  # keep_last_k=3, best is the newest
    assert runner.summary["steps"] == 32 and runner.summary["best"]["step"] == best["step"]


def test_logged_lr_follows_linear_warmup_cosine(tmp_path: Path):
    run = {"max_epoch": 2, "init_lr": 1e-2, "min_lr": 1e-4, "warmup_lr": 1e-3, "warmup_steps": 3}
    train(tmp_path, run=run)
    recs = train_records(tmp_path / "run")
    total = 16
    for step, rec in recs.items():
        s = step - 1  # the lr used by optimiser step s (0-based)
        if s < 3:
            expected = 1e-3 + (1e-2 - 1e-3) * s / 3
        else:
            expected = 1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (s - 3) / (total - 3)))
        assert rec["lr"] == pytest.approx(expected, rel=1e-12), step


def test_a_log_line_holds_the_mean_of_its_interval(tmp_path: Path):
    """log_freq 3 over 8-step epochs: lines at 3, 6, 8 (epoch end), 9, 12, ...; each the mean of the
    steps since the previous line, against the same run logged every step."""
    train(tmp_path / "every")
    train(tmp_path / "third", run={"log_freq": 3})
    every, third = train_records(tmp_path / "every" / "run"), train_records(tmp_path / "third" / "run")
    assert sorted(third) == [3, 6, 8, 9, 12, 15, 16]
    previous = 0
    for step in sorted(third):
        for key in ("loss", "loss_task", "loss_reg", "loss_estimator"):
            mean = sum(every[s][key] for s in range(previous + 1, step + 1)) / (step - previous)
            assert third[step][key] == pytest.approx(mean, rel=1e-6), (step, key)
        assert third[step]["lr"] == every[step]["lr"]
        previous = step


def test_a_term_some_steps_lack_is_averaged_over_the_steps_that_have_it(tmp_path: Path):
    """`loss_sparse` on every 2nd step only: a log line every 3 steps holds its mean over the 1-2 steps
    of the interval that had it (not diluted by the steps without it), and no line invents it."""
    model = {"sparse_term_every": 2}
    train(tmp_path / "every", model=model)
    train(tmp_path / "third", model=model, run={"log_freq": 3})
    every, third = train_records(tmp_path / "every" / "run"), train_records(tmp_path / "third" / "run")
    assert [s for s in sorted(every) if "loss_sparse" in every[s]] == list(range(2, 17, 2))
    previous = 0
    for step in sorted(third):
        had = [every[s]["loss_sparse"] for s in range(previous + 1, step + 1) if "loss_sparse" in every[s]]
        if had:
            assert third[step]["loss_sparse"] == pytest.approx(sum(had) / len(had), rel=1e-6), step
        else:
            assert "loss_sparse" not in third[step], step
        previous = step


def test_a_term_some_accumulated_batches_lack_is_averaged_over_the_batches_that_have_it(tmp_path: Path):
    """Two accumulated batches per step, `loss_sparse` (= the forward's number) on every 2nd forward:
    step s has it on forward 2s only, so its line holds 2s, not 2s diluted by the batch without it."""
    train(tmp_path, run={"batch_size_train": 4, "accum_grad_iters": 2}, model={"sparse_term_every": 2})
    recs = train_records(tmp_path / "run")
    assert sorted(recs) == list(range(1, 17))
    for step, rec in recs.items():
        assert rec["loss_sparse"] == 2 * step, step


# mid-epoch (last ckpt: step 9) / epoch boundary (step 8) / two steps past the last ckpt (9; log.txt has 10, 11)
@pytest.mark.parametrize("crash_after", [19, 16, 22])
def test_resume_after_crash_reproduces_the_uninterrupted_run(tmp_path: Path, crash_after: int):
    run = {"max_epoch": 3, "batch_size_train": 4, "accum_grad_iters": 2, "save_freq": 3, "keep_last_k": 3}
    model = {"dropout": 0.2}  # dropout makes the RNG state matter
    straight = train(tmp_path / "straight", run=run, model=model)

    crash_dir = tmp_path / "crashed"
    with pytest.raises(ToyCrash):
        train(crash_dir, run=run, model={**model, "crash_after_calls": crash_after})
    latest = find_latest_checkpoint(crash_dir / "run")
    assert load_training_state(latest)["step"] == {19: 9, 16: 8, 22: 9}[crash_after]
    resumed = train(crash_dir, run=run, model=model, extra=["--resume"])  # same dir, latest checkpoint

    a, b = train_records(tmp_path / "straight" / "run"), train_records(crash_dir / "run")
    assert sorted(a) == sorted(b) == list(range(1, 25))
    for step in a:
        for key in ("loss", "loss_task", "loss_reg", "loss_penalty", "loss_estimator", "lr", "grad_norm", "epoch"):
            assert a[step][key] == b[step][key], (step, key, a[step][key], b[step][key])
    assert val_records(tmp_path / "straight" / "run") == val_records(crash_dir / "run")
    # log.txt was cut back to the checkpoint's step: every step and validation is logged once
    lines = [(r["step"], r["phase"]) for r in read_log(crash_dir / "run")]
    assert lines == [(r["step"], r["phase"]) for r in read_log(tmp_path / "straight" / "run")]
    for (name, p), (_, q) in zip(straight.model_raw.named_parameters(), resumed.model_raw.named_parameters()):
        assert torch.equal(p, q), name


def test_truncate_log_keeps_what_the_resumed_checkpoint_has_done(tmp_path: Path):
    """Resume at (step 8, epoch 1): epoch 0's validation at step 8 happened before its checkpoint and
    stays; a validation at step 8 of an epoch the checkpoint had not finished is redone, so it goes,
    and so does a line torn by a kill."""
    from minigpt4.common.logger import truncate_log

    recs = [{"step": 7, "epoch": 0, "phase": "train"}, {"step": 8, "epoch": 0, "phase": "train"},
            {"step": 8, "epoch": 0, "phase": "val"}, {"step": 9, "epoch": 1, "phase": "train"},
            {"step": 10, "epoch": 1, "phase": "train"}]
    log = tmp_path / "log.txt"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 11, "ep')
    assert truncate_log(tmp_path, 8, 1) == 3
    assert read_log(log) == recs[:3]
    assert truncate_log(tmp_path, 8, 0) == 1  # mid-epoch checkpoint: epoch 0's validation is redone
    assert read_log(log) == recs[:2]
    assert truncate_log(tmp_path, 8, 0) == 0 and truncate_log(tmp_path / "none", 1, 0) == 0


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path: Path):
    """Without --resume, a second run in the same run.output_dir would prune the first run's
    checkpoints against its own, overwrite config.yaml and mix both in log.txt: refused, nothing touched."""
    first = train(tmp_path, run={"max_epoch": 1})
    run_dir = first.output_dir
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoints up to ckpt_\d+\).*--resume"):
        train(tmp_path, run={"max_epoch": 2, "save_freq": 2})
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    resumed = train(tmp_path, run={"max_epoch": 2}, extra=["--resume"])  # continuing it is fine
    assert resumed.epoch == 2


def test_auxiliary_optimiser_owns_only_its_parameters(tmp_path: Path):
    runner = train(tmp_path, run={"max_epoch": 1}, model={"aux_lr": 0.0, "freeze_head_bias": True})
    model = runner.model_raw
    est = {id(p) for p in model.estimator.parameters()}
    main_ids = {id(p) for g in runner.optimizers["main"].param_groups for p in g["params"]}
    aux_ids = {id(p) for g in runner.optimizers["aux_estimator"].param_groups for p in g["params"]}
    assert aux_ids == est and not (main_ids & est)
    assert id(model.head.bias) not in main_ids  # frozen parameters are in no optimiser
    # weight decay only on matrices: biases and LayerNorm go to the no-decay group
    decay, no_decay = runner.optimizers["main"].param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    named = {id(p): n for n, p in model.named_parameters()}
    assert sorted(named[id(p)] for p in decay["params"]) == ["encoder.0.weight", "head.weight"]
    assert sorted(named[id(p)] for p in no_decay["params"]) == ["encoder.0.bias", "encoder.1.bias", "encoder.1.weight"]

    # aux lr 0: the estimator must not move (the main optimiser's step or weight decay would move it)
    torch.manual_seed(7)
    fresh = ToyRegressor(in_dim=8, hidden=16, dropout=0.1, aux=True)  # same init as the run (seed 7)
    assert torch.equal(model.estimator.weight, fresh.estimator.weight)
    assert not torch.equal(model.encoder[0].weight, fresh.encoder[0].weight)
    assert torch.equal(model.head.bias, fresh.head.bias)


def test_auxiliary_optimiser_trains_its_loss(tmp_path: Path):
    train(tmp_path, run={"max_epoch": 3}, model={"aux_lr": 2e-2})
    recs = train_records(tmp_path / "run")
    assert recs[24]["loss_estimator"] < 0.7 * recs[1]["loss_estimator"]


def test_gradient_accumulation_matches_the_large_batch(tmp_path: Path):
    big = train(tmp_path / "big", run={"batch_size_train": 8, "accum_grad_iters": 1}, model={"dropout": 0.0})
    acc = train(tmp_path / "acc", run={"batch_size_train": 4, "accum_grad_iters": 2}, model={"dropout": 0.0})
    ra, rb = train_records(tmp_path / "big" / "run"), train_records(tmp_path / "acc" / "run")
    assert sorted(ra) == sorted(rb)
    for step in ra:
        assert ra[step]["loss"] == pytest.approx(rb[step]["loss"], rel=1e-5, abs=1e-7)
    for (name, p), (_, q) in zip(big.model_raw.named_parameters(), acc.model_raw.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_streaming_dataset(tmp_path: Path):
    train(tmp_path, run={"max_epoch": 2, "iters_per_epoch": 5}, data={"iterable": True})
    assert sorted(train_records(tmp_path / "run")) == list(range(1, 11))
    with pytest.raises(ValueError, match="iters_per_epoch is required"):
        train(tmp_path / "b", data={"iterable": True})


def test_bf16_autocast_on_cpu_when_asked(tmp_path: Path):
    train(tmp_path, run={"max_epoch": 1, "amp": "bf16"})
    recs = train_records(tmp_path / "run")
    assert len(recs) == 8 and all(math.isfinite(r["loss"]) for r in recs.values())


def test_resolve_amp():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == (None, False)
    assert resolve_amp("none", cpu) == (None, False)
    assert resolve_amp("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="run.amp must be"):
        resolve_amp("fp8", cpu)


def test_evaluate_only_reproduces_the_last_validation(tmp_path: Path):
    train(tmp_path, run={"max_epoch": 2})
    run_dir = tmp_path / "run"
    last_val = val_records(run_dir)[16]
    runner = train(tmp_path, run={"evaluate": True, "resume_ckpt_path": str(run_dir)})
    assert runner.summary["val"]["loss"] == last_val["val_loss"]


def test_model_output_checks():
    with pytest.raises(ModelOutputError, match="must return a dict"):
        check_model_output(torch.tensor(1.0))
    with pytest.raises(ModelOutputError, match="scalar tensor"):
        check_model_output({"loss": torch.ones(2)})
    with pytest.raises(ModelOutputError, match="aux_losses"):
        check_model_output({"loss": torch.tensor(1.0), "aux_losses": {"q": 3.0}})
    terms = scalar_terms({"loss": torch.tensor(2.0), "loss_x": torch.tensor([0.5]), "w": torch.ones(3),
                          "aux_losses": {"est": torch.tensor(4.0)}})
    assert terms == {"loss": 2.0, "loss_x": 0.5, "loss_est": 4.0}


def test_batch_helpers():
    batch = {"x": torch.ones(3, 2), "ids": ["a", "b", "c"], "nested": {"m": torch.zeros(3)}, "meta": ("k", 1)}
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved["ids"] is batch["ids"] and moved["meta"] == ("k", 1) and torch.equal(moved["nested"]["m"], torch.zeros(3))
    assert batch_size_of(batch) == 3 and batch_size_of({"ids": ["a", "b"]}) == 2


def test_train_splits_must_exist(tmp_path: Path):
    with pytest.raises(ValueError, match=r"no dataset has a split in run.train_splits=\['training'\]"):
        train(tmp_path, run={"train_splits": ["training"]})


def test_validation_by_generation_picks_the_best_checkpoint(tmp_path: Path):
    """The val loss keeps falling, but the reports collapse after epoch 1: the best checkpoint is
    epoch 1's by gen_accuracy, and evaluation of the run folder resolves to it."""
    model = {"arch": "toy_reporter", "gen_schedule": [False, True, False, False]}
    runner = train(tmp_path, run={"max_epoch": 4, "keep_last_k": 1}, model=model)
    out = tmp_path / "run"
    vals = val_records(out)
    steps = sorted(vals)
    assert [vals[s]["val_gen_accuracy"] for s in steps][1] == 1.0
    assert all(vals[s]["val_gen_max_pred_share"] == 1.0 for s in (steps[0], steps[2], steps[3]))  # all "low"
    assert vals[steps[3]]["val_loss"] < vals[steps[1]]["val_loss"]  # the loss alone would pick the last epoch
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert (best["metric"], best["mode"], best["step"]) == ("gen_accuracy", "max", steps[1])
    assert runner.summary["best"]["step"] == steps[1]
    assert resolve_checkpoint(out, prefer_best=True).name == f"ckpt_{steps[1]:08d}"
    assert resolve_checkpoint(out).name == f"ckpt_{steps[3]:08d}"  # resume still takes the latest


@pytest.mark.parametrize("tie", ["later", "earlier"])
def test_a_tied_validation_score_moves_the_best_checkpoint_only_when_later(tmp_path: Path, tie: str):
    """Epochs 1 and 2 generate equally well: `run.best_tie` says which of them is the best checkpoint."""
    model = {"arch": "toy_reporter", "gen_schedule": [False, True, True, False]}
    train(tmp_path, run={"max_epoch": 4, "keep_last_k": 1, "best_tie": tie}, model=model)
    out = tmp_path / "run"
    vals = val_records(out)
    steps = sorted(vals)
    accuracy = [vals[s]["val_gen_accuracy"] for s in steps]
    assert accuracy[1] == accuracy[2] == 1.0 and max(accuracy[0], accuracy[3]) < 1.0
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["step"] == (steps[2] if tie == "later" else steps[1])
    assert resolve_checkpoint(out, prefer_best=True).name == f"ckpt_{best['step']:08d}"


def test_best_tie_names_its_choices(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"run\.best_tie must be one of later, earlier, got 'first'"):
        train(tmp_path, run={"max_epoch": 1, "best_tie": "first"}, model={"arch": "toy_reporter"})


def test_validation_generation_can_be_turned_off(tmp_path: Path):
    train(tmp_path, run={"max_epoch": 1, "val_generate": False}, model={"arch": "toy_reporter"})
    vals = val_records(tmp_path / "run")
    assert vals and not any(k.startswith("val_gen_") for v in vals.values() for k in v)
    best = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())
    assert (best["metric"], best["mode"]) == ("loss", "min")


def test_statistics_passes_read_the_model_in_fp32_under_bf16(tmp_path: Path):
    """The closed-form refits and the estimator warm-up read the model outside autocast: trained
    under bf16, the demo recipe whose statistics were fitted on bf16 summaries read lower (README)."""
    from minigpt4.cli.train import build_runner
    from minigpt4.common.config import load_config

    runner = build_runner(load_config(write_toy_config(tmp_path, run={"amp": "bf16"})))
    with runner._autocast():
        assert torch.is_autocast_enabled("cpu")  # training steps do run under bf16
    seen, _ = runner._read_training_batches(lambda batches: (list(batches), torch.is_autocast_enabled("cpu")),
                                            iter([{"x": torch.ones(2)}]))
    rows, autocast_on = seen
    assert not autocast_on and len(rows) == 1
