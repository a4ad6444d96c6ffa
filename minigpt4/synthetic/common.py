"""What both synthetic corpora share: label set, splits, sampling, frame rendering and writing.

Every helper here is one computation both generators run in the same way (same random draws
in the same order), with the numbers that differ between the corpora passed in. Where the two
generators do something different (burst placement, clip streams, label order, encoders'
extra parts, transcripts, evidence), the function stays in `demo*.py` / `shift*.py`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from minigpt4.common.atomic_io import atomic_write_json
from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS, STACK_ORDER
from minigpt4.extraction.action_units import AU_INTENSITY_COLUMNS, AU_PRESENCE_COLUMNS

PathLike = Union[str, "os.PathLike[str]"]

EMOTIONS: tuple[str, ...] = DEFAULT_EMOTIONS  # neutral, angry, happy, sad, worried, surprise
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_RATIO: dict[str, int] = {"train": 8, "val": 1, "test": 2}
SENTIMENT: dict[str, str] = {
    "neutral": "neutral", "angry": "negative", "happy": "positive",
    "sad": "negative", "worried": "negative", "surprise": "positive",
}

# OpenFace's AU layout (`au [T, 35]`: 17 intensities, then 18 presences).
AU_ORDER: tuple[str, ...] = tuple(c[:4] for c in AU_INTENSITY_COLUMNS)
AU_ACTIVE = 1.5          # apex intensity from which an AU counts as visibly active
AU_PRESENT = 1.5         # intensity from which OpenFace's presence flag is on
RESTING_AUS = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU12", "AU15", "AU20", "AU23")
TALKING_AUS = ("AU10", "AU14", "AU17")

# ----------------------------------------------------------------------------- splits

SplitSizes = Union[int, Sequence[int], Mapping[str, int], None]


def split_sizes(num_clips: SplitSizes, defaults: Mapping[str, int]) -> dict[str, int]:
    """Clips per split: None = `defaults`; one int = a total split 8:1:2; three ints = train,
    val, test; a mapping split -> size (train, val, test, each >= 1)."""
    if num_clips is None:
        return dict(defaults)
    if isinstance(num_clips, Mapping):
        if set(num_clips) != set(SPLITS):
            raise ValueError(f"split sizes must name exactly {list(SPLITS)}, got {sorted(num_clips)}")
        return split_sizes([num_clips[s] for s in SPLITS], defaults)
    if isinstance(num_clips, (int, np.integer)):
        total = int(num_clips)
        if total < len(SPLITS):
            raise ValueError(f"num_clips must be >= {len(SPLITS)} (one per split), got {total}")
        denom = sum(SPLIT_RATIO.values())
        sizes = {s: max(1, (total * SPLIT_RATIO[s]) // denom) for s in SPLITS}
        sizes["train"] += total - sum(sizes.values())
        return sizes
    values = [int(x) for x in num_clips]
    if len(values) == 1:
        return split_sizes(values[0], defaults)
    if len(values) != len(SPLITS) or min(values) < 1:
        raise ValueError(f"num_clips must be one total or three positive sizes (train val test), got {values}")
    return dict(zip(SPLITS, values))


def split_index(split: str) -> int:
    """A split's position in SPLITS (99 for any other name), for seeding its streams."""
    return SPLITS.index(split) if split in SPLITS else 99


# ----------------------------------------------------------------------------- sampling


def nearest(point: Sequence[float], table: Mapping[str, Sequence[float]]) -> str:
    """The emotion of `table` nearest to `point` (squared distance; ties: EMOTIONS order)."""
    x = np.asarray(point, dtype=np.float64)
    return min(EMOTIONS, key=lambda e: float(np.sum((x - np.asarray(table[e])) ** 2)))


def sample_presence(rng: np.random.Generator, present_prob: Mapping[str, float]) -> dict[str, bool]:
    """Which modalities a clip has (each with its own probability); at least one."""
    while True:
        present = {m: bool(rng.random() < present_prob[m]) for m in STACK_ORDER}
        if any(present.values()):
            return present


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


