"""`failures.jsonl`: the videos a run could not extract, and why, so the others can go on."""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Optional


class FailureLog:
    """`failures.jsonl`: one JSON object per failed video, flushed as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fh: Optional[IO[str]] = None

    def add(self, video_id: str, video: str, reason: str) -> None:
        """Record one failure (the file is created on the first, so a clean run leaves none)."""
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8")
        self._fh.write(json.dumps({"video_id": video_id, "video": video, "reason": reason}) + "\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
