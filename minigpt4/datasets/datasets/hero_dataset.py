"""HERODataset: feature files + annotations -> the model's input (docs/ARCHITECTURE.md "A collated batch").

A sample stacks the five modalities in STACK_ORDER (0 motion, 1 audio, 2 AU, 3 text,
4 visual global) into `video_features [5, T, max_dim]`, zero-padded in both time and feature
dim, with `feature_mask [5, T]` (True = real frame) and `modality_mask [5]` (True = present).
A modality missing from the file is all zeros with both masks False: never "present".

Long modalities are subsampled *uniformly* over time to their `max_len` (first and last frame
kept), not cut at the tail, so a 20 s clip is summarised over all 20 s. The collater pads T
to the longest sample of the batch, not to a global length, so batches of short clips stay
small.

`SampleBuilder` holds the per-sample logic so the folder dataset here and the webdataset
shard reader (`minigpt4/datasets/shards.py`) produce identical samples. A DataLoader fetches a
batch through `HERODataset.__getitems__`, which returns unpadded `PreparedSample`s that the
collater pads once, straight into the batch; `dataset[i]` returns the padded sample dict.
Both routes give identical batches. Always batch with `dataset.collater`.

Labels: an emotion outside `label_names` is an error naming the record; only records of an
unlabeled `test` split may lack one (emotion -1, emotion_label "unknown", empty answer).
"""
from __future__ import annotations

import functools
import logging
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from minigpt4.common import cot
from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS, DIM_KEYS, STACK_ORDER
from minigpt4.datasets.annotations import Annotation, UNLABELED_SPLITS
from minigpt4.datasets.buffer_pool import ZeroBufferPool
from minigpt4.datasets.feature_io import FeatureFileError, FeatureRecord, find_feature_file, prefetch, read_features

logger = logging.getLogger(__name__)

NUM_MODALITIES = len(STACK_ORDER)
_FRAME_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))  # what a batch holds as stored
_NUMPY_DTYPE = {torch.float16: np.float16, torch.float32: np.float32}
_FEATURE_BUFFERS = ZeroBufferPool()  # per process (DataLoader workers each get their own)


def _batch_dtype(all_half: bool) -> torch.dtype:
    """The batch keeps the files' precision: float16 when everything in it is float16 (the
    feature files are), else float32. Neither choice loses a bit; the experts cast on input."""
    return torch.float16 if all_half else torch.float32
BATCH_KEYS: tuple[str, ...] = (
    "video_features",
    "feature_mask",
    "modality_mask",
    "video_id",
    "emotion",
    "emotion_label",
    "instruction",
    "answer",
    "evidence",
    "transcript",
)


class MissingFeaturesError(FileNotFoundError):
    """Annotated clips without a feature file (and `skip_missing` is off)."""


def _per_modality(value: Any, name: str, default: Any) -> dict[str, Any]:
    """Expand a scalar or a {modality: value} mapping to all five modalities."""
    if value is None:
        return {m: default for m in STACK_ORDER}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(STACK_ORDER))
        if unknown:
            raise ValueError(f"{name}: unknown modality name(s) {unknown}; expected {list(STACK_ORDER)}")
        return {m: value.get(m, default) for m in STACK_ORDER}
    return {m: value for m in STACK_ORDER}