def transcript_words(transcript: str) -> list[str]:
    """The tokens the text features are aligned to: lower-cased words without punctuation."""
    return [w.strip(".,!?;:").lower() for w in transcript.split() if w.strip(".,!?;:")]


# ----------------------------------------------------------------------------- encoders


@dataclass(frozen=True)
class Encoders:
    """Fixed random projections from cues to feature space, one set per modality.

    Each modality's space is split into orthogonal directions: its cue directions, a
    content subspace (per-frame variation that carries no emotion: phonemes, scene,
    word identity) and the rest (noise only). `baseline` is the neutral frame.
    """

    directions: Mapping[str, np.ndarray]   # modality -> [n_cues, D]
    content: Mapping[str, np.ndarray]      # modality -> [n_content, D]
    baseline: Mapping[str, np.ndarray]     # modality -> [D]


def orthonormal(rng: np.random.Generator, dim: int, n: int) -> np.ndarray:
    """`n` orthonormal random directions in R^dim, as rows [n, dim]."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, n)))
    return q[:, :n].T.copy()


def projection_bases(
    rng: np.random.Generator,
    layout: Mapping[str, tuple[int, int]],
    dims: Mapping[str, int],
    baseline_scale: float,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(directions, content, baseline) per modality of `layout` (modality -> (cue directions,
    content directions)): one orthonormal basis each, drawn in `layout` order. The neutral
    frame (`baseline_scale` times the last basis vector) sits off the cue directions, so a
    cue is a change from it."""
    directions, content, baseline = {}, {}, {}
    for name, (n_cue, n_content) in layout.items():
        basis = orthonormal(rng, dims[name], n_cue + n_content + 1)
        directions[name] = basis[:n_cue]
        content[name] = basis[n_cue : n_cue + n_content]
        baseline[name] = basis[-1] * baseline_scale
    return directions, content, baseline


def hashed_vector(key: str, dim: int) -> np.ndarray:
    """A fixed standard-normal vector [dim] seeded by the sha256 of `key` (stable across runs).
    Read-only, so callers may cache it."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    vec = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(dim)
    vec.flags.writeable = False
    return vec


# ----------------------------------------------------------------------------- rendering


def frame_count(rng: np.random.Generator, frame_range: tuple[int, int]) -> int:
    """A clip length drawn uniformly from the inclusive `frame_range`."""
    lo, hi = frame_range
    return int(rng.integers(lo, hi + 1))


def neutral_frames(
    rng: np.random.Generator, enc: Encoders, name: str, length: int, content_scale: float, frame_noise: float
) -> np.ndarray:
    """Neutral frames [length, D]: baseline + per-frame content + noise."""
    content = enc.content[name]
    weights = content_scale * rng.standard_normal((length, content.shape[0]))
    noise = frame_noise * rng.standard_normal((length, enc.baseline[name].shape[-1]))
    return enc.baseline[name][None, :] + weights @ content + noise


def render_global_visual(
    rng: np.random.Generator,
    enc: Encoders,
    valence: float,
    frame_range: tuple[int, int],
    frame_noise: float,
    scene_scale: float,
    valence_gain: float,
) -> np.ndarray:
    """`clip [T, D]`: the face's valence over the whole clip (`valence_gain` along the visual
    cue direction) under a per-clip scene offset of scale `scene_scale`."""
    t = frame_count(rng, frame_range)
    x = neutral_frames(rng, enc, "visual", t, content_scale=0.5, frame_noise=frame_noise)
    scene = scene_scale * rng.standard_normal(enc.content["visual"].shape[0]) @ enc.content["visual"]
    x += scene[None, :] + valence_gain * valence * enc.directions["visual"][0][None, :]
    return x


def resting_face(rng: np.random.Generator, t: int, resting_range: tuple[float, float], blink_prob: float) -> np.ndarray:
    """AU intensities [t, 17] of a face outside any expression: low noise, 1..3 resting AUs
    held at a level from `resting_range` for the whole clip, talking flickers of the mouth AUs
    and blinks (AU45) on a `blink_prob` share of frames."""
    inten = np.abs(0.2 * rng.standard_normal((t, len(AU_INTENSITY_COLUMNS))))
    for au in rng.choice(RESTING_AUS, size=int(rng.integers(1, 4)), replace=False):
        inten[:, AU_ORDER.index(str(au))] += rng.uniform(*resting_range)
    for au in TALKING_AUS:
        flicker = rng.random(t) < 0.3
        inten[flicker, AU_ORDER.index(au)] += rng.uniform(0.2, 0.8, size=int(flicker.sum()))
    blink = rng.random(t) < blink_prob
    inten[blink, AU_ORDER.index("AU45")] += rng.uniform(1.5, 3.0, size=int(blink.sum()))
    return inten


def expression_shape(k: int) -> np.ndarray:
    """[k] an expression's onset-apex-offset over its frames: a half sine, peak 1."""
    shape = np.sin(np.pi * (np.arange(k) + 0.5) / k)
    return shape / shape.max()


