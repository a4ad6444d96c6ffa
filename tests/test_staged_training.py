"""Staged training (README "Staged training"): observation pre-training without the LLM, reasoning
tuning started from it with `model.init_from` (weights only, refused from an incompatible run),
`model.freeze_experts`, and both stages end to end through hero-train and hero-eval."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from minigpt4.common import checkpoint as ckpt
from minigpt4.common.config import save_config
from minigpt4.common.schema import ConfigError, model_config
from minigpt4.runners.init_from import InitFromError, apply_init_from
from tests.test_hero_model import build, make_batch, make_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def llm_dir(tiny_llm_dir: Path) -> Path:
    """The shared tiny Llama: nothing here generates text, so its EOS row needs no repair."""
    return tiny_llm_dir


def observation_cfg(llm_path: Path, **overrides):
    return make_cfg(llm_path, train_stage="observation", lambda_cls=1.0, **overrides)


def forbid_llm(model, monkeypatch) -> None:
    """Any use of the LLM beyond its embedding table fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("the LLM was run")

    monkeypatch.setattr(model.reasoner, "forward", boom)
    monkeypatch.setattr(model.reasoner, "generate", boom)
    monkeypatch.setattr(model.reasoner.llm, "forward", boom)


def save_run(run_dir: Path, model, model_cfg) -> Path:
    """A run folder as hero-train writes it: config.yaml and one checkpoint of the trainable state."""
    save_config(OmegaConf.create({"model": model_cfg, "run": {"output_dir": str(run_dir)}}), run_dir / "config.yaml")
    return ckpt.save_checkpoint(run_dir, 1, ckpt.trainable_state_dict(model), {"step": 1})


def one_step(model) -> None:
    """One SGD step, so the weights differ from any freshly built model's."""
    model.train()
    out = model(make_batch())
    out["loss"].backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
                p.grad = None


# ------------------------------------------------------------------------- stage 1
def test_observation_stage_never_runs_the_llm_and_saves_no_llm_weight(llm_dir, monkeypatch):
    model = build(observation_cfg(llm_dir))
    forbid_llm(model, monkeypatch)
    out = model(make_batch())
    assert "loss_task" not in out and {"loss_evidence", "loss_cls"} <= set(out)
    weighted = sum(model.evidence_stack.lambdas[k[len("loss_"):]] * float(v)
                   for k, v in out.items() if k.startswith("loss_"))
    assert float(out["loss"]) == pytest.approx(weighted, rel=1e-5)  # loss = loss_aux, nothing else
    out["loss"].backward()
    assert not any(p.requires_grad for p in model.reasoner.parameters())  # LoRA included
    state = ckpt.trainable_state_dict(model)
    assert state and not [k for k in state if k.startswith("reasoner.")]
    assert {k.split(".")[0] for k in state} == {"evidence_stack", "coverage"}
    model.eval()
    with torch.no_grad():
        terms = model(make_batch())
    assert 0.0 <= float(terms["cls_accuracy"]) <= 1.0
    assert not model.can_generate and model.auto_best_metric == "cls_accuracy"
    with pytest.raises(ValueError, match="--use_cls_head"):
        model.generate(make_batch())


def test_stage_config_errors_name_the_key(llm_dir):
    with pytest.raises(ConfigError, match="model.train_stage must be one of joint, observation"):
        model_config(make_cfg(llm_dir, train_stage="pretrain"))
    with pytest.raises(ValueError, match=r"model.train_stage: observation .* model.lambda_cls"):
        build(make_cfg(llm_dir, train_stage="observation", lambda_cls=0.0, lambda_stmil=0.0, lambda_sccl=0.0,
                       lambda_synergy=0.0, lambda_evidence=0.0))
    with pytest.raises(ConfigError, match="model.freeze_experts .* set model.init_from"):
        model_config(make_cfg(llm_dir, freeze_experts=True))
    with pytest.raises(ConfigError, match="model.freeze_experts"):
        model_config(observation_cfg(llm_dir, freeze_experts=True, init_from="runs/stage1"))


