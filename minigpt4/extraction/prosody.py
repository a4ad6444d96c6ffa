"""Prosody measured from the audio track: pitch, voicing, loudness and a speech flag per window.

Why: HuBERT states say nothing a reader can check, but "high, widely varying pitch, loud" can
be worded from numbers (minigpt4/datasets/measured_evidence.py) for clips no one annotated.

`prosody [N, 4]`, one row per window [k/fps, (k+1)/fps) of the 16 kHz track, columns
PROSODY_COLUMNS:
  f0_hz        pyin (librosa) on one frame centred in the window; 0 where pyin finds no voicing
  voiced_prob  pyin's voiced probability of that frame
  rms_dbfs     20 log10 of the RMS of all the window's samples (full scale 1.0; floor -100)
  speech       1 where the window is louder than `speech_dbfs` and lies within `speech_bridge`
               seconds of a voiced window (so consonants between vowels count, a door slam does not)

Cost: pyin's cost is per frame (its HMM and threshold prior), not per sample, so one frame per
window at 10 Hz with 0.25-semitone bins costs ~7 ms per second of audio (0.1-semitone bins
2x that, 20 Hz twice again). The track is processed segment by segment (`ProsodyTracker`), so
memory does not grow with its length; pyin's Viterbi smoothing restarts at each segment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from omegaconf import DictConfig

PROSODY_COLUMNS: tuple[str, ...] = ("f0_hz", "voiced_prob", "rms_dbfs", "speech")
SILENCE_FLOOR_DBFS = -100.0
# librosa's default pitch-jump limit (octaves per second); lowered where a frame's allowed jump
# would exceed the searched range (pyin refuses that at low frame rates).
PYIN_MAX_TRANSITION_RATE = 35.92


@dataclass(frozen=True)
class ProsodySettings:
    """The `prosody` section of the extraction config (defaults live in configs/extract/default.yaml)."""

    fps: float
    fmin: float
    fmax: float
    resolution: float
    speech_dbfs: float
    speech_bridge: float
    sample_rate: int = 16000  # the decoded track's rate (video_io.AUDIO_SAMPLE_RATE)

    @classmethod
    def from_config(cls, cfg: "DictConfig") -> "ProsodySettings":
        """Read and check `cfg.prosody`; a bad value is a ValueError naming the key."""
        from minigpt4.extraction.video_io import AUDIO_SAMPLE_RATE

        p = cfg.prosody
        s = cls(fps=float(p.fps), fmin=float(p.fmin), fmax=float(p.fmax), resolution=float(p.resolution),
                speech_dbfs=float(p.speech_dbfs), speech_bridge=float(p.speech_bridge), sample_rate=AUDIO_SAMPLE_RATE)
        if s.fps <= 0 or abs(s.sample_rate / s.fps - round(s.sample_rate / s.fps)) > 1e-9:
            raise ValueError(f"prosody.fps must be > 0 and divide {s.sample_rate} samples evenly (10, 20, 25, 50, ...), got {p.fps}")
        if not 0 < s.fmin < s.fmax < s.sample_rate / 2:
            raise ValueError(f"prosody.fmin/fmax must satisfy 0 < fmin < fmax < {s.sample_rate // 2}, got {p.fmin}, {p.fmax}")
        if 12 * math.log2(s.fmax / s.fmin) < 2:
            raise ValueError(f"prosody.fmin..fmax must span at least 2 semitones, got {p.fmin}..{p.fmax}")
        if not 0 < s.resolution <= 1:
            raise ValueError(f"prosody.resolution must be in (0, 1] semitones, got {p.resolution}")
        if s.speech_bridge < 0:
            raise ValueError(f"prosody.speech_bridge must be >= 0 seconds, got {p.speech_bridge}")
        return s

    @property
    def hop(self) -> int:
        """Samples per window."""
        return int(round(self.sample_rate / self.fps))

    @property
    def frame_length(self) -> int:
        """pyin's frame: the power of two holding >= 4 periods of fmin (1024 samples = 64 ms at 65 Hz)."""
        return 1 << int(math.ceil(math.log2(4 * self.sample_rate / self.fmin)))

    @property
    def max_transition_rate(self) -> float:
        """librosa's default pitch-jump limit, capped at half the searched range per frame."""
        octaves = math.log2(self.fmax / self.fmin)
        return min(PYIN_MAX_TRANSITION_RATE, 0.5 * octaves * self.fps)


