"""One set-up path from a config to what a run works on, shared by training and evaluation.

`build_components(cfg)`: config check (run and model values; every dataset section before the
first dataset) -> registry -> `run.imports` -> seed -> task -> datasets -> model, in that order,
so `hero-train` and `hero-eval` build the same model (same parameter names, shapes and, with
the same `run.seed`, the same initial weights) from the same config.
Evaluation builds only the split it scores (`splits=[...]`) and then loads a checkpoint with
`load_weights`; training hands the components to the runner, which owns resuming. Inference
on new clips (`hero-infer`) builds the model alone (`build_model`): the run's corpus need not exist.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from torch import nn

from minigpt4.tasks.base_task import BaseTask


@dataclass(frozen=True)
class Components:
    """What a config builds: the task, its datasets (`{dataset_name: {split: dataset}}`), the model."""

    task: BaseTask
    datasets: dict[str, dict[str, Any]]
    model: nn.Module


def build_components(cfg: DictConfig, splits: Optional[Sequence[str]] = None) -> Components:
    """Task, datasets and model as `cfg` names them, the model initialised from `run.seed`.

    `splits`: build only these splits of every dataset whose builder takes a `splits` key
    (HERO's feature datasets; the other splits' files need not exist). The restriction is
    written into `cfg` (`datasets.<name>.splits`), so a config saved afterwards says what ran.
    """
    task = set_up_task(cfg)
    if splits is not None:
        restrict_splits(cfg, splits)
    check_dataset_configs(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    return Components(task=task, datasets=datasets, model=model)


def set_up_task(cfg: DictConfig) -> BaseTask:
    """The part of the set-up before any dataset: config check, registry, `run.imports`, seed, task."""
    import minigpt4
    from minigpt4.common.config import check_config
    from minigpt4.common.registry import registry
    from minigpt4.common.seed import set_seed

    check_config(cfg)  # every run and model value, before anything is built (also for a hand-made cfg)
    minigpt4.setup_registry()
    for module in cfg.run.get("imports") or []:
        importlib.import_module(str(module))
    set_seed(int(cfg.run.seed))  # same on every rank, and in train and eval: identical model init
    return registry.get_task_class(cfg.run.task).setup_task(cfg)


def build_model(cfg: DictConfig) -> nn.Module:
    """The model `build_components(cfg)` builds, without building (or reading) any dataset.

    For inference on clips outside the run's corpus, whose annotation and feature files may not
    exist where the run was trained. Same seed and construction order as `build_components`
    (dataset building draws no random numbers), so the same config gives the same initial model.
    """
    task = set_up_task(cfg)
    return task.build_model(cfg)


def check_dataset_configs(cfg: DictConfig) -> None:
    """Check every HERO feature dataset's section (types, ranges; `HEROBuilder.check`) before the first
    dataset is built, so a bad value in the second one does not wait for the first one's files."""
    from minigpt4.common.registry import registry
    from minigpt4.datasets.builders.hero_builder import HEROBuilder

    for name, section in (cfg.get("datasets") or {}).items():
        builder_cls = registry.get_builder_class(name)
        if builder_cls is not None and issubclass(builder_cls, HEROBuilder):
            builder_cls(section)


def restrict_splits(cfg: DictConfig, splits: Sequence[str]) -> None:
    """Set `datasets.<name>.splits` to `splits` for every configured HERO feature dataset."""
    from minigpt4.common.registry import registry
    from minigpt4.datasets.builders.hero_builder import HEROBuilder

    for name in list(cfg.get("datasets") or {}):
        builder_cls = registry.get_builder_class(name)
        if builder_cls is not None and issubclass(builder_cls, HEROBuilder):
            OmegaConf.update(cfg, f"datasets.{name}.splits", list(splits), force_add=True)


def load_weights(model: nn.Module, checkpoint: Union[str, Path], cfg: DictConfig, cfg_source: str = "",
                 finished_decoder: bool = True) -> str:
    """Load a checkpoint's trainable weights into `model` (strict); returns the `.safetensors` used.

    With `finished_decoder`, the evidence decoder `hero-finish-evidence` finished for this
    checkpoint (if the run has one) replaces the checkpoint's; `model.evidence_finish` then holds
    that finish's numbers (None otherwise). On a mismatch the error also names the `model.*`
    keys where the run's saved config.yaml differs from `cfg`: the usual cause is evaluating
    with a config other than the training one.
    """
    from minigpt4.common import checkpoint as ckpt_api
    from minigpt4.evaluation.records import run_dir_of
    from minigpt4.runners.evidence_finish import apply_finished_decoder

    try:
        loaded = ckpt_api.load_model_weights(model, checkpoint)
        finish = None
        if finished_decoder and hasattr(model, "evidence_stack"):
            finish = apply_finished_decoder(model, run_dir_of(checkpoint), ckpt_api.resolve_checkpoint(checkpoint))
        model.evidence_finish = finish
        return loaded
    except ckpt_api.CheckpointMismatchError as exc:
        hint = ""
        saved = run_dir_of(checkpoint) / "config.yaml"
        diff = model_cfg_diff(saved, cfg) if saved.is_file() else []
        if diff:
            hint = f"; the run's {saved} differs in " + ", ".join(diff[:5])
        raise ckpt_api.CheckpointMismatchError(
            f"checkpoint does not match the model built from {cfg_source or 'the config'}: {exc}{hint}") from None


