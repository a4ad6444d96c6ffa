"""The HERO training task (registry name "hero").

Model and datasets come from the registry (`model.arch`, one builder per `datasets` entry);
a train step is the model's own objective (`loss = loss_task + lambda_stmil * loss_stmil +
lambda_sccl * loss_sccl + ...`, each term logged) and a validation step reports the same
terms. Generation and emotion metrics are `eval_hero.py`'s job, not the training loop's.
"""
from __future__ import annotations

from typing import Any, Dict

from omegaconf import DictConfig

from minigpt4.common.registry import registry
from minigpt4.tasks.base_task import BaseTask


@registry.register_task("hero")
class HeroTask(BaseTask):
    """Explainable multimodal emotion understanding: evidence experts + CoT-writing LLM."""

    def build_datasets(self, cfg: DictConfig) -> Dict[str, Dict[str, Any]]:
        datasets = super().build_datasets(cfg)
        # All datasets of one run must share a label set, or emotion indices would mean
        # different classes in different batches.
        label_sets = {name: tuple(getattr(next(iter(splits.values())), "label_names", ()) or ())
                      for name, splits in datasets.items()}
        distinct = {v for v in label_sets.values() if v}
        if len(distinct) > 1:
            detail = "; ".join(f"{n}: {list(v)}" for n, v in label_sets.items())
            raise ValueError(f"datasets disagree on label_names ({detail}); use one label set per run")
        return datasets
