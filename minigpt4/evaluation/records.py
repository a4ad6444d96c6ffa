"""The pieces of `hero-eval` (`minigpt4/cli/evaluate.py`) that do not need a model: prediction
records, the split of a dataset across ranks and the gathering back on rank 0, output paths and
atomic writers.

Sharding contract: rank `r` of `w` evaluates dataset indices `r, r + w, r + 2w, ...`
(disjoint, covering, no padding), its records travel to rank 0 with
`torch.distributed.gather_object`, and `merge_records` puts them back in dataset order,
drops exact repeats of a video_id and refuses a result where an expected clip is missing
or an unexpected one appears, so no clip is lost or counted twice.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

from minigpt4.common.atomic_io import atomic_open

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
WEIGHTS_PNG = "modality_weights.png"
# The keys of one line of predictions.jsonl, in the order they are written.
RECORD_KEYS: tuple[str, ...] = (
    "video_id", "gold_emotion", "pred_emotion", "correct", "confidence", "format_ok", "parse_error",
    "prediction_source", "report", "evidence", "evidence_source", "transcript", "modality_weights", "synergy_score", "golden_evidence",
    "head_emotion", "head_confidence", "confidence_source", "label_probs",
)


class GatherError(RuntimeError):
    """The gathered predictions do not cover the evaluated split exactly once."""


# ------------------------------------------------------------------------- records
def _gold(label: Any) -> Optional[str]:
    """The batch's `emotion_label` -> gold label, None for unlabeled clips (`unknown`)."""
    if label is None:
        return None
    text = str(label).strip()
    return None if text == "" or text.lower() == "unknown" else text


