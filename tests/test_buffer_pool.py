"""ZeroBufferPool: reused only once nothing refers to the last array; always zero-filled;
and collate_hero through it never overwrites a batch the caller still holds."""
from __future__ import annotations

import numpy as np
import torch

from minigpt4.datasets.buffer_pool import ZeroBufferPool
from minigpt4.datasets.datasets.hero_dataset import PreparedSample, collate_hero

MB = 1 << 20


def _addr(arr) -> int:
    return arr.data_ptr() if isinstance(arr, torch.Tensor) else arr.ctypes.data


def test_a_held_array_is_never_handed_out_again() -> None:
    pool = ZeroBufferPool(slots=4, min_bytes=MB)
    a = pool.zeros((2, MB), np.float16)
    assert a.shape == (2, MB) and a.dtype == np.float16 and not a.any()
    a[:] = 7
    b = pool.zeros((2, MB), np.float16)
    assert not np.shares_memory(a, b) and not b.any() and (a == 7).all()


def test_reuse_follows_tensor_views_and_is_zero_filled() -> None:
    pool = ZeroBufferPool(slots=4, min_bytes=MB)
    a = pool.zeros((4, MB), np.float16)
    address = _addr(a)
    t = torch.from_numpy(a)
    del a
    t.fill_(3.0)
    view = t[1:3]  # a view of the tensor keeps the buffer reserved
    del t
    other = pool.zeros((4, MB), np.float16)
    assert _addr(other) != address and (view == 3).all()
    del other, view  # now nothing refers to either buffer
    again = pool.zeros((3, MB), np.float16)  # a smaller request reuses a free buffer (the first)
    assert _addr(again) == address and not again.any()  # the old 3.0s are gone


def test_reused_buffer_is_the_old_one_and_clean() -> None:
    pool = ZeroBufferPool(slots=1, min_bytes=MB)
    a = pool.zeros((MB,), np.float32)
    address = _addr(a)
    a[:] = 1.0
    del a
    b = pool.zeros((MB // 2, 2), np.float32)
    assert _addr(b) == address and b.shape == (MB // 2, 2) and not b.any()


def test_small_requests_full_pool_and_growth() -> None:
    pool = ZeroBufferPool(slots=1, min_bytes=MB)
    small = pool.zeros((10,), np.float32)
    assert not small.any() and len(pool._entries) == 0  # below min_bytes: plain np.zeros
    held = pool.zeros((MB,), np.uint8)
    extra = pool.zeros((MB,), np.uint8)  # the only slot is in use: plain np.zeros
    assert not np.shares_memory(held, extra) and len(pool._entries) == 1
    del held, extra
    bigger = pool.zeros((3 * MB,), np.uint8)  # the free buffer is too small: replaced
    assert bigger.nbytes == 3 * MB and not bigger.any() and pool._entries[0][0].nbytes == 3 * MB


def _sample(rng: np.random.Generator, t: int, value: float) -> PreparedSample:
    frames = [np.full((t, 1024), value, np.float16) for _ in range(5)]
    frames[2] = rng.standard_normal((max(1, t // 2), 35)).astype(np.float16)  # short and narrow
    return PreparedSample(frames=frames, t=t, max_dim=1024, fields={
        "video_id": f"v{t}", "emotion": 0, "emotion_label": "neutral", "instruction": "", "answer": "",
        "evidence": {}, "transcript": ""})


def test_collated_batches_are_not_overwritten_and_padding_is_zero(monkeypatch) -> None:
    from minigpt4.datasets.datasets import hero_dataset

    monkeypatch.setattr(hero_dataset, "_FEATURE_BUFFERS", ZeroBufferPool(slots=2))
    rng = np.random.default_rng(0)
    first = collate_hero([_sample(rng, 64, 5.0) for _ in range(4)])  # 2.5 MB: pooled
    kept = first["video_features"]
    snapshot = kept.clone()
    second = collate_hero([_sample(rng, 64, -2.0) for _ in range(4)])
    assert _addr(second["video_features"]) != _addr(kept)
    torch.testing.assert_close(kept, snapshot, rtol=0, atol=0)  # the held batch is intact
    address = _addr(kept)
    del first, kept, second
    third = collate_hero([_sample(rng, 60, 1.0), _sample(rng, 40, 1.0)] * 2)  # reuses a dirty buffer
    feats = third["video_features"]
    assert _addr(feats) == address  # the first batch's buffer, full of 5.0s before
    assert not feats[1, :, 40:].any()  # time padding of the shorter clip
    assert not feats[:, 2, :, 35:].any()  # feature padding of the narrow modality
    assert not feats[1, 2, 20:].any()  # frames past the AU track's length
    assert (feats[0, 0, :60] == 1.0).all() and (feats[1, 0, :40] == 1.0).all()


def test_held_batches_stay_intact_in_process_and_through_workers(tmp_path) -> None:
    """A DataLoader over pooled batches: every batch kept in a list still equals its fresh
    rebuild at the end, with and without worker processes (shared-memory hand-off)."""
    from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS
    from minigpt4.datasets.annotations import parse_record
    from minigpt4.datasets.datasets.hero_dataset import HERODataset
    from minigpt4.datasets.feature_io import write_features

    rng = np.random.default_rng(1)
    records = []
    for i in range(12):
        arrays = {key: rng.standard_normal((int(rng.integers(8, 64)), 1024)).astype(np.float16)
                  for key in DEFAULT_FEATURE_KEYS.values()}
        write_features(tmp_path / f"c{i}.npz", arrays)
        records.append(parse_record({"video_id": f"c{i}", "emotion": "happy", "split": "train"}, "mem", i))
    ds = HERODataset(records, tmp_path, max_dim=1024, training=False)
    expected = [collate_hero([ds[j] for j in range(i, i + 4)])["video_features"].clone() for i in range(0, 12, 4)]
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ds.collater, num_workers=workers)
        kept = [batch["video_features"] for batch in loader]  # every batch held
        assert len(kept) == 3 and kept[0].nbytes > MB  # large enough to come from the pool
        for got, want in zip(kept, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
