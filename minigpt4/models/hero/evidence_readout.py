"""Closed-set evidence from a linear read-out of each expert's summary, refitted from the training split.

Why: on trained runs a logistic regression on an expert's own summary names the evidence its
annotations give far more often than the evidence decoder writes it (demo, one run: audio
state 0.86 against the decoder's 0.76, visual 0.93 against 0.82, synergy 0.77 against 0.60;
shift corpus: exact sentence 0.34 against 0.19 for motion, where the decoder wrote one sentence
for every clip). The summaries know the evidence; a decoder that chases moving experts
token by token does not write all of it. `model.evidence_decoder.decoding: readout` writes each
expert's sentence as the bank sentence (evidence_bank.py) this read-out ranks first.

Fitted in closed form, never by gradient, like the content eraser and the refitted decision:
the runner's `refit_statistics` pass (before step 1 and after every epoch, eval mode) gives
every training clip with an annotated sentence the bank holds (`samples["evidence_slots"]`,
set by HEROModel); per expert, an L2 multinomial logistic regression on the standardised
summary over the bank's slots (`refit_readout.fit_logistic`, C = `evidence_decoder.readout_c`).
It is fitted whatever the decoding mode, so a run can be evaluated either way. An expert without
a fit (no annotated sentence yet, or its bank overflowed: free-form captions) is decoded greedily.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from minigpt4.models.hero.refit_readout import MIN_ROWS, fit_logistic

SLOTS_KEY = "evidence_slots"  # [B, E] long in a refit batch: the bank slot of each annotated sentence, -1 = none


class EvidenceReadout(nn.Module):
    """Per expert e: slot logits = ((summary - mean[e]) / scale[e]) @ weight[e].T + bias[e].

    Buffers (saved with the checkpoint, broadcast under DDP): mean / scale [E, H], weight
    [E, K, H], bias [E, K] (K = the bank's slots; a slot not seen in the fit never wins), rows [E]
    (annotated rows of the expert's last fit; 0 = no fit).
    """

    def __init__(self, num_experts: int, hidden_dim: int, bank_size: int, inverse_ridge: float) -> None:
        super().__init__()
        if not inverse_ridge > 0:
            raise ValueError(f"model.evidence_decoder.readout_c must be > 0, got {inverse_ridge}")
        self.inverse_ridge = float(inverse_ridge)
        self.register_buffer("mean", torch.zeros(num_experts, hidden_dim))
        self.register_buffer("scale", torch.ones(num_experts, hidden_dim))
        self.register_buffer("weight", torch.zeros(num_experts, bank_size, hidden_dim))
        self.register_buffer("bias", torch.zeros(num_experts, bank_size))
        self.register_buffer("rows", torch.zeros(num_experts, dtype=torch.long))

    def fitted(self, expert: int) -> bool:
        return bool(self.rows[expert].item() > 0)

    def pick(self, summaries: Tensor, expert: int) -> Tensor:
        """The bank slot [N] ranked first for summaries [N, H] of one expert (fitted only)."""
        z = (summaries.float() - self.mean[expert]) / self.scale[expert]
        return (z @ self.weight[expert].t() + self.bias[expert]).argmax(-1)

    @torch.no_grad()
    def refit(self, stack: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Read `batches` (with `SLOTS_KEY`) through `stack` in eval mode and refit every expert with
        at least MIN_ROWS annotated rows; the others keep their last fit. Returns the rows and the
        fitted experts' mean accuracy on their own rows. Batches without a slot are skipped."""
        was_training = stack.training
        stack.eval()
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        try:
            for samples in batches:
                slots = samples.get(SLOTS_KEY)
                if not isinstance(slots, Tensor) or not bool((slots >= 0).any()):
                    continue  # nothing annotated that the bank holds: no forward pass
                out = stack(samples, None, compute_losses=False)
                slots = slots.to(out.summaries.device).long().masked_fill(~out.expert_present.bool(), -1)
                xs.append(out.summaries.float().cpu())
                ys.append(slots.cpu())
        finally:
            stack.train(was_training)
        if not xs:
            return {}
        summaries, slots = torch.cat(xs), torch.cat(ys)
        accuracies = []
        for expert in range(slots.shape[1]):
            use = slots[:, expert] >= 0
            if int(use.sum()) < MIN_ROWS:
                continue
            fit = fit_logistic(summaries[use, expert], slots[use, expert], self.weight.shape[1], self.inverse_ridge)
            for name in ("mean", "scale", "weight", "bias"):
                getattr(self, name)[expert].copy_(getattr(fit, name).to(self.weight.device))
            self.rows[expert] = int(use.sum())
            accuracies.append(fit.accuracy)
        stats = {"evidence_readout_rows": float((slots >= 0).sum())}
        if accuracies:
            stats["evidence_readout_train_accuracy"] = sum(accuracies) / len(accuracies)
        return stats


@torch.no_grad()
def with_slots(samples: Mapping[str, Any], targets: Any, annotated: Tensor, bank: Any) -> dict[str, Any]:
    """`samples` plus `SLOTS_KEY` [B, E]: the bank slot of each annotated sentence (recorded in the
    bank first if it is new, as a training step records it), -1 elsewhere. `targets`: the batch's
    EvidenceTargets or None; annotated [B, E] bool."""
    if targets is None:
        return {**samples, SLOTS_KEY: torch.full(tuple(annotated.shape), -1, dtype=torch.long)}
    which = annotated.to(targets.present.device) & targets.present
    bank.update(targets.input_ids, targets.attention_mask, which)
    return {**samples, SLOTS_KEY: bank.slots_of(targets.input_ids, targets.attention_mask, which)}
