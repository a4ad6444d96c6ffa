"""Decoding for feature extraction: frames sampled by time, audio as 16 kHz mono float32.

Why this shape: a 2-hour film must extract with the same memory as a 3-second clip, so
nothing here holds every frame. Frames are picked by *presentation time* (the frame on
screen at time t), which makes variable-frame-rate files come out right, and only the
picked frames are converted to RGB, downscaled in the decoder, and returned. Audio is
streamed segment by segment.

Backends: decord (random access by frame index, resizing inside the decoder) where it
installs, else PyAV (one forward pass; every frame is decoded but only the sampled ones are
converted). Audio always comes from PyAV (audio_stream.py): decord's AudioReader decodes the
whole track into memory at open, and PyAV streams it.

Before any frame is used, one demux pass checks that the file holds what its container
declares and that decord's timestamps are the container's (media_checks.py): a truncated file
is an error, never a partial or padded clip, and a decord timeline that disagrees falls back
to PyAV.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

AUDIO_SAMPLE_RATE = 16000
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp", ".ts",
)
BACKENDS = ("auto", "decord", "pyav")
PathLike = Union[str, "os.PathLike[str]"]


class VideoDecodeError(RuntimeError):
    """A video (or its audio) that cannot be decoded; the message names the file and the problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class VideoInfo:
    """What the extractor needs to know before decoding (times in seconds)."""

    path: str
    duration: float
    num_frames: int
    avg_fps: float
    width: int
    height: int
    has_audio: bool
    backend: str
    note: str = ""  # why the backend is not the first choice, or what was skipped


def sample_times(duration: float, fps: float) -> np.ndarray:
    """Sampling instants `[N]` at `fps`: t_k = k / fps for k < ceil(duration * fps), at least one.

    A 3.0 s clip at 1 fps gives t = 0, 1, 2 (3 frames); 3.2 s gives 4; anything shorter than a
    period gives one frame at t = 0.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    n = max(1, int(math.ceil(duration * fps - 1e-6)))
    return np.arange(n, dtype=np.float64) / fps


def scaled_size(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """(w, h) with the short side scaled down to `short_side` (never up; even sizes for codecs)."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    s = short_side / min(width, height)
    w = max(2, int(round(width * s / 2)) * 2)
    h = max(2, int(round(height * s / 2)) * 2)
    return w, h


