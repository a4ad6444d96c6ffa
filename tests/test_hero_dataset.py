"""HERODataset, its collater, modality dropout, drop_modalities and the hero_dataset builder."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common import cot
from minigpt4.common.modalities import DEFAULT_EMOTIONS, DEFAULT_FEATURE_KEYS, STACK_ORDER, VIDEO_PLACEHOLDER
from minigpt4.common.registry import registry
from minigpt4.datasets.annotations import load_annotations, parse_record
from minigpt4.datasets.datasets.hero_dataset import (
    BATCH_KEYS,
    HERODataset,
    MissingFeaturesError,
    collate_hero,
    drop_modalities,
    uniform_indices,
)
from minigpt4.datasets.feature_io import FeatureFileError, write_features

DIMS = {"motion": 24, "audio": 32, "au": 35, "text": 16, "visual": 40}
MAX_DIM = 48


def _feature_arrays(rng: np.random.Generator, lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """Random arrays already on the float16 grid, so a round trip is exact."""
    return {
        DEFAULT_FEATURE_KEYS[m]: rng.standard_normal((t, DIMS[m])).astype(np.float16).astype(np.float32)
        for m, t in lengths.items()
    }


def _records(n: int, split: str = "train", **extra) -> list[dict]:
    return [
        {"video_id": f"clip_{i:03d}", "emotion": DEFAULT_EMOTIONS[i % 6], "split": split, **extra} for i in range(n)
    ]


def _ann(records: list[dict]):
    return [parse_record(r, "mem.json", i) for i, r in enumerate(records)]


@pytest.fixture()
def corpus(tmp_path: Path):
    """6 clips with varied lengths and absent modalities; returns (features_dir, labels, arrays)."""
    rng = np.random.default_rng(0)
    feats = tmp_path / "feats"
    plans = [
        {"motion": 3, "audio": 9, "au": 7, "text": 5, "visual": 2},
        {"motion": 4, "audio": 5},  # no au, text, visual
        {"au": 6, "visual": 3},
        {"motion": 2, "audio": 2, "au": 2, "text": 2, "visual": 2},
        {"text": 11},
        {"motion": 5, "audio": 12, "au": 3, "text": 1, "visual": 4},
    ]
    all_arrays = {}
    for i, plan in enumerate(plans):
        arrays = _feature_arrays(rng, plan)
        all_arrays[f"clip_{i:03d}"] = arrays
        write_features(feats / f"clip_{i:03d}.npz", arrays, transcript=f"words {i}")
    labels = tmp_path / "labels.json"
    recs = _records(6)
    recs[0]["evidence"] = {"visual": "She smiles.", "audio": "Bright voice.", "synergy": "Voice and face agree."}
    recs[0]["reasoning"] = "Smile and bright voice."
    labels.write_text(json.dumps(recs))
    return feats, labels, all_arrays


def _dataset(corpus, **kw) -> HERODataset:
    feats, labels, _ = corpus
    return HERODataset(load_annotations(labels)["train"], feats, max_dim=MAX_DIM, **kw)


def test_stacking_order_and_unpadding_exact(corpus) -> None:
    ds = _dataset(corpus, training=False)
    _, _, arrays = corpus
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == set(BATCH_KEYS)
        src = arrays[s["video_id"]]
        t = max(a.shape[0] for a in src.values())
        assert s["video_features"].shape == (5, t, MAX_DIM) and s["video_features"].dtype == torch.float16  # the files keep float16
        for k, m in enumerate(STACK_ORDER):
            key = DEFAULT_FEATURE_KEYS[m]
            if key in src:
                n, d = src[key].shape
                # the value written for modality k comes back at stack index k, exactly
                np.testing.assert_array_equal(s["video_features"][k, :n, :d].numpy(), src[key])
                assert not s["video_features"][k, n:].any() and not s["video_features"][k, :, d:].any()
                assert s["feature_mask"][k].tolist() == [True] * n + [False] * (t - n)
                assert bool(s["modality_mask"][k])
            else:
                assert not s["video_features"][k].any()
                assert not s["feature_mask"][k].any() and not bool(s["modality_mask"][k])


def test_masks_for_absent_and_short_modalities(corpus) -> None:
    ds = _dataset(corpus, training=False)
    s = ds[1]  # motion 4, audio 5; au/text/visual absent
    assert s["modality_mask"].tolist() == [True, True, False, False, False]
    assert s["feature_mask"].sum(dim=1).tolist() == [4, 5, 0, 0, 0]
    s = ds[4]  # text only
    assert s["modality_mask"].tolist() == [False, False, False, True, False]


def test_uniform_subsampling_not_tail_truncation(tmp_path: Path) -> None:
    assert uniform_indices(5, 10) is None and uniform_indices(10, None) is None
    idx = uniform_indices(100, 10)
    assert idx[0] == 0 and idx[-1] == 99 and len(np.unique(idx)) == 10 and np.all(np.diff(idx) >= 10)
    for length in range(2, 60):
        for m in range(1, length):
            got = uniform_indices(length, m)
            assert len(got) == m and len(np.unique(got)) == m and got.min() >= 0 and got.max() < length
    audio = np.repeat(np.arange(50, dtype=np.float32)[:, None], DIMS["audio"], axis=1)  # frame i holds value i
    write_features(tmp_path / "long.npz", {"hubert": audio, "au": np.ones((3, 35))})
    ann = _ann([{"video_id": "long", "emotion": "sad", "split": "train"}])
    ds = HERODataset(ann, tmp_path, max_dim=MAX_DIM, max_len={"audio": 8}, training=False)
    s = ds[0]
    assert s["video_features"].shape[1] == 8
    frames = s["video_features"][1, :, 0].tolist()
    assert frames == [float(i) for i in uniform_indices(50, 8)] and frames[0] == 0 and frames[-1] == 49
    assert s["feature_mask"][2].sum() == 3  # au untouched (under its cap)
    ds_all = HERODataset(ann, tmp_path, max_dim=MAX_DIM, max_len=4, training=False)
    assert ds_all[0]["video_features"].shape[1] == 4


def test_collater_pads_to_batch_max(corpus) -> None:
    ds = _dataset(corpus, training=False)
    samples = [ds[1], ds[3]]  # T = 5 and 2
    batch = ds.collater(samples)
    assert list(batch) == list(BATCH_KEYS)
    assert batch["video_features"].shape == (2, 5, 5, MAX_DIM)  # longest sample, not a global T
    assert batch["feature_mask"].dtype == torch.bool and batch["modality_mask"].dtype == torch.bool
    assert batch["emotion"].dtype == torch.int64 and batch["emotion"].tolist() == [1, 3]
    torch.testing.assert_close(batch["video_features"][1, :, :2], samples[1]["video_features"], rtol=0, atol=0)
    assert not batch["video_features"][1, :, 2:].any() and not batch["feature_mask"][1, :, 2:].any()
    assert batch["video_id"] == ["clip_001", "clip_003"]
    assert all(VIDEO_PLACEHOLDER in ins for ins in batch["instruction"])
    full = collate_hero([ds[i] for i in range(len(ds))])
    assert full["video_features"].shape[2] == 12
    with pytest.raises(ValueError, match="empty batch"):
        collate_hero([])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ds.collater)
    sizes = [b["video_features"].shape for b in loader]
    assert sizes == [(4, 5, 9, MAX_DIM), (2, 5, 12, MAX_DIM)]


def test_targets_labels_and_evidence(corpus) -> None:
    ds = _dataset(corpus, training=False)
    s = ds[0]
    assert s["emotion"] == 0 and s["emotion_label"] == "neutral"
    assert s["instruction"] == cot.build_instruction(DEFAULT_EMOTIONS, True)
    annotated = {"visual": "She smiles.", "audio": "Bright voice.", "synergy": "Voice and face agree."}
    # annotated sentences as they are; the file's AUs and transcript word the two unannotated experts
    assert {k: s["evidence"][k] for k in annotated} == annotated
    assert set(s["evidence"]) == set(annotated) | {"au", "text"}
    assert s["evidence"]["text"] == 'says "words 0"' and s["evidence"]["au"].startswith("AU12 lip corner puller")
    assert s["evidence_source"] == {**{k: "annotated" for k in annotated}, "au": "measured", "text": "measured"}
    assert s["answer"] == cot.build_cot_target("neutral", s["evidence"], "Smile and bright voice.")
    assert cot.parse_report(s["answer"], DEFAULT_EMOTIONS).emotion == "neutral"
    assert s["transcript"] == "words 0"
    assert set(ds[1]["evidence_source"].values()) <= {"measured"}  # nothing annotated: only what was measured
    # off: only annotated sentences, none for a clip without them
    bare = _dataset(corpus, training=False, measured_evidence=False)
    assert bare[0]["evidence"] == annotated and bare[1]["evidence"] == {} and bare[1]["evidence_source"] == {}
    plain = _dataset(corpus, training=False, use_cot=False)
    assert plain[2]["answer"] == cot.build_label_target("happy")
    assert plain[2]["instruction"] == cot.build_instruction(DEFAULT_EMOTIONS, False)


def test_answer_field_label_set_and_unlabeled_test(tmp_path: Path) -> None:
    write_features(tmp_path / "a.npz", {"hubert": np.ones((2, 32))}, transcript="asr words")
    answer = cot.build_cot_target("joy", {"audio": "laughs"}, "laughing", 0.9)
    ann = _ann([{"video_id": "a", "emotion": "Joy", "split": "train", "answer": answer, "text": "curated words"}])
    ds = HERODataset(ann, tmp_path, label_names=["Sad", "joy"], max_dim=MAX_DIM, training=False)
    s = ds[0]
    assert s["answer"] == answer and s["emotion"] == 1 and s["emotion_label"] == "joy"
    assert s["transcript"] == "curated words"
    with pytest.raises(ValueError, match=r"mem.json record 0 \(video_id 'a'\).*'joy' is not in the label set"):
        HERODataset(ann, tmp_path, max_dim=MAX_DIM)
    bad = _ann([{"video_id": "a", "emotion": "sad", "split": "train", "answer": answer}])
    with pytest.raises(ValueError, match="'answer' does not end"):
        HERODataset(bad, tmp_path, label_names=["sad", "joy"], max_dim=MAX_DIM)
    test = _ann([{"video_id": "a", "split": "test"}])
    ts = HERODataset(test, tmp_path, split="test", max_dim=MAX_DIM)
    assert ts[0]["emotion"] == -1 and ts[0]["emotion_label"] == "unknown" and ts[0]["answer"] == ""
    assert collate_hero([ts[0]])["emotion"].tolist() == [-1]


def test_modality_dropout_keeps_one_and_updates_masks(corpus) -> None:
    ds = _dataset(corpus, modality_dropout=0.6, seed=3)
    assert ds.training
    dropped_any = False
    patterns = {}
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            mm, fm, vf = s["modality_mask"], s["feature_mask"], s["video_features"]
            assert mm.sum() >= 1
            for k in range(5):
                if not mm[k]:
                    assert not fm[k].any() and not vf[k].any()
                else:
                    assert fm[k].any()
            full = _dataset(corpus, training=False)[i]
            assert (mm <= full["modality_mask"]).all()  # never turns an absent modality on
            dropped_any |= bool((mm != full["modality_mask"]).any())
            patterns.setdefault(i, set()).add(tuple(mm.tolist()))
            if epoch == 0:  # the same clip/epoch drops the same modalities (any worker, any rank)
                assert torch.equal(ds[i]["modality_mask"], mm)
    assert dropped_any
    assert any(len(p) > 1 for p in patterns.values())  # different epochs, different drops
    always = _dataset(corpus, modality_dropout=1.0)
    for i in range(len(always)):
        assert always[i]["modality_mask"].sum() == 1
    evaluation = _dataset(corpus, modality_dropout=1.0, training=False)
    assert evaluation[0]["modality_mask"].all()
    with pytest.raises(ValueError, match="modality_dropout"):
        _dataset(corpus, modality_dropout=1.5)


def test_frame_dropout_masks_frames_in_place_and_keeps_one(corpus) -> None:
    """Dropped frames become padding (zero, masked) at their own time position; the kept ones are
    the file's frames where they were; draws depend on (seed, epoch, clip) only; off at eval."""
    ds = _dataset(corpus, frame_dropout=0.5, seed=5)
    full = _dataset(corpus, training=False)
    masked = 0
    for i in range(len(ds)):
        s, ref = ds[i], full[i]
        assert torch.equal(s["modality_mask"], ref["modality_mask"])  # frame dropout never drops a modality
        fm, vf = s["feature_mask"], s["video_features"]
        assert (fm <= ref["feature_mask"]).all()
        for k in range(5):
            if ref["modality_mask"][k]:
                assert fm[k].any()  # at least one frame of a present modality is kept
        assert torch.equal(vf[fm], ref["video_features"][fm]) and not vf[~fm].any()
        masked += int((ref["feature_mask"] & ~fm).sum())
        assert torch.equal(ds[i]["feature_mask"], fm)  # same clip, same epoch: same frames
    assert masked > 0
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["feature_mask"], _dataset(corpus, frame_dropout=0.5, seed=5)[i]["feature_mask"])
               for i in range(len(ds)))
    # a separate stream: turning frame dropout on leaves the modality-dropout draws as they were
    a = _dataset(corpus, modality_dropout=0.6, seed=3)
    b = _dataset(corpus, modality_dropout=0.6, frame_dropout=0.3, seed=3)
    assert all(torch.equal(a[i]["modality_mask"], b[i]["modality_mask"]) for i in range(len(a)))
    assert torch.equal(_dataset(corpus, frame_dropout=0.9, training=False)[0]["feature_mask"], full[0]["feature_mask"])
    with pytest.raises(ValueError, match="frame_dropout"):
        _dataset(corpus, frame_dropout=1.0)


