"""An evaluation folder (`hero-eval`'s output) as rows a page can filter and show, without a browser.

Reads `predictions.jsonl` (one record per clip, keys in `minigpt4.evaluation.records.RECORD_KEYS`),
`metrics.json` and `confusion_matrix.png` as `hero-eval` writes them. A modality counts as
missing for a clip when its expert's attention weight is 0 or absent: the model gives an absent
expert no weight, so the weights say what the clip had without opening its feature file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from minigpt4.common.modalities import EXPERT_ORDER, STACK_ORDER
from minigpt4.evaluation.records import CONFUSION_PNG, METRICS_FILE, PREDICTIONS_FILE, read_jsonl

PathLike = Union[str, Path]
ALL = "all"
OUTCOMES: tuple[str, ...] = (ALL, "correct", "wrong")
MISSING_ANY = "any"  # no filter on modalities
MISSING_NONE = "none"  # clips with every modality
UNKNOWN = "unknown"  # the parser's label for a report without a prediction
TABLE_HEADERS: tuple[str, ...] = ("video_id", "true", "predicted", "correct", "confidence", "missing")
EVIDENCE_HEADERS: tuple[str, ...] = ("expert", "evidence", "source", "annotated evidence", "weight")


@dataclass
class EvalFolder:
    """One evaluation folder, read once at start."""

    path: Path
    records: list[dict[str, Any]]
    metrics: Optional[dict[str, Any]]
    confusion_png: Optional[Path]
    label_names: list[str]
    by_id: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {str(r["video_id"]): r for r in self.records}


@dataclass(frozen=True)
class ClipFilter:
    """What the table shows: each field `all`/`any` or one value."""

    gold: str = ALL
    pred: str = ALL
    outcome: str = ALL  # all, correct, wrong
    missing: str = MISSING_ANY  # any, none, or a modality name


def _label_names(records: Sequence[Mapping[str, Any]], metrics: Optional[Mapping[str, Any]]) -> list[str]:
    """The run's label set as metrics.json gives it (the confusion matrix rows), else the labels seen."""
    rows = ((metrics or {}).get("confusion_matrix") or {}).get("rows")
    if rows:
        return [str(r) for r in rows]
    seen = {str(r.get(k)) for r in records for k in ("gold_emotion", "pred_emotion") if r.get(k) is not None}
    return sorted(seen - {UNKNOWN})


def load_eval_folder(eval_dir: PathLike) -> EvalFolder:
    """Read an evaluation folder; FileNotFoundError names what is missing, ValueError a bad line."""
    path = Path(eval_dir)
    preds = path / PREDICTIONS_FILE
    if not preds.is_file():
        raise FileNotFoundError(f"{path} holds no {PREDICTIONS_FILE}: pass a folder hero-eval wrote (e.g. RUN/eval_test)")
    records = [r for r in read_jsonl(preds) if "video_id" in r]
    metrics_path = path / METRICS_FILE
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    png = path / CONFUSION_PNG
    return EvalFolder(path, records, metrics, png if png.is_file() else None, _label_names(records, metrics))


def missing_modalities(record: Mapping[str, Any]) -> Optional[list[str]]:
    """The modalities (STACK_ORDER names) the clip lacked, None when the record has no weights."""
    weights = record.get("modality_weights")
    if not weights:
        return None
    return [m for m in STACK_ORDER if not float(weights.get(m) or 0.0) > 0.0]


def filter_choices(folder: EvalFolder) -> dict[str, list[str]]:
    """The options of each filter: true and predicted class, outcome, missing modality."""
    preds = list(folder.label_names)
    if any(r.get("pred_emotion") == UNKNOWN for r in folder.records):
        preds.append(UNKNOWN)
    return {"gold": [ALL, *folder.label_names], "pred": [ALL, *preds], "outcome": list(OUTCOMES),
            "missing": [MISSING_ANY, MISSING_NONE, *STACK_ORDER]}


def _matches(record: Mapping[str, Any], flt: ClipFilter) -> bool:
    if flt.gold != ALL and record.get("gold_emotion") != flt.gold:
        return False
    if flt.pred != ALL and record.get("pred_emotion") != flt.pred:
        return False
    if flt.outcome != ALL and record.get("correct") is not (flt.outcome == "correct"):
        return False  # an unlabelled clip (correct: null) is neither right nor wrong
    if flt.missing != MISSING_ANY:
        missing = missing_modalities(record)
        if missing is None:
            return False
        return not missing if flt.missing == MISSING_NONE else flt.missing in missing
    return True


def filter_records(records: Sequence[Mapping[str, Any]], flt: ClipFilter) -> list[Mapping[str, Any]]:
    """The records `flt` lets through, in file order."""
    return [r for r in records if _matches(r, flt)]


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def table_rows(records: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row per clip, columns TABLE_HEADERS (strings: the table is for reading, not sorting numbers)."""
    rows = []
    for r in records:
        conf = r.get("confidence")
        correct = r.get("correct")
        missing = missing_modalities(r)
        rows.append([
            str(r["video_id"]), _cell(r.get("gold_emotion")), _cell(r.get("pred_emotion")),
            "" if correct is None else ("yes" if correct else "no"),
            "" if conf is None else f"{float(conf):.2f}",
            "?" if missing is None else ", ".join(missing),
        ])
    return rows


def ordered_experts(names: Sequence[str]) -> list[str]:
    """`names` in EXPERT_ORDER, any others after in their own order (a run may add experts)."""
    known = [e for e in EXPERT_ORDER if e in names]
    return known + [n for n in names if n not in EXPERT_ORDER]


def evidence_rows(record: Mapping[str, Any]) -> list[list[str]]:
    """One row per expert (columns EVIDENCE_HEADERS): the sentence the model used, where it came
    from (`evidence_source`, blank in folders written before it was recorded), the annotation's
    sentence for comparison, the expert's weight."""
    used = record.get("evidence") or {}
    sources = record.get("evidence_source") or {}
    golden = record.get("golden_evidence") or {}
    weights = record.get("modality_weights") or {}
    names = ordered_experts(list(dict.fromkeys([*EXPERT_ORDER, *used, *golden, *weights])))
    rows = []
    for name in names:
        w = weights.get(name)
        rows.append([name, _cell(used.get(name)), _cell(sources.get(name)), _cell(golden.get(name)),
                     "" if w is None else f"{float(w):.3f}"])
    return rows


def clip_heading(record: Mapping[str, Any]) -> str:
    """Markdown naming the clip, its true and predicted class, the confidence and the transcript."""
    conf = record.get("confidence")
    verdict = {True: "correct", False: "wrong", None: "unlabelled"}[record.get("correct")]
    conf_text = "" if conf is None else f", confidence {float(conf):.2f}"
    src = record.get("confidence_source")
    src_text = f" ({src})" if src and conf is not None else ""
    text = (f"**{record['video_id']}**: true **{_cell(record.get('gold_emotion')) or '?'}**, "
            f"predicted **{_cell(record.get('pred_emotion'))}**{conf_text}{src_text}: {verdict}")
    words = " ".join(str(record.get("transcript") or "").split())
    return f"{text}\n\nTranscript: {words}" if words else text


def metrics_summary(folder: EvalFolder) -> str:
    """Markdown: how many clips and the headline metrics of metrics.json."""
    from minigpt4.evaluation.metrics import summary_line

    head = f"`{folder.path.name}`: {len(folder.records)} clips"
    if not folder.metrics:
        return head + " (no metrics.json)"
    return f"{head}; {summary_line(folder.metrics)}"
