"""How much of each generator cue the trained experts carry: ridge probes on expert summaries.

On the synthetic corpora (`make_demo_data.py`, `make_shift_data.py`) `latents.json` holds each
clip's hidden cue values (`audio_tone`, `motion_gesture`, `face_intensity`, ...). A cue that the
frames carry but the expert's summary does not is lost in frame-level extraction, not in the
decision on top: this probe tells the two apart. Each cue is read by a ridge regression from the
summary of the expert of its modality (by name prefix, `CUE_PREFIXES`), fitted on the train
split and scored (R^2) on another, on the clips where that modality is present. As a reference
the same regression reads the modality's raw frames pooled into [mean, std, slope] per feature
(`frame_statistics`): what a non-neural reader gets from the frames with the same clips.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from minigpt4.common.modalities import EXPERT_ORDER

# latents.json field prefix -> the modality whose expert should carry the cue
CUE_PREFIXES: dict[str, str] = {"audio_": "audio", "motion_": "motion", "visual_": "visual", "face_": "au"}
MIN_TRAIN_ROWS = 8
RIDGE_ALPHA = 1.0


class CueProbeError(ValueError):
    """latents.json is missing, malformed, or holds no cue a probe can read."""


def read_latents(path: Union[str, Path]) -> list[dict[str, Any]]:
    """The records of a generator's latents.json (each needs `video_id`, `split` and `present`)."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CueProbeError(f"{path}: cannot read it ({exc})") from exc
    if not isinstance(records, list) or not records:
        raise CueProbeError(f"{path}: expected a non-empty JSON list of clip records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not all(k in rec for k in ("video_id", "split", "present")):
            raise CueProbeError(f"{path}: record {i} lacks video_id, split or present")
    return records


def cue_fields(records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """cue field -> modality: the numeric (not bool) fields every record has, named by a `CUE_PREFIXES` prefix."""
    out = {}
    for key in records[0]:
        modality = next((m for p, m in CUE_PREFIXES.items() if key.startswith(p)), None)
        if modality is None:
            continue
        if all(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in records):
            out[key] = modality
    return out


def frame_statistics(frames: np.ndarray) -> np.ndarray:
    """[T, D] -> [3D]: per feature the mean, the std and the slope (covariance with time scaled to
    [-1, 1]), the clip-level moments a level, a swing and a rising or falling contour live in."""
    x = np.asarray(frames, dtype=np.float64)
    tau = np.linspace(-1.0, 1.0, x.shape[0]) if x.shape[0] > 1 else np.zeros(1)
    centred = x - x.mean(0)
    return np.concatenate([x.mean(0), x.std(0), (centred * tau[:, None]).mean(0)])


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> Optional[float]:
    """Test R^2 of a standardised ridge regression; None with too few rows or a constant target."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(y_train) < MIN_TRAIN_ROWS or len(y_test) < 2 or np.ptp(y_test) == 0 or np.ptp(y_train) == 0:
        return None
    model = make_pipeline(StandardScaler(), Ridge(alpha=RIDGE_ALPHA)).fit(x_train, y_train)
    return float(model.score(x_test, y_test))


def probe_cues(records: Sequence[Mapping[str, Any]], summaries: Mapping[str, tuple[np.ndarray, np.ndarray, int]],
               train_split: str, test_split: str,
               frames: Optional[Callable[[str, str], Optional[np.ndarray]]] = None) -> dict[str, dict[str, Any]]:
    """Per cue: its modality, the train / test clips probed, `expert_r2` (from the expert's summary)
    and `frames_r2` (from the pooled frames; None without `frames`).

    `summaries`: video_id -> (summaries [6, H], present [6], emotion), as `content_probe.expert_summaries`
    gives; `frames(video_id, modality)` -> [T, D] or None when absent, called once per clip and modality
    (a modality's cues share its pooled frames). Clips without a summary are skipped.
    """
    fields = cue_fields(records)
    if not fields:
        raise CueProbeError(f"no numeric cue field named {sorted(CUE_PREFIXES)}... in the latents")
    pooled_frames: dict[tuple[str, str], Optional[np.ndarray]] = {}  # (video_id, modality): read once for all its cues

    def pooled(vid: str, modality: str) -> Optional[np.ndarray]:
        if (vid, modality) not in pooled_frames:
            arr = frames(vid, modality)
            pooled_frames[vid, modality] = None if arr is None else frame_statistics(arr)
        return pooled_frames[vid, modality]

    out: dict[str, dict[str, Any]] = {}
    for field, modality in fields.items():
        e = EXPERT_ORDER.index(modality)
        rows: dict[str, list[tuple[np.ndarray, Optional[np.ndarray], float]]] = {train_split: [], test_split: []}
        for rec in records:
            split, vid = rec["split"], str(rec["video_id"])
            if split not in rows or vid not in summaries or not summaries[vid][1][e]:
                continue
            rows[split].append((summaries[vid][0][e], None if frames is None else pooled(vid, modality),
                                float(rec[field])))
        tr, te = rows[train_split], rows[test_split]
        y_tr, y_te = np.array([r[2] for r in tr]), np.array([r[2] for r in te])
        expert = ridge_r2(np.stack([r[0] for r in tr]), y_tr, np.stack([r[0] for r in te]), y_te) if tr and te else None
        frames_r2 = None
        if frames is not None and tr and te and all(r[1] is not None for r in tr + te):
            frames_r2 = ridge_r2(np.stack([r[1] for r in tr]), y_tr, np.stack([r[1] for r in te]), y_te)
        out[field] = {"modality": modality, "n_train": len(tr), "n_test": len(te), "expert_r2": expert,
                      "frames_r2": frames_r2}
    return out


def format_table(result: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table of `probe_cues`' result, one cue a line."""
    def num(v: Optional[float]) -> str:
        return "   -" if v is None or not math.isfinite(v) else f"{v:6.3f}"

    lines = [f"{'cue':<18}{'expert':<8}{'clips':>11}  {'R2 summary':>10}  {'R2 frames':>9}"]
    for field, r in result.items():
        lines.append(f"{field:<18}{r['modality']:<8}{r['n_train']:>5}/{r['n_test']:<5}  {num(r['expert_r2']):>10}  "
                     f"{num(r['frames_r2']):>9}")
    return "\n".join(lines)
