"""HERO's observation experts: slicing the feature stack, modality Q-Formers, the synergy expert and
the shared evidence decoder (docs/ARCHITECTURE.md, "Model internals").

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
                 temporal_position: bool = True, frame_layers: int = 0) -> None:
        super().__init__()
        if num_queries < 1 or num_layers < 1:
            raise ValueError(f"num_queries and num_qformer_layers must be >= 1, got {num_queries}, {num_layers}")
        if frame_layers < 0:
            raise ValueError(f"frame_encoder_layers must be >= 0, got {frame_layers}")
        self.in_dim = in_dim
        self.input_proj = nn.Linear(in_dim, hidden_dim)
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
        memory = self.input_norm(self.input_proj(features.to(self.input_proj.weight.dtype)))
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


# --------------------------------------------------------------------------- evidence decoder
SCORE_CHUNK_ELEMENTS = 1 << 25  # logits per chunk when scoring candidate sentences (128 MiB in float32)


class EvidenceDecoder(nn.Module):
    """A small transformer decoder shared by the six experts; writes one evidence sentence each.

    Token ids are the LLM tokenizer's (so the sentences decode with it), but the decoder has its
    own small embedding table (`embed_dim`, tied with the output projection) to stay light with a
    ~50k vocabulary. Conditioning: a learned task token per expert is prepended to the expert's
    tokens (projected to `embed_dim`) as the cross-attention memory, and added to the BOS input.
    With `num_conditions` > 0 a condition vector per row (the expert's own emotion read-out, a
    probability vector) becomes one more memory token: the decoder then has an explicit,
    already discriminative signal to write from, instead of falling back to the most frequent
    sentence when the expert tokens are hard to read (a collapse seen on a corpus whose
    evidence names the emotion).
    """

    def __init__(self, vocab_size: int, memory_dim: int, bos_token_id: int, eos_token_id: int, pad_token_id: int,
                 num_experts: int = 6, embed_dim: int = 256, num_layers: int = 2, num_heads: int = 4,
                 max_len: int = 64, dropout: float = 0.1, ffn_ratio: float = 4.0, num_conditions: int = 0) -> None:
        super().__init__()
        for name, tok in (("bos", bos_token_id), ("eos", eos_token_id), ("pad", pad_token_id)):
            if not 0 <= int(tok) < vocab_size:
                raise ValueError(f"{name}_token_id {tok} is outside the vocabulary [0, {vocab_size})")
        if max_len < 2:
            raise ValueError(f"evidence_decoder.max_len must be >= 2, got {max_len}")
        self.vocab_size, self.max_len = vocab_size, max_len
        self.bos_token_id, self.eos_token_id = int(bos_token_id), int(eos_token_id)
        self.pad_token_id = int(pad_token_id)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.positions = nn.Parameter(torch.randn(max_len, embed_dim) * 0.02)
        self.task_tokens = nn.Parameter(torch.randn(num_experts, embed_dim) * 0.02)
        self.memory_norm = nn.LayerNorm(memory_dim)
        self.memory_proj = nn.Linear(memory_dim, embed_dim)
        self.layers = nn.ModuleList(
            QFormerLayer(embed_dim, num_heads, dropout, ffn_ratio, causal=True) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(embed_dim)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.num_conditions = int(num_conditions)
        self.condition_proj = nn.Linear(self.num_conditions, embed_dim) if self.num_conditions > 0 else None

    def _memory(self, memory: Tensor, expert_index: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        """[N, Q, memory_dim] + expert index [N] (+ condition [N, C]) -> [N, 1 (+1) + Q, embed_dim]."""
        task = self.task_tokens[expert_index]
        mem = self.memory_proj(self.memory_norm(memory))
        parts = [task[:, None].to(mem.dtype)]
        if self.condition_proj is not None:
            if condition is None or condition.shape != (memory.shape[0], self.num_conditions):
                got = None if condition is None else tuple(condition.shape)
                raise ValueError(f"this evidence decoder is conditioned: expected a condition "
                                 f"[{memory.shape[0]}, {self.num_conditions}], got {got}")
            parts.append(self.condition_proj(condition.to(mem.dtype))[:, None])
        return torch.cat(parts + [mem], dim=1)

    def hidden(self, memory: Tensor, expert_index: Tensor, inputs: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        """Decoder states [N, S, embed_dim] for input ids [N, S] (inputs[:, 0] is the BOS slot)."""
        s = inputs.shape[1]
        if s > self.max_len:
            raise ValueError(f"evidence sequence of {s} tokens exceeds evidence_decoder.max_len {self.max_len}")
        mem = self._memory(memory, expert_index, condition)
        x = self.embed(inputs) + self.positions[:s]
        x = torch.cat([x[:, :1] + self.task_tokens[expert_index][:, None], x[:, 1:]], dim=1).to(mem.dtype)
        for layer in self.layers:
            x = layer(x, mem)
        return self.final_norm(x)

    def project(self, h: Tensor) -> Tensor:
        """Tied output projection in float32: [..., embed_dim] -> [..., vocab]."""
        return F.linear(h.float(), self.embed.weight.float(), self.output_bias.float())

    def _teacher_forcing(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sentences [N, L] (left-aligned, no BOS/EOS) -> inputs [N, L + 1] = [BOS, t1..tn, ...],
        labels [N, L + 1] = [t1..tn, EOS, ...] and valid [N, L + 1] (False past each EOS)."""
        n_rows, length = input_ids.shape
        lengths = attention_mask.long().sum(-1)  # [N]
        bos = torch.full((n_rows, 1), self.bos_token_id, dtype=torch.long, device=input_ids.device)
        inputs = torch.cat([bos, input_ids.long()], dim=1)
        pos = torch.arange(length + 1, device=input_ids.device)[None]
        labels = torch.cat([input_ids.long(), torch.full_like(bos, self.pad_token_id)], dim=1)
        labels = torch.where(pos == lengths[:, None], torch.full_like(labels, self.eos_token_id), labels)
        return inputs, labels, pos <= lengths[:, None]

    def loss(self, memory: Tensor, expert_index: Tensor, input_ids: Tensor, attention_mask: Tensor,
             condition: Optional[Tensor] = None) -> Tensor:
        """Teacher-forced mean token cross-entropy of sentences [N, L] (left-aligned, no BOS/EOS) + EOS.

        Input [BOS, t1..tn], labels [t1..tn, EOS]; positions past EOS are ignored.
        """
        inputs, labels, valid = self._teacher_forcing(input_ids, attention_mask)
        h = self.hidden(memory, expert_index, inputs, condition)
        logits = self.project(h[valid])  # [M, V]
        return F.cross_entropy(logits, labels[valid])

    @torch.no_grad()
    def score(self, memory: Tensor, expert_index: Tensor, candidate_ids: Tensor, candidate_mask: Tensor,
              condition: Optional[Tensor] = None) -> Tensor:
        """Mean token log-probability (EOS included) of every candidate sentence for every row -> [N, K].

        memory [N, Q, memory_dim], expert_index [N], candidate_ids / candidate_mask [K, L] (as
        `loss` takes them), condition [N, C] or None. Runs N x K teacher-forced sequences at once.
        """
        n_rows, k = memory.shape[0], candidate_ids.shape[0]
        if n_rows == 0 or k == 0:
            return torch.zeros((n_rows, k), device=memory.device)
        inputs, labels, valid = self._teacher_forcing(candidate_ids, candidate_mask)
        rep = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731  row-major: row r's K candidates together
        h = self.hidden(rep(memory), rep(expert_index), inputs.repeat(n_rows, 1),
                        None if condition is None else rep(condition))
        valid = valid.repeat(n_rows, 1)
        states, targets = h[valid], labels.repeat(n_rows, 1)[valid]  # [M, D], [M]: real positions only
        token = torch.empty(states.shape[0], device=h.device)
        step = max(1, SCORE_CHUNK_ELEMENTS // self.vocab_size)  # bounds the [chunk, V] logits in memory
        for i in range(0, states.shape[0], step):
            logits = self.project(states[i: i + step])
            token[i: i + step] = logits.gather(-1, targets[i: i + step, None])[:, 0] - logits.logsumexp(-1)
        per_row = torch.zeros(valid.shape, device=h.device).masked_scatter(valid, token)
        return (per_row.sum(-1) / valid.sum(-1)).view(n_rows, k)

    @torch.no_grad()
    def generate(self, memory: Tensor, expert_index: Tensor, max_new_tokens: int,
                 condition: Optional[Tensor] = None) -> Tensor:
        """Greedy decoding until EOS or `max_new_tokens` (capped at max_len - 1) -> [N, L] ids.

        EOS itself is not returned; every position after a row's end is `pad_token_id`.
        """
        n_rows = memory.shape[0]
        steps = max(0, min(int(max_new_tokens), self.max_len - 1))
        seq = torch.full((n_rows, 1), self.bos_token_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(n_rows, dtype=torch.bool, device=memory.device)
        out = []
        for _ in range(steps):
            if n_rows == 0 or bool(done.all()):
                break
            nxt = self.project(self.hidden(memory, expert_index, seq, condition)[:, -1]).argmax(-1)
            done = done | (nxt == self.eos_token_id)
            out.append(torch.where(done, torch.full_like(nxt, self.pad_token_id), nxt))
            seq = torch.cat([seq, nxt[:, None]], dim=1)
        if not out:
            return torch.full((n_rows, 0), self.pad_token_id, dtype=torch.long, device=memory.device)
        return torch.stack(out, dim=1)
