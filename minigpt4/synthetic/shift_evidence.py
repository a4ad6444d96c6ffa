"""The shift corpus's words: topical transcripts, answer-stating evidence, synergy, reasoning.

Evidence sentences state the answer as real MERR/EMER-style annotations do ("a loud voice
with a falling pitch that sounds angry"), yet each is chosen by a *reading* recomputed from
the cue values rendered into that clip (`ShiftCues.readings`), so it is true of it; about a
quarter of the clips leave some present experts unannotated (`ShiftCues.unannotated`).
Transcripts are about the clip's `topic` (independent of the emotion) and may name a feeling.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from minigpt4.common.modalities import EXPERT_ORDER, STACK_ORDER
from minigpt4.synthetic.common import SENTIMENT, pick
from minigpt4.synthetic.shift_cues import ADJECTIVE, ShiftCues, visual_level

TEXT_WORDS_RANGE = (5, 22)
UNANNOTATED_PROB = 0.25     # clips with some present experts left unannotated
EXPERT_KEYS: tuple[str, ...] = EXPERT_ORDER  # the evidence keys, in the experts' order

# ----------------------------------------------------------------------------- phrasings
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


def make_transcript(rng: np.random.Generator, cues: ShiftCues) -> str:
    """A sentence about the clip's topic: topic clauses, polar words (none when neutral) and,
    when the words name a feeling, one phrase of that emotion."""
    lo, hi = TEXT_WORDS_RANGE
    bank = SHIFT_POSITIVE_WORDS if cues.text_polarity == "positive" else SHIFT_NEGATIVE_WORDS
    nouns = TOPIC_NOUNS[cues.topic]
    while True:
        parts = [pick(rng, OPENERS)] if rng.random() < 0.5 else []
        topical = rng.permutation(TOPIC_CLAUSES[cues.topic])
        clauses = [str(c) for c in topical[: 1 + int(rng.random() < 0.4)]]
        if cues.text_polarity != "neutral":
            clause = pick(rng, POLAR_TOPIC_CLAUSES)
            clauses.append(clause.format(noun=pick(rng, nouns), **{k: pick(rng, v) for k, v in bank.items()}))
        if cues.text_emotion is not None:
            clauses.append(pick(rng, EMOTION_PHRASES[cues.text_emotion])[0])
        order = rng.permutation(len(clauses))
        text = ", ".join(parts + [clauses[i] for i in order])
        if lo <= len(text.split()) <= hi:
            return text[0].upper() + text[1:] + "."


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
    ending = pick(rng, REASONING_ENDINGS).format(ADJECTIVE[cues.emotion])
    return f"{head[0].upper()}{head[1:]}. {ending}"


def build_record(cues: ShiftCues, transcript: Optional[str], rng: np.random.Generator) -> dict:
    """The annotation record; evidence only for present modalities, minus the unannotated."""
    options = evidence_options(cues)
    evidence = {k: pick(rng, v) for k, v in options.items()}
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
