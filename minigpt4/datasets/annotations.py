"""Annotation records (README "Your own data", "2. Labels"): load, validate, split; MER CSV conversion.

Annotations are a JSON list of records `{"video_id", "emotion", "split", "sentiment"?,
"text"?, "evidence"?, "reasoning"?, "answer"?}` in one file (with `split`), or one file per
split. Every problem is an `AnnotationError` naming the file and the record index, because a
typo in record 31 412 of a labels file must be findable from the message.

Mistakes that would otherwise pass silently are errors too: a field name that is a near-miss
of a known one (`Emotion`, `emtion`: the record would read as unlabelled), a split name
outside the configured ones (`trian` would become a split nothing uses), and one `video_id`
in two splits (a leak between train and test). Other extra fields are kept out of the way.

A `video_id` names a feature file inside the features folder, so it must be a plain file
stem: ids with a path separator, `..`, a leading dot-dot or NUL are rejected (a crafted
labels file must not make the loader read outside its folder).
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from minigpt4.common.modalities import EXPERT_ORDER
from minigpt4.common.schema import nearest

PathLike = Union[str, "os.PathLike[str]"]

SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")
# Splits whose records may come without an `emotion` (an unlabeled test set).
UNLABELED_SPLITS: frozenset[str] = frozenset({"test"})
# The record fields the loader reads; an unknown field this close to one (lower-cased) is a typo.
RECORD_FIELDS: tuple[str, ...] = ("video_id", "emotion", "split", "sentiment", "text", "evidence", "reasoning",
                                  "answer", "valence")
_NEAR_MISS = 0.8


class AnnotationError(ValueError):
    """A labels file problem; `source` is the file, `index` the record (None = whole file)."""

    def __init__(self, source: PathLike, index: Optional[int], problem: str) -> None:
        self.source = str(source)
        self.index = index
        self.problem = problem
        where = f"{self.source} record {index}" if index is not None else self.source
        super().__init__(f"{where}: {problem}")


@dataclass
class Annotation:
    """One validated clip record. `emotion` is lower-cased; None only in unlabeled splits."""

    video_id: str
    split: str
    emotion: Optional[str] = None
    sentiment: Optional[str] = None
    text: Optional[str] = None
    evidence: dict[str, str] = field(default_factory=dict)
    reasoning: Optional[str] = None
    answer: Optional[str] = None
    valence: Optional[float] = None
    source: str = ""
    index: Optional[int] = None

    def where(self) -> str:
        """`file record i (video_id ...)`, for error messages."""
        at = f" record {self.index}" if self.index is not None else ""
        return f"{self.source}{at} (video_id {self.video_id!r})"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"video_id": self.video_id, "split": self.split}
        if self.emotion is not None:
            out["emotion"] = self.emotion
        for name in ("sentiment", "text", "reasoning", "answer", "valence"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.evidence:
            out["evidence"] = dict(self.evidence)
        return out


def check_video_id(video_id: Any, source: PathLike, index: Optional[int]) -> str:
    """Return `video_id` if it is a safe plain file stem, else raise AnnotationError."""
    if not isinstance(video_id, str) or not video_id.strip():
        raise AnnotationError(source, index, f"video_id must be a non-empty string, got {video_id!r}")
    if video_id != video_id.strip():
        raise AnnotationError(source, index, f"video_id {video_id!r} has leading/trailing whitespace")
    bad = [s for s in ("/", "\\", "\x00") if s in video_id]
    if os.sep not in ("/", "\\") and os.sep in video_id:  # pragma: no cover - exotic platforms
        bad.append(os.sep)
    if bad or ".." in video_id or video_id == ".":
        raise AnnotationError(
            source, index, f"video_id {video_id!r} is not a plain file stem (path separators and '..' are rejected)"
        )
    return video_id


def _opt_str(record: Mapping[str, Any], name: str, source: PathLike, index: Optional[int]) -> Optional[str]:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise AnnotationError(source, index, f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def parse_record(record: Any, source: PathLike, index: Optional[int], split: Optional[str] = None) -> Annotation:
    """Validate one raw JSON record. `split` (from a per-split file) must match the record's own.

    source/index name the record in errors (index None: `source` alone names it, as for a
    shard member).
    """
    if not isinstance(record, dict):
        raise AnnotationError(source, index, f"expected a JSON object, got {type(record).__name__}")
    for key in record:
        near = None if key in RECORD_FIELDS else nearest(str(key).lower(), RECORD_FIELDS, _NEAR_MISS)
        if near is not None:
            raise AnnotationError(source, index, f"video_id {record.get('video_id')!r}: unknown field {key!r}; "
                                                 f"did you mean {near!r}? (the record would be read without it)")
    video_id = check_video_id(record.get("video_id"), source, index)
    rec_split = record.get("split")
    if rec_split is not None and not isinstance(rec_split, str):
        raise AnnotationError(source, index, f"field 'split' must be a string, got {rec_split!r}")
    if split is not None and rec_split is not None and rec_split != split:
        raise AnnotationError(source, index, f"record says split {rec_split!r} but the file is for split {split!r}")
    final_split = split or rec_split
    if not final_split:
        raise AnnotationError(source, index, "missing 'split' (needed when all splits share one file)")
    emotion = record.get("emotion")
    if emotion is not None:
        if not isinstance(emotion, str) or not emotion.strip():
            raise AnnotationError(source, index, f"field 'emotion' must be a non-empty string, got {emotion!r}")
        emotion = emotion.strip().lower()
    elif final_split not in UNLABELED_SPLITS:
        raise AnnotationError(
            source, index, f"missing 'emotion' (only {sorted(UNLABELED_SPLITS)} splits may be unlabeled)"
        )
    evidence_raw = record.get("evidence") or {}
    if not isinstance(evidence_raw, dict):
        raise AnnotationError(source, index, f"field 'evidence' must be an object, got {type(evidence_raw).__name__}")
    evidence: dict[str, str] = {}
    for key, value in evidence_raw.items():
        if key not in EXPERT_ORDER:
            raise AnnotationError(source, index, f"evidence key {key!r} is not one of {list(EXPERT_ORDER)}")
        if value is None:
            continue
        if not isinstance(value, str):
            raise AnnotationError(source, index, f"evidence[{key!r}] must be a string, got {type(value).__name__}")
        if value.strip():
            evidence[key] = value.strip()
    valence = record.get("valence")
    if valence is not None:
        if isinstance(valence, bool) or not isinstance(valence, (int, float)):
            raise AnnotationError(source, index, f"field 'valence' must be a number, got {valence!r}")
        valence = float(valence)
    return Annotation(
        video_id=video_id,
        split=final_split,
        emotion=emotion,
        sentiment=_opt_str(record, "sentiment", source, index),
        text=_opt_str(record, "text", source, index),
        evidence=evidence,
        reasoning=_opt_str(record, "reasoning", source, index),
        answer=_opt_str(record, "answer", source, index),
        valence=valence,
        source=str(source),
        index=index,
    )


def _read_json_list(path: PathLike) -> list[Any]:
    path = Path(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise AnnotationError(path, None, "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, None, f"unreadable ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, list):
        raise AnnotationError(path, None, f"expected a JSON list of records, got {type(data).__name__}")
    return data


def load_annotation_file(path: PathLike, split: Optional[str] = None) -> list[Annotation]:
    """All records of one JSON file (for one `split` if given). Duplicate ids per split are errors."""
    records = [parse_record(r, path, i, split) for i, r in enumerate(_read_json_list(path))]
    seen: dict[tuple[str, str], int] = {}
    for rec in records:
        key = (rec.split, rec.video_id)
        if key in seen:
            raise AnnotationError(
                path, rec.index, f"duplicate video_id {rec.video_id!r} in split {rec.split!r} (first at record {seen[key]})"
            )
        seen[key] = rec.index
    return records


def order_splits(names: Sequence[str]) -> list[str]:
    """train, val, test first (when present), then any other split names sorted."""
    present = set(names)
    return [s for s in SPLIT_ORDER if s in present] + sorted(present - set(SPLIT_ORDER))


def load_annotations(storage: Union[PathLike, Mapping[str, PathLike]],
                     splits: Optional[Sequence[str]] = SPLIT_ORDER) -> dict[str, list[Annotation]]:
    """Records grouped by split.

    storage: one JSON file whose records carry `split`, or a mapping split -> JSON file.
    splits: the split names a record (or a mapping key) may carry; None allows any name. A clip
    (video_id) in two splits is an error either way.
    """
    by_split: dict[str, list[Annotation]] = {}
    if isinstance(storage, Mapping):
        for split, path in storage.items():
            if splits is not None and str(split) not in splits:
                raise AnnotationError(path, None, _unknown_split(str(split), splits, "this file's split"))
            by_split[str(split)] = load_annotation_file(path, str(split))
    else:
        for rec in load_annotation_file(storage):
            if splits is not None and rec.split not in splits:
                raise AnnotationError(rec.source, rec.index,
                                      _unknown_split(rec.split, splits, f"video_id {rec.video_id!r}: split"))
            by_split.setdefault(rec.split, []).append(rec)
    _check_disjoint(by_split)
    return {s: by_split[s] for s in order_splits(list(by_split))}


def _unknown_split(name: str, splits: Sequence[str], what: str) -> str:
    near = nearest(name, list(splits), cutoff=0.6)
    hint = f"; did you mean {near!r}?" if near else ""
    return (f"{what} {name!r} is not one of the configured splits ({', '.join(splits)}){hint} "
            "(list other split names in the dataset config's `splits`)")


def _check_disjoint(by_split: Mapping[str, Sequence[Annotation]]) -> None:
    """A clip in two splits leaks between them (trained on, then scored as unseen): an error at its second record."""
    first: dict[str, Annotation] = {}
    for records in by_split.values():
        for rec in records:
            seen = first.setdefault(rec.video_id, rec)
            if seen.split != rec.split:
                raise AnnotationError(rec.source, rec.index, f"video_id {rec.video_id!r} is in split {rec.split!r} "
                                      f"and also in split {seen.split!r} ({seen.where()}): one clip in two splits "
                                      "leaks between them")


# ------------------------------------------------------------------ MER2023/2024 CSV


def sentiment_from_valence(valence: Optional[float]) -> Optional[str]:
    """MER valence (about -5..5) -> positive / negative / neutral."""
    if valence is None:
        return None
    if valence > 0:
        return "positive"
    if valence < 0:
        return "negative"
    return "neutral"


def mer_csv_to_records(path: PathLike, split: str) -> list[dict[str, Any]]:
    """Read a MER2023/2024 label CSV (`name, discrete, valence`) into annotation records.

    `discrete` may be empty for an unlabeled test split; `valence` is optional.
    """
    path = Path(path)
    try:
        fh = open(path, "r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise AnnotationError(path, None, f"cannot open ({exc.strerror or exc})") from exc
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "name" not in header:
            raise AnnotationError(path, None, f"CSV header must have a 'name' column, got {header}")
        if "discrete" not in header and split not in UNLABELED_SPLITS:
            raise AnnotationError(path, None, f"CSV header must have a 'discrete' column, got {header}")
        out: list[dict[str, Any]] = []
        for i, row in enumerate(reader):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            rec: dict[str, Any] = {"video_id": row.get("name", ""), "split": split}
            if row.get("discrete"):
                rec["emotion"] = row["discrete"].lower()
            valence_text = row.get("valence", "")
            if valence_text:
                try:
                    valence = float(valence_text)
                except ValueError as exc:
                    raise AnnotationError(path, i, f"valence {valence_text!r} is not a number") from exc
                rec["valence"] = valence
                rec["sentiment"] = sentiment_from_valence(valence)
            parse_record(rec, path, i)  # same validation as the JSON loader
            out.append(rec)
    return out


def carve_validation(records: list[dict[str, Any]], fraction: float, seed: int) -> None:
    """Move a seeded random `fraction` of the train records to split `val` (in place)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {fraction}")
    train = [r for r in records if r["split"] == "train"]
    n_val = int(round(len(train) * fraction))
    for rec in random.Random(seed).sample(train, n_val):
        rec["split"] = "val"
