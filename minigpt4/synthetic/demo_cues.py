"""The demo corpus's hidden truth: emotion prototypes, what each modality shows, `ClipCues`.

A clip's latent (valence, arousal, dominance) state is its emotion's prototype plus Gaussian
noise (`LATENT_NOISE`); each modality then sees its own noisy view of part of it (`OBS_NOISE`),
may be missing (`PRESENT_PROB`), and has its own way of hiding the emotion (a still body, a
poker face, sarcastic or flat words). `sample_cues` draws all of that without rendering
frames; `minigpt4.synthetic.demo` renders it into feature files.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from minigpt4.synthetic.common import AU_ACTIVE, AU_ORDER, EMOTIONS, PathLike, nearest, read_latents, sample_presence

# (valence, arousal, dominance) prototype of each emotion.
PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "neutral": (0.0, 0.0, 0.0),
    "angry": (-1.0, 1.0, 0.8),
    "happy": (1.0, 0.3, 0.3),
    "sad": (-1.0, -1.0, -0.6),
    "worried": (-1.0, 0.6, -0.6),
    "surprise": (0.6, 1.2, -0.2),
}
LATENT_NOISE = 0.25      # std of the clip's latent state around its prototype
OBS_NOISE = 0.15         # std of each modality's own view of the latent
PRESENT_PROB: dict[str, float] = {"motion": 0.8, "audio": 0.85, "au": 0.75, "text": 0.85, "visual": 0.85}
WORDS_VALENCE = 0.45     # |valence| from which the words carry it
SARCASM_PROB = 0.3       # negative clips whose words are positive
FLAT_WORDS_PROB = 0.15   # clips whose words carry no valence
STILL_BODY_PROB = 0.2    # clips where the body does not move
POKER_FACE_PROB = 0.25   # clips where the face barely shows the emotion

# FACS templates: AU -> apex intensity (OpenFace's 0..5 scale) at full expressivity.
AU_TEMPLATES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"AU06": 2.5, "AU12": 3.5, "AU25": 1.2},
    "sad": {"AU01": 2.0, "AU04": 2.5, "AU15": 3.0, "AU17": 1.2},
    "surprise": {"AU01": 3.0, "AU02": 3.0, "AU05": 2.0, "AU26": 3.0},
    "angry": {"AU04": 3.5, "AU05": 2.0, "AU07": 3.0, "AU23": 2.5},
    "worried": {"AU01": 3.0, "AU04": 2.5, "AU20": 3.0},
}


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
        return [au for au in AU_ORDER if template.get(au, 0.0) * self.face_intensity >= AU_ACTIVE]


def load_latents(path: PathLike) -> list[ClipCues]:
    """The hidden cues generate_demo wrote to `latents.json`."""
    return read_latents(path, ClipCues.from_json)


def nearest_emotion(latent: Sequence[float]) -> str:
    """The emotion whose prototype is nearest to `latent` (the Bayes rule on the latent)."""
    return nearest(latent, PROTOTYPES)


def sample_cues(rng: np.random.Generator, emotion: str, video_id: str = "", split: str = "") -> ClipCues:
    """Draw a clip's hidden state and what each modality shows of it (no frames yet)."""
    if emotion not in PROTOTYPES:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {list(EMOTIONS)}")
    z = np.asarray(PROTOTYPES[emotion]) + LATENT_NOISE * rng.standard_normal(3)
    v, a, d = (float(x) for x in z)
    present = sample_presence(rng, PRESENT_PROB)
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
