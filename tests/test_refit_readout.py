"""model.decision refit: a logistic regression on the expert summaries, refitted from the training split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from minigpt4.common.modalities import AUDIO
from minigpt4.common.schema import ConfigError, ModelConfig
from minigpt4.models.hero.refit_readout import RefitReadout, readout_features
from tests.test_evidence_stack import _batch, _stack

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(features: np.ndarray, labels: np.ndarray, c: float, rows: np.ndarray) -> np.ndarray:
    """scikit-learn's own probabilities for the same standardisation and C (the read-out's reference)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(features, labels)
    return clf.predict_proba(rows)


def test_fit_matches_scikit_learn_and_an_unseen_class_never_wins():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)  # classes 0-3 of 6: 4 and 5 never seen
    features = rng.standard_normal((60, 2 * 5)) + labels[:, None]
    features[:, -2:] = 1.0  # two constant columns (flags of experts always present): scale left at 1
    readout = RefitReadout(num_experts=2, hidden_dim=4, num_classes=6, inverse_ridge=0.1)
    assert readout(torch.zeros(3, 2, 4), torch.ones(3, 2, dtype=torch.bool)) is None  # not fitted yet
    accuracy = readout.fit(torch.tensor(features, dtype=torch.float32), torch.tensor(labels))
    test = rng.standard_normal((20, 10)) + rng.integers(0, 4, 20)[:, None]
    test[:, -2:] = 1.0
    z = (torch.tensor(test, dtype=torch.float32) - readout.mean) / readout.scale
    probs = torch.softmax(z @ readout.weight.t() + readout.bias, -1).numpy()
    assert np.allclose(probs[:, 4:], 0.0) and np.allclose(probs[:, :4], _reference(features, labels, 0.1, test),
                                                              atol=1e-4)
    assert accuracy > 0.8 and int(readout.rows) == 60


def test_binary_fit_keeps_scikit_learns_probabilities():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40) * 3  # classes 0 and 3
    features = rng.standard_normal((40, 6)) + labels[:, None] / 3
    readout = RefitReadout(num_experts=2, hidden_dim=2, num_classes=4, inverse_ridge=1.0)
    readout.fit(torch.tensor(features, dtype=torch.float32), torch.tensor(labels))
    z = (torch.tensor(features, dtype=torch.float32) - readout.mean) / readout.scale
    probs = torch.softmax(z @ readout.weight.t() + readout.bias, -1).numpy()
    assert np.allclose(probs[:, [0, 3]], _reference(features, labels, 1.0, features), atol=1e-4)


def test_features_zero_an_absent_experts_summary():
    summaries = torch.randn(2, 3, 4)
    present = torch.tensor([[True, False, True], [True, True, True]])
    f = readout_features(summaries, present)
    assert f.shape == (2, 3 * 4 + 3)
    assert torch.equal(f[0, 4:8], torch.zeros(4)) and torch.equal(f[0, -3:], torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(f[1, :12], summaries[1].flatten())


def test_stack_decides_by_the_head_until_refitted_then_by_the_eval_mode_read_out():
    torch.manual_seed(0)
    stack = _stack(lambda_cls=1.0, decision="refit", decision_refit_c=0.5).train()
    batch = _batch()
    out = stack.eval()(batch, None)
    assert torch.equal(out.cls_logits, out.head_logits)  # not refitted yet: the head decides
    stack.train()
    batches = [_batch(8) for _ in range(4)]
    for b in batches:
        b["emotion"][0] = -1  # an unlabelled clip: no row
    stats = stack.refit_statistics(iter(batches))
    assert stack.training and stats["readout_rows"] == 4 * 7
    assert 0.0 <= stats["head_train_accuracy"] <= 1.0
    stack.eval()
    torch.set_grad_enabled(False)
    rows, labels = [], []
    for b in batches:
        o = stack(b, None, compute_losses=False)
        keep = b["emotion"] >= 0
        rows.append(readout_features(o.summaries, o.expert_present)[keep])
        labels.append(b["emotion"][keep])
    features, y = torch.cat(rows).numpy(), torch.cat(labels).numpy()
    out = stack(batch, None)
    expected = _reference(features, y, 0.5, readout_features(out.summaries, out.expert_present).numpy())
    assert np.allclose(torch.softmax(out.cls_logits, -1)[:, :3].numpy(), expected, atol=1e-4)
    assert not torch.equal(out.cls_logits, out.head_logits)
    changed = dict(batch, video_features=batch["video_features"].clone())
    changed["video_features"][1, AUDIO] = 5.0  # clip 1 has no audio: its frames cannot move the decision
    torch.testing.assert_close(stack(changed, None).cls_logits[1], out.cls_logits[1])
    torch.set_grad_enabled(True)
    stack.train()
    out = stack(batch, None)
    labelled = batch["emotion"] >= 0
    torch.testing.assert_close(out.losses["loss_cls"], torch.nn.functional.cross_entropy(
        out.head_logits[labelled], batch["emotion"][labelled]))  # loss_cls still trains the head


def test_with_the_eraser_the_read_out_is_fitted_on_the_erased_summaries():
    torch.manual_seed(0)
    stack = _stack(lambda_cls=1.0, decision="refit", stmil={"erase": True, "erase_null_permutations": 0})
    batches = [_batch(8) for _ in range(4)]
    seen = []
    original = stack.readout.fit
    stack.readout.fit = lambda f, y: seen.append(f) or original(f, y)
    stats = stack.refit_statistics(iter(batches))
    assert stats["rows"] > 0 and stats["erased"] > 0  # the eraser refitted first and erases
    stack.eval()
    with torch.no_grad():
        erased = torch.cat([readout_features(o.summaries, o.expert_present)[b["emotion"] >= 0]
                            for b in batches for o in [stack(b, None, compute_losses=False)]])
    torch.testing.assert_close(seen[0], erased)


def test_refit_decision_config_is_checked():
    with pytest.raises(ConfigError, match="model.decision refit"):
        ModelConfig(lambda_cls=0.0, decision="refit").check()
    with pytest.raises(ConfigError, match="model.decision_refit_c"):
        ModelConfig(lambda_cls=1.0, decision="refit", decision_refit_c=0.0).check()
    ModelConfig(lambda_cls=1.0, lambda_expert_cls=0.0, decision="refit").check()  # needs no expert read-outs
    assert _stack(lambda_cls=1.0).readout is None


def test_the_runner_refits_the_read_out_and_the_checkpoint_keeps_it(tiny_llm_dir, tmp_path, caplog):
    import logging

    from safetensors.torch import load_file

    from minigpt4.cli.train import run as train_run
    from minigpt4.common import checkpoint as ckpt
    from tests.test_eval import write_tiny_config, write_tiny_dataset

    labels = write_tiny_dataset(tmp_path / "data", {"train": 16, "val": 4, "test": 4})
    cfg = write_tiny_config(tmp_path, tiny_llm_dir, labels, valid_splits=["val"], iters_per_epoch=4,
                            val_max_new_tokens=2)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="minigpt4.runners.runner_base"):
        train_run(["--cfg-path", str(cfg), "--options", "model.train_stage=observation", "model.decision=refit",
                   "run.max_epoch=2", f"run.output_dir={out}"])
    refits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("statistics refit")]
    assert len(refits) == 3 and all("readout_rows=16.0000" in m for m in refits)  # the whole split, each time
    saved = load_file(str(ckpt.resolve_checkpoint(out) / "model.safetensors"))
    assert int(saved["evidence_stack.readout.rows"]) == 16 and saved["evidence_stack.readout.weight"].abs().sum() > 0
