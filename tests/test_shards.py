"""Webdataset shards: packing, same samples as the folder, DDP-rank x worker splitting."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS
from minigpt4.datasets.annotations import load_annotations
from minigpt4.datasets.datasets.hero_dataset import HERODataset, MissingFeaturesError, SampleBuilder, collate_hero
from minigpt4.datasets.feature_io import write_features
from minigpt4.datasets.shards import HEROShardDataset, expand_shards, pack_shards, partition_shards

REPO = Path(__file__).resolve().parents[1]
DIMS = {"motion": 24, "audio": 32, "au": 35, "text": 16, "visual": 40}
MAX_DIM = 40
N_TRAIN, N_VAL = 23, 5


@pytest.fixture()
def corpus(tmp_path: Path):
    rng = np.random.default_rng(7)
    feats = tmp_path / "feats"
    recs = []
    for i in range(N_TRAIN + N_VAL):
        present = [m for m in DIMS if rng.random() < 0.8] or ["audio"]
        arrays = {DEFAULT_FEATURE_KEYS[m]: rng.standard_normal((int(rng.integers(1, 12)), DIMS[m])) for m in present}
        vid = f"clip.{i:03d}"  # a dot in the id: shard keys must not depend on it
        suffix = ".safetensors" if i % 5 == 0 else ".npz"
        write_features(feats / f"{vid}{suffix}", arrays, transcript=f"t{i}")
        recs.append({"video_id": vid, "emotion": DEFAULT_EMOTIONS[i % 6], "split": "train" if i < N_TRAIN else "val",
                     "evidence": {"audio": f"voice {i}"}})
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(recs))
    return feats, labels


def _builder(**kw) -> SampleBuilder:
    return SampleBuilder(max_dim=MAX_DIM, max_len={"audio": 6}, **kw)


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_shards_yield_the_same_samples_as_the_folder(corpus, tmp_path: Path) -> None:
    feats, labels = corpus
    by_split = load_annotations(labels)
    patterns = pack_shards(by_split, feats, tmp_path / "shards", shard_size=4)
    assert set(patterns) == {"train", "val"}
    assert len(expand_shards(patterns["train"])) == 6 and len(expand_shards(patterns["val"])) == 2
    manifest = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert manifest["train"]["num_samples"] == N_TRAIN and manifest["val"]["num_shards"] == 2
    for split in ("train", "val"):
        folder = HERODataset(by_split[split], feats, split=split, max_dim=MAX_DIM, max_len={"audio": 6}, training=False)
        shard = HEROShardDataset(patterns[split], _builder(), split, filter_split=False, training=False)
        from_shards = list(shard)
        assert len(from_shards) == len(folder)
        for i, s in enumerate(from_shards):
            _assert_same(s, folder[i])


def test_single_pattern_filters_by_split_and_dropout_matches(corpus, tmp_path: Path) -> None:
    feats, labels = corpus
    by_split = load_annotations(labels)
    patterns = pack_shards(by_split, feats, tmp_path / "shards", shard_size=5)
    both = [patterns["train"], patterns["val"]]
    val = HEROShardDataset(both, _builder(), "val")
    assert [s["video_id"] for s in val] == [r.video_id for r in by_split["val"]]
    # train-time modality dropout is a function of (seed, epoch, clip): identical on both readers
    folder = HERODataset(by_split["train"], feats, max_dim=MAX_DIM, max_len={"audio": 6}, modality_dropout=0.5, seed=5)
    shard = HEROShardDataset(both, _builder(modality_dropout=0.5, seed=5), "train", shuffle_shards=False)
    for epoch in (0, 3):
        folder.set_epoch(epoch)
        shard.set_epoch(epoch)
        got = {s["video_id"]: s for s in shard}
        for i in range(len(folder)):
            _assert_same(got[folder.annotations[i].video_id], folder[i])


def test_partition_across_two_ranks_and_two_workers(corpus, tmp_path: Path) -> None:
    feats, labels = corpus
    patterns = pack_shards(load_annotations(labels), feats, tmp_path / "shards", shard_size=3)  # 8 train shards
    ds = HEROShardDataset(patterns["train"], _builder(), "train", filter_split=False)
    assert ds.shuffle_shards
    ds.set_epoch(1)
    seen: list[str] = []
    per_part = {}
    for rank in range(2):
        for worker in range(2):
            ids = [s["video_id"] for s in ds.iter_partition(rank, 2, worker, 2)]
            per_part[(rank, worker)] = ids
            seen.extend(ids)
    counts = Counter(seen)
    assert len(seen) == N_TRAIN and set(counts.values()) == {1}  # no duplicates, no losses
    assert all(per_part.values())
    # deterministic: the same epoch gives the same partition; another epoch reshuffles shards
    assert [s["video_id"] for s in ds.iter_partition(1, 2, 0, 2)] == per_part[(1, 0)]
    orders = set()
    for e in range(4):
        ds.set_epoch(e)
        orders.add(tuple(ds.shard_order()))
    assert len(orders) > 1


def test_real_dataloader_workers_per_rank(corpus, tmp_path: Path) -> None:
    """Two simulated ranks, each with a DataLoader of two real worker processes."""
    feats, labels = corpus
    patterns = pack_shards(load_annotations(labels), feats, tmp_path / "shards", shard_size=3)
    seen: list[str] = []
    for rank in range(2):
        ds = HEROShardDataset(patterns["train"], _builder(), "train", filter_split=False, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_hero)
        for batch in loader:
            assert batch["video_features"].shape[0] <= 4 and batch["video_features"].shape[1] == 5
            assert batch["video_features"].shape[3] == MAX_DIM
            seen.extend(batch["video_id"])
    assert sorted(seen) == sorted(f"clip.{i:03d}" for i in range(N_TRAIN))


def test_partition_rules() -> None:
    shards = [f"s{i}" for i in range(5)]
    parts = [partition_shards(shards, r, 2, w, 3) for r in range(2) for w in range(3)]
    assert sorted(sum(parts, [])) == shards
    assert partition_shards(shards, 0, 1, 0, 1) == shards
    with pytest.raises(ValueError, match="cannot be split across 8 ranks"):
        partition_shards(shards, 0, 8, 0, 1)
    with pytest.raises(ValueError, match="bad partition"):
        partition_shards(shards, 2, 2, 0, 1)


def test_missing_features_when_packing_and_reading(corpus, tmp_path: Path) -> None:
    feats, labels = corpus
    recs = json.loads(labels.read_text()) + [{"video_id": "ghost", "emotion": "sad", "split": "train"}]
    labels.write_text(json.dumps(recs))
    by_split = load_annotations(labels)
    with pytest.raises(MissingFeaturesError, match="1 of 24 annotated clips.*'ghost'"):
        pack_shards(by_split, feats, tmp_path / "s1")
    with pytest.warns(UserWarning, match="1 of 24"):
        patterns = pack_shards(by_split, feats, tmp_path / "s2", skip_missing=True)
    assert len(list(HEROShardDataset(patterns["train"], _builder(), "train", filter_split=False))) == N_TRAIN
    # a shard member without features (e.g. hand-made shards) is an error naming it, or skipped
    import webdataset as wds

    odd = tmp_path / "odd-000000.tar"
    with open(odd, "wb") as fh:
        w = wds.TarWriter(fh, encoder=False)
        w.write({"__key__": "000000001", "json": json.dumps({"video_id": "x", "emotion": "sad", "split": "train"}).encode()})
        w.close()
    with pytest.raises(MissingFeaturesError, match="odd-000000.tar:000000001 \\(video_id 'x'\\)"):
        list(HEROShardDataset(str(odd), _builder(), "train"))
    with pytest.warns(UserWarning, match="1 clip"):
        assert list(HEROShardDataset(str(odd), _builder(), "train", skip_missing=True)) == []
    with pytest.raises(FileNotFoundError, match="not local files"):
        HEROShardDataset(str(tmp_path / "none-{000000..000003}.tar"), _builder(), "train")


def test_pack_refuses_legacy_files(tmp_path: Path) -> None:
    np.save(tmp_path / "old.npy", {"hubert": np.ones((2, 32), np.float32)}, allow_pickle=True)
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps([{"video_id": "old", "emotion": "sad", "split": "train"}]))
    with pytest.raises(ValueError, match="convert_legacy_features"):
        pack_shards(load_annotations(labels), tmp_path, tmp_path / "out")


def test_pack_cli_and_builder_with_shards(corpus, tmp_path: Path) -> None:
    from minigpt4.datasets.builders.hero_builder import HEROBuilder

    feats, labels = corpus
    out = tmp_path / "shards"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts/pack_shards.py"), "--features_dir", str(feats), "--annotations", str(labels),
         "--output_dir", str(out), "--shard_size", "10", "--max_dim", str(MAX_DIM)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    patterns = json.loads(res.stdout.split("\n", 1)[1])
    assert set(patterns) == {"train", "val"}
    cfg = OmegaConf.create({"max_dim": MAX_DIM, "max_len": {"audio": 6}, "modality_dropout": 0.0,
                            "build_info": {"shards": patterns}})
    sets = HEROBuilder(cfg).build_datasets()
    assert list(sets) == ["train", "val"] and isinstance(sets["train"], HEROShardDataset)
    assert sorted(s["video_id"] for s in sets["train"]) == sorted(f"clip.{i:03d}" for i in range(N_TRAIN))
    folder = HERODataset(load_annotations(labels)["val"], feats, split="val", max_dim=MAX_DIM, max_len={"audio": 6})
    for a, b in zip(sets["val"], [folder[i] for i in range(len(folder))]):
        _assert_same(a, b)
    one = OmegaConf.create({"max_dim": MAX_DIM, "splits": ["val"], "build_info": {"shards": patterns["val"]}})
    assert list(HEROBuilder(one).build_datasets()) == ["val"]
    with pytest.raises(ValueError, match="set datasets.hero_dataset.splits"):
        HEROBuilder(OmegaConf.create({"build_info": {"shards": patterns["val"]}})).build_datasets()


def test_bad_record_in_shard_names_the_member(tmp_path: Path) -> None:
    import webdataset as wds

    buf = tmp_path / "f.npz"
    write_features(buf, {"hubert": np.ones((2, 32))})
    shard = tmp_path / "bad-000000.tar"
    with open(shard, "wb") as fh:
        w = wds.TarWriter(fh, encoder=False)
        w.write({"__key__": "000000007", "json": json.dumps({"video_id": "v", "emotion": "bored", "split": "train"}).encode(),
                 "npz": buf.read_bytes()})
        w.close()
    with pytest.raises(ValueError, match=r"bad-000000.tar:000000007.json \(video_id 'v'\): emotion 'bored'"):
        list(HEROShardDataset(str(shard), _builder(), "train"))
