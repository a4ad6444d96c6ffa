"""The extraction driver: decoded segments in, one feature file per finished video out.

Workers decode (`decode.make_segment_loader`) while the main process loads every model once
(`EncoderSet`) and runs them batched across videos. Each file is written atomically, so an
interrupted run never leaves a partial one and a rerun only does what is missing. A video
that fails is recorded in `failures.jsonl` (`FailureLog`) and the others go on.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from minigpt4.extraction.batching import VideoState
from minigpt4.extraction.config import FAILURES_FILE
from minigpt4.extraction.failures import FailureLog
from minigpt4.extraction.rerun import clean_stale_temps, modality_settings, reason_to_redo

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from minigpt4.extraction.encoder_set import EncoderSet


@dataclass
class RunSettings:
    """One run, resolved from the extraction config and the command line."""

    cfg: "DictConfig"
    modalities: tuple[str, ...]
    jobs: list[tuple[str, Path]]  # (video_id, path) of this shard
    out_dir: Path
    device: str
    batch_size: int
    num_workers: int
    skip_existing: bool
    suffix: str  # ".npz" or ".safetensors"


@dataclass
class RunSummary:
    """What a run did; `exit_code` is the process exit status the command line returns."""

    videos: int
    out_dir: Path
    failures_path: Path
    done: int = 0
    skipped: int = 0
    failed: int = 0
    redone: int = 0  # files found but extracted again (other settings, damaged, fewer modalities)
    temps_removed: int = 0  # temp files a killed run had left
    redo_example: str = ""  # the first redone file and why ("v1: clip.fps: 1.0 -> 2.0")
    interrupted: bool = False
    loader_error: Optional[str] = None  # the decoding loader itself broke
    elapsed: float = 0.0

    @property
    def exit_code(self) -> int:
        """1 when the loader broke or any video failed, 130 on Ctrl-C, else 0."""
        if self.loader_error:
            return 1
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


class VideoCollector:
    """The main process's state during a run: videos in flight, videos given up, progress.

    Segments arrive interleaved from several workers; a video's file is written once its last
    segment has arrived and every input it queued has been encoded.
    """

    def __init__(self, encoders: "EncoderSet", out_dir: Path, suffix: str, failures: FailureLog,
                 bar: Any, batch_size: int) -> None:
        self.encoders = encoders
        self.out_dir = out_dir
        self.suffix = suffix
        self.failures = failures
        self.bar = bar
        self.batch_size = batch_size
        self.states: dict[str, VideoState] = {}  # videos with a segment seen and no file written yet
        self.dead: set[str] = set()  # failed in the main process: ignore their remaining segments
        self.done = 0

    def _progress(self) -> None:
        self.bar.update(1)
        self.bar.set_postfix(done=self.done, failed=self.failures.count, refresh=False)

    def fail(self, vid: str, path: str, reason: str) -> None:
        """Record a failed video and count it as handled."""
        self.failures.add(vid, path, reason)
        self._progress()

    def take(self, seg: dict) -> None:
        """Feed one decoded segment to the encoders; write whatever videos it completes."""
        vid = seg["video_id"]
        if vid in self.dead:
            return
        if "error" in seg:
            st = self.states.pop(vid, None)
            if st is not None:  # drop what it had queued with the others
                st.error = seg["error"]
            self.fail(vid, seg["path"], seg["error"])
            return
        st = self.states.setdefault(vid, VideoState(vid, seg["path"]))
        try:
            self.encoders.consume(st, seg)
        except Exception as exc:  # OOM, odd shapes, ...: record it and go on
            import torch

            st.error = f"encode: {type(exc).__name__}: {exc}"
            st.complete = True
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if seg["last"] or st.error:
            # Waiting videos hold only outputs; cap them so a stalled queue cannot grow without end.
            self.finish_ready(force=sum(s.complete for s in self.states.values()) > max(8, self.batch_size))

    def finish_ready(self, force: bool = False) -> None:
        """Write every complete video whose queued inputs are all encoded (`force`: run the queues first)."""
        from minigpt4.datasets.feature_io import write_features

        if force:
            self.encoders.drain()
        ready = [v for v, st in self.states.items() if st.complete and (st.outstanding == 0 or st.error)]
        for vid in ready:
            st = self.states.pop(vid)
            if st.error:
                self.dead.add(vid)
                self.fail(vid, st.path, st.error)
                continue
            try:
                arrays, text, meta = self.encoders.finalize(st)
                if not arrays and text is None:
                    raise RuntimeError(f"nothing to write: {meta.get('absent', 'no modality extracted')}")
                write_features(self.out_dir / f"{vid}{self.suffix}", arrays, transcript=text, meta=meta)
            except Exception as exc:  # one bad video must not stop the others
                self.fail(vid, st.path, f"encode: {type(exc).__name__}: {exc}")
                continue
            self.done += 1
            self._progress()


def _leave_cores_to_workers(device: str, num_workers: int) -> None:
    """On CPU, shrink torch's thread pool by the number of decoding workers (unless OMP_NUM_THREADS is set).

    An oversubscribed OpenMP pool spins: it made a 2-core run 2x slower than no workers at all.
    """
    import torch

    from minigpt4.extraction.encoders import resolve_device

    if num_workers > 0 and resolve_device(device).type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores - num_workers))


def _encode_all(settings: RunSettings, todo: list[tuple[str, Path]], failures: FailureLog, summary: RunSummary) -> None:
    """Decode and encode `todo`, writing each finished video; fills `summary`'s done/interrupted/loader_error."""
    import transformers
    from tqdm import tqdm

    from minigpt4.extraction.decode import build_plan, make_segment_loader
    from minigpt4.extraction.encoder_set import EncoderSet

    transformers.logging.set_verbosity_error()  # keep the progress bar readable
    transformers.logging.disable_progress_bar()
    _leave_cores_to_workers(settings.device, settings.num_workers)
    cfg = settings.cfg
    plan, pre = build_plan(cfg, settings.modalities)
    loader = make_segment_loader(todo, plan, pre, settings.num_workers)
    segments = iter(loader)  # workers start decoding while the models load
    encoders = EncoderSet(cfg, settings.modalities, settings.device, str(cfg.extract.precision), settings.batch_size)
    bar = tqdm(total=len(todo), desc="extract", unit="video", dynamic_ncols=True, mininterval=1.0)
    collector = VideoCollector(encoders, settings.out_dir, settings.suffix, failures, bar, settings.batch_size)
    try:
        for seg in segments:
            collector.take(seg)
        collector.finish_ready(force=True)
    except KeyboardInterrupt:
        summary.interrupted = True
    except Exception as exc:  # the loader itself broke (e.g. a decoder crashed a worker process)
        summary.loader_error = f"{type(exc).__name__}: {exc}"
    finally:
        summary.done = collector.done
        bar.close()
        failures.close()
        del segments


