"""HERO's observation experts: slicing the feature stack, modality Q-Formers and the synergy expert
(docs/ARCHITECTURE.md, "Model internals"); the shared evidence decoder is in evidence_decoder.py.

Masks are the contract here: a padded frame never changes an output (it is excluded by the
key-padding mask of every cross-attention and every layer before that is per-frame), and a
modality that is absent for a sample yields an all-zero expert (tokens and summary) that the
caller excludes downstream through `present`. Attention rows with no valid key at all are
handled explicitly (their output is set to zero) rather than left to the backend, since
softmax over an all-masked row is NaN in some kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minigpt4.common.modalities import DIM_KEYS, STACK_ORDER
from minigpt4.common.schema import model_config
from minigpt4.models.hero.hero_loss import random_derangement


# --------------------------------------------------------------------------- slicing
@dataclass
class ModalitySlice:
    """One modality cut out of the stack: features [B, T, dim], frame_mask [B, T] bool, present [B] bool.

    `present` is `modality_mask & any(frame_mask)`: a modality flagged present without a single
    real frame is treated as absent, and an absent modality's frame mask is all False.
    """

    name: str
    features: Tensor
    frame_mask: Tensor
    present: Tensor


def modality_dims(cfg_model: Any) -> tuple[int, ...]:
    """The configured feature dim of each modality in STACK_ORDER (`model.*_dim`)."""
    c = model_config(cfg_model)
    return tuple(int(getattr(c, DIM_KEYS[name])) for name in STACK_ORDER)


def slice_modalities(video_features: Tensor, feature_mask: Tensor, modality_mask: Tensor,
                     dims: Sequence[int]) -> list[ModalitySlice]:
    """Split `video_features [B, 5, T, max_dim]` into the five modalities, each un-padded to its dim.

    Modality k (STACK_ORDER) is stack index k; its first `dims[k]` features are kept (the
    rest is the dataset's zero padding up to max_dim). Views, not copies.
    """
    if video_features.dim() != 4 or video_features.shape[1] != len(STACK_ORDER):
        raise ValueError(f"video_features must be [B, {len(STACK_ORDER)}, T, max_dim], "
                         f"got {tuple(video_features.shape)}")
    b, n_mod, t, max_dim = video_features.shape
    if tuple(feature_mask.shape) != (b, n_mod, t):
        raise ValueError(f"feature_mask must be [B, 5, T] = {[b, n_mod, t]}, got {tuple(feature_mask.shape)}")
    if tuple(modality_mask.shape) != (b, n_mod):
        raise ValueError(f"modality_mask must be [B, 5] = {[b, n_mod]}, got {tuple(modality_mask.shape)}")
    if len(dims) != n_mod:
        raise ValueError(f"need one dim per modality ({n_mod}), got {len(dims)}")
    feature_mask = feature_mask.bool()
    modality_mask = modality_mask.bool()
    out = []
    for k, name in enumerate(STACK_ORDER):
        if dims[k] > max_dim:
            raise ValueError(f"model.{DIM_KEYS[name]} = {dims[k]} exceeds the stack's max_dim {max_dim}")
        present = modality_mask[:, k] & feature_mask[:, k].any(dim=-1)
        frame_mask = feature_mask[:, k] & present[:, None]
        out.append(ModalitySlice(name, video_features[:, k, :, : dims[k]], frame_mask, present))
    return out


# --------------------------------------------------------------------------- building blocks
def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed sinusoidal time encoding [length, dim]: any T, no max length, same for every clip."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))
    angles = pos * freq[None]
    enc = torch.zeros(length, dim, device=device, dtype=torch.float32)
    enc[:, 0 : 2 * half : 2] = torch.sin(angles)
    enc[:, 1 : 2 * half : 2] = torch.cos(angles)
    return enc.to(dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention on `F.scaled_dot_product_attention` with a boolean key-padding mask.

    x [B, N, dim] attends to kv [B, S, kv_dim] (self-attention when kv is None); key_mask
    [B, S] bool, True = attend. Rows whose mask is all False get output 0 (explicitly).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, kv_dim: Optional[int] = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads {num_heads}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.o = nn.Linear(dim, dim)
        self.dropout = dropout

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, kv: Optional[Tensor] = None, key_mask: Optional[Tensor] = None,
                causal: bool = False) -> Tensor:
        kv = x if kv is None else kv
        q, k, v = self._heads(self.q(x)), self._heads(self.k(kv)), self._heads(self.v(kv))
        drop = self.dropout if self.training else 0.0
        has_key = None
        if key_mask is not None:
            if causal:
                raise ValueError("causal attention takes no key mask here (pads follow the real tokens)")
            has_key = key_mask.any(dim=-1)  # [B]
            safe = key_mask | ~has_key[:, None]  # an empty row attends everywhere, then is zeroed
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :], dropout_p=drop)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=causal)
        b, _, n, _ = out.shape
        out = self.o(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        if has_key is not None:
            out = out * has_key[:, None, None].to(out.dtype)
        return out


class FeedForward(nn.Module):
    """Position-wise MLP: Linear -> GELU -> dropout -> Linear."""

    def __init__(self, dim: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        inner = max(1, int(dim * ratio))
        self.net = nn.Sequential(nn.Linear(dim, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class QFormerLayer(nn.Module):
    """Pre-norm: self-attention, cross-attention to a memory, then an FFN.

    The block of the expert Q-Formers (learned queries read the frames under their mask) and of the
    evidence decoder (`causal=True`: each token sees only those before it; all of the memory valid).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_ratio: float, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.drop(self.self_attn(self.norm_self(x), causal=self.causal))
        x = x + self.drop(self.cross_attn(self.norm_cross(x), memory, memory_mask))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class FrameEncoderLayer(nn.Module):
    """Pre-norm self-attention over a modality's frames (under their mask) + FFN.

    Queries that only cross-attend see each frame on its own; temporal cues (an oscillation, the
    direction of a ramp, a level relative to the clip's own baseline) need frames compared with
    each other first. x [B, T, H], frame_mask [B, T] bool -> [B, T, H]; padded frames are never
    read (their own rows are computed and later masked out as keys).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_ratio: float) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, frame_mask: Tensor) -> Tensor:
        h = self.norm_attn(x)
        x = x + self.drop(self.attn(h, h, frame_mask))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


def contrast_frames(features: Tensor, frame_mask: Tensor) -> Tensor:
    """[x_t, x_t - mean(x), x_t - x_prev] per frame: features [B, T, D], frame_mask [B, T] -> [B, T, 3D].

    Why: a cue can be a level relative to the clip's own baseline (a speaker's loudness, a scene's
    tint: what cepstral mean normalisation removes in speech) or a change between frames (a ramp's
    direction, an oscillation: the classic delta features); a query that reads each frame on its own
    sees neither. The mean is over the real frames; x_prev is the previous real frame (the first
    one's delta is 0); padded frames come out 0.
    """
    mask = frame_mask.to(features.dtype)[..., None]
    x = features * mask
    mean = x.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)
    # the previous real frame: carry the last real frame forward over masked ones
    idx = torch.arange(x.shape[1], device=x.device)[None, :].expand(x.shape[0], -1)
    last_real = torch.where(frame_mask.bool(), idx, torch.zeros_like(idx)).cummax(dim=1).values
    prev_idx = torch.cat([last_real[:, :1], last_real[:, :-1]], dim=1)
    prev = torch.gather(x, 1, prev_idx[..., None].expand_as(x))
    first = frame_mask.bool() & (frame_mask.bool().long().cumsum(1) == 1)
    prev = torch.where(first[..., None], x, prev)
    return torch.cat([x, (x - mean) * mask, (x - prev) * mask], dim=-1)


# --------------------------------------------------------------------------- modality expert
class ModalityQFormer(nn.Module):
    """One observation expert: learned queries read a modality's frames under its padding mask.

    `frame_layers` self-attention layers over the frames come first (0: the queries read the
    projected frames directly).
    features [B, T, in_dim], frame_mask [B, T] bool, present [B] bool ->
    tokens [B, num_queries, hidden_dim] and summary [B, hidden_dim] (mean of the tokens).
    Both are exactly zero for a sample whose modality is absent.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_queries: int = 32, num_layers: int = 2,
                 num_heads: int = 8, dropout: float = 0.1, ffn_ratio: float = 4.0,
                 temporal_position: bool = True, frame_layers: int = 0, frame_contrast: bool = False) -> None:
        super().__init__()
        if num_queries < 1 or num_layers < 1:
            raise ValueError(f"num_queries and num_qformer_layers must be >= 1, got {num_queries}, {num_layers}")
        if frame_layers < 0:
            raise ValueError(f"frame_encoder_layers must be >= 0, got {frame_layers}")
        self.in_dim = in_dim
        self.frame_contrast = frame_contrast
        self.input_proj = nn.Linear(in_dim * (3 if frame_contrast else 1), hidden_dim)
        self.input_norm = nn.LayerNorm(hidden_dim)
        self.temporal_position = temporal_position
        self.frame_layers = nn.ModuleList(
            FrameEncoderLayer(hidden_dim, num_heads, dropout, ffn_ratio) for _ in range(frame_layers))
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_dim) * 0.02)
        self.layers = nn.ModuleList(QFormerLayer(hidden_dim, num_heads, dropout, ffn_ratio) for _ in range(num_layers))
        self.output_norm = nn.LayerNorm(hidden_dim)

    def forward(self, features: Tensor, frame_mask: Tensor, present: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"expected features [B, T, {self.in_dim}], got {tuple(features.shape)}")
        frame_mask = frame_mask.bool()
        present = frame_mask.any(-1) if present is None else (present.bool() & frame_mask.any(-1))
        features = features.to(self.input_proj.weight.dtype)
        if self.frame_contrast:
            features = contrast_frames(features, frame_mask)
        memory = self.input_norm(self.input_proj(features))
        if self.temporal_position:
            memory = memory + sinusoidal_positions(memory.shape[1], memory.shape[2], memory.device, memory.dtype)
        device_type = memory.device.type
        if torch.is_autocast_enabled(device_type):
            # LayerNorm leaves float32 under autocast; cast the [B, T, H] memory once, not in every K/V projection
            memory = memory.to(torch.get_autocast_dtype(device_type))
        for layer in self.frame_layers:
            memory = layer(memory, frame_mask)
        x = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1).to(memory.dtype)
        for layer in self.layers:
            x = layer(x, memory, frame_mask)
        keep = present[:, None, None].to(x.dtype)
        tokens = self.output_norm(x) * keep
        return tokens, tokens.mean(dim=1)


# --------------------------------------------------------------------------- synergy expert
@dataclass
class SynergyOutput:
    """tokens [B, Q, H] and summary [B, H] (zero where absent), score [B] = sigmoid(match logit of the
    true pairing) (0.5 where absent), present [B], loss: match BCE or None (fewer than 2 pairs)."""

    tokens: Tensor
    summary: Tensor
    score: Tensor
    present: Tensor
    loss: Optional[Tensor]


class CrossBlock(nn.Module):
    """Pre-norm cross-attention + FFN: x [B, N, H] reads y [B, M, H] (all of y valid)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_ratio: float) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_y = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm_x(x), self.norm_y(y)))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class SynergyExpert(nn.Module):
    """The audio-visual synergy expert: audio and motion tokens cross-attend in both directions.

    The fused pair gives the synergy tokens and summary; a match head answers "is this audio
    from this clip?" (positives: true pairs, negatives: the audio of another clip, a random
    derangement among the clips that have both modalities, so no clip is paired with itself).
    """

    def __init__(self, hidden_dim: int, num_heads: int = 8, dropout: float = 0.1, ffn_ratio: float = 4.0) -> None:
        super().__init__()
        self.audio_reads_motion = CrossBlock(hidden_dim, num_heads, dropout, ffn_ratio)
        self.motion_reads_audio = CrossBlock(hidden_dim, num_heads, dropout, ffn_ratio)
        self.fuse = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim))
        self.norm = nn.LayerNorm(hidden_dim)
        self.match_head = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))

    def pair(self, audio_tokens: Tensor, motion_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Fused tokens [N, Q, H] and match logits [N] of audio/motion pairs [N, Q, H] each."""
        a = self.audio_reads_motion(audio_tokens, motion_tokens)
        m = self.motion_reads_audio(motion_tokens, audio_tokens)
        tokens = self.norm(self.fuse(torch.cat([a, m], dim=-1)))
        a_pool, m_pool = a.mean(1), m.mean(1)
        logit = self.match_head(torch.cat([tokens.mean(1), a_pool * m_pool], dim=-1)).squeeze(-1)
        return tokens, logit

    def forward(self, audio_tokens: Tensor, motion_tokens: Tensor, present: Tensor,
                compute_loss: bool = True) -> SynergyOutput:
        present = present.bool()
        tokens, logit = self.pair(audio_tokens, motion_tokens)
        keep = present[:, None, None].to(tokens.dtype)
        tokens = tokens * keep
        score = torch.where(present, torch.sigmoid(logit.float()), torch.full_like(logit, 0.5, dtype=torch.float32))
        loss = None
        idx = present.nonzero(as_tuple=True)[0]
        n = int(idx.numel())
        if compute_loss and n >= 2:
            _, neg_logit = self.pair(audio_tokens[idx[random_derangement(n, idx.device)]], motion_tokens[idx])
            logits = torch.cat([logit[idx], neg_logit]).float()
            labels = torch.cat([torch.ones(n, device=logits.device), torch.zeros(n, device=logits.device)])
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        return SynergyOutput(tokens, tokens.mean(1), score, present, loss)
