"""A second synthetic HERO corpus, built differently from the demo, to catch tuning to one data set.

Why a second corpus: a recipe tuned on the demo (`minigpt4.synthetic.demo`) alone can learn
the demo's exact mechanisms (zero-mean arousal swings in one short burst, balanced labels,
descriptive evidence) and collapse on data built any other way. This "shift" corpus keeps the
file layout and the label set, and changes nearly everything else:

- other feature dims (motion 24, audio 56, au 35, text 40, visual 48), other clip lengths,
  other fixed random encoders (`ENCODER_SEED`) and word embeddings;
- skewed class priors (`shift_cues.PRIORS`: neutral 0.30 ... surprise 0.08), the same in
  every split;
- emotional bursts of any length (a fifth to three fifths of the clip), anywhere in it, one
  or two segments; cue strength varies per clip from weak to strong (`STRENGTH_RANGE`);
- some cues live in the mean of frames (voice energy, posture, face valence, AU bursts) and
  some only in temporal structure (gesture oscillations are zero-mean; the pitch contour is a
  zero-mean ramp whose *direction* carries the voice's valence), and the voice's energy is
  relative to a per-speaker loudness, so neither mean pooling nor the demo's mechanism
  suffices;
- each clip has a `topic` (independent of the emotion) that the words are about and that the
  audio frames carry too, as HuBERT features carry what is said;
- more modalities missing (presence 0.6-0.75, at least one kept), absent from the file;
- evidence sentences state the answer as real MERR/EMER-style annotations do, yet each is
  true of the rendered cues; some present experts are left unannotated (`shift_evidence`).

`shift_cues.ShiftCues` holds a clip's hidden truth (`latents.json`); `shift_oracles` has the
generator oracle (a logistic regression on the noise-free cue values) and the latent ceiling
(the Bayes rule on the hidden state). This module renders the feature frames and writes
`<out>/features/<video_id>.npz` (with `feature_io.write_features`), `<out>/annotations.json`,
`<out>/latents.json` and `<out>/shift_manifest.json`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS, DIM_KEYS, STACK_ORDER
from minigpt4.synthetic import common, shift_oracles
from minigpt4.synthetic.baselines import mean_pool_logreg_baseline, pooled_stats_logreg_baseline
from minigpt4.synthetic.common import (
    EMOTIONS,
    SPLITS,
    Clip,
    CorpusSummary,
    Encoders,
    PathLike,
    SplitSizes,
    add_expression,
    frame_count,
    neutral_frames,
    present_arrays,
    projection_bases,
    render_global_visual,
    resting_face,
    split_index,
    transcript_words,
    with_presences,
)
from minigpt4.synthetic.shift_cues import PRIORS, TOPICS, ShiftCues, prior_counts, sample_cues
from minigpt4.synthetic.shift_evidence import EMOTION_KEYWORDS, WORD_POLARITY, build_record, make_transcript

GENERATOR_VERSION = "hero-shift-1"
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 640, "val": 80, "test": 160}

SHIFT_DIMS: dict[str, int] = {"motion": 24, "audio": 56, "au": 35, "text": 40, "visual": 48}
SHIFT_MAX_DIM = 64
FRAME_RANGE: dict[str, tuple[int, int]] = {
    "motion": (5, 16), "audio": (14, 32), "au": (10, 32), "visual": (4, 12),
}
# Suggested dataset max_len: the longest a modality gets, so the loader subsamples nothing
# (a uniform subsample would alias the gesture oscillations and shorten the pitch ramps).
SHIFT_MAX_LEN: dict[str, int] = {"motion": 16, "audio": 32, "au": 32, "text": 22, "visual": 12}
# Fraction of a clip its emotional burst covers (all segments together), per modality.
BURST_FRACTION: dict[str, tuple[float, float]] = {"motion": (0.3, 0.6), "audio": (0.2, 0.6), "au": (0.2, 0.5)}
SPLIT_BURST_PROB = 0.35  # bursts split in two segments
FRAME_NOISE = 0.4
ENCODER_SEED = 20250311

# Rendering gains (feature units per unit of cue).
AUDIO_ENERGY_GAIN = 1.6
AUDIO_PITCH_GAIN = 2.0
SPEAKER_LOUDNESS_STD = 0.6
TOPIC_GAIN = 1.2
MOTION_GESTURE_GAIN = 2.2
MOTION_POSTURE_GAIN = 1.5
VISUAL_VALENCE_GAIN = 1.0

ShiftClip = Clip
ShiftSummary = CorpusSummary

# ----------------------------------------------------------------------------- encoders


@dataclass(frozen=True)
class ShiftEncoders(Encoders):
    """The fixed random projections (`common.Encoders`), plus the audio's topic embeddings
    (orthogonal to its cue directions: content, not emotion)."""

    topics: np.ndarray                     # [len(TOPICS), D_audio]


# (cue directions, content directions) per projected modality. audio: energy, pitch;
# motion: gesture x, gesture y, posture; text: polarity + one per non-neutral emotion.
_ENCODER_LAYOUT: dict[str, tuple[int, int]] = {"audio": (2, 10), "motion": (3, 6), "visual": (1, 10), "text": (6, 12)}


@lru_cache(maxsize=2)
def make_encoders(seed: int = ENCODER_SEED) -> ShiftEncoders:
    """The fixed projections (same for every split and every clip seed)."""
    rng = np.random.default_rng(seed)
    directions, content, baseline = projection_bases(rng, _ENCODER_LAYOUT, SHIFT_DIMS, baseline_scale=0.8)
    cue = directions["audio"]
    topics = rng.standard_normal((len(TOPICS), SHIFT_DIMS["audio"]))
    topics -= (topics @ cue.T) @ cue
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    return ShiftEncoders(directions=directions, content=content, baseline=baseline, topics=topics)


@lru_cache(maxsize=4096)
def word_vector(word: str, dim: int = SHIFT_DIMS["text"]) -> np.ndarray:
    """A word's fixed context-free embedding (hash-seeded, salted apart from the demo's). Read-only."""
    return common.hashed_vector("shift:" + word.lower(), dim)


# ----------------------------------------------------------------------------- rendering


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per clip (salted apart from the demo's)."""
    return np.random.default_rng([int(seed), split_index(split), int(index), 0x5817])


