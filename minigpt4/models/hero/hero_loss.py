"""HERO's auxiliary objectives: STMIL (vCLUB upper bound of mutual information), SCCL (symmetric
InfoNCE) and the teacher-student KL of the robustness term (docs/ARCHITECTURE.md, "Model internals").

STMIL follows the sampled vCLUB of Cheng et al. (2020): a variational Gaussian q(y | x)
(mean and log-variance MLPs) is fitted by maximum likelihood on *detached* inputs
(`estimator_loss`, its own optimiser), and the model minimises

    mean_i [ log q(y_i | x_i) - log q(y_{pi(i)} | x_i) ],   pi a random derangement,

evaluated with the q-network's parameters *detached* (`torch.func.functional_call`), so the
bound never trains the estimator and the estimator's loss never trains the model.

`within_class_rv` is STMIL's non-adversarial training objective (`model.stmil.objective:
covariance`): the RV coefficient of the within-class cross-covariance, a fixed functional of the
joint distribution with no q-network for the model to play against.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

_LOG_2PI = math.log(2.0 * math.pi)


class _GaussianHead(nn.Module):
    """x [N, x_dim] -> (mu [N, y_dim], logvar [N, y_dim]).

    CLUB's reference code bounds logvar with tanh to (-1, 1), i.e. variances in (0.37, 2.7),
    which cannot fit a strongly predictable y; a soft bound `b * tanh(raw / b)` keeps the
    stability and widens the range (b = 5: variances in (0.007, 148)).
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int, logvar_bound: float = 5.0) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim))
        self.logvar = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim))
        self.logvar_bound = logvar_bound

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = self.logvar_bound
        return self.mu(x), b * torch.tanh(self.logvar(x) / b)


