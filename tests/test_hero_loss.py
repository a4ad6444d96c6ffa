"""vCLUB (STMIL), InfoNCE (SCCL) and the distillation KL (hero_loss.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt4.models.hero.hero_loss import (
    VCLUBEstimator,
    distillation_kl,
    gaussian_log_prob,
    info_nce,
    random_derangement,
)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- InfoNCE
def _info_nce_loop(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """Straightforward reference: per anchor, -log softmax of its positive, both directions, averaged."""
    n = a.shape[0]
    an = [a[i] / a[i].norm() for i in range(n)]
    bn = [b[i] / b[i].norm() for i in range(n)]
    a2b, b2a = 0.0, 0.0
    for i in range(n):
        sims = [float(an[i] @ bn[j]) / tau for j in range(n)]
        a2b += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
        sims = [float(bn[i] @ an[j]) / tau for j in range(n)]
        b2a += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return 0.5 * (a2b / n + b2a / n)


@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_info_nce_matches_loop_reference(tau):
    a, b = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    assert float(info_nce(a, b, tau)) == pytest.approx(_info_nce_loop(a, b, tau), rel=1e-5)
    assert float(info_nce(a, b, tau)) == pytest.approx(float(info_nce(b, a, tau)), rel=1e-6)  # symmetric


def test_info_nce_is_low_for_aligned_pairs_and_validates():
    a = torch.randn(8, 16)
    assert float(info_nce(a, a * 3.0, 0.07)) < 1e-3  # scale-invariant, perfectly aligned
    assert float(info_nce(a, torch.randn(8, 16), 0.07)) > 1.0
    assert float(info_nce(a[:1], a[:1], 0.07)) == 0.0  # no negative, nothing to learn
    with pytest.raises(ValueError, match="same shape"):
        info_nce(a, a[:, :3])
    with pytest.raises(ValueError, match="temperature"):
        info_nce(a, a, 0.0)


# ----------------------------------------------------------------------------- vCLUB
def test_gaussian_log_prob_matches_torch_distributions():
    y, mu, logvar = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(y).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(y, mu, logvar), ref)


def _correlated(n: int, dim: int, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, dim)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, dim)


def _trained_bound(rho: float, dim: int = 2) -> tuple[float, float]:
    """Fit q(y|x) on fresh batches, then the full and the (averaged) sampled bound on held-out data."""
    est = VCLUBEstimator(dim, dim, hidden_dim=32)
    opt = torch.optim.Adam(est.parameters(), lr=1e-2)
    for _ in range(300):
        x, y = _correlated(256, dim, rho)
        loss = est.estimator_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = _correlated(2000, dim, rho)
    with torch.no_grad():
        full = float(est.mi_upper_bound(x, y, sampled=False))
        sampled = sum(float(est.mi_upper_bound(x, y, sampled=True)) for _ in range(20)) / 20
    return full, sampled


def test_vclub_bounds_known_gaussian_mutual_information():
    """I(x; y) = -dim/2 log(1 - rho^2); with q = p the vCLUB value is dim * rho^2 / (1 - rho^2) >= I."""
    dim = 2
    results = {rho: _trained_bound(rho, dim) for rho in (0.75, 0.4, 0.0)}
    for rho, (full, sampled) in results.items():
        true_mi = -0.5 * dim * math.log(1 - rho**2)
        club_at_optimum = dim * rho**2 / (1 - rho**2)
        assert full >= 0.95 * true_mi - 0.02, (rho, full, true_mi)
        assert full == pytest.approx(club_at_optimum, abs=0.1 + 0.1 * club_at_optimum), (rho, full)
        assert sampled == pytest.approx(full, abs=0.1 + 0.05 * full), (rho, sampled, full)
    assert results[0.75][0] > results[0.4][0] > results[0.0][0]
    assert abs(results[0.0][0]) < 0.05


def test_vclub_gradient_isolation():
    est = VCLUBEstimator(4, 3, hidden_dim=8)
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.randn(6, 3, requires_grad=True)
    bound = est.mi_upper_bound(x, y)
    bound.backward()
    assert x.grad is not None and y.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in est.parameters())  # the bound never trains q
    x.grad = y.grad = None
    est.estimator_loss(x, y).backward()
    assert x.grad is None and y.grad is None  # q's NLL never trains the model
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in est.parameters())


def test_random_derangement_has_no_fixed_points_and_covers_all():
    seen = set()
    for _ in range(60):
        perm = random_derangement(3)
        assert sorted(perm.tolist()) == [0, 1, 2] and all(p != i for i, p in enumerate(perm.tolist()))
        seen.add(tuple(perm.tolist()))
    assert seen == {(1, 2, 0), (2, 0, 1)}  # both derangements of 3 elements occur
    assert random_derangement(2).tolist() == [1, 0]
    torch.manual_seed(3)
    a = random_derangement(10)
    torch.manual_seed(3)
    assert torch.equal(a, random_derangement(10))  # reproducible from the torch RNG
    with pytest.raises(ValueError, match="n >= 2"):
        random_derangement(1)


def test_sampled_bound_with_two_samples_is_never_degenerate():
    est = VCLUBEstimator(3, 3, hidden_dim=8)
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    values = {round(float(est.mi_upper_bound(x, y)), 6) for _ in range(10)}
    assert values == {round(float(est.mi_upper_bound(x, y, sampled=False)), 6)}  # the only pairing: swap


def test_vclub_needs_two_samples_and_valid_settings():
    est = VCLUBEstimator(2, 2)
    with pytest.raises(ValueError, match="at least 2 samples"):
        est.mi_upper_bound(torch.randn(1, 2), torch.randn(1, 2))
    with pytest.raises(ValueError, match="num_negatives"):
        VCLUBEstimator(2, 2, num_negatives=0)


# ----------------------------------------------------------------------------- KL
def test_distillation_kl_matches_reference_and_detaches_teacher():
    teacher = torch.randn(5, 4, requires_grad=True)
    student = torch.randn(5, 4, requires_grad=True)
    ref = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), reduction="batchmean", log_target=True)
    kl = distillation_kl(teacher, student)
    torch.testing.assert_close(kl, ref)
    kl.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert float(distillation_kl(student.detach(), student.detach())) == pytest.approx(0.0, abs=1e-7)
    mask = torch.tensor([True, False, True, False, False])
    torch.testing.assert_close(distillation_kl(teacher, student, mask=mask),
                               distillation_kl(teacher[mask], student[mask]))
    assert float(distillation_kl(teacher, student, mask=torch.zeros(5, dtype=torch.bool)).detach()) == 0.0
