"""What the shift corpus allows: the generator oracle, the latent ceiling and the majority-class
floor, to hold a model's accuracy against (`shift.measure_report` writes them)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from minigpt4.common.modalities import STACK_ORDER
from minigpt4.synthetic.common import (
    AU_ORDER,
    EMOTIONS,
    PathLike,
    accuracy_one_thread,
    cue_blocks,
    cue_table,
    fit_one_thread,
)
from minigpt4.synthetic.shift_cues import (
    LATENT_NOISE,
    PRIORS,
    PROTOTYPES,
    ShiftCues,
    load_latents,
    sample_cues,
    sample_labels,
)


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


# cue_vector's modality blocks (evaluation.cue_worth prices each expert's reading of one)
CUE_BLOCKS: dict[str, slice] = cue_blocks({"audio": 2, "motion": 2, "au": len(AU_ORDER),
                                           "text": 3 + len(EMOTIONS) - 1, "visual": 1})


def sample_cue_table(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` fresh clips' (cue vectors [n, F], latents [n, 3], labels [n]) drawn from the
    priors without rendering frames, from a stream disjoint from the corpus's clip streams."""
    rng = np.random.default_rng([int(seed), 0x5817, 7777])
    labels = sample_labels(rng, n)
    return cue_table(rng, labels, sample_cues, cue_vector)


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

    x, _, y = sample_cue_table(seed, n_train)
    return fit_one_thread(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)), x, y)


def cue_oracle_accuracy(seed: int = 0, n_train: int = 20000, n_test: int = 10000, oracle: Any = None) -> float:
    """The oracle's accuracy on fresh clips (an estimate of what the corpus's information
    allows); `oracle` reuses a fitted one instead of fitting on `n_train` clips."""
    clf = oracle if oracle is not None else fit_cue_oracle(seed, n_train)
    x, _, y = sample_cue_table(seed + 1_000_003, n_test)
    return accuracy_one_thread(clf, x, y)


def split_cue_oracle_accuracy(latents_path: PathLike, split: str = "test", seed: int = 0, n_train: int = 20000,
                              oracle: Any = None) -> float:
    """The oracle's accuracy on the very clips of one generated split (the ceiling to hold a
    model's accuracy on that split against)."""
    cues = [c for c in load_latents(latents_path) if c.split == split]
    if not cues:
        raise ValueError(f"{latents_path}: no clips in split {split!r}")
    x = np.stack([cue_vector(c) for c in cues])
    y = np.array([EMOTIONS.index(c.emotion) for c in cues])
    return accuracy_one_thread(oracle if oracle is not None else fit_cue_oracle(seed, n_train), x, y)


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