def _float_or_none(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def make_record(
    video_id: str,
    gold_emotion: Optional[str],
    output: Mapping[str, Any],
    prediction_source: str = "report",
    parse_error: Optional[str] = None,
    golden_evidence: Optional[Mapping[str, str]] = None,
    transcript: Optional[str] = None,
) -> dict[str, Any]:
    """One predictions.jsonl line from one item of `model.generate` (or the classifier path).

    `output` holds report, emotion, confidence, format_ok, evidence, modality_weights and
    synergy_score (docs/ARCHITECTURE.md); absent optional fields become null.
    `golden_evidence` is the annotation's sentence per expert (`{}` if none), kept next to the
    model's `evidence` (and its `evidence_source` per expert: measured / generated / none) so the
    evidence decoder can be scored from the file alone; `transcript` is what the prompt quoted.
    """
    if "emotion" not in output:
        raise KeyError(f"prediction for {video_id!r} has no 'emotion' (keys: {sorted(output)})")
    gold = _gold(gold_emotion)
    pred = str(output["emotion"])
    weights = output.get("modality_weights")
    fmt = output.get("format_ok")
    record = {
        "video_id": str(video_id),
        "gold_emotion": gold,
        "pred_emotion": pred,
        "correct": None if gold is None else pred.strip().lower() == gold.lower(),
        "confidence": _float_or_none(output.get("confidence")),
        "format_ok": None if fmt is None else bool(fmt),
        "parse_error": parse_error,
        "prediction_source": prediction_source,
        "report": output.get("report"),
        "evidence": dict(output.get("evidence") or {}),
        "evidence_source": dict(output.get("evidence_source") or {}),
        "transcript": transcript,
        "modality_weights": None if weights is None else {str(k): float(v) for k, v in weights.items()},
        "synergy_score": _float_or_none(output.get("synergy_score")),
        "golden_evidence": {str(k): str(v) for k, v in (golden_evidence or {}).items() if v is not None},
        "head_emotion": None if output.get("head_emotion") is None else str(output["head_emotion"]),
        "head_confidence": _float_or_none(output.get("head_confidence")),
        # where `confidence` comes from: "head" (the classification head's probability of the
        # predicted label, also printed in the report) or "report" (the number the LLM wrote)
        "confidence_source": output.get("confidence_source"),
        "label_probs": None if output.get("label_probs") is None
        else {str(k): float(v) for k, v in output["label_probs"].items()},
    }
    return record


def records_from_batch(
    batch: Mapping[str, Any],
    outputs: Sequence[Mapping[str, Any]],
    prediction_source: str = "report",
    label_names: Optional[Sequence[str]] = None,
    use_cot: bool = True,
) -> list[dict[str, Any]]:
    """Pair a collated batch with the model's per-clip outputs (checked: same clips, same order).

    For reports that failed to parse, the parser's reason is recorded in `parse_error`; the
    batch's `evidence` (golden sentences) goes to `golden_evidence`.
    """
    ids = list(batch["video_id"])
    if len(outputs) != len(ids):
        raise ValueError(f"the model returned {len(outputs)} predictions for a batch of {len(ids)} clips")
    golds = list(batch.get("emotion_label") or [None] * len(ids))
    goldens = list(batch.get("evidence") or [None] * len(ids))
    if len(goldens) != len(ids):
        raise ValueError(f"the batch has {len(goldens)} evidence entries for {len(ids)} clips")
    # only annotated sentences are references; measured ones are the model's input
    sources = list(batch.get("evidence_source") or [None] * len(ids))
    goldens = [None if ev is None else {k: v for k, v in ev.items() if (src or {}).get(k, "annotated") == "annotated"}
               for ev, src in zip(goldens, sources)]
    transcripts = list(batch.get("transcript") or [None] * len(ids))
    records = []
    for vid, gold, golden, out, words in zip(ids, golds, goldens, outputs, transcripts):
        if "video_id" in out and str(out["video_id"]) != str(vid):
            raise ValueError(f"prediction for {out['video_id']!r} came back in the slot of {vid!r}")
        error = None
        if out.get("format_ok") is False and isinstance(out.get("report"), str):
            from minigpt4.common.cot import parse_report

            error = parse_report(out["report"], label_names, require_header=use_cot).error
        # the model says what its prompt quoted; a model that does not say: the batch's transcript
        records.append(make_record(vid, gold, out, prediction_source, error, golden, out.get("transcript", words)))
    return records


# ------------------------------------------------------------------------ sharding
def shard_indices(length: int, rank: int, world_size: int) -> list[int]:
    """Dataset indices rank `rank` of `world_size` evaluates: `rank::world_size` (no padding)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad shard: rank {rank} of world size {world_size}")
    if length < 0:
        raise ValueError(f"dataset length must be >= 0, got {length}")
    return list(range(rank, length, world_size))


def gather_records(records: list[dict[str, Any]], dst: int = 0) -> Optional[list[list[dict[str, Any]]]]:
    """Every rank's record list on rank `dst` (`[rank0_records, rank1_records, ...]`), None elsewhere.

    Single process (no process group): `[records]`. Records must be picklable plain data
    (strings, numbers, lists, dicts); they are sent with `torch.distributed.gather_object`,
    which every rank must call.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [list(records)]
    world = dist.get_world_size()
    rank = dist.get_rank()
    bucket: Optional[list[Any]] = [None] * world if rank == dst else None
    dist.gather_object(list(records), bucket, dst=dst)
    return bucket if rank == dst else None


def merge_records(
    per_rank: Sequence[Sequence[Mapping[str, Any]]],
    expected_ids: Optional[Sequence[str]] = None,
) -> tuple[list[dict[str, Any]], int]:
    """One record per clip, in `expected_ids` order (else sorted by video_id); returns (records, dropped).

    A video_id seen more than once keeps its first record (lowest rank) and counts in
    `dropped` (a padded sampler repeats clips). With `expected_ids`, every expected clip must
    be present and no other may be: otherwise `GatherError` names the first offenders.
    """
    merged: dict[str, dict[str, Any]] = {}
    dropped = 0
    for rank, records in enumerate(per_rank):
        for rec in records:
            vid = str(rec["video_id"])
            if vid in merged:
                dropped += 1
                continue
            merged[vid] = dict(rec)
    if dropped:
        logger.warning("%d repeated prediction(s) dropped while merging ranks (kept the first of each video_id)", dropped)
    if expected_ids is None:
        return [merged[v] for v in sorted(merged)], dropped
    expected = [str(v) for v in expected_ids]
    if len(set(expected)) != len(expected):
        seen: set[str] = set()
        repeats = [v for v in expected if v in seen or seen.add(v)]  # type: ignore[func-returns-value]
        raise GatherError(f"the evaluated split lists video_id(s) more than once: {repeats[:5]}")
    missing = [v for v in expected if v not in merged]
    extra = sorted(set(merged) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} clip(s) without a prediction (first: {missing[:5]})")
        if extra:
            parts.append(f"{len(extra)} prediction(s) for clips outside the split (first: {extra[:5]})")
        raise GatherError("gathered predictions do not cover the split exactly once: " + "; ".join(parts))
    return [merged[v] for v in expected], dropped


# ------------------------------------------------------------------------ writers
def jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy/torch scalars -> numbers, non-finite floats -> None, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        return jsonable(item())
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _atomic_write(path: PathLike, chunks: Iterable[str]) -> Path:
    path = Path(path)
    with atomic_open(path, "w") as fh:
        for chunk in chunks:
            fh.write(chunk)
    return path


def write_jsonl(path: PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object per line (UTF-8, no NaN), written to a temp file then renamed into place."""
    return _atomic_write(path, (json.dumps(jsonable(r), ensure_ascii=False, allow_nan=False) + "\n"
                                for r in records))


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; an invalid line is an error naming the file and line."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            out.append(obj)
    return out


def write_json(path: PathLike, data: Any) -> Path:
    """Pretty JSON (no NaN: non-finite numbers become null), atomically."""
    return _atomic_write(path, [json.dumps(jsonable(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"])


# --------------------------------------------------------------------- out paths
def run_dir_of(checkpoint: PathLike) -> Path:
    """The run folder a checkpoint belongs to.

    `<run>/checkpoints/ckpt_X/` or a file in it -> `<run>`; a run folder -> itself; any other
    weights folder or file -> its folder.
    """
    path = Path(checkpoint).resolve()
    folder = path.parent if path.is_file() else path
    if folder.parent.name == "checkpoints" and folder.name.startswith("ckpt_"):
        return folder.parent.parent
    if folder.name == "checkpoints":
        return folder.parent
    return folder


def condition_tag(missing: Sequence[str] = (), no_cot: bool = False, use_cls_head: bool = False,
                  no_brief: bool = False, calibrated: bool = False, unfinished: bool = False,
                  uncalibrated: bool = False) -> str:
    """Suffix naming an eval variant: '' (plain), '_missing-audio+text', '_nocot', '_clshead',
    '_nobrief', '_calibrated', '_unfinished', '_uncalibrated' (combined in that order, e.g.
    '_missing-audio_nocot_nobrief')."""
    tag = ""
    if missing:
        tag += "_missing-" + "+".join(missing)
    if use_cls_head:
        tag += "_clshead"
    elif no_cot:
        tag += "_nocot"
    if no_brief and not use_cls_head:  # the classification head reads no brief
        tag += "_nobrief"
    if calibrated:
        tag += "_calibrated"
    if unfinished:
        tag += "_unfinished"
    if uncalibrated:
        tag += "_uncalibrated"
    return tag


def default_out_dir(checkpoint: PathLike, split: str, missing: Sequence[str] = (), no_cot: bool = False,
                    use_cls_head: bool = False, no_brief: bool = False, calibrated: bool = False,
                    unfinished: bool = False, uncalibrated: bool = False) -> Path:
    """`<run_dir>/eval_<split><variant>/`, so variants of one run never overwrite each other."""
    tag = condition_tag(missing, no_cot, use_cls_head, no_brief, calibrated, unfinished, uncalibrated)
    return run_dir_of(checkpoint) / f"eval_{split}{tag}"


def parse_modalities(text: Optional[str], valid: Sequence[str]) -> list[str]:
    """`--missing audio,text` -> ['audio', 'text'] (order of `valid`); unknown names are an error."""
    if text is None:
        return []
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not names:
        raise ValueError("--missing needs at least one modality name")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"--missing: unknown modality {unknown}; choose from {', '.join(valid)}")
    if len(set(names)) == len(valid):
        raise ValueError("--missing would remove every modality; keep at least one")
    return [v for v in valid if v in names]


def iter_batches_with_progress(loader: Iterable[Any], total: Optional[int], enabled: bool, desc: str) -> Iterator[Any]:
    """`loader` wrapped in a tqdm bar (counting clips would need the batch; this counts batches)."""
    from tqdm.auto import tqdm

    with tqdm(loader, total=total, desc=desc, disable=not enabled, dynamic_ncols=True) as bar:
        yield from bar