def test_drop_modalities(corpus) -> None:
    ds = _dataset(corpus, training=False)
    batch = ds.collater([ds[0], ds[5]])
    out = drop_modalities(batch, ["audio", "visual"])
    for k in (1, 4):
        assert not out["video_features"][:, k].any() and not out["feature_mask"][:, k].any()
        assert not out["modality_mask"][:, k].any()
    for k in (0, 2, 3):
        assert torch.equal(out["video_features"][:, k], batch["video_features"][:, k])
    assert batch["modality_mask"].all()  # the input batch is untouched
    assert torch.equal(drop_modalities(batch, "au")["modality_mask"][:, 2], torch.tensor([False, False]))
    with pytest.raises(ValueError, match="unknown modality"):
        drop_modalities(batch, ["synergy"])


def test_missing_files_error_or_warning(corpus) -> None:
    feats, labels, _ = corpus
    recs = _records(6) + [{"video_id": f"gone_{i}", "emotion": "sad", "split": "train"} for i in range(7)]
    ann = _ann(recs)
    with pytest.raises(MissingFeaturesError) as err:
        HERODataset(ann, feats, max_dim=MAX_DIM)
    msg = str(err.value)
    assert "7 of 13" in msg and "'gone_0'" in msg and "skip_missing" in msg
    with pytest.warns(UserWarning, match="7 of 13 annotated clips have no feature file"):
        ds = HERODataset(ann, feats, max_dim=MAX_DIM, skip_missing=True)
    assert len(ds) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HERODataset(_ann(_records(6)), feats, max_dim=MAX_DIM)  # nothing missing: no warning


def test_dim_consistency_and_max_dim(tmp_path: Path) -> None:
    write_features(tmp_path / "a.npz", {"hubert": np.ones((2, 32))})
    write_features(tmp_path / "b.npz", {"hubert": np.ones((2, 30))})
    ds = HERODataset(_ann([{"video_id": v, "emotion": "sad", "split": "train"} for v in "ab"]), tmp_path, max_dim=MAX_DIM)
    ds[0]
    with pytest.raises(FeatureFileError) as err:
        ds[1]
    assert str(tmp_path / "b.npz") in str(err.value) and "differs from dim 32" in str(err.value)
    write_features(tmp_path / "c.npz", {"clip": np.ones((2, 64))})
    wide = HERODataset(_ann([{"video_id": "c", "emotion": "sad", "split": "train"}]), tmp_path, max_dim=MAX_DIM)
    with pytest.raises(FeatureFileError, match="larger than max_dim 48"):
        wide[0]
    write_features(tmp_path / "d.npz", {"other": np.ones((2, 4))})
    none = HERODataset(_ann([{"video_id": "d", "emotion": "sad", "split": "train"}]), tmp_path, max_dim=MAX_DIM)
    with pytest.raises(FeatureFileError, match="no modality present"):
        none[0]


def test_feature_keys_configurable(tmp_path: Path) -> None:
    write_features(tmp_path / "a.npz", {"wav2vec": np.full((3, 32), 2.0), "clip": np.ones((1, 40))})
    ann = _ann([{"video_id": "a", "emotion": "sad", "split": "train"}])
    ds = HERODataset(ann, tmp_path, max_dim=MAX_DIM, feature_keys={"audio": "wav2vec", "visual": None}, training=False)
    s = ds[0]
    assert s["modality_mask"].tolist() == [False, True, False, False, False]
    assert float(s["video_features"][1, 0, 0]) == 2.0
    with pytest.raises(ValueError, match="unknown modality"):
        HERODataset(ann, tmp_path, feature_keys={"speech": "x"})


