"""Annotation loading/validation (README "2. Labels") and the MER CSV converter."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt4.datasets.annotations import (
    AnnotationError,
    check_video_id,
    load_annotation_file,
    load_annotations,
    mer_csv_to_records,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_single_file_grouped_by_split(tmp_path: Path) -> None:
    recs = [
        {"video_id": "b", "emotion": "Sad", "split": "val"},
        {"video_id": "a", "emotion": "happy", "split": "train", "sentiment": "positive", "text": "hi",
         "evidence": {"visual": " smiles ", "au": "AU12", "synergy": "agree", "text": ""},
         "reasoning": "r", "answer": "x", "extra_field": 1},
        {"video_id": "c", "split": "test"},
        {"video_id": "d", "emotion": "angry", "split": "dev"},
    ]
    by_split = load_annotations(_write(tmp_path / "l.json", recs), splits=("train", "val", "test", "dev"))
    assert list(by_split) == ["train", "val", "test", "dev"]
    a = by_split["train"][0]
    assert a.emotion == "happy" and a.evidence == {"visual": "smiles", "au": "AU12", "synergy": "agree"}
    assert a.index == 1 and a.source.endswith("l.json") and a.sentiment == "positive"
    assert by_split["val"][0].emotion == "sad"
    assert by_split["test"][0].emotion is None


def test_per_split_files(tmp_path: Path) -> None:
    tr = _write(tmp_path / "tr.json", [{"video_id": "a", "emotion": "happy"}])
    va = _write(tmp_path / "va.json", [{"video_id": "b", "emotion": "sad", "split": "val"}])
    by_split = load_annotations({"val": va, "train": tr})
    assert list(by_split) == ["train", "val"] and by_split["train"][0].split == "train"
    wrong = _write(tmp_path / "w.json", [{"video_id": "a", "emotion": "sad", "split": "train"}])
    with pytest.raises(AnnotationError, match="record says split 'train' but the file is for split 'val'"):
        load_annotations({"val": wrong})


@pytest.mark.parametrize("vid", ["../etc/passwd", "a/b", "a\\b", "..", "x..y", "/abs", "nul\x00", "", " pad", None, 3])
def test_path_traversal_and_bad_ids_refused(tmp_path: Path, vid) -> None:
    path = _write(tmp_path / "l.json", [{"video_id": "ok", "emotion": "sad", "split": "train"},
                                        {"video_id": vid, "emotion": "sad", "split": "train"}])
    with pytest.raises(AnnotationError) as err:
        load_annotations(path)
    assert err.value.index == 1 and str(path) in str(err.value) and "record 1" in str(err.value)


def test_safe_ids_accepted() -> None:
    for vid in ["sample_00001", "clip.v2", "a-b_c", "日本語"]:
        assert check_video_id(vid, "f", 0) == vid


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"video_id": "a", "emotion": "sad"}, "missing 'split'"),
        ({"video_id": "a", "split": "train"}, "missing 'emotion'"),
        ({"video_id": "a", "emotion": 3, "split": "train"}, "'emotion' must be a non-empty string"),
        ({"video_id": "a", "emotion": "sad", "split": "train", "evidence": {"smell": "x"}}, "evidence key 'smell'"),
        ({"video_id": "a", "emotion": "sad", "split": "train", "evidence": ["x"]}, "'evidence' must be an object"),
        ({"video_id": "a", "emotion": "sad", "split": "train", "evidence": {"au": 1}}, "evidence['au'] must be a string"),
        ({"video_id": "a", "emotion": "sad", "split": "train", "answer": 5}, "'answer' must be a string"),
        ({"video_id": "a", "emotion": "sad", "split": "train", "valence": "high"}, "'valence' must be a number"),
        ("not a dict", "expected a JSON object"),
    ],
)
def test_record_validation(tmp_path: Path, record, problem: str) -> None:
    path = _write(tmp_path / "l.json", [record])
    with pytest.raises(AnnotationError) as err:
        load_annotations(path)
    assert problem in str(err.value) and "record 0" in str(err.value)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="file not found"):
        load_annotations(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(AnnotationError, match="invalid JSON at line 1"):
        load_annotations(bad)
    with pytest.raises(AnnotationError, match="expected a JSON list"):
        load_annotations(_write(tmp_path / "d.json", {"video_id": "a"}))
    dup = _write(tmp_path / "dup.json", [{"video_id": "a", "emotion": "sad", "split": "train"}] * 2)
    with pytest.raises(AnnotationError, match="record 1: duplicate video_id 'a' in split 'train'"):
        load_annotation_file(dup)


def _mer_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("name,discrete,valence\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_mer_csv_to_records(tmp_path: Path) -> None:
    csv_path = _mer_csv(tmp_path / "t.csv", ["sample_1,Happy,2.5", "sample_2,sad,-1", "sample_3,neutral,0"])
    recs = mer_csv_to_records(csv_path, "train")
    assert recs[0] == {"video_id": "sample_1", "split": "train", "emotion": "happy", "valence": 2.5, "sentiment": "positive"}
    assert [r["sentiment"] for r in recs] == ["positive", "negative", "neutral"]
    with pytest.raises(AnnotationError, match="valence 'x' is not a number"):
        mer_csv_to_records(_mer_csv(tmp_path / "b.csv", ["s,sad,x"]), "train")
    with pytest.raises(AnnotationError, match=r"record 0: video_id '\.\./x'"):
        mer_csv_to_records(_mer_csv(tmp_path / "p.csv", ["../x,sad,1"]), "train")
    (tmp_path / "h.csv").write_text("id,label\n1,sad\n")
    with pytest.raises(AnnotationError, match="'name' column"):
        mer_csv_to_records(tmp_path / "h.csv", "train")


def test_convert_mer_csv_cli(tmp_path: Path) -> None:
    train = _mer_csv(tmp_path / "train.csv", [f"s{i},{['happy', 'sad'][i % 2]},{i - 5}" for i in range(20)])
    test = tmp_path / "test.csv"
    test.write_text("name,discrete,valence\nt1,,\nt2,,\n")
    out = tmp_path / "labels.json"
    cmd = [sys.executable, str(REPO / "scripts/convert_mer_csv.py"), "--csv", str(train), str(test),
           "--split", "train", "test", "--val_fraction", "0.25", "--seed", "1", "--output", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    by_split = load_annotations(out)
    assert {k: len(v) for k, v in by_split.items()} == {"train": 15, "val": 5, "test": 2}
    assert all(r.emotion is None for r in by_split["test"])
    first = out.read_text()
    res2 = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res2.returncode == 0 and out.read_text() == first  # seeded: the same val draw
    bad = subprocess.run(cmd[:4] + ["--split", "train", "test", "--output", str(out)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "1 --csv files but 2 --split names" in bad.stderr
