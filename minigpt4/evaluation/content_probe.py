"""The disentanglement read-out of STMIL: how much of *what is said* the audio expert still carries.

A linear probe (logistic regression on standardised features) predicts each clip's content
label (`topic` in the demo and shift annotations: what the clip talks about, independent of
its emotion) from the audio expert's summary; fitted on the train split, scored on the
evaluated split. STMIL should push this towards chance while the emotion read from the same
summaries stays: both are reported, with the majority-topic rate as the chance level.

The content label is an optional annotation field (`hero-eval --content_probe [FIELD]`); the
loader does not keep it, so it is read from the annotation files the dataset's records name.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import torch

from minigpt4.common.modalities import AUDIO, TEXT


class ContentProbeError(ValueError):
    """The content probe cannot run: no content labels, or too few clips to fit it."""


def content_labels(datasets: Iterable[Any], field: str) -> dict[str, str]:
    """video_id -> the annotation's `field` (a string), read from every annotation file the
    datasets' records came from. Records without the field are left out."""
    sources = sorted({str(rec.source) for ds in datasets for rec in getattr(ds, "annotations", []) if rec.source})
    labels: dict[str, str] = {}
    for source in sources:
        try:
            records = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise ContentProbeError(f"{source}: cannot read it for the content probe ({exc})") from exc
        if isinstance(records, Mapping):
            records = records.get("annotations", [])
        for rec in records if isinstance(records, list) else []:
            if isinstance(rec, Mapping) and isinstance(rec.get(field), str) and rec.get("video_id") is not None:
                labels[str(rec["video_id"])] = rec[field]
    return labels


@torch.no_grad()
def expert_summaries(model: Any, batches: Iterable[Mapping[str, Any]],
                     autocast: Callable[[], Any]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """video_id -> (summaries [6, H], present [6], emotion index) from the evidence stack in eval mode."""
    stack = model.evidence_stack
    was_training = model.training
    model.eval()
    out: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    try:
        for samples in batches:
            with autocast():
                result = stack(model._on_device(samples), None, compute_losses=False)
            summ = result.summaries.float().cpu().numpy()
            present = result.expert_present.cpu().numpy()
            emotion = samples["emotion"].tolist()
            for b, vid in enumerate(samples["video_id"]):
                out[str(vid)] = (summ[b], present[b], int(emotion[b]))
    finally:
        model.train(was_training)
    return out


def _probe(x_train: np.ndarray, y_train: list, x_test: np.ndarray, y_test: list) -> Optional[float]:
    """Test accuracy of a standardised logistic regression, None when the train labels have one class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(y_train)) < 2 or not y_test:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


def probe_expert(train: Mapping[str, tuple], test: Mapping[str, tuple], content: Mapping[str, str],
                 expert: int) -> dict[str, Any]:
    """Content and emotion probes on one expert's summaries (clips where it is present)."""
    def rows(part: Mapping[str, tuple]) -> tuple[np.ndarray, list, np.ndarray, list]:
        keep = [(vid, s, e) for vid, (s, p, e) in sorted(part.items()) if p[expert]]
        with_content = [(s[expert], content[vid]) for vid, s, e in keep if vid in content]
        with_emotion = [(s[expert], e) for vid, s, e in keep if e >= 0]
        xc = np.stack([r[0] for r in with_content]) if with_content else np.zeros((0, 1))
        xe = np.stack([r[0] for r in with_emotion]) if with_emotion else np.zeros((0, 1))
        return xc, [r[1] for r in with_content], xe, [r[1] for r in with_emotion]

    xc_tr, yc_tr, xe_tr, ye_tr = rows(train)
    xc_te, yc_te, xe_te, ye_te = rows(test)
    majority = Counter(yc_te).most_common(1)[0][1] / len(yc_te) if yc_te else None
    return {"content_accuracy": _probe(xc_tr, yc_tr, xc_te, yc_te), "content_chance": majority,
            "emotion_accuracy": _probe(xe_tr, ye_tr, xe_te, ye_te),
            "n_train": len(yc_tr), "n_test": len(yc_te)}


def content_probe(model: Any, train_batches: Iterable[Mapping[str, Any]], test_batches: Iterable[Mapping[str, Any]],
                  content: Mapping[str, str], autocast: Callable[[], Any], field: str = "topic") -> dict[str, Any]:
    """metrics.json's `content_probe`: the audio expert's probes, and the text expert's for reference
    (the words carry the content, so its probe shows the content is there to be read)."""
    if not content:
        raise ContentProbeError(f"no annotation record has a {field!r} field: nothing for the content probe to predict")
    train = expert_summaries(model, train_batches, autocast)
    test = expert_summaries(model, test_batches, autocast)
    audio = probe_expert(train, test, content, AUDIO)
    if audio["content_accuracy"] is None:
        raise ContentProbeError(f"the content probe needs clips with audio and at least two {field!r} values "
                                f"in the train split (got {audio['n_train']} clips)")
    return {"field": field, "audio": audio, "text": probe_expert(train, test, content, TEXT)}