def window_dbfs(wave: np.ndarray, hop: int) -> np.ndarray:
    """RMS level (dBFS, floor SILENCE_FLOOR_DBFS) of each `hop`-sample window; a short last window uses what it has."""
    n = int(math.ceil(wave.size / hop))
    if n == 0:
        return np.zeros(0, np.float32)
    sq = np.zeros(n * hop, np.float64)
    sq[: wave.size] = np.asarray(wave, np.float64) ** 2
    counts = np.full(n, hop, np.float64)
    counts[-1] = wave.size - (n - 1) * hop
    rms = np.sqrt(sq.reshape(n, hop).sum(axis=1) / counts)
    return np.maximum(20 * np.log10(rms + 1e-12), SILENCE_FLOOR_DBFS).astype(np.float32)


class ProsodyTracker:
    """Consumes the track segment by segment; `push` returns the rows of every window it completed.

    Rows `[n, 3]` (f0_hz, voiced_prob, rms_dbfs); the `speech` column needs the voicing of the
    neighbouring windows and is added over the whole track by `speech_column`. The tracker keeps
    only the samples a later window still needs (at most one frame and one window).
    """

    def __init__(self, settings: ProsodySettings) -> None:
        self.s = settings
        self.hop, self.frame = settings.hop, settings.frame_length
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # absolute index of _buf[0]
        self._total = 0  # samples pushed so far
        self._next = 0  # the first window not yet returned

    def _frame_start(self, k: int) -> int:
        """Absolute first sample of window k's pyin frame (centred in the window; may be < 0)."""
        return k * self.hop + self.hop // 2 - self.frame // 2

    def _needs_until(self, k: int) -> int:
        return max((k + 1) * self.hop, self._frame_start(k) + self.frame)

    def _span(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) in absolute indices, zeros outside what was pushed."""
        out = np.zeros(hi - lo, np.float32)
        a, b = max(lo, self._buf_start), min(hi, self._buf_start + self._buf.size)
        if b > a:
            out[a - lo: b - lo] = self._buf[a - self._buf_start: b - self._buf_start]
        return out

    def push(self, wave: np.ndarray, final: bool = False) -> np.ndarray:
        """Add the next samples; `final` flushes the last (possibly partial) window."""
        import librosa

        wave = np.asarray(wave, np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, wave]) if self._buf.size else wave
        self._total += wave.size
        if final:
            end = int(math.ceil(self._total / self.hop))
        else:
            end = self._next
            while self._needs_until(end) <= self._total:
                end += 1
        k0 = self._next
        if end <= k0:
            return np.zeros((0, 3), np.float32)
        lo = self._frame_start(k0)
        y = self._span(lo, self._frame_start(end - 1) + self.frame)
        f0, _, prob = librosa.pyin(
            y, fmin=self.s.fmin, fmax=self.s.fmax, sr=self.s.sample_rate, frame_length=self.frame,
            hop_length=self.hop, center=False, resolution=self.s.resolution,
            max_transition_rate=self.s.max_transition_rate, fill_na=0.0,
        )
        body = self._span(k0 * self.hop, min(end * self.hop, self._total))
        rows = np.stack([np.nan_to_num(f0[: end - k0]), prob[: end - k0], window_dbfs(body, self.hop)], axis=1)
        self._next = end
        keep = min(end * self.hop, self._frame_start(end))
        if keep > self._buf_start:  # drop what no later window needs
            self._buf = self._buf[keep - self._buf_start:].copy()
            self._buf_start = keep
        return rows.astype(np.float32)


def warm_up(settings: ProsodySettings) -> None:
    """Run pyin once on a frame of silence: librosa's import and its numba cache load cost seconds,
    paid here once (before the decoding workers fork) instead of in every worker."""
    ProsodyTracker(settings).push(np.zeros(settings.hop, np.float32), final=True)


def speech_column(rows: np.ndarray, settings: ProsodySettings) -> np.ndarray:
    """The `speech` flag of each window: loud enough and within `speech_bridge` s of a voiced window."""
    rows = np.asarray(rows, np.float32)
    if len(rows) == 0:
        return np.zeros(0, np.float32)
    voiced = rows[:, 0] > 0
    reach = int(round(settings.speech_bridge * settings.fps))
    near = np.convolve(np.pad(voiced.astype(np.int32), reach), np.ones(2 * reach + 1, np.int32), mode="valid") > 0
    return ((rows[:, 2] > settings.speech_dbfs) & near).astype(np.float32)


def prosody_track(parts: Sequence[np.ndarray], settings: ProsodySettings) -> np.ndarray:
    """float32 `[N, 4]` in PROSODY_COLUMNS order from the tracker's rows of every segment."""
    rows = np.concatenate([np.asarray(p, np.float32).reshape(-1, 3) for p in parts]) if parts else np.zeros((0, 3), np.float32)
    return np.concatenate([rows, speech_column(rows, settings)[:, None]], axis=1)
