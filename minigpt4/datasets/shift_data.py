"""A second synthetic HERO corpus, built differently from the demo, to catch tuning to one data set.

Why a second corpus: a recipe tuned on `demo_data` alone can learn the demo's exact
mechanisms (zero-mean arousal swings in one short burst, balanced labels, descriptive
evidence) and collapse on data built any other way. This "shift" corpus keeps the file
layout and the label set, and changes nearly everything else:

- other feature dims (motion 24, audio 56, au 35, text 40, visual 48), other clip lengths,
  other fixed random encoders (`ENCODER_SEED`) and word embeddings;
- skewed class priors (`PRIORS`: neutral 0.30 ... surprise 0.08), the same in every split;
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
- evidence sentences state the answer as real MERR/EMER-style annotations do ("a loud voice
  with a falling pitch that sounds angry"), yet each is chosen by a *reading* recomputed from
  the cue values rendered into that clip, so it is true of it; about a quarter of the clips
  leave some present experts unannotated (`ShiftCues.unannotated`).

`ShiftCues` holds a clip's hidden truth (`latents.json`); `cue_vector` / `fit_cue_oracle` are
the generator oracle (a logistic regression on the noise-free cue values), `latent_ceiling`
the Bayes rule on the hidden state. Layout: `<out>/features/<video_id>.npz` (written with
`feature_io.write_features`), `<out>/annotations.json`, `<out>/latents.json`,
`<out>/shift_manifest.json`.
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
from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS, DIM_KEYS, STACK_ORDER
from minigpt4.datasets import demo_data as dd
from minigpt4.extraction.action_units import AU_INTENSITY_COLUMNS, AU_PRESENCE_COLUMNS

PathLike = Union[str, "os.PathLike[str]"]

GENERATOR_VERSION = "hero-shift-1"
EMOTIONS: tuple[str, ...] = DEFAULT_EMOTIONS  # neutral, angry, happy, sad, worried, surprise
SPLITS: tuple[str, ...] = dd.SPLITS
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 640, "val": 80, "test": 160}
PRIORS: dict[str, float] = {
    "neutral": 0.30, "happy": 0.22, "angry": 0.16, "sad": 0.14, "worried": 0.10, "surprise": 0.08,
}

SHIFT_DIMS: dict[str, int] = {"motion": 24, "audio": 56, "au": 35, "text": 40, "visual": 48}
SHIFT_MAX_DIM = 64
FRAME_RANGE: dict[str, tuple[int, int]] = {
    "motion": (5, 16), "audio": (14, 32), "au": (10, 32), "visual": (4, 12),
}
TEXT_WORDS_RANGE = (5, 22)
# Suggested dataset max_len: the longest a modality gets, so the loader subsamples nothing
# (a uniform subsample would alias the gesture oscillations and shorten the pitch ramps).
SHIFT_MAX_LEN: dict[str, int] = {"motion": 16, "audio": 32, "au": 32, "text": 22, "visual": 12}
# Fraction of a clip its emotional burst covers (all segments together), per modality.
BURST_FRACTION: dict[str, tuple[float, float]] = {"motion": (0.3, 0.6), "audio": (0.2, 0.6), "au": (0.2, 0.5)}
SPLIT_BURST_PROB = 0.35  # bursts split in two segments

# (valence, arousal, dominance) prototype of each emotion.
PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "neutral": (0.0, 0.0, 0.0),
    "angry": (-0.9, 0.9, 0.8),
    "happy": (0.9, 0.4, 0.3),
    "sad": (-0.8, -0.9, -0.6),
    "worried": (-0.7, 0.5, -0.7),
    "surprise": (0.5, 1.1, -0.2),
}
SENTIMENT: dict[str, str] = dd.SENTIMENT
ADJECTIVE: dict[str, str] = {
    "neutral": "neutral", "angry": "angry", "happy": "happy", "sad": "sad", "worried": "worried", "surprise": "surprised",
}
LATENT_NOISE = 0.25         # std of a clip's latent state around its prototype
OBS_NOISE = 0.15            # std of each modality's own view of the latent
STRENGTH_RANGE = (0.45, 1.3)  # a clip's expressivity, weak to strong
MODALITY_STRENGTH_JITTER = (0.8, 1.2)  # each modality's share of it
PRESENT_PROB: dict[str, float] = {"motion": 0.65, "audio": 0.75, "au": 0.6, "text": 0.7, "visual": 0.7}
STILL_BODY_PROB = 0.15
POKER_FACE_PROB = 0.2
FLAT_WORDS_PROB = 0.2       # clips whose words carry no valence
EMOTION_PHRASE_PROB = 0.35  # clips whose words name a feeling ("I cannot believe it")
WORDS_VALENCE = 0.35        # |valence| of the words' view from which they carry it
UNANNOTATED_PROB = 0.25     # clips with some present experts left unannotated
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

TOPICS: tuple[str, ...] = ("work", "family", "travel", "food", "sports", "money", "health", "weather")

# ----------------------------------------------------------------------------- action units
# FACS templates (AU -> apex intensity at full strength). `AU_PRIMARY` are the AUs the
# "clear" phrasings name, so such a sentence is used only when all of them are active.
AU_TEMPLATES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"AU06": 2.5, "AU12": 3.5, "AU25": 1.0},
    "sad": {"AU01": 2.2, "AU04": 2.0, "AU15": 3.0, "AU17": 1.0},
    "surprise": {"AU01": 2.5, "AU02": 3.0, "AU05": 2.5, "AU26": 3.0},
    "angry": {"AU04": 3.5, "AU07": 2.5, "AU23": 3.0, "AU17": 1.0},
    "worried": {"AU01": 2.5, "AU04": 2.2, "AU20": 3.0, "AU02": 1.0},
}
AU_PRIMARY: dict[str, tuple[str, ...]] = {
    "happy": ("AU06", "AU12"), "sad": ("AU01", "AU15"), "surprise": ("AU02", "AU26"),
    "angry": ("AU04", "AU23"), "worried": ("AU04", "AU20"),
}
AU_ORDER: tuple[str, ...] = tuple(c[:4] for c in AU_INTENSITY_COLUMNS)
AU_ACTIVE = dd.AU_ACTIVE
AU_PRESENT = dd.AU_PRESENT

# ----------------------------------------------------------------------------- readings
# A modality's *reading* is the emotion its rendered cue values point to (nearest prototype
# in the part of the latent it shows). Its evidence sentence is one of that reading's
# phrasings, so the sentence names an emotion and is true of the clip.

AUDIO_POINTS: dict[str, tuple[float, float]] = {e: (p[0], p[1]) for e, p in PROTOTYPES.items()}  # (tone, energy)
MOTION_POINTS: dict[str, tuple[float, float]] = {e: (max(p[1], 0.0), p[2]) for e, p in PROTOTYPES.items()}  # (gesture, posture)


def _nearest(point: Sequence[float], table: Mapping[str, Sequence[float]]) -> str:
    """The emotion of `table` nearest to `point` (ties: EMOTIONS order)."""
    x = np.asarray(point, dtype=np.float64)
    return min(EMOTIONS, key=lambda e: float(np.sum((x - np.asarray(table[e])) ** 2)))


def nearest_emotion(latent: Sequence[float]) -> str:
    """The emotion whose (valence, arousal, dominance) prototype is nearest to `latent`."""
    return _nearest(latent, PROTOTYPES)


def audio_reading(energy: float, tone: float) -> str:
    """What the voice sounds like: nearest emotion in the (valence, arousal) plane."""
    return _nearest((tone, energy), AUDIO_POINTS)


def motion_reading(gesture: float, posture: float) -> str:
    """What the body shows: nearest emotion in the (arousal >= 0, dominance) plane."""
    return _nearest((gesture, posture), MOTION_POINTS)


def visual_level(v: float) -> str:
    """The face's global valence level (strength-scaled, so weak clips read neutral)."""
    if v > 0.45:
        return "positive"
    if v > 0.15:
        return "slightly_positive"
    if v >= -0.15:
        return "neutral"
    if v >= -0.45:
        return "slightly_negative"
    return "negative"


