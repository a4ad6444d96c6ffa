"""MERR annotations (Emotion-LLaMA's label lists, captions and transcripts) -> HERO annotation records.

Inputs, in the shapes Emotion-LLaMA's dataset code reads them:
- label lists (`MERR_coarse_grained.txt`, `MERR_fine_grained.txt`, MER train/test lists): one
  clip per line, `name frames emotion`, separated by spaces;
- `MERR_coarse_grained.json`: an object keyed by clip name, each value an object whose
  `caption` is the templated description (visual expression, audio tone, words);
- `MERR_fine_grained.json`: the same, with `smp_reason_caption`, the LLM-written reasoning
  (released files also hold `visual_prior_list`, `audio_prior_list`, `text`, ...);
- a transcript CSV (see `sources.read_transcripts`).

Each labelled clip becomes `{"video_id", "emotion", "split", "reasoning"?, "text"?, "evidence"?}`
(README "2. Labels"). The caption becomes the CoT target's rationale; a clip without one is
label-only, which HERO accepts as it is. Errors name the file and line (the clip in a JSON file).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from minigpt4.datasets.annotations import AnnotationError, SPLIT_ORDER, check_video_id, parse_record
from minigpt4.datasets.importers.sources import SourceError, Transcripts

PathLike = Union[str, "os.PathLike[str]"]

# Emotion-LLaMA's nine MERR labels, in its order (the first six are MER's and HERO's default set).
MERR_LABELS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise", "fear", "contempt", "doubt")
COARSE_FIELD = "caption"
FINE_FIELD = "smp_reason_caption"
# Fine-grained fields that are per-expert cues: golden evidence with `priors_as_evidence`.
PRIOR_FIELDS: dict[str, str] = {"visual_prior_list": "visual", "audio_prior_list": "audio"}
REASONING_MODES: tuple[str, ...] = ("fine", "coarse", "both")


@dataclass(frozen=True)
class LabelLine:
    """One clip of a label list and where it was read (for errors)."""

    name: str
    emotion: str
    split: str
    path: str
    line: int


def parse_labels_arg(item: str, default_split: str = "train") -> tuple[str, str]:
    """`FILE[:SPLIT]` -> (file, split); a colon inside a folder name is left alone."""
    path, sep, split = item.rpartition(":")
    if sep and path and split and "/" not in split and "\\" not in split:
        return path, split
    return item, default_split


def read_label_list(path: PathLike, split: str, allowed: Sequence[str]) -> list[LabelLine]:
    """A `name frames emotion` list. Wrong field counts, a non-integer frame count, an emotion
    outside `allowed` or an unsafe name are errors at their line; blank lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, f"cannot read ({exc})") from exc
    out: list[LabelLine] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise SourceError(path, f"{len(fields)} field(s) {fields}: expected 'name frames emotion'", line=n)
        name, frames, emotion = fields
        if not frames.isdigit():
            raise SourceError(path, f"frame count {frames!r} is not a non-negative integer "
                                    "(expected 'name frames emotion')", line=n)
        emotion = emotion.lower()
        if emotion not in allowed:
            raise SourceError(path, f"emotion {emotion!r} is not one of the allowed labels {list(allowed)} "
                                    "(widen them with --labels_allowed)", line=n)
        try:
            check_video_id(name, path, None)
        except AnnotationError as exc:
            raise SourceError(path, exc.problem, line=n) from None
        out.append(LabelLine(name, emotion, split, str(path), n))
    return out


def check_unique(lines: Sequence[LabelLine]) -> None:
    """A clip listed twice (in one list or two) is an error at its second line."""
    first: dict[str, LabelLine] = {}
    for ln in lines:
        seen = first.setdefault(ln.name, ln)
        if seen is not ln:
            raise SourceError(ln.path, f"clip {ln.name!r} is listed twice (first at {seen.path}:{seen.line})",
                              line=ln.line)