def add_expression(inten: np.ndarray, start: int, k: int, apex: Mapping[str, float]) -> None:
    """Add an expression to frames [start, start + k) of `inten` in place: each AU of `apex`
    rises and falls to its apex intensity (`expression_shape`)."""
    shape = expression_shape(k)
    for au, peak in apex.items():
        inten[start : start + k, AU_ORDER.index(au)] += peak * shape


def with_presences(rng: np.random.Generator, inten: np.ndarray) -> np.ndarray:
    """`au [T, 35]` from intensities [T, 17]: measurement noise, clipped to OpenFace's 0..5,
    then the 18 presence flags (AU_PRESENT threshold; AU28, which has no intensity column, is
    rarely present) with 3% of them flipped, as OpenFace's classifier is not perfect."""
    t = inten.shape[0]
    inten = np.clip(inten + 0.1 * rng.standard_normal(inten.shape), 0.0, 5.0)
    presence = np.zeros((t, len(AU_PRESENCE_COLUMNS)))
    for i, col in enumerate(AU_PRESENCE_COLUMNS):
        au = col[:4]
        if au in AU_ORDER:
            presence[:, i] = inten[:, AU_ORDER.index(au)] >= AU_PRESENT
        else:
            presence[:, i] = rng.random(t) < 0.03
    flips = rng.random(presence.shape) < 0.03
    presence = np.where(flips, 1.0 - presence, presence)
    return np.concatenate([inten, presence], axis=1)