AUDIO_PHRASES: dict[str, tuple[str, ...]] = {
    "angry": ("A loud voice with a falling, clipped pitch that sounds angry.",
              "The speaker raises the voice sharply, clearly annoyed.",
              "A harsh, raised voice, like someone furious."),
    "happy": ("A warm voice with a rising pitch that sounds happy.",
              "The speaker sounds cheerful, the pitch lifting.",
              "A bright, lively voice, pleased and happy."),
    "sad": ("A quiet voice with a falling pitch that sounds sad.",
            "The speaker talks softly and the pitch sinks, sorrowful.",
            "A low, tired voice, dejected and sad."),
    "worried": ("A tense, hurried voice with a falling pitch that sounds worried.",
                "The speaker sounds anxious, the voice tight.",
                "A strained, uneasy voice, nervous."),
    "surprise": ("A sudden loud voice with a rising pitch, as if surprised.",
                 "The speaker sounds astonished, the voice jumping up.",
                 "An excited, rising exclamation, startled."),
    "neutral": ("An even, steady voice with no strong feeling.",
                "The speaker sounds calm and neutral.",
                "A flat, level voice that gives little away."),
}
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "angry": ("Leans in with sharp, forceful gestures, looking angry.",
              "Pushes forward and gestures hard, clearly annoyed."),
    "happy": ("Moves openly and easily, in a happy, relaxed way.",
              "Sits up with lively, open gestures, cheerful."),
    "sad": ("Slumps back and barely moves, looking sad.",
            "Sinks back with drooping shoulders, dejected."),
    "worried": ("Fidgets and shrinks back, looking nervous.",
                "Pulls back with small restless movements, anxious."),
    "surprise": ("Jolts with sudden, quick movements, startled.",
                 "A sudden jerk of the body, as if surprised."),
    "neutral": ("Sits still and upright, no strong feeling in the body.",
                "The body stays calm and steady, neutral."),
}
AU_CLEAR_PHRASES: dict[str, tuple[str, ...]] = {
    "happy": ("Cheeks raised and lip corners pulled up, a happy smile (AU06, AU12).",
              "A broad smile with raised cheeks, clearly happy."),
    "sad": ("Inner brows raised and lip corners pulled down, a sad face (AU01, AU15).",
            "Inner brows lift and the mouth turns down, sorrowful."),
    "surprise": ("Brows raised high and jaw dropped, a surprised face (AU02, AU26).",
                 "Eyebrows shoot up and the mouth falls open, astonished."),
    "angry": ("Brows lowered and lips pressed, an angry frown (AU04, AU23).",
              "A hard frown with tightly pressed lips, angry."),
    "worried": ("Brows drawn together and lips stretched, a worried look (AU04, AU20).",
                "Knitted brows and a stretched mouth, anxious."),
}
AU_SLIGHT_PHRASES: dict[str, tuple[str, ...]] = {
    e: (f"A faint, fleeting trace of a {ADJECTIVE[e]} expression.", f"The face only hints at being {ADJECTIVE[e]}.")
    for e in AU_CLEAR_PHRASES
}
AU_NONE_PHRASES: tuple[str, ...] = (
    "The face stays relaxed and neutral.",
    "No clear facial expression, the face looks neutral.",
)
VISUAL_PHRASES: dict[str, tuple[str, ...]] = {
    "positive": ("The face looks bright and happy.", "A cheerful, pleased look overall."),
    "slightly_positive": ("The face looks mildly content.", "A faintly pleased, relaxed look."),
    "neutral": ("The face looks composed and neutral.", "A calm, neutral look overall."),
    "slightly_negative": ("The face looks a little uneasy.", "A slightly troubled look."),
    "negative": ("The face looks upset and unhappy.", "A distressed, unhappy look overall."),
}
TEXT_EMOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "angry": ("Talking about {topic}, the words sound angry and fed up.", "Angry words about {topic}."),
    "happy": ("Talking about {topic}, the words sound happy and thrilled.", "Happy, joyful words about {topic}."),
    "sad": ("Talking about {topic}, the words sound sad and hurt.", "Sad, heartbroken words about {topic}."),
    "worried": ("Talking about {topic}, the words sound worried.", "Anxious, worried words about {topic}."),
    "surprise": ("Talking about {topic}, the words sound surprised.", "Astonished words about {topic}."),
}
TEXT_POLARITY_PHRASES: dict[str, tuple[str, ...]] = {
    "positive": ("Upbeat, happy words about {topic}.", "The words about {topic} sound cheerful."),
    "negative": ("Gloomy, unhappy words about {topic}.", "The words about {topic} sound upset."),
    "neutral": ("Matter-of-fact words about {topic}, no clear feeling.", "Neutral words about {topic}."),
}
# Words that name (or nearly name) each emotion, for measuring how often evidence states it.
EMOTION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "calm", "no strong feeling", "no clear feeling", "steady", "composed", "gives little away"),
    "angry": ("angry", "annoyed", "furious", "frown", "fed up"),
    "happy": ("happy", "cheerful", "pleased", "joyful", "smile", "thrilled", "content"),
    "sad": ("sad", "sorrowful", "dejected", "unhappy", "heartbroken", "gloomy", "hurt"),
    "worried": ("worried", "anxious", "nervous", "uneasy", "troubled"),
    "surprise": ("surprised", "astonished", "startled"),
}

