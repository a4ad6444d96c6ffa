"""HEROEvidenceStack: the evidence half of HEROModel end to end (evidence_stack.py)."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.modalities import AUDIO, EXPERT_ORDER, MOTION, SYNERGY, TEXT, VISUAL
from minigpt4.models.hero.evidence_stack import EvidenceTargets, HEROEvidenceStack
from minigpt4.models.hero.hero_loss import info_nce

DIMS = {"video_dim": 20, "audio_dim": 16, "au_dim": 6, "text_dim": 12, "visual_dim": 24}
MAX_DIM, LLM_DIM, VOCAB = 32, 48, 100


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**overrides: Any):
    base = dict(DIMS, hidden_dim=32, num_queries=4, num_qformer_layers=2, num_output_queries=6, num_heads=4,
                dropout=0.1, evidence_max_len=15,
                evidence_decoder={"embed_dim": 32, "num_layers": 1, "num_heads": 4, "max_len": 16})
    base.update(overrides)
    return OmegaConf.create(base)


def _stack(**overrides: Any) -> HEROEvidenceStack:
    return HEROEvidenceStack(_cfg(**overrides), llm_dim=LLM_DIM, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2,
                             pad_token_id=0)


def _batch(b: int = 5, t: int = 8, max_dim: int = MAX_DIM, dims: dict = DIMS) -> dict[str, Any]:
    """A collated batch like HERODataset's: zero padding in time and feature dim, clip 1 without audio."""
    order = [dims["video_dim"], dims["audio_dim"], dims["au_dim"], dims["text_dim"], dims["visual_dim"]]
    feats = torch.zeros(b, 5, t, max_dim)
    fmask = torch.zeros(b, 5, t, dtype=torch.bool)
    mmask = torch.ones(b, 5, dtype=torch.bool)
    for i in range(b):
        n = max(2, t - i)
        for k, d in enumerate(order):
            feats[i, k, :n, :d] = torch.randn(n, d)
            fmask[i, k, :n] = True
    if b > 1:
        feats[1, AUDIO] = 0
        fmask[1, AUDIO] = False
        mmask[1, AUDIO] = False
    return {"video_features": feats, "feature_mask": fmask, "modality_mask": mmask,
            "emotion": torch.tensor([i % 3 - (1 if i == b - 1 else 0) for i in range(b)])}


def _targets(b: int = 5, length: int = 6) -> EvidenceTargets:
    ids = torch.randint(3, VOCAB, (b, 6, length))
    lengths = torch.randint(1, length + 1, (b, 6))
    mask = (torch.arange(length)[None, None] < lengths[..., None]).long()
    present = torch.ones(b, 6, dtype=torch.bool)
    present[:, SYNERGY] = False
    present[0, VISUAL] = False
    return EvidenceTargets(ids * mask, mask, present, torch.randn(b, 6, LLM_DIM))


# ----------------------------------------------------------------------------- shapes, losses
@pytest.mark.parametrize("strategy", ["audio", "dynamic", "concat"])
def test_forward_shapes_and_loss_terms(strategy):
    stack = _stack(integration_strategy=strategy, lambda_cls=0.3, lambda_kl=0.2).train()
    out = stack(_batch(), _targets())
    assert out.context.shape == (5, 6, LLM_DIM)
    assert out.modality_weights.shape == (5, 6) and out.expert_present.shape == (5, 6)
    assert out.summaries.shape == (5, 6, 32) and out.expert_tokens.shape == (5, 6, 4, 32)
    assert out.synergy_score.shape == (5,) and out.cls_logits.shape == (5, 6)
    assert set(out.losses) == {"loss_stmil_cov", "loss_sccl", "loss_synergy", "loss_evidence", "loss_cls", "loss_kl"}
    assert set(out.readouts) == {"loss_stmil"}  # the vCLUB bound: logged, not trained (stmil.objective)
    lambdas = {"loss_stmil_cov": 0.1, "loss_sccl": 0.1, "loss_synergy": 0.1, "loss_evidence": 0.5,
               "loss_cls": 0.3, "loss_kl": 0.2}
    expected = sum(lambdas[k] * v for k, v in out.losses.items())
    torch.testing.assert_close(out.loss_aux, expected)
    assert out.estimator_loss is not None and out.estimator_loss.dim() == 0
    assert all(torch.isfinite(v) for v in out.losses.values())


