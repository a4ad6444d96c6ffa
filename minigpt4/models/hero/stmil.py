"""STMIL (Speech-Text Mutual Information Learning): the audio expert forgets the words.

The design's purifier: minimise an upper bound of the mutual information between the audio
expert's summary and *what is said*, so the voice keeps tone and emotion but not the specific
words (real HuBERT frames carry the phonetic content, which a speaker-independent emotion
reading should not lean on). `model.stmil.mode`:

- `conditional` (default): x = the audio summary (with the clip's emotion as a one-hot beside
  it), y = the clip's pooled text features: a frozen representation of what is said that STMIL
  never trains (the content side gets no gradient). Negatives are clips *of the same emotion*
  (the batch's others plus a per-emotion queue of earlier batches' y, `ContentQueue`), so what
  voice and words legitimately share through the emotion cancels, and the bound measures the
  words' content left in the voice: I(audio; words | emotion). Unlabelled clips have no term.
- `unconditional`: the earlier design, I(audio summary; text summary) with gradients into
  both experts and random in-batch negatives. Both summaries learn the emotion, so this bound
  measures the shared emotion and fights the task; kept for ablation.

The q-network (`VCLUBEstimator`) is fitted by its own optimiser on detached pairs; before
training starts `warm_up` fits it on the initial representations (`model.stmil.warmup_steps`),
so the logged bound is an estimate from the first step, not ~0 from an untrained q.

What training minimises, `model.stmil.objective`:

- `covariance` (default): `loss_stmil_cov`, the RV coefficient of the audio summary's
  cross-covariance with the content *within each emotion* (`within_class_rv`; the queue keeps
  the earlier batches' summaries beside their content). It has no q-network to play against and
  is 0 exactly when no linear trace of the words is left beyond the emotion (on the demo it fell
  by 90 % while the expert kept the topic in faint directions a probe still reads: README). The
  vCLUB bound is still computed, without gradient, and logged as `loss_stmil`: an estimator the
  model does not train against (measured: it also falls where the topic stays readable).
- `vclub`: `loss_stmil`, the vCLUB bound itself, is minimised (the paper's form). Measured on
  the demo, the expert then moves its summaries where the lagging q reads them wrong and the
  topic becomes *more* readable to a fresh probe (README, "STMIL").
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minigpt4.common.modalities import AUDIO, TEXT
from minigpt4.common.schema import STMILConfig
from minigpt4.models.hero.hero_loss import VCLUBEstimator, within_class_rv


class ContentQueue(nn.Module):
    """Per-class FIFO of content vectors from earlier batches: the conditional bound's negatives.

    vectors [C, K, D], filled [C] (rows in use), cursor [C] (next row to overwrite). Buffers, so
    a checkpoint (and an exact resume) keeps them.
    """

    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("vectors", torch.zeros(num_classes, size, dim))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("cursor", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, y: Tensor, labels: Tensor) -> None:
        """Append rows y [N, D] under their labels [N] (each class overwrites its oldest row when full)."""
        size = self.vectors.shape[1]
        for row, c in zip(y.detach().float(), labels.tolist()):
            k = int(self.cursor[c])
            self.vectors[c, k] = row.to(self.vectors.device)
            self.cursor[c] = (k + 1) % size
            self.filled[c] = min(int(self.filled[c]) + 1, size)

    def contents(self) -> tuple[Tensor, Tensor]:
        """(vectors [M, D], labels [M]) of every filled row."""
        used = torch.arange(self.vectors.shape[1], device=self.filled.device)[None, :] < self.filled[:, None]
        labels = torch.arange(self.vectors.shape[0], device=self.filled.device)[:, None].expand_as(used)
        return self.vectors[used], labels[used]


def pooled_content(features: Tensor, frame_mask: Tensor) -> Tensor:
    """Mean of a modality's real frames: features [B, T, D], frame_mask [B, T] -> [B, D] (detached)."""
    weights = frame_mask.to(features.dtype).unsqueeze(-1)
    return ((features * weights).sum(1) / weights.sum(1).clamp(min=1.0)).detach().float()


@dataclass
class STMILTerms:
    """One step's STMIL: `losses` are weighted by lambda_stmil, `readouts` are only logged."""

    losses: dict[str, Tensor] = field(default_factory=dict)
    readouts: dict[str, Tensor] = field(default_factory=dict)
    estimator_loss: Optional[Tensor] = None  # the q-network's NLL on detached pairs


