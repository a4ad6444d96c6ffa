"""`<run_dir>/extraction.json`: how the run's training features were extracted.

Why: a trained run is only usable on new videos if they are turned into features exactly as its
training clips were (same encoders, rates, layers). `scripts/extract_features.py` records those
settings in every file (`meta_settings`, `minigpt4/extraction/rerun.py`); training copies them
from its first training file that has them into the run folder, where inference
(`hero-infer`) reads them back. Nothing is written when the features were not extracted (the
synthetic demo's files carry no settings).

File content: `{"settings": {modality: {key: value}}, "modalities": [...], "extractor": str,
"source_file": str}` (`settings` exactly as `meta_settings` holds it).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from minigpt4.common.atomic_io import atomic_write_json

logger = logging.getLogger(__name__)

EXTRACTION_FILE = "extraction.json"
# files read when looking for settings: a corpus whose first files have none was not extracted
MAX_FILES_SCANNED = 64


def feature_paths(dataset: Any) -> Iterator[Path]:
    """Feature files of a folder dataset (`HERODataset.paths`), through a ConcatDataset too;
    nothing for datasets without file paths (webdataset shards)."""
    parts = getattr(dataset, "datasets", None)
    if parts is not None:
        for part in parts:
            yield from feature_paths(part)
        return
    for path in getattr(dataset, "paths", None) or []:
        yield Path(path)


def settings_from_files(paths: Iterator[Path], limit: int = MAX_FILES_SCANNED) -> Optional[dict[str, Any]]:
    """extraction.json's content from the first of `paths` (at most `limit` read) that records
    `meta_settings`, or None when none does."""
    from minigpt4.datasets.feature_io import FeatureFileError, read_features
    from minigpt4.extraction.rerun import SETTINGS_META

    for n, path in enumerate(paths):
        if n >= limit:
            break
        try:
            meta = read_features(path, max_dim=1 << 30, dtype=None).meta
            raw = meta.get(SETTINGS_META)
            if not raw:
                continue
            settings = json.loads(raw)
        except (FeatureFileError, ValueError, OSError) as exc:  # ValueError: bad JSON; training reports bad files
            logger.debug("no extraction settings from %s: %s", path, exc)
            continue
        if not isinstance(settings, dict):
            continue
        modalities = [m for m in str(meta.get("modalities", "")).split(",") if m] or list(settings)
        return {"settings": settings, "modalities": modalities, "extractor": str(meta.get("extractor", "")),
                "source_file": str(path)}
    return None


def write_extraction_settings(train_dataset: Any, output_dir: Union[str, Path]) -> Optional[Path]:
    """Write `<output_dir>/extraction.json` from the training files' recorded settings (atomic);
    returns its path, or None when no training file records any (then nothing is written)."""
    record = settings_from_files(feature_paths(train_dataset))
    if record is None:
        logger.info("training features record no extraction settings: %s not written", EXTRACTION_FILE)
        return None
    path = atomic_write_json(Path(output_dir) / EXTRACTION_FILE, record)
    logger.info("extraction settings of %s -> %s", record["source_file"], path)
    return path


def read_extraction_settings(run_dir: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The run's extraction.json, or None when it has none; a damaged file is a ValueError naming it."""
    path = Path(run_dir) / EXTRACTION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ValueError(f"{path}: expected an object with a 'settings' mapping (modality -> settings)")
    return record
