"""Which videos a run extracts: the listing (ids are file stems) and the skip-existing check."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def list_videos(video_dir: Optional[str] = None, video_list: Optional[str] = None) -> list[tuple[str, Path]]:
    """(video_id, path) pairs, sorted by id; duplicate ids are an error (they would overwrite each other)."""
    from minigpt4.extraction.video_io import VIDEO_EXTENSIONS

    if video_dir is not None:
        root = Path(video_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"--video_dir {root} is not a folder")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    else:
        lst = Path(video_list)
        if not lst.is_file():
            raise FileNotFoundError(f"--video_list {lst} does not exist")
        paths = []
        for line in lst.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            paths.append(p if p.is_absolute() else lst.parent / p)
    seen: dict[str, Path] = {}
    for p in paths:
        vid = p.stem
        if vid in seen:
            raise ValueError(f"two videos share the id {vid!r}: {seen[vid]} and {p} (ids are file stems)")
        seen[vid] = p
    return sorted(seen.items())


def existing_covers(path: Path, modalities: Sequence[str]) -> bool:
    """True when `path` is a readable feature file made for (at least) these modalities
    (settings not compared: the extractor uses rerun.reason_to_redo)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "meta_modalities" not in z.files:
                    return False
                have = str(z["meta_modalities"][()])
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as fh:
                have = (fh.metadata() or {}).get("meta_modalities", "")
    except Exception:  # unreadable: extract it again
        return False
    return set(modalities) <= set(have.split(","))
