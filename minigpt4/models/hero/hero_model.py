"""HEROModel (registry name `hero`): the evidence stack (experts + integration) and the LLM reasoner.

The evidence half (`HEROEvidenceStack`) turns the feature stack into an integrated context
`[B, num_output_queries, llm_dim]` (`model.context_dim`), per-expert modality weights and evidence sentences. The
reasoning half (`LLMReasoner`) reads that context at the `<VideoHere>` slot, then an
*evidence brief* (one tagged line per present expert, ordered by its modality weight), then
the instruction, and writes the CoT report.

Where the brief's sentences come from (`model.brief_source`). At inference the brief always
holds the decoder's generated sentence of every present expert; at training:
- `generated` (default): the decoder's sentences for every present expert (greedy, no
  gradient), exactly as at inference. The LLM learns from the brief it will be given, so it
  cannot learn to read the label off annotated sentences. Golden sentences still train the
  decoder (`loss_evidence`) and SCCL, and remain the CoT target's evidence section.
- `golden`: the annotation's golden sentence for each present expert that has one, generated
  ones for the rest. An ablation: annotations nearly state the answer, a shortcut never there at
  inference (measured: a collapse to one class on a corpus with such sentences).
- `none`: no brief at training or inference (context + instruction only), an ablation.
Absent experts (modality missing or dropped) never get a line. Where the report's evidence
section is given (`report_evidence: experts`), `model.brief_lines: unreported` leaves out the
lines of the experts that section carries (visual, motion, audio, text, au): the LLM reads each
sentence once, in the section, and keeps `[fused]` and `[synergy]` in the brief.
`model.brief_dropout` (default 0) drops the whole brief of a training clip with that probability,
so the LLM must also write its evidence from the integrated context.

The decision line (`model.decision_brief`, on by default whenever the classification head is): the
head on the integrated context reads the emotion from the features (`loss_cls`); its two most
probable classes go first in the brief as `[fused] ...`, at training (detached, from the head in
training mode) and inference alike: the report's label is learned as a function of what the
features say, so the head and the report agree by construction rather than by chance.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from minigpt4.common import cot
from minigpt4.common.modalities import EXPERT_ORDER
from minigpt4.common.schema import model_config
from minigpt4.common.registry import registry
from minigpt4.models.hero import evidence_sources as sources_
from minigpt4.models.hero import training_stage as stages
from minigpt4.models.hero.evidence_readout import with_slots
from minigpt4.models.hero.evidence_stack import EvidenceTargets, HEROEvidenceStack
from minigpt4.models.hero.llm_reasoner import LLMReasoner, ReasonerConfig
from minigpt4.models.hero.user_turn import compose_user_turn

_TENSOR_KEYS = ("video_features", "feature_mask", "modality_mask", "emotion")


@registry.register_model("hero")
class HEROModel(nn.Module):
    """Evidence stack + LLM reasoner; the runner/model contract of docs/ARCHITECTURE.md."""

    def __init__(self, cfg_model: Any) -> None:
        super().__init__()
        self.cfg = cfg_model
        # cheap checks first, so a config typo fails before the LLM loads
        c = model_config(cfg_model)
        self.label_names: tuple[str, ...] = tuple(c.label_names)
        self.brief_source = c.brief_source
        self.brief_dropout = c.brief_dropout
        self.report_evidence = c.report_evidence
        self.brief_lines = c.brief_lines
        self.evidence_max_len = c.evidence_max_len
        self.use_transcript = c.use_transcript
        self.transcript_template = c.transcript_template
        self.transcript_max_tokens = c.transcript_max_tokens
        self.coverage = sources_.EvidenceCoverage()
        self.stmil_lr: Optional[float] = c.stmil.lr
        self.train_stage, self.freeze_experts = c.train_stage, c.freeze_experts  # `training_stage` module
        self.freeze_evidence_stack = c.freeze_evidence_stack
        reasoner_cfg = ReasonerConfig.from_model_cfg(c)

        self.reasoner = LLMReasoner(reasoner_cfg)
        tok = self.reasoner.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.evidence_stack = HEROEvidenceStack(c, llm_dim=self.reasoner.context_dim, vocab_size=self.reasoner.vocab_size,
                                                bos_token_id=int(bos), eos_token_id=int(tok.eos_token_id),
                                                pad_token_id=int(tok.pad_token_id), embed_dim=self.reasoner.hidden_size)
        self.decision_brief = self.evidence_stack.use_cls_head if c.decision_brief is None else c.decision_brief
        # divides the head's logits for the confidence a prediction reports (1.0: as trained); set
        # from a run's calibration.json (run.calibrate, hero-eval --calibrate), never from the config: it is not learned
        self.head_temperature = 1.0
        if self.decision_brief and not self.evidence_stack.use_cls_head:
            raise ValueError("model.decision_brief needs the classification head (model.lambda_cls > 0 or "
                             "model.use_cls_head: true)")
        decoder_max = int(self.evidence_stack.decoder.max_len)
        if not 1 <= self.evidence_max_len <= decoder_max - 1:
            raise ValueError(f"model.evidence_max_len must be in [1, model.evidence_decoder.max_len - 1 = "
                             f"{decoder_max - 1}] (room for EOS), got {self.evidence_max_len}")
        stages.apply_stage(self, self.train_stage, self.freeze_experts, self.freeze_evidence_stack)

    @classmethod
    def from_config(cls, cfg_model: Any) -> "HEROModel":
        return cls(cfg_model)

    def checkpoint_buffer_names(self) -> list[str]:
        """Buffers (and frozen experts' parameters) a checkpoint saves besides the trainable parameters."""
        names = ["coverage.seen"] + [f"evidence_stack.evidence_bank.{name}" for name in ("ids", "lengths", "overflow")]
        if self.evidence_stack.decoder.vocab is not None:
            names += [f"evidence_stack.decoder.vocab.{name}" for name in ("ids", "count", "overflow")]
        stmil = self.evidence_stack.stmil
        if stmil is not None and stmil.queue is not None:  # the queues and the content standardisation
            names += [f"evidence_stack.stmil.{n}" for n, _ in stmil.named_buffers()]
        for part in ("content_eraser", "readout", "evidence_readout"):  # fitted in closed form from the training split
            fitted = getattr(self.evidence_stack, part)
            names += [f"evidence_stack.{part}.{n}" for n, _ in fitted.named_buffers()] if fitted is not None else []
        return names + stages.frozen_parameter_names(self, self.freeze_experts, self.freeze_evidence_stack)

    @property
    def can_generate(self) -> bool:
        """Whether reports mean anything: not after observation pre-training (its LLM never trained)."""
        return self.train_stage != stages.OBSERVATION

    @property
    def auto_best_metric(self) -> Optional[str]:
        """The validation term `run.best_metric: auto` selects when validation does not generate."""
        head = self.train_stage == stages.OBSERVATION and self.evidence_stack.use_cls_head
        return stages.CLS_ACCURACY if head else None

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.reasoner.llm.get_input_embeddings().weight.device

    def _on_device(self, samples: Mapping[str, Any]) -> dict[str, Any]:
        device = self.device
        out = dict(samples)
        for key in _TENSOR_KEYS:
            if isinstance(out.get(key), Tensor):
                out[key] = out[key].to(device, non_blocking=True)
        return out

    @staticmethod
    def _batch_size(samples: Mapping[str, Any]) -> int:
        return int(samples["video_features"].shape[0])

    @torch.no_grad()
    def build_evidence_targets(self, samples: Mapping[str, Any]) -> Optional[EvidenceTargets]:
        """Golden evidence per expert as LLM tokens + frozen sentence embeddings; None if the batch has none.

        Shapes: input_ids / attention_mask [B, 6, L] (L <= evidence_max_len, pad id beyond each
        sentence), present [B, 6], sentence_embeds [B, 6, D_llm] (float32, mean of the LLM's
        input embeddings over the sentence tokens, zeros where absent).
        """
        evidence = samples.get("evidence") or [{} for _ in range(self._batch_size(samples))]
        batch, n_exp = len(evidence), len(EXPERT_ORDER)
        texts, slots = [], []
        for b, ev in enumerate(evidence):
            for e, name in enumerate(EXPERT_ORDER):
                sentence = (ev or {}).get(name)
                if isinstance(sentence, str) and sentence.strip():
                    texts.append(" ".join(sentence.split()))
                    slots.append((b, e))
        if not texts:
            return None
        ids = self.reasoner.tokenizer(texts, add_special_tokens=False)["input_ids"]
        ids = [row[: self.evidence_max_len] for row in ids]
        length = max(1, max(len(r) for r in ids))
        device, pad = self.device, int(self.reasoner.tokenizer.pad_token_id)
        input_ids = torch.full((batch, n_exp, length), pad, dtype=torch.long)
        mask = torch.zeros((batch, n_exp, length), dtype=torch.long)
        present = torch.zeros((batch, n_exp), dtype=torch.bool)
        for (b, e), row in zip(slots, ids):
            if row:
                input_ids[b, e, : len(row)] = torch.tensor(row)
                mask[b, e, : len(row)] = 1
                present[b, e] = True
        input_ids, mask, present = input_ids.to(device), mask.to(device), present.to(device)
        embeds = self.reasoner.embed_tokens(input_ids).float()  # [B, 6, L, D]
        weights = mask.unsqueeze(-1).float()
        sentence_embeds = (embeds * weights).sum(2) / weights.sum(2).clamp(min=1.0)
        return EvidenceTargets(input_ids=input_ids, attention_mask=mask, present=present,
                               sentence_embeds=sentence_embeds)

    def generated_evidence(self, output: Any, which: Optional[Tensor] = None) -> list[dict[str, str]]:
        """Decode the evidence decoder's sentences: per clip, expert name -> sentence.

        Only present experts (and, when `which` [B, 6] bool is given, only those it selects)
        are decoded; empty sentences are left out.
        """
        present = output.expert_present.bool()
        if which is not None:
            present = present & which.to(present.device).bool()
        batch, n_exp = present.shape
        if not bool(present.any()):
            return [{} for _ in range(batch)]
        ids = self.evidence_stack.generate_evidence(replace(output, expert_present=present), self.evidence_max_len)
        texts = self.reasoner.tokenizer.batch_decode(ids.reshape(batch * n_exp, -1).tolist(), skip_special_tokens=True)
        flags = present.tolist()
        result: list[dict[str, str]] = []
        for b in range(batch):
            clip = {}
            for e, name in enumerate(EXPERT_ORDER):
                text = " ".join(texts[b * n_exp + e].split())
                if flags[b][e] and text:
                    clip[name] = text
            result.append(clip)
        return result

    def expert_evidence(self, samples: Mapping[str, Any], output: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """(sentence, source) per present expert of each clip, as inference shows them: measured
        sentences as they are, the decoder's for trained experts, none for the rest
        (`evidence_sources` module docstring)."""
        measured = sources_.measured_of(samples, self._batch_size(samples))
        which = sources_.decodable(output.expert_present, self.coverage.trained(), measured)
        decoded = self.generated_evidence(output, which=which)
        return sources_.combine(decoded, measured, output.expert_present)

    def training_brief(self, samples: Mapping[str, Any], output: Any,
                       given: Optional[list[dict[str, str]]]) -> list[Optional[dict[str, str]]]:
        """Brief sentences at training, per `brief_source` and `brief_dropout` (module docstring);
        `given`: the experts' sentences (`expert_evidence`, computed by `forward` whenever the
        brief or the report needs them; None otherwise).

        None for a clip means no brief at all (no decision line either).
        """
        batch = self._batch_size(samples)
        if self.brief_source == "none":
            return [None] * batch
        if self.brief_source == "generated":
            sentences = list(given)
        else:
            golden = [{k: " ".join(v.split()) for k, v in (ev or {}).items() if isinstance(v, str) and v.strip()}
                      for ev in (samples.get("evidence") or [{} for _ in range(batch)])]
            missing = torch.tensor([[name not in ev for name in EXPERT_ORDER] for ev in golden], dtype=torch.bool)
            missing &= self.coverage.trained().cpu().unsqueeze(0)  # as at inference: untrained experts say nothing
            with torch.no_grad():
                generated = self.generated_evidence(output, which=missing)
            sentences = [{**gen, **gold} for gen, gold in zip(generated, golden)]
        if self.brief_dropout > 0:
            keep = (torch.rand(batch) >= self.brief_dropout).tolist()
            return [s if k else None for s, k in zip(sentences, keep)]
        return sentences

    def training_answers(self, samples: Mapping[str, Any], given: Optional[list[dict[str, str]]]
                         ) -> tuple[list[str], Optional[list[str]]]:
        """(what the LLM learns to write, the given start of each answer or None), as `generate` asks.

        With `report_evidence: experts` inference gives the evidence section, built from the
        experts' own sentences (`given`); training does the same (read, not learned) and learns
        the rest of the annotated report. The LLM never sees annotated evidence in its answer (a
        shortcut inference lacks), and a step scores ~40 % of the tokens it did when it copied it.
        """
        answers = list(samples["answer"])
        if self.report_evidence != "experts" or given is None:
            return answers, None
        pairs = [cot.given_section_and_rest(answer, sentences) for answer, sentences in zip(answers, given)]
        return [rest for _, rest in pairs], [section for section, _ in pairs]

    def decision_lines(self, output: Any) -> list[Optional[str]]:
        """The `[fused]` brief line per clip (`evidence_sources.decision_texts`: the head's two most
        probable classes, detached), or None when off or without a head."""
        probs = self.head_probs(output) if self.decision_brief else None
        if probs is None:
            return [None] * int(output.context.shape[0])
        return sources_.decision_texts(probs, self.label_names)

    @staticmethod
    def head_probs(output: Any, temperature: float = 1.0) -> Optional[Tensor]:
        """The classification head's class probabilities [B, C] (detached, float32) at `temperature`,
        or None without a head. The brief's [fused] line always reads them at 1.0, as in training."""
        if output.cls_logits is None:
            return None
        return torch.softmax(output.cls_logits.detach().float() / temperature, dim=-1)

    def classify(self, output: Any) -> Optional[list[tuple[str, float]]]:
        """(label, probability) of the classification head per clip, or None without a head."""
        probs = self.head_probs(output)
        return None if probs is None else self.readings(probs)

    def readings(self, probs: Tensor) -> list[tuple[str, float]]:
        """(most likely label, its probability) per row of head probabilities [B, C]."""
        conf, idx = probs.max(dim=-1)
        return [(self.label_names[int(i)], float(c)) for i, c in zip(idx.tolist(), conf.tolist())]

    def spoken_lines(self, samples: Mapping[str, Any]) -> list[Optional[str]]:
        """The transcript line of each clip's prompt (`model.use_transcript`), None where off or empty."""
        batch = self._batch_size(samples)
        if not self.use_transcript:
            return [None] * batch
        return sources_.transcript_lines(self.reasoner.tokenizer, samples.get("transcript"),
                                         self.transcript_template, self.transcript_max_tokens, batch)

    def _user_turns(self, instructions: Sequence[str], sentences: Sequence[Optional[Mapping[str, str]]],
                    output: Any, spoken: Sequence[Optional[str]], reported: Sequence[bool]) -> list[str]:
        """The user turn per clip; a clip whose sentences are None gets no brief (no decision line).
        `reported`: per clip, whether its answer starts with the given evidence section; there,
        `brief_lines: unreported` leaves out the experts that section carries (`sources_.clip_brief`)."""
        weights = output.modality_weights.detach().float().tolist()
        present = output.expert_present.bool().tolist()
        decisions = self.decision_lines(output)
        turns = []
        for instr, sent, w, p, decision, words, given in zip(instructions, sentences, weights, present, decisions,
                                                             spoken, reported):
            if sent is None:
                turns.append(compose_user_turn(instr, [], words))
                continue
            skip = cot.REPORTED_EXPERTS if given and self.brief_lines == "unreported" else frozenset()
            turns.append(compose_user_turn(instr, sources_.clip_brief(sent, w, p, decision, skip), words))
        return turns

    # ------------------------------------------------------------------ training
    def forward(self, samples: Mapping[str, Any]) -> dict[str, Any]:
        """Training step: `loss` = loss_task + the evidence stack's weighted terms (observation
        pre-training: those terms alone, and `cls_accuracy` in eval mode); every term too."""
        samples = self._on_device(samples)
        targets = self.build_evidence_targets(samples)
        if self.training:
            annotated = sources_.annotated_mask(samples, self._batch_size(samples))
            self.coverage.update(annotated)
            if targets is not None:
                self.evidence_stack.evidence_bank.update(targets.input_ids, targets.attention_mask,
                                                         annotated.to(targets.present.device) & targets.present)
        output = self.evidence_stack(samples, targets)
        if self.train_stage == stages.OBSERVATION:  # the LLM is not run (`training_stage` module)
            result: dict[str, Any] = {"loss": stages.observation_loss(output, self.training)}
            accuracy = None if self.training else stages.head_accuracy(output.cls_logits, samples.get("emotion"))
            if accuracy is not None:
                result[stages.CLS_ACCURACY] = accuracy
        else:
            given = None
            if self.brief_source == "generated" or self.report_evidence == "experts":
                with torch.no_grad():  # the experts' sentences, as inference writes them
                    given, _ = self.expert_evidence(samples, output)
            sentences = self.training_brief(samples, output, given)
            answers, prefixes = self.training_answers(samples, given)
            reported = [bool(p) for p in prefixes] if prefixes is not None else [False] * len(answers)
            turns = self._user_turns(samples["instruction"], sentences, output, self.spoken_lines(samples), reported)
            loss_task = self.reasoner(output.context, turns, answers, prefixes)
            loss_aux = output.loss_aux if output.loss_aux is not None else torch.zeros((), device=loss_task.device)
            result = {"loss": loss_task + loss_aux, "loss_task": loss_task}
        for name, value in {**output.readouts, **output.losses}.items():
            key = name if name.startswith("loss_") else f"loss_{name}"
            if key in ("loss", "loss_task"):
                raise KeyError(f"evidence stack loss term {name!r} collides with {key!r}")
            result[key] = value
        if output.estimator_loss is not None:
            result["aux_losses"] = {"stmil_estimator": output.estimator_loss}
        return result

    def auxiliary_parameter_groups(self) -> dict[str, dict[str, Any]]:
        """The vCLUB q-network's own optimiser group (lr from `model.stmil.lr`, else the runner's `init_lr`),
        held constant by the runner (`schedule: False`)."""
        params = list(self.evidence_stack.estimator_parameters())
        if not params:
            return {}
        # a constant rate (outside the run's warm-up and decay): q must keep up with the experts from step 1
        return {"stmil_estimator": {"params": params, "lr": self.stmil_lr, "weight_decay": None, "schedule": False}}

    def warm_up_estimators(self, batches: Iterable[Mapping[str, Any]], lr: float) -> Optional[dict[str, float]]:
        """Before step 1: fit the STMIL q-network on the initial representations (lr: `model.stmil.lr` or the runner's)."""
        rate = self.stmil_lr if self.stmil_lr is not None else lr
        return self.evidence_stack.warm_up_stmil((self._on_device(s) for s in batches), rate)

    def refit_statistics(self, batches: Iterable[Mapping[str, Any]]) -> Optional[dict[str, float]]:
        """Before step 1 and after every epoch: the content eraser's and the read-outs' statistics; none with
        `freeze_evidence_stack` (a refit can flip a near-tied erased direction: the stack stays as loaded)."""
        return None if self.freeze_evidence_stack else self.evidence_stack.refit_statistics(
            self._with_evidence_slots(self._on_device(s)) for s in batches)

    def _with_evidence_slots(self, samples: Mapping[str, Any]) -> dict[str, Any]:
        annotated = sources_.annotated_mask(samples, self._batch_size(samples))
        return with_slots(samples, self.build_evidence_targets(samples), annotated, self.evidence_stack.evidence_bank)

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def generate(
        self,
        samples: Mapping[str, Any],
        max_new_tokens: int = 300,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        use_cot: bool = True,
        brief: Optional[bool] = None,
        **gen_kwargs: Any,
    ) -> list[dict[str, Any]]:
        """CoT reports for a batch (left padding + KV cache), parsed; one dict per clip.

        `brief`: put the evidence brief in the prompt (None: as configured, i.e. unless
        `brief_source` is `none`); False measures what the integrated context alone carries.

        Keys: report, emotion, confidence, format_ok, evidence (expert -> sentence),
        evidence_source (expert -> measured / generated / none, `evidence_sources`), modality_weights (expert -> float), synergy_score (float), head_emotion /
        head_confidence (the classification head's reading; None without a head),
        label_probs (the head's distribution over the label set; None without a head), video_id
        (when given). With a head, `confidence` (and the number the report prints) is the head's
        probability of the report's label (`confidence_source` "head"); without one it is the
        number the LLM wrote ("report").
        The instruction is `cot.build_instruction(label_names, use_cot)`.
        """
        stages.refuse_generation(self.train_stage)
        samples = self._on_device(samples)
        batch = self._batch_size(samples)
        output = self.evidence_stack(samples, None, compute_losses=False)
        evidence, evidence_source = self.expert_evidence(samples, output)
        use_brief = self.brief_source != "none" if brief is None else bool(brief)
        brief_sentences = evidence if use_brief else [None] * batch
        instruction = cot.build_instruction(self.label_names, use_cot)
        spoken = self.spoken_lines(samples)
        # the evidence section is the experts' own sentences, given, and the LLM writes the rest
        prefixes = ([cot.given_section(e) for e in evidence]
                    if use_cot and self.report_evidence == "experts" else None)
        turns = self._user_turns([instruction] * batch, brief_sentences, output, spoken, [prefixes is not None] * batch)
        heard = list(samples.get("transcript") or [None] * batch)
        reports = self.reasoner.generate(output.context, turns, prefixes=prefixes, max_new_tokens=max_new_tokens,
                                         num_beams=num_beams, do_sample=do_sample, temperature=temperature,
                                         top_p=top_p, **gen_kwargs)
        weights = output.modality_weights.detach().float().cpu().tolist()
        synergy = output.synergy_score.detach().float().cpu().tolist()
        probs = self.head_probs(output, self.head_temperature)
        head = None if probs is None else self.readings(probs)
        ids = samples.get("video_id")
        results = []
        for b, report in enumerate(reports):
            parsed = cot.parse_report(report, self.label_names, require_header=use_cot)
            confidence, source, label_probs = parsed.confidence, "report", None
            if probs is not None:
                label_probs = {name: float(probs[b, k]) for k, name in enumerate(self.label_names)}
                if parsed.format_ok:
                    # the confidence is measured, not written: the head's probability of the report's label
                    confidence = round(label_probs[parsed.emotion], cot.CONFIDENCE_DECIMALS)
                    report = cot.with_confidence(report, confidence, require_header=use_cot)
                    source = "head"
            item = {
                "report": report,
                "emotion": parsed.emotion,
                "confidence": confidence,
                "confidence_source": source,
                "label_probs": label_probs,
                "format_ok": parsed.format_ok,
                "evidence": evidence[b],
                "evidence_source": evidence_source[b],
                # what the prompt quoted (None with model.use_transcript off, or no words)
                "transcript": " ".join(str(heard[b]).split()) if spoken[b] is not None else None,
                "modality_weights": {name: float(weights[b][e]) for e, name in enumerate(EXPERT_ORDER)},
                "synergy_score": float(synergy[b]),
                "head_emotion": None if head is None else head[b][0],
                "head_confidence": None if head is None else head[b][1],
            }
            if ids is not None:
                item["video_id"] = ids[b]
            results.append(item)
        return results