def _no_duplicate_keys(path: PathLike) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A json `object_pairs_hook` refusing a key twice in one object (json.load keeps the last silently)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise SourceError(path, f"key {key!r} appears twice in one object (JSON keeps only the last)")
            out[key] = value
        return out
    return hook


def read_merr_json(path: PathLike) -> dict[str, dict[str, Any]]:
    """A MERR JSON file -> {clip: entry}. The released shape is an object keyed by clip name;
    a list of objects carrying `name` (or `video_id`) is read too."""
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            data = json.load(fh, object_pairs_hook=_no_duplicate_keys(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, f"cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise SourceError(path, f"invalid JSON ({exc.msg}, column {exc.colno})", line=exc.lineno) from exc
    if isinstance(data, list):
        keyed: dict[str, Any] = {}
        for i, entry in enumerate(data):
            name = entry.get("name", entry.get("video_id")) if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                raise SourceError(path, f"list entry {i} has no 'name' (or 'video_id') string")
            if name in keyed:
                raise SourceError(path, f"listed twice (entries {list(keyed).index(name)} and {i})", item=name)
            keyed[name] = entry
        data = keyed
    if not isinstance(data, dict):
        raise SourceError(path, f"expected an object keyed by clip name, got {type(data).__name__}")
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise SourceError(path, f"expected an object per clip, got {type(entry).__name__}", item=name)
    return data


def _text(value: Any, path: PathLike, name: str, field: str) -> Optional[str]:
    """A caption or cue: a string, or a list of strings (joined by ', '); blank -> None."""
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ", ".join(v.strip() for v in value if v.strip())
    if not isinstance(value, str):
        raise SourceError(path, f"field {field!r} must be a string, got {type(value).__name__}", item=name)
    return " ".join(value.split()) or None


def captions(entries: Mapping[str, Mapping[str, Any]], path: PathLike, field: str) -> dict[str, str]:
    """{clip: the entry's `field`}, clips whose field is absent or blank left out."""
    out = {}
    for name, entry in entries.items():
        text = _text(entry.get(field), path, name, field)
        if text:
            out[name] = text
    return out


def reasoning_for(coarse: Optional[str], fine: Optional[str], mode: str) -> Optional[str]:
    """`fine`: the fine-grained reasoning, else the coarse caption; `coarse`: the reverse;
    `both`: the caption, then the reasoning."""
    if mode == "fine":
        return fine or coarse
    if mode == "coarse":
        return coarse or fine
    if mode == "both":
        return " ".join(t for t in (coarse, fine) if t) or None
    raise ValueError(f"reasoning mode must be one of {REASONING_MODES}, got {mode!r}")


def build_records(
    lines: Sequence[LabelLine],
    coarse: Optional[tuple[str, Mapping[str, Mapping[str, Any]]]] = None,
    fine: Optional[tuple[str, Mapping[str, Mapping[str, Any]]]] = None,
    transcripts: Optional[Transcripts] = None,
    reasoning: str = "fine",
    priors_as_evidence: bool = False,
) -> list[dict[str, Any]]:
    """One record per label line, in input order. `coarse` / `fine`: (file, read_merr_json's
    result). `text` is the CSV's sentence, else the fine entry's `text`; `evidence` (with
    `priors_as_evidence`) the fine entry's visual / audio cue lists, else the coarse entry's."""
    check_unique(lines)
    c_path, c_entries = coarse or ("", {})
    f_path, f_entries = fine or ("", {})
    c_caps = captions(c_entries, c_path, COARSE_FIELD)
    f_caps = captions(f_entries, f_path, FINE_FIELD)
    records: list[dict[str, Any]] = []
    for ln in lines:
        rec: dict[str, Any] = {"video_id": ln.name, "emotion": ln.emotion, "split": ln.split}
        why = reasoning_for(c_caps.get(ln.name), f_caps.get(ln.name), reasoning)
        if why:
            rec["reasoning"] = why
        text = transcripts.texts.get(ln.name) if transcripts is not None else None
        if not text and ln.name in f_entries:
            text = _text(f_entries[ln.name].get("text"), f_path, ln.name, "text")
        if text:
            rec["text"] = text
        if priors_as_evidence:
            evidence = {}
            for field, expert in PRIOR_FIELDS.items():
                for path, entries in ((f_path, f_entries), (c_path, c_entries)):
                    cue = _text(entries.get(ln.name, {}).get(field), path, ln.name, field)
                    if cue:
                        evidence[expert] = cue
                        break
            if evidence:
                rec["evidence"] = evidence
        try:  # HERO's own record checks, before anything is written
            parse_record(rec, ln.path, None)
        except AnnotationError as exc:
            raise SourceError(ln.path, exc.problem, line=ln.line) from None
        records.append(rec)
    return records


def parse_fractions(text: str) -> dict[str, float]:
    """`val=0.1,test=0.1` -> {"val": 0.1, "test": 0.1}; each in (0, 1), their sum < 1."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not name.strip() or not 0.0 < frac < 1.0:
            raise ValueError(f"--split_fraction {part!r}: expected SPLIT=FRACTION with 0 < FRACTION < 1")
        if name.strip() == "train" or name.strip() in out:
            raise ValueError(f"--split_fraction {part!r}: name each split once, and not 'train' (the pool)")
        out[name.strip()] = frac
    if not out or sum(out.values()) >= 1.0:
        raise ValueError(f"--split_fraction {text!r}: give at least one split, fractions summing to < 1")
    return out


def _allocate(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """`total` spread over the groups in proportion to their sizes (largest remainder, ties by name)."""
    n = sum(sizes.values())
    exact = {k: total * s / n if n else 0.0 for k, s in sizes.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(sizes, key=lambda k: (-(exact[k] - out[k]), k))[: total - sum(out.values())]:
        out[k] += 1
    return out


def carve_splits(records: list[dict[str, Any]], fractions: Mapping[str, float], seed: int) -> None:
    """Move a seeded, emotion-stratified share of the `train` records to each split (in place):
    split s takes round(fraction_s x train records) clips, each emotion giving its share of them
    (largest-remainder rounding), drawn at random within the emotion."""
    pool = [r for r in records if r["split"] == "train"]
    if not pool:
        raise ValueError("--split_fraction: there are no train records to draw from")
    rng = random.Random(seed)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for rec in pool:
        by_label.setdefault(rec["emotion"], []).append(rec)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])
    for split, frac in fractions.items():
        sizes = {k: len(v) for k, v in by_label.items()}
        want = min(int(len(pool) * frac + 0.5), sum(sizes.values()))
        for label, k in _allocate(sizes, want).items():
            for rec in by_label[label][:k]:
                rec["split"] = split
            by_label[label] = by_label[label][k:]


def label_set(records: Sequence[Mapping[str, Any]], allowed: Sequence[str]) -> list[str]:
    """The labels that occur, in the allowed list's order (so MER's six keep HERO's default indices)."""
    present = {r["emotion"] for r in records}
    return [label for label in allowed if label in present]


def split_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """{split: {emotion: clips}}, splits in HERO's order."""
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        per = out.setdefault(rec["split"], {})
        per[rec["emotion"]] = per.get(rec["emotion"], 0) + 1
    order = [s for s in SPLIT_ORDER if s in out] + sorted(set(out) - set(SPLIT_ORDER))
    return {s: dict(sorted(out[s].items())) for s in order}


def train_options(labels: Sequence[str], annotations: PathLike) -> list[str]:
    """`--options` for train_hero.py: the label set (model and dataset) and the labels file."""
    names = "[" + ", ".join(labels) + "]"
    return [f"model.label_names={names}", f"datasets.hero_dataset.label_names={names}",
            f"datasets.hero_dataset.build_info.annotations.storage={annotations}"]