def test_legacy_files_in_dataset(tmp_path: Path) -> None:
    np.save(tmp_path / "old.npy", {"video_mae": np.ones((2, 24), np.float32), "transcript": "t"}, allow_pickle=True)
    ann = _ann([{"video_id": "old", "emotion": "sad", "split": "train"}])
    ds = HERODataset(ann, tmp_path, max_dim=MAX_DIM)
    with pytest.raises(FeatureFileError, match="convert_legacy_features"):
        ds[0]
    ok = HERODataset(ann, tmp_path, max_dim=MAX_DIM, allow_pickle=True, training=False)
    assert ok[0]["modality_mask"].tolist() == [True, False, False, False, False]


def test_batch_keeps_file_precision(tmp_path: Path) -> None:
    """float16 files give a float16 batch; one float32 file (a legacy pickle) makes the batch
    float32; either way every stored value comes back bit-exact."""
    fine = np.float32(1.0 + 2.0 ** -20)  # not representable in float16
    np.save(tmp_path / "old.npy", {"video_mae": np.full((2, 24), fine, np.float32)}, allow_pickle=True)
    half = np.random.default_rng(3).standard_normal((4, 24)).astype(np.float16)
    write_features(tmp_path / "new.npz", {"videomae": half})
    ann = _ann([{"video_id": v, "emotion": "sad", "split": "train"} for v in ("new", "old")])
    ds = HERODataset(ann, tmp_path, max_dim=MAX_DIM, allow_pickle=True, training=False)
    only_half = ds.collater(ds.__getitems__([0]))["video_features"]
    assert only_half.dtype == torch.float16
    assert torch.equal(only_half[0, 0, :, :24], torch.from_numpy(half))
    for batch in (ds.collater(ds.__getitems__([0, 1])), collate_hero([ds[0], ds[1]])):
        vf = batch["video_features"]
        assert vf.dtype == torch.float32
        assert torch.equal(vf[0, 0, :4, :24], torch.from_numpy(half).float())
        assert bool((vf[1, 0, :2, :24] == fine).all()) and not vf[1, 0, 2:].any() and not vf[1, 1:].any()