def gaussian_log_prob(y: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(y; mu, diag(exp(logvar))) summed over the last dim; broadcasts leading dims."""
    return -0.5 * (((y - mu) ** 2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


class VCLUBEstimator(nn.Module):
    """q(y | x) for the vCLUB upper bound of I(x; y) (minigpt4/models/hero/stmil.py says what x and y are)."""

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int = 256, num_negatives: int = 1,
                 logvar_bound: float = 5.0) -> None:
        super().__init__()
        if num_negatives < 1:
            raise ValueError(f"model.stmil.num_negatives must be >= 1, got {num_negatives}")
        if logvar_bound <= 0:
            raise ValueError(f"model.stmil.logvar_bound must be > 0, got {logvar_bound}")
        self.net = _GaussianHead(x_dim, y_dim, hidden_dim, logvar_bound)
        self.num_negatives = num_negatives

    def _params(self, detach: bool) -> dict[str, Tensor]:
        return {name: (p.detach() if detach else p) for name, p in self.net.named_parameters()}

    def _predict(self, x: Tensor, detach_params: bool) -> tuple[Tensor, Tensor]:
        return functional_call(self.net, self._params(detach_params), (x.float(),))

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """mean_i log q(y_i | x_i) with the estimator's own parameters (for fitting it)."""
        mu, logvar = self._predict(x, detach_params=False)
        return gaussian_log_prob(y.float(), mu, logvar).mean()

    def estimator_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Negative log-likelihood on detached inputs: trains q only, never the model that made x and y."""
        return -self.log_likelihood(x.detach(), y.detach())

    def mi_upper_bound(self, x: Tensor, y: Tensor, sampled: bool = True) -> Tensor:
        """vCLUB estimate of I(x; y) with the q-network frozen (parameters detached; gradients reach x, y).

        sampled=True: `num_negatives` random derangements (the training objective, O(N)).
        sampled=False: the full vCLUB, every other sample as a negative (O(N^2), for evaluation).
        Needs N >= 2.
        """
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"the vCLUB bound needs at least 2 samples, got {n}")
        mu, logvar = self._predict(x, detach_params=True)
        y = y.float()
        positive = gaussian_log_prob(y, mu, logvar)  # [N]
        if sampled:
            negatives = []
            for _ in range(self.num_negatives):
                perm = random_derangement(n, x.device)
                negatives.append(gaussian_log_prob(y[perm], mu, logvar))
            negative = torch.stack(negatives).mean(0)
        else:
            # log q(y_j | x_i) for all i, j: [N, N]; the mean over j != i
            table = gaussian_log_prob(y[None, :, :], mu[:, None, :], logvar[:, None, :])
            negative = (table.sum(1) - table.diagonal()) / (n - 1)
        return (positive - negative).mean()

    def conditional_bound(self, x: Tensor, y: Tensor, labels: Tensor, memory_y: Optional[Tensor] = None,
                          memory_labels: Optional[Tensor] = None) -> Optional[Tensor]:
        """vCLUB estimate of I(x; y | label), q frozen; gradients reach x (and y, if it has any).

        The negatives of row i are every other row with the same label plus every `memory_y` row
        of that label (earlier batches' y, no gradient): what x and y share only through the
        label cancels, so the bound measures y's content left in x beyond the label.
        x [N, x_dim], y [N, y_dim], labels [N] long; memory_y [M, y_dim], memory_labels [M].
        Rows without a negative are left out; None when no row has one.
        """
        mu, logvar = self._predict(x, detach_params=True)
        y = y.float()
        candidates, cand_labels = y, labels
        same_row = torch.eye(y.shape[0], dtype=torch.bool, device=y.device)
        if memory_y is not None and memory_y.shape[0]:
            candidates = torch.cat([y, memory_y.to(y.device, y.dtype)])
            cand_labels = torch.cat([labels, memory_labels.to(labels.device)])
            same_row = torch.cat([same_row, same_row.new_zeros(y.shape[0], memory_y.shape[0])], dim=1)
        negative_mask = (labels[:, None] == cand_labels[None, :]) & ~same_row  # [N, N + M]
        usable = negative_mask.any(dim=1)
        if not bool(usable.any()):
            return None
        mu, logvar, negative_mask = mu[usable], logvar[usable], negative_mask[usable]
        positive = gaussian_log_prob(y[usable], mu, logvar)  # [n]
        table = gaussian_log_prob(candidates[None, :, :], mu[:, None, :], logvar[:, None, :])  # [n, N + M]
        weights = negative_mask.float()
        negative = (table * weights).sum(1) / weights.sum(1)
        return (positive - negative).mean()

    def fit(self, x: Tensor, y: Tensor, steps: int, lr: float, batch_size: int = 256, holdout: float = 0.2,
            seed: int = 0) -> tuple[float, float]:
        """Warm-up: up to `steps` Adam steps of maximum likelihood on fixed (detached) pairs, with a
        fresh optimiser, so the bound is an estimate from the first training step rather than ~0
        from an untrained q. A `holdout` share of the pairs is kept out and the parameters with
        the lowest held-out NLL are kept (a few hundred pairs are easy to memorise, and a q that
        memorised them is wrong everywhere else). Minibatches and the split come from a local
        generator (the global RNG is not touched). Returns the held-out NLL before and after."""
        x, y = x.detach().float(), y.detach().float()
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"the vCLUB warm-up needs at least 2 (x, y) pairs, got {n}")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        order = torch.randperm(n, generator=gen).to(x.device)
        n_val = min(n - 1, max(1, int(round(holdout * n))))
        val, train = order[:n_val], order[n_val:]
        params = list(self.net.parameters())
        optimizer = torch.optim.Adam(params, lr=lr)

        def held_out() -> float:
            with torch.no_grad():
                return float(self.estimator_loss(x[val], y[val]))

        before = best = held_out()
        best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        for step in range(int(steps)):
            idx = train[torch.randperm(train.shape[0], generator=gen)[:batch_size].to(x.device)]
            loss = self.estimator_loss(x[idx], y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if (step + 1) % 10 == 0 or step + 1 == steps:
                value = held_out()
                if value < best:
                    best, best_state = value, {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(best_state)
        for p in params:
            p.grad = None
        return before, best


def _gram_norm(z: Tensor) -> Tensor:
    """||z^T z||_F for z [N, D], through the smaller of the two Gram matrices (they share it)."""
    return torch.linalg.matrix_norm(z.t() @ z if z.shape[1] <= z.shape[0] else z @ z.t())


def within_class_rv(x: Tensor, y: Tensor, labels: Tensor, memory_x: Optional[Tensor] = None,
                    memory_y: Optional[Tensor] = None, memory_labels: Optional[Tensor] = None) -> Optional[Tensor]:
    """RV coefficient of the within-class cross-covariance: ||C_xy||_F^2 / (||C_xx||_F ||C_yy||_F), in [0, 1].

    0 when x holds no linear trace of y beyond what the class explains, 1 when x is a linear
    image of y (for whitened Gaussians, I(x; y | class) ~ ||C_xy||_F^2 / 2 when small). Rows:
    the batch's x [N, Dx], y [N, Dy], labels [N] (long) plus memory rows (earlier batches,
    no graph), each centred by its class mean over all rows; classes with one row are left out.

    Value: the coefficient over all rows. Gradient: that of the batch rows' own cross-covariance
    taken against it, as if every row were current (a batch of 8 alone would give a noisy C_xy,
    and memory rows have no graph); the normaliser is held fixed, so it never rewards inflating
    other directions of x. None when fewer than 3 rows or no batch row are usable.
    """
    xs, ys, ls = [x.float()], [y.float()], [labels.long()]
    if memory_x is not None and memory_x.shape[0]:
        xs.append(memory_x.to(x.device).float())
        ys.append(memory_y.to(x.device).float())
        ls.append(memory_labels.to(x.device).long())
    xa, ya, la = torch.cat(xs), torch.cat(ys), torch.cat(ls)
    counts = torch.bincount(la)
    keep = counts[la] >= 2
    batch_keep = keep[: x.shape[0]]
    if int(keep.sum()) < 3 or not bool(batch_keep.any()):
        return None
    xa, ya, la = xa[keep], ya[keep], la[keep]
    onehot = F.one_hot(la).float()
    per_class = onehot.sum(0).clamp(min=1.0)[:, None]
    xc = xa - onehot @ ((onehot.t() @ xa.detach()) / per_class)
    yc = ya - onehot @ ((onehot.t() @ ya.detach()) / per_class)
    n = xa.shape[0]
    cross = xc.t() @ yc / n  # [Dx, Dy]
    scale = (_gram_norm(xc.detach()) * _gram_norm(yc.detach()) / n ** 2).clamp(min=1e-12)
    value = (cross.detach() ** 2).sum() / scale
    nb = int(batch_keep.sum())  # kept batch rows come first
    batch_cross = xc[:nb].t() @ yc[:nb] / nb
    surrogate = 2.0 * (batch_cross * cross.detach()).sum() / scale
    return value + surrogate - surrogate.detach()


def random_derangement(n: int, device: torch.device | str | None = None) -> Tensor:
    """A uniformly random permutation of range(n) without fixed points (n >= 2), from the torch RNG.

    The sampled vCLUB pairs x_i with y_{pi(i)}; a fixed point pairs a sample with itself and
    adds nothing (with two samples, a plain permutation wastes half the steps). Rejection
    sampling: a random permutation is a derangement with probability ~1/e.
    """
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    ident = torch.arange(n)
    for _ in range(200):
        perm = torch.randperm(n)
        if bool((perm != ident).all()):
            return perm.to(device)
    shift = int(torch.randint(1, n, (1,)).item())  # practically unreachable (p < 1e-39)
    return ident.roll(shift).to(device)


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE between row-aligned embeddings a, b [N, D] (row i of a matches row i of b).

    Cosine similarities / temperature; the mean of the a->b and b->a cross-entropies. N >= 1
    (with N == 1 the loss is 0: there is no negative).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"info_nce needs two [N, D] tensors of the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def distillation_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0,
                    mask: Optional[Tensor] = None) -> Tensor:
    """KL(teacher || student) of softened class distributions, teacher detached; mean over rows (mask [N])."""
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1) * temperature ** 2
    if mask is not None:
        mask = mask.bool()
        if not bool(mask.any()):
            return kl.sum() * 0.0
        kl = kl[mask]
    return kl.mean()


def expert_readout_loss(logits: Tensor, present: Tensor, emotion: Any) -> Optional[Tensor]:
    """Mean cross-entropy of each present expert's own read-out of the emotion (deep supervision).

    logits [B, E, C], present [B, E] bool, emotion [B] (-1 = unknown); absent experts and
    unlabelled clips are left out; None when nothing is left (or there are no labels).
    """
    if not isinstance(emotion, Tensor):
        return None
    labels = emotion.to(logits.device).long()
    valid = present & (labels >= 0)[:, None]
    if not bool(valid.any()):
        return None
    rows = valid.nonzero(as_tuple=False)
    return F.cross_entropy(logits[rows[:, 0], rows[:, 1]].float(), labels[rows[:, 0]])