def burst_segments(rng: np.random.Generator, name: str, length: int) -> list[tuple[int, int]]:
    """[(start, k), ...] of a modality's emotional burst: one or two segments (each >= 2
    frames, a gap between), together `BURST_FRACTION` of the clip, placed anywhere."""
    lo, hi = BURST_FRACTION[name]
    total = int(np.clip(round(rng.uniform(lo, hi) * length), 2, length))
    if total >= 4 and total + 1 <= length and rng.random() < SPLIT_BURST_PROB:
        k1 = int(rng.integers(2, total - 1))
        k2 = total - k1
        free = length - total - 1  # frames left once the two segments and a 1-frame gap are placed
        cuts = np.sort(rng.integers(0, free + 1, size=2))
        before, between = int(cuts[0]), int(cuts[1] - cuts[0])
        s1 = before
        s2 = s1 + k1 + 1 + between
        return [(s1, k1), (s2, k2)]
    start = int(rng.integers(0, length - total + 1))
    return [(start, total)]


def oscillation(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A gesture's two zero-mean components over `k` >= 2 frames (a circular movement of
    random period and phase), each scaled to peak 1: summing frames cancels them."""
    period = float(rng.choice([2.5, 3.0, 4.0]))
    phase = float(rng.uniform(0.0, 2.0 * np.pi))
    t = 2.0 * np.pi * np.arange(k) / period + phase
    out = []
    for wave in (np.cos(t), np.sin(t)):
        wave = wave - wave.mean()
        peak = np.abs(wave).max()
        out.append(wave / peak if peak > 1e-3 else np.zeros(k))  # a 2-frame segment can hit a node
    return out[0], out[1]


def pitch_ramp(k: int) -> np.ndarray:
    """A rising contour from -1 to 1 over `k` >= 2 frames (zero-mean: only its direction tells)."""
    return np.linspace(-1.0, 1.0, k)


def render_audio(rng: np.random.Generator, enc: ShiftEncoders, cues: ShiftCues) -> np.ndarray:
    """`hubert [T, 56]`: speaker (offset + habitual loudness), phonetic content and the topic
    on every frame; in the burst, energy as a shift from the speaker's loudness and valence as
    the direction of a zero-mean pitch ramp (rising = positive)."""
    t = frame_count(rng, FRAME_RANGE["audio"])
    x = neutral_frames(rng, enc, "audio", t, content_scale=1.0, frame_noise=FRAME_NOISE)
    u_energy, u_pitch = enc.directions["audio"]
    speaker = 0.8 * rng.standard_normal(enc.content["audio"].shape[0]) @ enc.content["audio"]
    cues.speaker_loudness = float(SPEAKER_LOUDNESS_STD * rng.standard_normal())
    topic = enc.topics[TOPICS.index(cues.topic)]
    x += speaker[None, :] + cues.speaker_loudness * u_energy[None, :]
    x += TOPIC_GAIN * rng.uniform(0.6, 1.0, size=(t, 1)) * topic[None, :]
    segments = burst_segments(rng, "audio", t)
    cues.bursts["audio"] = segments
    for start, k in segments:
        x[start : start + k] += AUDIO_ENERGY_GAIN * cues.audio_energy * u_energy[None, :]
        x[start : start + k] += AUDIO_PITCH_GAIN * cues.audio_tone * pitch_ramp(k)[:, None] * u_pitch[None, :]
    return x


def render_motion(rng: np.random.Generator, enc: ShiftEncoders, cues: ShiftCues) -> np.ndarray:
    """`videomae [T, 24]`: in the burst, gestures as a zero-mean circular oscillation and
    posture as a shift (which the clip mean keeps, diluted)."""
    t = frame_count(rng, FRAME_RANGE["motion"])
    x = neutral_frames(rng, enc, "motion", t, content_scale=0.8, frame_noise=FRAME_NOISE)
    u_gx, u_gy, u_p = enc.directions["motion"]
    segments = burst_segments(rng, "motion", t)
    cues.bursts["motion"] = segments
    for start, k in segments:
        wx, wy = oscillation(rng, k)
        x[start : start + k] += MOTION_GESTURE_GAIN * cues.motion_gesture * (wx[:, None] * u_gx + wy[:, None] * u_gy)
        x[start : start + k] += MOTION_POSTURE_GAIN * cues.motion_posture * u_p[None, :]
    return x


def render_visual(rng: np.random.Generator, enc: ShiftEncoders, cues: ShiftCues) -> np.ndarray:
    """`clip [T, 48]`: the face's valence over the whole clip under a per-clip scene offset."""
    return render_global_visual(rng, enc, cues.visual_valence, FRAME_RANGE["visual"], FRAME_NOISE,
                                scene_scale=1.2, valence_gain=VISUAL_VALENCE_GAIN)


def render_au(rng: np.random.Generator, cues: ShiftCues) -> np.ndarray:
    """`au [T, 35]` in OpenFace's layout (17 intensities 0..5, then 18 presences): a resting
    face, talking flickers and blinks, and the category's template in each burst segment
    with an onset-apex-offset shape at the clip's intensity."""
    t = frame_count(rng, FRAME_RANGE["au"])
    inten = resting_face(rng, t, resting_range=(0.2, 1.0), blink_prob=0.1)
    segments = burst_segments(rng, "au", t)
    cues.bursts["au"] = segments
    for start, k in segments:
        add_expression(inten, start, k, cues.au_apex())
    return with_presences(rng, inten)


def render_text(rng: np.random.Generator, enc: ShiftEncoders, cues: ShiftCues, transcript: str) -> np.ndarray:
    """`bert [n_words, 40]`: each token is its word vector (off the cue directions), plus its
    polarity, a contextual shift toward the sentence's polarity, and an emotion keyword's
    direction for the word that names a feeling."""
    words = transcript_words(transcript)
    cue_dirs = enc.directions["text"]
    u_pol, u_emo = cue_dirs[0], cue_dirs[1:]
    sent = {"positive": 1.0, "negative": -1.0, "neutral": 0.0}[cues.text_polarity]
    named = [e for e in EMOTIONS if e != "neutral"]
    rows = []
    for w in words:
        vec = np.array(word_vector(w))
        vec = 0.6 * (vec - (vec @ cue_dirs.T) @ cue_dirs)
        vec = vec + (2.0 * WORD_POLARITY.get(w, 0.0) + 0.3 * sent) * u_pol
        if w in EMOTION_KEYWORDS:
            vec = vec + 2.0 * u_emo[named.index(EMOTION_KEYWORDS[w])]
        rows.append(vec)
    return np.stack(rows) + FRAME_NOISE * rng.standard_normal((len(rows), SHIFT_DIMS["text"]))


# ----------------------------------------------------------------------------- one clip


def make_clip(seed: int, split: str, index: int, emotion: str, encoders: Optional[ShiftEncoders] = None) -> Clip:
    """Generate one clip (cues, feature arrays keyed as in the file, transcript, record)."""
    enc = encoders or make_encoders()
    rng = _clip_rng(seed, split, index)
    # round-trip through latents.json's rounding, so evidence recomputed from the file matches
    cues = ShiftCues.from_json(sample_cues(rng, emotion, f"shift_{split}_{index:04d}", split).to_json())
    # separate streams for rendering and wording, so tweaking one leaves the other's draws intact
    render_rng = np.random.default_rng(rng.integers(0, 2**63))
    word_rng = np.random.default_rng(rng.integers(0, 2**63))
    transcript = make_transcript(word_rng, cues)
    rendered = {
        "motion": render_motion(render_rng, enc, cues),
        "audio": render_audio(render_rng, enc, cues),
        "au": render_au(render_rng, cues),
        "text": render_text(render_rng, enc, cues, transcript),
        "visual": render_visual(render_rng, enc, cues),
    }
    arrays = present_arrays(cues, rendered)
    kept = transcript if cues.present["text"] else None  # absent text: the words were not heard
    return Clip(cues=cues, arrays=arrays, transcript=kept, record=build_record(cues, kept, word_rng))


# ----------------------------------------------------------------------------- the corpus


def split_sizes(num_clips: SplitSizes = None) -> dict[str, int]:
    """Clips per split: None = 640/80/160; otherwise as the demo's (8:1:2 of a total, or
    three sizes, or a mapping): `common.split_sizes`."""
    return common.split_sizes(num_clips, DEFAULT_SPLIT_SIZES)


def split_emotions(seed: int, split: str, n: int) -> list[str]:
    """A split's labels in the priors' proportions (`prior_counts`), in a seeded order."""
    counts = prior_counts(n)
    labels = [e for e in EMOTIONS for _ in range(counts[e])]
    order = np.random.default_rng([int(seed), split_index(split), 0x5817, 2**31]).permutation(n)
    return [labels[i] for i in order]


def iter_clips(seed: int, sizes: Mapping[str, int], encoders: Optional[ShiftEncoders] = None) -> Iterator[Clip]:
    """Yield every clip of the corpus, split by split."""
    enc = encoders or make_encoders()
    for split in SPLITS:
        for i, emotion in enumerate(split_emotions(seed, split, int(sizes.get(split, 0)))):
            yield make_clip(seed, split, i, emotion, enc)