# ----------------------------------------------------------------------------- transcripts
TOPIC_CLAUSES: dict[str, tuple[str, ...]] = {
    "work": ("the meeting ran late", "my boss changed the plan", "the project is due on friday", "we hired two people"),
    "family": ("my sister called last night", "we visited my parents", "the kids stayed home", "my cousin is getting married"),
    "travel": ("the flight was delayed", "we booked a hotel by the sea", "the train left early", "my passport expired"),
    "food": ("we cooked pasta tonight", "the new restaurant opened", "I bought fresh bread", "dinner is at eight"),
    "sports": ("the team played on sunday", "I run every morning", "the match went to extra time", "our coach quit"),
    "money": ("the rent went up", "I paid the bills", "my salary came in late", "the bank called me"),
    "health": ("the doctor wants more tests", "I slept badly again", "my knee still hurts", "I started a new diet"),
    "weather": ("it rained all week", "the storm hit the coast", "it is freezing outside", "the sun finally came out"),
}
TOPIC_NOUNS: dict[str, tuple[str, ...]] = {
    "work": ("job", "office", "project"), "family": ("family", "parents", "kids"),
    "travel": ("trip", "flight", "holiday"), "food": ("dinner", "restaurant", "meal"),
    "sports": ("match", "team", "training"), "money": ("rent", "budget", "salary"),
    "health": ("doctor", "diet", "sleep"), "weather": ("weather", "storm", "forecast"),
}
SHIFT_POSITIVE_WORDS = {
    "adj": ("brilliant", "nice", "superb", "excellent", "splendid"),
    "verb": ("like", "appreciate", "cherish"),
    "adv": ("nicely", "smoothly", "wonderfully"),
}
SHIFT_NEGATIVE_WORDS = {
    "adj": ("bad", "rotten", "nasty", "grim", "dismal"),
    "verb": ("resent", "loathe", "detest"),
    "adv": ("poorly", "miserably", "dreadfully"),
}
POLAR_TOPIC_CLAUSES = ("the {noun} is {adj}", "I {verb} the {noun}", "the {noun} went {adv}", "what a {adj} {noun}")
# Each phrase holds exactly one keyword of its emotion (no keyword appears anywhere else).
EMOTION_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "angry": (("this is outrageous", "outrageous"), ("I am so fed up", "fed")),
    "happy": (("I am thrilled", "thrilled"), ("what a joy", "joy")),
    "sad": (("it breaks my heart", "heart"), ("I miss how it was", "miss")),
    "worried": (("what if it all goes wrong", "wrong"), ("I keep fretting about it", "fretting")),
    "surprise": (("I cannot believe it", "believe"), ("that came out of nowhere", "nowhere")),
}
OPENERS = ("well", "so", "okay", "honestly", "you see", "anyway")
WORD_POLARITY: dict[str, float] = {
    **{w: 1.0 for ws in SHIFT_POSITIVE_WORDS.values() for w in ws},
    **{w: -1.0 for ws in SHIFT_NEGATIVE_WORDS.values() for w in ws},
}
EMOTION_KEYWORDS: dict[str, str] = {kw: e for e, phrases in EMOTION_PHRASES.items() for _, kw in phrases}
transcript_words = dd.transcript_words
EXPERT_KEYS: tuple[str, ...] = STACK_ORDER + ("synergy",)

# ----------------------------------------------------------------------------- data classes


