"""The demo's frame oracle (`frame_oracle` says why): each clip's cues read back from its files in
the layout of `demo_oracles.cue_vector`, then the demo oracle's gradient-boosted trees fitted on the
train split's reads. Audio, motion and visual are read as the evidence oracle reads them
(`demo_evidence_oracle.read_cues`), the AU apexes by least squares, the words' polarity by its
thresholded mean projection."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS
from minigpt4.synthetic.common import Encoders, PathLike
from minigpt4.synthetic.demo import make_encoders
from minigpt4.synthetic.demo_cues import ClipCues, load_latents
from minigpt4.synthetic.demo_evidence_oracle import read_cues, text_state
from minigpt4.synthetic.demo_oracles import CUE_BLOCKS, cue_vector, make_cue_classifier
from minigpt4.synthetic.frame_oracle import au_apex, read_split, score_reads

POLARITIES = ("positive", "negative", "neutral")  # cue_vector's order of the words' one-hot


def read_cue_vector(cues: ClipCues, arrays: Mapping[str, np.ndarray], enc: Optional[Encoders] = None) -> np.ndarray:
    """One clip's cue vector (`demo_oracles.cue_vector`'s layout) with every present modality's
    block read from its feature arrays (feature key -> [T, D]) instead of taken from the latents;
    the burst windows come from `cues.bursts`. A modality the file lacks reads as zeros."""
    enc = enc or make_encoders()
    present = {m: DEFAULT_FEATURE_KEYS[m] in arrays for m in cues.present}
    if present != dict(cues.present):
        raise ValueError(f"{cues.video_id}: its file's modalities {sorted(m for m, p in present.items() if p)} "
                         f"differ from latents.json's {sorted(m for m, p in cues.present.items() if p)}")
    out = cue_vector(read_cues(cues, arrays, enc))  # audio, motion, visual read; AU and words still the latents'
    au, words = CUE_BLOCKS["au"], CUE_BLOCKS["text"]
    out[au] = 0.0
    if present["au"]:
        out[au] = au_apex(arrays[DEFAULT_FEATURE_KEYS["au"]], [cues.bursts["au"]])
    out[words] = 0.0
    if present["text"]:
        out[words.start + POLARITIES.index(text_state(arrays[DEFAULT_FEATURE_KEYS["text"]], enc))] = 1.0
    return out


def read_split_cues(features_dir: PathLike, latents: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(read cue vectors [N, F], label indices [N]) of one split's clips."""
    enc = make_encoders()
    return read_split(features_dir, load_latents(latents), split, lambda c, a: read_cue_vector(c, a, enc), latents)


def frame_oracle(features_dir: PathLike, latents: PathLike, train_split: str = "train", val_split: str = "val",
                 test_split: str = "test") -> dict[str, float]:
    """{"accuracy": on test_split, "val_accuracy", "param"}: the demo oracle's classifier (fixed
    settings, nothing chosen; "param" 0) fitted on train_split's reads."""
    enc = make_encoders()
    return score_reads(features_dir, latents, load_latents(latents), lambda c, a: read_cue_vector(c, a, enc),
                       lambda _: make_cue_classifier(), (0.0,), (train_split, val_split, test_split))


def frame_oracle_accuracy(features_dir: PathLike, latents: PathLike, train_split: str = "train",
                          val_split: str = "val", test_split: str = "test") -> float:
    """`frame_oracle`'s test accuracy alone (the corpus report's number)."""
    return frame_oracle(features_dir, latents, train_split, val_split, test_split)["accuracy"]
