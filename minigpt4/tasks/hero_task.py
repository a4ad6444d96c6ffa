"""The HERO training task (registry name "hero").

Model and datasets come from the registry (`model.arch`, one builder per `datasets` entry);
a train step is the model's own objective (`loss = loss_task + lambda_stmil * loss_stmil +
lambda_sccl * loss_sccl + ...`, each term logged) and a validation step reports the same
terms. Validation also *generates* (`valid_generate`): teacher-forced loss can look excellent
while the reports collapse onto one class, so the runner scores the parsed reports
(`gen_accuracy`, ...) and picks the best checkpoint by them.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

from omegaconf import DictConfig

from minigpt4.evaluation.records import records_from_batch
from minigpt4.evaluation.metrics import generation_metrics
from minigpt4.common.modalities import STACK_ORDER
from minigpt4.common.registry import registry
from minigpt4.models.hero.observation_experts import modality_dims
from minigpt4.tasks.base_task import BaseTask, shared_label_names


@registry.register_task("hero")
class HeroTask(BaseTask):
    """Explainable multimodal emotion understanding: evidence experts + CoT-writing LLM."""

    def build_datasets(self, cfg: DictConfig) -> Dict[str, Dict[str, Any]]:
        datasets = super().build_datasets(cfg)
        # All datasets of one run must share a label set (a builder gives all its splits one).
        shared_label_names((name, next(iter(splits.values()))) for name, splits in datasets.items())
        # every file must be exactly as wide as the model reads each modality (model.*_dim); only
        # feature datasets can be checked, and only a HERO model config has those dims
        checked = [ds for splits in datasets.values() for ds in splits.values() if hasattr(ds, "expect_dims")]
        if checked:
            dims = dict(zip(STACK_ORDER, modality_dims(cfg.get("model"))))
            for ds in checked:
                ds.expect_dims(dims)
        return datasets

    def valid_generate(self, model: Any, samples: Mapping[str, Any], max_new_tokens: int) -> list[dict[str, Any]]:
        """predictions.jsonl-style records of one validation batch (greedy CoT reports)."""
        outputs = model.generate(samples, max_new_tokens=int(max_new_tokens))
        return records_from_batch(samples, outputs, "report", model.label_names, use_cot=True)

    def generation_terms(self, records: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> Dict[str, Any]:
        """`gen_*` validation terms from the records of the whole split, plus its collapse warnings."""
        m = generation_metrics(records, label_names)
        terms = {f"gen_{k}": m[k] for k in ("accuracy", "weighted_f1", "uar", "format_compliance",
                                            "majority_baseline", "max_pred_share", "head_accuracy",
                                            "head_agreement")}
        return {"terms": {k: float(v) for k, v in terms.items() if v is not None},
                "warnings": list(m["collapse_warnings"])}
