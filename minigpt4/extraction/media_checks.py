"""Is the video whole, and is a decoder's timeline the container's? Checked before frames are used.

Why: a truncated file still opens. An mp4 written with `faststart` keeps its index at the
front, so a copy cut at 50% opens with the full duration declared; an MKV or AVI cut short
keeps its header. Decoders then stop early, pad with their last frame (PyAV) or return other
frames (decord), and the features come out partial with exit 0. One demux pass (packets
only, nothing decoded: a few percent of the decoding time) tells what the file really holds;
comparing it with what the container declares catches the cut, and its packet timestamps
are the reference a decoder's own timestamps are checked against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from minigpt4.extraction.video_io import PathLike, VideoDecodeError, _av, frames_shown_at

if TYPE_CHECKING:
    from omegaconf import DictConfig

# Seconds (or that many frames' worth) a file may hold less than its header declares.
DEFAULT_TOLERANCE = 0.25
TOLERANCE_KEY = "decode.truncation_tolerance"


def tolerance_from(cfg: "DictConfig") -> float:
    """`decode.truncation_tolerance` (the default when the config has no such key), checked."""
    value = cfg.decode.get("truncation_tolerance", DEFAULT_TOLERANCE)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{TOLERANCE_KEY} must be a number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass
class PacketScan:
    """What one demux pass found in a file, next to what its headers declare (times in seconds)."""

    declared_duration: Optional[float]  # None: nothing declared, nothing to compare
    declared_by: str  # "video stream" or "container"
    declared_frames: int  # 0: not declared
    frames: int  # video packets (an empty one is a dropped frame: it still fills a frame's slot)
    starts: np.ndarray  # sorted start times of the timed video packets, from the video's start
    video_end: float  # end of the last video packet, from the video's start
    end: float  # end of the last packet of any stream, from the container's start
    fps: float

    @property
    def frame_period(self) -> float:
        """The typical frame duration (median packet spacing; 1/fps when too few packets)."""
        if len(self.starts) > 1:
            gaps = np.diff(self.starts)
            gaps = gaps[gaps > 0]
            if gaps.size:
                return float(np.median(gaps))
        return 1.0 / self.fps if self.fps > 0 else 0.04

    def slack_frames(self, tolerance: float) -> int:
        """The tolerance as a frame count (at least one frame)."""
        return max(1, int(math.floor(tolerance / self.frame_period + 1e-9)))


def _seconds(value: Optional[int], time_base) -> Optional[float]:
    return None if value is None or time_base is None else float(value * time_base)


def scan_packets(path: PathLike) -> PacketScan:
    """Demux every packet of `path` once (no decoding) and note the declared duration and frame count."""
    av = _av()
    try:
        container = av.open(str(path))
    except Exception as exc:  # av.error.* or OSError
        raise VideoDecodeError(path, f"cannot open the file as media ({exc})") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        video = container.streams.video[0]
        c_start = container.start_time / 1_000_000 if container.start_time is not None else 0.0
        v_start = _seconds(video.start_time, video.time_base)
        stream_duration = _seconds(video.duration, video.time_base)
        if stream_duration:
            declared, by = stream_duration, "video stream"
        elif container.duration:
            declared, by = container.duration / 1_000_000, "container"
        else:
            declared, by = None, ""
        fps = float(video.average_rate) if video.average_rate else 0.0
        declared_frames, v_index = int(video.frames or 0), video.index  # (the stream dies with the container)
        starts, frames, v_end, end = [], 0, None, None
        try:
            for packet in container.demux():
                stamp = packet.pts if packet.pts is not None else packet.dts
                is_video = packet.stream.index == v_index
                if stamp is None or packet.time_base is None:
                    frames += bool(is_video and packet.size)  # (the final empty packet flushes the decoder)
                    continue
                t0 = float(stamp * packet.time_base)
                t1 = t0 + float((packet.duration or 0) * packet.time_base)
                end = t1 if end is None else max(end, t1)
                if is_video:
                    frames += 1
                    if packet.size:
                        starts.append(t0)
                    v_end = t1 if v_end is None else max(v_end, t1)
        except Exception:  # the demuxer gave up part-way (a cut file): judge what was read
            pass
    arr = np.sort(np.asarray(starts, dtype=np.float64))
    origin = v_start if v_start is not None else (float(arr[0]) if arr.size else 0.0)
    scan = PacketScan(declared, by, declared_frames, frames, arr - origin,
                      (v_end - origin) if v_end is not None else 0.0, (end - c_start) if end is not None else 0.0, fps)
    if scan.video_end <= 0 and arr.size:  # packets without durations: the last start plus one frame
        scan.video_end = float(scan.starts[-1]) + scan.frame_period
    return scan


def check_whole(path: PathLike, scan: PacketScan, tolerance: float = DEFAULT_TOLERANCE) -> None:
    """Raise VideoDecodeError when the file holds less than it declares (beyond `tolerance` seconds)."""
    if scan.frames == 0:
        raise VideoDecodeError(path, "the video stream holds no packets")
    problems = []
    if scan.declared_duration is not None:
        held = scan.video_end if scan.declared_by == "video stream" else max(scan.end, scan.video_end)
        if scan.declared_duration - held > tolerance:
            problems.append(f"the {scan.declared_by} declares {scan.declared_duration:.2f} s, the file holds {held:.2f} s")
    if scan.declared_frames and scan.declared_frames - scan.frames > scan.slack_frames(tolerance):
        problems.append(f"the header declares {scan.declared_frames} video frames, the file holds {scan.frames}")
    if problems:
        raise VideoDecodeError(path, "truncated or incomplete file: " + "; ".join(problems) +
                               f" (tolerance {tolerance:g} s, {TOLERANCE_KEY})")


def check_timestamps(path: PathLike, starts: np.ndarray, scan: PacketScan, tolerance: float = DEFAULT_TOLERANCE,
                     decoder: str = "decord") -> None:
    """Raise VideoDecodeError unless a decoder's frame start times are usable and the container's.

    Usable: finite, non-decreasing, inside the stream. The container's: as many frames as the
    file's video packets and no start more than one frame away from the packet timestamps.
    """
    starts = np.asarray(starts, dtype=np.float64)
    where = f"{decoder}'s frame timestamps"
    if starts.size == 0:
        raise VideoDecodeError(path, f"{where}: none")
    bad = ~np.isfinite(starts)
    if bad.any():
        raise VideoDecodeError(path, f"{where}: {int(bad.sum())} of {starts.size} are not finite")
    back = np.flatnonzero(np.diff(starts) < -1e-6)
    if back.size:
        i = int(back[0]) + 1
        raise VideoDecodeError(path, f"{where} go backwards at frame {i} ({starts[i - 1]:.3f} s -> {starts[i]:.3f} s); "
                                     f"{back.size} such steps")
    lo, hi = float(starts[0]), float(starts[-1])
    if lo < -tolerance or hi > max(scan.video_end, scan.declared_duration or 0.0) + tolerance:
        raise VideoDecodeError(path, f"{where} run from {lo:.3f} s to {hi:.3f} s, outside the stream "
                                     f"(0 to {scan.video_end:.3f} s)")
    ref = scan.starts
    if ref.size == 0:
        return  # the packets carry no timestamps: nothing to compare with
    if abs(starts.size - ref.size) > scan.slack_frames(tolerance):
        raise VideoDecodeError(path, f"{decoder} counts {starts.size} frames, the container's packets {ref.size}")
    # Frame i by the decoder's clock must be frame i (or a neighbour) by the container's.
    n = min(starts.size, ref.size)
    off = np.abs(frames_shown_at(ref, starts[:n]) - np.arange(n))
    worst = int(np.argmax(off))
    if off[worst] > 1:
        raise VideoDecodeError(path, f"{where} disagree with the container's by {int(off[worst])} frames "
                                     f"(frame {worst}: {starts[worst]:.3f} s vs {ref[worst]:.3f} s), more than one frame")