def frames_shown_at(starts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time: the last frame whose start is <= t (clipped).

    starts: `[F]` non-decreasing presentation start times; times: `[N]`. Returns int64 `[N]`.
    """
    idx = np.searchsorted(starts, np.asarray(times) + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(starts) - 1).astype(np.int64)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file does not exist")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "zero-byte file")


def _av():
    import av

    av.logging.set_level(av.logging.PANIC)  # corrupt inputs are reported through exceptions
    return av


# ----------------------------------------------------------------------------- frame readers


class _DecordFrames:
    """Random access through decord: only the requested indices are decoded and resized."""

    name = "decord"

    def __init__(
        self, path: Path, short_side: Optional[int], num_threads: int, native_size: Optional[tuple[int, int]] = None
    ) -> None:
        import decord

        decord.logging.set_level(decord.logging.PANIC)  # its libav messages would spill into the progress bar
        try:
            if native_size is None:
                probe = decord.VideoReader(str(path), num_threads=1)
                native_size = (probe[0].shape[1], probe[0].shape[0])
                del probe
            w0, h0 = native_size
            self.width, self.height = scaled_size(w0, h0, short_side)
            self._vr = decord.VideoReader(str(path), width=self.width, height=self.height, num_threads=num_threads)
        except (decord.DECORDError, RuntimeError, IndexError) as exc:
            raise VideoDecodeError(path, f"decord cannot open the video ({str(exc).strip()[:200]})") from exc
        self.path = path
        self.num_frames = len(self._vr)
        if self.num_frames == 0:
            raise VideoDecodeError(path, "video stream has no frames")
        stamps = np.asarray(self._vr.get_frame_timestamp(range(self.num_frames)), dtype=np.float64)
        self.starts = stamps[:, 0]
        self.duration = float(stamps[-1, 1]) if stamps[-1, 1] > 0 else float(self.num_frames / max(1e-6, self._vr.get_avg_fps()))
        self.avg_fps = float(self._vr.get_avg_fps())

    def frames_at(self, times: np.ndarray, chunk: int = 64) -> np.ndarray:
        idx = frames_shown_at(self.starts, times)
        out = np.empty((len(idx), self.height, self.width, 3), dtype=np.uint8)
        uniq, inverse = np.unique(idx, return_inverse=True)
        for lo in range(0, len(uniq), chunk):
            part = uniq[lo : lo + chunk]
            try:
                batch = self._vr.get_batch(part.tolist()).asnumpy()
            except Exception as exc:  # decord raises DECORDError / RuntimeError on bad packets
                raise VideoDecodeError(self.path, f"decord failed on frames {part[0]}..{part[-1]} ({str(exc).strip()[:200]})") from exc
            for j, src in enumerate(range(lo, lo + len(part))):
                out[inverse == src] = batch[j]
        return out

    def close(self) -> None:
        self._vr = None


class _PyAVFrames:
    """One forward pass with PyAV; frames are converted (and resized) only when sampled.

    `frames_at` calls must ask for non-decreasing times (the extractor walks segments in order).
    """

    name = "pyav"

    def __init__(self, path: Path, short_side: Optional[int], num_threads: int) -> None:
        av = _av()
        self.path = path
        try:
            self._container = av.open(str(path))
        except Exception as exc:  # av.error.* (InvalidDataError, ...) or OSError
            raise VideoDecodeError(path, f"PyAV cannot open the file ({exc})") from exc
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(path, "no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        if num_threads:
            stream.codec_context.thread_count = num_threads
        cc = stream.codec_context
        if not cc.width or not cc.height:
            raise VideoDecodeError(path, "video stream has no frame size (corrupt header?)")
        self.width, self.height = scaled_size(cc.width, cc.height, short_side)
        self.duration = self._duration(stream)
        self.avg_fps = float(stream.average_rate) if stream.average_rate else 0.0
        self.num_frames = int(stream.frames) if stream.frames else int(round(self.duration * self.avg_fps))
        self._stream = stream
        self._start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        self._frames: Iterator = self._container.decode(stream)
        self._prev = None  # (time, frame, serial) of the frame on screen at the last asked time
        self._next = None  # the decoded frame after it, not yet on screen
        self._serial = 0
        self._converted: tuple[int, Optional[np.ndarray]] = (0, None)
        self._ended = False
        self.expected_frames: Optional[int] = None  # frames the file holds (set from the packet scan)
        self.slack_frames = 1
        self.pad_limit: Optional[float] = None  # past this time the last frame would be padding

    def _duration(self, stream) -> float:
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            return float(stream.duration * stream.time_base)
        if self._container.duration:
            return float(self._container.duration / 1_000_000)
        # No duration in the headers: scan packet timestamps (no decoding).
        end = 0.0
        with _av().open(str(self.path)) as probe:
            for packet in probe.demux(probe.streams.video[0]):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        if end <= 0:
            raise VideoDecodeError(self.path, "cannot determine the video duration")
        return end

    def _advance(self) -> bool:
        """Decode the next frame into `self._next`; False at the end of the stream."""
        if self._ended:
            return False
        try:
            frame = next(self._frames)
        except StopIteration:
            self._ended = True
            if self.expected_frames and self._serial < self.expected_frames - self.slack_frames:
                # Never pad with the last frame: a decoder that stops early is a short read.
                raise VideoDecodeError(self.path, f"short read: decoding ended after {self._serial} of "
                                                  f"{self.expected_frames} frames") from None
            return False
        except Exception as exc:  # av.error.InvalidDataError etc.
            raise VideoDecodeError(self.path, f"PyAV decode error ({exc})") from exc
        t = (frame.time if frame.time is not None else 0.0) - self._start
        self._serial += 1
        self._next = (t, frame, self._serial)
        return True

    def _convert(self, frame) -> np.ndarray:
        return frame.to_ndarray(format="rgb24", width=self.width, height=self.height)

    def frames_at(self, times: np.ndarray) -> np.ndarray:
        out = np.empty((len(times), self.height, self.width, 3), dtype=np.uint8)
        for i, t in enumerate(np.asarray(times, dtype=np.float64)):
            # Move forward while the next frame starts at or before t.
            while True:
                if self._next is None and not self._advance():
                    break
                if self._prev is None or self._next[0] <= t + 1e-6:
                    self._prev, self._next = self._next, None
                    continue
                break
            if self._prev is None:
                raise VideoDecodeError(self.path, "video stream has no decodable frames")
            if self._ended and self.pad_limit is not None and t > self.pad_limit:
                raise VideoDecodeError(self.path, f"short read: frame asked at {t:.2f} s, the decoded frames end at "
                                                  f"{self._prev[0]:.2f} s (never padded with the last frame)")
            if self._converted[0] != self._prev[2]:  # each frame is converted at most once
                self._converted = (self._prev[2], self._convert(self._prev[1]))
            out[i] = self._converted[1]
        return out

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------- audio


def probe_streams(path: PathLike) -> tuple[Optional[tuple[int, int]], bool]:
    """((width, height) of the first video stream or None, has an audio stream), read from headers."""
    av = _av()
    try:
        with av.open(str(path)) as c:
            size = None
            if c.streams.video:
                cc = c.streams.video[0].codec_context
                size = (int(cc.width), int(cc.height)) if cc.width and cc.height else None
            return size, len(c.streams.audio) > 0
    except Exception as exc:  # av.error.* or OSError: not a media file PyAV understands
        raise VideoDecodeError(path, f"cannot open the file as media ({exc})") from exc


def read_audio(path: PathLike, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """The whole first audio track as float32 mono `[S]` (the reader lives in audio_stream.py)."""
    from minigpt4.extraction.audio_stream import read_audio as _read

    return _read(path, sample_rate)


# ----------------------------------------------------------------------------- the source


class VideoSource:
    """One video opened for sampling: `info`, `frames_at(times)` and `audio.read_until(t)`.

    frames_at: times in seconds, non-decreasing across calls -> uint8 RGB `[N, h, w, 3]`, the
    short side scaled down to `short_side` (None keeps the native size).
    """

    def __init__(
        self,
        path: PathLike,
        backend: str = "auto",
        short_side: Optional[int] = None,
        want_audio: bool = True,
        num_threads: int = 1,
        tolerance: Optional[float] = None,
    ) -> None:
        """`tolerance`: seconds a file may hold less than it declares (None: media_checks' default)."""
        from minigpt4.extraction.media_checks import DEFAULT_TOLERANCE, check_whole, scan_packets

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.path = Path(path)
        _check_file(self.path)
        native_size, has_audio = probe_streams(self.path)
        if native_size is None:
            raise VideoDecodeError(self.path, "no video stream (or one without a frame size)")
        self.tolerance = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
        self.scan = scan_packets(self.path)
        check_whole(self.path, self.scan, self.tolerance)
        self._notes: list[str] = []
        self._frames = self._open_frames(backend, short_side, num_threads, native_size)
        self.audio, self.audio_error = None, None
        if has_audio and want_audio:
            from minigpt4.extraction.audio_stream import AudioStream

            try:  # an unreadable track costs the audio modalities only, never the video
                self.audio = AudioStream(self.path)
            except VideoDecodeError as exc:
                self.audio_error = exc.problem
            except BaseException:
                self._frames.close()
                raise
        f = self._frames
        self.info = VideoInfo(
            path=str(self.path),
            duration=float(f.duration),
            num_frames=int(f.num_frames),
            avg_fps=float(f.avg_fps),
            width=int(f.width),
            height=int(f.height),
            has_audio=has_audio,
            backend=f.name,
            note="; ".join(self._notes),
        )

    def _open_frames(self, backend: str, short_side: Optional[int], num_threads: int, native_size: tuple[int, int]):
        errors = []
        order = ["decord", "pyav"] if backend == "auto" else [backend]
        for name in order:
            if name == "decord":
                try:
                    import decord  # noqa: F401
                except ImportError as exc:
                    if backend == "decord":
                        raise VideoDecodeError(self.path, "backend 'decord' requested but decord is not installed") from exc
                    continue
                try:
                    return self._checked_decord(short_side, num_threads, native_size)
                except VideoDecodeError as exc:
                    errors.append(exc.problem)
            else:
                try:
                    frames = _PyAVFrames(self.path, short_side, num_threads)
                except VideoDecodeError as exc:
                    errors.append(exc.problem)
                    continue
                frames.expected_frames = self.scan.frames
                if self.scan.video_end > 0:  # what the packets hold, as decord counts it (not other streams')
                    frames.duration = min(frames.duration, self.scan.video_end)
                    frames.pad_limit = self.scan.video_end + self.scan.frame_period
                frames.slack_frames = self.scan.slack_frames(self.tolerance)
                self._notes.extend(f"decord rejected: {e}" for e in errors)
                return frames
        raise VideoDecodeError(self.path, "; ".join(errors) or "no decoder available")

    def _checked_decord(self, short_side: Optional[int], num_threads: int, native_size: tuple[int, int]) -> _DecordFrames:
        """decord, kept only when its timestamps are the container's (else it is closed and refused)."""
        from minigpt4.extraction.media_checks import check_timestamps

        frames = _DecordFrames(self.path, short_side, num_threads, native_size)
        try:
            check_timestamps(self.path, frames.starts, self.scan, self.tolerance, decoder="decord")
        except VideoDecodeError:
            frames.close()
            raise
        return frames

    def frames_at(self, times: np.ndarray) -> np.ndarray:
        return self._frames.frames_at(np.asarray(times, dtype=np.float64))

    def close(self) -> None:
        self._frames.close()
        if self.audio is not None:
            self.audio.close()

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
