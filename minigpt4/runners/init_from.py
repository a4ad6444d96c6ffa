"""`model.init_from`: a fresh training run starts from another run's weights (weights only).

Staged training (README "Staged training"): reasoning tuning starts from an observation
pre-training run. Applied once, when a fresh training run starts (`RunnerBase.train`): a resumed
run has its own full state, and evaluation and inference load the run's own checkpoint. Only
weights are taken, never an optimiser, a step or RNG states.

What is refused, as an `InitFromError` naming the file and the keys:
- a run whose saved `config.yaml` differs from this config in a key that shapes the evidence
  stack or gives its weights their meaning (`ARCHITECTURE_MODEL_KEYS`: equal shapes can still
  mean other things, e.g. a permuted label set or another LLM's embeddings);
- a tensor of the file that is not a parameter or buffer of the model, or has another shape.
The model's parameters the file does not hold (the LoRA adapters of a stage-1 checkpoint, which
has no LLM weight) keep their initial values. From a run through another LLM (same tokenizer), that
LLM's adapters are not loaded, nor `EMBEDDING_READERS` tensors of another width; the integrated
context keeps the run's width when `model.context_dim` says so (a trained bridge maps it into this LLM).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from minigpt4.common import checkpoint as ckpt
from minigpt4.common.schema import ConfigError

logger = logging.getLogger(__name__)

# model keys (and the sections below them) whose values a `model.init_from` run must share with this config
ARCHITECTURE_MODEL_KEYS: frozenset[str] = frozenset({
    "arch", "visual_dim", "video_dim", "audio_dim", "au_dim", "text_dim", "hidden_dim", "num_heads", "num_queries",
    "num_qformer_layers", "num_output_queries", "ffn_ratio", "temporal_position", "frame_encoder_layers", "frame_contrast",
    "include_synergy", "integration_strategy", "label_names", "num_classes", "sccl_dim", "stmil.hidden_dim",
    "evidence_max_len", "evidence_decoder.embed_dim", "evidence_decoder.num_layers", "evidence_decoder.num_heads",
    "evidence_decoder.max_len", "evidence_decoder.condition_on_readout", "evidence_decoder.bank_size",
})
# `model.llm.path` may differ when both LLMs share the tokenizer (`check_same_tokenizer`); their width shows
# in the tensors' shapes, and the other LLM's adapters are not loaded: a shallow trunk of the LLM trains the
# joint run whose evidence stack the full LLM then starts from
# tensors that read the LLM's token-embedding table (SCCL's side of the golden sentences): from another LLM of
# another width they cannot load, and start fresh (the integrated context may keep its width: model.context_dim)
EMBEDDING_READERS: tuple[str, ...] = ("evidence_stack.sccl_text_proj.",)
CONTEXT_OUT = "evidence_stack.integration.out_proj.1.weight"  # [context width, hidden_dim]
_SHOWN = 8  # offending keys named in an error
LLM_PREFIX = "reasoner."  # the LLM's tensors (its LoRA adapters) in a checkpoint


class InitFromError(ConfigError):
    """A `model.init_from` checkpoint this config cannot start from; the message names the file and keys."""


@dataclass(frozen=True)
class InitFromReport:
    """What `apply_init_from` loaded: the file, its tensors per part, and the trainable tensors it left as built."""

    file: str
    loaded: dict[str, int]  # part of the model -> tensors loaded
    kept: dict[str, int]  # part -> trainable tensors the file does not hold (initial values)

    @property
    def n_loaded(self) -> int:
        return sum(self.loaded.values())


def _listed(items: list[str]) -> str:
    return ckpt.first_items(items, _SHOWN)


def part_of(name: str) -> str:
    """The model part a tensor belongs to, for the log: `evidence_stack.<module>`, else the top module."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "evidence_stack" and len(parts) > 2 else parts[0]


def _model_value(cfg: Any, *keys: str) -> Optional[str]:
    """`model.<keys>` of a run config as a string, or None when unset (also when a section on the way is missing)."""
    node = cfg
    for key in ("model", *keys):
        node = node.get(key) if hasattr(node, "get") else None
    return str(node) if node else None


def init_source(cfg: Any) -> Optional[str]:
    """`model.init_from` of a run config, or None (also for a model section without the key)."""
    return _model_value(cfg, "init_from")


def resolve_source(source: str) -> Path:
    """The `.safetensors` file `model.init_from` names: a checkpoint folder, a file, or a run folder
    (its best checkpoint by validation, else its latest), as hero-eval resolves `--ckpt`."""
    try:
        found = ckpt.resolve_checkpoint(source, prefer_best=True)
    except (FileNotFoundError, ValueError) as exc:
        raise InitFromError(f"model.init_from={source!r}: {exc}") from None
    return found if found.is_file() else found / ckpt.MODEL_FILE


def check_compatible(file: Path, cfg: Any) -> bool:
    """Refuse a file whose run's config.yaml differs from `cfg` in `ARCHITECTURE_MODEL_KEYS`; without a
    config.yaml (an exported weights file) only the tensors' names and shapes are checked. Returns whether
    the run trained another `model.llm.path` (with the same tokenizer): its LLM tensors are then not loaded."""
    from minigpt4.evaluation.records import run_dir_of
    from minigpt4.runners.components import typed_model_diff

    saved = run_dir_of(file) / "config.yaml"
    if not saved.is_file():
        logger.warning("model.init_from: no config.yaml in %s; checking %s by tensor names and shapes only",
                       saved.parent, file)
        return False
    diff = typed_model_diff(saved, cfg, only=ARCHITECTURE_MODEL_KEYS)
    if diff:
        raise InitFromError(f"model.init_from: {file} was trained with an incompatible model config ({saved}): "
                            f"{_listed(diff)}; start from a run with the same model keys, or drop model.init_from")
    return check_same_tokenizer(saved, cfg)


