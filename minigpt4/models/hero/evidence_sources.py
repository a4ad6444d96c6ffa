"""Where each expert's sentence comes from at training and inference, and the transcript line.

A clip's sentence per expert has one source (`predictions.jsonl`'s `evidence_source`):
- `measured`: worded by the dataset from what the feature file measured (action units, prosody,
  optical flow, the transcript, scene labels). Computed from the input alone, so it exists at
  inference exactly as at training: the brief and the report use it as it is.
- `generated`: the evidence decoder's sentence, for an expert it learned from annotations (one
  that had an annotated sentence in some training batch). Measured sentences train the decoder
  too, but an expert known only from measurements is worded by measurement alone: where nothing
  was measured (or nothing stood out), the decoder would be inventing.
- `none`: neither. An expert whose decoder never saw a target writes noise, so it gets no sentence
  and the report says no evidence was observed.
Annotated sentences (`annotated` in the batch) are training targets and references; they never
reach the LLM's input at inference.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from minigpt4.common.modalities import EXPERT_ORDER

MEASURED, GENERATED, NONE = "measured", "generated", "none"
DECISION_TAG = "fused"  # the brief line of the classification head's reading
NO_EVIDENCE_BRIEF = "nothing was observed."  # the brief line of a present expert without a sentence
ABSENT_BRIEF = "not in this clip."  # the brief line of an absent expert (its modality is missing)


class EvidenceCoverage(nn.Module):
    """Which experts the evidence decoder learned from annotations: `seen [6]`, saved with the checkpoint.

    -1 everywhere means "not recorded" (a checkpoint from before this buffer existed): every
    expert counts as trained, as it did then. The first training batch sets it to 0/1.
    Under DDP the buffer is broadcast from rank 0, so it records what rank 0 saw; a corpus
    whose expert has targets has them on every rank after a few batches.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.full((len(EXPERT_ORDER),), -1.0))

    @torch.no_grad()
    def update(self, present: Optional[Tensor]) -> None:
        """Record the experts with an annotated sentence in this training batch (`present [B, 6]` bool, or None)."""
        if bool((self.seen < 0).any()):
            self.seen.clamp_(min=0.0)
        if present is not None:
            self.seen.copy_(torch.maximum(self.seen, present.any(0).to(self.seen)))

    def trained(self) -> Tensor:
        """bool [6]: experts whose decoder sentence may be shown."""
        return (self.seen != 0)


def annotated_mask(samples: Mapping[str, Any], batch: int) -> Tensor:
    """bool [B, 6]: experts with an annotated sentence (a batch without `evidence_source`, as
    hand-built ones, counts every sentence as annotated)."""
    evidence = samples.get("evidence") or [{} for _ in range(batch)]
    sources = samples.get("evidence_source") or [{} for _ in range(batch)]
    return torch.tensor([[isinstance((ev or {}).get(name), str) and bool(ev[name].strip())
                          and (src or {}).get(name, "annotated") == "annotated" for name in EXPERT_ORDER]
                         for ev, src in zip(evidence, sources)], dtype=torch.bool)


def measured_of(samples: Mapping[str, Any], batch: int) -> list[dict[str, str]]:
    """The batch's measured sentences per clip (expert -> sentence), `{}` where none."""
    evidence = samples.get("evidence") or [{} for _ in range(batch)]
    sources = samples.get("evidence_source") or [{} for _ in range(batch)]
    return [{k: " ".join(v.split()) for k, v in (ev or {}).items()
             if (src or {}).get(k) == MEASURED and isinstance(v, str) and v.strip()}
            for ev, src in zip(evidence, sources)]