def test_defaults_switch_optional_terms_off_and_losses_can_be_skipped():
    stack = _stack().train()
    out = stack(_batch(), None)
    # no golden evidence, no kl; the classification head is on by default (lambda_cls 1.0)
    assert set(out.losses) == {"loss_stmil_cov", "loss_sccl", "loss_synergy", "loss_cls"}
    assert out.cls_logits.shape == (5, 6) and out.expert_logits is None and stack.decoder.condition_proj is None
    assert _stack(lambda_cls=0.0).eval()(_batch(), None).cls_logits is None
    quiet = stack(_batch(), _targets(), compute_losses=False)
    assert quiet.losses == {} and float(quiet.loss_aux) == 0.0 and quiet.estimator_loss is None
    off = _stack(lambda_stmil=0.0, lambda_sccl=0.0, include_synergy=False, lambda_cls=0.0).train()
    out = off(_batch(), None)
    assert out.losses == {} and out.estimator_loss is None and off.estimator_parameters() == []
    assert not out.expert_present[:, SYNERGY].any() and torch.equal(out.synergy_score, torch.full((5,), 0.5))


def test_absent_modalities_get_zero_weight_and_no_synergy():
    stack = _stack().eval()
    batch = _batch()
    batch["modality_mask"][3, VISUAL] = False  # flagged absent
    batch["feature_mask"][4, TEXT] = False  # present flag but no frame
    with torch.no_grad():
        out = stack(batch, None)
    present = out.expert_present
    assert not present[1, AUDIO] and not present[1, SYNERGY] and not present[3, VISUAL] and not present[4, TEXT]
    assert present[0].all()
    w = out.modality_weights
    assert torch.equal(w[~present], torch.zeros_like(w[~present]))
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    assert float(out.synergy_score[1]) == 0.5
    assert torch.equal(out.summaries[1, AUDIO], torch.zeros(32))


