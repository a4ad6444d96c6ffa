"""The content eraser (models/hero/content_eraser.py): the LEACE-style map removes the content's
linear trace from the audio summary given the emotion, keeps the emotion, acts only where audio
is present, and travels with the checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from minigpt4.common.modalities import AUDIO
from minigpt4.common.schema import ConfigError, STMILConfig
from minigpt4.models.hero.content_eraser import MIN_ROWS, ContentEraser, eraser_matrix, shuffled_floor
from minigpt4.models.hero.evidence_stack import HEROEvidenceStack
from tests.test_hero_model import build, llm_dir, make_batch, make_cfg  # noqa: F401 - llm_dir is a fixture

pytestmark = pytest.mark.usefixtures("one_thread")

H, D, C, TOPICS = 24, 8, 3, 4


def _clips(n: int, g: torch.Generator, faint: float = 0.1):
    """Summaries with the emotion loud and the topic faint (the case a cross-covariance misses)."""
    embed = torch.randn(TOPICS, D, generator=torch.Generator().manual_seed(7))
    topic_dir = faint * torch.randn(TOPICS, H, generator=torch.Generator().manual_seed(8))
    emotion_dir = torch.randn(C, H, generator=torch.Generator().manual_seed(9))
    labels = torch.randint(0, C, (n,), generator=g)
    topics = torch.randint(0, TOPICS, (n,), generator=g)
    y = embed[topics] + 0.5 * torch.randn(n, D, generator=g)
    x = emotion_dir[labels] + topic_dir[topics] + torch.randn(n, H, generator=g) * torch.linspace(0.01, 1.0, H)
    return x, y, labels, topics


def _probe(x_train, y_train, x_test, y_test) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return float(clf.fit(x_train.numpy(), y_train.numpy()).score(x_test.numpy(), y_test.numpy()))


def test_eraser_matrix_removes_the_cross_covariance_and_is_a_projection():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, H, generator=g)
    b = a[:, :D] + torch.randn(200, D, generator=g)
    cxx, cxy, cyy = a.t() @ a / 200, a.t() @ b / 200, b.t() @ b / 200
    m, corr, count = eraser_matrix(cxx, cxy, cyy, min_correlation=0.0)  # every correlated direction
    assert (m @ cxy).abs().max() < 1e-4  # Cov(M x, y) = 0
    torch.testing.assert_close(m @ m, m, atol=1e-4, rtol=1e-4)  # erasing twice changes nothing more
    assert corr.shape == (D,) and bool((corr <= 1.0 + 1e-5).all()) and count == D
    kept, _, none = eraser_matrix(cxx, cxy, cyy, min_correlation=0.999)  # nothing correlates that much
    torch.testing.assert_close(kept, torch.eye(H), atol=1e-5, rtol=0)
    assert none == 0
    # a floor keeps only the directions above it
    _, _, two = eraser_matrix(cxx, cxy, cyy, min_correlation=0.0, floor=float(corr[2] + corr[1]) / 2)
    assert two == 2


def test_shuffled_floor_sits_at_the_noise_and_the_fit_erases_only_what_beats_it():
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(300) % C
    x = torch.randn(300, H, generator=g)
    y = torch.randn(300, D, generator=g)
    eraser = ContentEraser(H, D, C, min_correlation=0.0, null_permutations=8)
    stats = eraser.fit(x, y, labels)
    assert stats["erased"] == 0.0  # independent data: nothing beats its own shuffles
    assert 0.2 < stats["shuffled_top"] < 0.6 and stats["top_correlation"] < stats["shuffled_top"] + 0.1
    torch.testing.assert_close(eraser.matrix, torch.eye(H))
    assert shuffled_floor(x, y, labels, C, 8) == shuffled_floor(x, y, labels, C, 8)  # same rows, same floor
    # two planted directions of the content: exactly those two are erased (a fixed 0.3 takes noise too)
    y2 = y.clone()
    y2[:, 0] += 2.0 * x[:, 0]
    y2[:, 1] += 2.0 * x[:, 1]
    assert eraser.fit(x, y2, labels)["erased"] == 2.0
    fixed = ContentEraser(H, D, C, min_correlation=0.3, null_permutations=0).fit(x, y2, labels)
    assert fixed["erased"] > 2.0 and "shuffled_top" not in fixed


def test_shuffles_stay_within_each_class():
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([0] * 50 + [1] * 50)
    x = torch.randn(100, H, generator=g)
    y = torch.randn(100, D, generator=g) + 50.0 * labels[:, None].float()  # a class offset only
    # shuffling across classes would carry the offset into the within-class covariance and inflate the floor
    assert shuffled_floor(x, y, labels, 2, 4) < 0.7


def test_fitted_eraser_hides_a_faint_topic_from_a_linear_probe_and_keeps_the_emotion():
    g = torch.Generator().manual_seed(1)
    eraser = ContentEraser(H, D, C, min_correlation=0.3)
    x, y, labels, _ = _clips(1200, g)
    eraser.fit(x, y, labels)
    x_tr, _, lab_tr, top_tr = _clips(800, g)
    x_te, _, lab_te, top_te = _clips(400, g)
    before = _probe(x_tr, top_tr, x_te, top_te)
    after = _probe(eraser(x_tr), top_tr, eraser(x_te), top_te)
    assert before > 0.8 and after < 0.45  # chance 0.25
    assert _probe(eraser(x_tr), lab_tr, eraser(x_te), lab_te) > 0.95


def test_fit_uses_class_centred_statistics_and_the_eraser_waits_for_a_fit():
    g = torch.Generator().manual_seed(2)
    eraser = ContentEraser(H, D, C, min_correlation=0.3)
    x, y, _, _ = _clips(40, g)
    assert int(eraser.rows) == 0 and torch.equal(eraser(x), x)  # identity before the first fit
    labels = torch.arange(40) % C
    shifted = x + 100.0 * F.one_hot(labels, C).float() @ torch.randn(C, H, generator=g)  # class offsets only
    eraser.fit(x, y, labels)
    m = eraser.matrix.clone()
    eraser.fit(shifted, y, labels)
    torch.testing.assert_close(eraser.matrix, m, atol=1e-4, rtol=1e-4)  # the emotion's offsets change nothing
    assert int(eraser.rows) == 40


def _stack(**stmil):
    dims = {"video_dim": 20, "audio_dim": 16, "au_dim": 6, "text_dim": 12, "visual_dim": 24}
    cfg = dict(dims, hidden_dim=32, num_queries=4, num_qformer_layers=1, num_output_queries=6, num_heads=4,
               dropout=0.0, evidence_max_len=15, lambda_stmil=0.0, lambda_sccl=0.0, lambda_synergy=0.0,
               lambda_cls=0.0, stmil={"erase": True, **stmil},
               evidence_decoder={"embed_dim": 32, "num_layers": 1, "num_heads": 4, "max_len": 16})
    return HEROEvidenceStack(OmegaConf.create(cfg), llm_dim=24, vocab_size=50, bos_token_id=1, eos_token_id=2,
                             pad_token_id=0)


def _batch(b: int, seed: int, audio_present: bool = True):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, 5, 6, 32, generator=g)
    modality = torch.ones(b, 5, dtype=torch.bool)
    if not audio_present:
        modality[0, AUDIO] = False
    return {"video_features": feats, "feature_mask": torch.ones(b, 5, 6, dtype=torch.bool),
            "modality_mask": modality, "emotion": torch.arange(b) % 3}


def test_refit_reads_raw_summaries_in_eval_mode_and_erasure_leaves_absent_audio_alone():
    # random clips: only the fixed threshold erases anything here (the shuffled floor rightly would not)
    stack = _stack(erase_null_permutations=0).train()
    batches = [_batch(8, seed) for seed in range(4)]
    stats = stack.content_eraser.refit(stack, iter(batches))
    assert stats["rows"] == 32.0 and stack.training  # labelled clips with audio and text; mode restored
    eraser = stack.content_eraser
    stack.eval()
    raw = stack.experts[AUDIO](*_audio_slice(stack, batches[0]))[1]
    eraser_input = []
    original = eraser.fit
    eraser.fit = lambda x, y, labels: eraser_input.append(x) or original(x, y, labels)
    eraser.refit(stack, iter(batches[:1]))
    torch.testing.assert_close(eraser_input[0], raw)  # fitted on the unerased eval-mode summaries
    out = stack(_batch(8, 99, audio_present=False), None)
    assert float(out.summaries[0, AUDIO].detach().abs().sum()) == 0.0  # absent audio stays zero
    assert not torch.allclose(out.summaries[1:, AUDIO], stack.experts[AUDIO](*_audio_slice(
        stack, _batch(8, 99, audio_present=False)))[1][1:])  # present audio is erased
    assert _stack(erase=False).content_eraser is None


def _audio_slice(stack, batch):
    from minigpt4.models.hero.observation_experts import slice_modalities

    s = slice_modalities(batch["video_features"], batch["feature_mask"], batch["modality_mask"], stack.dims)[AUDIO]
    return s.features, s.frame_mask, s.present


def test_eraser_statistics_travel_with_the_checkpoint(llm_dir):
    from minigpt4.common.checkpoint import trainable_state_dict

    model = build(make_cfg(llm_dir, stmil={"erase": True}))
    assert model.refit_statistics(iter([make_batch(seed=s) for s in range(4)]))["rows"] == 12.0
    saved = trainable_state_dict(model)
    names = {f"evidence_stack.content_eraser.{n}" for n, _ in model.evidence_stack.content_eraser.named_buffers()}
    assert names <= set(saved) and int(saved["evidence_stack.content_eraser.rows"]) >= MIN_ROWS
    fresh = build(make_cfg(llm_dir, stmil={"erase": True}), seed=5)
    fresh.load_state_dict(saved, strict=False)
    x = torch.randn(5, fresh.evidence_stack.hidden_dim)
    torch.testing.assert_close(fresh.evidence_stack.content_eraser(x), model.evidence_stack.content_eraser(x))


def test_eraser_config_is_checked():
    with pytest.raises(ConfigError, match="model.stmil.erase_min_correlation"):
        STMILConfig(erase_min_correlation=-0.1).check()
    assert np.isclose(STMILConfig().erase_min_correlation, 0.3)
    with pytest.raises(ConfigError, match="model.stmil.erase_null_permutations"):
        STMILConfig(erase_null_permutations=-1).check()
    assert STMILConfig().erase_null_permutations == 8


def test_the_runner_refits_before_step_1_and_after_every_epoch_and_checkpoints_it(tiny_llm_dir, tmp_path, caplog):
    import logging

    from safetensors.torch import load_file

    from minigpt4.cli.train import run as train_run
    from minigpt4.common import checkpoint as ckpt
    from tests.test_eval import write_tiny_config, write_tiny_dataset

    labels = write_tiny_dataset(tmp_path / "data", {"train": 16, "val": 4, "test": 4})
    cfg = write_tiny_config(tmp_path, tiny_llm_dir, labels, valid_splits=["val"], iters_per_epoch=4,
                            val_max_new_tokens=2)  # 4 batches of 4: an epoch reads the whole split
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="minigpt4.runners.runner_base"):
        train_run(["--cfg-path", str(cfg), "--options", "model.train_stage=observation", "model.stmil.erase=true",
                   "run.max_epoch=2", f"run.output_dir={out}"])
    refits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("statistics refit")]
    assert len(refits) == 3  # before step 1, after epoch 0, after epoch 1
    saved = load_file(str(ckpt.resolve_checkpoint(out) / "model.safetensors"))
    rows = int(saved["evidence_stack.content_eraser.rows"])
    assert rows >= MIN_ROWS and all(f"rows={rows}.0000" in message for message in refits)  # the whole split, each time
    assert not torch.equal(saved["evidence_stack.content_eraser.matrix"], torch.eye(32))
