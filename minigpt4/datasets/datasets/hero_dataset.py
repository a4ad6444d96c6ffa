"""HERODataset: feature files + annotations -> the model's input (docs/ARCHITECTURE.md "A collated batch").

A sample stacks the five modalities in STACK_ORDER (0 motion, 1 audio, 2 AU, 3 text,
4 visual global) into `video_features [5, T, max_dim]`, zero-padded in both time and feature
dim, with `feature_mask [5, T]` (True = real frame) and `modality_mask [5]` (True = present).
A modality missing from the file is all zeros with both masks False: never "present".

Long modalities are subsampled *uniformly* over time to their `max_len` (first and last frame
kept), not cut at the tail, so a 20 s clip is summarised over all 20 s. The collater pads T
to the longest sample of the batch, not to a global length, so batches of short clips stay
small.

`SampleBuilder` (`sample_builder.py`) holds the per-sample logic so the folder dataset here and
the webdataset shard reader (`minigpt4/datasets/shards.py`) produce identical samples. A
DataLoader fetches a batch through `HERODataset.__getitems__`, which returns unpadded
`PreparedSample`s that the collater (`collate.py`) pads once, straight into the batch;
`dataset[i]` returns the padded sample dict. Both routes give identical batches. Always batch
with `dataset.collater`.

This module keeps the names it always exported (`__all__`): the sample and batch code lives in
`sample_builder.py` and `collate.py`.

Labels: an emotion outside `label_names` is an error naming the record; only records of an
unlabeled `test` split may lack one (emotion -1, emotion_label "unknown", empty answer).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from torch.utils.data import Dataset

from minigpt4.common.modalities import DEFAULT_EMOTIONS
from minigpt4.datasets.annotations import Annotation
from minigpt4.datasets.buffer_pool import ZeroBufferPool
from minigpt4.datasets.datasets.collate import BATCH_KEYS, collate_samples, drop_modalities
from minigpt4.datasets.datasets.sample_builder import (
    NUM_MODALITIES,
    PreparedSample,
    SampleBuilder,
    stable_hash,
    uniform_indices,
)
from minigpt4.datasets.feature_io import FeatureRecord, find_feature_file, prefetch, read_features

__all__ = [
    "BATCH_KEYS",
    "HERODataset",
    "MissingFeaturesError",
    "NUM_MODALITIES",
    "PreparedSample",
    "SampleBuilder",
    "collate_hero",
    "drop_modalities",
    "report_missing",
    "stable_hash",
    "uniform_indices",
]

logger = logging.getLogger(__name__)

# the pool collate_hero pads batches into: per process (DataLoader workers each get their own)
_FEATURE_BUFFERS = ZeroBufferPool()


class MissingFeaturesError(FileNotFoundError):
    """Annotated clips without a feature file (and `skip_missing` is off)."""


def collate_hero(samples: Sequence[Union[PreparedSample, Mapping[str, Any]]]) -> dict[str, Any]:
    """Batch samples (sample dicts or PreparedSample) into this process's pooled buffers:
    `collate.collate_samples` (the batch it returns is documented there)."""
    return collate_samples(samples, _FEATURE_BUFFERS)


def report_missing(missing: Sequence[str], where: str, skip_missing: bool, total: int) -> None:
    """Raise (or, with skip_missing, warn) about clips whose feature file is missing."""
    if not missing:
        return
    head = ", ".join(repr(v) for v in missing[:5]) + (", ..." if len(missing) > 5 else "")
    msg = f"{len(missing)} of {total} annotated clips have no feature file in {where} (first: {head})"
    if not skip_missing:
        raise MissingFeaturesError(f"{msg}; extract them or set skip_missing: true to leave them out")
    warnings.warn(f"{msg}; skipping them (skip_missing: true)", stacklevel=3)
    logger.warning("%s; skipping them (skip_missing: true)", msg)


class HERODataset(Dataset):
    """Map-style dataset over `<features_dir>/<video_id>.{npz,safetensors,npy}` files.

    Sample keys are those of the collated batch (docs/ARCHITECTURE.md) without the batch dim.
    Modality dropout applies when `training` (default: split == "train"); call `set_epoch`
    each epoch so a clip drops different modalities in different epochs.
    """

    def __init__(
        self,
        annotations: Sequence[Annotation],
        features_dir: Union[str, Path],
        split: str = "train",
        max_dim: int = 1024,
        label_names: Sequence[str] = DEFAULT_EMOTIONS,
        feature_keys: Optional[Mapping[str, Optional[str]]] = None,
        max_len: Union[int, Mapping[str, Optional[int]], None] = None,
        modality_dropout: Union[float, Mapping[str, float]] = 0.0,
        frame_dropout: Union[float, Mapping[str, float]] = 0.0,
        measured_evidence: bool = True,
        au_fps: float = 1.0,
        skip_missing: bool = False,
        allow_pickle: bool = False,
        use_cot: bool = True,
        seed: int = 42,
        training: Optional[bool] = None,
    ) -> None:
        self.split = split
        self.features_dir = Path(features_dir)
        if not self.features_dir.is_dir():
            raise FileNotFoundError(f"features folder {self.features_dir} does not exist")
        self.allow_pickle = bool(allow_pickle)
        self.training = (split == "train") if training is None else bool(training)
        self.epoch = 0
        self.builder = SampleBuilder(
            max_dim=max_dim,
            label_names=label_names,
            feature_keys=feature_keys,
            max_len=max_len,
            use_cot=use_cot,
            modality_dropout=modality_dropout,
            frame_dropout=frame_dropout,
            measured_evidence=measured_evidence,
            au_fps=au_fps,
            seed=seed,
        )
        self.label_names = self.builder.label_names
        for rec in annotations:
            self.builder.check_annotation(rec)
        records: list[Annotation] = []
        paths: list[Path] = []
        missing: list[str] = []
        for rec in annotations:
            path = find_feature_file(self.features_dir, rec.video_id)
            if path is None:
                missing.append(rec.video_id)
                continue
            records.append(rec)
            paths.append(path)
        report_missing(missing, f"{self.features_dir} (split {split!r})", skip_missing, len(annotations))
        self.annotations = records
        self.paths = paths

    def __len__(self) -> int:
        return len(self.annotations)

    def expect_dims(self, dims: Mapping[str, int]) -> None:
        """Check every file against the model's widths (`SampleBuilder.expect_dims`), the first one now,
        so a wrong `model.*_dim` fails before training starts rather than at the first batch."""
        self.builder.expect_dims(dims)
        if self.paths:
            self.builder.select(self.load_features(0), str(self.paths[0]))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load_features(self, index: int) -> FeatureRecord:
        """The validated file of clip `index`, arrays in their stored dtype."""
        return read_features(
            self.paths[index], max_dim=self.builder.max_dim, allow_pickle=self.allow_pickle, dtype=None
        )

    def prepare(self, index: int) -> PreparedSample:
        return self.builder.prepare(
            self.annotations[index], self.load_features(index), str(self.paths[index]),
            training=self.training, epoch=self.epoch,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.prepare(index).materialize()

    def __getitems__(self, indices: Sequence[int]) -> list[PreparedSample]:
        """What a DataLoader fetches for one batch: unpadded samples for `collater`, which
        pads them once into the batch (use `collater` as the DataLoader's collate_fn)."""
        indices = [int(i) for i in indices]
        prefetch([self.paths[i] for i in indices])
        return [self.prepare(i) for i in indices]

    def collater(self, samples: Sequence[Union[PreparedSample, Mapping[str, Any]]]) -> dict[str, Any]:
        return collate_hero(samples)


@contextlib.contextmanager
def without_training_dropout(*datasets: Any) -> Iterator[None]:
    """Read datasets (or concatenations of them) as they are: every part's `training` flag off
    (no modality or frame dropout) inside the block, restored after it."""
    parts = [d for ds in datasets for d in getattr(ds, "datasets", [ds])]
    modes = [getattr(d, "training", None) for d in parts]
    for d, mode in zip(parts, modes):
        if mode is not None:
            d.training = False
    try:
        yield
    finally:
        for d, mode in zip(parts, modes):
            if mode is not None:
                d.training = mode
