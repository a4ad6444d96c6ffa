"""Importers for Emotion-LLaMA data (README "Coming from Emotion-LLaMA"): its per-encoder `.npy`
feature folders and the MERR annotations, in the shapes its dataset code reads, up to a HERO sample."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt4.common import cot
from minigpt4.datasets.annotations import load_annotations
from minigpt4.datasets.feature_io import read_features
from minigpt4.datasets.importers.emotion_llama_features import (
    REPORT_NAME,
    default_maps,
    import_features,
    parse_maps,
)
from minigpt4.datasets.importers.merr_annotations import MERR_LABELS, carve_splits, parse_fractions
from minigpt4.datasets.importers.sources import SourceError, read_transcripts

REPO = Path(__file__).resolve().parents[1]
AUDIO_D, MOTION_D, FACE_D = 1024, 24, 16  # HL-UTT's real width; the others small (any width works)


def _script(name: str):
    """The CLI module `scripts/<name>.py` (its `main(argv) -> int`)."""
    spec = importlib.util.spec_from_file_location(f"_importer_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RunsCode:
    """Unpickling this creates a folder: proof of whether a loader unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture()
def release(tmp_path: Path) -> dict:
    """Emotion-LLaMA's layout: `<root>/{HL-UTT,maeV_399_UTT,mae_340_UTT}/<clip>.npy` plus a
    `name,sentence` transcript CSV. c0..c4; c2 has no VideoMAE file; c3's face MAE is [T, D]."""
    rng = np.random.default_rng(0)
    root = tmp_path / "MER2023"
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for i in range(5):
        clip = f"sample_{i:08d}"
        got = {"HL-UTT": rng.standard_normal(AUDIO_D).astype(np.float32),  # [D], as HL-UTT holds it
               "maeV_399_UTT": rng.standard_normal((1, MOTION_D)).astype(np.float32),  # [1, D]
               "mae_340_UTT": rng.standard_normal((3 if i == 3 else 1, FACE_D)).astype(np.float64)}
        if i == 2:
            del got["maeV_399_UTT"]
        for folder, arr in got.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            np.save(root / folder / f"{clip}.npy", arr)
        arrays[clip] = got
    (root / "HL-UTT" / "notes.txt").write_text("not a clip")
    csv = tmp_path / "transcription_en_all.csv"
    csv.write_text("name,sentence\nsample_00000000,I got the job!\nsample_00000001,\"Leave me\nalone.\"\n"
                   "sample_00000003,\nsample_00000099,no features for this one\n")
    return {"root": root, "arrays": arrays, "csv": csv, "out": tmp_path / "features"}


# ------------------------------------------------------------------------------------- features


