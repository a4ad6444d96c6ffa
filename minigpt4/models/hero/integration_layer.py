"""Audio-guided panoramic attention: the six experts' tokens -> the LLM's integrated context.

Strategies (`model.integration_strategy`; docs/ARCHITECTURE.md, "Model internals"):
- `audio` (default): the anchor query is built from the audio summary; clips without audio
  fall back, one by one, to the dynamic anchor.
- `dynamic`: a small gate scores every present expert summary (absent ones at -inf before the
  softmax) and the anchor is the gate-weighted mix of the summaries.
- `concat`: the ablation baseline with no anchor and no attention: the experts' tokens are
  concatenated feature-wise (absent experts zeroed), projected, and resampled to the output
  length by a learned linear map over the token axis. Its modality weights are uniform over
  the present experts (there is no attention to read them from).

For `audio`/`dynamic` the anchor plus `num_output_queries` learned queries (each also shifted
by a projection of the anchor) cross-attend over the tokens of all present experts (an
expert-type embedding marks whose token is whose; absent experts are masked out), then
self-attend and pass an FFN. The modality weight of an expert is the attention mass on its
tokens, averaged over heads and queries and renormalised over present experts: exactly 0 for
an absent one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minigpt4.common.modalities import AUDIO
from minigpt4.models.hero.observation_experts import FeedForward, MultiHeadAttention

STRATEGIES = ("audio", "dynamic", "concat")


@dataclass
class IntegrationOutput:
    """context [B, num_output_queries, out_dim]; modality_weights [B, E] (0 for absent experts);
    pooled [B, hidden] (mean of the integrated queries before the output projection)."""

    context: Tensor
    modality_weights: Tensor
    pooled: Tensor


def normalise_over_present(weights: Tensor, present: Tensor) -> Tensor:
    """[B, E] non-negative weights -> sum 1 over present entries, exactly 0 elsewhere (all 0 if none present)."""
    w = weights.float().masked_fill(~present, 0.0)
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(1e-12), torch.zeros_like(w))


class AudioGuidedIntegration(nn.Module):
    """Fuse expert tokens [B, E, Q, H] (present [B, E]) into the context [B, num_output_queries, out_dim]."""

    def __init__(self, hidden_dim: int, out_dim: int, num_experts: int = 6, num_tokens: int = 32,
                 num_output_queries: int = 64, num_heads: int = 8, dropout: float = 0.1,
                 strategy: str = "audio", ffn_ratio: float = 4.0, anchor_index: int = AUDIO) -> None:
        super().__init__()
        strategy = str(strategy).lower()
        if strategy not in STRATEGIES:
            raise ValueError(f"model.integration_strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.strategy, self.num_experts, self.num_heads = strategy, num_experts, num_heads
        self.num_tokens, self.anchor_index = num_tokens, anchor_index
        self.out_proj = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, out_dim))
        if strategy == "concat":
            self.concat_proj = nn.Linear(num_experts * hidden_dim, hidden_dim)
            self.resample = nn.Linear(num_tokens, num_output_queries)
            self.concat_ffn = FeedForward(hidden_dim, ffn_ratio, dropout)
            self.concat_norm = nn.LayerNorm(hidden_dim)
            return
        self.gate = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim // 2), nn.GELU(),
                                  nn.Linear(hidden_dim // 2, 1))
        if strategy == "audio":
            self.audio_anchor = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                              nn.Linear(hidden_dim, hidden_dim))
        self.anchor_to_queries = nn.Linear(hidden_dim, hidden_dim)
        self.queries = nn.Parameter(torch.randn(num_output_queries, hidden_dim) * 0.02)
        self.expert_type = nn.Parameter(torch.randn(num_experts, hidden_dim) * 0.02)
        self.norm_q = nn.LayerNorm(hidden_dim)
        self.norm_kv = nn.LayerNorm(hidden_dim)
        self.q = nn.Linear(hidden_dim, hidden_dim)
        self.k = nn.Linear(hidden_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, hidden_dim)
        self.o = nn.Linear(hidden_dim, hidden_dim)
        self.norm_self = nn.LayerNorm(hidden_dim)
        self.self_attn = MultiHeadAttention(hidden_dim, num_heads, dropout)
        self.norm_ffn = nn.LayerNorm(hidden_dim)
        self.ffn = FeedForward(hidden_dim, ffn_ratio, dropout)
        self.attn_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)

    # ------------------------------------------------------------------ anchors
    def dynamic_anchor(self, summaries: Tensor, present: Tensor) -> Tensor:
        """Gate-weighted mix of present summaries [B, E, H] -> [B, H] (zeros when nothing is present)."""
        scores = self.gate(summaries).squeeze(-1).float().masked_fill(~present, float("-inf"))
        any_present = present.any(-1, keepdim=True)
        scores = torch.where(any_present, scores, torch.zeros_like(scores))  # avoid softmax of all -inf
        gate = torch.softmax(scores, dim=-1) * any_present
        return (gate.unsqueeze(-1).to(summaries.dtype) * summaries).sum(1)

    def anchor(self, summaries: Tensor, present: Tensor) -> Tensor:
        """The anchor query [B, H]: from audio where present (strategy audio), else the dynamic anchor."""
        dyn = self.dynamic_anchor(summaries, present)
        if self.strategy == "dynamic":
            return dyn
        audio = self.audio_anchor(summaries[:, self.anchor_index])
        return torch.where(present[:, self.anchor_index, None], audio.to(dyn.dtype), dyn)

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: Tensor, summaries: Tensor, present: Tensor) -> IntegrationOutput:
        b, e, q_tok, h = tokens.shape
        if e != self.num_experts or q_tok != self.num_tokens:
            raise ValueError(f"expected expert tokens [B, {self.num_experts}, {self.num_tokens}, H], "
                             f"got {tuple(tokens.shape)}")
        present = present.bool()
        if self.strategy == "concat":
            return self._concat(tokens, present)
        anchor = self.anchor(summaries, present)  # [B, H]
        queries = self.queries.unsqueeze(0).to(anchor.dtype) + self.anchor_to_queries(anchor)[:, None]
        x = torch.cat([anchor[:, None], queries], dim=1)  # [B, 1 + N, H]
        keys = (tokens + self.expert_type[None, :, None].to(tokens.dtype)).reshape(b, e * q_tok, h)
        key_mask = present[:, :, None].expand(b, e, q_tok).reshape(b, e * q_tok)
        attended, probs = self._cross(self.norm_q(x), self.norm_kv(keys), key_mask)
        x = x + self.drop(attended)
        x = x + self.drop(self.self_attn(self.norm_self(x)))
        x = x + self.drop(self.ffn(self.norm_ffn(x)))
        out = x[:, 1:]  # the anchor informed the queries; the output is the learned queries
        mass = probs.float().mean(dim=(1, 2)).reshape(b, e, q_tok).sum(-1)  # [B, E]
        weights = normalise_over_present(mass, present)
        return IntegrationOutput(self.out_proj(out), weights, out.mean(1))

    def _cross(self, x: Tensor, kv: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Explicit multi-head cross-attention that also returns the probabilities [B, heads, N, S]."""
        b, n, h = x.shape
        s = kv.shape[1]
        hd = h // self.num_heads
        q = self.q(x).view(b, n, self.num_heads, hd).transpose(1, 2)
        k = self.k(kv).view(b, s, self.num_heads, hd).transpose(1, 2)
        v = self.v(kv).view(b, s, self.num_heads, hd).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).float() / hd ** 0.5
        has_key = key_mask.any(-1)
        mask = key_mask[:, None, None, :]
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = torch.where(has_key[:, None, None, None], scores, torch.zeros_like(scores))
        probs = torch.softmax(scores, dim=-1) * has_key[:, None, None, None]
        out = (self.attn_drop(probs).to(v.dtype) @ v).transpose(1, 2).reshape(b, n, h)
        return self.o(out), probs

    def _concat(self, tokens: Tensor, present: Tensor) -> IntegrationOutput:
        b, e, q_tok, h = tokens.shape
        masked = tokens * present[:, :, None, None].to(tokens.dtype)
        x = self.concat_proj(masked.permute(0, 2, 1, 3).reshape(b, q_tok, e * h))  # [B, Q, H]
        x = self.resample(x.transpose(1, 2)).transpose(1, 2)  # [B, N, H]
        x = x + self.concat_ffn(self.concat_norm(x))
        weights = normalise_over_present(torch.ones(b, e, device=tokens.device), present)
        return IntegrationOutput(self.out_proj(x), weights, x.mean(1))
