"""Conditional STMIL (stmil.py, hero_loss.VCLUBEstimator.conditional_bound / fit, within_class_rv):
content disentanglement given the emotion, its two objectives, its queue, its warm-up, and the
content probe's read-out."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.modalities import AUDIO, TEXT
from minigpt4.common.schema import STMILConfig
from minigpt4.evaluation.content_probe import ContentProbeError, content_labels, content_probe, probe_expert
from minigpt4.models.hero.evidence_stack import HEROEvidenceStack
from minigpt4.models.hero.hero_loss import VCLUBEstimator, gaussian_log_prob, within_class_rv
from minigpt4.models.hero.stmil import ContentQueue, STMILObjective, pooled_content

pytestmark = pytest.mark.usefixtures("one_thread")


def _conditional_reference(est: VCLUBEstimator, x, y, labels, mem_y, mem_labels) -> float:
    """Row by row: log q(y_i | x_i) minus the mean log q over same-label others (batch + memory)."""
    terms = []
    with torch.no_grad():
        mu, logvar = est.net(x)
        for i in range(x.shape[0]):
            cands = [y[j] for j in range(x.shape[0]) if j != i and labels[j] == labels[i]]
            cands += [mem_y[j] for j in range(mem_y.shape[0]) if mem_labels[j] == labels[i]]
            if not cands:
                continue
            pos = gaussian_log_prob(y[i], mu[i], logvar[i])
            neg = torch.stack([gaussian_log_prob(c, mu[i], logvar[i]) for c in cands]).mean()
            terms.append(float(pos - neg))
    return sum(terms) / len(terms)


def test_conditional_bound_matches_reference_and_never_pairs_different_emotions():
    torch.manual_seed(0)
    est = VCLUBEstimator(5, 3, hidden_dim=16)
    x, y = torch.randn(7, 5), torch.randn(7, 3)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # label 3 has no partner: that row is left out
    mem_y, mem_labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 2, 4, 4])
    got = est.conditional_bound(x, y, labels, mem_y, mem_labels)
    assert float(got) == pytest.approx(_conditional_reference(est, x, y, labels, mem_y, mem_labels), abs=1e-5)
    # changing any other emotion's content (batch or memory) leaves every row's term unchanged
    y2 = y.clone()
    y2[labels == 2] += 100.0
    mem2 = mem_y.clone()
    mem2[mem_labels == 4] += 100.0
    only0 = labels == 0
    a = est.conditional_bound(x[only0], y[only0], labels[only0], mem_y, mem_labels)
    b = est.conditional_bound(x[only0], y2[only0], labels[only0], mem2, mem_labels)
    assert torch.equal(a, b)
    # no row with a same-emotion negative: no bound
    assert est.conditional_bound(x[:2], y[:2], torch.tensor([0, 1])) is None


def test_content_queue_is_a_per_class_fifo():
    q = ContentQueue(num_classes=3, size=2, dim=1)
    q.push(torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.tensor([0, 0, 1, 0]))
    vecs, labels = q.contents()
    got = sorted(zip(labels.tolist(), vecs[:, 0].tolist()))
    assert got == [(0, 2.0), (0, 4.0), (1, 3.0)]  # class 0 kept its two newest, class 2 is empty
    assert q.filled.tolist() == [2, 1, 0]


def _known_pair(n: int, dim: int, rho: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, dim, generator=g)
    return x, y


def test_warm_up_makes_the_bound_accurate_from_the_first_step():
    """With q = p the vCLUB value of a correlated Gaussian pair is dim * rho^2 / (1 - rho^2); an
    untrained q reads about 0, a warmed-up one (hold-out early stopping) reads the value."""
    dim, rho = 3, 0.7
    torch.manual_seed(0)
    est = VCLUBEstimator(dim, dim, hidden_dim=32)
    x, y = _known_pair(1024, dim, rho, seed=1)
    x_test, y_test = _known_pair(512, dim, rho, seed=2)
    target = dim * rho**2 / (1 - rho**2)
    untrained = float(est.mi_upper_bound(x_test, y_test, sampled=False))
    before, after = est.fit(x, y, steps=400, lr=3e-3)
    warmed = float(est.mi_upper_bound(x_test, y_test, sampled=False))
    assert abs(untrained) < 0.3 * target
    assert after < before
    assert warmed == pytest.approx(target, rel=0.15)
    # the same pair given a label it does not depend on: the conditional bound reads the same
    labels = torch.arange(512) % 2
    cond = float(est.conditional_bound(x_test, y_test, labels))
    assert cond == pytest.approx(warmed, rel=0.1)


def test_fit_keeps_the_parameters_with_the_lowest_held_out_loss():
    """A few pairs and many steps: the hold-out stops the q-network before it memorises them."""
    torch.manual_seed(0)
    est = VCLUBEstimator(8, 8, hidden_dim=64)
    x, y = torch.randn(40, 8), torch.randn(40, 8)  # independent: nothing to learn but noise
    before, after = est.fit(x, y, steps=500, lr=1e-2)
    assert after <= before
    x2, y2 = torch.randn(400, 8), torch.randn(400, 8)
    assert abs(float(est.mi_upper_bound(x2, y2, sampled=False))) < 1.0  # no confident nonsense


# ----------------------------------------------------------------------------- the covariance objective
def _rv_reference(x, y, labels) -> float:
    """numpy: centre each class by its own mean, drop single-row classes, RV of the pooled rows."""
    x, y, labels = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(labels)
    rows_x, rows_y = [], []
    for c in np.unique(labels):
        idx = labels == c
        if idx.sum() >= 2:
            rows_x.append(x[idx] - x[idx].mean(0))
            rows_y.append(y[idx] - y[idx].mean(0))
    xc, yc = np.concatenate(rows_x), np.concatenate(rows_y)
    cxy, cxx, cyy = xc.T @ yc, xc.T @ xc, yc.T @ yc
    return float((cxy ** 2).sum() / (np.linalg.norm(cxx) * np.linalg.norm(cyy)))


def test_within_class_rv_matches_reference_and_its_extremes():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 5, generator=g), torch.randn(12, 3, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 4])  # classes 3 and 4: one row each, left out
    mem_x, mem_y = torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g)
    mem_labels = torch.tensor([0, 1, 2, 3, 3, 4, 5])  # 4 now has two rows; 5 still one
    got = within_class_rv(x, y, labels, mem_x, mem_y, mem_labels)
    want = _rv_reference(torch.cat([x, mem_x]), torch.cat([y, mem_y]), torch.cat([labels, mem_labels]))
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(within_class_rv(y, y, labels)) == pytest.approx(1.0, rel=1e-5)  # x a copy of y
    big = torch.randn(4000, 4, generator=g)
    lab = torch.randint(0, 3, (4000,), generator=g)
    assert float(within_class_rv(big, torch.randn(4000, 4, generator=g), lab)) < 0.01  # independent
    assert within_class_rv(x[:2], y[:2], torch.tensor([0, 1])) is None  # no class with two rows


def test_within_class_rv_ignores_what_the_class_explains():
    """x and y both carry the class (an emotion voice and words share) and nothing else in common:
    the within-class coefficient is ~0, the unconditional one is large."""
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 4, (2000,), generator=g)
    means_x, means_y = 5 * torch.randn(4, 6, generator=g), 5 * torch.randn(4, 3, generator=g)
    x = means_x[lab] + torch.randn(2000, 6, generator=g)
    y = means_y[lab] + torch.randn(2000, 3, generator=g)
    assert float(within_class_rv(x, y, lab)) < 0.01
    assert float(within_class_rv(x, y, torch.zeros_like(lab))) > 0.3


def test_within_class_rv_gradient_is_the_full_estimates_as_if_every_row_were_current():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=g, requires_grad=True)
    y = torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    mem_x, mem_y, mem_labels = torch.randn(10, 4, generator=g), torch.randn(10, 3, generator=g), torch.arange(10) % 3

    def reference(x_all: torch.Tensor) -> torch.Tensor:  # the value, with the class means and normaliser fixed
        onehot = torch.nn.functional.one_hot(torch.cat([labels, mem_labels])).float()
        per = onehot.sum(0)[:, None]
        y_all = torch.cat([y, mem_y])
        xc = x_all - onehot @ ((onehot.t() @ x_all.detach()) / per)
        yc = y_all - onehot @ ((onehot.t() @ y_all) / per)
        n = x_all.shape[0]
        scale = torch.linalg.matrix_norm(xc.detach().t() @ xc.detach()) * torch.linalg.matrix_norm(yc.t() @ yc) / n ** 2
        return ((xc.t() @ yc / n) ** 2).sum() / scale

    within_class_rv(x, y, labels, mem_x, mem_y, mem_labels).backward()
    x_all = torch.cat([x.detach(), mem_x]).requires_grad_(True)
    reference(x_all).backward()
    # a batch row's gradient is the full estimate's, scaled by rows / batch rows (16 / 6)
    torch.testing.assert_close(x.grad, x_all.grad[:6] * 16 / 6)


# ----------------------------------------------------------------------------- in the evidence stack
DIMS = {"video_dim": 20, "audio_dim": 16, "au_dim": 6, "text_dim": 12, "visual_dim": 24}


def _stack(**overrides):
    cfg = dict(DIMS, hidden_dim=32, num_queries=4, num_qformer_layers=1, num_output_queries=6, num_heads=4,
               dropout=0.0, evidence_max_len=15, lambda_stmil=0.1, lambda_sccl=0.0, lambda_synergy=0.0,
               lambda_cls=0.0, evidence_decoder={"embed_dim": 32, "num_layers": 1, "num_heads": 4, "max_len": 16})
    cfg.update(overrides)
    return HEROEvidenceStack(OmegaConf.create(cfg), llm_dim=24, vocab_size=50, bos_token_id=1, eos_token_id=2,
                             pad_token_id=0)


def _batch(labels: list[int], seed: int = 0, t: int = 6):
    g = torch.Generator().manual_seed(seed)
    b = len(labels)
    order = [DIMS["video_dim"], DIMS["audio_dim"], DIMS["au_dim"], DIMS["text_dim"], DIMS["visual_dim"]]
    feats = torch.zeros(b, 5, t, 32)
    for k, d in enumerate(order):
        feats[:, k, :, :d] = torch.randn(b, t, d, generator=g)
    return {"video_features": feats, "feature_mask": torch.ones(b, 5, t, dtype=torch.bool),
            "modality_mask": torch.ones(b, 5, dtype=torch.bool), "emotion": torch.tensor(labels)}


@pytest.mark.parametrize("objective,term", [("covariance", "loss_stmil_cov"), ("vclub", "loss_stmil")])
def test_content_side_gets_no_gradient_only_the_audio_expert_does(objective, term):
    stack = _stack(stmil={"objective": objective}).train()
    batch = _batch([0, 0, 1, 1, 2, 2])
    batch["video_features"].requires_grad_(True)
    out = stack(batch, None)
    out.losses[term].backward()
    grad = batch["video_features"].grad
    assert grad[:, TEXT].abs().sum() == 0  # what is said is never pushed by STMIL
    assert grad[:, AUDIO].abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in stack.experts[TEXT].parameters())
    assert sum(p.grad.abs().sum() for p in stack.experts[AUDIO].parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in stack.estimator_parameters())  # the bound never trains q


def test_covariance_objective_trains_the_covariance_and_only_logs_the_bound():
    stack = _stack().train()  # objective: covariance is the default
    out = stack(_batch([0, 0, 1, 1, 2, 2]), None)
    assert "loss_stmil" not in out.losses and set(out.readouts) == {"loss_stmil"}
    assert not out.readouts["loss_stmil"].requires_grad  # measured, never minimised
    assert "loss_stmil_cov" in out.losses and out.losses["loss_stmil_cov"].requires_grad
    torch.testing.assert_close(out.loss_aux, 0.1 * out.losses["loss_stmil_cov"])  # lambda_stmil weighs it
    # the summaries are queued beside their content, row for row
    q, sq = stack.stmil.queue, stack.stmil.summary_queue
    assert torch.equal(q.filled, sq.filled) and torch.equal(q.cursor, sq.cursor) and int(sq.filled.sum()) == 6
    assert _stack(stmil={"objective": "vclub"}).stmil.summary_queue is None


@pytest.mark.parametrize("objective", ["covariance", "vclub"])
def test_unlabelled_clips_have_no_term_and_evaluation_leaves_the_queue_alone(objective):
    stack = _stack(stmil={"objective": objective}).train()
    out = stack(_batch([-1, -1, -1, -1]), None)
    assert not any(k.startswith("loss_stmil") for k in {**out.losses, **out.readouts}) and out.estimator_loss is None
    assert int(stack.stmil.queue.filled.sum()) == 0
    stack(_batch([0, 1, 2, 3]), None)  # distinct emotions: no negative yet, but the queue fills
    assert stack.stmil.queue.filled.tolist()[:4] == [1, 1, 1, 1]
    stack.eval()
    out = stack(_batch([0, 1], seed=1), None)
    assert "loss_stmil" in {**out.losses, **out.readouts}  # every same-emotion pair with the queue: the full bound
    assert stack.stmil.queue.filled.tolist()[:4] == [1, 1, 1, 1]
    if objective == "covariance":
        assert "loss_stmil_cov" in out.losses and stack.stmil.summary_queue.filled.tolist()[:4] == [1, 1, 1, 1]


@pytest.mark.parametrize("objective,term", [("covariance", "loss_stmil_cov"), ("vclub", "loss_stmil")])
def test_unconditional_mode_keeps_the_earlier_bound_between_the_two_summaries(objective, term):
    stack = _stack(stmil={"mode": "unconditional", "objective": objective}).train()
    out = stack(_batch([0, 1, 2, 3]), None)
    assert stack.stmil.queue is None and stack.stmil.summary_queue is None and out.content is None
    out.losses[term].backward()
    assert sum(p.grad.abs().sum() for p in stack.experts[TEXT].parameters() if p.grad is not None) > 0


def test_warm_up_fixes_content_statistics_and_fits_q_on_the_initial_representations():
    stack = _stack(stmil={"warmup_steps": 50, "warmup_batches": 3})
    batches = [_batch([0, 1, 0, 1, 2, 2], seed=s) for s in range(5)]
    read = []
    stats = stack.warm_up_stmil((read.append(1) or b for b in batches), lr=1e-3)
    assert len(read) == 3  # warmup_batches
    assert stats["pairs"] == 18 and stats["nll_after"] <= stats["nll_before"]
    raw = torch.cat([pooled_content(b["video_features"][:, TEXT, :, :12], b["feature_mask"][:, TEXT])
                     for b in batches[:3]])
    torch.testing.assert_close(stack.stmil.content_mean, raw.mean(0))
    assert stack.training  # the mode is restored
    # a second warm-up (e.g. after init_from loaded a stage-1 run) keeps the statistics it has
    mean = stack.stmil.content_mean.clone()
    stack.warm_up_stmil(iter(batches[3:]), lr=1e-3)
    assert torch.equal(stack.stmil.content_mean, mean)
    assert _stack(stmil={"warmup_steps": 0}).warm_up_stmil(iter(batches), 1e-3) is None


def test_stmil_config_is_checked():
    from minigpt4.common.schema import ConfigError

    with pytest.raises(ConfigError, match="model.stmil.mode"):
        STMILConfig(mode="sideways").check()
    with pytest.raises(ConfigError, match="model.stmil.queue_size"):
        STMILConfig(queue_size=0).check()
    with pytest.raises(ConfigError, match="model.stmil.objective"):
        STMILConfig(objective="mine").check()
    obj = STMILObjective(8, 4, 3, STMILConfig())
    assert obj.estimator.net.mu[0].in_features == 8 + 3  # the audio summary beside the one-hot emotion


# ----------------------------------------------------------------------------- the content probe
def test_content_probe_reads_a_topic_that_is_there_and_not_one_that_is_not():
    rng = np.random.default_rng(0)
    topics = ["a", "b", "c"]

    def part(n: int, offset: int, carry: bool) -> dict:
        out = {}
        for i in range(n):
            t = i % 3
            summ = rng.standard_normal((6, 8)).astype(np.float32)
            if carry:
                summ[AUDIO, t] += 3.0
            out[f"v{offset + i}"] = (summ, np.ones(6, dtype=bool), i % 2)
        return out

    content = {f"v{i}": topics[(i % 1000) % 3] for i in range(2000)}
    train, test = part(120, 0, True), part(60, 1000, True)
    got = probe_expert(train, test, content, AUDIO)
    assert got["content_accuracy"] > 0.9 and got["n_train"] == 120 and got["n_test"] == 60
    assert got["content_chance"] == pytest.approx(1 / 3)
    blind = probe_expert(part(120, 0, False), part(60, 1000, False), content, AUDIO)
    assert blind["content_accuracy"] < 0.6


def test_content_labels_come_from_the_annotation_files_and_missing_ones_are_an_error(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([{"video_id": "a", "topic": "work"}, {"video_id": "b"}]))

    class Rec:
        source = str(path)

    class DS:
        annotations = [Rec()]

    assert content_labels([DS()], "topic") == {"a": "work"}
    with pytest.raises(ContentProbeError, match="'topic'"):
        content_probe(None, [], [], {}, None, "topic")


def test_warm_up_with_too_few_pairs_leaves_q_as_built():
    """A tiny data set (one clip with audio, text and a label) is no error: q is simply not fitted."""
    stack = _stack(stmil={"warmup_steps": 50})
    before = {k: v.clone() for k, v in stack.stmil.state_dict().items()}
    stats = stack.warm_up_stmil(iter([_batch([0, -1, -1])]), lr=1e-3)
    assert stats == {"pairs": 1.0, "fitted": 0.0}
    assert all(torch.equal(v, stack.stmil.state_dict()[k]) for k, v in before.items())
