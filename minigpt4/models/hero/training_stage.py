"""Staged training (README "Staged training"): what each `model.train_stage` trains and runs.

- `joint` (default): the single joint run, the evidence stack and the LLM (through LoRA) together.
- `observation`: observation pre-training. The evidence stack alone trains, on its auxiliary
  losses (`loss = loss_aux`: SCCL, STMIL, synergy matching, evidence, and the classification
  head's `loss_cls` when it is on). The LLM is loaded for its tokenizer, its embedding width and
  the frozen sentence embeddings the evidence targets use, but never run, and every LLM parameter
  (LoRA included) is frozen: the optimiser and the checkpoints hold no LLM weight. Validation does
  not generate (`can_generate` False); it reports `cls_accuracy`, the head's accuracy on labelled
  clips, which `run.best_metric: auto` then selects.

`model.freeze_experts` (reasoning tuning started from `model.init_from`) freezes the five modality
experts and the synergy expert; `model.freeze_evidence_stack` freezes the whole evidence stack
(experts, integration, evidence decoder, heads, the projection into the LLM; its closed-form parts
are not refitted either), so only the LLM's LoRA trains (and the context bridge, `model.context_dim`)
and the class decision stays the one `init_from`'s run validated; the vCLUB
q-network keeps its own optimiser (it only measures, and keeps up with the fixed representations).
Frozen weights still go into every checkpoint (as state the model names, like its buffers), so an
evaluation of the run reads the weights it trained with.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

OBSERVATION = "observation"
AUX_TERMS = ("stmil", "sccl", "synergy", "evidence", "cls", "expert_cls")  # model.lambda_<term> observation trains on
CLS_ACCURACY = "cls_accuracy"  # the validation term of the classification head in observation pre-training


def expert_modules(stack: nn.Module) -> list[nn.Module]:
    """The evidence stack's five modality experts and its synergy expert (when it has one)."""
    return list(stack.experts) + ([stack.synergy] if getattr(stack, "synergy", None) is not None else [])


def frozen_parameters(stack: nn.Module, freeze_experts: bool, freeze_evidence_stack: bool) -> list[nn.Parameter]:
    """The evidence-stack parameters reasoning tuning keeps at `init_from`'s weights."""
    if freeze_evidence_stack:
        estimator = {id(p) for p in stack.estimator_parameters()}
        return [p for p in stack.parameters() if id(p) not in estimator]
    if freeze_experts:
        return [p for m in expert_modules(stack) for p in m.parameters()]
    return []


def apply_stage(model: nn.Module, train_stage: str, freeze_experts: bool, freeze_evidence_stack: bool = False) -> None:
    """Freeze what the stage does not train: the whole LLM in observation pre-training (it is not run),
    the experts with `freeze_experts`, the evidence stack with `freeze_evidence_stack`. Everything else
    keeps the `requires_grad` it was built with."""
    if train_stage == OBSERVATION:
        if not any(model.evidence_stack.lambdas.get(k, 0.0) > 0 for k in AUX_TERMS):
            raise ValueError("model.train_stage: observation trains on the auxiliary losses alone; set one of "
                             + ", ".join(f"model.lambda_{k}" for k in AUX_TERMS) + " > 0")
        model.reasoner.requires_grad_(False)
    for p in frozen_parameters(model.evidence_stack, freeze_experts, freeze_evidence_stack):
        p.requires_grad_(False)


def frozen_parameter_names(model: nn.Module, freeze_experts: bool, freeze_evidence_stack: bool = False) -> list[str]:
    """Names of the frozen evidence-stack parameters (checkpointed although no gradient reaches them)."""
    frozen = {id(p) for p in frozen_parameters(model.evidence_stack, freeze_experts, freeze_evidence_stack)}
    return [name for name, p in model.named_parameters() if id(p) in frozen]


def head_accuracy(logits: Optional[Tensor], emotion: Any) -> Optional[Tensor]:
    """Share of labelled clips (emotion >= 0) whose head argmax is their label; None without head or labels."""
    if logits is None or not isinstance(emotion, Tensor):
        return None
    labels = emotion.to(logits.device).long()
    valid = labels >= 0
    if not bool(valid.any()):
        return None
    return (logits.detach()[valid].argmax(dim=-1) == labels[valid]).float().mean()


def observation_loss(output: Any, training: bool) -> Tensor:
    """`loss_aux` as the whole objective. A training batch where no term could be formed still gets a
    (zero) loss attached to the graph, so the runner's backward has something to run through."""
    loss = output.loss_aux if output.loss_aux is not None else torch.zeros((), device=output.context.device)
    if training and not loss.requires_grad and output.context.requires_grad:
        loss = loss + 0.0 * output.context.float().sum()
    return loss


def refuse_generation(train_stage: str) -> None:
    """An observation pre-training run has an untrained LLM: its reports would say nothing about the run."""
    if train_stage == OBSERVATION:
        raise ValueError("this model was trained with model.train_stage: observation (observation pre-training): "
                         "its LLM was never trained, so it writes no reports. Read its classification head "
                         "(hero-eval --use_cls_head), or train reasoning tuning from it "
                         "(configs/models/hero_stage2.yaml, model.init_from)")