def test_padding_and_absent_modalities_change_no_output():
    stack = _stack().eval()
    batch = _batch()
    with torch.no_grad():
        out = stack(batch, None, compute_losses=False)
    noisy = dict(batch)
    feats = batch["video_features"].clone()
    pad_frames = ~batch["feature_mask"]
    feats[pad_frames] = torch.randn(int(pad_frames.sum()), MAX_DIM) * 100  # padded and absent frames
    for k, key in enumerate(["video_dim", "audio_dim", "au_dim", "text_dim", "visual_dim"]):
        feats[:, k, :, DIMS[key]:] = torch.randn_like(feats[:, k, :, DIMS[key]:])  # feature-dim padding
    noisy["video_features"] = feats
    with torch.no_grad():
        out2 = stack(noisy, None, compute_losses=False)
    torch.testing.assert_close(out2.context, out.context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2.modality_weights, out.modality_weights, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out2.summaries, out.summaries, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2.synergy_score, out.synergy_score, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- gradients
def test_gradients_reach_every_expert_and_respect_estimator_isolation():
    stack = _stack(lambda_cls=0.5, lambda_kl=0.5, kl_drop_prob=0.5).train()
    targets = _targets()
    targets.sentence_embeds.requires_grad_(True)  # frozen by contract: must get nothing
    out = stack(_batch(), targets)
    estimator = {id(p) for p in stack.estimator_parameters()}
    assert estimator
    (out.context.pow(2).mean() + out.loss_aux).backward(retain_graph=True)
    for name, p in stack.named_parameters():
        if id(p) in estimator:
            assert p.grad is None, f"{name} got a gradient from the main loss"
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    assert targets.sentence_embeds.grad is None
    grads_before = {name: p.grad.clone() for name, p in stack.named_parameters() if id(p) not in estimator}
    out.estimator_loss.backward()
    for name, p in stack.named_parameters():
        if id(p) in estimator:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"estimator {name} got no gradient"
        else:
            assert torch.equal(p.grad, grads_before[name]), f"estimator loss reached model parameter {name}"


def test_kl_student_view_equals_rerunning_with_modalities_dropped():
    stack = _stack(lambda_cls=0.5, lambda_kl=0.5).eval()
    batch = _batch()
    with torch.no_grad():
        out = stack(batch, None, compute_losses=False)
        keep = out.expert_present[:, :5].clone()
        keep[0, AUDIO] = False
        keep[2, VISUAL] = False
        keep[3, MOTION] = False
        syn = out.expert_present[:, SYNERGY] & keep[:, AUDIO] & keep[:, MOTION]
        student = stack.integration(out.expert_tokens, out.summaries, torch.cat([keep, syn[:, None]], 1))
        dropped = dict(batch)
        dropped["video_features"] = batch["video_features"].clone()
        dropped["feature_mask"] = batch["feature_mask"].clone()
        dropped["modality_mask"] = batch["modality_mask"].clone()
        for b, k in [(0, AUDIO), (2, VISUAL), (3, MOTION)]:
            dropped["video_features"][b, k] = 0
            dropped["feature_mask"][b, k] = False
            dropped["modality_mask"][b, k] = False
        rerun = stack(dropped, None, compute_losses=False)
    torch.testing.assert_close(student.context, rerun.context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(student.modality_weights, rerun.modality_weights, atol=1e-6, rtol=1e-6)
    assert "loss_kl" not in stack(batch, None).losses  # the KL view is a training-time term


# ----------------------------------------------------------------------------- SCCL modes
def test_sccl_golden_mode_matches_reference_and_fallback_uses_visual_text():
    stack = _stack(lambda_stmil=0.0, include_synergy=False, lambda_sccl=1.0, sccl_temperature=0.2).eval()
    batch, targets = _batch(), _targets()
    with torch.no_grad():
        out = stack(batch, targets)
        usable = out.expert_present & targets.present
        terms = [info_nce(stack.sccl_summary_proj(out.summaries[usable[:, e], e]),
                          stack.sccl_text_proj(targets.sentence_embeds[usable[:, e], e]), 0.2)
                 for e in range(6) if int(usable[:, e].sum()) >= 2]
        torch.testing.assert_close(out.losses["loss_sccl"], torch.stack(terms).mean())
        fallback = stack(batch, None)
        v, t = out.summaries[:, VISUAL], out.summaries[:, TEXT]
        ref = info_nce(stack.sccl_summary_proj(v), stack.sccl_summary_proj(t), 0.2)
        torch.testing.assert_close(fallback.losses["loss_sccl"], ref)


# ----------------------------------------------------------------------------- evidence generation
def test_generate_evidence_shapes_pads_absent_experts_and_keeps_mode():
    stack = _stack().train()
    out = stack(_batch(), None, compute_losses=False)
    ids = stack.generate_evidence(out, max_new_tokens=5)
    assert ids.dtype == torch.long and ids.shape[:2] == (5, 6) and 1 <= ids.shape[2] <= 5
    assert (ids[~out.expert_present] == 0).all()
    assert stack.training and stack.decoder.training  # eval only while generating


def test_stack_learns_to_write_golden_evidence_with_the_real_tokenizer(tiny_llm_dir):
    """Train only the evidence term on three clips; greedy decoding + the LLM tokenizer gives the sentences back."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    golden = [
        {"audio": "The voice is loud and trembling.", "visual": "She frowns deeply."},
        {"visual": "A broad smile with raised cheeks.", "text": "He says the trip was wonderful."},
        {"audio": "A calm, soft voice.", "au": "AU12 and AU6 are active."},
    ]
    texts = [(b, EXPERT_ORDER.index(k), s) for b, ev in enumerate(golden) for k, s in ev.items()]
    encoded = tok([s for _, _, s in texts], add_special_tokens=False)["input_ids"]
    length = max(map(len, encoded))
    ids = torch.full((3, 6, length), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(3, 6, length, dtype=torch.long)
    present = torch.zeros(3, 6, dtype=torch.bool)
    for (b, e, _), row in zip(texts, encoded):
        ids[b, e, : len(row)] = torch.tensor(row)
        mask[b, e, : len(row)] = 1
        present[b, e] = True
    targets = EvidenceTargets(ids, mask, present, torch.zeros(3, 6, LLM_DIM))
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    stack = HEROEvidenceStack(_cfg(lambda_stmil=0.0, lambda_sccl=0.0, include_synergy=False, lambda_evidence=1.0,
                                   dropout=0.0), LLM_DIM, len(tok), bos, tok.eos_token_id, tok.pad_token_id)
    batch = _batch(b=3)  # clip 1 has no audio: only its visual and text sentences are learnable
    opt = torch.optim.Adam(stack.parameters(), lr=1e-2)
    for _ in range(70):
        out = stack(batch, targets)
        opt.zero_grad()
        out.loss_aux.backward()
        opt.step()
    assert float(out.losses["loss_evidence"].detach()) < 0.3
    stack.eval()
    with torch.no_grad():
        generated = stack.generate_evidence(stack(batch, None, compute_losses=False), max_new_tokens=length + 2)
    for b, e, sentence in texts:
        assert tok.decode(generated[b, e].tolist(), skip_special_tokens=True).strip() == sentence


# ----------------------------------------------------------------------------- config, scale, dtype
def test_frame_contrast_can_name_the_experts_that_read_it():
    names = ("motion", "audio", "au", "text", "visual")
    assert [e.frame_contrast for e in _stack(frame_contrast=["motion"]).experts] == [n == "motion" for n in names]
    assert [e.frame_contrast for e in _stack(frame_contrast=True).experts] == [True] * 5
    assert [e.frame_contrast for e in _stack().experts] == [False] * 5
    out = _stack(frame_contrast=["motion", "audio"]).eval()(_batch(), _targets())
    assert torch.isfinite(out.loss_aux)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="integration_strategy"):
        _stack(integration_strategy="sum")
    with pytest.raises(ValueError, match="use_cls_head"):
        _stack(lambda_kl=0.1, use_cls_head=False)
    with pytest.raises(ValueError, match="divisible"):
        _stack(hidden_dim=30)
    with pytest.raises(ValueError, match="lambda_sccl must be >= 0"):
        _stack(lambda_sccl=-1.0)
    stack = _stack()
    with pytest.raises(KeyError, match="feature_mask"):
        stack({"video_features": torch.zeros(1, 5, 2, MAX_DIM)}, None)
    with pytest.raises(ValueError, match="video_dim = 20 exceeds the stack.s max_dim 16"):
        narrow = _batch()
        narrow["video_features"] = narrow["video_features"][..., :16]
        stack(narrow, None)
    bad = _targets()
    bad.input_ids = bad.input_ids[:, :5]
    with pytest.raises(ValueError, match="EvidenceTargets.input_ids"):
        stack(_batch(), bad)
    with pytest.raises(ValueError, match="exceeds model.evidence_decoder.max_len"):
        stack(_batch(), _targets(length=20))


def test_paper_dims_build_and_run():
    paper = {"video_dim": 768, "audio_dim": 1024, "au_dim": 35, "text_dim": 768, "visual_dim": 1024}
    cfg = OmegaConf.create(dict(paper, hidden_dim=768, num_queries=32, num_qformer_layers=2, num_output_queries=64,
                                integration_strategy="audio", lambda_stmil=0.1, lambda_sccl=0.1))
    stack = HEROEvidenceStack(cfg, llm_dim=256, vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2).eval()
    with torch.no_grad():
        out = stack(_batch(b=2, t=6, max_dim=1024, dims=paper), None)
    assert out.context.shape == (2, 64, 256) and out.expert_tokens.shape == (2, 6, 32, 768)
    # clip 1 has no audio: STMIL and synergy need two pairs; the default head has no labels here
    assert set(out.losses) <= {"loss_sccl", "loss_cls"} and "loss_sccl" in out.losses
    torch.testing.assert_close(out.modality_weights.sum(-1), torch.ones(2))


def test_bf16_autocast_runs_and_stays_finite():
    stack = _stack(lambda_cls=0.1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stack(_batch(), _targets())
        total = out.context.float().mean() + out.loss_aux + out.estimator_loss
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(out.modality_weights).all()
    assert all(torch.isfinite(p.grad).all() for p in stack.parameters() if p.grad is not None)


def test_expert_readouts_train_and_condition_the_decoder():
    """lambda_expert_cls > 0: one read-out per expert, its CE over present experts of labelled clips,
    and its class probabilities as an extra decoder memory token (which changes what it writes)."""
    dec = {"embed_dim": 32, "num_layers": 1, "num_heads": 4, "max_len": 16, "condition_on_readout": True}
    stack = _stack(lambda_expert_cls=0.5, evidence_decoder=dec).train()
    batch = _batch()
    out = stack(batch, _targets())
    assert out.expert_logits.shape == (5, 6, 6) and "loss_expert_cls" in out.losses
    rows = (out.expert_present & (batch["emotion"] >= 0)[:, None]).nonzero()
    expected = torch.nn.functional.cross_entropy(out.expert_logits[rows[:, 0], rows[:, 1]], batch["emotion"][rows[:, 0]])
    torch.testing.assert_close(out.losses["loss_expert_cls"], expected)
    assert stack.decoder.condition_proj is not None
    out.losses["loss_evidence"].backward()
    assert stack.decoder.condition_proj.weight.grad.abs().sum() > 0  # the decoder reads the read-out
    assert all(p.grad is None for p in stack.expert_cls_heads.parameters())  # ...detached: trained by its own CE
    memory, index = torch.randn(3, 4, stack.hidden_dim), torch.tensor([0, 1, 2])
    cond = torch.eye(6)[:3]
    with pytest.raises(ValueError, match="conditioned"):
        stack.decoder.hidden(memory, index, torch.ones(3, 2, dtype=torch.long))
    a = stack.decoder.eval().hidden(memory, index, torch.ones(3, 2, dtype=torch.long), cond)
    b = stack.decoder.hidden(memory, index, torch.ones(3, 2, dtype=torch.long), cond.flip(0))
    assert not torch.allclose(a, b)
    assert _stack(lambda_expert_cls=0.5).decoder.condition_proj is None  # off unless asked
    with pytest.raises(ValueError, match="lambda_expert_cls"):
        _stack(evidence_decoder=dec)


def test_head_and_experts_decision_is_the_product_of_the_head_and_present_read_outs():
    """model.decision head_and_experts: cls_logits (what the brief, the confidence and --use_cls_head
    read) = log p_head + sum of present experts' log p; loss_cls still trains the head alone."""
    torch.manual_seed(0)
    fused = _stack(lambda_cls=1.0, lambda_expert_cls=0.5, decision="head_and_experts").eval()
    batch = _batch()
    out = fused(batch, None)
    log_p = torch.log_softmax
    expected = log_p(out.head_logits, -1).clone()
    for b in range(5):
        for e in range(6):
            if out.expert_present[b, e]:
                expected[b] += log_p(out.expert_logits[b, e], -1)
    torch.testing.assert_close(out.cls_logits, expected)
    assert not bool(out.expert_present[1, AUDIO])  # clip 1 has no audio: its read-out took no part
    changed = out.expert_logits.clone()
    changed[1, AUDIO] += 100.0 * torch.arange(6.0)
    from minigpt4.models.hero.decision_fusion import fused_decision

    torch.testing.assert_close(fused_decision(out.head_logits, changed, out.expert_present), out.cls_logits)
    fused.train()
    out = fused(batch, None)
    labelled = batch["emotion"] >= 0
    torch.testing.assert_close(out.losses["loss_cls"], torch.nn.functional.cross_entropy(
        out.head_logits[labelled], batch["emotion"][labelled]))
    plain = _stack(lambda_cls=1.0, lambda_expert_cls=0.5).eval()(batch, None)
    assert torch.equal(plain.cls_logits, plain.head_logits)  # the default decision is the head's


def test_head_and_experts_decision_needs_both_read_outs():
    from minigpt4.common.schema import ConfigError, ModelConfig

    with pytest.raises(ConfigError, match="model.decision"):
        ModelConfig(lambda_cls=1.0, lambda_expert_cls=0.0, decision="head_and_experts").check()
    with pytest.raises(ConfigError, match="model.decision"):
        ModelConfig(decision="vote").check()
