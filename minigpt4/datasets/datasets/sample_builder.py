"""SampleBuilder: one (annotation, feature file) pair -> one sample, and PreparedSample.

The per-sample logic shared by the folder dataset (`hero_dataset.HERODataset`) and the
webdataset shard reader (`minigpt4/datasets/shards.py`), so both produce identical samples:
label checks and training targets, per-modality options (`max_len`, `modality_dropout`,
`feature_keys`), uniform subsampling over time, feature-width checks and seeded modality
dropout. A `PreparedSample` is the sample before padding; `collate.collate_samples` pads it
straight into the batch.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from minigpt4.common import cot
from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS, DIM_KEYS, STACK_ORDER
from minigpt4.datasets.annotations import Annotation, UNLABELED_SPLITS
from minigpt4.datasets.feature_io import FeatureFileError, FeatureRecord
from minigpt4.datasets.measured_evidence import measured_sentences

__all__ = ["NUMPY_DTYPE", "NUM_MODALITIES", "PreparedSample", "SampleBuilder", "batch_dtype", "stable_hash",
           "uniform_indices"]

NUM_MODALITIES = len(STACK_ORDER)
_FRAME_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))  # what a batch holds as stored
NUMPY_DTYPE = {torch.float16: np.float16, torch.float32: np.float32}


def batch_dtype(all_half: bool) -> torch.dtype:
    """The batch keeps the files' precision: float16 when everything in it is float16 (the
    feature files are), else float32. Neither choice loses a bit; the experts cast on input."""
    return torch.float16 if all_half else torch.float32


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
        frame_dropout: Union[float, Mapping[str, float]] = 0.0,
        measured_evidence: bool = True,
        au_fps: float = 1.0,
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
        self.frame_dropout: dict[str, float] = {
            m: float(v) for m, v in _per_modality(frame_dropout, "frame_dropout", 0.0).items()
        }
        for m, p in self.frame_dropout.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"frame_dropout[{m}] must be in [0, 1), got {p}")
        self.use_cot = bool(use_cot)
        self.measured_evidence = bool(measured_evidence)
        if not float(au_fps) > 0:
            raise ValueError(f"au_fps must be > 0, got {au_fps}")
        self.au_fps = float(au_fps)
        self._measured: dict[str, dict[str, str]] = {}  # video_id -> measured sentences (deterministic)
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

    def target(self, rec: Annotation, evidence: Optional[Mapping[str, str]] = None) -> str:
        """The training target: the record's `answer`, else the CoT (or label-only) template, whose
        evidence section holds `evidence` (default: the annotation's)."""
        if rec.emotion is None:
            return ""
        if not self.use_cot:
            return cot.build_label_target(rec.emotion)
        if rec.answer:
            return rec.answer
        return cot.build_cot_target(rec.emotion, rec.evidence if evidence is None else evidence, rec.reasoning)

    def evidence(self, rec: Annotation, feat: FeatureRecord, transcript: str,
                 present: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
        """(sentence per expert, its source per expert): the annotation's sentences ("annotated")
        always win; with `measured_evidence`, sentences worded from what the file measured (action
        units, prosody, optical flow, the transcript, CLIP scene labels) fill the other experts
        whose modality the file holds (`present`, STACK_ORDER names) ("measured"). An expert with
        neither has no entry."""
        annotated = {k: v for k, v in rec.evidence.items() if isinstance(v, str) and v.strip()}
        sources = {k: "annotated" for k in annotated}
        if not self.measured_evidence:
            return annotated, sources
        measured = self._measured.get(rec.video_id)
        if measured is None:
            measured = measured_sentences(feat.arrays, feat.meta, transcript, self.au_fps)
            self._measured[rec.video_id] = measured
        merged = dict(annotated)
        for name, sentence in measured.items():
            if name not in merged and name in present and sentence:
                merged[name] = sentence
                sources[name] = "measured"
        return merged, sources

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

    def frames_kept(self, video_id: str, frames: Sequence[Optional[np.ndarray]],
                    epoch: int) -> Optional[list[Optional[np.ndarray]]]:
        """Frame dropout: per present modality a bool mask [n_k] of the frames kept (each dropped with
        the modality's `frame_dropout`, at least one kept), None where nothing is dropped.

        Masked, not removed: the kept frames keep their time positions. A stream of its own
        ([seed, epoch, clip, 1]), so turning it on leaves the modality-dropout draws unchanged.
        """
        if not any(self.frame_dropout[STACK_ORDER[k]] > 0 for k, a in enumerate(frames) if a is not None):
            return None
        rng = np.random.default_rng([self.seed, int(epoch), stable_hash(video_id), 1])
        keep: list[Optional[np.ndarray]] = []
        for k, arr in enumerate(frames):
            p = self.frame_dropout[STACK_ORDER[k]]
            if arr is None or p <= 0 or arr.shape[0] <= 1:
                keep.append(None)
                continue
            mask = rng.random(arr.shape[0]) >= p
            if not mask.any():
                mask[int(rng.integers(arr.shape[0]))] = True
            keep.append(None if mask.all() else mask)
        return keep if any(m is not None for m in keep) else None

    def prepare(
        self, rec: Annotation, feat: FeatureRecord, source: str, *, training: bool = False, epoch: int = 0
    ) -> "PreparedSample":
        """A sample before padding (modality and frame dropout applied when `training`)."""
        frames, t = self.select(feat, source)
        # the annotation's curated transcript wins over the file's ASR transcript
        transcript = rec.text if rec.text else feat.transcript
        evidence, sources = self.evidence(rec, feat, transcript, [m for m, a in zip(STACK_ORDER, frames) if a is not None])
        keep = None
        if training:
            for k in self.dropped(rec.video_id, [k for k, a in enumerate(frames) if a is not None], epoch):
                frames[k] = None
            keep = self.frames_kept(rec.video_id, frames, epoch)
        fields = {
            "video_id": rec.video_id,
            "emotion": -1 if rec.emotion is None else self.label_index[rec.emotion],
            "emotion_label": rec.emotion if rec.emotion is not None else cot.UNKNOWN,
            "instruction": self.instruction,
            "answer": self.target(rec, evidence),
            "evidence": evidence,
            "evidence_source": sources,
            "transcript": transcript,
        }
        return PreparedSample(frames=frames, t=t, max_dim=self.max_dim, fields=fields, keep=keep)

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
    keep: Optional[list[Optional[np.ndarray]]] = None  # frame dropout: bool [n_k] of kept frames (None: all)

    @property
    def dtype(self) -> torch.dtype:
        """float16 when every present modality is stored in float16, else float32 (`batch_dtype`)."""
        present = [a for a in self.frames if a is not None]
        return batch_dtype(bool(present) and all(a.dtype == np.float16 for a in present))

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
            keep = None if self.keep is None else self.keep[k]
            if keep is None:
                feats[k, :n, :d] = arr  # casts only in a mixed batch (float16 frames, float32 batch)
                fmask[k, :n] = True
            else:  # dropped frames stay zero and masked, as padding is
                feats[k, :n, :d][keep] = arr[keep]
                fmask[k, :n] = keep
            mmask[k] = True

    def materialize(self) -> dict[str, Any]:
        feats = np.zeros((NUM_MODALITIES, self.t, self.max_dim), dtype=NUMPY_DTYPE[self.dtype])
        fmask = np.zeros((NUM_MODALITIES, self.t), dtype=bool)
        mmask = np.zeros(NUM_MODALITIES, dtype=bool)
        self.write_into(feats, fmask, mmask)
        return {"video_features": torch.from_numpy(feats), "feature_mask": torch.from_numpy(fmask),
                "modality_mask": torch.from_numpy(mmask), **self.fields}

