"""New videos -> feature files in a work folder, through the extractor `scripts/extract_features.py` runs.

`extract_videos` hands the videos to `minigpt4.extraction.pipeline.extract` (every encoder
loaded once, each file written atomically, a broken video recorded and skipped) and returns a
`ClipInput` per video that gave a feature file, and an `InferenceFailure` (naming the video and
what was wrong) per video that did not.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence, Union

from minigpt4.inference.batches import ClipInput
from minigpt4.inference.results import InferenceFailure

FEATURES_SUBDIR = "features"


def job_ids(paths: Sequence[Path]) -> list[str]:
    """A unique feature-file id per video: its file stem, numbered when two videos share one."""
    seen: dict[str, int] = {}
    ids = []
    for p in paths:
        stem = p.stem or "video"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        ids.append(stem if n == 0 else f"{stem}__{n}")
    return ids


def _failure_reasons(path: Path) -> dict[str, str]:
    """failures.jsonl -> {video_id: reason} (empty when the run had none)."""
    if not path.is_file():
        return {}
    reasons = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            reasons[str(rec.get("video_id"))] = str(rec.get("reason"))
    return reasons


def extract_videos(plan: Any, paths: Sequence[Union[str, Path]], work_dir: Union[str, Path],
                   device: str) -> tuple[list[ClipInput], list[InferenceFailure], float]:
    """Extract `paths` into `<work_dir>/features/` with `plan` (an ExtractionPlan).

    Returns (a ClipInput per extracted video, in input order, each carrying an equal share of the
    extraction time; a failure per video that gave no file; the extraction's seconds).
    A missing path is a failure without being decoded. Ctrl-C stops the extraction and is re-raised.
    """
    from minigpt4.extraction.pipeline import RunSettings, extract

    videos = [Path(p) for p in paths]
    failures: list[InferenceFailure] = []
    jobs: list[tuple[str, Path]] = []
    for vid, path in zip(job_ids(videos), videos):
        if not path.is_file():
            failures.append(InferenceFailure(str(path), "no such file" if not path.exists() else "not a file"))
        else:
            jobs.append((vid, path))
    if not jobs:
        return [], failures, 0.0
    out_dir = Path(work_dir) / FEATURES_SUBDIR
    cfg = plan.cfg
    settings = RunSettings(
        cfg=cfg, modalities=tuple(plan.modalities), jobs=jobs, out_dir=out_dir, device=str(device),
        batch_size=int(cfg.extract.batch_size),
        # one video needs no decoding process; more overlap decoding with encoding
        num_workers=min(int(cfg.extract.num_workers), len(jobs) - 1),
        skip_existing=False, suffix=".npz",
    )
    t0 = time.perf_counter()
    summary = extract(settings)
    seconds = time.perf_counter() - t0
    if summary.interrupted:
        raise KeyboardInterrupt
    reasons = _failure_reasons(summary.failures_path)
    done: list[tuple[str, Path, Path]] = []
    for vid, path in jobs:
        file = out_dir / f"{vid}.npz"
        if vid in reasons:
            failures.append(InferenceFailure(str(path), reasons[vid]))
        elif not file.is_file():
            why = f"decoding stopped early ({summary.loader_error})" if summary.loader_error else "no feature file written"
            failures.append(InferenceFailure(str(path), why))
        else:
            done.append((vid, path, file))
    share = seconds / len(jobs)
    clips = [ClipInput(video_id=path.stem, features=file, source=str(path), extract_s=share) for _, path, file in done]
    return clips, failures, seconds
