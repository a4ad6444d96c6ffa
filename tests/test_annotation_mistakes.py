"""Issue 20 case 5: annotation mistakes that used to pass silently are errors naming the file,
the record (index and video_id) and the problem: one clip in two splits (a leak), a split name
outside the configured ones (`trian`), a near-miss of a known field (`Emotion`, `emtion`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from minigpt4.datasets.annotations import AnnotationError, load_annotations
from minigpt4.datasets.builders.hero_builder import HEROBuilder


def _write(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


def _rec(vid: str, split: str, emotion: str = "sad", **extra) -> dict:
    return {"video_id": vid, "emotion": emotion, "split": split, **extra}


def test_a_clip_in_two_splits_is_a_leak(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.json", [_rec("a", "train"), _rec("b", "train"), _rec("a", "test")])
    with pytest.raises(AnnotationError) as err:
        load_annotations(path)
    msg = str(err.value)
    assert f"{path} record 2" in msg and "video_id 'a' is in split 'test' and also in split 'train'" in msg
    assert "record 0" in msg  # where the first one is
    # per-split files: the second file's record is named, and the first one's file
    tr = _write(tmp_path / "tr.json", [_rec("x", "train"), _rec("y", "train")])
    te = _write(tmp_path / "te.json", [_rec("z", "test"), _rec("y", "test")])
    with pytest.raises(AnnotationError) as err:
        load_annotations({"train": tr, "test": te})
    msg = str(err.value)
    assert f"{te} record 1" in msg and "'y'" in msg and f"{tr} record 1" in msg


def test_a_split_name_outside_the_configured_splits(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.json", [_rec("a", "train"), _rec("b", "trian"), _rec("c", "val")])
    with pytest.raises(AnnotationError) as err:
        load_annotations(path)
    msg = str(err.value)
    assert f"{path} record 1" in msg and "video_id 'b': split 'trian' is not one of the configured splits" in msg
    assert "did you mean 'train'?" in msg
    # a per-split file under an unknown split name is named too
    with pytest.raises(AnnotationError, match=r"te\.json: this file's split 'tset'.*did you mean 'test'"):
        load_annotations({"train": _write(tmp_path / "tr.json", [_rec("a", "train")]),
                          "tset": _write(tmp_path / "te.json", [_rec("b", "tset")])})
    # the builder knows the splits its config lists: `dev` passes once listed, `trian` never does
    dev = _write(tmp_path / "dev.json", [_rec("a", "train"), _rec("b", "dev")])
    info = {"images": {"storage": str(tmp_path)}, "annotations": {"storage": str(dev)}}
    assert HEROBuilder({"splits": ["train", "dev"], "build_info": info}).known_splits() == ["train", "val", "test", "dev"]
    with pytest.raises(AnnotationError, match=r"dev\.json record 1: video_id 'b': split 'dev'"):
        HEROBuilder({"build_info": info}).build_datasets()
    info["annotations"]["storage"] = str(path)
    with pytest.raises(AnnotationError, match="split 'trian'"):
        HEROBuilder({"splits": ["train", "val"], "build_info": info}).build_datasets()


@pytest.mark.parametrize("key, near", [("Emotion", "emotion"), ("emtion", "emotion"), ("Split", "split"),
                                       ("videoid", "video_id"), ("reason", "reasoning")])
def test_a_near_miss_of_a_known_field(tmp_path: Path, key: str, near: str) -> None:
    """`Emotion` instead of `emotion` used to read as an unlabelled test record (4 clips, 2 scored)."""
    record = {"video_id": "t1", "split": "test", key: "happy"}
    path = _write(tmp_path / "l.json", [_rec("a", "test"), record])
    with pytest.raises(AnnotationError) as err:
        load_annotations(path)
    msg = str(err.value)
    assert f"{path} record 1" in msg and f"unknown field {key!r}; did you mean {near!r}?" in msg
    if key != "videoid":
        assert "video_id 't1'" in msg


def test_other_extra_fields_still_pass(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.json", [_rec("a", "train", extra_field=1, label_source="manual", notes="x")])
    assert load_annotations(path)["train"][0].emotion == "sad"