def extract(settings: RunSettings) -> RunSummary:
    """Extract every video of `settings.jobs` not already covered by a feature file (when skipping)."""
    out_dir = settings.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    failures_path = out_dir / FAILURES_FILE
    failures_path.unlink(missing_ok=True)  # this run's failures only

    removed = clean_stale_temps(out_dir, (f"{vid}{settings.suffix}" for vid, _ in settings.jobs))
    todo, redone, example = [], 0, ""
    wanted = modality_settings(settings.cfg, settings.modalities)
    whys = ["missing"] * len(settings.jobs)
    if settings.skip_existing:  # every existing file is read back whole: threads overlap the reads and hashes
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            whys = list(pool.map(lambda job: reason_to_redo(out_dir / f"{job[0]}{settings.suffix}",
                                                            settings.modalities, wanted), settings.jobs))
    for (vid, p), why in zip(settings.jobs, whys):
        if why is not None:
            todo.append((vid, p))
            if why != "missing":
                redone += 1
                example = example or f"{vid}: {why}"
    summary = RunSummary(videos=len(settings.jobs), out_dir=out_dir, failures_path=failures_path,
                         skipped=len(settings.jobs) - len(todo), redone=redone, temps_removed=len(removed),
                         redo_example=example)
    start = time.time()
    failures = FailureLog(failures_path)
    if todo:
        _encode_all(settings, todo, failures, summary)
    summary.failed = failures.count
    summary.elapsed = time.time() - start
    return summary
