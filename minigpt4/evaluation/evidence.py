"""How close each expert's generated evidence sentence is to the annotated one, and how varied
the sentences are (one sentence for every clip is a collapsed decoder). README "Outputs"."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any, Mapping, Optional, Sequence

_SPACES = re.compile(r"\s+")


def normalize_sentence(text: Optional[str]) -> str:
    """Whitespace collapsed and case folded: what `exact_match` and `n_distinct` compare."""
    return _SPACES.sub(" ", str(text or "")).strip().casefold()


def _tokens(text: Optional[str]) -> list[str]:
    """SQuAD-style tokens: lowercased, punctuation (any Unicode `P*` character) removed, split
    on whitespace. Articles are kept: these are sentences, not short answers."""
    text = "".join(ch for ch in str(text or "").lower() if not unicodedata.category(ch).startswith("P"))
    return text.split()


def token_f1(prediction: Optional[str], reference: Optional[str]) -> float:
    """Bag-of-tokens F1 of two sentences (SQuAD's `f1_score`); 1.0 if both have no token, 0.0 if one."""
    pred, ref = _tokens(prediction), _tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def evidence_metrics(
    generated: Sequence[Optional[Mapping[str, str]]],
    golden: Sequence[Optional[Mapping[str, str]]],
    experts: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Per expert: `n_sentences` (clips with a generated sentence), `n_distinct` (distinct
    sentences after `normalize_sentence`), and where any clip has a golden sentence for that
    expert `n_golden`, `exact_match` and mean `token_f1` over those clips (a clip without a
    generated sentence scores 0). One sentence repeated for every clip means a collapsed decoder.
    """
    if len(generated) != len(golden):
        raise ValueError(f"{len(generated)} generated evidence dicts but {len(golden)} golden ones")
    out: dict[str, dict[str, Any]] = {}
    for expert in experts:
        sentences = [normalize_sentence((g or {}).get(expert)) for g in generated]
        made = [s for s in sentences if s]
        entry: dict[str, Any] = {"n_sentences": len(made), "n_distinct": len(set(made))}
        pairs = [((gen or {}).get(expert), ref[expert]) for gen, ref in zip(generated, golden)
                 if ref and normalize_sentence(ref.get(expert))]
        if pairs:
            entry["n_golden"] = len(pairs)
            entry["exact_match"] = sum(normalize_sentence(p) == normalize_sentence(r) for p, r in pairs) / len(pairs)
            entry["token_f1"] = sum(token_f1(p, r) for p, r in pairs) / len(pairs)
        out[expert] = entry
    return out


def evidence_summary_line(evidence: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """`evidence exact match: motion 0.53 | audio 0.10 | ...` over experts with golden
    sentences; None when there are none."""
    parts = [f"{e} {v['exact_match']:.2f}" for e, v in evidence.items() if v.get("exact_match") is not None]
    return "evidence exact match: " + " | ".join(parts) if parts else None
