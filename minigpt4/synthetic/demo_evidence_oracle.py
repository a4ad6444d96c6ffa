"""How well the demo's evidence sentences can be read from its feature files: the ceiling to hold
an evidence decoder against.

The demo words each expert's evidence from a thresholded cue (voice arousal, gesture and posture,
face valence, word polarity, active AUs) and renders that cue into the frames under noise, so
near a threshold the frames cannot tell the two sentences apart. The oracle here knows
everything the generator knows except the noise (the encoder directions and each clip's burst
window): it reads each cue back from the frames with a matched filter and words it with the
generator's own functions. No model that sees only the files should read the sentences better.

Sentences are compared by *state*, not string: the demo picks one of two paraphrases per state
at random for audio, visual and text (an exact-match ceiling of about 0.5), and "The body stays
still." is the same state as "The person barely moves and stays upright." (a still body is
rendered exactly as no gesture and an upright posture).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Optional

import numpy as np

from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS
from minigpt4.synthetic.common import AU_ACTIVE, AU_ORDER, Encoders
from minigpt4.synthetic.demo_cues import ClipCues
from minigpt4.synthetic import demo_evidence as de

_STILL = f"The person {de.GESTURE_PHRASES['still']} and {de.POSTURE_PHRASES['upright']}."
_PARAPHRASES = {
    (expert, phrase.lower()): state
    for expert, table in (("audio", de.AUDIO_PHRASES), ("visual", de.VISUAL_PHRASES), ("text", de.TEXT_PHRASES))
    for state, phrases in table.items() for phrase in phrases
}


def evidence_state(expert: str, sentence: Optional[str]) -> Optional[str]:
    """The state a demo sentence names (its paraphrase group); other sentences stand for themselves."""
    if sentence is None:
        return None
    text = " ".join(sentence.split())
    if expert == "motion" and text == "The body stays still.":
        text = _STILL
    return _PARAPHRASES.get((expert, text.lower()), text.lower())


def _burst(x: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    start, k = window
    return x[start: start + k]


def _fast_amplitude(p: np.ndarray) -> float:
    """Amplitude of a +1/-1 alternating swing in `p` (either phase): a matched filter."""
    return abs(float(np.mean(p * np.where(np.arange(len(p)) % 2 == 0, 1.0, -1.0))))


def _slow_amplitude(p: np.ndarray) -> float:
    """Amplitude of one full sine period over `p` (any phase): projection on sin and cos."""
    t = 2.0 * np.pi * np.arange(len(p)) / len(p)
    return float(np.hypot(2.0 * np.mean(p * np.sin(t)), 2.0 * np.mean(p * np.cos(t))))


def read_cues(cues: ClipCues, arrays: Mapping[str, np.ndarray], enc: Encoders) -> ClipCues:
    """The clip's cues as read back from its frames (present modalities only; the rest kept)."""
    read = {}
    if cues.present["audio"]:
        x = _burst(arrays[DEFAULT_FEATURE_KEYS["audio"]], cues.bursts["audio"])
        u_hi, u_lo = enc.directions["audio"]
        hi, lo = _fast_amplitude(x @ u_hi) / 2.5, _slow_amplitude(x @ u_lo) / 2.5
        read["audio_arousal"] = hi if hi >= lo else -lo
    if cues.present["motion"]:
        x = _burst(arrays[DEFAULT_FEATURE_KEYS["motion"]], cues.bursts["motion"])
        u_g, u_p = enc.directions["motion"]
        read.update(motion_gesture=_fast_amplitude(x @ u_g) / 2.5, motion_posture=float(np.mean(x @ u_p)) / 2.0,
                    still_body=False)
    if cues.present["visual"]:
        visual = arrays[DEFAULT_FEATURE_KEYS["visual"]]
        read["visual_valence"] = float(np.mean(visual @ enc.directions["visual"][0])) / 1.2
    return replace(cues, **read)


def _au_state(cues: ClipCues, au: np.ndarray) -> str:
    """The AU sentence from the intensities: AUs whose burst apex rises >= AU_ACTIVE above the resting face."""
    start, k = cues.bursts["au"]
    apex = start + k // 2
    rest = np.median(np.r_[au[:start], au[start + k:]], axis=0) if len(au) > k else np.zeros(au.shape[1])
    rise = au[apex, : len(AU_ORDER)] - rest[: len(AU_ORDER)]
    return de.active_aus_sentence([name for j, name in enumerate(AU_ORDER)
                                   if rise[j] >= AU_ACTIVE and name in de.AU_NAMES])  # blinks are not expressions


def text_state(words: np.ndarray, enc: Encoders) -> str:
    """The words' polarity (positive / negative / neutral) from `bert [n_words, 32]`: the tokens'
    mean projection on the polarity direction, thresholded at +-0.2."""
    mean = float(np.mean(words @ enc.directions["text"][0]))
    return "positive" if mean > 0.2 else ("negative" if mean < -0.2 else "neutral")


def oracle_states(cues: ClipCues, arrays: Mapping[str, np.ndarray], enc: Encoders) -> dict[str, str]:
    """expert -> the evidence state the oracle reads from the clip's frames (present experts only)."""
    r = read_cues(cues, arrays, enc)
    out = {}
    if cues.present["audio"]:
        out["audio"] = de.arousal_level(r.audio_arousal)
    if cues.present["motion"]:
        out["motion"] = evidence_state("motion", de.motion_sentence(r))
    if cues.present["visual"]:
        out["visual"] = de.valence_level(r.visual_valence)
    if cues.present["au"]:
        out["au"] = evidence_state("au", _au_state(cues, arrays[DEFAULT_FEATURE_KEYS["au"]]))
    if cues.present["text"]:
        out["text"] = text_state(arrays[DEFAULT_FEATURE_KEYS["text"]], enc)
    synergy = de.synergy_sentence(r)
    if synergy is not None:
        out["synergy"] = evidence_state("synergy", synergy)
    return out
