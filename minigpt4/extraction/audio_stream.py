"""The audio track for extraction: 16 kHz mono float32, streamed, damaged packets skipped.

Why packet by packet: PyAV's `container.decode()` generator dies on the first packet the
decoder refuses, so one damaged AAC/AC3 packet cost the whole video (visual features
included). ffmpeg skips such a packet and goes on; so does this reader, writing silence of
the packet's duration in its place so the rest of the track stays aligned with the video.
Whether enough of the track decoded to keep it is the caller's call (`audio_verdict`).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from minigpt4.extraction.video_io import AUDIO_SAMPLE_RATE, PathLike, VideoDecodeError, _av

# A track keeps its audio modalities when at least this share of its packets decodes.
MIN_DECODED_SHARE = 0.5


class AudioStream:
    """The first audio track as 16 kHz mono float32, read in consecutive time segments."""

    def __init__(self, path: PathLike, sample_rate: int = AUDIO_SAMPLE_RATE) -> None:
        av = _av()
        self.path = str(path)
        self.sample_rate = sample_rate
        try:
            self._container = av.open(self.path)
        except Exception as exc:
            raise VideoDecodeError(path, f"PyAV cannot open the file ({exc})") from exc
        if not self._container.streams.audio:
            self._container.close()
            raise VideoDecodeError(path, "no audio stream")
        stream = self._container.streams.audio[0]
        self._origin = 0.0
        vs = self._container.streams.video
        if vs and vs[0].start_time is not None:
            self._origin = float(vs[0].start_time * vs[0].time_base)
        self._packets: Iterator[Any] = self._container.demux(stream)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self._consumed = 0  # samples handed out so far (position of the buffer start)
        self._started = False
        self._ended = False
        self.packets = 0  # non-empty packets seen
        self.bad_packets = 0  # of those, refused by the decoder (skipped)
        self.first_error: Optional[str] = None

    def _push(self, frames) -> None:
        for f in frames:
            a = f.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            if a.size:
                self._buf.append(a)
                self._buffered += a.size

    def _push_silence(self, n: int) -> None:
        self._buf.append(np.zeros(n, dtype=np.float32))
        self._buffered += n

    def _skip(self, packet, problem: str) -> None:
        """A damaged packet: count it and, once the track has started, keep its time as silence."""
        self.bad_packets += 1
        if self.first_error is None:
            self.first_error = problem
        if self._started and packet.duration and packet.time_base is not None:
            self._push_silence(int(round(float(packet.duration * packet.time_base) * self.sample_rate)))

    def _start_at(self, frame) -> None:
        """Align the track with the video clock: a late start is silence, an early one is cut."""
        self._started = True
        offset = int(round(((frame.time or 0.0) - self._origin) * self.sample_rate))
        if offset > 0:
            self._push_silence(offset)
        elif offset < 0:
            self._consumed += offset  # the first -offset samples fall before t = 0

    def _decode_more(self) -> bool:
        """Decode the next packet into the buffer; False at the end of the track."""
        if self._ended:
            return False
        try:
            packet = next(self._packets)
        except StopIteration:
            packet = None
        except Exception as exc:  # the demuxer gave up (a cut file): what came before is kept
            self.first_error = self.first_error or f"demux stopped ({exc})"
            packet = None
        if packet is None:
            self._ended = True
            self._push(self._resampler.resample(None))
            return False
        if packet.size:
            self.packets += 1
        try:
            frames = packet.decode()  # the final empty packet flushes the decoder
        except Exception as exc:  # av.error.InvalidDataError etc.: skip it, as ffmpeg does
            self._skip(packet, str(exc).split(";")[0])
            return True
        for frame in frames:
            if not self._started:
                self._start_at(frame)
            self._push(self._resampler.resample(frame))
        return True

    def read_until(self, end: Optional[float]) -> np.ndarray:
        """Samples from the current position up to `end` seconds (None: to the end of the track)."""
        target = None if end is None else int(round(end * self.sample_rate))
        while target is None or self._consumed + self._buffered < target:
            if not self._decode_more():
                break
        data = np.concatenate(self._buf) if self._buf else np.zeros(0, dtype=np.float32)
        if self._consumed < 0:  # drop samples before t = 0
            drop = min(-self._consumed, data.size)
            data = data[drop:]
            self._consumed += drop
        take = data.size if target is None else max(0, min(data.size, target - self._consumed))
        out, rest = data[:take], data[take:]
        self._buf = [rest] if rest.size else []
        self._buffered = rest.size
        self._consumed += take
        return np.ascontiguousarray(out, dtype=np.float32)

    def damage(self) -> Optional[str]:
        """None when every packet so far decoded, else a note: how many were skipped and why."""
        if self.first_error is None:
            return None
        return f"{self.bad_packets} of {self.packets} audio packets damaged, skipped ({self.first_error})"

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:
            pass


def audio_verdict(packets: int, bad_packets: int, samples: int) -> bool:
    """Whether a track keeps its audio modalities: some samples decoded and at most half the packets were bad."""
    if samples <= 0 or packets <= 0:
        return False
    return (packets - bad_packets) >= MIN_DECODED_SHARE * packets


def read_audio(path: PathLike, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """The whole first audio track as float32 mono `[S]` (small files and tests; use AudioStream for long ones)."""
    stream = AudioStream(path, sample_rate)
    try:
        return stream.read_until(None)
    finally:
        stream.close()
