"""The shared evidence decoder: a small causal transformer that writes each expert's sentence
from its tokens, trained by teacher forcing; greedy generation, and scoring of candidate
sentences for closed-set decoding (evidence_bank.py). Its output layer scores only the tokens
it was taught (evidence_vocab.py) unless `output_vocab_size` is 0."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minigpt4.models.hero.evidence_vocab import EvidenceVocabulary
from minigpt4.models.hero.observation_experts import QFormerLayer

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
                 max_len: int = 64, dropout: float = 0.1, ffn_ratio: float = 4.0, num_conditions: int = 0,
                 output_vocab_size: int = 0) -> None:
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
        # the tokens it was taught, the only ones it scores (0: the full vocabulary)
        self.vocab = EvidenceVocabulary(vocab_size, output_vocab_size) if output_vocab_size > 0 else None

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

    def project(self, h: Tensor, ids: Optional[Tensor] = None) -> Tensor:
        """Tied output projection in float32: [..., embed_dim] -> [..., vocab], or [..., K] over the
        token ids `ids` [K] only (the compact vocabulary)."""
        if ids is None:
            return F.linear(h.float(), self.embed.weight.float(), self.output_bias.float())
        return F.linear(h.float(), self.embed.weight[ids].float(), self.output_bias[ids].float())

    def output_ids(self, targets: Optional[Tensor] = None) -> Optional[Tensor]:
        """The token ids [K] the output layer scores (sorted; with every id of `targets` added), or
        None for the full vocabulary."""
        if self.vocab is None:
            return None
        return self.vocab.active() if targets is None else self.vocab.with_targets(targets)

    @staticmethod
    def compact_index(ids: Optional[Tensor], tokens: Tensor) -> Tensor:
        """Token ids -> their positions in the sorted `ids` (identity when None)."""
        return tokens if ids is None else torch.searchsorted(ids, tokens)

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
        targets = labels[valid]
        if self.training and self.vocab is not None:
            self.vocab.observe(targets)  # the decoder learns to write these: record them
        h = self.hidden(memory, expert_index, inputs, condition)
        ids = self.output_ids(targets)
        logits = self.project(h[valid], ids)  # [M, V] or [M, K]
        return F.cross_entropy(logits, self.compact_index(ids, targets))

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
        ids = self.output_ids(targets)
        targets = self.compact_index(ids, targets)
        token = torch.empty(states.shape[0], device=h.device)
        width = self.vocab_size if ids is None else ids.numel()
        step = max(1, SCORE_CHUNK_ELEMENTS // width)  # bounds the [chunk, V] logits in memory
        for i in range(0, states.shape[0], step):
            logits = self.project(states[i: i + step], ids)
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
        live = torch.arange(n_rows, device=memory.device)  # rows still writing: only they are run
        ids = self.output_ids()
        out = []
        for _ in range(steps):
            if live.numel() == 0:
                break
            cond = None if condition is None else condition[live]
            nxt = self.project(self.hidden(memory[live], expert_index[live], seq[live], cond)[:, -1], ids).argmax(-1)
            if ids is not None:
                nxt = ids[nxt]
            token = torch.full((n_rows,), self.pad_token_id, dtype=torch.long, device=memory.device)
            token[live] = torch.where(nxt == self.eos_token_id, torch.full_like(nxt, self.pad_token_id), nxt)
            out.append(token)
            seq = torch.cat([seq, token[:, None]], dim=1)
            live = live[nxt != self.eos_token_id]
        if not out:
            return torch.full((n_rows, 0), self.pad_token_id, dtype=torch.long, device=memory.device)
        return torch.stack(out, dim=1)