# ------------------------------------------------------------------------ builder


def _cfg(**over):
    cfg = {"max_dim": MAX_DIM, "build_info": {"images": {"storage": None}, "annotations": {"storage": None}}}
    cfg.update(over)
    return OmegaConf.create(cfg)


def test_builder_registered_and_builds_splits(corpus, tmp_path: Path) -> None:
    import minigpt4.datasets.builders  # noqa: F401  (registers)

    feats, _, _ = corpus
    labels = tmp_path / "all.json"
    labels.write_text(json.dumps(_records(4, "train") + [dict(r, video_id=f"clip_{i + 4:03d}") for i, r in enumerate(_records(2, "val"))]))
    builder_cls = registry.get_builder_class("hero_dataset")
    cfg = _cfg(build_info={"images": {"storage": str(feats)}, "annotations": {"storage": str(labels)}})
    sets = builder_cls(cfg).build_datasets()
    assert list(sets) == ["train", "val"] and len(sets["train"]) == 4 and len(sets["val"]) == 2
    assert sets["train"].training and not sets["val"].training
    assert sets["train"].builder.max_len == {"motion": 32, "audio": 64, "au": 64, "text": 64, "visual": 32}
    batch = sets["val"].collater([sets["val"][0], sets["val"][1]])
    assert batch["video_id"] == ["clip_004", "clip_005"]
    only = builder_cls(_cfg(splits=["val"], build_info=cfg.build_info)).build_datasets()
    assert list(only) == ["val"]
    with pytest.raises(ValueError, match=r"splits \['test'\] requested"):
        builder_cls(_cfg(splits=["test"], build_info=cfg.build_info)).build_datasets()


