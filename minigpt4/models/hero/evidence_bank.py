"""The annotated sentences each expert was trained on, for closed-set evidence decoding.

Free-running (greedy) decoding of a small decoder over the LLM's ~50k-token vocabulary can
drift off every sentence it was taught: on the demo, 37% of the greedy AU sentences were not
any training sentence, while the same decoder, asked which training sentence is likeliest,
picked the right one far more often. `model.evidence_decoder.decoding: bank` writes, for each
expert, the recorded sentence with the highest mean token log-probability under the decoder
(length-normalised: a summed log-probability prefers the shortest sentence).

The bank is recorded at every training step whatever the decoding mode (so a run trained with
greedy decoding can be asked with `bank` at evaluation), and saved with the checkpoint. Each
expert keeps up to `bank_size` distinct sentences; an expert whose annotations have more
(free-form captions, as real corpora write them) is marked `overflow` and always decoded
greedily: a closed set fits templated evidence, not open text. Under DDP the buffers are
broadcast from rank 0 (as all buffers are), so the bank holds what rank 0 saw; with a shuffling
sampler every rank sees every clip within a few epochs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class EvidenceBank(nn.Module):
    """Per expert, up to `bank_size` distinct annotated sentences as token ids.

    Buffers: ids [E, K, L] long (pad beyond each sentence), lengths [E, K] long (0: empty slot),
    overflow [E] (1: more distinct sentences than K were seen; the bank is not used).
    """

    def __init__(self, num_experts: int, bank_size: int, max_len: int, pad_token_id: int) -> None:
        super().__init__()
        if bank_size < 1 or max_len < 1:
            raise ValueError(f"bank_size and max_len must be >= 1, got {bank_size}, {max_len}")
        self.pad_token_id = int(pad_token_id)
        self.register_buffer("ids", torch.full((num_experts, bank_size, max_len), self.pad_token_id, dtype=torch.long))
        self.register_buffer("lengths", torch.zeros((num_experts, bank_size), dtype=torch.long))
        self.register_buffer("overflow", torch.zeros((num_experts,), dtype=torch.long))

    @torch.no_grad()
    def update(self, input_ids: Tensor, attention_mask: Tensor, annotated: Tensor) -> None:
        """Record the annotated sentences of a batch: input_ids / attention_mask [B, E, L'], annotated [B, E] bool.

        Sentences longer than the bank's L are cut to L tokens (the decoder's targets are cut
        to the same `evidence_max_len`).
        """
        rows = annotated.to(self.ids.device).bool().nonzero(as_tuple=False).tolist()
        if not rows:
            return
        ids, mask = input_ids.detach().cpu(), attention_mask.detach().cpu()
        width = self.ids.shape[2]
        known: dict[int, set[tuple[int, ...]]] = {}
        for b, e in rows:
            if int(self.overflow[e]):
                continue
            sentence = tuple(ids[b, e][mask[b, e].bool()].tolist()[:width])
            if not sentence:
                continue
            if e not in known:
                known[e] = {tuple(self.ids[e, k, : int(n)].tolist()) for k, n in enumerate(self.lengths[e].tolist()) if n}
            if sentence in known[e]:
                continue
            free = (self.lengths[e] == 0).nonzero(as_tuple=False)
            if free.numel() == 0:
                self.overflow[e] = 1
                continue
            slot = int(free[0])
            self.ids[e, slot] = self.pad_token_id
            self.ids[e, slot, : len(sentence)] = torch.tensor(sentence, dtype=torch.long)
            self.lengths[e, slot] = len(sentence)
            known[e].add(sentence)

    def candidates(self, expert: int) -> Optional[tuple[Tensor, Tensor]]:
        """(ids [K_e, L_e], attention_mask [K_e, L_e]) of an expert's sentences, or None when the
        bank has none for it or overflowed (decode it greedily)."""
        if int(self.overflow[expert]):
            return None
        filled = (self.lengths[expert] > 0).nonzero(as_tuple=False)[:, 0]
        if filled.numel() == 0:
            return None
        lengths = self.lengths[expert, filled]
        width = int(lengths.max())
        ids = self.ids[expert, filled, :width]
        mask = (torch.arange(width, device=ids.device)[None] < lengths[:, None]).long()
        return ids, mask

    @torch.no_grad()
    def slots_of(self, input_ids: Tensor, attention_mask: Tensor, which: Tensor) -> Tensor:
        """The bank slot of each selected sentence: input_ids / attention_mask [B, E, L'], which [B, E]
        bool -> [B, E] long, -1 where not selected, not recorded, or the expert overflowed.
        Sentences are cut to the bank's L tokens, as `update` records them."""
        b, e = which.shape
        device = which.device
        slots = torch.full((b, e), -1, dtype=torch.long)
        width = self.ids.shape[2]
        ids, mask, which = input_ids.detach().cpu(), attention_mask.detach().cpu().bool(), which.detach().cpu().bool()
        bank_ids, bank_len = self.ids.cpu(), self.lengths.cpu()
        for expert in range(e):
            rows = which[:, expert].nonzero(as_tuple=True)[0]
            if rows.numel() == 0 or int(self.overflow[expert]) or not bool((bank_len[expert] > 0).any()):
                continue
            sent = torch.full((rows.numel(), width), self.pad_token_id, dtype=torch.long)
            cut = ids[rows, expert, :width]
            keep = mask[rows, expert, :width]
            sent[:, : cut.shape[1]] = torch.where(keep, cut, torch.full_like(cut, self.pad_token_id))
            lengths = keep.long().sum(-1)  # left-aligned sentences: the count is the length
            same = (sent[:, None] == bank_ids[expert][None]).all(-1) & (lengths[:, None] == bank_len[expert][None])
            found = same.any(-1)
            slots[rows[found], expert] = same[found].long().argmax(-1)
        return slots.to(device)

    def sizes(self) -> list[int]:
        """Recorded sentences per expert (-1 where it overflowed), for logs and notes."""
        return [-1 if int(o) else int(n) for o, n in zip(self.overflow.tolist(), (self.lengths > 0).sum(-1).tolist())]