@dataclass
class ShiftCues:
    """Everything the generator decided about one clip (the hidden truth behind its files).

    The per-modality cue values are strength-scaled, i.e. what was rendered (before the
    projection to features and frame noise); they are kept for an absent modality too, but
    nothing of them reaches the clip then. `bursts`: modality -> [(start, length), ...].
    """

    video_id: str
    split: str
    emotion: str
    topic: str
    latent: tuple[float, float, float]
    present: dict[str, bool]
    strength: dict[str, float]
    audio_energy: float
    audio_tone: float
    motion_gesture: float
    motion_posture: float
    still_body: bool
    face_category: str
    face_intensity: float
    poker_face: bool
    visual_valence: float
    text_polarity: str
    text_emotion: Optional[str]
    flat_words: bool
    speaker_loudness: float = 0.0
    bursts: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    unannotated: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        out["latent"] = [round(float(x), 6) for x in self.latent]
        out["strength"] = {k: round(float(v), 6) for k, v in self.strength.items()}
        out["bursts"] = {k: [list(s) for s in v] for k, v in self.bursts.items()}
        for key in ("audio_energy", "audio_tone", "motion_gesture", "motion_posture", "face_intensity",
                    "visual_valence", "speaker_loudness"):
            out[key] = round(float(out[key]), 6)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ShiftCues":
        """Inverse of to_json (for latents.json); values are the rounded ones."""
        data = dict(obj)
        data["latent"] = tuple(float(x) for x in data["latent"])
        data["bursts"] = {k: [(int(s[0]), int(s[1])) for s in v] for k, v in dict(data.get("bursts") or {}).items()}
        return cls(**data)

    def au_apex(self) -> dict[str, float]:
        """Apex intensity of each expression AU of the displayed category."""
        return {au: peak * self.face_intensity for au, peak in AU_TEMPLATES[self.face_category].items()}

    def au_level(self) -> str:
        """clear (every primary AU active) / slight (some AU active) / none."""
        apex = self.au_apex()
        if not any(v >= AU_ACTIVE for v in apex.values()):
            return "none"
        if all(apex[au] >= AU_ACTIVE for au in AU_PRIMARY[self.face_category]):
            return "clear"
        return "slight"

    def readings(self) -> dict[str, str]:
        """The emotion (or valence level for `visual`, polarity for `text`) each modality shows."""
        au = "neutral" if self.au_level() == "none" else self.face_category
        return {
            "audio": audio_reading(self.audio_energy, self.audio_tone),
            "motion": motion_reading(self.motion_gesture, self.motion_posture),
            "au": au,
            "visual": visual_level(self.visual_valence),
            "text": self.text_emotion or self.text_polarity,
        }


@dataclass
class ShiftClip:
    """One generated clip: its feature arrays (keyed as in the file), transcript and record."""

    cues: ShiftCues
    arrays: dict[str, np.ndarray]
    transcript: Optional[str]  # None when the text modality is absent
    record: dict


@dataclass
class ShiftSummary:
    """What `generate_shift` wrote and how long it took."""

    out_dir: Path
    features_dir: Path
    annotations: Path
    latents: Path
    split_sizes: dict[str, int]
    seconds: float


# ----------------------------------------------------------------------------- encoders


@dataclass(frozen=True)
class Encoders:
    """Fixed random projections from cues to feature space (see demo_data.Encoders), plus the
    audio's topic embeddings (orthogonal to its cue directions: content, not emotion)."""

    directions: Mapping[str, np.ndarray]   # modality -> [n_cues, D]
    content: Mapping[str, np.ndarray]      # modality -> [n_content, D]
    baseline: Mapping[str, np.ndarray]     # modality -> [D]
    topics: np.ndarray                     # [len(TOPICS), D_audio]


# (cue directions, content directions) per projected modality. audio: energy, pitch;
# motion: gesture x, gesture y, posture; text: polarity + one per non-neutral emotion.
_ENCODER_LAYOUT: dict[str, tuple[int, int]] = {"audio": (2, 10), "motion": (3, 6), "visual": (1, 10), "text": (6, 12)}


@lru_cache(maxsize=2)
def make_encoders(seed: int = ENCODER_SEED) -> Encoders:
    """The fixed projections (same for every split and every clip seed)."""
    rng = np.random.default_rng(seed)
    directions, content, baseline = {}, {}, {}
    for name, (n_cue, n_content) in _ENCODER_LAYOUT.items():
        basis = dd._orthonormal(rng, SHIFT_DIMS[name], n_cue + n_content + 1)
        directions[name] = basis[:n_cue]
        content[name] = basis[n_cue : n_cue + n_content]
        baseline[name] = basis[-1] * 0.8
    cue = directions["audio"]
    topics = rng.standard_normal((len(TOPICS), SHIFT_DIMS["audio"]))
    topics -= (topics @ cue.T) @ cue
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    return Encoders(directions=directions, content=content, baseline=baseline, topics=topics)


@lru_cache(maxsize=4096)
def word_vector(word: str, dim: int = SHIFT_DIMS["text"]) -> np.ndarray:
    """A word's fixed context-free embedding (hash-seeded, salted apart from the demo's). Read-only."""
    digest = hashlib.sha256(("shift:" + word.lower()).encode("utf-8")).digest()
    vec = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(dim)
    vec.flags.writeable = False
    return vec


# ----------------------------------------------------------------------------- labels


def prior_counts(n: int) -> dict[str, int]:
    """Labels per emotion in a split of `n` clips: `PRIORS` rounded by largest remainder, so
    every split (test included) follows the same priors as closely as its size allows."""
    raw = {e: PRIORS[e] * n for e in EMOTIONS}
    counts = {e: int(np.floor(v)) for e, v in raw.items()}
    by_remainder = sorted(EMOTIONS, key=lambda e: (-(raw[e] - counts[e]), EMOTIONS.index(e)))
    for e in by_remainder[: n - sum(counts.values())]:
        counts[e] += 1
    return counts


def split_emotions(seed: int, split: str, n: int) -> list[str]:
    """A split's labels (`prior_counts`), in a seeded order."""
    counts = prior_counts(n)
    labels = [e for e in EMOTIONS for _ in range(counts[e])]
    order = np.random.default_rng([int(seed), _split_index(split), 0x5817, 2**31]).permutation(n)
    return [labels[i] for i in order]