MANIFEST = "shift_manifest.json"


def generate_shift(out_dir: PathLike, num_clips: SplitSizes = None, seed: int = 0) -> CorpusSummary:
    """Write `<out>/features/<video_id>.npz`, `<out>/annotations.json`, `<out>/latents.json`
    (the hidden cues; the loader never reads it) and `<out>/shift_manifest.json`. Feature
    files of an earlier shift corpus in the folder that this one lacks are removed."""
    sizes = split_sizes(num_clips)
    manifest = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "split_sizes": sizes,
        "priors": dict(PRIORS),
        "topics": list(TOPICS),
        "dims": dict(SHIFT_DIMS),
        "feature_keys": dict(DEFAULT_FEATURE_KEYS),
        "max_dim": SHIFT_MAX_DIM,
        "max_len": dict(SHIFT_MAX_LEN),
        "label_names": list(EMOTIONS),
    }
    return common.write_corpus(out_dir, iter_clips(seed, sizes), sizes, seed, GENERATOR_VERSION, MANIFEST, manifest)


def train_options(out_dir: PathLike) -> list[str]:
    """The `--options` that point `train_hero.py --cfg-path configs/models/hero.yaml` at a
    shift corpus: its dims, its paths and a max_len that subsamples nothing."""
    out = Path(out_dir)
    opts = [f"model.{DIM_KEYS[m]}={SHIFT_DIMS[m]}" for m in ("visual", "motion", "audio", "au", "text")]
    opts += [
        f"datasets.hero_dataset.build_info.images.storage={out / 'features'}",
        f"datasets.hero_dataset.build_info.annotations.storage={out / 'annotations.json'}",
        f"datasets.hero_dataset.max_dim={SHIFT_MAX_DIM}",
    ]
    opts += [f"datasets.hero_dataset.max_len.{m}={SHIFT_MAX_LEN[m]}" for m in STACK_ORDER]
    return opts


def measure_report(summary: CorpusSummary, seed: int = 0, test_split: str = "test", n_oracle: int = 20000) -> dict[str, Any]:
    """The numbers that say what the corpus allows, on `test_split`: majority class, the two
    logistic-regression baselines, the generator oracle (fit on `n_oracle` fresh clips; on
    this split's clips and on fresh ones), the latent ceiling and the frame oracle (the same
    classifier on the cues read back from the files, `shift_frame_oracle`), each with its seconds."""
    report = common.TimedReport()
    feats, ann = summary.features_dir, summary.annotations
    report.measure("majority_class", shift_oracles.majority_accuracy, ann, "train", test_split)
    report.measure("mean_pool_logreg_baseline", mean_pool_logreg_baseline, feats, ann, "train", test_split)
    report.measure("pooled_stats_logreg_baseline", pooled_stats_logreg_baseline, feats, ann, "train", test_split)
    t0 = time.perf_counter()
    oracle = shift_oracles.fit_cue_oracle(seed, n_oracle)
    report.timings["fit_cue_oracle"] = round(time.perf_counter() - t0, 2)
    report.measure(f"cue_oracle_{test_split}", shift_oracles.split_cue_oracle_accuracy, summary.latents, test_split,
                   seed, n_oracle, oracle)
    report.measure("cue_oracle", shift_oracles.cue_oracle_accuracy, seed, n_oracle, n_oracle // 2, oracle)
    report.measure("latent_ceiling", shift_oracles.latent_ceiling, seed, n_oracle)
    from minigpt4.synthetic.shift_frame_oracle import frame_oracle_accuracy  # it imports this module

    report.measure(f"frame_oracle_{test_split}", frame_oracle_accuracy, summary.features_dir, summary.latents,
                   "train", "val", test_split)
    out = report.out
    out["report_seconds"] = report.timings
    return out