# ------------------------------------------------------------------------- stage 2
def test_freeze_experts_freezes_exactly_the_experts_and_checkpoints_them(llm_dir):
    free = build(make_cfg(llm_dir))
    frozen = build(make_cfg(llm_dir, init_from="runs/stage1", freeze_experts=True))
    experts = ("evidence_stack.experts.", "evidence_stack.synergy.")
    trainable = {n for n, p in free.named_parameters() if p.requires_grad}
    assert any(n.startswith("reasoner.") for n in trainable)  # LoRA
    for name, p in frozen.named_parameters():
        assert p.requires_grad == (name in trainable and not name.startswith(experts)), name
    # frozen, but saved: an evaluation of the run reads the experts it trained with
    state = ckpt.trainable_state_dict(frozen)
    expert_names = [n for n, _ in frozen.named_parameters() if n.startswith(experts)]
    assert expert_names and set(expert_names) <= set(state)


def test_freeze_evidence_stack_trains_only_lora_and_checkpoints_the_stack(llm_dir):
    """Only the LLM's adapters (and the vCLUB q-network, which only measures) train; every evidence-stack
    weight stays as loaded and still goes into the checkpoint."""
    model = build(make_cfg(llm_dir, lambda_cls=1.0, init_from="runs/trunk", freeze_evidence_stack=True))
    estimator = {id(p) for p in model.evidence_stack.estimator_parameters()}
    names = dict(model.named_parameters())
    trainable = {n for n, p in names.items() if p.requires_grad}
    lora = {n for n in names if "lora_" in n}
    assert lora and trainable == lora | {n for n, p in names.items() if id(p) in estimator}
    stack = {n: p.detach().clone() for n, p in names.items()
             if n.startswith("evidence_stack.") and id(p) not in estimator}
    lora_before = {n: names[n].detach().clone() for n in lora}
    one_step(model)
    assert all(torch.equal(names[n], v) for n, v in stack.items())
    assert any(not torch.equal(names[n], v) for n, v in lora_before.items())
    assert set(stack) <= set(ckpt.trainable_state_dict(model))
    # nor do its closed-form parts move: no refit (an unfrozen model refits its evidence read-out)
    fitted = {n: b.clone() for n, b in model.evidence_stack.evidence_readout.named_buffers()}
    assert model.refit_statistics([make_batch()]) is None
    assert all(torch.equal(b, fitted[n]) for n, b in model.evidence_stack.evidence_readout.named_buffers())
    assert build(make_cfg(llm_dir, lambda_cls=1.0)).refit_statistics([make_batch()])
    with pytest.raises(ConfigError, match="model.freeze_evidence_stack .* set model.init_from"):
        model_config(make_cfg(llm_dir, freeze_evidence_stack=True))


def test_init_from_loads_the_stage1_weights_exactly(llm_dir, tmp_path, caplog):
    stage1_cfg = observation_cfg(llm_dir)
    stage1 = build(stage1_cfg, seed=1)
    one_step(stage1)
    stage1.coverage.update(torch.tensor([[True, False, True, True, False, True]]))  # a recorded buffer travels too
    save_run(tmp_path / "stage1", stage1, stage1_cfg)
    stage2_cfg = make_cfg(llm_dir, lambda_cls=1.0, init_from=str(tmp_path / "stage1"))
    stage2 = build(stage2_cfg, seed=2)
    lora_before = {n: p.detach().clone() for n, p in stage2.named_parameters() if "lora_" in n}
    with caplog.at_level(logging.INFO, logger="minigpt4.runners.init_from"):
        report = apply_init_from(stage2, OmegaConf.create({"model": stage2_cfg}))
    saved = load_file(str(tmp_path / "stage1" / "checkpoints" / "ckpt_00000001" / "model.safetensors"))
    mine = {**dict(stage2.named_buffers()), **dict(stage2.named_parameters())}
    assert report.n_loaded == len(saved) and saved
    for key, value in saved.items():
        assert torch.equal(mine[key].detach().cpu(), value), key
    assert lora_before and all(torch.equal(p, dict(stage2.named_parameters())[n]) for n, p in lora_before.items())
    assert report.kept.get("reasoner") == len(lora_before)
    assert f"loaded {len(saved)} tensors" in caplog.text and "evidence_stack.experts" in caplog.text


