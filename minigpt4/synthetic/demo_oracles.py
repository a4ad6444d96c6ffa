"""How much of the demo's labels its generated information allows: the latent ceiling and the
cue oracle, to hold a model's accuracy against (`demo.measure_report` writes them)."""
from __future__ import annotations

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
from minigpt4.synthetic.demo_cues import AU_TEMPLATES, ClipCues, load_latents, nearest_emotion, sample_cues


def cue_vector(cues: ClipCues) -> np.ndarray:
    """The information a clip's files carry, without frame noise: per modality a presence
    flag and what it shows (zeros when absent). [5 + 1 + 2 + 17 + 3 + 1] floats."""
    p = cues.present
    au = np.zeros(len(AU_ORDER))
    if p["au"]:
        for name, peak in AU_TEMPLATES[cues.face_category].items():
            au[AU_ORDER.index(name)] = cues.face_intensity * peak
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


# cue_vector's modality blocks (evaluation.cue_worth prices each expert's reading of one)
CUE_BLOCKS: dict[str, slice] = cue_blocks({"audio": 1, "motion": 2, "au": len(AU_ORDER), "text": 3, "visual": 1})


def sample_cue_table(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` fresh clips' (cue vectors [n, F], latents [n, 3], labels [n]) without rendering
    frames, labels balanced in expectation. Drawn from a stream of its own, disjoint from the
    dataset's clip streams."""
    rng = np.random.default_rng([int(seed), 7777])
    labels = rng.integers(0, len(EMOTIONS), size=n)
    return cue_table(rng, labels, sample_cues, cue_vector)


def latent_ceiling(seed: int = 0, n: int = 20000) -> float:
    """Accuracy of the Bayes rule on the hidden latent itself (nearest prototype): no model
    that sees only the files can beat it, since every file is a noisy function of the latent
    (the face shows the category nearest the latent, not the label)."""
    _, lat, y = sample_cue_table(seed, n)
    pred = np.array([EMOTIONS.index(nearest_emotion(z)) for z in lat])
    return float((pred == y).mean())


def make_cue_classifier() -> Any:
    """The demo oracles' classifier (unfitted): gradient-boosted trees, fixed settings."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, random_state=0)


def fit_cue_oracle(seed: int = 0, n_train: int = 20000) -> Any:
    """A gradient-boosted tree classifier fit on `n_train` fresh clips' noise-free cue vectors."""
    x, _, y = sample_cue_table(seed, n_train)
    return fit_one_thread(make_cue_classifier(), x, y)


def cue_oracle_accuracy(seed: int = 0, n_train: int = 20000, n_test: int = 10000) -> float:
    """Test accuracy of the cue oracle on fresh clips: an estimate of the best accuracy the
    demo's information allows (features add frame noise on top of the cues, so a model on
    them should stay at or below this)."""
    clf = fit_cue_oracle(seed, n_train)
    x, _, y = sample_cue_table(seed + 1_000_003, n_test)
    return accuracy_one_thread(clf, x, y)


def split_cue_oracle_accuracy(latents_path: PathLike, split: str = "test", seed: int = 0, n_train: int = 20000) -> float:
    """The cue oracle's accuracy on the very clips of one generated split (the ceiling to
    hold a model's accuracy on that split against)."""
    cues = [c for c in load_latents(latents_path) if c.split == split]
    if not cues:
        raise ValueError(f"{latents_path}: no clips in split {split!r}")
    clf = fit_cue_oracle(seed, n_train)
    x = np.stack([cue_vector(c) for c in cues])
    y = np.array([EMOTIONS.index(c.emotion) for c in cues])
    return accuracy_one_thread(clf, x, y)