def test_builder_per_split_files_and_config_errors(corpus, tmp_path: Path) -> None:
    from minigpt4.datasets.builders.hero_builder import HEROBuilder

    feats, _, _ = corpus
    tr, te = tmp_path / "tr.json", tmp_path / "te.json"
    tr.write_text(json.dumps([{"video_id": "clip_000", "emotion": "happy"}]))
    te.write_text(json.dumps([{"video_id": "clip_001"}]))
    cfg = _cfg(max_len=16, build_info={"images": {"storage": str(feats)}, "annotations": {"storage": {"train": str(tr), "test": str(te)}}})
    sets = HEROBuilder(cfg).build_datasets()
    assert list(sets) == ["train", "test"] and sets["test"][0]["emotion"] == -1
    assert sets["train"].builder.max_len["audio"] == 16
    with pytest.raises(KeyError, match="did you mean 'max_dim'"):
        HEROBuilder(_cfg(max_dims=3))
    with pytest.raises(KeyError, match="did you mean 'build_info.images.storage'"):
        HEROBuilder(OmegaConf.create({"build_info": {"images": {"storag": "x"}}}))
    # the dataset config defaults to the demo's paths; an explicit null is "no data set"
    with pytest.raises(ValueError, match="annotations.storage"):
        HEROBuilder(_cfg(build_info={"annotations": {"storage": None}})).build_datasets()
    with pytest.raises(ValueError, match="images.storage"):
        HEROBuilder(_cfg(build_info={"images": {"storage": None}, "annotations": {"storage": str(tr)}})).build_datasets()


def test_the_dataset_config_is_where_the_data_paths_live(corpus, tmp_path: Path) -> None:
    """Editing build_info storage in configs/datasets/hero_dataset.yaml changes what the shipped
    model configs train on: no model config shadows it."""
    import shutil

    import minigpt4
    from minigpt4.common.config import REPO_ROOT, load_config
    from minigpt4.tasks.hero_task import HeroTask

    feats, labels, _ = corpus
    shipped = OmegaConf.load(REPO_ROOT / "configs/datasets/hero_dataset.yaml").datasets.hero_dataset.build_info
    for name in ("hero.yaml", "hero_paper.yaml"):
        cfg = load_config(REPO_ROOT / "configs/models" / name)
        assert cfg.datasets.hero_dataset.build_info == shipped, name
    # a copy of the two shipped files, the dataset config edited as a user would
    (tmp_path / "configs/datasets").mkdir(parents=True)
    (tmp_path / "configs/models").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "configs/models/hero.yaml", tmp_path / "configs/models/hero.yaml")
    text = (REPO_ROOT / "configs/datasets/hero_dataset.yaml").read_text()
    text = text.replace(f"storage: {shipped.images.storage}", f"storage: {feats}")
    text = text.replace(f"storage: {shipped.annotations.storage}", f"storage: {labels}")
    (tmp_path / "configs/datasets/hero_dataset.yaml").write_text(text)
    model_cfg = tmp_path / "configs/models/hero.yaml"
    model_cfg.write_text(model_cfg.read_text().replace("  - configs/datasets/hero_dataset.yaml",
                                                       f"  - {tmp_path / 'configs/datasets/hero_dataset.yaml'}"))
    dims = [f"model.{'video' if m == 'motion' else m}_dim={d}" for m, d in DIMS.items()]
    cfg = load_config(model_cfg, dims + [f"datasets.hero_dataset.max_dim={MAX_DIM}"])
    minigpt4.setup_registry()
    train = HeroTask(cfg).build_datasets(cfg)["hero_dataset"]["train"]
    assert train.features_dir == feats and len(train) == 6