def test_init_from_refuses_an_incompatible_run_naming_the_file_and_keys(llm_dir, tmp_path):
    stage1_cfg = observation_cfg(llm_dir)
    save_run(tmp_path / "stage1", build(stage1_cfg), stage1_cfg)
    stage2 = build(make_cfg(llm_dir))
    before = {n: p.detach().clone() for n, p in stage2.named_parameters()}
    file = str(tmp_path / "stage1" / "checkpoints" / "ckpt_00000001" / "model.safetensors")
    permuted = ["sad", "happy", "angry", "neutral", "worried", "surprise"]
    for key, value in (("hidden_dim", 48), ("label_names", permuted)):
        cfg = OmegaConf.create({"model": make_cfg(llm_dir, init_from=str(tmp_path / "stage1"), **{key: value})})
        with pytest.raises(InitFromError) as err:
            apply_init_from(stage2, cfg)
        assert file in str(err.value) and f"model.{key}" in str(err.value), str(err.value)
    # without the run's config.yaml, the tensors' shapes are checked, naming the keys
    (tmp_path / "stage1" / "config.yaml").unlink()
    wider_cfg = make_cfg(llm_dir, init_from=str(tmp_path / "stage1"), hidden_dim=48)
    with pytest.raises(InitFromError, match=r"shape mismatches: evidence_stack\.") as err:
        apply_init_from(build(wider_cfg), OmegaConf.create({"model": wider_cfg}))
    assert file in str(err.value)
    # a key the model lacks (stage 1 had the head, this model has none)
    headless_cfg = make_cfg(llm_dir, init_from=str(tmp_path / "stage1"))
    with pytest.raises(InitFromError, match=r"keys the model does not have: evidence_stack\.cls_head"):
        apply_init_from(stage2, OmegaConf.create({"model": headless_cfg}))
    with pytest.raises(InitFromError, match="checkpoint not found"):
        apply_init_from(stage2, OmegaConf.create({"model": make_cfg(llm_dir, init_from=str(tmp_path / "none"))}))
    assert all(torch.equal(p, before[n]) for n, p in stage2.named_parameters())  # nothing half-loaded