def check_same_tokenizer(saved_yaml: Path, cfg: Any) -> bool:
    """A run trained with another `model.llm.path` may seed this one only when both LLMs share the
    tokenizer: the evidence decoder's vocabulary, the prompts and the sentence embeddings index it.
    Returns whether the paths differ (the tokenizers then compared equal).
    Why another LLM at all: a joint run through a shallow trunk of the LLM costs a fraction of one
    through the full model, which then starts from its weights (README "A real pretrained LLM")."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    before, now = _model_value(OmegaConf.load(saved_yaml), "llm", "path"), _model_value(cfg, "llm", "path")
    if before is None or now is None or before == now:
        return False
    vocabs = {}
    for path in (before, now):
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise InitFromError(f"model.init_from: {saved_yaml} was trained with model.llm.path={before!r}, this "
                                f"config uses {now!r}; the tokenizer of {path!r} cannot be read to compare them "
                                f"({exc})") from None
        vocabs[path] = (tok.get_vocab(), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    if vocabs[before] != vocabs[now]:
        raise InitFromError(f"model.init_from: {saved_yaml} was trained with model.llm.path={before!r}, whose "
                            f"tokenizer differs from that of {now!r} (this config): start from a run with the same "
                            "tokenizer, or drop model.init_from")
    logger.info("model.init_from: trained with model.llm.path=%r, this run uses %r (same tokenizer); its "
                "evidence stack loads, that LLM's adapters do not", before, now)
    return True


def read_state(file: Path) -> dict[str, torch.Tensor]:
    """The file's tensors (`checkpoint.read_model_file`: sha256 checked first; safetensors, no pickle)."""
    try:
        return ckpt.read_model_file(file)
    except ckpt.CheckpointCorruptError:
        raise
    except ValueError as exc:
        raise InitFromError(f"model.init_from: {exc}") from exc


def load_subset(model: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> InitFromReport:
    """Copy every tensor of `state` into the model's parameter or buffer of that name; each must exist
    with the same shape (else nothing is copied). Returns what was loaded and what was kept."""
    fit = ckpt.state_fit(model, state)
    problems = ([f"keys the model does not have: {_listed(fit.unexpected)}"] if fit.unexpected else []) + \
        ([f"shape mismatches: {_listed(sorted(fit.shapes))}"] if fit.shapes else [])
    if CONTEXT_OUT in fit.mismatched:  # written for an LLM of another width
        problems.append(f"its integrated context is {state[CONTEXT_OUT].shape[0]} wide: set model.context_dim="
                        f"{state[CONTEXT_OUT].shape[0]} to keep it (a trained bridge maps it into this LLM)")
    if problems:
        raise InitFromError(f"model.init_from: {file} does not fit the model built from this config: "
                            + "; ".join(problems))
    fit.copy(state)
    return InitFromReport(file=str(file), loaded=dict(Counter(part_of(k) for k in state)),
                          kept=dict(Counter(part_of(k) for k in fit.missing)))


def drop_other_embedding_readers(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the `EMBEDDING_READERS` modules with a tensor whose shape differs from the model's: they
    read another LLM's embedding table, of another width, and keep this model's initial values (logged)."""
    mismatched = ckpt.state_fit(model, state).mismatched
    wider = tuple(prefix for prefix in EMBEDDING_READERS if any(k.startswith(prefix) for k in mismatched))
    other = [k for k in state if k.startswith(wider)]  # a module's weight and bias go together
    if other:
        logger.info("model.init_from: %s read the other LLM's token embeddings (another width): not loaded, "
                    "at their initial values", _listed(other))
    return {k: v for k, v in state.items() if k not in other}


def apply_init_from(model: nn.Module, cfg: Any) -> Optional[InitFromReport]:
    """Load `model.init_from`'s weights into `model` (a fresh run only: the runner decides); None when unset."""
    source = init_source(cfg)
    if source is None:
        return None
    file = resolve_source(source)
    other_llm = check_compatible(file, cfg)
    state = read_state(file)
    if other_llm:  # its LoRA adapted another network: this LLM's adapters start fresh
        skipped = [k for k in state if k.startswith(LLM_PREFIX)]
        state = {k: v for k, v in state.items() if not k.startswith(LLM_PREFIX)}
        logger.info("model.init_from: %d tensors of the other LLM's adapters not loaded (%s)", len(skipped),
                    _listed(skipped) if skipped else "none")
        state = drop_other_embedding_readers(model, state)
    report = load_subset(model, state, file)
    logger.info("model.init_from: loaded %d tensors from %s (%s); trainable tensors not in it, at their initial "
                "values: %s", report.n_loaded, file, ", ".join(f"{k} {v}" for k, v in sorted(report.loaded.items())),
                ", ".join(f"{k} {v}" for k, v in sorted(report.kept.items())) or "none")
    return report