def present_arrays(cues: Any, rendered: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The file's arrays (float32, keyed as in the file) of the modalities `cues.present` keeps;
    an absent modality's burst is dropped from `cues.bursts`. Every modality is rendered first,
    so a clip's draws do not depend on what is missing."""
    arrays: dict[str, np.ndarray] = {}
    for m in STACK_ORDER:
        if cues.present[m]:
            arrays[DEFAULT_FEATURE_KEYS[m]] = rendered[m].astype(np.float32)
        else:
            cues.bursts.pop(m, None)
    return arrays


# ----------------------------------------------------------------------------- the corpus on disk


@dataclass
class Clip:
    """One generated clip: its hidden cues, feature arrays (keyed as in the file), transcript
    and annotation record."""

    cues: Any
    arrays: dict[str, np.ndarray]
    transcript: Optional[str]  # None when the text modality is absent
    record: dict


@dataclass
class CorpusSummary:
    """What a generator wrote and how long it took."""

    out_dir: Path
    features_dir: Path
    annotations: Path
    latents: Path
    split_sizes: dict[str, int]
    seconds: float


def previous_ids(manifest_path: Path) -> list[str]:
    """The video ids an earlier corpus in the folder listed (to remove its stale files)."""
    if not manifest_path.is_file():
        return []
    try:
        return list(json.loads(manifest_path.read_text(encoding="utf-8")).get("video_ids", []))
    except (ValueError, OSError, AttributeError):
        return []


def write_corpus(
    out_dir: PathLike,
    clips: Iterable[Clip],
    sizes: dict[str, int],
    seed: int,
    source: str,
    manifest_name: str,
    manifest: Mapping[str, Any],
) -> CorpusSummary:
    """Write `<out>/features/<video_id>.npz` (feature_io.write_features, meta source + seed),
    `<out>/annotations.json`, `<out>/latents.json` (the hidden cues; the loader never reads it)
    and `<out>/<manifest_name>` (`manifest` + the video ids). Feature files of an earlier corpus
    in the folder that this one lacks are removed (only those its manifest lists)."""
    from minigpt4.datasets.feature_io import write_features

    t0 = time.perf_counter()
    out = Path(out_dir)
    features = out / "features"
    features.mkdir(parents=True, exist_ok=True)
    previous = previous_ids(out / manifest_name)
    records, latents, ids = [], [], []
    for clip in clips:
        vid = clip.cues.video_id
        meta = {"source": source, "seed": str(seed)}
        write_features(features / f"{vid}.npz", clip.arrays, transcript=clip.transcript, meta=meta)
        records.append(clip.record)
        latents.append(clip.cues.to_json())
        ids.append(vid)
    keep = set(ids)
    for vid in previous:
        if vid not in keep and "/" not in vid and ".." not in vid:
            (features / f"{vid}.npz").unlink(missing_ok=True)
    atomic_write_json(out / "annotations.json", records)
    atomic_write_json(out / "latents.json", latents)
    atomic_write_json(out / manifest_name, {**manifest, "video_ids": ids})
    return CorpusSummary(out, features, out / "annotations.json", out / "latents.json", sizes, time.perf_counter() - t0)


def read_latents(path: PathLike, from_json: Callable[[Mapping[str, Any]], Any]) -> list:
    """The hidden cues a generator wrote to `latents.json`, each through `from_json`."""
    with open(path, "r", encoding="utf-8") as fh:
        return [from_json(obj) for obj in json.load(fh)]


# ----------------------------------------------------------------------------- oracles and reports


def cue_blocks(widths: Mapping[str, int]) -> dict[str, slice]:
    """modality -> its columns of a generator's `cue_vector`: the blocks of `widths` back to back after
    the len(STACK_ORDER) presence flags, in `widths`' order (what `evaluation.cue_worth` replaces by
    an expert's read-out to price that expert's reading)."""
    out, start = {}, len(STACK_ORDER)
    for modality, width in widths.items():
        out[modality] = slice(start, start + width)
        start += width
    return out


def cue_table(
    rng: np.random.Generator,
    labels: np.ndarray,
    sample_cues: Callable[[np.random.Generator, str], Any],
    cue_vector: Callable[[Any], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cue vectors [n, F], latents [n, 3], labels [n]) of fresh clips, one per label index,
    their cues drawn from `rng` in label order without rendering frames."""
    feats, lat = [], []
    for y in labels:
        c = sample_cues(rng, EMOTIONS[int(y)])
        feats.append(cue_vector(c))
        lat.append(c.latent)
    return np.stack(feats), np.asarray(lat), labels


def fit_one_thread(clf: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """`clf.fit(x, y)` with one BLAS/OpenMP thread: their threads spin-wait on a shared 2-core
    machine (up to 100x slower), and one thread is fast enough at these sizes."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        clf.fit(x, y)
    return clf


def predict_one_thread(clf: Any, x: np.ndarray) -> np.ndarray:
    """`clf.predict(x)` with one BLAS/OpenMP thread (see fit_one_thread)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return clf.predict(x)


def accuracy_one_thread(clf: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict_one_thread(clf, x) == y).mean())


class TimedReport:
    """Numbers of a `--report`, each rounded to 4 digits, with the seconds it took in `timings`."""

    def __init__(self) -> None:
        self.out: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    def measure(self, name: str, fn: Callable[..., float], *args: Any) -> None:
        t0 = time.perf_counter()
        self.out[name] = round(float(fn(*args)), 4)
        self.timings[name] = round(time.perf_counter() - t0, 2)