class STMILObjective(nn.Module):
    """The STMIL bound and its q-network for one `model.stmil` configuration (module docstring)."""

    def __init__(self, hidden_dim: int, content_dim: int, num_classes: int, cfg: STMILConfig) -> None:
        super().__init__()
        self.conditional = cfg.mode == "conditional"
        self.covariance = cfg.objective == "covariance"
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.warmup_steps, self.warmup_batches = cfg.warmup_steps, cfg.warmup_batches
        x_dim = hidden_dim + num_classes if self.conditional else hidden_dim
        y_dim = content_dim if self.conditional else hidden_dim
        self.estimator = VCLUBEstimator(x_dim, y_dim, cfg.hidden_dim, cfg.num_negatives, cfg.logvar_bound)
        self.queue = ContentQueue(num_classes, cfg.queue_size, content_dim) if self.conditional else None
        # the summaries written beside the queue's content (same rows): the covariance's memory
        self.summary_queue = ContentQueue(num_classes, cfg.queue_size, hidden_dim) \
            if self.conditional and self.covariance else None
        # the content side, standardised with statistics fixed at the warm-up (identity without one)
        self.register_buffer("content_mean", torch.zeros(content_dim))
        self.register_buffer("content_scale", torch.ones(content_dim))

    def pairs(self, summaries: Tensor, present: Tensor, content: Optional[Tensor],
              emotion: Optional[Tensor]) -> Optional[tuple[Tensor, Tensor, Optional[Tensor]]]:
        """(x, y, labels) of the clips the bound can use, or None.

        summaries [B, 6, H], present [B, 6]; conditional: content [B, D_text] and emotion [B]
        (-1 = unknown; such clips are left out), x = [summary, one-hot emotion].
        """
        both = present[:, AUDIO] & present[:, TEXT]
        if not self.conditional:
            return (summaries[both, AUDIO], summaries[both, TEXT], None) if bool(both.any()) else None
        if content is None or not isinstance(emotion, Tensor):
            return None
        labels = emotion.to(both.device).long()
        use = both & (labels >= 0) & (labels < self.num_classes)
        if not bool(use.any()):
            return None
        lab = labels[use]
        x = torch.cat([summaries[use, AUDIO].float(), F.one_hot(lab, self.num_classes).float()], dim=-1)
        y = (content[use].to(x.device).float() - self.content_mean) / self.content_scale
        return x, y, lab

    def forward(self, summaries: Tensor, present: Tensor, content: Optional[Tensor], emotion: Optional[Tensor],
                training: bool) -> STMILTerms:
        """This batch's terms (empty when no pair can be formed).

        Training pushes this batch's content (and summaries) into the queue after using it;
        evaluation reads the queue without changing it (every same-emotion pair: the full
        conditional bound).
        """
        pairs = self.pairs(summaries, present, content, emotion)
        if pairs is None:
            return STMILTerms()
        x, y, labels = pairs
        terms = STMILTerms(estimator_loss=self.estimator.estimator_loss(x, y))
        with torch.no_grad() if self.covariance else contextlib.nullcontext():
            bound = self._bound(x, y, labels, training)
        if bound is not None:
            (terms.readouts if self.covariance else terms.losses)["loss_stmil"] = bound
        if self.covariance:
            rv = self._covariance(x[:, :self.hidden_dim], y, labels)
            if rv is not None:
                terms.losses["loss_stmil_cov"] = rv
        if training and self.conditional:
            self.queue.push(y, labels)
            if self.summary_queue is not None:
                self.summary_queue.push(x[:, :self.hidden_dim], labels)
        return terms

    def _bound(self, x: Tensor, y: Tensor, labels: Optional[Tensor], training: bool) -> Optional[Tensor]:
        if not self.conditional:
            return self.estimator.mi_upper_bound(x, y, sampled=training) if x.shape[0] >= 2 else None
        memory_y, memory_labels = self.queue.contents()
        return self.estimator.conditional_bound(x, y, labels, memory_y, memory_labels)

    def _covariance(self, summary: Tensor, y: Tensor, labels: Optional[Tensor]) -> Optional[Tensor]:
        """Within-emotion RV of (audio summary, content) over this batch and the queue (conditional);
        unconditional: over this batch, one class."""
        if not self.conditional:
            return within_class_rv(summary, y, torch.zeros(summary.shape[0], dtype=torch.long, device=summary.device))
        memory_x, _ = self.summary_queue.contents()
        memory_y, memory_labels = self.queue.contents()
        return within_class_rv(summary, y, labels, memory_x, memory_y, memory_labels)

    @torch.no_grad()
    def bound_on(self, x: Tensor, y: Tensor, labels: Optional[Tensor]) -> Optional[float]:
        """The full bound over fixed pairs (every other pair of the same label as a negative)."""
        if labels is None:
            return float(self.estimator.mi_upper_bound(x, y, sampled=False)) if x.shape[0] >= 2 else None
        value = self.estimator.conditional_bound(x, y, labels)
        return None if value is None else float(value)

    def has_content_statistics(self) -> bool:
        """Were the standardisation statistics fixed already (an earlier warm-up, or loaded weights)?"""
        return not (bool((self.content_mean == 0).all()) and bool((self.content_scale == 1).all()))

    @torch.no_grad()
    def set_content_statistics(self, raw_y: Tensor) -> Tensor:
        """Fix the content standardisation from the warm-up's raw content [N, D]; returns it standardised."""
        mean = raw_y.float().mean(0)
        scale = raw_y.float().std(0, unbiased=False).clamp(min=1e-3)
        self.content_mean.copy_(mean)
        self.content_scale.copy_(scale)
        return (raw_y.float() - mean) / scale

    def warm_up(self, x: Tensor, y: Tensor, labels: Optional[Tensor], lr: float) -> dict[str, float]:
        """Fit q on the initial representations' pairs (content already standardised) and seed the
        queue with their content. nll_*: held-out NLL before and after; bound: in nats, on all pairs."""
        before, after = self.estimator.fit(x, y, self.warmup_steps, lr)
        if self.queue is not None and labels is not None:
            self.queue.push(y, labels)
            if self.summary_queue is not None:
                self.summary_queue.push(x[:, :self.hidden_dim], labels)
        stats = {"pairs": float(x.shape[0]), "nll_before": before, "nll_after": after}
        bound = self.bound_on(x, y, labels)
        if bound is not None:
            stats["bound"] = bound
        return stats
