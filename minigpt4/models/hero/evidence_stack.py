"""The evidence half of HERO: feature stack -> six observation experts -> integrated context.

(Early public API; the implementation follows in the next commits.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn


@dataclass
class EvidenceTargets:
    """Golden evidence sentences per expert (EXPERT_ORDER), built by HEROModel with the LLM tokenizer.

    input_ids [B, 6, L] long (pad id beyond each sentence, no BOS/EOS), attention_mask [B, 6, L]
    (1 = real token), present [B, 6] bool (golden sentence exists), sentence_embeds
    [B, 6, llm_dim] float (frozen: mean of the LLM's input embeddings over the sentence tokens).
    """

    input_ids: Tensor
    attention_mask: Tensor
    present: Tensor
    sentence_embeds: Tensor


@dataclass
class EvidenceOutput:
    """What the evidence stack hands to the reasoner (shapes for a batch of B clips)."""

    context: Tensor  # [B, num_output_queries, llm_dim]
    modality_weights: Tensor  # [B, 6], sums to 1 over present experts, 0 for absent ones
    expert_present: Tensor  # [B, 6] bool
    summaries: Tensor  # [B, 6, H] (zeros for absent experts)
    synergy_score: Tensor  # [B] in [0, 1]
    expert_tokens: Tensor  # [B, 6, Q, H] (zeros for absent experts); input of the evidence decoder
    losses: dict[str, Tensor] = field(default_factory=dict)  # unweighted terms, keys loss_*
    loss_aux: Optional[Tensor] = None  # scalar, sum of lambda_* x term
    estimator_loss: Optional[Tensor] = None  # scalar vCLUB q-network NLL (detached inputs) or None
    cls_logits: Optional[Tensor] = None  # [B, num_classes] when use_cls_head


class HEROEvidenceStack(nn.Module):
    """Slicing, five ModalityQFormers, SynergyExpert, EvidenceDecoder, integration, STMIL/SCCL."""

    def __init__(self, cfg_model: Any, llm_dim: int, vocab_size: int, bos_token_id: int,
                 eos_token_id: int, pad_token_id: int) -> None:
        super().__init__()
        raise NotImplementedError("HEROEvidenceStack is being implemented (issue 4)")

    def forward(self, samples: Mapping[str, Any], targets: Optional[EvidenceTargets] = None,
                compute_losses: bool = True) -> EvidenceOutput:
        raise NotImplementedError

    @torch.no_grad()
    def generate_evidence(self, output: EvidenceOutput, max_new_tokens: int) -> Tensor:
        """Greedy evidence sentences -> LongTensor [B, 6, L] padded with pad_token_id (no BOS/EOS)."""
        raise NotImplementedError

    def estimator_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError
