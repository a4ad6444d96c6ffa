"""A small synthetic HERO dataset whose emotions can only be read by fusing modalities.

Why synthetic: the demo must run on a fresh clone without any video, model hub or licence,
and it must still *prove* something - that the model learns to combine evidence. So every
clip is generated from a hidden emotional state and each modality sees only part of it:

- each emotion is a prototype point in a (valence, arousal, dominance) space; a clip's latent
  state is its emotion's prototype plus Gaussian noise (`LATENT_NOISE`);
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
- every modality may be missing (absent from the file, never zero-filled; at least one stays).

The golden evidence sentences, the synergy sentence and the reasoning are built from the
cue values that were rendered into that clip, so they are true of it (a sentence for a
missing modality is absent). `ClipCues` holds those values; `latent_ceiling` and
`cue_oracle_accuracy` say how much of the label the generated information allows.

Features are written with `minigpt4.datasets.feature_io.write_features`; the encoders that
map cues to feature vectors are fixed random projections (`ENCODER_SEED`), so every split
and every `--seed` shares one "feature extractor", like a real one would.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from minigpt4.common.atomic_io import atomic_write_json
from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS, STACK_ORDER
from minigpt4.extraction.action_units import AU_INTENSITY_COLUMNS, AU_PRESENCE_COLUMNS

PathLike = Union[str, "os.PathLike[str]"]

GENERATOR_VERSION = "hero-demo-1"
EMOTIONS: tuple[str, ...] = DEFAULT_EMOTIONS  # neutral, angry, happy, sad, worried, surprise
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 480, "val": 60, "test": 120}
SPLIT_RATIO: dict[str, int] = {"train": 8, "val": 1, "test": 2}

# Feature dims per modality (small so the default model trains on a 2-core CPU; all
# different on purpose, so un-padding from max_dim is exercised). AU keeps OpenFace's 35.
DEMO_DIMS: dict[str, int] = {"motion": 32, "audio": 48, "au": 35, "text": 32, "visual": 40}
DEMO_MAX_DIM = 64
# Frames per modality: (min, max) clip length, (min, max) length of the emotional burst.
FRAME_RANGE: dict[str, tuple[int, int]] = {
    "motion": (6, 12), "audio": (12, 24), "au": (8, 24), "visual": (6, 16),
}
BURST_RANGE: dict[str, tuple[int, int]] = {"motion": (2, 4), "audio": (4, 6), "au": (3, 5)}
TEXT_WORDS_RANGE = (6, 24)
# Suggested dataset max_len: the longest a modality gets (so nothing is subsampled).
DEMO_MAX_LEN: dict[str, int] = {"motion": 12, "audio": 24, "au": 24, "text": 24, "visual": 16}

# (valence, arousal, dominance) prototype of each emotion.
PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "neutral": (0.0, 0.0, 0.0),
    "angry": (-1.0, 1.0, 0.8),
    "happy": (1.0, 0.3, 0.3),
    "sad": (-1.0, -1.0, -0.6),
    "worried": (-1.0, 0.6, -0.6),
    "surprise": (0.6, 1.2, -0.2),
}
SENTIMENT: dict[str, str] = {
    "neutral": "neutral", "angry": "negative", "happy": "positive",
    "sad": "negative", "worried": "negative", "surprise": "positive",
}
LATENT_NOISE = 0.25      # std of the clip's latent state around its prototype
OBS_NOISE = 0.15         # std of each modality's own view of the latent
PRESENT_PROB: dict[str, float] = {"motion": 0.8, "audio": 0.85, "au": 0.75, "text": 0.85, "visual": 0.85}
WORDS_VALENCE = 0.45     # |valence| from which the words carry it
SARCASM_PROB = 0.3       # negative clips whose words are positive
FLAT_WORDS_PROB = 0.15   # clips whose words carry no valence
STILL_BODY_PROB = 0.2    # clips where the body does not move
POKER_FACE_PROB = 0.25   # clips where the face barely shows the emotion
FRAME_NOISE = 0.35       # per-value noise of every rendered frame
ENCODER_SEED = 20240917  # the fixed random "feature extractors"

# FACS templates: AU -> apex intensity (OpenFace's 0..5 scale) at full expressivity.
AU_TEMPLATES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"AU06": 2.5, "AU12": 3.5, "AU25": 1.2},
    "sad": {"AU01": 2.0, "AU04": 2.5, "AU15": 3.0, "AU17": 1.2},
    "surprise": {"AU01": 3.0, "AU02": 3.0, "AU05": 2.0, "AU26": 3.0},
    "angry": {"AU04": 3.5, "AU05": 2.0, "AU07": 3.0, "AU23": 2.5},
    "worried": {"AU01": 3.0, "AU04": 2.5, "AU20": 3.0},
}
AU_NAMES: dict[str, str] = {
    "AU01": "inner brow raiser", "AU02": "outer brow raiser", "AU04": "brow lowerer",
    "AU05": "upper lid raiser", "AU06": "cheek raiser", "AU07": "lid tightener",
    "AU09": "nose wrinkler", "AU10": "upper lip raiser", "AU12": "lip corner puller",
    "AU14": "dimpler", "AU15": "lip corner depressor", "AU17": "chin raiser",
    "AU20": "lip stretcher", "AU23": "lip tightener", "AU25": "lips part", "AU26": "jaw drop",
}
AU_ACTIVE = 1.5          # apex intensity from which an AU counts as visibly active
AU_PRESENT = 1.5         # intensity from which OpenFace's presence flag is on

# ----------------------------------------------------------------------------- cue levels
# Every evidence sentence is chosen by a *level* computed from the clip's cue values, so the
# tests can recompute the level and check the sentence is one of that level's phrasings.


def arousal_level(a: float) -> str:
    if a > 0.6:
        return "high"
    if a > 0.25:
        return "raised"
    if a >= -0.25:
        return "calm"
    if a >= -0.6:
        return "subdued"
    return "low"


def valence_level(v: float) -> str:
    if v > 0.5:
        return "positive"
    if v > 0.2:
        return "slightly_positive"
    if v >= -0.2:
        return "neutral"
    if v >= -0.5:
        return "slightly_negative"
    return "negative"


def gesture_level(g: float) -> str:
    if g > 0.6:
        return "vigorous"
    if g > 0.25:
        return "some"
    return "still"


def posture_level(d: float) -> str:
    if d > 0.3:
        return "forward"
    if d < -0.3:
        return "back"
    return "upright"


AUDIO_PHRASES: dict[str, tuple[str, ...]] = {
    "high": ("The voice is loud and fast.", "The speaker talks loudly and quickly."),
    "raised": ("The voice is lively and a little raised.", "The speaker sounds lively."),
    "calm": ("The voice is calm and even.", "The speaker talks at an even pace."),
    "subdued": ("The voice is quiet and subdued.", "The speaker sounds subdued."),
    "low": ("The voice is soft and slow.", "The speaker talks softly and slowly."),
}
VISUAL_PHRASES: dict[str, tuple[str, ...]] = {
    "positive": ("The face looks cheerful.", "The face looks bright and pleased."),
    "slightly_positive": ("The face looks mildly pleased.", "The face looks faintly content."),
    "neutral": ("The face looks composed.", "The face looks neutral."),
    "slightly_negative": ("The face looks slightly uneasy.", "The face looks a little tense."),
    "negative": ("The face looks troubled.", "The face looks upset."),
}
GESTURE_PHRASES: dict[str, str] = {"vigorous": "gestures vigorously", "some": "moves a little", "still": "barely moves"}
POSTURE_PHRASES: dict[str, str] = {"forward": "leans forward", "back": "shrinks back", "upright": "stays upright"}
TEXT_PHRASES: dict[str, tuple[str, ...]] = {
    "positive": ("The words are positive.", "The words sound upbeat."),
    "negative": ("The words are negative.", "The words sound bitter."),
    "neutral": ("The words are matter-of-fact.", "The words carry no feeling."),
}

# ----------------------------------------------------------------------------- transcripts
OPENERS = ("well", "so", "okay", "honestly", "listen", "you know", "I mean", "look")
CLOSERS = ("to be honest", "I guess", "for sure", "if you ask me", "right now", "again", "as usual", "today")
POSITIVE_WORDS = {
    "adj": ("wonderful", "great", "lovely", "amazing", "fantastic"),
    "verb": ("love", "enjoy", "adore"),
    "adv": ("perfectly", "beautifully", "brilliantly"),
}
NEGATIVE_WORDS = {
    "adj": ("terrible", "awful", "horrible", "dreadful", "miserable"),
    "verb": ("hate", "regret", "dread"),
    "adv": ("badly", "horribly", "terribly"),
}
POLAR_CLAUSES = (
    "this is {adj}",
    "what a {adj} day",
    "I {verb} how it turned out",
    "everything went {adv}",
    "the whole meeting was {adj}",
    "I really {verb} this place",
)
NEUTRAL_CLAUSES = (
    "the meeting is at noon",
    "I took the train this morning",
    "they moved the table to the corner",
    "the report has three parts",
    "we met near the station",
    "my brother lives in the north",
    "the shop closes at six",
    "I have to call them back",
)
WORD_POLARITY: dict[str, float] = {
    **{w: 1.0 for ws in POSITIVE_WORDS.values() for w in ws},
    **{w: -1.0 for ws in NEGATIVE_WORDS.values() for w in ws},
}


# ----------------------------------------------------------------------------- data classes


@dataclass
class ClipCues:
    """Everything the generator decided about one clip (the hidden truth behind its files).

    latent: (valence, arousal, dominance); present: modality -> bool. The per-modality
    values are what that modality shows (before projection to features and frame noise);
    they are kept even for an absent modality but then nothing of them reaches the clip.
    """

    video_id: str
    split: str
    emotion: str
    latent: tuple[float, float, float]
    present: dict[str, bool]
    audio_arousal: float
    motion_gesture: float
    motion_posture: float
    still_body: bool
    visual_valence: float
    face_category: str
    face_intensity: float
    poker_face: bool
    text_polarity: str
    sarcastic: bool
    flat_words: bool
    bursts: dict[str, tuple[int, int]] = field(default_factory=dict)  # modality -> (start, length)

    def to_json(self) -> dict:
        out = asdict(self)
        out["latent"] = [round(float(x), 6) for x in self.latent]
        out["bursts"] = {k: list(v) for k, v in self.bursts.items()}
        for key in ("audio_arousal", "motion_gesture", "motion_posture", "visual_valence", "face_intensity"):
            out[key] = round(float(out[key]), 6)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ClipCues":
        """Inverse of to_json (for latents.json)."""
        data = dict(obj)
        data["latent"] = tuple(float(x) for x in data["latent"])
        data["bursts"] = {k: (int(v[0]), int(v[1])) for k, v in dict(data.get("bursts") or {}).items()}
        return cls(**data)

    def active_aus(self) -> list[str]:
        """Expression AUs whose apex intensity is visibly active (AU_ACTIVE), in OpenFace order."""
        template = AU_TEMPLATES[self.face_category]
        return [au for au in _AU_ORDER if template.get(au, 0.0) * self.face_intensity >= AU_ACTIVE]


_AU_ORDER: tuple[str, ...] = tuple(c[:4] for c in AU_INTENSITY_COLUMNS)


@dataclass
class DemoClip:
    """One generated clip: its feature arrays (keyed as in the file), transcript and record."""

    cues: ClipCues
    arrays: dict[str, np.ndarray]
    transcript: Optional[str]  # None when the text modality is absent
    record: dict


@dataclass
class DemoSummary:
    """What `generate_demo` wrote and how long it took."""

    out_dir: Path
    features_dir: Path
    annotations: Path
    latents: Path
    split_sizes: dict[str, int]
    seconds: float


# ----------------------------------------------------------------------------- the encoders


def _orthonormal(rng: np.random.Generator, dim: int, n: int) -> np.ndarray:
    """`n` orthonormal random directions in R^dim, as rows [n, dim]."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, n)))
    return q[:, :n].T.copy()


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


# (cue directions, content directions) per projected modality
_ENCODER_LAYOUT: dict[str, tuple[int, int]] = {"audio": (2, 8), "motion": (2, 6), "visual": (1, 8), "text": (1, 16)}


def make_encoders(seed: int = ENCODER_SEED) -> Encoders:
    """The fixed projections (same for every split and every clip seed)."""
    rng = np.random.default_rng(seed)
    directions, content, baseline = {}, {}, {}
    for name, (n_cue, n_content) in _ENCODER_LAYOUT.items():
        dim = DEMO_DIMS[name]
        basis = _orthonormal(rng, dim, n_cue + n_content + 1)
        directions[name] = basis[:n_cue]
        content[name] = basis[n_cue : n_cue + n_content]
        # the neutral frame sits off the cue directions: a cue is a change from it
        baseline[name] = basis[-1] * 1.0
    return Encoders(directions=directions, content=content, baseline=baseline)


@lru_cache(maxsize=4096)
def word_vector(word: str, dim: int = DEMO_DIMS["text"]) -> np.ndarray:
    """A word's fixed context-free embedding [dim] (seeded by its hash, so stable across runs).
    Read-only, since it is cached."""
    digest = hashlib.sha256(word.lower().encode("utf-8")).digest()
    vec = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(dim)
    vec.flags.writeable = False
    return vec


# ----------------------------------------------------------------------------- sampling


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per clip: a clip does not change when the split sizes do."""
    return np.random.default_rng([int(seed), SPLITS.index(split) if split in SPLITS else 99, int(index)])


def nearest_emotion(latent: Sequence[float]) -> str:
    """The emotion whose prototype is nearest to `latent` (the Bayes rule on the latent)."""
    z = np.asarray(latent, dtype=np.float64)
    dists = {e: float(np.sum((z - np.asarray(p)) ** 2)) for e, p in PROTOTYPES.items()}
    return min(EMOTIONS, key=lambda e: dists[e])


def sample_presence(rng: np.random.Generator) -> dict[str, bool]:
    """Which modalities a clip has; at least one."""
    while True:
        present = {m: bool(rng.random() < PRESENT_PROB[m]) for m in STACK_ORDER}
        if any(present.values()):
            return present


def sample_cues(rng: np.random.Generator, emotion: str, video_id: str = "", split: str = "") -> ClipCues:
    """Draw a clip's hidden state and what each modality shows of it (no frames yet)."""
    if emotion not in PROTOTYPES:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {list(EMOTIONS)}")
    z = np.asarray(PROTOTYPES[emotion]) + LATENT_NOISE * rng.standard_normal(3)
    v, a, d = (float(x) for x in z)
    present = sample_presence(rng)
    obs = OBS_NOISE * rng.standard_normal(5)
    still = bool(rng.random() < STILL_BODY_PROB)
    poker = bool(rng.random() < POKER_FACE_PROB)
    face_intensity = float(rng.uniform(0.15, 0.35) if poker else rng.uniform(0.6, 1.1))
    # words: valence of the latent, unless flat or sarcastic
    if v > WORDS_VALENCE:
        polarity = "positive"
    elif v < -WORDS_VALENCE:
        polarity = "negative"
    else:
        polarity = "neutral"
    sarcastic = polarity == "negative" and bool(rng.random() < SARCASM_PROB)
    flat = (not sarcastic) and bool(rng.random() < FLAT_WORDS_PROB)
    if sarcastic:
        polarity = "positive"
    elif flat:
        polarity = "neutral"
    return ClipCues(
        video_id=video_id,
        split=split,
        emotion=emotion,
        latent=(v, a, d),
        present=present,
        audio_arousal=a + float(obs[0]),
        motion_gesture=0.0 if still else max(a + float(obs[1]), 0.0),
        motion_posture=0.0 if still else d + float(obs[2]),
        still_body=still,
        visual_valence=v + float(obs[3]),
        face_category=nearest_emotion(z),
        face_intensity=face_intensity,
        poker_face=poker,
        text_polarity=polarity,
        sarcastic=sarcastic,
        flat_words=flat,
    )


# ----------------------------------------------------------------------------- rendering


def _burst(rng: np.random.Generator, name: str, length: int, even: bool = False) -> tuple[int, int]:
    """(start, k) of the emotional burst inside a clip of `length` frames; `even` k keeps an
    alternating swing exactly zero-mean."""
    lo, hi = BURST_RANGE[name]
    sizes = [k for k in range(lo, min(hi, length) + 1) if not even or k % 2 == 0]
    k = int(sizes[int(rng.integers(len(sizes)))])
    start = int(rng.integers(0, length - k + 1))
    return start, k


def _frames(rng: np.random.Generator, enc: Encoders, name: str, length: int, content_scale: float) -> np.ndarray:
    """Neutral frames [length, D]: baseline + per-frame content + noise."""
    content = enc.content[name]
    weights = content_scale * rng.standard_normal((length, content.shape[0]))
    noise = FRAME_NOISE * rng.standard_normal((length, DEMO_DIMS[name]))
    return enc.baseline[name][None, :] + weights @ content + noise


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
    t = int(rng.integers(FRAME_RANGE["audio"][0], FRAME_RANGE["audio"][1] + 1))
    x = _frames(rng, enc, "audio", t, content_scale=1.0)
    start, k = _burst(rng, "audio", t, even=True)
    cues.bursts["audio"] = (start, k)
    a = cues.audio_arousal
    u_hi, u_lo = enc.directions["audio"]
    x[start : start + k] += 2.5 * max(a, 0.0) * fast_swing(rng, k)[:, None] * u_hi[None, :]
    x[start : start + k] += 2.5 * max(-a, 0.0) * slow_swing(rng, k)[:, None] * u_lo[None, :]
    return x


def render_motion(rng: np.random.Generator, enc: Encoders, cues: ClipCues) -> np.ndarray:
    """`videomae [T, 32]`: gesture swings (zero-mean) and posture (a shift) in a burst."""
    t = int(rng.integers(FRAME_RANGE["motion"][0], FRAME_RANGE["motion"][1] + 1))
    x = _frames(rng, enc, "motion", t, content_scale=1.0)
    start, k = _burst(rng, "motion", t, even=True)
    cues.bursts["motion"] = (start, k)
    u_g, u_p = enc.directions["motion"]
    x[start : start + k] += 2.5 * cues.motion_gesture * fast_swing(rng, k)[:, None] * u_g[None, :]
    x[start : start + k] += 2.0 * cues.motion_posture * u_p[None, :]
    return x


def render_visual(rng: np.random.Generator, enc: Encoders, cues: ClipCues) -> np.ndarray:
    """`clip [T, 40]`: face valence over the whole clip, weak, under a per-clip scene offset."""
    t = int(rng.integers(FRAME_RANGE["visual"][0], FRAME_RANGE["visual"][1] + 1))
    x = _frames(rng, enc, "visual", t, content_scale=0.5)
    scene = 1.5 * rng.standard_normal(enc.content["visual"].shape[0]) @ enc.content["visual"]
    x += scene[None, :] + 1.2 * cues.visual_valence * enc.directions["visual"][0][None, :]
    return x


RESTING_AUS = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU12", "AU15", "AU20", "AU23")
TALKING_AUS = ("AU10", "AU14", "AU17")


def render_au(rng: np.random.Generator, cues: ClipCues) -> np.ndarray:
    """`au [T, 35]` in OpenFace's layout: 17 intensities (0..5) then 18 presences (0/1).

    Outside the burst a face is not blank: each person has a resting face (a few
    expression AUs held at a low level for the whole clip), talking flickers the mouth
    AUs, and eyes blink (AU45). The burst rises and falls (a half-sine onset-apex-offset)
    by the template of the clip's face category, all its AUs together.
    """
    t = int(rng.integers(FRAME_RANGE["au"][0], FRAME_RANGE["au"][1] + 1))
    inten = np.abs(0.2 * rng.standard_normal((t, len(AU_INTENSITY_COLUMNS))))
    for au in rng.choice(RESTING_AUS, size=int(rng.integers(1, 4)), replace=False):
        inten[:, _AU_ORDER.index(str(au))] += rng.uniform(0.3, 1.2)
    for au in TALKING_AUS:
        flicker = rng.random(t) < 0.3
        inten[flicker, _AU_ORDER.index(au)] += rng.uniform(0.2, 0.8, size=int(flicker.sum()))
    blink = rng.random(t) < 0.12
    inten[blink, _AU_ORDER.index("AU45")] += rng.uniform(1.5, 3.0, size=int(blink.sum()))
    start, k = _burst(rng, "au", t)
    cues.bursts["au"] = (start, k)
    shape = np.sin(np.pi * (np.arange(k) + 0.5) / k)  # onset -> apex -> offset, apex ~ 1
    shape = shape / shape.max()
    for au, peak in AU_TEMPLATES[cues.face_category].items():
        inten[start : start + k, _AU_ORDER.index(au)] += cues.face_intensity * peak * shape
    inten = np.clip(inten + 0.1 * rng.standard_normal(inten.shape), 0.0, 5.0)
    presence = np.zeros((t, len(AU_PRESENCE_COLUMNS)))
    for i, col in enumerate(AU_PRESENCE_COLUMNS):
        au = col[:4]
        if au in _AU_ORDER:
            presence[:, i] = inten[:, _AU_ORDER.index(au)] >= AU_PRESENT
        else:  # AU28 (lip suck) has no intensity column: rare spontaneous presence
            presence[:, i] = rng.random(t) < 0.03
    flips = rng.random(presence.shape) < 0.03  # OpenFace's classifier is not perfect
    presence = np.where(flips, 1.0 - presence, presence)
    return np.concatenate([inten, presence], axis=1)


def make_transcript(rng: np.random.Generator, polarity: str) -> str:
    """A sentence of 6..24 words whose polar words carry `polarity` (none for neutral)."""
    lo, hi = TEXT_WORDS_RANGE
    bank = POSITIVE_WORDS if polarity == "positive" else NEGATIVE_WORDS
    while True:
        parts = []
        if rng.random() < 0.7:
            parts.append(OPENERS[int(rng.integers(len(OPENERS)))])
        n_clauses = int(rng.integers(1, 4))
        for i in range(n_clauses):
            if polarity != "neutral" and (i == 0 or rng.random() < 0.5):
                clause = POLAR_CLAUSES[int(rng.integers(len(POLAR_CLAUSES)))]
                clause = clause.format(**{k: v[int(rng.integers(len(v)))] for k, v in bank.items()})
            else:
                clause = NEUTRAL_CLAUSES[int(rng.integers(len(NEUTRAL_CLAUSES)))]
            parts.append(clause)
        if rng.random() < 0.6:
            parts.append(CLOSERS[int(rng.integers(len(CLOSERS)))])
        text = ", ".join(parts)
        n = len(text.split())
        if lo <= n <= hi:
            return text[0].upper() + text[1:] + "."


def transcript_words(transcript: str) -> list[str]:
    """The tokens the text features are aligned to: lower-cased words without punctuation."""
    return [w.strip(".,!?;:").lower() for w in transcript.split() if w.strip(".,!?;:")]


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


# ----------------------------------------------------------------------------- sentences


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def motion_sentence(cues: ClipCues) -> str:
    if cues.still_body:
        return "The body stays still."
    g, p = gesture_level(cues.motion_gesture), posture_level(cues.motion_posture)
    return f"The person {GESTURE_PHRASES[g]} and {POSTURE_PHRASES[p]}."


def au_sentence(cues: ClipCues) -> str:
    active = cues.active_aus()
    if not active:
        return "No facial action unit rises above a trace."
    named = [f"{au} ({AU_NAMES[au]})" for au in active]
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return f"{listed} {'is' if len(named) == 1 else 'are'} active."


def voice_state(cues: ClipCues) -> str:
    """animated / calm / subdued, from the voice's arousal."""
    a = cues.audio_arousal
    return "animated" if a > 0.25 else ("subdued" if a < -0.25 else "calm")


def body_state(cues: ClipCues) -> str:
    """animated / still / withdrawn, from gestures and posture."""
    if gesture_level(cues.motion_gesture) != "still":
        return "animated"
    if posture_level(cues.motion_posture) == "back":
        return "withdrawn"
    return "still"


# the body state that matches each voice state
_MATCHING_BODY = {"animated": "animated", "calm": "still", "subdued": "withdrawn"}
_AGREE_WORDS = {"animated": "animated", "calm": "calm", "subdued": "subdued"}


def synergy_sentence(cues: ClipCues) -> Optional[str]:
    """Whether voice and body agree in arousal (needs both audio and motion)."""
    if not (cues.present["audio"] and cues.present["motion"]):
        return None
    voice, body = voice_state(cues), body_state(cues)
    if _MATCHING_BODY[voice] == body:
        return f"Voice and body agree: both are {_AGREE_WORDS[voice]}."
    return f"Voice and body disagree: the voice is {voice} but the body is {body}."


def face_valence_sign(cues: ClipCues) -> int:
    """+1 / -1 / 0: the valence the present face modalities show (visual global, then AUs)."""
    votes = []
    if cues.present["visual"]:
        lvl = valence_level(cues.visual_valence)
        votes.append(1 if "positive" in lvl else (-1 if "negative" in lvl else 0))
    if cues.present["au"] and cues.active_aus():
        votes.append(int(np.sign(PROTOTYPES[cues.face_category][0])))
    s = sum(votes)
    return int(np.sign(s))


def reasoning_sentence(cues: ClipCues) -> str:
    """How the present cues agree or conflict, ending in the label."""
    parts = []
    face = face_valence_sign(cues)
    words = {"positive": 1, "negative": -1, "neutral": 0}[cues.text_polarity] if cues.present["text"] else None
    arousal_sources = []
    if cues.present["audio"]:
        arousal_sources.append(f"the voice is {voice_state(cues)}")
    if cues.present["motion"]:
        arousal_sources.append(f"the body is {body_state(cues)}")
    if arousal_sources:
        parts.append(" and ".join(arousal_sources).capitalize() + ".")
    if face != 0:
        parts.append(f"The face reads {'positive' if face > 0 else 'negative'}.")
    if words is not None and face != 0 and words != 0 and words != face:
        parts.append("The words contradict the face, so they are not taken literally.")
    elif words is not None and words != 0 and (face == words):
        parts.append("The words agree with the face.")
    elif words is not None and words != 0:
        parts.append(f"The words sound {cues.text_polarity}.")
    parts.append(f"Together these point to {cues.emotion}.")
    return " ".join(parts)


def build_record(cues: ClipCues, transcript: str, rng: np.random.Generator) -> dict:
    """The annotation record (DESIGN.md section 3) of a clip; evidence only for present modalities."""
    evidence: dict[str, str] = {}
    if cues.present["visual"]:
        evidence["visual"] = _pick(rng, VISUAL_PHRASES[valence_level(cues.visual_valence)])
    if cues.present["motion"]:
        evidence["motion"] = motion_sentence(cues)
    if cues.present["audio"]:
        evidence["audio"] = _pick(rng, AUDIO_PHRASES[arousal_level(cues.audio_arousal)])
    if cues.present["au"]:
        evidence["au"] = au_sentence(cues)
    if cues.present["text"]:
        evidence["text"] = _pick(rng, TEXT_PHRASES[cues.text_polarity])
    syn = synergy_sentence(cues)
    if syn is not None:
        evidence["synergy"] = syn
    return {
        "video_id": cues.video_id,
        "emotion": cues.emotion,
        "split": cues.split,
        "sentiment": SENTIMENT[cues.emotion],
        "text": transcript,
        "evidence": evidence,
        "reasoning": reasoning_sentence(cues),
    }


# ----------------------------------------------------------------------------- one clip


def make_clip(seed: int, split: str, index: int, emotion: str, encoders: Optional[Encoders] = None) -> DemoClip:
    """Generate one clip (cues, feature arrays keyed as in the file, transcript, record)."""
    enc = encoders or make_encoders()
    rng = _clip_rng(seed, split, index)
    video_id = f"demo_{split}_{index:04d}"
    cues = sample_cues(rng, emotion, video_id, split)
    # separate streams for rendering and wording, so tweaking one leaves the other's draws intact
    render_rng = np.random.default_rng(rng.integers(0, 2**63))
    word_rng = np.random.default_rng(rng.integers(0, 2**63))
    transcript = make_transcript(word_rng, cues.text_polarity)
    keys = DEFAULT_FEATURE_KEYS
    arrays: dict[str, np.ndarray] = {}
    # render every modality (so a clip's draws do not depend on what is missing), keep the present
    rendered = {
        "motion": render_motion(render_rng, enc, cues),
        "audio": render_audio(render_rng, enc, cues),
        "au": render_au(render_rng, cues),
        "text": render_text(render_rng, enc, cues, transcript),
        "visual": render_visual(render_rng, enc, cues),
    }
    for m in STACK_ORDER:
        if cues.present[m]:
            arrays[keys[m]] = rendered[m].astype(np.float32)
        else:
            cues.bursts.pop(m, None)
    record = build_record(cues, transcript, word_rng)
    # an absent text modality keeps no transcript either (the words were not heard)
    if not cues.present["text"]:
        record.pop("text", None)
        return DemoClip(cues=cues, arrays=arrays, transcript=None, record=record)
    return DemoClip(cues=cues, arrays=arrays, transcript=transcript, record=record)


# ----------------------------------------------------------------------------- the dataset


SplitSizes = Union[int, Sequence[int], Mapping[str, int], None]


def split_sizes(num_clips: SplitSizes = None) -> dict[str, int]:
    """Clips per split: None = the defaults (480/60/120); one int = a total split 8:1:2;
    three ints = train, val, test; a mapping split -> size (train, val, test, each >= 1)."""
    if num_clips is None:
        return dict(DEFAULT_SPLIT_SIZES)
    if isinstance(num_clips, Mapping):
        if set(num_clips) != set(SPLITS):
            raise ValueError(f"split sizes must name exactly {list(SPLITS)}, got {sorted(num_clips)}")
        return split_sizes([num_clips[s] for s in SPLITS])
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
        return split_sizes(values[0])
    if len(values) != len(SPLITS) or min(values) < 1:
        raise ValueError(f"num_clips must be one total or three positive sizes (train val test), got {values}")
    return dict(zip(SPLITS, values))


def split_emotions(seed: int, split: str, n: int) -> list[str]:
    """Balanced labels for a split (each emotion n//6 or n//6+1 times), in a seeded order."""
    labels = [EMOTIONS[i % len(EMOTIONS)] for i in range(n)]
    order = np.random.default_rng([int(seed), SPLITS.index(split) if split in SPLITS else 99, 2**31]).permutation(n)
    return [labels[i] for i in order]


def iter_clips(seed: int, sizes: Mapping[str, int], encoders: Optional[Encoders] = None) -> Iterator[DemoClip]:
    """Yield every DemoClip of the dataset, split by split."""
    enc = encoders or make_encoders()
    for split in SPLITS:
        n = int(sizes.get(split, 0))
        for i, emotion in enumerate(split_emotions(seed, split, n)):
            yield make_clip(seed, split, i, emotion, enc)


MANIFEST = "demo_manifest.json"


def generate_demo(out_dir: PathLike, num_clips: SplitSizes = None, seed: int = 0) -> DemoSummary:
    """Write `<out>/features/<video_id>.npz`, `<out>/annotations.json` (DESIGN.md 3),
    `<out>/latents.json` (the hidden cues, for oracles and tests; the loader never reads it)
    and `<out>/demo_manifest.json`. Feature files of an earlier demo in the same folder that
    the new one does not have are removed (only those its manifest lists)."""
    from minigpt4.datasets.feature_io import write_features

    t0 = time.perf_counter()
    out = Path(out_dir)
    features = out / "features"
    sizes = split_sizes(num_clips)
    out.mkdir(parents=True, exist_ok=True)
    features.mkdir(parents=True, exist_ok=True)
    previous: list[str] = []
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            previous = list(json.loads(manifest_path.read_text(encoding="utf-8")).get("video_ids", []))
        except (ValueError, OSError, AttributeError):
            previous = []
    records, latents, ids = [], [], []
    for clip in iter_clips(seed, sizes):
        vid = clip.cues.video_id
        write_features(
            features / f"{vid}.npz",
            clip.arrays,
            transcript=clip.transcript,
            meta={"source": GENERATOR_VERSION, "seed": str(seed)},
        )
        records.append(clip.record)
        latents.append(clip.cues.to_json())
        ids.append(vid)
    keep = set(ids)
    for vid in previous:
        if vid not in keep and "/" not in vid and ".." not in vid:
            (features / f"{vid}.npz").unlink(missing_ok=True)
    atomic_write_json(out / "annotations.json", records)
    atomic_write_json(out / "latents.json", latents)
    manifest = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "split_sizes": sizes,
        "dims": dict(DEMO_DIMS),
        "feature_keys": dict(DEFAULT_FEATURE_KEYS),
        "max_dim": DEMO_MAX_DIM,
        "max_len": dict(DEMO_MAX_LEN),
        "label_names": list(EMOTIONS),
        "video_ids": ids,
    }
    atomic_write_json(manifest_path, manifest)
    return DemoSummary(
        out_dir=out,
        features_dir=features,
        annotations=out / "annotations.json",
        latents=out / "latents.json",
        split_sizes=sizes,
        seconds=time.perf_counter() - t0,
    )


# ----------------------------------------------------------------------------- ceilings


def cue_vector(cues: ClipCues) -> np.ndarray:
    """The information a clip's files carry, without frame noise: per modality a presence
    flag and what it shows (zeros when absent). [5 + 1 + 2 + 17 + 3 + 1] floats."""
    p = cues.present
    au = np.zeros(len(_AU_ORDER))
    if p["au"]:
        for name, peak in AU_TEMPLATES[cues.face_category].items():
            au[_AU_ORDER.index(name)] = cues.face_intensity * peak
    words = np.zeros(3)
    if p["text"]:
        words[("positive", "negative", "neutral").index(cues.text_polarity)] = 1.0
    parts = [
        np.array([float(p[m]) for m in STACK_ORDER]),
        np.array([cues.audio_arousal if p["audio"] else 0.0]),
        np.array([cues.motion_gesture, cues.motion_posture]) * float(p["motion"]),
        au,
        words,
        np.array([cues.visual_valence if p["visual"] else 0.0]),
    ]
    return np.concatenate(parts)


def sample_cue_table(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` fresh clips' (cue vectors [n, F], latents [n, 3], labels [n]) without rendering
    frames. Drawn from a stream of its own, disjoint from the dataset's clip streams."""
    rng = np.random.default_rng([int(seed), 7777])
    labels = rng.integers(0, len(EMOTIONS), size=n)
    feats, lat = [], []
    for y in labels:
        c = sample_cues(rng, EMOTIONS[int(y)])
        feats.append(cue_vector(c))
        lat.append(c.latent)
    return np.stack(feats), np.asarray(lat), labels


def latent_ceiling(seed: int = 0, n: int = 20000) -> float:
    """Accuracy of the Bayes rule on the hidden latent itself (nearest prototype): no model
    that sees only the files can beat it, since every file is a noisy function of the latent
    (the face shows the category nearest the latent, not the label)."""
    _, lat, y = sample_cue_table(seed, n)
    pred = np.array([EMOTIONS.index(nearest_emotion(z)) for z in lat])
    return float((pred == y).mean())


def fit_cue_oracle(seed: int = 0, n_train: int = 20000) -> Any:
    """A gradient-boosted tree classifier fit on `n_train` fresh clips' noise-free cue vectors."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    x, _, y = sample_cue_table(seed, n_train)
    clf = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, random_state=0)
    # OpenMP threads spin-wait on a shared 2-core machine (100x slower): one thread is fast enough
    with threadpool_limits(limits=1):
        clf.fit(x, y)
    return clf


def _predict(clf: Any, x: np.ndarray) -> np.ndarray:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return clf.predict(x)


def cue_oracle_accuracy(seed: int = 0, n_train: int = 20000, n_test: int = 10000) -> float:
    """Test accuracy of the cue oracle on fresh clips: an estimate of the best accuracy the
    demo's information allows (features add frame noise on top of the cues, so a model on
    them should stay at or below this)."""
    clf = fit_cue_oracle(seed, n_train)
    x, _, y = sample_cue_table(seed + 1_000_003, n_test)
    return float((_predict(clf, x) == y).mean())


def load_latents(path: PathLike) -> list[ClipCues]:
    """The hidden cues generate_demo wrote to `latents.json`."""
    with open(path, "r", encoding="utf-8") as fh:
        return [ClipCues.from_json(obj) for obj in json.load(fh)]


def split_cue_oracle_accuracy(latents_path: PathLike, split: str = "test", seed: int = 0, n_train: int = 20000) -> float:
    """The cue oracle's accuracy on the very clips of one generated split (the ceiling to
    hold a model's accuracy on that split against)."""
    cues = [c for c in load_latents(latents_path) if c.split == split]
    if not cues:
        raise ValueError(f"{latents_path}: no clips in split {split!r}")
    clf = fit_cue_oracle(seed, n_train)
    x = np.stack([cue_vector(c) for c in cues])
    y = np.array([EMOTIONS.index(c.emotion) for c in cues])
    return float((_predict(clf, x) == y).mean())


def measure_report(summary: DemoSummary, seed: int = 0, test_split: str = "test") -> dict[str, Any]:
    """The numbers that say what the demo allows: the two logistic-regression baselines on
    `test_split`, the latent ceiling and the cue oracle (fresh clips and this split's clips),
    each with the seconds it took."""
    from minigpt4.datasets.baselines import mean_pool_logreg_baseline, pooled_stats_logreg_baseline

    out: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs) -> None:
        t0 = time.perf_counter()
        out[name] = round(float(fn(*args, **kwargs)), 4)
        timings[name] = round(time.perf_counter() - t0, 2)

    timed("mean_pool_logreg_baseline", mean_pool_logreg_baseline, summary.features_dir, summary.annotations, "train", test_split)
    timed("pooled_stats_logreg_baseline", pooled_stats_logreg_baseline, summary.features_dir, summary.annotations, "train", test_split)
    timed("latent_ceiling", latent_ceiling, seed)
    timed("cue_oracle", cue_oracle_accuracy, seed)
    timed(f"cue_oracle_{test_split}", split_cue_oracle_accuracy, summary.latents, test_split, seed)
    out["chance"] = round(1.0 / len(EMOTIONS), 4)
    out["report_seconds"] = timings
    return out
