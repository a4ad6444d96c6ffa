"""Erase what is said from the voice: a closed-form linear eraser on the audio expert's output.

STMIL's losses push the audio expert to drop the words' content, and measured on the demo they
do not manage it: whatever the objective (vCLUB, a cross-covariance), the expert keeps the
topic in faint directions that a linear probe still reads (README, "STMIL"). The eraser removes
it by construction instead, in the way of LEACE (Belrose et al., 2023): from
within-emotion statistics of the audio summary x and the content y (the clip's pooled text
features), whiten x (W = S_xx^-1/2), find the directions of whitened x that correlate with y
(the left singular vectors of W S_xy S_yy^-1/2 whose canonical correlation is at least
`model.stmil.erase_min_correlation` and above what the same statistics give when the content is
shuffled among clips of the same emotion), and project them out:

    x' = mu + (I - W^+ P W)(x - mu),   P the projection onto those directions.

After it, the pooled within-emotion cross-covariance of x' and y is 0 along every erased
direction, so no linear read-out of the voice predicts them beyond the emotion; the emotion
itself (the class means) is left alone where it does not lie along them.

Why the shuffled floor (`erase_null_permutations`): a few hundred rows of a 128-wide summary
have sizeable sample canonical correlations with *any* content. Measured on trained runs
without an eraser: the demo's top correlations 0.69 0.64 0.62 0.53 against 0.53 0.52 0.49 0.47
with the content shuffled within each emotion, and from the tenth on the two are equal; the
fixed 0.3 alone erased 17-19 directions, most of them noise, and with them some emotion. So a
direction is erased only if its correlation also beats the largest one that any of
`erase_null_permutations` shuffles reaches (a max-statistic permutation test: comparing rank k
with the shuffles' rank k instead, as parallel analysis does, erases noise ranks that real
directions push up: measured, it took 4 directions where 2 were planted).

The map is computed
from statistics held fixed between refits, so the expert is never pushed to hide the content
from it; it is the same linear map on every audio token and on the summary (their mean).

The statistics come from a pass over one epoch's training batches (the whole split unless
`run.iters_per_epoch` caps it) with the model in eval mode
(`refit`; the runner calls the model's `refit_statistics` before step 1 and at the end of every
epoch, before validation and the checkpoint, which saves them). Running averages over training
batches were tried first and did not work: the expert's dropout and its drift over an epoch
left the topic readable (demo: probe 0.72 with them, 0.39 with eval-mode statistics of the same
model). Before the first refit the eraser is the identity.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_ROWS = 8  # labelled (audio, text) rows a refit needs; with fewer the eraser stays as it was
SHRINKAGE = 0.1  # each covariance's diagonal raised by this x its mean variance before whitening


def _sqrt_and_inverse_sqrt(cov: Tensor) -> tuple[Tensor, Tensor]:
    """(S^1/2, S^-1/2) of a symmetric PSD matrix after shrinkage towards its mean variance."""
    ridge = torch.diagonal(cov).mean().clamp(min=1e-12) * SHRINKAGE
    values, vectors = torch.linalg.eigh(cov + ridge * torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype))
    values = values.clamp(min=1e-12)
    return (vectors * values.sqrt()) @ vectors.t(), (vectors * values.rsqrt()) @ vectors.t()


def eraser_matrix(cov_xx: Tensor, cov_xy: Tensor, cov_yy: Tensor, min_correlation: float,
                  floor: float = 0.0) -> tuple[Tensor, Tensor, int]:
    """(M [H, H] with x' = mu + M (x - mu), canonical correlations [min(H, D)], erased count) from within-class
    covariances cov_xx [H, H], cov_xy [H, D], cov_yy [D, D]. Erased: the directions whose correlation
    is >= min_correlation and > floor."""
    root_x, white_x = _sqrt_and_inverse_sqrt(cov_xx)
    _, white_y = _sqrt_and_inverse_sqrt(cov_yy)
    u, s, _ = torch.linalg.svd(white_x @ cov_xy @ white_y, full_matrices=False)
    count = int(((s >= min_correlation) & (s > floor)).sum())  # s is sorted: these are the leading ones
    keep = u[:, :count]
    eye = torch.eye(cov_xx.shape[0], device=cov_xx.device, dtype=cov_xx.dtype)
    return eye - root_x @ keep @ keep.t() @ white_x, s, count


def _class_centred(z: Tensor, onehot: Tensor) -> Tensor:
    """z [N, K] minus its class's mean on every row (onehot [N, C])."""
    return z - onehot @ ((onehot.t() @ z) / onehot.sum(0).clamp(min=1.0)[:, None])


def within_class_covariances(x: Tensor, y: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(cov_xx, cov_xy, cov_yy) of x [N, H] and y [N, D] after removing each class's mean (onehot [N, C])."""
    xc, yc = _class_centred(x, onehot), _class_centred(y, onehot)
    n = x.shape[0]
    return xc.t() @ xc / n, xc.t() @ yc / n, yc.t() @ yc / n


def shuffled_floor(x: Tensor, y: Tensor, labels: Tensor, num_classes: int, permutations: int,
                   seed: int = 0) -> float:
    """The largest canonical correlation over `permutations` shufflings of y among rows of the same
    class: what sampling noise alone reaches (fixed seed: a refit of the same rows gives the same floor).

    A within-class shuffle leaves cov_xx and cov_yy as they are, so both are whitened once and
    only the cross-covariance is recomputed per shuffle."""
    onehot = F.one_hot(labels, num_classes).float()
    xc, yc = _class_centred(x, onehot), _class_centred(y, onehot)
    n = x.shape[0]
    _, white_x = _sqrt_and_inverse_sqrt(xc.t() @ xc / n)
    _, white_y = _sqrt_and_inverse_sqrt(yc.t() @ yc / n)
    generator = torch.Generator().manual_seed(seed)
    cpu_labels = labels.cpu()
    floors = []
    for _ in range(permutations):
        order = torch.arange(len(cpu_labels))
        for c in range(num_classes):
            rows = (cpu_labels == c).nonzero(as_tuple=True)[0]
            order[rows] = rows[torch.randperm(len(rows), generator=generator)]
        cov_xy = xc.t() @ yc[order.to(yc.device)] / n  # a row's class mean moves with it
        floors.append(float(torch.linalg.svdvals(white_x @ cov_xy @ white_y)[0]))
    return max(floors)


class ContentEraser(nn.Module):
    """The eraser of the last refit: x' = mean_x + matrix (x - mean_x), the identity before one."""

    def __init__(self, hidden_dim: int, content_dim: int, num_classes: int, min_correlation: float,
                 null_permutations: int = 0) -> None:
        super().__init__()
        self.min_correlation = min_correlation
        self.null_permutations = null_permutations
        self.num_classes = num_classes
        self.register_buffer("rows", torch.zeros((), dtype=torch.long))  # labelled rows of the last refit
        self.register_buffer("mean_x", torch.zeros(hidden_dim))
        self.register_buffer("matrix", torch.eye(hidden_dim))
        self._collected: Optional[list[tuple[Tensor, Tensor, Tensor]]] = None  # rows read during a refit

    @torch.no_grad()
    def fit(self, x: Tensor, y: Tensor, labels: Tensor) -> dict[str, float]:
        """Set the eraser from labelled rows: x [N, H] raw summaries, y [N, D] content, labels [N] >= 0,
        through their within-class covariances; returns what was fitted (erased directions, the top
        canonical correlation and, with the shuffled floor, that floor's top)."""
        x, y, labels = x.detach().float(), y.detach().float(), labels.long()
        floor = shuffled_floor(x, y, labels, self.num_classes, self.null_permutations) \
            if self.null_permutations > 0 else None
        covs = within_class_covariances(x, y, F.one_hot(labels, self.num_classes).float())
        matrix, correlations, erased = eraser_matrix(*covs, self.min_correlation, floor or 0.0)
        self.matrix.copy_(matrix)
        self.mean_x.copy_(x.mean(0))
        self.rows.fill_(x.shape[0])
        stats = {"erased": float(erased), "top_correlation": float(correlations.max())}
        if floor is not None:
            stats["shuffled_top"] = floor
        return stats

    def forward(self, h: Tensor) -> Tensor:
        """Erase from h [..., H] (tokens or summaries); unchanged before the first refit."""
        if int(self.rows) < MIN_ROWS:
            return h
        mu = self.mean_x.to(h.dtype)
        return mu + (h - mu) @ self.matrix.t().to(h.dtype)

    def erase_audio(self, tokens: Tensor, summary: Tensor, audio: Tensor, text: Tensor, content: Tensor,
                    emotion: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The audio expert's tokens [B, Q, H] and summary [B, H] with the content erased where audio is
        present; during a refit, records the clips with audio, text and a label and erases nothing."""
        if self._collected is not None:
            if isinstance(emotion, Tensor):
                labels = emotion.to(summary.device).long()
                use = audio & text & (labels >= 0) & (labels < self.num_classes)
                self._collected.append((summary[use].float(), content[use].float(), labels[use]))
            return tokens, summary
        keep = audio.bool()
        return (torch.where(keep[:, None, None], self(tokens), tokens),
                torch.where(keep[:, None], self(summary), summary))

    @torch.no_grad()
    def refit(self, stack: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Read `batches` through `stack` (the evidence stack, in eval mode) and refit from the raw
        audio summaries; returns what was fitted (rows, erased directions, top canonical correlation)."""
        was_training = stack.training
        stack.eval()
        self._collected = []
        try:
            for samples in batches:
                stack(samples, None, compute_losses=False)
            collected = self._collected
        finally:
            self._collected = None
            stack.train(was_training)
        n = sum(int(x.shape[0]) for x, _, _ in collected)
        if n < MIN_ROWS:
            return {"rows": float(n), "fitted": 0.0}
        return {"rows": float(n), **self.fit(*(torch.cat(parts) for parts in zip(*collected)))}
