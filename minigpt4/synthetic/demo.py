"""A small synthetic HERO dataset whose emotions can only be read by fusing modalities.

Why synthetic: the demo must run on a fresh clone without any video, model hub or licence,
and it must still *prove* something - that the model learns to combine evidence. So every
clip is generated from a hidden emotional state and each modality sees only part of it:

- each emotion is a prototype point in a (valence, arousal, dominance) space; a clip's latent
  state is its emotion's prototype plus Gaussian noise (`demo_cues.LATENT_NOISE`);
- audio (`hubert`) carries arousal in a burst of frames whose prosody swings around the
  speaker's mean: quick swings along one direction for a loud, fast voice, one slow swing
  along another for a soft, slow one (both zero-mean, so averaging the frames cancels them);
- motion (`videomae`) carries arousal as gesture swings (again zero-mean) and dominance as
  posture (leaning forward / shrinking back); some people keep their body still;
- facial action units (`au`, OpenFace's 17 intensities + 18 presences) show the FACS pattern
  of the emotion nearest to the latent state (AU06+AU12 happy, AU01+AU04+AU15 sad,
  AU01+AU02+AU05+AU26 surprise, AU04+AU05+AU07+AU23 angry, AU01+AU04+AU20 worried) in a
  short onset-apex-offset burst over a resting face, talking flickers and blinks, faint on
  a "poker face";
- the global visual stream (`clip`) carries the valence of the face's appearance over the
  whole clip, weakly, under a per-clip scene offset;
- the words (`transcript` + `bert` token states) carry valence, but some negative clips are
  sarcastic (positive words; the label follows face and voice) and some are matter-of-fact;
- every modality may be missing (absent from the file, never zero-filled; at least one stays);
- every clip is about a `topic` (drawn independently of the emotion and recorded in its
  annotation): as real HuBERT frames carry what is said, the voice frames carry the topic's
  embedding, and the word states carry it too (a contextual shift, as BERT's do), both
  orthogonal to the emotion cue directions. Content, not emotion: what STMIL should remove
  from the audio expert (`minigpt4/models/hero/stmil.py`), and what the content probe reads.

The hidden state and what each modality shows are drawn in `demo_cues` (`ClipCues`); the
transcripts, golden evidence sentences, synergy sentence and reasoning in `demo_evidence`,
from the cue values rendered into that clip, so they are true of it; `demo_oracles` says how
much of the label the generated information allows (`latent_ceiling`, `cue_oracle_accuracy`).
This module renders the feature frames and writes the corpus.

Features are written with `minigpt4.datasets.feature_io.write_features`; the encoders that
map cues to feature vectors are fixed random projections (`ENCODER_SEED`), so every split
and every `--seed` shares one "feature extractor", like a real one would.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS
from minigpt4.synthetic import common, demo_oracles
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
from minigpt4.synthetic.demo_cues import AU_TEMPLATES, ClipCues, sample_cues
from minigpt4.synthetic.demo_evidence import WORD_POLARITY, build_record, make_transcript

GENERATOR_VERSION = "hero-demo-2"
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 480, "val": 60, "test": 120}

# Feature dims per modality (small so the default model trains on a 2-core CPU; all
# different on purpose, so un-padding from max_dim is exercised). AU keeps OpenFace's 35.
DEMO_DIMS: dict[str, int] = {"motion": 32, "audio": 48, "au": 35, "text": 32, "visual": 40}
DEMO_MAX_DIM = 64
# Frames per modality: (min, max) clip length, (min, max) length of the emotional burst.
FRAME_RANGE: dict[str, tuple[int, int]] = {
    "motion": (6, 12), "audio": (12, 24), "au": (8, 24), "visual": (6, 16),
}
BURST_RANGE: dict[str, tuple[int, int]] = {"motion": (2, 4), "audio": (4, 6), "au": (3, 5)}
# Suggested dataset max_len: the longest a modality gets (so nothing is subsampled).
DEMO_MAX_LEN: dict[str, int] = {"motion": 12, "audio": 24, "au": 24, "text": 24, "visual": 16}
FRAME_NOISE = 0.35       # per-value noise of every rendered frame
ENCODER_SEED = 20240917  # the fixed random "feature extractors"

# What the clips talk about (independent of the emotion), and how strongly each frame carries it.
DEMO_TOPICS: tuple[str, ...] = ("work", "family", "travel", "food", "weather")
TOPIC_GAIN: dict[str, float] = {"audio": 1.0, "text": 0.8}

DemoClip = Clip
DemoSummary = CorpusSummary

# ----------------------------------------------------------------------------- the encoders

# (cue directions, content directions) per projected modality
_ENCODER_LAYOUT: dict[str, tuple[int, int]] = {"audio": (2, 8), "motion": (2, 6), "visual": (1, 8), "text": (1, 16)}


def make_encoders(seed: int = ENCODER_SEED) -> Encoders:
    """The fixed projections (same for every split and every clip seed)."""
    rng = np.random.default_rng(seed)
    return Encoders(*projection_bases(rng, _ENCODER_LAYOUT, DEMO_DIMS, baseline_scale=1.0))


@lru_cache(maxsize=2)
def topic_vectors(seed: int = ENCODER_SEED) -> dict[str, np.ndarray]:
    """modality -> [len(DEMO_TOPICS), D] unit topic embeddings, orthogonal to that modality's
    cue directions (content, not emotion). Read-only, since it is cached."""
    enc = make_encoders(seed)
    rng = np.random.default_rng([int(seed), 7])
    out = {}
    for name in TOPIC_GAIN:
        cue = enc.directions[name]
        vecs = rng.standard_normal((len(DEMO_TOPICS), DEMO_DIMS[name]))
        vecs -= (vecs @ cue.T) @ cue
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs.setflags(write=False)
        out[name] = vecs
    return out


def add_topic(rng: np.random.Generator, rendered: dict[str, np.ndarray], topic: str) -> None:
    """Add the topic's embedding to every voice frame (its strength varying a little per frame)
    and every word state, in place."""
    k = DEMO_TOPICS.index(topic)
    for name, vecs in topic_vectors().items():
        frames = rendered[name]
        strength = TOPIC_GAIN[name] * rng.uniform(0.6, 1.0, size=(frames.shape[0], 1))
        rendered[name] = frames + strength * vecs[k][None, :]


@lru_cache(maxsize=4096)
def word_vector(word: str, dim: int = DEMO_DIMS["text"]) -> np.ndarray:
    """A word's fixed context-free embedding [dim] (seeded by its hash, so stable across runs).
    Read-only, since it is cached."""
    return common.hashed_vector(word.lower(), dim)


# ----------------------------------------------------------------------------- rendering


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per clip: a clip does not change when the split sizes do."""
    return np.random.default_rng([int(seed), split_index(split), int(index)])


def short_burst(rng: np.random.Generator, name: str, length: int, even: bool = False) -> tuple[int, int]:
    """(start, k) of the one emotional burst inside a clip of `length` frames, k drawn from
    `BURST_RANGE`; `even` k keeps an alternating swing exactly zero-mean."""
    lo, hi = BURST_RANGE[name]
    sizes = [k for k in range(lo, min(hi, length) + 1) if not even or k % 2 == 0]
    k = int(sizes[int(rng.integers(len(sizes)))])
    start = int(rng.integers(0, length - k + 1))
    return start, k


def fast_swing(rng: np.random.Generator, k: int) -> np.ndarray:
    """+1/-1 alternating over an even `k` frames from a random phase: sums to exactly 0."""
    if k % 2:
        raise ValueError(f"a fast swing needs an even number of frames, got {k}")
    phase = int(rng.integers(0, 2))
    return np.where((np.arange(k) + phase) % 2 == 0, 1.0, -1.0)


def slow_swing(rng: np.random.Generator, k: int) -> np.ndarray:
    """One full sine period over `k` >= 2 frames from a random phase, scaled to peak 1:
    equally spaced samples of a full period sum to exactly 0."""
    phase = float(rng.uniform(0.0, 1.0))
    wave = np.sin(2.0 * np.pi * (np.arange(k) + phase) / k)
    return wave / np.abs(wave).max()


def render_audio(rng: np.random.Generator, enc: Encoders, cues: ClipCues) -> np.ndarray:
    """`hubert [T, 48]`: arousal in a burst of prosody swings around the speaker's mean
    (zero-mean, so time-averaging cancels them): loud/fast = quick swings along one
    direction, soft/slow = one slow swing along another."""
    t = frame_count(rng, FRAME_RANGE["audio"])
    x = neutral_frames(rng, enc, "audio", t, content_scale=1.0, frame_noise=FRAME_NOISE)
    start, k = short_burst(rng, "audio", t, even=True)
    cues.bursts["audio"] = (start, k)
    a = cues.audio_arousal
    u_hi, u_lo = enc.directions["audio"]
    x[start : start + k] += 2.5 * max(a, 0.0) * fast_swing(rng, k)[:, None] * u_hi[None, :]
    x[start : start + k] += 2.5 * max(-a, 0.0) * slow_swing(rng, k)[:, None] * u_lo[None, :]
    return x


def render_motion(rng: np.random.Generator, enc: Encoders, cues: ClipCues) -> np.ndarray:
    """`videomae [T, 32]`: gesture swings (zero-mean) and posture (a shift) in a burst."""
    t = frame_count(rng, FRAME_RANGE["motion"])
    x = neutral_frames(rng, enc, "motion", t, content_scale=1.0, frame_noise=FRAME_NOISE)
    start, k = short_burst(rng, "motion", t, even=True)
    cues.bursts["motion"] = (start, k)
    u_g, u_p = enc.directions["motion"]
    x[start : start + k] += 2.5 * cues.motion_gesture * fast_swing(rng, k)[:, None] * u_g[None, :]
    x[start : start + k] += 2.0 * cues.motion_posture * u_p[None, :]
    return x


def render_visual(rng: np.random.Generator, enc: Encoders, cues: ClipCues) -> np.ndarray:
    """`clip [T, 40]`: face valence over the whole clip, weak, under a per-clip scene offset."""
    return render_global_visual(rng, enc, cues.visual_valence, FRAME_RANGE["visual"], FRAME_NOISE,
                                scene_scale=1.5, valence_gain=1.2)


def render_au(rng: np.random.Generator, cues: ClipCues) -> np.ndarray:
    """`au [T, 35]` in OpenFace's layout: 17 intensities (0..5) then 18 presences (0/1).

    Outside the burst a face is not blank: each person has a resting face (a few
    expression AUs held at a low level for the whole clip), talking flickers the mouth
    AUs, and eyes blink (AU45). The burst rises and falls (a half-sine onset-apex-offset)
    by the template of the clip's face category, all its AUs together.
    """
    t = frame_count(rng, FRAME_RANGE["au"])
    inten = resting_face(rng, t, resting_range=(0.3, 1.2), blink_prob=0.12)
    start, k = short_burst(rng, "au", t)
    cues.bursts["au"] = (start, k)
    template = AU_TEMPLATES[cues.face_category]
    add_expression(inten, start, k, {au: cues.face_intensity * peak for au, peak in template.items()})
    return with_presences(rng, inten)


def render_text(rng: np.random.Generator, enc: Encoders, cues: ClipCues, transcript: str) -> np.ndarray:
    """`bert [n_words, 32]`: each token is its word vector (off the valence direction) plus
    the word's polarity, plus a small contextual shift toward the sentence's polarity."""
    words = transcript_words(transcript)
    u_pol = enc.directions["text"][0]
    sent = {"positive": 1.0, "negative": -1.0, "neutral": 0.0}[cues.text_polarity]
    rows = []
    for w in words:
        vec = word_vector(w)
        vec = vec - (vec @ u_pol) * u_pol
        vec = 0.6 * vec + (2.0 * WORD_POLARITY.get(w, 0.0) + 0.4 * sent) * u_pol
        rows.append(vec)
    x = np.stack(rows) + FRAME_NOISE * rng.standard_normal((len(rows), DEMO_DIMS["text"]))
    return x


# ----------------------------------------------------------------------------- one clip


def make_clip(seed: int, split: str, index: int, emotion: str, encoders: Optional[Encoders] = None) -> Clip:
    """Generate one clip (cues, feature arrays keyed as in the file, transcript, record)."""
    enc = encoders or make_encoders()
    rng = _clip_rng(seed, split, index)
    video_id = f"demo_{split}_{index:04d}"
    cues = sample_cues(rng, emotion, video_id, split)
    # separate streams for rendering and wording, so tweaking one leaves the other's draws intact;
    # the topic has its own stream, so adding it changed no other draw
    render_rng = np.random.default_rng(rng.integers(0, 2**63))
    word_rng = np.random.default_rng(rng.integers(0, 2**63))
    topic_rng = np.random.default_rng([int(seed), split_index(split), int(index), 7])
    topic = DEMO_TOPICS[int(topic_rng.integers(len(DEMO_TOPICS)))]
    transcript = make_transcript(word_rng, cues.text_polarity)
    rendered = {
        "motion": render_motion(render_rng, enc, cues),
        "audio": render_audio(render_rng, enc, cues),
        "au": render_au(render_rng, cues),
        "text": render_text(render_rng, enc, cues, transcript),
        "visual": render_visual(render_rng, enc, cues),
    }
    add_topic(topic_rng, rendered, topic)
    arrays = present_arrays(cues, rendered)
    record = {**build_record(cues, transcript, word_rng), "topic": topic}
    # an absent text modality keeps no transcript either (the words were not heard)
    if not cues.present["text"]:
        record.pop("text", None)
        return Clip(cues=cues, arrays=arrays, transcript=None, record=record)
    return Clip(cues=cues, arrays=arrays, transcript=transcript, record=record)


# ----------------------------------------------------------------------------- the dataset


def split_sizes(num_clips: SplitSizes = None) -> dict[str, int]:
    """Clips per split: None = the defaults (480/60/120); one int = a total split 8:1:2;
    three ints = train, val, test; a mapping split -> size (train, val, test, each >= 1)."""
    return common.split_sizes(num_clips, DEFAULT_SPLIT_SIZES)


def split_emotions(seed: int, split: str, n: int) -> list[str]:
    """Balanced labels for a split (each emotion n//6 or n//6+1 times), in a seeded order."""
    labels = [EMOTIONS[i % len(EMOTIONS)] for i in range(n)]
    order = np.random.default_rng([int(seed), split_index(split), 2**31]).permutation(n)
    return [labels[i] for i in order]


def iter_clips(seed: int, sizes: Mapping[str, int], encoders: Optional[Encoders] = None) -> Iterator[Clip]:
    """Yield every clip of the dataset, split by split."""
    enc = encoders or make_encoders()
    for split in SPLITS:
        n = int(sizes.get(split, 0))
        for i, emotion in enumerate(split_emotions(seed, split, n)):
            yield make_clip(seed, split, i, emotion, enc)


MANIFEST = "demo_manifest.json"


def generate_demo(out_dir: PathLike, num_clips: SplitSizes = None, seed: int = 0) -> CorpusSummary:
    """Write `<out>/features/<video_id>.npz`, `<out>/annotations.json` (the format of README
    "Your own data"), `<out>/latents.json` (the hidden cues, for oracles and tests; the loader
    never reads it) and `<out>/demo_manifest.json`. Feature files of an earlier demo in the
    same folder that the new one does not have are removed (only those its manifest lists)."""
    sizes = split_sizes(num_clips)
    manifest = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "split_sizes": sizes,
        "dims": dict(DEMO_DIMS),
        "feature_keys": dict(DEFAULT_FEATURE_KEYS),
        "max_dim": DEMO_MAX_DIM,
        "max_len": dict(DEMO_MAX_LEN),
        "label_names": list(EMOTIONS),
        "topics": list(DEMO_TOPICS),
    }
    return common.write_corpus(out_dir, iter_clips(seed, sizes), sizes, seed, GENERATOR_VERSION, MANIFEST, manifest)


def measure_report(summary: CorpusSummary, seed: int = 0, test_split: str = "test") -> dict[str, Any]:
    """The numbers that say what the demo allows: the two logistic-regression baselines on
    `test_split`, the latent ceiling, the cue oracle (fresh clips and this split's clips) and the
    frame oracle (its classifier on the cues read back from the files, `demo_frame_oracle`),
    each with the seconds it took."""
    report = common.TimedReport()
    report.measure("mean_pool_logreg_baseline", mean_pool_logreg_baseline, summary.features_dir, summary.annotations,
                   "train", test_split)
    report.measure("pooled_stats_logreg_baseline", pooled_stats_logreg_baseline, summary.features_dir,
                   summary.annotations, "train", test_split)
    report.measure("latent_ceiling", demo_oracles.latent_ceiling, seed)
    report.measure("cue_oracle", demo_oracles.cue_oracle_accuracy, seed)
    report.measure(f"cue_oracle_{test_split}", demo_oracles.split_cue_oracle_accuracy, summary.latents, test_split, seed)
    from minigpt4.synthetic.demo_frame_oracle import frame_oracle_accuracy  # it imports this module

    report.measure(f"frame_oracle_{test_split}", frame_oracle_accuracy, summary.features_dir, summary.latents,
                   "train", "val", test_split)
    out = report.out
    out["chance"] = round(1.0 / len(EMOTIONS), 4)
    out["report_seconds"] = report.timings
    return out
