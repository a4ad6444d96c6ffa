"""What the page asks of the loaded run, as plain calls: analyse an upload, analyse an evaluated clip.

One `DemoService` per app: it holds the `InferenceSession` loaded once at start, the upload
limits, the workspace and the evaluated clips' feature files. Each call returns a `ClipView`
(only text and rows), so the page stays a thin mapping onto widgets and every branch (limits,
failures, no extraction settings) is tested without a browser. A lock serialises model calls:
Gradio runs handlers on worker threads, and one model is not made for concurrent use.
"""
from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from minigpt4.app import presenter
from minigpt4.app.eval_browser import EvalFolder
from minigpt4.app.limits import UploadLimits, check_upload
from minigpt4.app.workspace import Workspace

if TYPE_CHECKING:
    from minigpt4.inference.session import InferenceSession

Progress = Callable[[str, float], None]


@dataclass
class ClipView:
    """What the "Ask" tab shows for one request; `status` alone when there is no result."""

    status: str
    prediction: str = ""
    transcript: str = ""
    evidence: list[list[str]] = field(default_factory=list)
    weights: list[list[Any]] = field(default_factory=list)
    report: str = ""
    plain: str = ""

    @property
    def has_result(self) -> bool:
        return bool(self.prediction)


class DemoService:
    """The loaded run and everything a request needs besides its input."""

    def __init__(self, session: "InferenceSession", limits: UploadLimits, workspace: Workspace,
                 eval_folder: Optional[EvalFolder] = None, clip_files: Optional[dict[str, Path]] = None,
                 clip_note: str = "", upload_block: str = "") -> None:
        self.session = session
        self.limits = limits
        self.workspace = workspace
        self.eval_folder = eval_folder
        self.clip_files = dict(clip_files or {})
        self.clip_note = clip_note  # why some or all evaluated clips cannot be analysed
        self.upload_block = upload_block  # why uploads are off although the run has extraction settings
        self._lock = threading.Lock()

    @property
    def can_upload(self) -> bool:
        """New videos need the run's extraction settings (a run trained on given features has none)
        and encoders that fit the model (`upload_block` says when they do not)."""
        return bool(self.session.can_extract) and not self.upload_block

    def clip_choices(self) -> list[tuple[str, str]]:
        """(label, video_id) for each evaluated clip whose feature file was found, in file order."""
        if self.eval_folder is None:
            return []
        out = []
        for rec in self.eval_folder.records:
            vid = str(rec["video_id"])
            if vid in self.clip_files:
                out.append((f"{vid} (true: {rec.get('gold_emotion') or '?'})", vid))
        return out

    def _view(self, results: list, failures: list, what: str) -> ClipView:
        if not results:
            reasons = presenter.failures_markdown(failures) or "- the model returned no result"
            return ClipView(status=f"**{what[:1].upper() + what[1:]} could not be analysed.**\n\n{reasons}")
        from minigpt4.inference.session import format_report

        r = results[0]
        return ClipView(
            status=f"Analysed {what}.",
            prediction=presenter.prediction_markdown(r),
            transcript=presenter.transcript_text(r),
            evidence=presenter.evidence_rows(r),
            weights=presenter.weight_rows(r.modality_weights),
            report=presenter.report_markdown(r.report),
            plain=format_report(r),
        )

    def ask_upload(self, path: Optional[str], progress: Optional[Progress] = None) -> ClipView:
        """Check the upload against the limits, extract it in a job folder, run the model."""
        if not self.can_upload:
            why = self.upload_block or "it has no extraction settings"
            return ClipView(status=f"This run cannot read new videos ({why}); pick one of its evaluated clips instead.")
        problem = check_upload(path, self.limits)
        if problem:
            return ClipView(status=problem)
        job = self.workspace.job_dir()
        try:
            with self._lock:
                results, failures = self.session.predict_videos([Path(path)], job, progress=progress)
        finally:
            shutil.rmtree(job, ignore_errors=True)
        return self._view(results, failures, f"the video {Path(path).name}")

    def ask_evaluated(self, video_id: Optional[str], progress: Optional[Progress] = None) -> ClipView:
        """Run the model on an evaluated clip's feature file (no extraction)."""
        if not video_id:
            return ClipView(status="Pick an evaluated clip first.")
        path = self.clip_files.get(str(video_id))
        if path is None:
            return ClipView(status=f"No feature file was found for {video_id}. {self.clip_note}".strip())
        with self._lock:
            results, failures = self.session.predict_features([path], progress=progress)
        return self._view(results, failures, f"the evaluated clip {video_id}")