def sample_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` i.i.d. label indices drawn from `PRIORS` (for fresh-clip oracles)."""
    return rng.choice(len(EMOTIONS), size=n, p=[PRIORS[e] for e in EMOTIONS])


def split_sizes(num_clips: dd.SplitSizes = None) -> dict[str, int]:
    """Clips per split: None = 640/80/160; otherwise as demo_data.split_sizes (8:1:2 of a total,
    or three sizes, or a mapping)."""
    return dict(DEFAULT_SPLIT_SIZES) if num_clips is None else dd.split_sizes(num_clips)


# ----------------------------------------------------------------------------- sampling


def _split_index(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else 99


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per clip (salted apart from the demo's)."""
    return np.random.default_rng([int(seed), _split_index(split), int(index), 0x5817])


def sample_presence(rng: np.random.Generator) -> dict[str, bool]:
    """Which modalities a clip has; at least one."""
    while True:
        present = {m: bool(rng.random() < PRESENT_PROB[m]) for m in STACK_ORDER}
        if any(present.values()):
            return present


def _text_cues(rng: np.random.Generator, view: np.ndarray) -> tuple[str, Optional[str], bool]:
    """(polarity, named emotion or None, flat) of the words, from their view of the latent."""
    v = float(view[0])
    polarity = "positive" if v > WORDS_VALENCE else ("negative" if v < -WORDS_VALENCE else "neutral")
    flat = bool(rng.random() < FLAT_WORDS_PROB)
    named = nearest_emotion(view)
    says_feeling = bool(rng.random() < EMOTION_PHRASE_PROB)
    if flat:
        return "neutral", None, True
    return polarity, (named if says_feeling and named != "neutral" else None), False


def sample_cues(rng: np.random.Generator, emotion: str, video_id: str = "", split: str = "",
                topic: Optional[str] = None) -> ShiftCues:
    """Draw a clip's hidden state and the (strength-scaled) cue values each modality shows."""
    if emotion not in PROTOTYPES:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {list(EMOTIONS)}")
    if topic is None:
        topic = TOPICS[int(rng.integers(len(TOPICS)))]
    z = np.asarray(PROTOTYPES[emotion]) + LATENT_NOISE * rng.standard_normal(3)
    v, a, d = (float(x) for x in z)
    present = sample_presence(rng)
    expressivity = float(rng.uniform(*STRENGTH_RANGE))
    strength = {m: expressivity * float(rng.uniform(*MODALITY_STRENGTH_JITTER)) for m in STACK_ORDER}
    obs = OBS_NOISE * rng.standard_normal(6)
    still = bool(rng.random() < STILL_BODY_PROB)
    poker = bool(rng.random() < POKER_FACE_PROB)
    face_view = z + OBS_NOISE * rng.standard_normal(3)
    face_intensity = strength["au"] * (float(rng.uniform(0.1, 0.3)) if poker else 1.0)
    polarity, named, flat = _text_cues(rng, z + OBS_NOISE * rng.standard_normal(3))
    s_a, s_m = strength["audio"], strength["motion"]
    return ShiftCues(
        video_id=video_id,
        split=split,
        emotion=emotion,
        topic=topic,
        latent=(v, a, d),
        present=present,
        strength=strength,
        audio_energy=s_a * (a + float(obs[0])),
        audio_tone=s_a * (v + float(obs[1])),
        motion_gesture=0.0 if still else s_m * max(a + float(obs[2]), 0.0),
        motion_posture=0.0 if still else s_m * (d + float(obs[3])),
        still_body=still,
        face_category=nearest_emotion(face_view),
        face_intensity=face_intensity,
        poker_face=poker,
        visual_valence=strength["visual"] * (v + float(obs[4])),
        text_polarity=polarity,
        text_emotion=named,
        flat_words=flat,
    )


# ----------------------------------------------------------------------------- rendering


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


def _length(rng: np.random.Generator, name: str) -> int:
    lo, hi = FRAME_RANGE[name]
    return int(rng.integers(lo, hi + 1))


def _frames(rng: np.random.Generator, enc: Encoders, name: str, length: int, content_scale: float) -> np.ndarray:
    """Neutral frames [length, D]: baseline + per-frame content + noise."""
    content = enc.content[name]
    weights = content_scale * rng.standard_normal((length, content.shape[0]))
    noise = FRAME_NOISE * rng.standard_normal((length, SHIFT_DIMS[name]))
    return enc.baseline[name][None, :] + weights @ content + noise


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


def render_audio(rng: np.random.Generator, enc: Encoders, cues: ShiftCues) -> np.ndarray:
    """`hubert [T, 56]`: speaker (offset + habitual loudness), phonetic content and the topic
    on every frame; in the burst, energy as a shift from the speaker's loudness and valence as
    the direction of a zero-mean pitch ramp (rising = positive)."""
    t = _length(rng, "audio")
    x = _frames(rng, enc, "audio", t, content_scale=1.0)
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


def render_motion(rng: np.random.Generator, enc: Encoders, cues: ShiftCues) -> np.ndarray:
    """`videomae [T, 24]`: in the burst, gestures as a zero-mean circular oscillation and
    posture as a shift (which the clip mean keeps, diluted)."""
    t = _length(rng, "motion")
    x = _frames(rng, enc, "motion", t, content_scale=0.8)
    u_gx, u_gy, u_p = enc.directions["motion"]
    segments = burst_segments(rng, "motion", t)
    cues.bursts["motion"] = segments
    for start, k in segments:
        wx, wy = oscillation(rng, k)
        x[start : start + k] += MOTION_GESTURE_GAIN * cues.motion_gesture * (wx[:, None] * u_gx + wy[:, None] * u_gy)
        x[start : start + k] += MOTION_POSTURE_GAIN * cues.motion_posture * u_p[None, :]
    return x


def render_visual(rng: np.random.Generator, enc: Encoders, cues: ShiftCues) -> np.ndarray:
    """`clip [T, 48]`: the face's valence over the whole clip under a per-clip scene offset."""
    t = _length(rng, "visual")
    x = _frames(rng, enc, "visual", t, content_scale=0.5)
    scene = 1.2 * rng.standard_normal(enc.content["visual"].shape[0]) @ enc.content["visual"]
    x += scene[None, :] + VISUAL_VALENCE_GAIN * cues.visual_valence * enc.directions["visual"][0][None, :]
    return x


def render_au(rng: np.random.Generator, cues: ShiftCues) -> np.ndarray:
    """`au [T, 35]` in OpenFace's layout (17 intensities 0..5, then 18 presences): a resting
    face, talking flickers and blinks, and the category's template in each burst segment
    with an onset-apex-offset shape at the clip's intensity."""
    t = _length(rng, "au")
    inten = np.abs(0.2 * rng.standard_normal((t, len(AU_INTENSITY_COLUMNS))))
    for au in rng.choice(dd.RESTING_AUS, size=int(rng.integers(1, 4)), replace=False):
        inten[:, AU_ORDER.index(str(au))] += rng.uniform(0.2, 1.0)
    for au in dd.TALKING_AUS:
        flicker = rng.random(t) < 0.3
        inten[flicker, AU_ORDER.index(au)] += rng.uniform(0.2, 0.8, size=int(flicker.sum()))
    blink = rng.random(t) < 0.1
    inten[blink, AU_ORDER.index("AU45")] += rng.uniform(1.5, 3.0, size=int(blink.sum()))
    segments = burst_segments(rng, "au", t)
    cues.bursts["au"] = segments
    for start, k in segments:
        shape = np.sin(np.pi * (np.arange(k) + 0.5) / k)
        shape = shape / shape.max()
        for au, apex in cues.au_apex().items():
            inten[start : start + k, AU_ORDER.index(au)] += apex * shape
    inten = np.clip(inten + 0.1 * rng.standard_normal(inten.shape), 0.0, 5.0)
    presence = np.zeros((t, len(AU_PRESENCE_COLUMNS)))
    for i, col in enumerate(AU_PRESENCE_COLUMNS):
        au = col[:4]
        if au in AU_ORDER:
            presence[:, i] = inten[:, AU_ORDER.index(au)] >= AU_PRESENT
        else:  # AU28 has no intensity column
            presence[:, i] = rng.random(t) < 0.03
    flips = rng.random(presence.shape) < 0.03
    presence = np.where(flips, 1.0 - presence, presence)
    return np.concatenate([inten, presence], axis=1)


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def make_transcript(rng: np.random.Generator, cues: ShiftCues) -> str:
    """A sentence about the clip's topic: topic clauses, polar words (none when neutral) and,
    when the words name a feeling, one phrase of that emotion."""
    lo, hi = TEXT_WORDS_RANGE
    bank = SHIFT_POSITIVE_WORDS if cues.text_polarity == "positive" else SHIFT_NEGATIVE_WORDS
    nouns = TOPIC_NOUNS[cues.topic]
    while True:
        parts = [_choice(rng, OPENERS)] if rng.random() < 0.5 else []
        topical = rng.permutation(TOPIC_CLAUSES[cues.topic])
        clauses = [str(c) for c in topical[: 1 + int(rng.random() < 0.4)]]
        if cues.text_polarity != "neutral":
            clause = _choice(rng, POLAR_TOPIC_CLAUSES)
            clauses.append(clause.format(noun=_choice(rng, nouns), **{k: _choice(rng, v) for k, v in bank.items()}))
        if cues.text_emotion is not None:
            clauses.append(_choice(rng, EMOTION_PHRASES[cues.text_emotion])[0])
        order = rng.permutation(len(clauses))
        text = ", ".join(parts + [clauses[i] for i in order])
        if lo <= len(text.split()) <= hi:
            return text[0].upper() + text[1:] + "."


def render_text(rng: np.random.Generator, enc: Encoders, cues: ShiftCues, transcript: str) -> np.ndarray:
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


# ----------------------------------------------------------------------------- sentences


def au_phrases(cues: ShiftCues) -> tuple[str, ...]:
    """The phrasings true of the clip's face (by `ShiftCues.au_level`)."""
    level = cues.au_level()
    if level == "none":
        return AU_NONE_PHRASES
    return (AU_CLEAR_PHRASES if level == "clear" else AU_SLIGHT_PHRASES)[cues.face_category]


def text_phrases(cues: ShiftCues) -> tuple[str, ...]:
    """The phrasings true of the clip's words (named feeling first, else polarity), with its topic."""
    table = TEXT_EMOTION_PHRASES[cues.text_emotion] if cues.text_emotion else TEXT_POLARITY_PHRASES[cues.text_polarity]
    return tuple(p.format(topic=cues.topic) for p in table)


def evidence_options(cues: ShiftCues) -> dict[str, tuple[str, ...]]:
    """Per present modality (and synergy when it applies) the phrasings true of the clip."""
    r = cues.readings()
    options = {
        "motion": MOTION_PHRASES[r["motion"]],
        "audio": AUDIO_PHRASES[r["audio"]],
        "au": au_phrases(cues),
        "text": text_phrases(cues),
        "visual": VISUAL_PHRASES[r["visual"]],
    }
    out = {m: options[m] for m in STACK_ORDER if cues.present[m]}
    syn = synergy_sentence(cues)
    if syn is not None:
        out["synergy"] = (syn,)
    return out


def face_reading(cues: ShiftCues) -> Optional[str]:
    """What the face shows, in words: the AU category when AUs are present and show one, else
    the global look's valence; None when neither face modality is present."""
    if cues.present["au"] and cues.au_level() != "none":
        return ADJECTIVE[cues.face_category]
    if cues.present["visual"]:
        return visual_level(cues.visual_valence).replace("_", " ")
    if cues.present["au"]:
        return "neutral"
    return None


def _sentiment_of(word: str) -> str:
    """positive / negative / neutral of an emotion adjective or a valence level in words."""
    for e, adj in ADJECTIVE.items():
        if word == adj:
            return SENTIMENT[e]
    return word.split()[-1]  # "slightly positive" -> positive


def synergy_sentence(cues: ShiftCues) -> Optional[str]:
    """Whether the voice and the face agree in sentiment (needs audio and a face modality)."""
    face = face_reading(cues)
    if not cues.present["audio"] or face is None:
        return None
    voice = ADJECTIVE[cues.readings()["audio"]]
    verdict = "agree" if _sentiment_of(voice) == _sentiment_of(face) else "disagree"
    return f"Voice and face {verdict}: the voice sounds {voice} and the face looks {face}."


REASONING_ENDINGS: tuple[str, ...] = (
    "Weighing these cues, the person is {}.",
    "Taken together, the emotion is {}.",
    "All in all, the speaker feels {}.",
)


def reasoning_sentence(cues: ShiftCues, rng: np.random.Generator) -> str:
    """What each present modality shows, ending in the label."""
    r = cues.readings()
    parts = []
    if cues.present["audio"]:
        parts.append(f"the voice sounds {ADJECTIVE[r['audio']]}")
    face = face_reading(cues)
    if face is not None:
        parts.append(f"the face looks {face}")
    if cues.present["motion"]:
        parts.append(f"the body seems {ADJECTIVE[r['motion']]}")
    if cues.present["text"]:
        words = ADJECTIVE[cues.text_emotion] if cues.text_emotion else cues.text_polarity
        parts.append(f"the words about {cues.topic} are {words}")
    head = "; ".join(parts)
    ending = _choice(rng, REASONING_ENDINGS).format(ADJECTIVE[cues.emotion])
    return f"{head[0].upper()}{head[1:]}. {ending}"


def build_record(cues: ShiftCues, transcript: Optional[str], rng: np.random.Generator) -> dict:
    """The annotation record; evidence only for present modalities, minus the unannotated."""
    options = evidence_options(cues)
    evidence = {k: _choice(rng, v) for k, v in options.items()}
    if len(evidence) >= 2 and rng.random() < UNANNOTATED_PROB:
        keys = list(evidence)
        n_drop = int(rng.integers(1, min(2, len(keys) - 1) + 1))
        cues.unannotated = sorted((keys[i] for i in rng.choice(len(keys), size=n_drop, replace=False)),
                                  key=list(EXPERT_KEYS).index)
        for k in cues.unannotated:
            evidence.pop(k)
    record = {
        "video_id": cues.video_id,
        "emotion": cues.emotion,
        "split": cues.split,
        "sentiment": SENTIMENT[cues.emotion],
        "topic": cues.topic,
        "evidence": evidence,
        "reasoning": reasoning_sentence(cues, rng),
    }
    if transcript is not None:
        record["text"] = transcript
    return record


# ----------------------------------------------------------------------------- one clip


def make_clip(seed: int, split: str, index: int, emotion: str, encoders: Optional[Encoders] = None) -> ShiftClip:
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
    arrays: dict[str, np.ndarray] = {}
    for m in STACK_ORDER:
        if cues.present[m]:
            arrays[DEFAULT_FEATURE_KEYS[m]] = rendered[m].astype(np.float32)
        else:
            cues.bursts.pop(m, None)
    kept = transcript if cues.present["text"] else None  # absent text: the words were not heard
    return ShiftClip(cues=cues, arrays=arrays, transcript=kept, record=build_record(cues, kept, word_rng))


def iter_clips(seed: int, sizes: Mapping[str, int], encoders: Optional[Encoders] = None) -> Iterator[ShiftClip]:
    """Yield every clip of the corpus, split by split."""
    enc = encoders or make_encoders()
    for split in SPLITS:
        for i, emotion in enumerate(split_emotions(seed, split, int(sizes.get(split, 0)))):
            yield make_clip(seed, split, i, emotion, enc)


# ----------------------------------------------------------------------------- the corpus

MANIFEST = "shift_manifest.json"


def _previous_ids(manifest_path: Path) -> list[str]:
    """The video ids an earlier corpus in the folder listed (to remove its stale files)."""
    if not manifest_path.is_file():
        return []
    try:
        return list(json.loads(manifest_path.read_text(encoding="utf-8")).get("video_ids", []))
    except (ValueError, OSError, AttributeError):
        return []


def generate_shift(out_dir: PathLike, num_clips: dd.SplitSizes = None, seed: int = 0) -> ShiftSummary:
    """Write `<out>/features/<video_id>.npz`, `<out>/annotations.json`, `<out>/latents.json`
    (the hidden cues; the loader never reads it) and `<out>/shift_manifest.json`. Feature
    files of an earlier shift corpus in the folder that this one lacks are removed."""
    from minigpt4.datasets.feature_io import write_features

    t0 = time.perf_counter()
    out = Path(out_dir)
    features = out / "features"
    sizes = split_sizes(num_clips)
    features.mkdir(parents=True, exist_ok=True)
    previous = _previous_ids(out / MANIFEST)
    records, latents, ids = [], [], []
    for clip in iter_clips(seed, sizes):
        vid = clip.cues.video_id
        meta = {"source": GENERATOR_VERSION, "seed": str(seed)}
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
        "video_ids": ids,
    }
    atomic_write_json(out / MANIFEST, manifest)
    return ShiftSummary(out, features, out / "annotations.json", out / "latents.json", sizes, time.perf_counter() - t0)


def load_latents(path: PathLike) -> list[ShiftCues]:
    """The hidden cues generate_shift wrote to `latents.json`."""
    with open(path, "r", encoding="utf-8") as fh:
        return [ShiftCues.from_json(obj) for obj in json.load(fh)]


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


# ----------------------------------------------------------------------------- oracles


def cue_vector(cues: ShiftCues) -> np.ndarray:
    """What a clip's files carry, without frame noise or nuisance (speaker, scene, topic): per
    modality a presence flag and its rendered cue values (zeros when absent)."""
    p = cues.present
    au = np.zeros(len(AU_ORDER))
    if p["au"]:
        for name, apex in cues.au_apex().items():
            au[AU_ORDER.index(name)] = apex
    words = np.zeros(3 + len(EMOTIONS) - 1)
    if p["text"]:
        words[("positive", "negative", "neutral").index(cues.text_polarity)] = 1.0
        if cues.text_emotion is not None:
            words[3 + EMOTIONS.index(cues.text_emotion) - 1] = 1.0
    parts = [
        np.array([float(p[m]) for m in STACK_ORDER]),
        np.array([cues.audio_energy, cues.audio_tone]) * float(p["audio"]),
        np.array([cues.motion_gesture, cues.motion_posture]) * float(p["motion"]),
        au,
        words,
        np.array([cues.visual_valence if p["visual"] else 0.0]),
    ]
    return np.concatenate(parts)


def sample_cue_table(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` fresh clips' (cue vectors [n, F], latents [n, 3], labels [n]) drawn from the
    priors without rendering frames, from a stream disjoint from the corpus's clip streams."""
    rng = np.random.default_rng([int(seed), 0x5817, 7777])
    labels = sample_labels(rng, n)
    feats, lat = [], []
    for y in labels:
        c = sample_cues(rng, EMOTIONS[int(y)])
        feats.append(cue_vector(c))
        lat.append(c.latent)
    return np.stack(feats), np.asarray(lat), labels


