"""`InferenceSession`: a trained HERO run, loaded once, predicting new clips (videos or feature files).

    session = InferenceSession.from_run("output/hero_pretrain")
    results, failures = session.predict_videos(["clip.mp4"], work_dir="/tmp/work")
    print(format_report(results[0]))

Why a session: loading the LLM and the checkpoint costs seconds to minutes, a clip a fraction
of that; the command line (`hero-infer`) and the web app both keep one session and send it
clips. Predictions are `hero-eval`'s (same model build, batch and `model.generate` call), so a
clip's report and confidence here equal its line in eval's predictions.jsonl for the same batch.
Import is light (no torch until a session is made).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from minigpt4.inference.batches import DEFAULT_MAX_NEW_TOKENS, ClipInput, predict_clips
from minigpt4.inference.report import format_report
from minigpt4.inference.results import ClipResult, InferenceFailure

__all__ = ["ClipResult", "InferenceFailure", "InferenceSession", "format_report"]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[str, float], None]


class InferenceSession:
    """A loaded run. `label_names`: the model's labels; `can_extract`: videos can be turned into
    features (the run stores extraction settings, or an extraction config was given, and the
    encoders' widths fit the model); `run_dir`, `checkpoint`: what was loaded."""

    def __init__(self, run: Any, plan: Any, plan_error: Optional[str], batch_size: int, max_new_tokens: int) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self._run = run
        self._plan = plan
        self._plan_error = plan_error
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.run_dir: Path = run.run_dir
        self.checkpoint: Path = run.checkpoint
        self.label_names: list[str] = list(run.label_names)
        self.head_temperature: float = float(getattr(run, "head_temperature", 1.0))  # calibration.json, else 1.0
        self.can_extract: bool = plan is not None and plan_error is None

    @classmethod
    def from_run(cls, run_dir: PathLike, *, checkpoint: Optional[PathLike] = None,
                 extract_config: Optional[PathLike] = None, extract_options: Sequence[str] = (),
                 device: str = "auto", batch_size: int = 8, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 require_extraction: bool = False, calibrated: bool = True) -> "InferenceSession":
        """Load the run in `run_dir` (a run folder, or a checkpoint folder inside one) once.

        `checkpoint`: another checkpoint of the run (default: the best by validation, else the
        latest). `extract_config` / `extract_options`: how videos become features (default:
        configs/extract/default.yaml with the run's recorded extraction settings). A bad explicit
        extraction config or option is an error now. Otherwise a run whose videos cannot be
        extracted (no settings, settings this version cannot reproduce, encoders of other widths
        than the model's) still predicts feature files; `can_extract` is then False and
        `predict_videos` says why. `require_extraction`: raise that reason now, before the model
        is loaded (a command line given videos). `calibrated`: apply the head temperature the run's
        calibration.json holds for this checkpoint (training, run.calibrate, or hero-eval --calibrate).
        """
        from minigpt4.inference.extraction_plan import plan_from_run
        from minigpt4.inference.loading import load_run, read_run

        view = read_run(run_dir, checkpoint)  # a wrong folder or config fails before anything loads
        plan, plan_error = None, None
        if extract_config is not None or extract_options:
            plan = plan_from_run(view.run_dir, extract_config, extract_options)
        else:
            try:
                plan = plan_from_run(view.run_dir)
            except ValueError as exc:
                plan_error = str(exc)
        unrecorded = plan is None and plan_error is None  # features not from videos: nothing is wrong
        plan_error = plan_error or _extraction_problem(plan, view)
        if plan_error is not None:
            if require_extraction:
                raise ValueError(plan_error)
            logger.log(logging.INFO if unrecorded else logging.WARNING, "videos cannot be extracted: %s", plan_error)
        return cls(load_run(view, device, calibrated), plan, plan_error, batch_size, max_new_tokens)

    # ------------------------------------------------------------------ checks
    def check_extraction(self) -> None:
        """Raise (ValueError) when videos cannot be extracted for this model: no extraction settings,
        or an encoder whose output width differs from the model's `model.*_dim` (read from the
        encoders' configs when the session was made, before any video is decoded)."""
        if self._plan_error is not None:
            raise ValueError(self._plan_error)

    @property
    def extraction_origin(self) -> Optional[str]:
        """Where the extraction settings come from (the run's extraction.json or a config file)."""
        return None if self._plan is None else self._plan.origin

    # ------------------------------------------------------------------ predicting
    def predict_features(self, paths: Sequence[PathLike],
                         progress: Optional[Progress] = None) -> tuple[list[ClipResult], list[InferenceFailure]]:
        """Predict feature files (`.npz` / `.safetensors` as extraction writes them); a file that cannot
        be read is a failure naming it. Results keep the input order; `video_id` is the file stem."""
        clips = [ClipInput(video_id=Path(p).stem, features=Path(p), source=str(p)) for p in paths]
        return predict_clips(self._run, clips, self.batch_size, self.max_new_tokens, progress)

    def predict_videos(self, paths: Sequence[PathLike], work_dir: PathLike,
                       progress: Optional[Progress] = None) -> tuple[list[ClipResult], list[InferenceFailure]]:
        """Extract `paths` into `work_dir` (kept; the caller owns it), then predict them.

        A video that cannot be decoded or encoded is a failure naming it; the others go on.
        The extraction settings are checked against the model first (`check_extraction`).
        """
        from minigpt4.inference.videos import extract_videos

        self.check_extraction()
        if progress is not None:
            progress(f"extracting features of {len(paths)} video(s)", 0.0)
        clips, failures, _ = extract_videos(self._plan, paths, work_dir, str(self._run.device))
        if progress is not None:
            progress(f"extracted {len(clips)} of {len(paths)} video(s)", 0.5)
        results, unread = predict_clips(self._run, clips, self.batch_size, self.max_new_tokens, progress,
                                        start=0.5, span=0.5)
        order = {str(Path(p)): i for i, p in enumerate(paths)}
        failures = sorted(failures + unread, key=lambda f: order.get(f.source, len(order)))
        return results, failures


def _extraction_problem(plan: Any, view: Any) -> Optional[str]:
    """Why videos cannot be extracted for this run with `plan` (None: they can)."""
    from minigpt4.inference.extraction_plan import check_encoder_dims
    from minigpt4.runners.extraction_record import EXTRACTION_FILE

    if plan is None:
        return (f"run {view.run_dir} has no {EXTRACTION_FILE} (its training features were not extracted from "
                "videos): pass the extraction config its features were made with (--extract-config FILE), "
                "or give feature files (--features)")
    try:
        check_encoder_dims(plan, view.builder.feature_keys, view.model_dims)
    except ValueError as exc:
        return str(exc)
    return None
