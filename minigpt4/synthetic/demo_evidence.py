"""The demo corpus's words: transcripts, golden evidence sentences, synergy and reasoning.

Every evidence sentence is chosen by a *level* computed from the cue values rendered into
the clip (`ClipCues`), so it is true of that clip, and the tests can recompute the level and
check the sentence is one of that level's phrasings. A sentence for a missing modality is
absent. The record follows the annotation format of README "Your own data" (2. Labels).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from minigpt4.synthetic.common import SENTIMENT, pick
from minigpt4.synthetic.demo_cues import PROTOTYPES, ClipCues

TEXT_WORDS_RANGE = (6, 24)
AU_NAMES: dict[str, str] = {
    "AU01": "inner brow raiser", "AU02": "outer brow raiser", "AU04": "brow lowerer",
    "AU05": "upper lid raiser", "AU06": "cheek raiser", "AU07": "lid tightener",
    "AU09": "nose wrinkler", "AU10": "upper lip raiser", "AU12": "lip corner puller",
    "AU14": "dimpler", "AU15": "lip corner depressor", "AU17": "chin raiser",
    "AU20": "lip stretcher", "AU23": "lip tightener", "AU25": "lips part", "AU26": "jaw drop",
}

# ----------------------------------------------------------------------------- cue levels


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


# ----------------------------------------------------------------------------- sentences


def motion_sentence(cues: ClipCues) -> str:
    if cues.still_body:
        return "The body stays still."
    g, p = gesture_level(cues.motion_gesture), posture_level(cues.motion_posture)
    return f"The person {GESTURE_PHRASES[g]} and {POSTURE_PHRASES[p]}."


def au_sentence(cues: ClipCues) -> str:
    return active_aus_sentence(cues.active_aus())


def active_aus_sentence(active: list[str]) -> str:
    """The AU evidence for a list of active AUs (OpenFace order)."""
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
MATCHING_BODY = {"animated": "animated", "calm": "still", "subdued": "withdrawn"}
_AGREE_WORDS = {"animated": "animated", "calm": "calm", "subdued": "subdued"}


def synergy_sentence(cues: ClipCues) -> Optional[str]:
    """Whether voice and body agree in arousal (needs both audio and motion)."""
    if not (cues.present["audio"] and cues.present["motion"]):
        return None
    voice, body = voice_state(cues), body_state(cues)
    if MATCHING_BODY[voice] == body:
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
    """A clip's annotation record (README "Your own data", 2. Labels); evidence only for
    present modalities."""
    evidence: dict[str, str] = {}
    if cues.present["visual"]:
        evidence["visual"] = pick(rng, VISUAL_PHRASES[valence_level(cues.visual_valence)])
    if cues.present["motion"]:
        evidence["motion"] = motion_sentence(cues)
    if cues.present["audio"]:
        evidence["audio"] = pick(rng, AUDIO_PHRASES[arousal_level(cues.audio_arousal)])
    if cues.present["au"]:
        evidence["au"] = au_sentence(cues)
    if cues.present["text"]:
        evidence["text"] = pick(rng, TEXT_PHRASES[cues.text_polarity])
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
