"""Slicing, attention, ModalityQFormer, SynergyExpert (observation_experts.py) and EvidenceDecoder (evidence_decoder.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minigpt4.models.hero.evidence_decoder import EvidenceDecoder
from minigpt4.models.hero.observation_experts import (
    ModalityQFormer,
    MultiHeadAttention,
    SynergyExpert,
    contrast_frames,
    modality_dims,
    slice_modalities,
)

DIMS = (20, 16, 6, 12, 24)


pytestmark = pytest.mark.usefixtures("one_thread")


def _stack(b: int = 3, t: int = 9, max_dim: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feats = torch.zeros(b, 5, t, max_dim)
    fmask = torch.zeros(b, 5, t, dtype=torch.bool)
    for i in range(b):
        n = t - 2 * i
        for k, d in enumerate(DIMS):
            feats[i, k, :n, :d] = torch.randn(n, d)
            fmask[i, k, :n] = True
    return feats, fmask, torch.ones(b, 5, dtype=torch.bool)


# ----------------------------------------------------------------------------- slicing
def test_slice_unpads_each_modality_at_its_stack_index():
    feats, fmask, mmask = _stack()
    slices = slice_modalities(feats, fmask, mmask, DIMS)
    assert [s.name for s in slices] == ["motion", "audio", "au", "text", "visual"]
    for k, s in enumerate(slices):
        assert s.features.shape == (3, 9, DIMS[k])
        assert torch.equal(s.features, feats[:, k, :, : DIMS[k]])
        assert torch.equal(s.frame_mask, fmask[:, k])
        assert s.present.all()


def test_slice_presence_needs_flag_and_a_real_frame():
    feats, fmask, mmask = _stack()
    mmask[0, 1] = False  # flagged absent although frames exist -> absent, frame mask cleared
    fmask[1, 2] = False  # flagged present without a frame -> absent
    slices = slice_modalities(feats, fmask, mmask, DIMS)
    assert not slices[1].present[0] and not slices[1].frame_mask[0].any()
    assert not slices[2].present[1]
    assert slices[1].present[1:].all() and slices[2].present[[0, 2]].all()


def test_slice_errors_name_the_problem():
    feats, fmask, mmask = _stack()
    with pytest.raises(ValueError, match="exceeds the stack's max_dim"):
        slice_modalities(feats, fmask, mmask, (20, 16, 6, 12, 40))
    with pytest.raises(ValueError, match=r"video_features must be \[B, 5"):
        slice_modalities(feats[:, :4], fmask, mmask, DIMS)
    with pytest.raises(ValueError, match="feature_mask"):
        slice_modalities(feats, fmask[:, :, :3], mmask, DIMS)
    with pytest.raises(ValueError, match="audio_dim"):
        modality_dims({"audio_dim": 0})
    assert modality_dims({"video_dim": 7}) == (7, 1024, 35, 768, 1024)


# ----------------------------------------------------------------------------- attention
def test_attention_matches_manual_reference_and_zeroes_empty_rows():
    attn = MultiHeadAttention(16, 4, kv_dim=8).eval()
    x, kv = torch.randn(3, 5, 16), torch.randn(3, 7, 8)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2] = False
    out = attn(x, kv, mask)

    def ref(i: int) -> torch.Tensor:
        q = attn.q(x[i]).view(5, 4, 4).transpose(0, 1)
        k = attn.k(kv[i]).view(7, 4, 4).transpose(0, 1)
        v = attn.v(kv[i]).view(7, 4, 4).transpose(0, 1)
        s = (q @ k.transpose(-1, -2)) / 2.0
        s = s.masked_fill(~mask[i], float("-inf"))
        return attn.o((s.softmax(-1) @ v).transpose(0, 1).reshape(5, 16))

    torch.testing.assert_close(out[0], ref(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], ref(1), atol=1e-5, rtol=1e-5)
    assert torch.equal(out[2], torch.zeros_like(out[2]))


def test_causal_attention_ignores_the_future():
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 16)
    torch.testing.assert_close(attn(x, causal=True)[:, :4], attn(y, causal=True)[:, :4])


# ----------------------------------------------------------------------------- ModalityQFormer
def _qformer(in_dim: int = 12) -> ModalityQFormer:
    return ModalityQFormer(in_dim, hidden_dim=32, num_queries=6, num_layers=2, num_heads=4, dropout=0.1).eval()


def test_qformer_padded_frames_change_nothing():
    qf = _qformer()
    feats = torch.randn(3, 10, 12)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 3:] = False
    mask[1, 1] = False  # a hole in the middle too
    tokens, summary = qf(feats, mask)
    noisy = feats.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), 12) * 100
    tokens2, summary2 = qf(noisy, mask)
    assert tokens.shape == (3, 6, 32) and summary.shape == (3, 32)
    assert torch.equal(tokens, tokens2) and torch.equal(summary, summary2)
    # and a shorter batch (trailing padding cut off) gives the same result for the same clip
    tokens3, _ = qf(feats[:1, :6], mask[:1, :6])
    torch.testing.assert_close(tokens3, tokens[:1], atol=1e-5, rtol=1e-5)


def test_contrast_frames_match_a_frame_by_frame_reference():
    torch.manual_seed(0)
    feats = torch.randn(2, 6, 3)
    mask = torch.tensor([[True, True, False, True, True, False], [False, True, True, True, False, False]])
    out = contrast_frames(feats, mask)
    assert out.shape == (2, 6, 9)
    for b in range(2):
        real = [t for t in range(6) if mask[b, t]]
        mean = feats[b, real].mean(0)
        for t in range(6):
            if not mask[b, t]:
                assert torch.equal(out[b, t], torch.zeros(9))
                continue
            before = [r for r in real if r < t]
            delta = feats[b, t] - feats[b, before[-1]] if before else torch.zeros(3)
            torch.testing.assert_close(out[b, t], torch.cat([feats[b, t], feats[b, t] - mean, delta]))


def test_qformer_with_frame_contrast_ignores_padding_and_sees_a_level_shift():
    torch.manual_seed(0)
    qf = ModalityQFormer(12, 32, num_queries=6, num_layers=1, num_heads=4, dropout=0.0, frame_contrast=True).eval()
    feats = torch.randn(2, 8, 12)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    noisy = feats.clone()
    noisy[~mask] = 50.0
    assert torch.equal(qf(feats, mask)[1], qf(noisy, mask)[1])
    # a constant offset on every frame (a speaker's level) moves only the raw part of the input
    shifted = contrast_frames(feats + 3.0, mask)
    torch.testing.assert_close(shifted[..., 12:], contrast_frames(feats, mask)[..., 12:])


def test_qformer_absent_modality_is_zero_and_finite_with_gradients():
    qf = _qformer().train()
    feats = torch.randn(2, 5, 12, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    tokens, summary = qf(feats, mask, present=torch.tensor([True, True]))
    assert torch.equal(tokens[1], torch.zeros_like(tokens[1])) and torch.equal(summary[1], torch.zeros_like(summary[1]))
    (tokens.sum() + summary.pow(2).sum()).backward()
    assert torch.isfinite(feats.grad).all() and feats.grad[0].abs().sum() > 0
    assert torch.equal(feats.grad[1], torch.zeros_like(feats.grad[1]))
    assert all(torch.isfinite(p.grad).all() for p in qf.parameters() if p.grad is not None)
    # present=False overrides real frames
    tokens_off, _ = qf(feats.detach(), torch.ones(2, 5, dtype=torch.bool), present=torch.tensor([False, True]))
    assert torch.equal(tokens_off[0], torch.zeros_like(tokens_off[0]))


def test_qformer_rejects_wrong_feature_dim():
    with pytest.raises(ValueError, match=r"expected features \[B, T, 12\]"):
        _qformer()(torch.randn(1, 3, 11), torch.ones(1, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- SynergyExpert
def test_synergy_shapes_absent_rows_and_deterministic_negatives():
    syn = SynergyExpert(32, num_heads=4, dropout=0.0).eval()
    a, m = torch.randn(4, 6, 32), torch.randn(4, 6, 32)
    present = torch.tensor([True, True, False, True])
    torch.manual_seed(5)
    out = syn(a, m, present)
    torch.manual_seed(5)
    again = syn(a, m, present)
    assert out.tokens.shape == (4, 6, 32) and out.summary.shape == (4, 32) and out.score.shape == (4,)
    assert torch.equal(out.tokens[2], torch.zeros(6, 32)) and float(out.score[2].detach()) == 0.5
    assert ((out.score > 0) & (out.score < 1)).all()
    assert out.loss is not None and torch.equal(out.loss, again.loss)
    assert syn(a, m, torch.tensor([True, False, False, False])).loss is None  # no negative possible


def test_synergy_match_head_learns_true_pairs():
    """Motion tokens are a fixed function of audio tokens: after training, true pairs score above shuffled ones."""
    syn = SynergyExpert(16, num_heads=2, dropout=0.0)
    mix = torch.randn(16, 16) / 4.0
    opt = torch.optim.Adam(syn.parameters(), lr=3e-3)
    present = torch.ones(16, dtype=torch.bool)
    for _ in range(120):
        a = torch.randn(16, 4, 16)
        out = syn(a, a @ mix + 0.1 * torch.randn(16, 4, 16), present)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    syn.eval()
    a = torch.randn(32, 4, 16)
    m = a @ mix + 0.1 * torch.randn(32, 4, 16)
    with torch.no_grad():
        true_scores = syn(a, m, torch.ones(32, dtype=torch.bool), compute_loss=False).score
        false_scores = syn(a.roll(1, 0), m, torch.ones(32, dtype=torch.bool), compute_loss=False).score
    assert float(true_scores.mean()) > 0.8 and float(false_scores.mean()) < 0.2


# ----------------------------------------------------------------------------- EvidenceDecoder
def _decoder(vocab: int = 40, dropout: float = 0.0) -> EvidenceDecoder:
    return EvidenceDecoder(vocab, memory_dim=16, bos_token_id=1, eos_token_id=2, pad_token_id=0, num_experts=6,
                           embed_dim=32, num_layers=2, num_heads=4, max_len=12, dropout=dropout)


def test_decoder_loss_equals_per_row_reference():
    dec = _decoder().eval()
    memory, experts = torch.randn(3, 5, 16), torch.tensor([0, 3, 5])
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0], [11, 0, 0, 0]])
    mask = (ids != 0).long()
    ids_noisy = torch.where(mask.bool(), ids, torch.randint(3, 40, ids.shape))  # pad content must not matter
    loss = dec.loss(memory, experts, ids_noisy, mask)
    total, count = 0.0, 0
    for i in range(3):
        n = int(mask[i].sum())
        inp = torch.tensor([[1] + ids[i, :n].tolist()])
        tgt = torch.tensor(ids[i, :n].tolist() + [2])
        logits = dec.project(dec.hidden(memory[i : i + 1], experts[i : i + 1], inp))[0]
        total = total + F.cross_entropy(logits, tgt, reduction="sum")
        count += n + 1
    torch.testing.assert_close(loss, total / count, atol=1e-5, rtol=1e-5)


def test_decoder_learns_a_fixed_set_of_sentences():
    """Six sentences, one per (memory, expert) pair: same memory + different task token -> different sentence."""
    dec = _decoder(dropout=0.1)
    memories = torch.randn(3, 5, 16)
    rows = [(0, 0), (0, 4), (1, 0), (1, 2), (2, 5), (2, 1)]
    sentences = [[5, 6, 7], [8, 9, 10, 11, 12], [5, 13], [14, 15, 16, 17], [18, 19, 20, 21, 22, 23], [24]]
    length = max(map(len, sentences))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for r, s in enumerate(sentences):
        ids[r, : len(s)] = torch.tensor(s)
    mask = (ids != 0).long()
    memory = memories[[m for m, _ in rows]]
    experts = torch.tensor([e for _, e in rows])
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    for _ in range(150):
        loss = dec.loss(memory, experts, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
    out = dec.eval().generate(memory, experts, max_new_tokens=10)
    for r, s in enumerate(sentences):
        assert out[r, : len(s)].tolist() == s
        assert (out[r, len(s) :] == 0).all()  # EOS not returned, pad after it


def test_decoder_generate_caps_length_and_validates_ids():
    dec = _decoder().eval()
    out = dec.generate(torch.randn(2, 5, 16), torch.tensor([0, 1]), max_new_tokens=100)
    assert out.shape[0] == 2 and out.shape[1] <= 11 and out.dtype == torch.long
    assert dec.generate(torch.randn(0, 5, 16), torch.zeros(0, dtype=torch.long), 5).shape == (0, 0)
    with pytest.raises(ValueError, match="eos_token_id 99 is outside"):
        EvidenceDecoder(40, 16, 1, 99, 0)
    with pytest.raises(ValueError, match="exceeds evidence_decoder.max_len"):
        dec.hidden(torch.randn(1, 5, 16), torch.tensor([0]), torch.ones(1, 13, dtype=torch.long))


def test_decoder_score_is_the_mean_token_log_probability_and_chunking_changes_nothing(monkeypatch):
    import minigpt4.models.hero.evidence_decoder as oe

    dec = _decoder().eval()
    memory, experts = torch.randn(2, 5, 16), torch.tensor([1, 4])
    cands = torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]])
    mask = (cands != 0).long()
    scores = dec.score(memory, experts, cands, mask)
    assert scores.shape == (2, 3)
    for i in range(2):
        for k in range(3):
            n = int(mask[k].sum())
            inp = torch.tensor([[1] + cands[k, :n].tolist()])
            tgt = torch.tensor(cands[k, :n].tolist() + [2])  # EOS scored too
            logp = torch.log_softmax(dec.project(dec.hidden(memory[i : i + 1], experts[i : i + 1], inp))[0], -1)
            ref = logp[torch.arange(n + 1), tgt].mean()
            torch.testing.assert_close(scores[i, k], ref, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(oe, "SCORE_CHUNK_ELEMENTS", 40 * 3)  # three positions per chunk
    torch.testing.assert_close(dec.score(memory, experts, cands, mask), scores)
    assert dec.score(torch.randn(0, 5, 16), torch.zeros(0, dtype=torch.long), cands, mask).shape == (0, 3)
