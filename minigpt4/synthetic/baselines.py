"""Reference classifiers on feature files, so a HERO result can be judged against them.

`mean_pool_logreg_baseline` is the yardstick of the proof-of-learning test: average each
modality over time, concatenate, fit a logistic regression. A model that beats it clearly
is using more than per-modality averages (where in the clip a cue happens, how frames vary,
how modalities combine). `pooled_stats_logreg_baseline` adds per-dim std / max / min pools,
a stronger non-neural reference.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS, STACK_ORDER

PathLike = Union[str, "os.PathLike[str]"]
POOLINGS = ("mean", "std", "max", "min")


def _records(annotations: Union[PathLike, Sequence[Mapping]]) -> list[Mapping]:
    """Annotation records from a labels JSON file (validated by annotations.py) or a list."""
    if isinstance(annotations, (str, os.PathLike)):
        from minigpt4.datasets.annotations import load_annotations

        by_split = load_annotations(annotations)
        return [rec.to_json() for recs in by_split.values() for rec in recs]
    return list(annotations)


def _pool(arr: np.ndarray, poolings: Sequence[str]) -> np.ndarray:
    """[T, D] -> [len(poolings) * D]."""
    out = []
    for p in poolings:
        if p == "mean":
            out.append(arr.mean(0))
        elif p == "std":
            out.append(arr.std(0))
        elif p == "max":
            out.append(arr.max(0))
        elif p == "min":
            out.append(arr.min(0))
        else:
            raise ValueError(f"unknown pooling {p!r}; expected one of {POOLINGS}")
    return np.concatenate(out)


def pooled_features(
    features_dir: PathLike,
    records: Sequence[Mapping],
    feature_keys: Mapping[str, Optional[str]],
    poolings: Sequence[str] = ("mean",),
    max_dim: int = 1024,
) -> np.ndarray:
    """One row per record: for each modality (STACK_ORDER, skipping keys set to None) its
    pooled frames (zeros when absent) and a presence flag. Returns float64 [N, F].

    A modality's dim is taken from the first file that has it; a file that disagrees is
    an error naming it (the same rule the dataset applies).
    """
    from minigpt4.datasets.feature_io import FeatureFileError, find_feature_file, read_features

    mods = [m for m in STACK_ORDER if feature_keys.get(m) is not None]
    rows: list[dict[str, np.ndarray]] = []
    dims: dict[str, int] = {}
    for rec in records:
        vid = rec["video_id"]
        path = find_feature_file(features_dir, vid)
        if path is None:
            raise FileNotFoundError(f"{features_dir}: no feature file for video_id {vid!r}")
        feat = read_features(path, max_dim=max_dim)
        row = {}
        for m in mods:
            arr = feat.arrays.get(str(feature_keys[m]))
            if arr is None:
                continue
            if m in dims and arr.shape[1] != dims[m]:
                raise FeatureFileError(path, feature_keys[m], f"dim {arr.shape[1]} differs from {dims[m]} in earlier files")
            dims.setdefault(m, arr.shape[1])
            row[m] = _pool(arr.astype(np.float64), poolings)
        rows.append(row)
    width = {m: len(poolings) * dims[m] for m in mods if m in dims}
    out = []
    for row in rows:
        parts = []
        for m in mods:
            if m not in width:
                continue
            parts.append(row.get(m, np.zeros(width[m])))
            parts.append(np.array([1.0 if m in row else 0.0]))
        out.append(np.concatenate(parts) if parts else np.zeros(0))
    return np.stack(out)


def pooled_logreg_baseline(
    features_dir: PathLike,
    annotations: Union[PathLike, Sequence[Mapping]],
    train_split: str = "train",
    test_split: str = "test",
    feature_keys: Optional[Mapping[str, Optional[str]]] = None,
    poolings: Sequence[str] = ("mean",),
    label_names: Sequence[str] = DEFAULT_EMOTIONS,
    max_dim: int = 1024,
    C: float = 1.0,
) -> float:
    """Test accuracy of a standardised multinomial logistic regression on pooled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keys = dict(DEFAULT_FEATURE_KEYS if feature_keys is None else feature_keys)
    records = _records(annotations)
    index = {l: i for i, l in enumerate(label_names)}

    def part(split: str) -> tuple[np.ndarray, list[Mapping]]:
        recs = [r for r in records if r.get("split") == split and r.get("emotion") in index]
        if not recs:
            raise ValueError(f"no labelled records in split {split!r} (labels {list(label_names)})")
        return np.array([index[r["emotion"]] for r in recs]), recs

    y_tr, tr = part(train_split)
    y_te, te = part(test_split)
    # pool both splits in one pass so a modality seen only in one still gets the same columns
    x = pooled_features(features_dir, list(tr) + list(te), keys, poolings, max_dim)
    x_tr, x_te = x[: len(tr)], x[len(tr) :]
    if len(set(y_tr.tolist())) < 2:
        raise ValueError(f"split {train_split!r} has fewer than two classes")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    clf.fit(x_tr, y_tr)
    return float((clf.predict(x_te) == y_te).mean())


def mean_pool_logreg_baseline(
    features_dir: PathLike,
    annotations: Union[PathLike, Sequence[Mapping]],
    train_split: str = "train",
    test_split: str = "test",
    feature_keys: Optional[Mapping[str, Optional[str]]] = None,
) -> float:
    """Mean over time per modality (zeros + a presence flag when absent), concatenated,
    scikit-learn LogisticRegression fit on `train_split`; returns accuracy on `test_split`."""
    return pooled_logreg_baseline(features_dir, annotations, train_split, test_split, feature_keys, ("mean",))


def pooled_stats_logreg_baseline(
    features_dir: PathLike,
    annotations: Union[PathLike, Sequence[Mapping]],
    train_split: str = "train",
    test_split: str = "test",
    feature_keys: Optional[Mapping[str, Optional[str]]] = None,
) -> float:
    """Like the mean-pool baseline with mean, std, max and min pools (sees burst size and swings)."""
    return pooled_logreg_baseline(features_dir, annotations, train_split, test_split, feature_keys, POOLINGS)
