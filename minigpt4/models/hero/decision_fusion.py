"""The class decision: the classification head alone, the head and every present expert's own
read-out, or a linear read-out of the summaries refitted from the training split (`refit_readout.py`).

Why: measured on ten trained runs (two corpora, test split), the head on the integrated context
was right less often than the head and the per-expert emotion read-outs voting together as a
product of experts (shift corpus +0.031 on average, 5 of 5 runs higher; demo +0.011, none
lower): each read-out is trained on its own modality, so it keeps evidence the integrated
context can lose. Each term stays trained by its own cross-entropy (`loss_cls`,
`loss_expert_cls`); the fused decision itself trains nothing, it is what the `[fused]` brief
line, the report's confidence and `--use_cls_head` read.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F

from torch import Tensor


def fused_decision(head_logits: Tensor, expert_logits: Tensor, present: Tensor) -> Tensor:
    """log p_head + sum over present experts of log p_expert: [B, C] from head_logits [B, C],
    expert_logits [B, E, C] and present [B, E] bool (an absent expert adds nothing)."""
    experts = F.log_softmax(expert_logits.float(), dim=-1) * present[..., None].float()
    return F.log_softmax(head_logits.float(), dim=-1) + experts.sum(dim=1)


def class_decision(decision: str, head_logits: Optional[Tensor], expert_logits: Optional[Tensor], present: Tensor,
                   refit_logits: Optional[Tensor]) -> Optional[Tensor]:
    """`model.decision`'s logits [B, C]: head | head_and_experts (`fused_decision`) | refit (the refitted
    read-out's, the head's until its first refit); None without a head."""
    if head_logits is None:
        return None
    if decision == "head_and_experts":
        return fused_decision(head_logits, expert_logits, present)
    if decision == "refit" and refit_logits is not None:
        return refit_logits
    return head_logits