def latent_ceiling(seed: int = 0, n: int = 20000) -> float:
    """Accuracy of the Bayes rule (with the priors) on the hidden latent itself: every file is
    a noisy function of the latent, so no model on the files can beat it."""
    _, lat, y = sample_cue_table(seed, n)
    protos = np.asarray([PROTOTYPES[e] for e in EMOTIONS])
    log_prior = np.log([PRIORS[e] for e in EMOTIONS])
    dist = ((lat[:, None, :] - protos[None, :, :]) ** 2).sum(-1)
    pred = np.argmax(log_prior[None, :] - dist / (2 * LATENT_NOISE**2), axis=1)
    return float((pred == y).mean())


def fit_cue_oracle(seed: int = 0, n_train: int = 20000) -> Any:
    """The generator oracle: a standardised logistic regression fit on `n_train` fresh clips'
    noise-free cue vectors (it knows what the generator rendered, not the frames)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x, _, y = sample_cue_table(seed, n_train)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    with threadpool_limits(limits=1):  # BLAS threads spin on a shared machine
        clf.fit(x, y)
    return clf


def _accuracy(clf: Any, x: np.ndarray, y: np.ndarray) -> float:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return float((clf.predict(x) == y).mean())


def cue_oracle_accuracy(seed: int = 0, n_train: int = 20000, n_test: int = 10000, oracle: Any = None) -> float:
    """The oracle's accuracy on fresh clips (an estimate of what the corpus's information
    allows); `oracle` reuses a fitted one instead of fitting on `n_train` clips."""
    clf = oracle if oracle is not None else fit_cue_oracle(seed, n_train)
    x, _, y = sample_cue_table(seed + 1_000_003, n_test)
    return _accuracy(clf, x, y)


def split_cue_oracle_accuracy(latents_path: PathLike, split: str = "test", seed: int = 0, n_train: int = 20000,
                              oracle: Any = None) -> float:
    """The oracle's accuracy on the very clips of one generated split (the ceiling to hold a
    model's accuracy on that split against)."""
    cues = [c for c in load_latents(latents_path) if c.split == split]
    if not cues:
        raise ValueError(f"{latents_path}: no clips in split {split!r}")
    x = np.stack([cue_vector(c) for c in cues])
    y = np.array([EMOTIONS.index(c.emotion) for c in cues])
    return _accuracy(oracle if oracle is not None else fit_cue_oracle(seed, n_train), x, y)


