"""The shift corpus's hidden truth: priors, prototypes, per-clip strength, readings, `ShiftCues`.

A clip's label follows skewed class priors (`PRIORS`); its latent (valence, arousal,
dominance) state is the prototype plus noise, and every modality shows a strength-scaled,
noisy view of part of it. A modality's *reading* is the emotion its rendered cue values point
to (nearest prototype in the part of the latent it shows); the evidence sentences of
`shift_evidence` are chosen by it. `sample_cues` draws all of that without rendering frames;
`minigpt4.synthetic.shift` renders it into feature files.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from minigpt4.common.modalities import STACK_ORDER
from minigpt4.synthetic.common import AU_ACTIVE, EMOTIONS, PathLike, nearest, read_latents, sample_presence

PRIORS: dict[str, float] = {
    "neutral": 0.30, "happy": 0.22, "angry": 0.16, "sad": 0.14, "worried": 0.10, "surprise": 0.08,
}
# (valence, arousal, dominance) prototype of each emotion.
PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "neutral": (0.0, 0.0, 0.0),
    "angry": (-0.9, 0.9, 0.8),
    "happy": (0.9, 0.4, 0.3),
    "sad": (-0.8, -0.9, -0.6),
    "worried": (-0.7, 0.5, -0.7),
    "surprise": (0.5, 1.1, -0.2),
}
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

TOPICS: tuple[str, ...] = ("work", "family", "travel", "food", "sports", "money", "health", "weather")

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

# ----------------------------------------------------------------------------- readings

AUDIO_POINTS: dict[str, tuple[float, float]] = {e: (p[0], p[1]) for e, p in PROTOTYPES.items()}  # (tone, energy)
MOTION_POINTS: dict[str, tuple[float, float]] = {e: (max(p[1], 0.0), p[2]) for e, p in PROTOTYPES.items()}  # (gesture, posture)


def nearest_emotion(latent: Sequence[float]) -> str:
    """The emotion whose (valence, arousal, dominance) prototype is nearest to `latent`."""
    return nearest(latent, PROTOTYPES)


def audio_reading(energy: float, tone: float) -> str:
    """What the voice sounds like: nearest emotion in the (valence, arousal) plane."""
    return nearest((tone, energy), AUDIO_POINTS)


def motion_reading(gesture: float, posture: float) -> str:
    """What the body shows: nearest emotion in the (arousal >= 0, dominance) plane."""
    return nearest((gesture, posture), MOTION_POINTS)


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


# ----------------------------------------------------------------------------- the hidden truth


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


def load_latents(path: PathLike) -> list[ShiftCues]:
    """The hidden cues generate_shift wrote to `latents.json`."""
    return read_latents(path, ShiftCues.from_json)


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


def sample_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` i.i.d. label indices drawn from `PRIORS` (for fresh-clip oracles)."""
    return rng.choice(len(EMOTIONS), size=n, p=[PRIORS[e] for e in EMOTIONS])


# ----------------------------------------------------------------------------- sampling


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
    present = sample_presence(rng, PRESENT_PROB)
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