def test_features_import_shapes_missing_and_report(release, capsys) -> None:
    out = release["out"]
    rc = _script("import_emotion_llama_features").main(
        ["--root", str(release["root"]), "--map", "HL-UTT=audio", "--map", "maeV_399_UTT=motion",
         "--map", "mae_340_UTT=visual", "--transcripts", str(release["csv"]), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    for clip, src in release["arrays"].items():
        rec = read_features(out / f"{clip}.npz")
        expect = {"hubert": src["HL-UTT"][None, :], "facemae": src["mae_340_UTT"]}
        if "maeV_399_UTT" in src:
            expect["videomae"] = src["maeV_399_UTT"]
        assert set(rec.arrays) == set(expect)  # a missing folder leaves its key out: never zeros
        for key, want in expect.items():
            np.testing.assert_array_equal(rec.arrays[key], want.astype(np.float16).astype(np.float32))
        assert json.loads(rec.meta["import_hubert"]) == {"folder": "HL-UTT", "source_shape": [AUDIO_D], "dim": AUDIO_D}
    c2 = read_features(out / "sample_00000002.npz")
    assert "videomae" not in c2.arrays and "maeV_399_UTT/sample_00000002.npy" in c2.meta["absent"]
    assert read_features(out / "sample_00000000.npz").transcript == "I got the job!"
    assert read_features(out / "sample_00000001.npz").transcript == "Leave me alone."
    assert read_features(out / "sample_00000003.npz").transcript == ""  # blank sentence: none stored
    report = json.loads((out / REPORT_NAME).read_text())
    folders = {f["folder"]: f for f in report["folders"]}
    assert report["clips"] == report["written"] == 5 and report["failed"] == 0 and report["failures"] == []
    assert (folders["maeV_399_UTT"]["count"], folders["maeV_399_UTT"]["missing"]) == (4, ["sample_00000002"])
    assert folders["maeV_399_UTT"]["missing_count"] == 1 and folders["HL-UTT"]["missing"] == []
    assert {n: f["dim"] for n, f in folders.items()} == {"HL-UTT": AUDIO_D, "maeV_399_UTT": MOTION_D,
                                                         "mae_340_UTT": FACE_D}
    assert folders["mae_340_UTT"]["sequences"] == 1 and folders["HL-UTT"]["files"] == 5  # notes.txt is no clip
    assert report["transcripts"] == {"file": "transcription_en_all.csv", "column": "sentence", "clips_with": 2,
                                     "clips_without": 3, "rows_without_features": 1}
    assert "imported 5 of 5 clips" in printed and "maeV_399_UTT -> motion (videomae, dim 24) 4 (1 missing)" in printed
    options = f"model.audio_dim={AUDIO_D} model.video_dim={MOTION_D} model.visual_dim={FACE_D} " \
              f"datasets.hero_dataset.feature_keys.visual=facemae datasets.hero_dataset.build_info.images.storage={out}"
    assert options in printed and report["train_options"] == options.split(" ")


def test_features_import_refuses_bad_files(release, tmp_path: Path) -> None:
    root, out = release["root"], release["out"]
    marker = tmp_path / "unpickled"
    bad = {
        "sample_00000000": ("mae_340_UTT", "object array"),
        "sample_00000001": ("HL-UTT", "not an .npy file"),
        "sample_00000002": ("HL-UTT", "unreadable .npy array"),
        "sample_00000003": ("mae_340_UTT", "shape (2, 3, 16): expected [D], [1, D] or [T, D]"),
        "sample_00000004": ("maeV_399_UTT", "width 12, but most of the folder's files are 24 wide"),
        "sample_00000005": ("HL-UTT", "1 NaN/Inf value(s)"),
    }
    np.save(root / "mae_340_UTT/sample_00000000.npy", np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    (root / "HL-UTT/sample_00000001.npy").write_bytes(b"\x00 random bytes, not numpy")
    whole = (root / "HL-UTT/sample_00000002.npy").read_bytes()
    (root / "HL-UTT/sample_00000002.npy").write_bytes(whole[: len(whole) // 2])  # a partial copy
    np.save(root / "mae_340_UTT/sample_00000003.npy", np.ones((2, 3, FACE_D), np.float32))
    np.save(root / "maeV_399_UTT/sample_00000004.npy", np.ones((1, 12), np.float32))
    nan = np.ones(AUDIO_D, np.float32)
    nan[7] = np.nan
    np.save(root / "HL-UTT/sample_00000005.npy", nan)
    np.save(root / "HL-UTT/sample_00000006.npy", np.ones(AUDIO_D, np.float16))  # fine: only in one folder
    errors: list[str] = []
    report = import_features(default_maps(root), out, progress=False, on_error=errors.append)
    assert not marker.exists()  # the pickled array was refused, never unpickled
    assert report.failed == 6 and report.written == 1 and report.clips == 7
    assert sorted(p.name for p in out.glob("*.npz")) == ["sample_00000006.npz"]
    by_clip = {f["clip"]: f for f in report.failures}
    for clip, (folder, problem) in bad.items():
        assert by_clip[clip]["file"] == f"{folder}/{clip}.npy" and problem in by_clip[clip]["problem"]
        assert any(e.startswith(f"{folder}/{clip}.npy: ") and problem in e for e in errors)
    only = read_features(out / "sample_00000006.npz")
    assert set(only.arrays) == {"hubert"} and only.meta["absent"].count("no ") == 2
    folders = {f.folder: f for f in report.folders}
    assert folders["HL-UTT"].broken == 3 and folders["HL-UTT"].dim == AUDIO_D
    assert folders["maeV_399_UTT"].dims_seen == {12: 1, MOTION_D: 3}  # c2 has no VideoMAE file
    # the command: the same run exits 1 after the summary, naming each bad file on stderr
    res = subprocess.run([sys.executable, str(REPO / "scripts/import_emotion_llama_features.py"), "--root", str(root),
                          "--out", str(tmp_path / "again")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "error: HL-UTT/sample_00000005.npy: 1 NaN/Inf value(s) (clip 'sample_00000005' skipped)" in res.stderr
    assert "imported 1 of 7 clips" in res.stdout and "6 clip(s) skipped" in res.stdout


def test_feature_mapping_flag(release, capsys) -> None:
    root = release["root"]
    maps = parse_maps(["HL-UTT=hubert", "maeV_399_UTT=motion:vmae", "mae_340_UTT=visual"], root)
    assert [(m.name, m.modality, m.key) for m in maps] == [
        ("HL-UTT", "audio", "hubert"), ("maeV_399_UTT", "motion", "vmae"), ("mae_340_UTT", "visual", "facemae")]
    assert [(m.name, m.modality, m.key) for m in default_maps(root)] == [(m.name, m.modality, m.key) for m in
                                                                          parse_maps(["HL-UTT=audio", "maeV_399_UTT=motion", "mae_340_UTT=visual"], root)]
    (root / "eva_UTT").mkdir()
    assert parse_maps(["eva_UTT=visual"], root)[0].key == "clip"  # an unknown folder takes HERO's key
    main = _script("import_emotion_llama_features").main
    for argv, problem in (
        (["--map", "HL-UTT=voice"], "'voice' is not a HERO modality"),
        (["--map", "HL-UTT"], "expected FOLDER=MODALITY[:KEY]"),
        (["--map", "mae_340_UTT=visual", "--map", "eva_UTT=visual"], "modality 'visual' is mapped twice (mae_340_UTT, eva_UTT)"),
        (["--map", "nowhere=audio"], "nowhere: not a folder"),
        (["--map", "HL-UTT=audio:meta_x"], "must be a plain name"),
        (["--root", str(root / "HL-UTT")], "no known Emotion-LLaMA folder"),
        (["--transcripts", str(root / "none.csv")], "none.csv: cannot open"),
    ):
        args = argv if argv[0] == "--root" else ["--root", str(root), *argv]
        assert main(args + ["--out", str(release["out"])]) == 2
        assert problem in capsys.readouterr().err
    assert not release["out"].exists()  # nothing written before the inputs are right


# ------------------------------------------------------------------------------------ annotations


def _merr_files(tmp_path: Path) -> dict[str, Path]:
    """MERR label lists and JSONs in the released shapes (objects keyed by clip name)."""
    (tmp_path / "train.txt").write_text("sample_00000000 59 happy\nsample_00000001 30 sad\n\n"
                                        "sample_00000002 12 Doubt\nsample_00000003 40 happy\n")
    (tmp_path / "test.txt").write_text("sample_00000004 20 angry\n")
    coarse = {"sample_00000000": {"caption": "She smiles; her voice is bright.", "pseu_emotion": "happy"},
              "sample_00000001": {"caption": "A low, slow voice."},
              "sample_00000077": {"caption": "a clip in no label list"}}
    fine = {"sample_00000000": {"AU_list": ["AU06", "AU12"], "visual_prior_list": ["cheek raiser", "lip corner puller"],
                                "audio_prior_list": "bright, fast tone", "peak_index": "12", "peak_AU_list": ["AU12"],
                                "text": "json words", "smp_reason_caption": "Smile and a bright tone: she is happy.",
                                "pseu_emotion": "happy"},
            "sample_00000003": {"text": "only the fine json has words", "smp_reason_caption": "  "}}
    (tmp_path / "MERR_coarse_grained.json").write_text(json.dumps(coarse))
    (tmp_path / "MERR_fine_grained.json").write_text(json.dumps(fine))
    (tmp_path / "en_zh.csv").write_text("name,english,chinese\nsample_00000000,I got the job!,我得到了这份工作！\n"
                                        "sample_00000004,Go away.,走开。\n")
    return {n: tmp_path / n for n in ("train.txt", "test.txt", "MERR_coarse_grained.json", "MERR_fine_grained.json",
                                      "en_zh.csv")}


def test_merr_import_loads_with_hero_loader(tmp_path: Path, capsys) -> None:
    f = _merr_files(tmp_path)
    out = tmp_path / "annotations.json"
    rc = _script("import_merr").main(["--labels", str(f["train.txt"]), f"{f['test.txt']}:test",
                                      "--coarse", str(f["MERR_coarse_grained.json"]),
                                      "--fine", str(f["MERR_fine_grained.json"]),
                                      "--transcripts", str(f["en_zh.csv"]), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    by_split = load_annotations(out)
    assert {s: [r.video_id for r in recs] for s, recs in by_split.items()} == {
        "train": ["sample_00000000", "sample_00000001", "sample_00000002", "sample_00000003"],
        "test": ["sample_00000004"]}
    r0, r1, r2, r3 = by_split["train"]
    assert (r0.emotion, r0.reasoning, r0.text) == ("happy", "Smile and a bright tone: she is happy.", "I got the job!")
    assert (r1.reasoning, r1.text) == ("A low, slow voice.", None)  # no fine reasoning: the coarse caption
    assert (r2.emotion, r2.reasoning, r2.evidence) == ("doubt", None, {})  # label-only
    assert (r3.reasoning, r3.text) == (None, "only the fine json has words")  # no CSV row: the JSON's text
    assert by_split["test"][0].text == "Go away."  # english before chinese
    assert "label set (4): angry, happy, sad, doubt" in printed
    assert "'model.label_names=[angry, happy, sad, doubt]'" in printed
    assert "2 with a rationale, 3 label-only" in printed
    both = tmp_path / "both.json"
    assert _script("import_merr").main(["--labels", str(f["train.txt"]), "--coarse", str(f["MERR_coarse_grained.json"]),
                                        "--fine", str(f["MERR_fine_grained.json"]), "--reasoning", "both",
                                        "--priors_as_evidence", "--transcripts", str(f["en_zh.csv"]),
                                        "--transcript_column", "chinese", "--out", str(both)]) == 0
    first = json.loads(both.read_text())[0]
    assert first["reasoning"] == "She smiles; her voice is bright. Smile and a bright tone: she is happy."
    assert first["evidence"] == {"visual": "cheek raiser, lip corner puller", "audio": "bright, fast tone"}
    assert first["text"] == "我得到了这份工作！"


def test_merr_errors_name_file_and_line(tmp_path: Path, capsys) -> None:
    f = _merr_files(tmp_path)
    main = _script("import_merr").main
    out = tmp_path / "out.json"
    cases = [
        ("sample_a 3 happy\nsample_b 4 disgust\n", "bad.txt:2: emotion 'disgust' is not one of the allowed labels"),
        ("sample_a 3 happy\nsample_a 4 sad\n", "bad.txt:2: clip 'sample_a' is listed twice (first at "),
        ("sample_a 3 happy\nsample_b happy 4\n", "bad.txt:2: frame count 'happy' is not a non-negative integer"),
        ("sample_a happy\n", "bad.txt:1: 2 field(s)"),
        ("../up 3 happy\n", "bad.txt:1: video_id '../up' is not a plain file stem"),
    ]
    for text, problem in cases:
        (tmp_path / "bad.txt").write_text(text)
        assert main(["--labels", str(tmp_path / "bad.txt"), "--out", str(out)]) == 1
        assert problem in capsys.readouterr().err
        assert not out.exists()
    (tmp_path / "bad.txt").write_text("sample_00000004 3 sad\n")  # also in test.txt
    assert main(["--labels", str(f["test.txt"]), f"{tmp_path / 'bad.txt'}:val", "--out", str(out)]) == 1
    assert "bad.txt:1: clip 'sample_00000004' is listed twice (first at " in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("sample_a 3 disgust\n")
    assert main(["--labels", str(tmp_path / "bad.txt"), "--labels_allowed", "happy,disgust", "--out", str(out)]) == 0
    (tmp_path / "dup.csv").write_text("name,sentence\nx,a\n\"y\",\"two\nlines\"\ny,c\n")
    with pytest.raises(SourceError, match=r"dup.csv:5: clip 'y' is listed twice \(first at line 3\)"):
        read_transcripts(tmp_path / "dup.csv")
    (tmp_path / "words.csv").write_text("name,words\nx,a\n")
    with pytest.raises(SourceError, match=r"words.csv:1: no transcript column"):
        read_transcripts(tmp_path / "words.csv")
    with pytest.raises(SourceError, match=r"en_zh.csv:1: no column 'sentence'"):
        read_transcripts(f["en_zh.csv"], "sentence")
    (tmp_path / "dupkey.json").write_text('{"sample_00000000": {"caption": "a"}, "sample_00000000": {"caption": "b"}}')
    assert main(["--labels", str(f["train.txt"]), "--coarse", str(tmp_path / "dupkey.json"), "--out", str(out)]) == 1
    assert "dupkey.json: key 'sample_00000000' appears twice" in capsys.readouterr().err
    (tmp_path / "badcap.json").write_text(json.dumps({"sample_00000001": {"caption": 3}}))
    assert main(["--labels", str(f["train.txt"]), "--coarse", str(tmp_path / "badcap.json"), "--out", str(out)]) == 1
    assert "badcap.json: clip 'sample_00000001': field 'caption' must be a string" in capsys.readouterr().err


def test_split_fraction_is_seeded_and_stratified(tmp_path: Path) -> None:
    labels = ["happy"] * 50 + ["sad"] * 30 + ["angry"] * 20
    records = [{"video_id": f"c{i:03d}", "emotion": e, "split": "train"} for i, e in enumerate(labels)]
    records.append({"video_id": "t0", "emotion": "sad", "split": "test"})

    def carve(seed: int) -> list[dict]:
        recs = [dict(r) for r in records]
        carve_splits(recs, parse_fractions("val=0.1,test=0.2"), seed)
        return recs

    recs = carve(0)
    per = {(r["split"], r["emotion"]) for r in recs}
    count = {key: sum((r["split"], r["emotion"]) == key for r in recs) for key in per}
    assert (count[("val", "happy")], count[("val", "sad")], count[("val", "angry")]) == (5, 3, 2)
    assert (count[("test", "happy")], count[("test", "sad")], count[("test", "angry")]) == (10, 7, 4)  # 6 + the given one
    assert recs[-1]["split"] == "test"  # a given split is kept
    assert carve(0) == recs and carve(1) != recs
    for bad in ("val=1.5", "val=0.6,test=0.5", "train=0.1", "val", "val=0.1,val=0.2"):
        with pytest.raises(ValueError, match="--split_fraction"):
            parse_fractions(bad)
    f = _merr_files(tmp_path)
    out = tmp_path / "a.json"
    assert _script("import_merr").main(["--labels", str(f["train.txt"]), "--split_fraction", "val=0.25",
                                        "--seed", "3", "--out", str(out)]) == 0
    assert {s: len(v) for s, v in load_annotations(out).items()} == {"train": 3, "val": 1}
    assert MERR_LABELS[:6] == ("neutral", "angry", "happy", "sad", "worried", "surprise")


# ----------------------------------------------------------------------------------- both, in HERO


def test_imported_corpus_builds_hero_samples(release, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from minigpt4.datasets.builders.hero_builder import HEROBuilder, default_dataset_config

    feats = release["out"]
    report = import_features(default_maps(release["root"]), feats, read_transcripts(release["csv"]), progress=False)
    assert report.failed == 0
    f = _merr_files(tmp_path)
    ann = tmp_path / "annotations.json"
    assert _script("import_merr").main(["--labels", str(f["train.txt"]), f"{f['test.txt']}:val",
                                        "--coarse", str(f["MERR_coarse_grained.json"]),
                                        "--fine", str(f["MERR_fine_grained.json"]), "--out", str(ann)]) == 0
    labels = ["angry", "happy", "sad", "doubt"]
    cfg = {"max_dim": AUDIO_D, "label_names": labels, "feature_keys": {"visual": "facemae"},
           "build_info": {"images": {"storage": str(feats)}, "annotations": {"storage": str(ann)}}}
    if "measured_evidence" in default_dataset_config():  # measured evidence is another test's subject
        cfg["measured_evidence"] = False
    sets = HEROBuilder(OmegaConf.create(cfg)).build_datasets()
    assert {s: len(d) for s, d in sets.items()} == {"train": 4, "val": 1}
    val, train = sets["val"], sets["train"]
    train.builder.expect_dims({"audio": AUDIO_D, "motion": MOTION_D, "visual": FACE_D})
    s0 = train[0]
    # motion, audio, au, text, visual: Emotion-LLaMA has no AU or text-embedding folder
    assert s0["modality_mask"].tolist() == [True, True, False, False, True]
    assert s0["answer"] == cot.build_cot_target("happy", {}, "Smile and a bright tone: she is happy.")
    assert s0["transcript"] == "json words"  # the annotation's text (here the fine JSON's) wins ...
    assert train[1]["transcript"] == "Leave me alone."  # ... over the one the feature file holds
    s2 = train[2]  # label-only, and no VideoMAE file: the motion expert is masked, not fed zeros
    assert s2["modality_mask"].tolist() == [False, True, False, False, True]
    assert s2["evidence"] == {} and s2["emotion_label"] == "doubt"
    assert s2["answer"] == cot.build_cot_target("doubt")
    assert cot.parse_report(s2["answer"], labels).emotion == "doubt"
    batch = train.collater([train[i] for i in range(4)])
    assert batch["video_features"].shape == (4, 5, 3, AUDIO_D)  # c3's face MAE has 3 frames
    assert batch["emotion"].tolist() == [1, 2, 3, 1] and val[0]["emotion_label"] == "angry"
