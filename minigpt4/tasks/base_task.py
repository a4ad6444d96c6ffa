"""BaseTask: what a training task decides (model, datasets, one train/valid step); the runner
decides everything about the loop (devices, optimisers, DDP, logging, checkpoints).

The model contract (docs/ARCHITECTURE.md "Runner <-> model"): `model(samples)` returns a
mapping with a scalar `loss` tensor, any number of other scalar terms, and optionally
`aux_losses: {name: scalar tensor}` for parameters that train with their own optimiser.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterable, Mapping, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from minigpt4.common.registry import registry

logger = logging.getLogger(__name__)


class ModelOutputError(TypeError):
    """The model returned something the runner cannot train on."""


def check_model_output(output: Any) -> Mapping[str, Any]:
    """Validate `model(samples)`: a mapping with a scalar tensor `loss`, scalar `aux_losses`."""
    if not isinstance(output, Mapping):
        raise ModelOutputError(f"model(samples) must return a dict with a 'loss' tensor, got {type(output).__name__}")
    loss = output.get("loss")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ModelOutputError("model(samples)['loss'] must be a scalar tensor, got "
                               f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    aux = output.get("aux_losses")
    if aux is not None:
        if not isinstance(aux, Mapping):
            raise ModelOutputError("model(samples)['aux_losses'] must be a dict name -> scalar tensor")
        for name, value in aux.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ModelOutputError(f"aux_losses[{name!r}] must be a scalar tensor")
    return output


def scalar_terms(output: Mapping[str, Any]) -> Dict[str, float]:
    """Every scalar of a model output as a float; `aux_losses[name]` becomes `loss_<name>`.

    Non-scalar entries (logits, attention weights, ...) are skipped.
    """
    terms: Dict[str, float] = {}
    for key, value in output.items():
        if key == "aux_losses":
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            terms[key] = float(value.detach().float().item())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            terms[key] = float(value)
    for name, value in (output.get("aux_losses") or {}).items():
        terms[f"loss_{name}"] = float(value.detach().float().item())
    return terms


class LabelSetError(ValueError):
    """Datasets of one run (or one evaluated split) name different emotion label sets."""


def shared_label_names(datasets: Iterable[Tuple[str, Any]]) -> list[str]:
    """The one `label_names` list that the named datasets share ([] when none declares one).

    Datasets without `label_names` are ignored; two different non-empty lists are an error:
    emotion indices would mean different classes in different batches.
    """
    named = [(str(name), tuple(getattr(ds, "label_names", ()) or ())) for name, ds in datasets]
    distinct = {labels for _, labels in named if labels}
    if len(distinct) > 1:
        detail = "; ".join(f"{name}: {list(labels)}" for name, labels in named)
        raise LabelSetError(f"datasets disagree on label_names ({detail}); use one label set per run")
    return list(next(iter(distinct))) if distinct else []


class BaseTask:
    """Builds the model and datasets from a config and runs one train or validation step."""

    def __init__(self, cfg: DictConfig | None = None) -> None:
        self.cfg = cfg

    @classmethod
    def setup_task(cls, cfg: DictConfig) -> "BaseTask":
        return cls(cfg)

    def build_model(self, cfg: DictConfig) -> nn.Module:
        """`registry.get_model_class(cfg.model.arch).from_config(cfg.model)`."""
        model_cfg = cfg.get("model")
        if model_cfg is None or "arch" not in model_cfg:
            raise ValueError("config has no model.arch: say which registered model to build "
                             f"(registered: {', '.join(registry.list('model')) or 'none'})")
        model_cls = registry.get_model_class(model_cfg.arch)
        if not hasattr(model_cls, "from_config"):
            raise TypeError(f"model class {model_cls.__name__} (arch {model_cfg.arch!r}) has no from_config")
        return model_cls.from_config(model_cfg)

    def build_datasets(self, cfg: DictConfig) -> Dict[str, Dict[str, Any]]:
        """`{dataset_name: {split: dataset}}`, one registered builder per `cfg.datasets` entry."""
        datasets_cfg = cfg.get("datasets")
        if not datasets_cfg:
            raise ValueError("config has no datasets section: name at least one registered dataset builder "
                             f"(registered: {', '.join(registry.list('builder')) or 'none'})")
        out: Dict[str, Dict[str, Any]] = {}
        for name, dataset_cfg in datasets_cfg.items():
            builder = registry.get_builder_class(name)(dataset_cfg)
            splits = builder.build_datasets()
            if not isinstance(splits, Mapping) or not splits:
                raise TypeError(f"builder {name!r} must return a non-empty dict split -> dataset, got {splits!r}")
            for split, ds in splits.items():
                if not hasattr(ds, "collater"):
                    raise TypeError(f"dataset {name}/{split} ({type(ds).__name__}) has no .collater(samples)")
            out[str(name)] = dict(splits)
        return out

    def train_step(self, model: nn.Module, samples: Mapping[str, Any]) -> Mapping[str, Any]:
        """Forward one batch; returns the checked model output (the runner back-propagates)."""
        return check_model_output(model(samples))

    def valid_step(self, model: nn.Module, samples: Mapping[str, Any]) -> Dict[str, float]:
        """Scalar loss terms of one batch (called under `torch.no_grad`, model in eval mode)."""
        terms = scalar_terms(check_model_output(model(samples)))
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        if bad:
            logger.warning("non-finite validation terms: %s", ", ".join(bad))
        return terms
