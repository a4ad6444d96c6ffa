"""Evidence sentences worded from what extraction measured, for clips no one annotated.

Why: most clips have no annotated evidence, so the evidence decoders had nothing to learn from
and the reasoner read nothing checkable about them. Every sentence here states only numbers the
feature file holds (OpenFace action units, pyin prosody, optical flow, the transcript, CLIP's
zero-shot scene labels): nothing is invented, and a function returns None when nothing was
measured or nothing is notable. The thresholds are named constants, so a sentence can be traced
to the rule that wrote it. Pure functions of numpy arrays (layer 1: no extraction imports).

Layouts (written by minigpt4/extraction/, README "1. Extract features"):
  au      [T, 35] OpenFace 2.0: 17 intensities (0..5) in AU_INTENSITY_NUMBERS order, then 18
          presences; row k is window k (or the k-th entry of `meta_au_windows` when some
          windows had no usable face) at `meta_au_fps`
  prosody [N, C] columns `meta_prosody_columns` (f0_hz, voiced_prob, rms_dbfs, speech) at `meta_prosody_fps`
  flow    [N, C] columns `meta_flow_columns` (mean_speed, p90_speed; frame diagonals per second),
          row k the step from k/fps to (k+1)/fps at `meta_flow_fps`
  scene   [1, K] probabilities of the prompts in `meta_scene_labels` (a JSON list)
"""
from __future__ import annotations

import json
import math
from typing import Mapping, Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------- action units

# The OpenFace 2.0 intensity columns AU01_r .. AU45_r, in file order (extraction/action_units.py).
AU_INTENSITY_NUMBERS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
FACS_NAMES: dict[int, str] = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 10: "upper lip raiser",
    12: "lip corner puller", 14: "dimpler", 15: "lip corner depressor", 17: "chin raiser",
    20: "lip stretcher", 23: "lip tightener", 25: "lips part", 26: "jaw drop", 45: "blink",
}
AU_MAX_INTENSITY = 5.0
AU_MIN_PEAK = 1.0  # OpenFace intensity below 1 of 5 is a trace, within its noise: not worded
AU_TOP = 2  # the strongest actions worded
AU_ACTIVE_SHARE = 0.5  # an action lasts while its intensity stays >= this share of its peak
AU_IGNORED: tuple[int, ...] = (45,)  # blinks are frequent and strong but say nothing about emotion

# ----------------------------------------------------------------------------- voice

PITCH_LOW_HZ = 120.0  # median f0 below: low pitch; above PITCH_HIGH_HZ: high
PITCH_HIGH_HZ = 220.0
RANGE_FLAT_ST = 4.0  # 10-90% f0 range (semitones) below: flat; above RANGE_WIDE_ST: widely varying
RANGE_WIDE_ST = 8.0
LOUD_DBFS = -20.0  # median speech level above: loud; below QUIET_DBFS: quiet
QUIET_DBFS = -35.0
PAUSES_FEW = 0.15  # share of non-speech windows between the first and last speech window
PAUSES_MANY = 0.35
MIN_VOICED_WINDOWS = 3  # fewer voiced windows: no pitch worth wording

# ----------------------------------------------------------------------------- motion

STILL_BELOW = 0.01  # mean flow speed (frame diagonals per second) below: still
RESTLESS_ABOVE = 0.04  # above: restless
PEAK_FACTOR = 2.0  # a peak is worded when it is this many times the clip's mean (and not still)

# ----------------------------------------------------------------------------- words, scene

WORDS_MAX_CHARS = 160
SCENE_MIN_PROB = 0.25  # the top label is worded only above this
SCENE_OVER_CHANCE = 1.5  # ... and at least this many times chance (1 / K)
SCENE_SECOND_PROB = 0.2  # a runner-up above this is worded too


def _seconds(t: float) -> str:
    return f"{t:.1f} s"