def test_batched_fetch_equals_per_item_path(corpus, monkeypatch) -> None:
    """DataLoader's __getitems__ route (pad once into the batch) == collating __getitem__ samples;
    it first hints the kernel to read all of the batch's files (prefetch)."""
    from minigpt4.datasets.datasets import hero_dataset

    hinted: list = []
    monkeypatch.setattr(hero_dataset, "prefetch", hinted.append)
    for kw in ({"training": False}, {"modality_dropout": 0.5, "seed": 11}, {"frame_dropout": 0.4, "seed": 2}):
        ds = _dataset(corpus, **kw)
        ds.set_epoch(2)
        idx = [5, 1, 4, 0]
        a = ds.collater(ds.__getitems__(idx))
        assert hinted[-1] == [ds.paths[i] for i in idx]
        b = ds.collater([ds[i] for i in idx])
        mixed = ds.collater([ds.__getitems__([5])[0], ds[1], ds.__getitems__([4])[0], ds[0]])
        for other in (b, mixed):
            assert list(a) == list(other)
            for key in a:
                if isinstance(a[key], torch.Tensor):
                    assert torch.equal(a[key], other[key]), key
                else:
                    assert a[key] == other[key], key
        loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ds.collater)
        assert torch.equal(next(iter(loader))["video_features"], ds.collater([ds[i] for i in range(4)])["video_features"])


@pytest.mark.parametrize("width", [DIMS["audio"] + 8, DIMS["audio"] - 8])
def test_feature_width_other_than_the_model_dim_names_file_key_and_both_widths(corpus, width: int) -> None:
    """A too-wide file would be cut to model.audio_dim columns, a too-narrow one read with its
    zero padding as features: both fail, at build time for the first file."""
    feats, labels, arrays = corpus
    bad = dict(arrays["clip_000"])
    bad["hubert"] = np.zeros((4, width), np.float32)
    write_features(feats / "clip_000.npz", bad)
    ds = _dataset(corpus)
    with pytest.raises(FeatureFileError) as err:
        ds.expect_dims(DIMS)
    text = str(err.value)
    assert "clip_000.npz" in text and "'hubert'" in text
    assert f"{width} wide" in text and f"model.audio_dim = {DIMS['audio']}" in text


def test_a_later_file_of_another_width_fails_when_read(corpus) -> None:
    feats, labels, arrays = corpus
    bad = dict(arrays["clip_003"])
    bad["au"] = np.zeros((2, 17), np.float32)
    write_features(feats / "clip_003.npz", bad)
    ds = _dataset(corpus)
    ds.expect_dims(DIMS)  # the first file is fine
    ds[0]
    with pytest.raises(FeatureFileError, match=r"clip_003\.npz.*17 wide, narrower than model\.au_dim = 35"):
        ds[3]


def test_hero_task_checks_the_files_against_the_model_dims(corpus) -> None:
    import minigpt4
    from minigpt4.tasks.hero_task import HeroTask

    feats, labels, _ = corpus
    minigpt4.setup_registry()
    cfg = OmegaConf.create({
        "model": {"arch": "hero", **{f"{'video' if m == 'motion' else m}_dim": d for m, d in DIMS.items()}},
        "datasets": {"hero_dataset": {"max_dim": MAX_DIM, "build_info": {
            "images": {"storage": str(feats)}, "annotations": {"storage": str(labels)}}}},
    })
    assert HeroTask(cfg).build_datasets(cfg)["hero_dataset"]["train"].builder.expected_dims == DIMS
    cfg.model.audio_dim = DIMS["audio"] + 4
    with pytest.raises(FeatureFileError, match=r"audio features are 32 wide, narrower than model\.audio_dim = 36"):
        HeroTask(cfg).build_datasets(cfg)


def test_without_training_dropout_switches_every_part_off_and_restores_it_even_on_error():
    from types import SimpleNamespace

    from minigpt4.datasets.datasets import without_training_dropout

    a, b, c = SimpleNamespace(training=True), SimpleNamespace(training=False), SimpleNamespace()
    concat = SimpleNamespace(datasets=[a, b])
    with pytest.raises(RuntimeError):
        with without_training_dropout(concat, c):
            assert (a.training, b.training) == (False, False) and not hasattr(c, "training")
            raise RuntimeError("a failing read")
    assert (a.training, b.training) == (True, False) and not hasattr(c, "training")
