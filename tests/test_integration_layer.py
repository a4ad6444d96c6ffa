"""Audio-guided panoramic attention (integration_layer.py)."""
from __future__ import annotations

import pytest
import torch

from minigpt4.models.hero.integration_layer import STRATEGIES, AudioGuidedIntegration, normalise_over_present

B, E, Q, H, N_OUT, OUT = 4, 6, 5, 32, 7, 24
AUDIO = 1


pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(strategy: str) -> AudioGuidedIntegration:
    return AudioGuidedIntegration(H, OUT, num_experts=E, num_tokens=Q, num_output_queries=N_OUT, num_heads=4,
                                  dropout=0.1, strategy=strategy).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    present = torch.ones(B, E, dtype=torch.bool)
    present[1, AUDIO] = False  # no audio: falls back to the dynamic anchor
    present[2, [0, 3, 5]] = False
    present[3] = False  # nothing at all
    tokens = torch.randn(B, E, Q, H) * present[:, :, None, None]
    return tokens, tokens.mean(2), present


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shapes_and_weights_for_every_strategy(strategy):
    layer = _layer(strategy)
    tokens, summaries, present = _inputs()
    out = layer(tokens, summaries, present)
    assert out.context.shape == (B, N_OUT, OUT) and out.pooled.shape == (B, H)
    assert out.modality_weights.shape == (B, E)
    assert torch.isfinite(out.context).all() and torch.isfinite(out.modality_weights).all()
    w = out.modality_weights
    assert torch.equal(w[~present], torch.zeros_like(w[~present]))  # absent experts: exactly 0
    torch.testing.assert_close(w[:3].sum(-1), torch.ones(3))
    assert float(w[3].sum().detach()) == 0.0  # no expert present, no weight
    assert (w[present] > 0).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_absent_experts_tokens_change_nothing(strategy):
    layer = _layer(strategy)
    tokens, summaries, present = _inputs()
    out = layer(tokens, summaries, present)
    noisy_tokens = torch.where(present[:, :, None, None], tokens, torch.randn_like(tokens) * 50)
    noisy_summaries = torch.where(present[:, :, None], summaries, torch.randn_like(summaries) * 50)
    noisy = layer(noisy_tokens, noisy_summaries, present)
    torch.testing.assert_close(noisy.context, out.context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(noisy.modality_weights, out.modality_weights)


def test_audio_anchor_and_per_sample_dynamic_fallback():
    layer = _layer("audio")
    tokens, summaries, present = _inputs()
    anchor = layer.anchor(summaries, present)
    dynamic = layer.dynamic_anchor(summaries, present)
    from_audio = layer.audio_anchor(summaries[:, AUDIO])
    torch.testing.assert_close(anchor[0], from_audio[0])
    torch.testing.assert_close(anchor[2], from_audio[2])
    torch.testing.assert_close(anchor[1], dynamic[1])  # no audio in clip 1
    assert torch.equal(dynamic[3], torch.zeros(H))  # nothing present: zero anchor


def test_dynamic_anchor_is_a_gate_softmax_over_present_summaries():
    layer = _layer("dynamic")
    tokens, summaries, present = _inputs()
    anchor = layer.anchor(summaries, present)
    for b in range(3):
        idx = present[b].nonzero().squeeze(-1)
        gate = torch.softmax(layer.gate(summaries[b, idx]).squeeze(-1), dim=0)
        torch.testing.assert_close(anchor[b], (gate[:, None] * summaries[b, idx]).sum(0))


def test_modality_weights_are_the_attention_mass_per_expert():
    """Reference: recompute the cross-attention probabilities by hand, average over heads and queries."""
    layer = _layer("audio")
    tokens, summaries, present = _inputs()
    out = layer(tokens, summaries, present)
    anchor = layer.anchor(summaries, present)
    queries = layer.queries[None] + layer.anchor_to_queries(anchor)[:, None]
    x = layer.norm_q(torch.cat([anchor[:, None], queries], dim=1))
    keys = layer.norm_kv((tokens + layer.expert_type[None, :, None]).reshape(B, E * Q, H))
    heads, hd = 4, H // 4
    for b in range(3):
        q = layer.q(x[b]).view(-1, heads, hd).transpose(0, 1)
        k = layer.k(keys[b]).view(-1, heads, hd).transpose(0, 1)
        scores = (q @ k.transpose(-1, -2)) / hd**0.5
        valid = present[b].repeat_interleave(Q)
        probs = scores.masked_fill(~valid, float("-inf")).softmax(-1)
        mass = probs.mean(dim=(0, 1)).view(E, Q).sum(-1)
        torch.testing.assert_close(out.modality_weights[b], mass / mass.sum(), atol=1e-5, rtol=1e-5)


def test_concat_weights_are_uniform_and_gradients_flow():
    layer = _layer("concat").train()
    tokens, summaries, present = _inputs()
    tokens.requires_grad_(True)
    out = layer(tokens, summaries, present)
    torch.testing.assert_close(out.modality_weights[2], torch.tensor([0, 1, 1, 0, 1, 0]) / 3.0)
    out.context.sum().backward()
    assert tokens.grad[present].abs().sum() > 0
    assert torch.equal(tokens.grad[~present], torch.zeros_like(tokens.grad[~present]))


def test_normalise_over_present_and_errors():
    w = normalise_over_present(torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),
                               torch.tensor([[True, False, True], [True, True, False]]))
    torch.testing.assert_close(w, torch.tensor([[2 / 3, 0.0, 1 / 3], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="integration_strategy must be one of"):
        AudioGuidedIntegration(H, OUT, strategy="mean")
    with pytest.raises(ValueError, match="expected expert tokens"):
        _layer("audio")(torch.randn(2, 5, Q, H), torch.randn(2, 5, H), torch.ones(2, 5, dtype=torch.bool))