def parse_index_ranges(text: str) -> np.ndarray:
    """"0-2,5,7-8" -> [0, 1, 2, 5, 7, 8] (the `meta_au_windows` format); "" -> []."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return np.asarray(out, dtype=np.int64)


def au_sentence(au: np.ndarray, fps: float, windows: Optional[np.ndarray] = None) -> Optional[str]:
    """The AU_TOP strongest facial actions (peak intensity >= AU_MIN_PEAK), each with its onset,
    apex and duration, e.g. "AU12 lip corner puller (peak 2.4 of 5) from 1.0 s, apex 2.0 s, for 1.5 s".

    au: `[T, >=17]` OpenFace layout; fps: its row rate; windows: the window index of each row
    (None: row k is window k). None when no action reaches AU_MIN_PEAK.
    """
    a = np.asarray(au, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < len(AU_INTENSITY_NUMBERS) or not fps > 0:
        return None
    win = np.arange(len(a)) if windows is None else np.asarray(windows, dtype=np.int64)
    if win.shape != (len(a),):
        return None
    inten = np.nan_to_num(a[:, : len(AU_INTENSITY_NUMBERS)])
    peaks = inten.max(axis=0)
    order = [j for j in np.argsort(-peaks, kind="stable")
             if peaks[j] >= AU_MIN_PEAK and AU_INTENSITY_NUMBERS[j] not in AU_IGNORED][:AU_TOP]
    parts = []
    for j in order:
        col, apex = inten[:, j], int(np.argmax(inten[:, j]))
        active = col >= AU_ACTIVE_SHARE * peaks[j]
        lo = hi = apex  # the run of active rows in consecutive windows around the apex
        while lo > 0 and active[lo - 1] and win[lo - 1] == win[lo] - 1:
            lo -= 1
        while hi < len(col) - 1 and active[hi + 1] and win[hi + 1] == win[hi] + 1:
            hi += 1
        n = AU_INTENSITY_NUMBERS[j]
        parts.append(f"AU{n:02d} {FACS_NAMES[n]} (peak {peaks[j]:.1f} of {AU_MAX_INTENSITY:g}) from "
                     f"{_seconds(win[lo] / fps)}, apex {_seconds(win[apex] / fps)}, for {_seconds((win[hi] - win[lo] + 1) / fps)}")
    return "; ".join(parts) or None


def _column(arr: np.ndarray, columns: Sequence[str], name: str) -> Optional[np.ndarray]:
    cols = list(columns)
    if name not in cols or arr.ndim != 2 or arr.shape[1] != len(cols):
        return None
    return np.nan_to_num(arr[:, cols.index(name)].astype(np.float64))


def voice_sentence(prosody: np.ndarray, columns: Sequence[str], fps: float) -> Optional[str]:
    """Pitch level and range, loudness and pauses, e.g. "high, widely varying pitch (median 210 Hz,
    range 9 semitones), loud (-12 dBFS), few pauses (8%)". None with under MIN_VOICED_WINDOWS voiced windows."""
    p = np.asarray(prosody, dtype=np.float32)
    f0 = _column(p, columns, "f0_hz")
    if f0 is None or not fps > 0:
        return None
    voiced = f0 > 0
    if voiced.sum() < MIN_VOICED_WINDOWS:
        return None
    med = float(np.median(f0[voiced]))
    lo, hi = np.percentile(f0[voiced], [10, 90])
    span = 12 * math.log2(hi / lo) if lo > 0 else 0.0
    level = "low" if med < PITCH_LOW_HZ else "high" if med > PITCH_HIGH_HZ else "medium"
    shape = "flat" if span < RANGE_FLAT_ST else "widely varying" if span > RANGE_WIDE_ST else "varying"
    parts = [f"{level}, {shape} pitch (median {med:.0f} Hz, range {span:.0f} semitones)"]
    speech = _column(p, columns, "speech")
    talking = voiced if speech is None or not (speech > 0.5).any() else speech > 0.5
    db = _column(p, columns, "rms_dbfs")
    if db is not None:
        lvl = float(np.median(db[talking]))
        word = "loud" if lvl > LOUD_DBFS else "quiet" if lvl < QUIET_DBFS else "moderately loud"
        parts.append(f"{word} ({lvl:.0f} dBFS)")
    if speech is not None and (speech > 0.5).sum() >= 2:
        idx = np.flatnonzero(speech > 0.5)
        share = float(1.0 - (speech[idx[0]: idx[-1] + 1] > 0.5).mean())
        word = "few" if share < PAUSES_FEW else "many" if share > PAUSES_MANY else "some"
        parts.append(f"{word} pauses ({share:.0%})")
    return ", ".join(parts)