def majority_accuracy(annotations: PathLike, train_split: str = "train", test_split: str = "test") -> float:
    """Accuracy on `test_split` of always answering the train split's most frequent label
    (the floor a collapsed, one-class model sits on under these priors)."""
    records = json.loads(Path(annotations).read_text(encoding="utf-8"))
    train = [r["emotion"] for r in records if r.get("split") == train_split]
    test = [r["emotion"] for r in records if r.get("split") == test_split]
    if not train or not test:
        raise ValueError(f"{annotations}: needs labelled {train_split!r} and {test_split!r} records")
    majority = max(EMOTIONS, key=train.count)
    return float(np.mean([e == majority for e in test]))


def measure_report(summary: ShiftSummary, seed: int = 0, test_split: str = "test", n_oracle: int = 20000) -> dict[str, Any]:
    """The numbers that say what the corpus allows, on `test_split`: majority class, the two
    logistic-regression baselines, the generator oracle (fit on `n_oracle` fresh clips; on
    this split's clips and on fresh ones) and the latent ceiling, each with its seconds."""
    from minigpt4.datasets.baselines import mean_pool_logreg_baseline, pooled_stats_logreg_baseline

    out: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args) -> None:
        t0 = time.perf_counter()
        out[name] = round(float(fn(*args)), 4)
        timings[name] = round(time.perf_counter() - t0, 2)

    timed("majority_class", majority_accuracy, summary.annotations, "train", test_split)
    timed("mean_pool_logreg_baseline", mean_pool_logreg_baseline, summary.features_dir, summary.annotations, "train", test_split)
    timed("pooled_stats_logreg_baseline", pooled_stats_logreg_baseline, summary.features_dir, summary.annotations, "train", test_split)
    t0 = time.perf_counter()
    oracle = fit_cue_oracle(seed, n_oracle)
    timings["fit_cue_oracle"] = round(time.perf_counter() - t0, 2)
    timed(f"cue_oracle_{test_split}", split_cue_oracle_accuracy, summary.latents, test_split, seed, n_oracle, oracle)
    timed("cue_oracle", cue_oracle_accuracy, seed, n_oracle, n_oracle // 2, oracle)
    timed("latent_ceiling", latent_ceiling, seed, n_oracle)
    out["report_seconds"] = timings
    return out
