"""The one folder the app writes to: created at start with `tempfile.mkdtemp`, removed on exit.

Why one folder: uploads, Gradio's own file cache and extraction outputs would otherwise land in
the system temp dir, the working directory and the run folder. Gradio's cache follows
`GRADIO_TEMP_DIR`, which some Gradio modules read when they are imported, so `point_gradio_here`
must run before the first `import gradio`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

GRADIO_ENV = "GRADIO_TEMP_DIR"


class Workspace:
    """`root/` holds `gradio/` (uploads and served files) and `jobs/` (one folder per extraction)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gradio_dir = root / "gradio"
        self.jobs_dir = root / "jobs"
        self.gradio_dir.mkdir(exist_ok=True)
        self.jobs_dir.mkdir(exist_ok=True)
        self._previous_env: Optional[str] = None

    @classmethod
    def create(cls, prefix: str = "hero-app-") -> "Workspace":
        """A fresh folder under the system temp dir."""
        return cls(Path(tempfile.mkdtemp(prefix=prefix)))

    def point_gradio_here(self) -> None:
        """Send Gradio's uploads and cache into `gradio_dir` (before Gradio is imported)."""
        self._previous_env = os.environ.get(GRADIO_ENV)
        os.environ[GRADIO_ENV] = str(self.gradio_dir)

    def job_dir(self) -> Path:
        """A new empty folder for one extraction (removed by the caller when done)."""
        return Path(tempfile.mkdtemp(prefix="job-", dir=self.jobs_dir))

    def close(self) -> None:
        """Remove everything the app wrote and restore `GRADIO_TEMP_DIR`."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self._previous_env is None:
            os.environ.pop(GRADIO_ENV, None)
        else:
            os.environ[GRADIO_ENV] = self._previous_env

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
