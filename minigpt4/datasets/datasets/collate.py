"""Collating HERO samples into the batch of docs/ARCHITECTURE.md, and `drop_modalities`.

`collate_samples` pads T to the longest sample of the batch (not to a global length, so
batches of short clips stay small) and writes each sample once, straight into the batch
tensor. The big `video_features` buffer comes from the `ZeroBufferPool` it is given;
`hero_dataset.collate_hero` passes the process's pool.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import torch

from minigpt4.common.modalities import STACK_ORDER
from minigpt4.datasets.buffer_pool import ZeroBufferPool
from minigpt4.datasets.datasets.sample_builder import NUM_MODALITIES, NUMPY_DTYPE, PreparedSample, batch_dtype

__all__ = ["BATCH_KEYS", "collate_samples", "drop_modalities"]

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
    "evidence_source",
    "transcript",
)


def _sample_dtype(s: Union[PreparedSample, Mapping[str, Any]]) -> torch.dtype:
    return s.dtype if isinstance(s, PreparedSample) else s["video_features"].dtype


def _sample_shape(s: Union[PreparedSample, Mapping[str, Any]]) -> tuple[int, int]:
    if isinstance(s, PreparedSample):
        return s.t, s.max_dim
    v = s["video_features"]
    if v.dim() != 3 or v.shape[0] != NUM_MODALITIES:
        raise ValueError(f"sample {s.get('video_id')!r} has video_features {tuple(v.shape)}, expected [5, T, max_dim]")
    return int(v.shape[1]), int(v.shape[2])


def collate_samples(samples: Sequence[Union[PreparedSample, Mapping[str, Any]]],
                    pool: ZeroBufferPool) -> dict[str, Any]:
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
    dtype = batch_dtype(all(_sample_dtype(s) == torch.float16 for s in samples))
    # numpy buffers (cheap slice assignment), each zero-filled once; frames are copied in.
    # The tensors share their memory (sample dicts are written through them: torch casts any dtype).
    # The big one comes from a pool: the tensor holds it, so it is reused only once the batch is gone.
    feats = pool.zeros((b, NUM_MODALITIES, t, max_dim), NUMPY_DTYPE[dtype])
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
        "evidence_source": [dict(f.get("evidence_source") or {}) for f in fields],
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
    # a sentence measured from a removed modality's signal would not exist without it either
    if "evidence_source" in batch:
        kept = [{k: v for k, v in ev.items() if not (k in names and src.get(k) == "measured")}
                for ev, src in zip(batch["evidence"], batch["evidence_source"])]
        out["evidence"] = kept
        out["evidence_source"] = [{k: v for k, v in src.items() if k in ev}
                                  for ev, src in zip(kept, batch["evidence_source"])]
    return out