def combine(decoded: Sequence[Mapping[str, str]], measured: Sequence[Mapping[str, str]],
            present: Tensor) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(sentences, sources) per clip: measured ones as they are, decoded ones for the rest; a
    present expert with neither gets source `none` (absent experts get no entry)."""
    flags = present.bool().tolist()
    sentences, sources = [], []
    for b, (dec, mea) in enumerate(zip(decoded, measured)):
        sent, src = {}, {}
        for e, name in enumerate(EXPERT_ORDER):
            if not flags[b][e]:
                continue
            if name in mea:
                sent[name], src[name] = mea[name], MEASURED
            elif dec.get(name):
                sent[name], src[name] = dec[name], GENERATED
            else:
                src[name] = NONE
        sentences.append(sent)
        sources.append(src)
    return sentences, sources


def decodable(present: Tensor, trained: Tensor, measured: Sequence[Mapping[str, str]]) -> Tensor:
    """bool [B, 6]: experts the decoder should write for: present, trained, and not measured."""
    has_measured = torch.tensor([[name in m for name in EXPERT_ORDER] for m in measured], dtype=torch.bool,
                                device=present.device)
    return present.bool() & trained.to(present.device).unsqueeze(0) & ~has_measured


def transcript_lines(tokenizer: Any, transcripts: Optional[Sequence[str]], template: str,
                     max_tokens: int, batch: int) -> list[Optional[str]]:
    """The prompt's spoken-words line per clip (`template` filled with the transcript cut to
    `max_tokens` LLM tokens, "..." marking a cut), None where the clip has no transcript."""
    texts = [" ".join(str(t or "").split()) for t in (transcripts or [""] * batch)]
    lines: list[Optional[str]] = [None] * len(texts)
    todo = [i for i, t in enumerate(texts) if t]
    if not todo:
        return lines
    ids = tokenizer([texts[i] for i in todo], add_special_tokens=False)["input_ids"]
    for i, row in zip(todo, ids):
        text = texts[i]
        if len(row) > max_tokens:
            text = tokenizer.decode(row[:max_tokens], skip_special_tokens=True).strip() + " ..."
        lines[i] = template.format(text)
    return lines


def order_brief(sentences: Mapping[str, str], weights: Sequence[float], present: Sequence[bool]) -> list[tuple[str, str]]:
    """(expert, sentence) pairs of present experts with a sentence, highest modality weight first.

    Ties keep EXPERT_ORDER, so the order is deterministic.
    """
    items = [(name, sentences[name], float(weights[e]), e) for e, name in enumerate(EXPERT_ORDER)
             if present[e] and isinstance(sentences.get(name), str) and sentences[name].strip()]
    items.sort(key=lambda x: (-x[2], x[3]))
    return [(name, sentence) for name, sentence, _, _ in items]


def clip_brief(sentences: Mapping[str, str], weights: Sequence[float], present: Sequence[bool],
               decision: Optional[str], skip: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """One clip's brief as (tag, sentence) pairs: the `[fused]` decision line first (when given),
    then every present expert by modality weight (`order_brief`) except those in `skip` (the
    experts a given evidence section already carries). A present expert without a sentence (the
    decoder may not write for it, or wrote nothing, and nothing was measured) gets a line saying
    nothing was observed, as its report line does. Absent experts come last, each with a line
    saying so, `skip` or not: a report line folds two experts (Audio = audio + text), so without
    it a missing voice is only an absence the LLM would have to notice, and a rationale that
    speaks of it is ungrounded (`faithfulness.rationale_grounding`)."""
    filled = {**dict.fromkeys(EXPERT_ORDER, NO_EVIDENCE_BRIEF), **sentences}  # order_brief keeps the present
    brief = [(name, text) for name, text in order_brief(filled, weights, present) if name not in skip]
    brief += [(name, ABSENT_BRIEF) for e, name in enumerate(EXPERT_ORDER) if not present[e]]
    return brief if decision is None else [(DECISION_TAG, decision)] + brief


def decision_texts(probs: Tensor, label_names: Sequence[str]) -> list[str]:
    """The `[fused]` brief line of each row of head probabilities [B, C]:
    "most likely angry (0.81), then worried (0.12)"."""
    top = probs.topk(min(2, probs.shape[-1]), dim=-1)
    lines = []
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        first = f"most likely {label_names[i[0]]} ({p[0]:.2f})"
        lines.append(first if len(i) < 2 else f"{first}, then {label_names[i[1]]} ({p[1]:.2f})")
    return lines
