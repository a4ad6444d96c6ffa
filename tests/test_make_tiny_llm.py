"""make_tiny_llm (minigpt4/common/tiny_llm.py): the demo LLM loads through the real from_pretrained path
and can stop."""
from __future__ import annotations

from pathlib import Path

import pytest

import torch
from safetensors.torch import load_file

from minigpt4.common.tiny_llm import make_tiny_llm


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    (path,) = sorted(folder.glob("*.safetensors"))
    return load_file(str(path))


def test_tiny_llm_loads_with_auto_classes_and_has_a_chat_template(tiny_llm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert tok.chat_template and tok.eos_token_id is not None
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()


def test_eos_row_is_drawn_so_the_model_can_learn_to_stop(tiny_llm_dir):
    """Padding with EOS must not leave EOS a zero (tied) embedding row: its logit would be stuck at 0."""
    weights = _weights(tiny_llm_dir)
    emb = weights["model.embed_tokens.weight"]
    from transformers import AutoConfig

    eos = AutoConfig.from_pretrained(tiny_llm_dir).eos_token_id
    assert emb[eos].abs().sum() > 0
    assert 0.5 < float(emb[eos].std() / emb.std()) < 2.0


def test_same_seed_same_weights(tmp_path, tiny_llm_dir):
    again = make_tiny_llm(tmp_path / "again", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)
    a, b = _weights(tiny_llm_dir), _weights(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = make_tiny_llm(tmp_path / "other", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=1)
    assert not torch.equal(_weights(other)["model.embed_tokens.weight"], a["model.embed_tokens.weight"])


def test_output_folder_is_replaced_only_when_it_holds_a_model(tmp_path, tiny_llm_dir):
    """A rerun replaces an earlier model folder; a folder with anything else is refused, untouched."""
    out = tmp_path / "llm"
    make_tiny_llm(out, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=1)
    make_tiny_llm(out, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)
    assert torch.equal(_weights(out)["model.embed_tokens.weight"], _weights(tiny_llm_dir)["model.embed_tokens.weight"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        make_tiny_llm(mine, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
