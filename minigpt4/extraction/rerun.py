"""What a rerun finds in the output folder: files it may keep, files it must redo, temp files to remove.

Why: `skip_existing` makes a rerun cheap, but it kept a file made with other settings (another
`visual.fps` or model) or one damaged since it was written, and a run killed with -9 left its
temp files behind. A file is kept only when it reads back whole (the `.npz` members' CRC-32 and
the checksum recorded in `meta_checksum`) and the settings recorded in `meta_settings` equal this
run's for every requested modality.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Sequence

import numpy as np

from minigpt4.extraction.config import bert_path

if TYPE_CHECKING:
    from omegaconf import DictConfig

SETTINGS_META = "settings"
CHECKSUM_META = "checksum"
# Files written before `meta_settings` existed: the meta keys that recorded some settings then.
_LEGACY = {"clip": {"path": "clip_model", "fps": "clip_fps", "output": "clip_output"},
           "videomae": {"path": "videomae_model", "fps": "videomae_fps"},
           "hubert": {"path": "hubert_model", "num_layers": "hubert_layers"},
           "transcript": {"whisper": "whisper_model", "language": "language"},
           "bert": {"path": "bert_model"}}
# atomic_open's temp files: `.<name>.<8 random characters>.tmp` beside the final file.
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def _norm(value: object) -> str:
    """A setting as a comparable string: numbers by value (1, 1.0 and "1.0" are equal)."""
    try:
        return repr(float(value)) if not isinstance(value, bool) else str(value)
    except (TypeError, ValueError):
        return str(value)


def modality_settings(cfg: "DictConfig", modalities: Sequence[str]) -> dict[str, dict[str, str]]:
    """The settings each modality's features depend on (model, rates, sizes), from the config alone."""
    dec, text, au = cfg.decode, cfg.text, cfg.au
    speech = {"whisper": text.whisper.path, "language": text.language, "task": text.whisper.task,
              "max_new_tokens": text.whisper.max_new_tokens, "num_beams": text.whisper.num_beams,
              "silence_dbfs": text.whisper.silence_dbfs, "segment_seconds": dec.segment_seconds}
    table = {
        "clip": {"path": cfg.visual.path, "fps": cfg.visual.fps, "output": cfg.visual.output},
        "videomae": {"path": cfg.motion.path, "fps": cfg.motion.fps},
        "hubert": {"path": cfg.audio.path, "num_layers": cfg.audio.num_layers, "fps": cfg.audio.get("fps"),
                   "segment_seconds": dec.segment_seconds},
        "au": {"min_confidence": au.min_confidence, "fps": au.fps if au.fps is not None else cfg.visual.fps},
        "transcript": speech,
        "bert": {**speech, "path": bert_path(cfg), "max_length": text.bert.max_length},
    }
    if "prosody" in modalities:  # pyin's smoothing restarts at each segment: its length matters too
        p = cfg.prosody
        table["prosody"] = {"fps": p.fps, "fmin": p.fmin, "fmax": p.fmax, "resolution": p.resolution,
                            "speech_dbfs": p.speech_dbfs, "speech_bridge": p.speech_bridge,
                            "segment_seconds": dec.segment_seconds}
    if "flow" in modalities:
        table["flow"] = {"fps": cfg.flow.fps, "short_side": cfg.flow.short_side, "method": cfg.flow.method}
    if "scene" in modalities:
        table["scene"] = {"path": cfg.visual.path, "fps": cfg.visual.fps,
                          "prompts": json.dumps([str(x) for x in cfg.visual.scene_prompts], ensure_ascii=False)}
    return {m: {k: _norm(v) for k, v in table[m].items()} for m in modalities if m in table}


def settings_meta(cfg: "DictConfig", modalities: Sequence[str]) -> str:
    """`meta_settings`: modality_settings as canonical JSON (sorted keys), recorded in every file."""
    return json.dumps(modality_settings(cfg, modalities), sort_keys=True, separators=(",", ":"))


def content_checksum(arrays: Mapping[str, np.ndarray], transcript: Optional[str] = None) -> str:
    """`meta_checksum`: sha256 over the arrays as stored (float16) and the transcript.

    The .npz format has a CRC per member, .safetensors nothing: this makes both checkable.
    """
    h = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(np.asarray(arrays[key]).astype(np.float16, copy=False))
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    h.update(b"transcript|" + (transcript or "").encode("utf-8"))  # none and empty read back the same
    return "sha256:" + h.hexdigest()


def _recorded(meta: Mapping[str, str]) -> dict[str, dict[str, str]]:
    if SETTINGS_META in meta:
        return json.loads(meta[SETTINGS_META])
    return {m: {k: _norm(meta[name]) for k, name in keys.items() if name in meta} for m, keys in _LEGACY.items()}


def reason_to_redo(path: Path, modalities: Sequence[str], wanted: Mapping[str, Mapping[str, str]]) -> Optional[str]:
    """None when `path` may be kept for this run; else why it must be extracted again.

    Redo when the file is missing or unreadable (CRC or checksum mismatch), lacks a requested
    modality, or records a different setting for one (e.g. `clip.fps: 1.0 -> 2.0`).
    """
    from minigpt4.datasets.feature_io import FeatureFileError, read_features

    if not path.is_file() or path.stat().st_size == 0:
        return "missing"
    try:
        rec = read_features(path, max_dim=1 << 30, dtype=None)
        meta = rec.meta
        have = set(meta.get("modalities", "").split(","))
        if not set(modalities) <= have:
            return f"made for {meta.get('modalities') or 'no recorded modalities'}"
        if CHECKSUM_META in meta:
            if content_checksum(rec.arrays, rec.transcript) != meta[CHECKSUM_META]:
                return "checksum mismatch (damaged file)"
        recorded = _recorded(meta)
    except (FeatureFileError, ValueError, OSError) as exc:  # ValueError: a bad meta_settings JSON
        return f"unreadable ({exc})"
    for m in modalities:
        old = recorded.get(m, {})
        for key, value in wanted.get(m, {}).items():
            if key in old and old[key] != value:
                return f"{m}.{key}: {old[key]} -> {value}"
            if SETTINGS_META in meta and key not in old:
                return f"{m}.{key}: not recorded"
    return None


def clean_stale_temps(out_dir: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temp files a killed run left for these output file names (only ours: our naming,
    in `out_dir`, regular files); returns what was removed.

    Only this run's names: a concurrent shard writing other videos into the folder keeps its own.
    """
    wanted = set(names)
    removed = []
    try:
        entries = list(os.scandir(out_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and m.group("name") in wanted and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed
