"""The feature file of an evaluated clip, found the way the run found it: through its `config.yaml`.

Why through the config: `predictions.jsonl` names clips, not files, and `hero-eval` read each
clip from `<datasets.*.build_info.images.storage>/<video_id>.npz` (or another feature suffix).
The run folder's `config.yaml` is the resolved config it trained with, so its storage folders
are where the evaluated clips live. A relative folder is taken from the working directory first
(as `hero-train` / `hero-eval` took it), else from the run folder's ancestors, so the app also
works when started from another directory of the same clone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

from minigpt4.datasets.feature_io import find_feature_file

PathLike = Union[str, Path]
RUN_CONFIG = "config.yaml"


def storage_folders(run_dir: PathLike) -> list[str]:
    """Each dataset's `build_info.images.storage` in the run's config.yaml, as written."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run folder's config says where its clips' features are")
    cfg = OmegaConf.load(path)
    found = []
    for name in (cfg.get("datasets") or {}):
        value = OmegaConf.select(cfg, f"datasets.{name}.build_info.images.storage", default=None)
        if isinstance(value, str) and value.strip():
            found.append(value)
    return found


def resolve_folder(value: str, run_dir: PathLike, cwd: Optional[Path] = None) -> Optional[Path]:
    """`value` as an existing folder: absolute as is, relative from `cwd`, then from the run's ancestors."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.is_dir() else None
    bases = [cwd or Path.cwd(), *Path(run_dir).resolve().parents]
    for base in bases:
        if (base / path).is_dir():
            return (base / path).resolve()
    return None


def feature_folders(run_dir: PathLike, cwd: Optional[Path] = None) -> list[Path]:
    """The run's existing feature folders (possibly none: shards, or data moved away)."""
    folders = [resolve_folder(v, run_dir, cwd) for v in storage_folders(run_dir)]
    return list(dict.fromkeys(f for f in folders if f is not None))


def find_clip_features(video_ids: Iterable[str], folders: Iterable[Path]) -> dict[str, Path]:
    """{video_id: feature file} for every clip found in one of `folders` (first folder wins)."""
    folders = list(folders)
    found: dict[str, Path] = {}
    for vid in video_ids:
        for folder in folders:
            path = find_feature_file(folder, vid)
            if path is not None:
                found[str(vid)] = path
                break
    return found