def test_init_from_another_llm_with_the_same_tokenizer_loads_what_fits(llm_dir, tmp_path):
    """A joint run through a 1-layer trunk seeds a 2-layer LLM of the same width and tokenizer: the evidence
    stack loads, the trunk's LoRA does not (it adapted another network); another tokenizer is refused."""
    import shutil

    from transformers import AutoTokenizer

    from minigpt4.common.tiny_llm import make_tiny_llm

    trunk = make_tiny_llm(tmp_path / "trunk", hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128, seed=0)
    stage1_cfg = make_cfg(trunk, lambda_cls=1.0)
    stage1 = build(stage1_cfg, seed=1)
    one_step(stage1)
    save_run(tmp_path / "stage1", stage1, stage1_cfg)
    stage2_cfg = make_cfg(llm_dir, lambda_cls=1.0, init_from=str(tmp_path / "stage1"), freeze_experts=True)
    stage2 = build(stage2_cfg, seed=2)
    lora_before = {n: p.detach().clone() for n, p in stage2.named_parameters() if "lora_" in n}
    report = apply_init_from(stage2, OmegaConf.create({"model": stage2_cfg}))
    mine, theirs = dict(stage2.named_parameters()), dict(stage1.named_parameters())
    stack = [n for n in theirs if n.startswith("evidence_stack.") and theirs[n].requires_grad]
    assert stack and all(torch.equal(mine[n], theirs[n]) for n in stack)
    trunk_lora = [n for n in theirs if ".layers.0." in n and ".lora_B." in n]
    assert trunk_lora and not all(torch.equal(mine[n], theirs[n]) for n in trunk_lora)  # B moved in stage 1
    assert lora_before and all(torch.equal(mine[n], p) for n, p in lora_before.items())
    assert "reasoner" not in report.loaded and report.kept.get("reasoner") == len(lora_before)

    other = tmp_path / "other_tokenizer"
    shutil.copytree(llm_dir, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<not_in_the_trunk>"])
    tok.save_pretrained(other)
    refused = make_cfg(other, lambda_cls=1.0, init_from=str(tmp_path / "stage1"))
    with pytest.raises(InitFromError, match="tokenizer differs"):
        apply_init_from(build(stage2_cfg, seed=3), OmegaConf.create({"model": refused}))


def test_init_from_an_llm_of_another_width_keeps_the_run_s_decision(llm_dir, tmp_path):
    """A joint run through the 64-wide tiny LLM seeds a 48-wide LLM of the same tokenizer with
    `model.context_dim: 64`: the evidence stack loads whole but for SCCL's reader of the other embedding
    table, a trainable bridge maps the context into the new LLM, and with the stack frozen the head's
    logits are the run's own. Without `context_dim` the integrated context's width is refused."""
    from minigpt4.common.tiny_llm import make_tiny_llm

    narrow = make_tiny_llm(tmp_path / "narrow", hidden_size=48, num_layers=1, num_heads=4, intermediate_size=96, seed=0)
    stage1_cfg = make_cfg(llm_dir, lambda_cls=1.0)
    stage1 = build(stage1_cfg, seed=1)
    one_step(stage1)
    save_run(tmp_path / "stage1", stage1, stage1_cfg)
    stage2_cfg = make_cfg(narrow, lambda_cls=1.0, init_from=str(tmp_path / "stage1"), freeze_evidence_stack=True,
                          context_dim=64)
    stage2 = build(stage2_cfg, seed=2)
    bridge = stage2.reasoner.context_proj
    assert tuple(bridge.weight.shape) == (48, 64) and bridge.weight.requires_grad
    apply_init_from(stage2, OmegaConf.create({"model": stage2_cfg}))
    mine, theirs = dict(stage2.state_dict()), dict(stage1.state_dict())
    reader = [n for n in theirs if n.startswith("evidence_stack.sccl_text_proj.")]
    stack = [n for n in theirs if n.startswith("evidence_stack.") and n not in reader]
    assert tuple(mine[reader[0]].shape) == (256, 48) and tuple(theirs[reader[0]].shape) == (256, 64)
    assert reader[1].endswith("bias") and not torch.equal(mine[reader[1]], theirs[reader[1]])  # its bias stays too
    assert stack and all(torch.equal(mine[n], theirs[n]) for n in stack)
    stage1.eval(), stage2.eval()
    with torch.no_grad():
        before = stage1.evidence_stack(make_batch(), None, compute_losses=False).cls_logits
        after = stage2.evidence_stack(make_batch(), None, compute_losses=False).cls_logits
    assert torch.equal(before, after)
    # training moves the bridge and LoRA, never the stack; the checkpoint holds the bridge
    bridge_before, frozen = bridge.weight.detach().clone(), dict(stage2.evidence_stack.named_parameters())
    head_before = frozen["cls_head.1.weight"].detach().clone()
    one_step(stage2)
    assert not torch.equal(bridge.weight, bridge_before) and torch.equal(frozen["cls_head.1.weight"], head_before)
    assert "reasoner.context_proj.weight" in ckpt.trainable_state_dict(stage2)

    refused = make_cfg(narrow, lambda_cls=1.0, init_from=str(tmp_path / "stage1"), freeze_evidence_stack=True)
    with pytest.raises(InitFromError, match="shape mismatches: .*integration.* set model.context_dim=64"):
        apply_init_from(build(refused, seed=3), OmegaConf.create({"model": refused}))


def test_only_a_fresh_run_applies_init_from(tmp_path):
    from minigpt4.common.schema import RunConfig
    from minigpt4.runners.runner_base import RunnerBase

    runner = RunnerBase.__new__(RunnerBase)
    runner.output_dir = tmp_path
    for resume, fresh in ((None, True), ("auto", True), ("some/ckpt", False)):
        runner.run_cfg = RunConfig(resume_ckpt_path=resume)
        assert (runner._resume_source() is None) is fresh
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, {"step": 1})
    runner.run_cfg = RunConfig(resume_ckpt_path="auto")
    assert runner._resume_source() is not None


# ------------------------------------------------------------------- end to end
def test_stage1_then_stage2_through_hero_train_and_hero_eval(tiny_llm_dir, tmp_path, monkeypatch):
    from minigpt4.cli import evaluate as eval_cli
    from minigpt4.cli.train import run as train_run
    from minigpt4.common.logger import read_log
    from minigpt4.runners import runner_base
    from tests.test_eval import write_tiny_config, write_tiny_dataset

    labels = write_tiny_dataset(tmp_path / "data", {"train": 8, "val": 4, "test": 4})
    cfg = write_tiny_config(tmp_path, tiny_llm_dir, labels, valid_splits=["val"], iters_per_epoch=2,
                            val_max_new_tokens=2)
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    train_run(["--cfg-path", str(cfg), "--options", "model.train_stage=observation", f"run.output_dir={stage1}"])
    records = read_log(stage1)
    train = [r for r in records if r.get("phase") == "train"]
    val = [r for r in records if r.get("phase") == "val"]
    assert train and "loss_task" not in train[-1] and {"loss_cls", "loss_evidence", "samples_per_s"} <= set(train[-1])
    assert val and "val_cls_accuracy" in val[-1] and not [k for k in val[-1] if k.startswith("val_gen_")]
    assert json.loads((stage1 / "checkpoints" / "best.json").read_text())["metric"] == "cls_accuracy"
    best = ckpt.resolve_checkpoint(stage1, prefer_best=True) / "model.safetensors"
    saved = load_file(str(best))
    assert not [k for k in saved if k.startswith("reasoner.")]

    # stage 1 is evaluated by its head; asking it for reports is a clear error
    metrics = eval_cli.run(["--cfg-path", str(stage1 / "config.yaml"), "--ckpt", str(stage1), "--use_cls_head"])
    assert metrics["n_clips"] == 4
    with pytest.raises(eval_cli.EvalError, match="observation pre-training run .* --use_cls_head"):
        eval_cli.run(["--cfg-path", str(stage1 / "config.yaml"), "--ckpt", str(stage1), "--out",
                      str(tmp_path / "eval_reports")])

    # stage 2 starts from stage 1's weights: exactly, before its first step
    loaded = {}
    real = runner_base.apply_init_from

    def spy(model, run_cfg):
        report = real(model, run_cfg)
        loaded.update({k: v.detach().clone() for k, v in {**dict(model.named_buffers()),
                                                          **dict(model.named_parameters())}.items()})
        return report

    monkeypatch.setattr(runner_base, "apply_init_from", spy)
    train_run(["--cfg-path", str(cfg), "--options", f"model.init_from={stage1}", "model.freeze_experts=true",
               f"run.output_dir={stage2}", "run.iters_per_epoch=1"])
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    last = [r for r in read_log(stage2) if r.get("phase") == "train"][-1]
    assert "loss_task" in last and "loss_cls" in last
    final = load_file(str(ckpt.resolve_checkpoint(stage2) / "model.safetensors"))
    experts = [k for k in saved if k.startswith("evidence_stack.experts.")]
    assert experts and all(torch.equal(final[k], saved[k]) for k in experts)  # frozen, and checkpointed
    assert any(k.startswith("reasoner.") for k in final)
    # hero-eval of the stage-2 run works as for any run
    metrics = eval_cli.run(["--cfg-path", str(stage2 / "config.yaml"), "--ckpt", str(stage2), "--max_new_tokens", "2"])
    assert metrics["n_clips"] == 4
