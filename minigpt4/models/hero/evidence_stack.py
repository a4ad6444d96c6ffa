"""The evidence half of HERO: feature stack -> six observation experts -> integrated context.

`HEROEvidenceStack` is everything of HEROModel except the LLM (docs/ARCHITECTURE.md, "Model
internals"): it slices the batch's `video_features [B, 5, T, max_dim]`, runs the five
`ModalityQFormer`s and the `SynergyExpert`, integrates their tokens under audio guidance into
the context the LLM reads, and computes the auxiliary objectives, all unweighted in `losses`
and lambda-weighted in `loss_aux`:

- `loss_stmil_cov` the within-emotion cross-covariance (RV) of the audio summary and what is said
                  (`model.stmil.objective: covariance`, the default), weighted by lambda_stmil;
- `loss_stmil`    vCLUB bound of what the audio summary still carries of what is said, given the
                  emotion (`stmil` module docstring; q-network frozen): a `readouts` entry (logged,
                  not trained) under the covariance objective, the weighted term under `vclub`;
- `loss_sccl`     symmetric InfoNCE, expert summary <-> its golden evidence sentence embedding
                  (visual <-> text summaries of the same clip when the batch has no golden evidence);
- `loss_synergy`  BCE of the "is this audio from this clip?" match head;
- `loss_evidence` teacher-forced cross-entropy of the shared evidence decoder;
- `loss_cls`       cross-entropy of the classification head on the pooled integrated context:
                  on by default, so the features must carry the emotion whatever the
                  annotations say (HEROModel also writes its reading into the brief);
- `loss_kl`       the optional robustness term (KL from the full view to a modality-dropped view).

A term is present in `losses` only when it is switched on (its lambda > 0) *and* the batch can
form it (e.g. two clips with both audio and text for STMIL). The vCLUB q-network's own NLL is
`estimator_loss`; its parameters (`estimator_parameters()`) are trained only by it.

Model-config keys and their defaults: `ModelConfig` in minigpt4/common/schema.py.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minigpt4.common.modalities import AUDIO, EXPERT_ORDER, MOTION, STACK_ORDER, SYNERGY, TEXT, VISUAL
from minigpt4.common.schema import model_config
from minigpt4.models.hero.content_eraser import ContentEraser
from minigpt4.models.hero.decision_fusion import class_decision
from minigpt4.models.hero.evidence_bank import EvidenceBank
from minigpt4.models.hero.evidence_decoder import EvidenceDecoder
from minigpt4.models.hero.hero_loss import distillation_kl, expert_readout_loss, info_nce
from minigpt4.models.hero.integration_layer import AudioGuidedIntegration
from minigpt4.models.hero.evidence_readout import EvidenceReadout
from minigpt4.models.hero.observation_experts import ModalityQFormer, SynergyExpert, modality_dims, slice_modalities
from minigpt4.models.hero.refit_readout import RefitReadout
from minigpt4.models.hero.stmil import STMILObjective, pooled_content

NUM_EXPERTS = len(EXPERT_ORDER)
MIN_WARMUP_PAIRS = 8  # fewer (audio, text, label) pairs in the warm-up batches: no STMIL warm-up


@dataclass
class EvidenceTargets:
    """Golden evidence sentences per expert (EXPERT_ORDER), built by HEROModel with the LLM tokenizer.

    input_ids [B, 6, L] long (left-aligned, pad id beyond each sentence, no BOS/EOS),
    attention_mask [B, 6, L] (1 = real token), present [B, 6] bool (golden sentence exists),
    sentence_embeds [B, 6, D_llm] float (frozen: mean of the LLM's input embeddings over the
    sentence tokens).
    """

    input_ids: Tensor
    attention_mask: Tensor
    present: Tensor
    sentence_embeds: Tensor


@dataclass
class EvidenceOutput:
    """What the evidence stack hands to the reasoner (shapes for a batch of B clips)."""

    context: Tensor  # [B, num_output_queries, llm_dim] (model.context_dim; null: the LLM's hidden size)
    modality_weights: Tensor  # [B, 6] float32, sums to 1 over present experts, exactly 0 for absent ones
    expert_present: Tensor  # [B, 6] bool
    summaries: Tensor  # [B, 6, H] (zeros for absent experts)
    synergy_score: Tensor  # [B] float32 in [0, 1]; 0.5 where the synergy expert is absent
    expert_tokens: Tensor  # [B, 6, Q, H] (zeros for absent experts); the evidence decoder's input
    losses: dict[str, Tensor] = field(default_factory=dict)  # unweighted terms, keys loss_*
    readouts: dict[str, Tensor] = field(default_factory=dict)  # logged beside them, never in the loss
    loss_aux: Optional[Tensor] = None  # scalar, sum of lambda_* x term (0 when no term is active)
    estimator_loss: Optional[Tensor] = None  # scalar vCLUB q-network NLL (detached inputs) or None
    cls_logits: Optional[Tensor] = None  # [B, num_classes] the class decision (`decision_fusion`) when the head is on
    head_logits: Optional[Tensor] = None  # [B, num_classes] the head on the context alone (what loss_cls trains)
    expert_logits: Optional[Tensor] = None  # [B, 6, num_classes] per-expert read-outs (lambda_expert_cls > 0)
    content: Optional[Tensor] = None  # [B, text_dim] pooled text features (conditional STMIL's content side)


class HEROEvidenceStack(nn.Module):
    """Slicing, five ModalityQFormers, SynergyExpert, EvidenceDecoder, integration, STMIL/SCCL/robustness."""

    def __init__(self, cfg_model: Any, llm_dim: int, vocab_size: int, bos_token_id: int,
                 eos_token_id: int, pad_token_id: int, embed_dim: Optional[int] = None) -> None:
        super().__init__()
        c = model_config(cfg_model)
        self.dims = modality_dims(c)
        self.hidden_dim = h = c.hidden_dim
        self.num_queries = c.num_queries
        num_layers, num_heads, dropout, ffn_ratio = c.num_qformer_layers, c.num_heads, c.dropout, c.ffn_ratio
        self.include_synergy = c.include_synergy
        self.lambdas = {
            "stmil": c.lambda_stmil,
            "stmil_cov": c.lambda_stmil,  # the same weight, whichever STMIL objective is trained
            "sccl": c.lambda_sccl,
            "synergy": c.lambda_synergy if self.include_synergy else 0.0,
            "evidence": c.lambda_evidence,
            "cls": c.lambda_cls,
            "kl": c.lambda_kl,
            "expert_cls": c.lambda_expert_cls,
        }
        self.use_cls_head = (self.lambdas["cls"] > 0 or self.lambdas["kl"] > 0) if c.use_cls_head is None \
            else c.use_cls_head
        for name in ("cls", "kl"):
            if self.lambdas[name] > 0 and not self.use_cls_head:
                raise ValueError(f"model.lambda_{name} > 0 needs the classification head (model.use_cls_head: true)")
        self.decision = c.decision
        self.readout = RefitReadout(NUM_EXPERTS, c.hidden_dim, c.num_classes or len(c.label_names),
                                    c.decision_refit_c) if c.decision == "refit" else None
        self.kl_drop_prob = c.kl_drop_prob
        self.kl_temperature = c.kl_temperature
        self.sccl_temperature = c.sccl_temperature
        temporal, frame_layers = c.temporal_position, c.frame_encoder_layers

        self.experts = nn.ModuleList(
            ModalityQFormer(dim, h, self.num_queries, num_layers, num_heads, dropout, ffn_ratio, temporal, frame_layers,
                            name in c.contrast_modalities())
            for name, dim in zip(STACK_ORDER, self.dims)
        )
        self.synergy = SynergyExpert(h, num_heads, dropout, ffn_ratio) if self.include_synergy else None
        self.integration = AudioGuidedIntegration(
            h, int(llm_dim), NUM_EXPERTS, self.num_queries, c.num_output_queries, num_heads, dropout,
            c.integration_strategy, ffn_ratio,
        )
        dec = c.evidence_decoder
        self.num_classes = c.num_classes or len(c.label_names)
        # the decoder writes from the expert's own read-out too, when there is one
        if dec.condition_on_readout and self.lambdas["expert_cls"] <= 0:
            raise ValueError("model.evidence_decoder.condition_on_readout needs the expert read-outs "
                             "(model.lambda_expert_cls > 0)")
        self.decoder = EvidenceDecoder(
            int(vocab_size), h, bos_token_id, eos_token_id, pad_token_id, NUM_EXPERTS,
            embed_dim=dec.embed_dim, num_layers=dec.num_layers, num_heads=dec.num_heads, max_len=dec.max_len,
            dropout=dropout if dec.dropout is None else dec.dropout, ffn_ratio=ffn_ratio,
            num_conditions=self.num_classes if dec.condition_on_readout else 0,
            output_vocab_size=dec.output_vocab_size,
        )
        self.pad_token_id = int(pad_token_id)
        self.decoding = dec.decoding
        self.evidence_bank = EvidenceBank(NUM_EXPERTS, dec.bank_size, c.evidence_max_len, pad_token_id)
        self.evidence_readout = EvidenceReadout(NUM_EXPERTS, h, dec.bank_size, dec.readout_c)
        self.stmil = None
        if self.lambdas["stmil"] > 0:
            self.stmil = STMILObjective(h, self.dims[TEXT], self.num_classes, c.stmil)
        self.content_eraser = ContentEraser(h, self.dims[TEXT], self.num_classes, c.stmil.erase_min_correlation,
                                            c.stmil.erase_null_permutations) \
            if c.stmil.erase else None
        if self.lambdas["sccl"] > 0:
            self.sccl_summary_proj = nn.Linear(h, c.sccl_dim)
            self.sccl_text_proj = nn.Linear(int(embed_dim or llm_dim), c.sccl_dim)  # the LLM's token embeddings
        if self.use_cls_head:
            self.cls_head = nn.Sequential(nn.LayerNorm(int(llm_dim)), nn.Linear(int(llm_dim), self.num_classes))
        if self.lambdas["expert_cls"] > 0:
            # one linear read-out per expert summary: every expert must find the emotion in its own modality
            self.expert_cls_heads = nn.ModuleList(nn.Linear(h, self.num_classes) for _ in range(NUM_EXPERTS))

    # ------------------------------------------------------------------ public API
    def estimator_parameters(self) -> list[nn.Parameter]:
        """The vCLUB q-network's parameters (own optimiser; only `estimator_loss` reaches them)."""
        return list(self.stmil.estimator.parameters()) if self.stmil is not None else []

    def refit_statistics(self, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """The closed-form parts from one pass: the content eraser first (the read-outs read erased summaries)."""
        parts = [p for p in (self.content_eraser, self.readout, self.evidence_readout) if p is not None]
        batches = list(batches)
        return {key: value for part in parts for key, value in part.refit(self, batches).items()}

    @torch.no_grad()
    def warm_up_stmil(self, batches: Iterable[Mapping[str, Any]], lr: float) -> Optional[dict[str, float]]:
        """Fit the STMIL q-network on the initial representations of up to `warmup_batches`
        batches (experts in eval mode, no gradient), before training; None when there is no
        STMIL or no warm-up; {"pairs": n, "fitted": 0} with fewer than MIN_WARMUP_PAIRS pairs."""
        if self.stmil is None or self.stmil.warmup_steps == 0:
            return None
        xs, ys, labels = [], [], []
        was_training = self.training
        self.eval()
        try:
            for samples in itertools.islice(batches, self.stmil.warmup_batches):
                out = self(samples, None, compute_losses=False)
                pairs = self.stmil.pairs(out.summaries, out.expert_present, out.content, samples.get("emotion"))
                if pairs is not None:
                    xs.append(pairs[0].float())
                    ys.append(pairs[1].float())
                    labels.append(pairs[2])
        finally:
            self.train(was_training)
        n_pairs = sum(int(x.shape[0]) for x in xs)
        if n_pairs < MIN_WARMUP_PAIRS:  # too few to fit, or to hold any out: q starts as built
            return {"pairs": float(n_pairs), "fitted": 0.0}
        label_t = None if labels[0] is None else torch.cat(labels)
        y = torch.cat(ys)
        if self.stmil.conditional and not self.stmil.has_content_statistics():
            y = self.stmil.set_content_statistics(y)  # pairs() standardised with the identity so far
        with torch.enable_grad():
            return self.stmil.warm_up(torch.cat(xs), y, label_t, lr)

    def forward(self, samples: Mapping[str, Any], targets: Optional[EvidenceTargets] = None,
                compute_losses: bool = True) -> EvidenceOutput:
        """Experts + integration for a collated batch (docs/ARCHITECTURE.md); losses unless compute_losses=False.

        Uses samples["video_features"] [B, 5, T, max_dim], ["feature_mask"] [B, 5, T],
        ["modality_mask"] [B, 5] and, for loss_cls, ["emotion"] [B] (-1 = unknown).
        """
        for key in ("video_features", "feature_mask", "modality_mask"):
            if not isinstance(samples.get(key), Tensor):
                raise KeyError(f"the batch needs a tensor {key!r} (see docs/ARCHITECTURE.md, 'A collated batch')")
        device = self.integration.out_proj[1].weight.device
        slices = slice_modalities(samples["video_features"].to(device), samples["feature_mask"].to(device),
                                  samples["modality_mask"].to(device), self.dims)
        content = None
        if self.content_eraser is not None or (self.stmil is not None and self.stmil.conditional):
            content = pooled_content(slices[TEXT].features, slices[TEXT].frame_mask)
        tokens, summaries, present = [], [], []
        for expert, s in zip(self.experts, slices):
            t, summ = expert(s.features, s.frame_mask, s.present)
            tokens.append(t)
            summaries.append(summ)
            present.append(s.present)
        if self.content_eraser is not None:
            tokens[AUDIO], summaries[AUDIO] = self.content_eraser.erase_audio(
                tokens[AUDIO], summaries[AUDIO], present[AUDIO], present[TEXT], content, samples.get("emotion"))
        batch = tokens[0].shape[0]
        syn_loss = None
        if self.synergy is not None:
            syn = self.synergy(tokens[AUDIO], tokens[MOTION], present[AUDIO] & present[MOTION],
                               compute_loss=compute_losses and self.lambdas["synergy"] > 0)
            tokens.append(syn.tokens.to(tokens[0].dtype))
            summaries.append(syn.summary.to(tokens[0].dtype))
            present.append(syn.present)
            synergy_score, syn_loss = syn.score, syn.loss
        else:
            tokens.append(torch.zeros_like(tokens[0]))
            summaries.append(torch.zeros_like(summaries[0]))
            present.append(torch.zeros_like(present[0]))
            synergy_score = torch.full((batch,), 0.5, device=device)
        tokens_t = torch.stack(tokens, dim=1)  # [B, 6, Q, H]
        summaries_t = torch.stack(summaries, dim=1)  # [B, 6, H]
        present_t = torch.stack(present, dim=1)  # [B, 6]
        integ = self.integration(tokens_t, summaries_t, present_t)
        head_logits = self._classify(integ.context) if self.use_cls_head else None
        expert_logits = None
        if self.lambdas["expert_cls"] > 0:
            expert_logits = torch.stack([head(summaries_t[:, e]) for e, head in enumerate(self.expert_cls_heads)], 1)
        refit = self.readout(summaries_t, present_t, samples.get("emotion")) if self.readout is not None else None
        cls_logits = class_decision(self.decision, head_logits, expert_logits, present_t, refit)
        out = EvidenceOutput(context=integ.context, modality_weights=integ.modality_weights, expert_present=present_t,
                             summaries=summaries_t, synergy_score=synergy_score.float(), expert_tokens=tokens_t,
                             cls_logits=cls_logits, head_logits=head_logits, expert_logits=expert_logits,
                             content=content)
        if compute_losses:
            self._losses(out, samples, targets, syn_loss)
        else:
            out.loss_aux = torch.zeros((), device=device)
        return out

    @torch.no_grad()
    def generate_evidence(self, output: EvidenceOutput, max_new_tokens: int) -> Tensor:
        """Evidence sentences of every present expert -> LongTensor [B, 6, L], pad_token_id elsewhere.

        Greedy, or the recorded sentence (`evidence_bank`) that `bank` scores likeliest under the decoder
        or `readout` ranks first by `evidence_readout`, where the bank is usable. In training mode (a
        step's brief) `readout` is greedy: fitted on those clips, the read-out flatters them (README).
        No BOS/EOS; rows of absent experts are all pad. L >= 1. The decoder runs in eval mode."""
        tokens, present = output.expert_tokens, output.expert_present.bool()
        b, e = present.shape
        rows = present.nonzero(as_tuple=False)  # [N, 2]
        picked: list[tuple[Tensor, Tensor]] = []  # (rows [n, 2], ids [n, L_e]) from the bank
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            if self.decoding == "bank" or (self.decoding == "readout" and not self.training):
                rows, picked = self._closed_set_pick(output, rows)
            ids = self.decoder.generate(tokens[rows[:, 0], rows[:, 1]], rows[:, 1], max_new_tokens,
                                        self._decoder_condition(output, rows[:, 0], rows[:, 1]))
        finally:
            self.decoder.train(was_training)
        length = max([1, ids.shape[1]] + [p[1].shape[1] for p in picked])
        result = torch.full((b, e, length), self.pad_token_id, dtype=torch.long, device=tokens.device)
        if ids.shape[1]:
            result[rows[:, 0], rows[:, 1], : ids.shape[1]] = ids
        for where, chosen in picked:
            result[where[:, 0], where[:, 1], : chosen.shape[1]] = chosen
        return result

    def _closed_set_pick(self, output: EvidenceOutput, rows: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Closed-set decoding: (rows left to greedy decoding, [(rows, chosen ids)] per banked expert).
        The bank fills its slots in order, so candidate k is slot k, the read-out's class k."""
        picked, greedy = [], torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        by_readout = self.decoding == "readout"
        for expert in rows[:, 1].unique().tolist():
            bank = self.evidence_bank.candidates(expert)
            if bank is None or (by_readout and not self.evidence_readout.fitted(expert)):
                continue
            cand_ids, cand_mask = (t.to(rows.device) for t in bank)
            sel = rows[:, 1] == expert
            where = rows[sel]
            if by_readout:
                choice = self.evidence_readout.pick(output.summaries[where[:, 0], expert], expert)
            else:
                choice = self.decoder.score(output.expert_tokens[where[:, 0], where[:, 1]], where[:, 1], cand_ids,
                                            cand_mask, self._decoder_condition(output, where[:, 0], where[:, 1])
                                            ).argmax(-1)
            picked.append((where, cand_ids[choice]))
            greedy &= ~sel
        return rows[greedy], picked

    # ------------------------------------------------------------------ internals
    def _classify(self, context: Tensor) -> Tensor:
        return self.cls_head(context.mean(dim=1))

    def _losses(self, out: EvidenceOutput, samples: Mapping[str, Any], targets: Optional[EvidenceTargets],
                syn_loss: Optional[Tensor]) -> None:
        losses: dict[str, Tensor] = {}
        summ, present = out.summaries, out.expert_present
        if self.stmil is not None:
            stmil = self.stmil(summ, present, out.content, samples.get("emotion"), self.training)
            losses.update(stmil.losses)
            out.readouts.update(stmil.readouts)
            out.estimator_loss = stmil.estimator_loss
        if self.lambdas["sccl"] > 0:
            sccl = self._sccl(summ, present, targets)
            if sccl is not None:
                losses["loss_sccl"] = sccl
        if syn_loss is not None:
            losses["loss_synergy"] = syn_loss
        if targets is not None and self.lambdas["evidence"] > 0:
            evidence = self._evidence_loss(out, targets)
            if evidence is not None:
                losses["loss_evidence"] = evidence
        if self.use_cls_head:
            cls = self._cls_loss(out.head_logits, samples.get("emotion"))
            if cls is not None and self.lambdas["cls"] > 0:
                losses["loss_cls"] = cls
            if self.lambdas["kl"] > 0 and self.training:
                kl = self._kl_loss(out)
                if kl is not None:
                    losses["loss_kl"] = kl
        if self.lambdas["expert_cls"] > 0:
            expert_cls = expert_readout_loss(out.expert_logits, present, samples.get("emotion"))
            if expert_cls is not None:
                losses["loss_expert_cls"] = expert_cls
        total = torch.zeros((), device=out.context.device)
        for key, value in losses.items():
            total = total + self.lambdas[key[len("loss_"):]] * value.float()
        out.losses, out.loss_aux = losses, total

    def _sccl(self, summ: Tensor, present: Tensor, targets: Optional[EvidenceTargets]) -> Optional[Tensor]:
        """Golden mode: mean over experts with >= 2 pairs; else visual <-> text summaries of each clip."""
        terms = []
        if targets is not None:
            self._check_targets(targets, summ.shape[0])
            # frozen by contract: detached here whatever the caller built them with
            weight = self.sccl_text_proj.weight
            text = targets.sentence_embeds.detach().to(weight.device, weight.dtype)
            usable = present & targets.present.to(present.device).bool()
            for e in range(NUM_EXPERTS):
                idx = usable[:, e]
                if int(idx.sum()) >= 2:
                    terms.append(info_nce(self.sccl_summary_proj(summ[idx, e]), self.sccl_text_proj(text[idx, e]),
                                          self.sccl_temperature))
        if terms:
            return torch.stack(terms).mean()
        idx = present[:, VISUAL] & present[:, TEXT]
        if int(idx.sum()) >= 2:
            return info_nce(self.sccl_summary_proj(summ[idx, VISUAL]), self.sccl_summary_proj(summ[idx, TEXT]),
                            self.sccl_temperature)
        return None

    def _check_targets(self, targets: EvidenceTargets, batch: int) -> None:
        ids = targets.input_ids
        if ids.dim() != 3 or ids.shape[:2] != (batch, NUM_EXPERTS):
            raise ValueError(f"EvidenceTargets.input_ids must be [B={batch}, {NUM_EXPERTS}, L], got {tuple(ids.shape)}")
        if tuple(targets.attention_mask.shape) != tuple(ids.shape):
            raise ValueError(f"EvidenceTargets.attention_mask {tuple(targets.attention_mask.shape)} "
                             f"!= input_ids {tuple(ids.shape)}")
        if tuple(targets.present.shape) != (batch, NUM_EXPERTS):
            raise ValueError(f"EvidenceTargets.present must be [{batch}, {NUM_EXPERTS}], "
                             f"got {tuple(targets.present.shape)}")
        emb = targets.sentence_embeds
        if emb.dim() != 3 or emb.shape[:2] != (batch, NUM_EXPERTS):
            raise ValueError(f"EvidenceTargets.sentence_embeds must be [{batch}, {NUM_EXPERTS}, D_llm], "
                             f"got {tuple(emb.shape)}")

    def _evidence_loss(self, out: EvidenceOutput, targets: EvidenceTargets) -> Optional[Tensor]:
        """Teacher forcing on the golden sentences of present experts; mean token CE over all of them."""
        self._check_targets(targets, out.expert_tokens.shape[0])
        device = out.expert_tokens.device
        rows = (out.expert_present & targets.present.to(device).bool()).nonzero(as_tuple=False)
        if rows.shape[0] == 0:
            return None
        b_idx, e_idx = rows[:, 0], rows[:, 1]
        ids = targets.input_ids.to(device)[b_idx, e_idx]
        mask = targets.attention_mask.to(device)[b_idx, e_idx]
        if ids.shape[1] + 1 > self.decoder.max_len:
            raise ValueError(f"golden evidence of {ids.shape[1]} tokens (+ EOS) exceeds model.evidence_decoder.max_len "
                             f"{self.decoder.max_len}; raise it or truncate the targets")
        return self.decoder.loss(out.expert_tokens[b_idx, e_idx], e_idx, ids, mask,
                                 self._decoder_condition(out, b_idx, e_idx))

    def _decoder_condition(self, out: EvidenceOutput, b_idx: Tensor, e_idx: Tensor) -> Optional[Tensor]:
        """The expert read-out's class probabilities [N, C] for the decoder's rows (detached: the
        read-out is trained by its own cross-entropy, the decoder only reads it); None if unconditioned."""
        if self.decoder.condition_proj is None:
            return None
        return torch.softmax(out.expert_logits[b_idx, e_idx].detach().float(), dim=-1)

    def _cls_loss(self, logits: Tensor, emotion: Any) -> Optional[Tensor]:
        if not isinstance(emotion, Tensor):
            return None
        labels = emotion.to(logits.device).long()
        valid = labels >= 0
        if not bool(valid.any()):
            return None
        if int(labels.max()) >= self.num_classes:
            raise ValueError(f"emotion index {int(labels.max())} >= model.num_classes {self.num_classes}")
        return F.cross_entropy(logits[valid].float(), labels[valid])

    def _kl_loss(self, out: EvidenceOutput) -> Optional[Tensor]:
        """KL(full view || modality-dropped view) of the class distributions; teacher detached.

        Each present modality is dropped with probability kl_drop_prob (at least one kept per
        clip); dropping a modality only removes its expert (and synergy if it was audio or motion)
        from the integration, which is exactly what re-running the experts without it gives.
        """
        mod_present = out.expert_present[:, : len(STACK_ORDER)]
        keep = (torch.rand(mod_present.shape, device=mod_present.device) >= self.kl_drop_prob) & mod_present
        lost_all = ~keep.any(-1) & mod_present.any(-1)
        pick = torch.rand(mod_present.shape, device=mod_present.device).masked_fill(~mod_present, -1.0).argmax(-1)
        keep[lost_all, pick[lost_all]] = True
        changed = (keep != mod_present).any(-1)
        if not bool(changed.any()):
            return None
        syn = out.expert_present[:, SYNERGY] & keep[:, AUDIO] & keep[:, MOTION]
        student_present = torch.cat([keep, syn[:, None]], dim=1)
        student = self.integration(out.expert_tokens, out.summaries, student_present)
        return distillation_kl(out.head_logits, self._classify(student.context), self.kl_temperature, mask=changed)
