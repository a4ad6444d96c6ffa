"""The tokens the evidence decoder has been trained to write: its compact output vocabulary.

The decoder's tokens are the LLM tokenizer's (~50k), but the evidence it learns uses a few
hundred of them. Scoring all 50k at every position was the largest share of the decoder's cost
(the [rows, 50k] logits, their log-softmax and its backward, at every teacher-forced position and
every greedy step of the training brief). `EvidenceVocabulary` records, while training, the
sorted set of token ids the decoder was taught; the decoder then scores only those (its tied
embedding rows), and `generate` / `score` choose among them. A token never taught cannot be
written, which is also what a trained full-vocabulary decoder does in practice.

Empty (an untrained decoder, or a checkpoint saved before this existed) or overflowed (more
distinct tokens than `capacity`: free-form evidence) -> the full vocabulary, as before. Saved with
the checkpoint; under DDP rank 0's buffers are broadcast at every forward, and each rank adds its
own batch's tokens before it scores them, so every target is always in the set it is scored
against.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


class EvidenceVocabulary(nn.Module):
    """Sorted distinct token ids seen as decoder targets (buffers: ids [capacity], count, overflow)."""

    def __init__(self, vocab_size: int, capacity: int) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.vocab_size = int(vocab_size)
        # unused slots hold vocab_size: past every real id, so the filled prefix stays sorted
        self.register_buffer("ids", torch.full((int(capacity),), self.vocab_size, dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("overflow", torch.zeros((), dtype=torch.long))

    @property
    def capacity(self) -> int:
        return int(self.ids.shape[0])

    def active(self) -> Optional[Tensor]:
        """The recorded ids [K] (sorted), or None: score the full vocabulary (empty or overflowed)."""
        n = int(self.count)
        if n == 0 or int(self.overflow):
            return None
        return self.ids[:n]

    @torch.no_grad()
    def observe(self, tokens: Tensor) -> None:
        """Add the distinct ids of `tokens` (any shape); past `capacity` the set overflows for good."""
        if int(self.overflow) or tokens.numel() == 0:
            return
        merged = torch.unique(torch.cat([self.ids[: int(self.count)], tokens.reshape(-1).to(self.ids.device)]))
        if merged.numel() > self.capacity:
            self.overflow.fill_(1)
            logger.warning("the evidence decoder's targets use more than %d distinct tokens "
                           "(model.evidence_decoder.output_vocab_size): it scores the full vocabulary from now on",
                           self.capacity)
            return
        self.ids[: merged.numel()] = merged
        self.count.fill_(merged.numel())

    def with_targets(self, targets: Tensor) -> Optional[Tensor]:
        """The ids to score a loss against: the recorded set and every id of `targets`, sorted; None: full."""
        active = self.active()
        if active is None:
            return None
        return torch.unique(torch.cat([active, targets.reshape(-1).to(active.device)]))
