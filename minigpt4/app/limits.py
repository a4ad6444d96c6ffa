"""Upload limits, checked before any extraction starts.

Why here and not only in Gradio: Gradio's `max_file_size` refuses a large upload, but only the
server can tell a video's duration, and extraction time grows with the duration, not the bytes.
Both are checked on the server with a message the page shows, so a refused video costs one
demux pass (the project's own `scan_packets`), never an extraction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from minigpt4.extraction.media_checks import scan_packets
from minigpt4.extraction.video_io import VIDEO_EXTENSIONS, VideoDecodeError

PathLike = Union[str, "os.PathLike[str]"]
MB = 1024 * 1024


@dataclass(frozen=True)
class UploadLimits:
    """The largest (MB) and longest (seconds) video the app accepts."""

    max_mb: float
    max_duration_s: float

    @property
    def max_bytes(self) -> int:
        """The size limit in bytes (also what Gradio's `max_file_size` gets)."""
        return int(self.max_mb * MB)

    def describe(self) -> str:
        """One line for the page: the limits a user must know before uploading."""
        return f"videos up to {self.max_mb:g} MB and {self.max_duration_s:g} s"


def video_duration(path: PathLike) -> float:
    """Seconds of video in `path`: the longer of what the header declares and what the packets hold.

    The longer one, because extraction reads the packets and a header may under-declare them.
    Raises VideoDecodeError for a file that is not readable media.
    """
    scan = scan_packets(path)
    held = max(scan.video_end, scan.end)
    return max(held, scan.declared_duration or 0.0)


def check_upload(path: Optional[PathLike], limits: UploadLimits) -> Optional[str]:
    """None when `path` may be extracted, else the reason in one sentence for the page."""
    if path is None:
        return "Upload a video first."
    p = Path(path)
    if not p.is_file():
        return f"The upload {p.name} is gone; upload it again."
    size = p.stat().st_size
    if size > limits.max_bytes:
        return f"{p.name} is {size / MB:.1f} MB; this demo accepts {limits.describe()}."
    if p.suffix.lower() not in VIDEO_EXTENSIONS:
        return f"{p.name} is not a video file this demo reads ({', '.join(VIDEO_EXTENSIONS)})."
    try:
        seconds = video_duration(p)
    except VideoDecodeError as exc:
        return f"{p.name} cannot be read as a video: {exc.problem}."
    if seconds > limits.max_duration_s:
        return f"{p.name} lasts {seconds:.1f} s; this demo accepts {limits.describe()}."
    return None