def _model_sections(saved_yaml: Path, cfg: Any) -> Optional[tuple[Any, Any]]:
    """(the run's saved `model` section, `cfg`'s), or None if either is missing or config.yaml is unreadable
    (then the callers report no difference: a hint or a drift check is lost, not the evaluation)."""
    try:
        saved = OmegaConf.load(saved_yaml)
    except Exception:
        return None
    old, new = saved.get("model"), cfg.get("model")
    return None if old is None or new is None else (old, new)


def _section_diff(old: Any, new: Any, ignore: frozenset[str] = frozenset(),
                  only: Optional[frozenset[str]] = None) -> list[str]:
    """`model.<key> (<old> in the run, <new> here)` for every leaf key whose value differs (sorted),
    keys in `ignore` left out; with `only`, just the keys it names and those below them."""
    from minigpt4.common.config import flatten_keys

    diff = []
    keys = (set(flatten_keys(old)) | set(flatten_keys(new))) - ignore
    if only is not None:
        keys = {k for k in keys if any(k == o or k.startswith(o + ".") for o in only)}
    for k in sorted(keys):
        a = OmegaConf.select(old, k, default="<unset>", throw_on_missing=False)
        b = OmegaConf.select(new, k, default="<unset>", throw_on_missing=False)
        if OmegaConf.is_config(a) or OmegaConf.is_config(b):
            continue
        if a != b:
            diff.append(f"model.{k} ({a!r} in the run, {b!r} here)")
    return diff


def model_cfg_diff(saved_yaml: Path, cfg: Any) -> list[str]:
    """Dotted `model.*` keys whose value differs between a run's saved config.yaml and `cfg`, as written."""
    sections = _model_sections(saved_yaml, cfg)
    return _section_diff(*sections) if sections else []


# model keys that say how a training run started (README "Staged training"), not what its weights compute
TRAINING_MODEL_KEYS: frozenset[str] = frozenset({"init_from", "freeze_experts", "freeze_evidence_stack"})


class ConfigDriftError(ValueError):
    """The config differs from the run's own `config.yaml` in keys that change what the model computes."""


def typed_model_diff(saved_yaml: Path, cfg: Any, ignore: frozenset[str] = frozenset(),
                     only: Optional[frozenset[str]] = None) -> list[str]:
    """`model.*` keys (but those in `ignore`; with `only`, just those) whose value differs between a run's
    config.yaml and `cfg`, compared after the schema has filled both with its defaults (a key one side
    leaves unset is its default); raw keys without a schema."""
    import dataclasses

    from minigpt4.common.schema import MODEL_SCHEMAS, ConfigError, build

    sections = _model_sections(saved_yaml, cfg)
    if sections is None:
        return []
    old, new = sections
    schema = MODEL_SCHEMAS.get(str(new.get("arch")))
    if schema is not None and str(old.get("arch")) == str(new.get("arch")):
        try:
            old, new = (OmegaConf.create(dataclasses.asdict(build(schema, section, "model.", where)))
                        for section, where in ((old, str(saved_yaml)), (new, "config")))
        except ConfigError:
            pass  # a config the schema cannot read: compare the keys as written
    return _section_diff(old, new, ignore, only)


def check_config_drift(checkpoint: Union[str, Path], cfg: DictConfig, cfg_source: str = "") -> list[str]:
    """Raise ConfigDriftError when `cfg` builds a model other than the one the checkpoint's run trained,
    in a way the weights' shapes cannot show (a permuted label set, temporal positions off, another LoRA
    scale: same shapes, other predictions). Keys that only choose how the model is asked
    (`schema.INFERENCE_MODEL_KEYS`) or how its training started (`TRAINING_MODEL_KEYS`) may differ.
    Returns the differences (empty: none, or no config.yaml)."""
    from minigpt4.common.schema import INFERENCE_MODEL_KEYS
    from minigpt4.evaluation.records import run_dir_of

    saved = run_dir_of(checkpoint) / "config.yaml"
    diff = typed_model_diff(saved, cfg, INFERENCE_MODEL_KEYS | TRAINING_MODEL_KEYS) if saved.is_file() else []
    if diff:
        raise ConfigDriftError(
            f"{cfg_source or 'the config'} differs from the run's {saved} in " + "; ".join(diff[:8])
            + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else "")
            + ": evaluate with the run's config.yaml (--cfg-path), or pass --allow_config_drift to do it anyway")
    return diff