def motion_sentence(flow: np.ndarray, columns: Sequence[str], fps: float) -> Optional[str]:
    """Still or restless, and when movement peaks, e.g. "still (mean 0.004 frame diagonals/s), a burst
    of movement from 2.0 s to 3.0 s, peak at 2.4 s". None when no step was measured."""
    speed = _column(np.asarray(flow, dtype=np.float32), columns, "mean_speed")
    if speed is None or len(speed) == 0 or not fps > 0:
        return None
    mean = float(speed.mean())
    word = "still" if mean < STILL_BELOW else "restless" if mean > RESTLESS_ABOVE else "moving a little"
    text = f"{word} (mean {mean:.3f} frame diagonals/s)"
    k = int(np.argmax(speed))
    peak = float(speed[k])
    if peak >= STILL_BELOW and peak >= PEAK_FACTOR * mean and len(speed) > 1:
        lo = hi = k
        while lo > 0 and speed[lo - 1] >= 0.5 * peak:
            lo -= 1
        while hi < len(speed) - 1 and speed[hi + 1] >= 0.5 * peak:
            hi += 1
        text += (f", a burst of movement from {_seconds(lo / fps)} to {_seconds((hi + 1) / fps)}, "
                 f"peak at {_seconds((k + 0.5) / fps)}")
    elif word != "still":
        text += f", most movement at {_seconds((k + 0.5) / fps)}"
    return text


def words_sentence(transcript: Optional[str]) -> Optional[str]:
    """The transcript quoted, cut at a word boundary to WORDS_MAX_CHARS; None when empty."""
    text = " ".join(str(transcript or "").split())
    if not text:
        return None
    if len(text) > WORDS_MAX_CHARS:
        cut = text[:WORDS_MAX_CHARS].rsplit(" ", 1)[0] or text[:WORDS_MAX_CHARS]
        text = cut.rstrip(",;:.") + " ..."
    return f'says "{text}"'


def scene_sentence(probs: np.ndarray, labels: Sequence[str]) -> Optional[str]:
    """The most probable scene label(s) with their probability, e.g. "looks like a person outdoors
    (0.62) or a person in a car (0.21)". None when no label reaches SCENE_MIN_PROB and
    SCENE_OVER_CHANCE times chance."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0 or p.size != len(labels):
        return None
    order = np.argsort(-p, kind="stable")
    if p[order[0]] < max(SCENE_MIN_PROB, SCENE_OVER_CHANCE / p.size):
        return None
    text = f"looks like {labels[order[0]]} ({p[order[0]]:.2f})"
    if p.size > 1 and p[order[1]] >= SCENE_SECOND_PROB:
        text += f" or {labels[order[1]]} ({p[order[1]]:.2f})"
    return text


def _columns(meta: Mapping[str, str], key: str) -> list[str]:
    return [c.strip() for c in str(meta.get(key, "")).split(",") if c.strip()]


def _rate(meta: Mapping[str, str], key: str, default: Optional[float] = None) -> Optional[float]:
    try:
        value = float(meta[key])
    except (KeyError, TypeError, ValueError):
        return default
    return value if value > 0 else default


def _au_fps(meta: Mapping[str, str], default: float) -> float:
    """`meta_au_fps`, else the au fps recorded in `meta_settings`, else `default`."""
    fps = _rate(meta, "au_fps")
    if fps is None:
        try:
            fps = _rate(json.loads(meta.get("settings", "{}")).get("au", {}), "fps")
        except (ValueError, AttributeError):
            fps = None
    return fps or float(default)


def measured_sentences(arrays: Mapping[str, np.ndarray], meta: Mapping[str, str], transcript: str,
                       au_fps_default: float) -> dict[str, str]:
    """One measured sentence per expert (EXPERT_ORDER names: motion <- flow, audio <- prosody,
    au <- au, text <- transcript, visual <- scene; synergy gets none), only where one was worded.

    arrays / meta: a feature file's arrays and `meta_*` strings (keys without the prefix), as
    read_features returns them; au_fps_default: the au rate when the file does not record one.
    """
    out: dict[str, Optional[str]] = {}
    if "flow" in arrays:
        out["motion"] = motion_sentence(arrays["flow"], _columns(meta, "flow_columns"), _rate(meta, "flow_fps", 0.0))
    if "prosody" in arrays:
        out["audio"] = voice_sentence(arrays["prosody"], _columns(meta, "prosody_columns"), _rate(meta, "prosody_fps", 0.0))
    if "au" in arrays:
        try:
            windows = parse_index_ranges(meta["au_windows"]) if meta.get("au_windows") else None
        except ValueError:
            windows = np.zeros(0, np.int64)
        # a window record that does not match the rows leaves their times unknown: no sentence
        if windows is None or len(windows) == len(arrays["au"]):
            out["au"] = au_sentence(arrays["au"], _au_fps(meta, au_fps_default), windows)
    out["text"] = words_sentence(transcript)
    if "scene" in arrays:
        try:
            labels = json.loads(meta.get("scene_labels", "[]"))
        except ValueError:
            labels = []
        out["visual"] = scene_sentence(arrays["scene"], [str(x) for x in labels]) if isinstance(labels, list) else None
    return {k: v for k, v in out.items() if v}