@functools.lru_cache(maxsize=4096)
def uniform_indices(length: int, max_len: Optional[int]) -> Optional[np.ndarray]:
    """Indices of `max_len` frames spread evenly over `length` (first and last kept), or None
    when no subsampling is needed. Cached (a dataset repeats a few hundred lengths), so the
    array is read-only."""
    if max_len is None or length <= max_len:
        return None
    if max_len == 1:
        idx = np.array([(length - 1) // 2], dtype=np.int64)
    else:  # floor(x + 0.5): round half up, monotone and strictly increasing for a step > 1
        idx = np.floor(np.linspace(0.0, length - 1, num=max_len) + 0.5).astype(np.int64)
    idx.setflags(write=False)
    return idx


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


class SampleBuilder:
    """Turns one (annotation, feature file) pair into a sample dict with the batch keys.

    Also checks that each modality's feature dim is the same in every file it reads (the
    first file seen fixes it), because a mixed folder would be silently un-padded wrongly,
    and, once `expect_dims` has named the model's widths, that it is exactly that width: the
    model cuts each modality to its `model.*_dim` columns, so a wider file would lose columns
    and a narrower one would be read with zero padding as features, both without a sound.
    """

    def __init__(
        self,
        max_dim: int = 1024,
        label_names: Sequence[str] = DEFAULT_EMOTIONS,
        feature_keys: Optional[Mapping[str, Optional[str]]] = None,
        max_len: Union[int, Mapping[str, Optional[int]], None] = None,
        use_cot: bool = True,
        modality_dropout: Union[float, Mapping[str, float]] = 0.0,
        seed: int = 42,
    ) -> None:
        if int(max_dim) < 1:
            raise ValueError(f"max_dim must be >= 1, got {max_dim}")
        self.max_dim = int(max_dim)
        self.label_names = [str(l).strip().lower() for l in label_names]
        if len(set(self.label_names)) != len(self.label_names) or not self.label_names:
            raise ValueError(f"label_names must be non-empty and unique, got {list(label_names)}")
        self.label_index = {name: i for i, name in enumerate(self.label_names)}
        # modality -> key in the feature file; an omitted modality keeps its default key and
        # a null key turns the modality off (always absent)
        keys: dict[str, Optional[str]] = dict(DEFAULT_FEATURE_KEYS)
        if feature_keys is not None:
            if not isinstance(feature_keys, Mapping):
                raise ValueError(f"feature_keys must map modality -> file key, got {feature_keys!r}")
            unknown = sorted(set(feature_keys) - set(STACK_ORDER))
            if unknown:
                raise ValueError(f"feature_keys: unknown modality name(s) {unknown}; expected {list(STACK_ORDER)}")
            keys.update({m: (None if v is None else str(v)) for m, v in feature_keys.items()})
        self.feature_keys = keys
        self.max_len: dict[str, Optional[int]] = {
            m: (None if v is None else int(v)) for m, v in _per_modality(max_len, "max_len", None).items()
        }
        for m, v in self.max_len.items():
            if v is not None and v < 1:
                raise ValueError(f"max_len[{m}] must be >= 1 or null, got {v}")
        self.dropout: dict[str, float] = {
            m: float(v) for m, v in _per_modality(modality_dropout, "modality_dropout", 0.0).items()
        }
        for m, p in self.dropout.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"modality_dropout[{m}] must be in [0, 1], got {p}")
        self.use_cot = bool(use_cot)
        self.seed = int(seed)
        self.instruction = cot.build_instruction(self.label_names, self.use_cot)
        self._dims: dict[str, tuple[int, str]] = {}
        self.expected_dims: dict[str, int] = {}

    def expect_dims(self, dims: Mapping[str, int]) -> None:
        """The model's feature width per modality (`model.*_dim`); a file of another width is an error."""
        unknown = sorted(set(dims) - set(STACK_ORDER))
        if unknown:
            raise ValueError(f"expected dims for unknown modality name(s) {unknown}; expected {list(STACK_ORDER)}")
        for m, d in dims.items():
            if int(d) < 1:
                raise ValueError(f"model.{DIM_KEYS[m]} must be >= 1, got {d}")
            if int(d) > self.max_dim:
                raise ValueError(f"model.{DIM_KEYS[m]} = {d} exceeds the dataset's max_dim {self.max_dim}")
        self.expected_dims = {m: int(d) for m, d in dims.items()}

    # ------------------------------------------------------------ labels / text
    def check_annotation(self, rec: Annotation) -> None:
        """Label in the label set (or an unlabeled test record); `answer` parses to it."""
        if rec.emotion is None:
            if rec.split not in UNLABELED_SPLITS:
                raise ValueError(f"{rec.where()}: no emotion label (only {sorted(UNLABELED_SPLITS)} may be unlabeled)")
            return
        if rec.emotion not in self.label_index:
            raise ValueError(f"{rec.where()}: emotion {rec.emotion!r} is not in the label set {self.label_names}")
        if self.use_cot and rec.answer:
            parsed = cot.parse_report(rec.answer, self.label_names)
            if not parsed.format_ok or parsed.emotion != rec.emotion:
                raise ValueError(
                    f"{rec.where()}: 'answer' does not end in a '### Prediction' JSON with emotion "
                    f"{rec.emotion!r} ({parsed.error or 'predicts ' + repr(parsed.emotion)})"
                )

    def target(self, rec: Annotation) -> str:
        """The training target: the record's `answer`, else the CoT (or label-only) template."""
        if rec.emotion is None:
            return ""
        if not self.use_cot:
            return cot.build_label_target(rec.emotion)
        if rec.answer:
            return rec.answer
        return cot.build_cot_target(rec.emotion, rec.evidence, rec.reasoning)

    # ------------------------------------------------------------ features
    def select(self, feat: FeatureRecord, source: str) -> tuple[list[Optional[np.ndarray]], int]:
        """Each modality's `[n_k, d_k]` frames in STACK_ORDER (None = absent), after uniform
        subsampling to max_len, and T = the longest of them. Frames keep the file's dtype
        (float16 or float32): they are cast once, when written into the padded tensor."""
        picked: list[Optional[np.ndarray]] = []
        for m in STACK_ORDER:
            key = self.feature_keys[m]
            arr = feat.arrays.get(key) if key is not None else None
            if arr is not None:
                d = arr.shape[1]
                if d > self.max_dim:
                    raise FeatureFileError(source, key, f"feature dim {d} is larger than max_dim {self.max_dim}")
                want = self.expected_dims.get(m)
                if want is not None and d != want:
                    side = "wider" if d > want else "narrower"
                    raise FeatureFileError(
                        source, key, f"{m} features are {d} wide, {side} than model.{DIM_KEYS[m]} = {want} "
                        f"(set model.{DIM_KEYS[m]}={d} if these are the right features)")
                first = self._dims.get(m)
                if first is None:
                    self._dims[m] = (d, source)
                elif first[0] != d:
                    raise FeatureFileError(
                        source, key, f"feature dim {d} differs from dim {first[0]} of {m!r} in {first[1]}"
                    )
                idx = uniform_indices(arr.shape[0], self.max_len[m])
                if idx is not None:
                    arr = arr[idx]
                if arr.dtype not in _FRAME_DTYPES:
                    arr = arr.astype(np.float32)  # rare: ints/bools
            picked.append(arr)
        if all(a is None for a in picked):
            wanted = {m: k for m, k in self.feature_keys.items() if k is not None}
            raise FeatureFileError(source, None, f"no modality present (looked for keys {wanted}, found {sorted(feat.arrays)})")
        return picked, max(a.shape[0] for a in picked if a is not None)

    def dropout_rng(self, video_id: str, epoch: int) -> np.random.Generator:
        """The same clip in the same epoch drops the same modalities on any worker or rank."""
        return np.random.default_rng([self.seed, int(epoch), stable_hash(video_id)])

    def dropped(self, video_id: str, present: Sequence[int], epoch: int) -> list[int]:
        """Stack indices to drop: each present modality with its probability, at least one kept."""
        if len(present) <= 1 or not any(self.dropout[STACK_ORDER[k]] > 0 for k in present):
            return []
        rng = self.dropout_rng(video_id, epoch)
        draws = rng.random(NUM_MODALITIES)
        drop = [k for k in present if draws[k] < self.dropout[STACK_ORDER[k]]]
        if len(drop) == len(present):
            drop.remove(present[int(rng.integers(len(present)))])
        return drop

    def prepare(
        self, rec: Annotation, feat: FeatureRecord, source: str, *, training: bool = False, epoch: int = 0
    ) -> "PreparedSample":
        """A sample before padding (modality dropout applied when `training`)."""
        frames, t = self.select(feat, source)
        if training:
            for k in self.dropped(rec.video_id, [k for k, a in enumerate(frames) if a is not None], epoch):
                frames[k] = None
        fields = {
            "video_id": rec.video_id,
            "emotion": -1 if rec.emotion is None else self.label_index[rec.emotion],
            "emotion_label": rec.emotion if rec.emotion is not None else cot.UNKNOWN,
            "instruction": self.instruction,
            "answer": self.target(rec),
            "evidence": dict(rec.evidence),
            # the annotation's curated transcript wins over the file's ASR transcript
            "transcript": rec.text if rec.text else feat.transcript,
        }
        return PreparedSample(frames=frames, t=t, max_dim=self.max_dim, fields=fields)

    def build(
        self, rec: Annotation, feat: FeatureRecord, source: str, *, training: bool = False, epoch: int = 0
    ) -> dict[str, Any]:
        """One sample with the batch keys (tensors without the batch dim)."""
        return self.prepare(rec, feat, source, training=training, epoch=epoch).materialize()


@dataclass
class PreparedSample:
    """A sample before padding.

    `HERODataset.__getitems__` (what a DataLoader calls for a batch) hands these to the
    collater, which pads them once, straight into the batch tensor, instead of building a
    padded `[5, T, max_dim]` per clip and copying it again. `materialize()` gives the
    ordinary sample dict; both routes yield identical batches.
    """

    frames: list[Optional[np.ndarray]]  # STACK_ORDER: float16/32 [n_k, d_k], None = absent or dropped
    t: int  # T of the clip (its longest modality, counted before dropout)
    max_dim: int
    fields: dict[str, Any]  # the non-tensor sample keys

    @property
    def dtype(self) -> torch.dtype:
        """float16 when every present modality is stored in float16, else float32 (`_batch_dtype`)."""
        present = [a for a in self.frames if a is not None]
        return _batch_dtype(bool(present) and all(a.dtype == np.float16 for a in present))

    def write_into(self, feats: np.ndarray, fmask: np.ndarray, mmask: np.ndarray) -> None:
        """Copy the frames into `feats [5, T', max_dim]` (T' >= t), which must be zero-filled,
        and set `fmask [5, T']` and `mmask [5]` (both must start False).

        numpy arrays, not tensors: a numpy slice assignment costs ~1 us against ~10 us for
        torch indexing, and only the real frames are written (the caller zeroes the whole
        batch with one np.zeros instead of zeroing each strided padding slice).
        """
        for k, arr in enumerate(self.frames):
            if arr is None:
                continue
            n, d = arr.shape
            feats[k, :n, :d] = arr  # casts only in a mixed batch (float16 frames, float32 batch)
            fmask[k, :n] = True
            mmask[k] = True

    def materialize(self) -> dict[str, Any]:
        feats = np.zeros((NUM_MODALITIES, self.t, self.max_dim), dtype=_NUMPY_DTYPE[self.dtype])
        fmask = np.zeros((NUM_MODALITIES, self.t), dtype=bool)
        mmask = np.zeros(NUM_MODALITIES, dtype=bool)
        self.write_into(feats, fmask, mmask)
        return {"video_features": torch.from_numpy(feats), "feature_mask": torch.from_numpy(fmask),
                "modality_mask": torch.from_numpy(mmask), **self.fields}


def _sample_dtype(s: Union[PreparedSample, Mapping[str, Any]]) -> torch.dtype:
    return s.dtype if isinstance(s, PreparedSample) else s["video_features"].dtype


def _sample_shape(s: Union[PreparedSample, Mapping[str, Any]]) -> tuple[int, int]:
    if isinstance(s, PreparedSample):
        return s.t, s.max_dim
    v = s["video_features"]
    if v.dim() != 3 or v.shape[0] != NUM_MODALITIES:
        raise ValueError(f"sample {s.get('video_id')!r} has video_features {tuple(v.shape)}, expected [5, T, max_dim]")
    return int(v.shape[1]), int(v.shape[2])


def collate_hero(samples: Sequence[Union[PreparedSample, Mapping[str, Any]]]) -> dict[str, Any]:
    """Batch samples (sample dicts or PreparedSample): pads T to the longest sample.

    Returns the batch of docs/ARCHITECTURE.md: video_features [B, 5, T, max_dim] (zeros in
    padding; float16 when every sample is float16, as samples from float16 feature files are,
    else float32; the experts cast it to their own dtype), feature_mask bool [B, 5, T],
    modality_mask bool [B, 5], emotion int64 [B], and lists of the other keys.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    shapes = [_sample_shape(s) for s in samples]
    dims = {d for _, d in shapes}
    if len(dims) != 1:
        raise ValueError(f"samples disagree on max_dim: {sorted(dims)}")
    b, t, max_dim = len(samples), max(n for n, _ in shapes), dims.pop()
    dtype = _batch_dtype(all(_sample_dtype(s) == torch.float16 for s in samples))
    # numpy buffers (cheap slice assignment), each zero-filled once; frames are copied in.
    # The tensors share their memory (sample dicts are written through them: torch casts any dtype).
    # The big one comes from a pool: the tensor holds it, so it is reused only once the batch is gone.
    feats = _FEATURE_BUFFERS.zeros((b, NUM_MODALITIES, t, max_dim), _NUMPY_DTYPE[dtype])
    fmask = np.zeros((b, NUM_MODALITIES, t), dtype=bool)
    mmask = np.zeros((b, NUM_MODALITIES), dtype=bool)
    feats_t, fmask_t, mmask_t = torch.from_numpy(feats), torch.from_numpy(fmask), torch.from_numpy(mmask)
    fields: list[Mapping[str, Any]] = []
    for i, s in enumerate(samples):
        if isinstance(s, PreparedSample):
            s.write_into(feats[i], fmask[i], mmask[i])
            fields.append(s.fields)
            continue
        n = shapes[i][0]
        feats_t[i, :, :n] = s["video_features"]
        fmask_t[i, :, :n] = s["feature_mask"]
        mmask_t[i] = torch.as_tensor(s["modality_mask"], dtype=torch.bool)
        fields.append(s)
    return {
        "video_features": feats_t,
        "feature_mask": fmask_t,
        "modality_mask": mmask_t,
        "video_id": [f["video_id"] for f in fields],
        "emotion": torch.tensor([int(f["emotion"]) for f in fields], dtype=torch.int64),
        "emotion_label": [f["emotion_label"] for f in fields],
        "instruction": [f["instruction"] for f in fields],
        "answer": [f["answer"] for f in fields],
        "evidence": [dict(f["evidence"]) for f in fields],
        "transcript": [f["transcript"] for f in fields],
    }


def drop_modalities(batch: Mapping[str, Any], names: Union[str, Iterable[str]]) -> dict[str, Any]:
    """A copy of `batch` with the named modalities removed (zeros, both masks False).

    For robustness evaluation ("what if there is no audio?"); the input batch is unchanged.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in STACK_ORDER]
    if unknown:
        raise ValueError(f"unknown modality name(s) {unknown}; expected some of {list(STACK_ORDER)}")
    out = dict(batch)
    out["video_features"] = batch["video_features"].clone()
    out["feature_mask"] = batch["feature_mask"].clone()
    out["modality_mask"] = batch["modality_mask"].clone()
    for name in names:
        k = STACK_ORDER.index(name)
        out["video_features"][:, k] = 0
        out["feature_mask"][:, k] = False
        out["modality_mask"][:, k] = False
    return out


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
