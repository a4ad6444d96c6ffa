"""Per-video encoding state, and encoder inputs of several videos gathered into full batches."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class VideoState:
    """One video on the encoding side: outputs gathered segment by segment.

    `outstanding` counts inputs still waiting in a BatchQueue; the file is written once the
    last segment has arrived (`complete`) and nothing is outstanding.
    """

    video_id: str
    path: str
    info: dict = field(default_factory=dict)
    parts: dict[str, list] = field(default_factory=dict)
    windows: int = 0  # non-silent audio windows sent to Whisper
    has_audio: bool = False
    audio_samples: int = 0
    audio_damage: Optional[str] = None  # skipped packets or an unreadable track (audio_stream.py)
    audio_packets: int = 0
    audio_bad_packets: int = 0
    au: Any = None
    au_source: str = ""
    au_note: str = ""
    au_windows: str = ""  # indices of the au rows' windows when some had no usable face ("0-9,15-30")
    outstanding: int = 0
    complete: bool = False
    error: Optional[str] = None


class BatchQueue:
    """Inputs of several videos gathered into full encoder batches; outputs go back in order.

    Short clips give a handful of frames each: batching across videos keeps a GPU (or the
    per-call overhead on a CPU) busy with `batch_size` items per forward. Each video's pieces
    keep their order, so `parts[name]` concatenates to the video's sequence.
    """

    def __init__(self, name: str, encode: Callable[[Any], Any], batch_size: int) -> None:
        self.name, self.encode, self.batch_size = name, encode, max(1, batch_size)
        self.items: list[tuple[VideoState, Any]] = []
        self.size = 0

    def add(self, st: VideoState, x: Any) -> None:
        """Queue `x` (a batch of items) for `st`; runs the encoder once a full batch is waiting."""
        if x is None or len(x) == 0:
            return
        self.items.append((st, x))
        self.size += len(x)
        st.outstanding += 1
        if self.size >= self.batch_size:
            self.run()

    def run(self) -> None:
        """Encode everything queued, full batch or not; a failing batch fails each of its videos."""
        import torch

        if not self.items:
            return
        items, self.items, self.size = self.items, [], 0
        try:
            xs = [x for _, x in items]
            out = self.encode(torch.cat(xs) if isinstance(xs[0], torch.Tensor) else np.concatenate(xs))
        except Exception as exc:  # the whole shared batch failed: every video in it fails
            for st, _ in items:
                st.outstanding -= 1
                st.error = st.error or f"encode ({self.name}): {type(exc).__name__}: {exc}"
            return
        pos = 0
        for st, x in items:
            st.parts.setdefault(self.name, []).append(out[pos : pos + len(x)])
            pos += len(x)
            st.outstanding -= 1
