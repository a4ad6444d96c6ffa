"""hero-eval (`minigpt4.cli.evaluate`; `python eval_hero.py`) and its helpers: records,
shards/merge, writers, out paths, plots, --missing masks, and the command end to end on a
tiny trained HERO checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import torch

from minigpt4.cli import evaluate as eval_cli
from minigpt4.common import cot
from minigpt4.evaluation import records as eu
from minigpt4.common.modalities import EXPERT_ORDER, STACK_ORDER
from minigpt4.datasets.annotations import load_annotations
from minigpt4.datasets.datasets.hero_dataset import HERODataset
from minigpt4.datasets.feature_io import write_features

REPO = Path(__file__).resolve().parents[1]
LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
# small true dims per modality (stack order: motion, audio, au, text, visual)
DIMS = {"videomae": 12, "hubert": 16, "au": 35, "bert": 12, "clip": 16}
MAX_DIM = 40


# ----------------------------------------------------------------------- fixtures
def write_tiny_dataset(root: Path, splits: Mapping[str, int], seed: int = 0, drop_text_every: int = 4,
                       unlabeled_test: int = 0) -> Path:
    """Feature files + one labels JSON under `root`; every 4th clip lacks text, the last
    `unlabeled_test` clips of the test split have no emotion. Returns labels.json."""
    rng = np.random.default_rng(seed)
    feats = root / "features"
    feats.mkdir(parents=True, exist_ok=True)
    records = []
    k = 0
    for split, n in splits.items():
        for i in range(n):
            vid = f"{split}_{i:03d}"
            emotion = LABELS[k % 4]  # neutral / angry / happy / sad
            lengths = {"videomae": 3 + k % 3, "hubert": 6 + k % 4, "au": 5, "bert": 4 + k % 2, "clip": 4}
            arrays = {key: rng.standard_normal((lengths[key], d)).astype(np.float32) + 0.5 * (k % 4)
                      for key, d in DIMS.items()}
            if drop_text_every and k % drop_text_every == drop_text_every - 1:
                del arrays["bert"]
            write_features(feats / f"{vid}.npz", arrays, transcript=f"clip {vid}")
            rec = {"video_id": vid, "split": split, "emotion": emotion,
                   "evidence": {"visual": f"The face looks {emotion}.", "audio": f"The voice sounds {emotion}."},
                   "reasoning": f"Face and voice agree on {emotion}."}
            if split == "test" and i >= n - unlabeled_test:
                del rec["emotion"]
            records.append(rec)
            k += 1
    labels = root / "labels.json"
    labels.write_text(json.dumps(records), encoding="utf-8")
    return labels


def tiny_dataset(tmp_path: Path, n: int = 6, split: str = "test") -> HERODataset:
    labels = write_tiny_dataset(tmp_path, {split: n})
    return HERODataset(load_annotations(labels)[split], tmp_path / "features", split=split, max_dim=MAX_DIM,
                       label_names=LABELS)


def collate(ds: HERODataset, indices) -> dict[str, Any]:
    return ds.collater([ds[i] for i in indices])


class RecordingModel:
    """Keeps a copy of every batch it is asked about; answers by `model.generate`'s contract.

    Its "prediction" is a pure function of what it sees (the modality mask), so the records
    show which batch reached it.
    """

    label_names = tuple(LABELS)

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.kwargs: list[dict[str, Any]] = []

    def generate(self, samples: Mapping[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
        self.seen.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in samples.items()})
        self.kwargs.append(kwargs)
        out = []
        for b, mask in enumerate(samples["modality_mask"].tolist()):
            emotion = LABELS[sum(mask) % len(LABELS)]
            report = cot.build_cot_target(emotion, {}, None, 0.5) if b % 3 else "no prediction here"
            parsed = cot.parse_report(report, LABELS)
            present = [m for m, on in zip(STACK_ORDER, mask) if on] + ["synergy"]
            out.append({"report": report, "emotion": parsed.emotion, "confidence": parsed.confidence,
                        "format_ok": parsed.format_ok, "evidence": {"audio": "a voice"},
                        "modality_weights": {e: (1.0 / len(present) if e in present else 0.0) for e in EXPERT_ORDER},
                        "synergy_score": 0.5, "video_id": samples["video_id"][b]})
        return out


# --------------------------------------------------------------------- records
def test_records_pair_batch_and_outputs(tmp_path: Path):
    ds = tiny_dataset(tmp_path, n=4)
    batch = collate(ds, [0, 1, 2])
    model = RecordingModel()
    recs = eu.records_from_batch(batch, model.generate(batch), "report", LABELS, use_cot=True)
    assert [r["video_id"] for r in recs] == ["test_000", "test_001", "test_002"]
    assert list(recs[0]) == list(eu.RECORD_KEYS)
    assert [r["gold_emotion"] for r in recs] == ["neutral", "angry", "happy"]
    # clip 0 got an unparseable report: unknown, wrong, and the parser's reason is kept
    assert recs[0]["pred_emotion"] == "unknown" and recs[0]["format_ok"] is False and recs[0]["correct"] is False
    assert recs[0]["parse_error"] == "no '### Prediction' section"
    assert recs[1]["format_ok"] is True and recs[1]["parse_error"] is None and recs[1]["confidence"] == 0.5
    assert recs[1]["modality_weights"]["synergy"] == pytest.approx(1 / 6)
    # unlabeled clips have gold null and correct null
    rec = eu.make_record("x", "unknown", {"emotion": "happy", "confidence": float("nan")})
    assert rec["gold_emotion"] is None and rec["correct"] is None and rec["confidence"] is None
    with pytest.raises(ValueError, match="2 predictions for a batch of 3"):
        eu.records_from_batch(batch, model.generate(batch)[:2])
    swapped = model.generate(batch)
    swapped[0]["video_id"], swapped[1]["video_id"] = swapped[1]["video_id"], swapped[0]["video_id"]
    with pytest.raises(ValueError, match="in the slot of"):
        eu.records_from_batch(batch, swapped)


# ------------------------------------------------------------ shards and merging
@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (7, 2), (7, 3), (12, 4), (5, 8)])
def test_shards_are_disjoint_and_cover(n: int, world: int):
    shards = [eu.shard_indices(n, r, world) for r in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    with pytest.raises(ValueError):
        eu.shard_indices(n, world, world)


def test_merge_restores_order_and_refuses_lost_or_foreign_clips():
    ids = [f"c{i}" for i in range(7)]
    per_rank = [[{"video_id": ids[i], "rank": r} for i in eu.shard_indices(7, r, 3)] for r in range(3)]
    merged, dropped = eu.merge_records(per_rank, ids)
    assert [m["video_id"] for m in merged] == ids and dropped == 0
    # a padded sampler repeats a clip on the last rank: the first copy is kept, the repeat counted
    padded = [per_rank[0], per_rank[1], per_rank[2] + [{"video_id": "c0", "rank": 2}]]
    merged, dropped = eu.merge_records(padded, ids)
    assert dropped == 1 and merged[0]["rank"] == 0 and len(merged) == 7
    with pytest.raises(eu.GatherError, match=r"1 clip\(s\) without a prediction \(first: \['c5'\]\)"):
        eu.merge_records([per_rank[0], per_rank[1], [r for r in per_rank[2] if r["video_id"] != "c5"]], ids)
    with pytest.raises(eu.GatherError, match="outside the split"):
        eu.merge_records(per_rank + [[{"video_id": "zz"}]], ids)
    with pytest.raises(eu.GatherError, match="more than once"):
        eu.merge_records(per_rank, ids + ["c1"])
    merged, _ = eu.merge_records([[{"video_id": "b"}], [{"video_id": "a"}]], None)  # stream: sorted
    assert [m["video_id"] for m in merged] == ["a", "b"]


def test_gather_without_a_process_group_is_the_local_list():
    recs = [{"video_id": "a"}]
    assert eu.gather_records(recs) == [recs]


# -------------------------------------------------------------------- writers
def test_jsonl_round_trip_is_plain_json_and_atomic(tmp_path: Path):
    path = tmp_path / "out" / "predictions.jsonl"
    recs = [{"video_id": "a", "confidence": float("nan"), "w": np.float32(0.25), "t": torch.tensor(3),
             "ids": (1, 2), "text": "ünïcode"}]
    eu.write_jsonl(path, recs)
    back = eu.read_jsonl(path)
    assert back == [{"video_id": "a", "confidence": None, "w": 0.25, "t": 3, "ids": [1, 2], "text": "ünïcode"}]
    before = path.read_bytes()
    with pytest.raises(TypeError, match="cannot write object"):
        eu.write_jsonl(path, [{"video_id": "b"}, {"bad": object()}])
    assert path.read_bytes() == before  # the failed write left the old file alone
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.jsonl"]  # no temp file left
    path.write_text('{"a": 1}\n[1]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: expected a JSON object"):
        eu.read_jsonl(path)
    eu.write_json(tmp_path / "m.json", {"x": float("inf"), "y": [np.int64(2)]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": [2]}


def test_default_out_dir_names_variants_and_finds_the_run(tmp_path: Path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "ckpt_00000012"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"x")
    for given in (run, ckpt, ckpt / "model.safetensors", run / "checkpoints"):
        assert eu.run_dir_of(given) == run.resolve()
    other = tmp_path / "exported"
    other.mkdir()
    assert eu.run_dir_of(other) == other.resolve()
    assert eu.default_out_dir(ckpt, "test") == run.resolve() / "eval_test"
    assert eu.default_out_dir(run, "val", ["audio"]).name == "eval_val_missing-audio"
    assert eu.default_out_dir(run, "test", ["audio", "text"], no_cot=True).name == "eval_test_missing-audio+text_nocot"
    assert eu.default_out_dir(run, "test", use_cls_head=True).name == "eval_test_clshead"


def test_parse_modalities():
    assert eu.parse_modalities(None, STACK_ORDER) == []
    assert eu.parse_modalities("text, Audio", STACK_ORDER) == ["audio", "text"]  # stack order
    with pytest.raises(ValueError, match=r"unknown modality \['sound'\]"):
        eu.parse_modalities("audio,sound", STACK_ORDER)
    with pytest.raises(ValueError, match="every modality"):
        eu.parse_modalities(",".join(STACK_ORDER), STACK_ORDER)
    with pytest.raises(ValueError, match="at least one"):
        eu.parse_modalities(" , ", STACK_ORDER)


# ---------------------------------------------------------------------- plots
def test_plots_are_pngs_of_the_right_shape(tmp_path: Path):
    import matplotlib.image as mpimg

    from minigpt4.evaluation.plots import plot_confusion_matrix, plot_modality_weights

    rows = ["neutral", "angry", "happy"]
    cm_path = plot_confusion_matrix([[3, 1, 0, 1], [0, 2, 0, 0], [0, 0, 0, 0]], rows, rows + ["unknown"],
                                    tmp_path / "cm.png")
    per_class = {"neutral": {e: 1 / 6 for e in EXPERT_ORDER}, "angry": None,
                 "all": {e: (0.5 if e == "audio" else 0.1) for e in EXPERT_ORDER}}
    w_path = plot_modality_weights(per_class, EXPERT_ORDER, tmp_path / "w.png")
    for p in (cm_path, w_path):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(img[..., :3].std()) > 0.05  # not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "w.png"]
    with pytest.raises(ValueError, match="does not fit"):
        plot_confusion_matrix([[1, 2]], rows, rows, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no class"):
        plot_modality_weights({"neutral": None}, EXPERT_ORDER, tmp_path / "bad.png")


# ------------------------------------------------------------ --missing masks
def test_missing_run_sees_the_modalities_removed_and_the_full_run_does_not(tmp_path: Path):
    ds = tiny_dataset(tmp_path, n=5)
    batches = [collate(ds, [0, 1, 2]), collate(ds, [3, 4])]
    model = RecordingModel()
    recs = eval_cli.predict_shard(model, iter(batches), LABELS, missing=["audio", "text"],
                                   gen_kwargs={"max_new_tokens": 7, "num_beams": 1})
    assert len(model.seen) == 4  # each batch twice: as it is, then without audio and text
    audio, text = STACK_ORDER.index("audio"), STACK_ORDER.index("text")
    for b, batch in enumerate(batches):
        full, reduced = model.seen[2 * b], model.seen[2 * b + 1]
        assert torch.equal(full["modality_mask"], batch["modality_mask"])
        assert torch.equal(full["video_features"], batch["video_features"])
        for k in (audio, text):
            assert not reduced["modality_mask"][:, k].any() and not reduced["feature_mask"][:, k].any()
            assert not reduced["video_features"][:, k].any()
        keep = [k for k in range(5) if k not in (audio, text)]
        assert torch.equal(reduced["modality_mask"][:, keep], batch["modality_mask"][:, keep])
        assert torch.equal(reduced["feature_mask"][:, keep], batch["feature_mask"][:, keep])
        assert torch.equal(reduced["video_features"][:, keep], batch["video_features"][:, keep])
        assert reduced["video_id"] == batch["video_id"]
    assert batches[0]["modality_mask"][:, audio].all()  # the loader's batch is untouched
    assert model.kwargs[0] == {"use_cot": True, "max_new_tokens": 7, "num_beams": 1}
    assert [r["video_id"] for r in recs["full"]] == [r["video_id"] for r in recs["missing"]] == \
        [f"test_{i:03d}" for i in range(5)]
    # the recorded weights are those of the batch each run saw
    assert all(r["modality_weights"]["audio"] == 0.0 for r in recs["missing"])
    assert all(r["modality_weights"]["audio"] > 0.0 for r in recs["full"])


def test_without_missing_there_is_one_condition_and_no_cot_reaches_generate(tmp_path: Path):
    ds = tiny_dataset(tmp_path, n=2)
    model = RecordingModel()
    recs = eval_cli.predict_shard(model, iter([collate(ds, [0, 1])]), LABELS, use_cot=False)
    assert list(recs) == ["full"] and len(model.seen) == 1 and model.kwargs[0]["use_cot"] is False


# ----------------------------------------------------------------------- CLI
def _run(args: list[str], timeout: int = 240, env_extra: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="2", **(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_is_light():
    code = ("import sys, runpy\nsys.argv = ['eval_hero.py', '--help']\n"
            "try:\n    runpy.run_path('eval_hero.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    res = _run(["-c", code], timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--missing" in res.stdout and "--use_cls_head" in res.stdout
    assert "HEAVY []" in res.stdout


def test_cli_rejects_bad_flags_before_loading_anything():
    res = _run(["eval_hero.py", "--cfg-path", "nowhere.yaml", "--ckpt", "x", "--missing", "smell"], timeout=60)
    assert res.returncode == 1 and "unknown modality ['smell']" in res.stderr and "Traceback" not in res.stderr

def test_flag_and_config_errors_in_process(tmp_path: Path, capsys):
    from minigpt4.common.config import ConfigError

    with pytest.raises(SystemExit) as exc:
        eval_cli.parse_args(["--cfg-path", "c.yaml", "--ckpt", "x", "--no_cot", "--use_cls_head"])
    assert exc.value.code == 2 and "exclude each other" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--cfg-path", "c.yaml", "--ckpt", "x", "--num_beams", "0"])
    assert "--num_beams must be >= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="config file not found"):
        eval_cli.run(["--cfg-path", str(tmp_path / "none.yaml"), "--ckpt", "x"])


# ---------------------------------------------------------- end to end (real model)
def write_tiny_config(root: Path, llm_dir: Path, labels: Path, **run: Any) -> Path:
    """A HERO config small enough to train and evaluate in seconds on a CPU."""
    import yaml

    cfg = {
        "model": {"arch": "hero", "video_dim": DIMS["videomae"], "audio_dim": DIMS["hubert"], "au_dim": DIMS["au"],
                  "text_dim": DIMS["bert"], "visual_dim": DIMS["clip"], "hidden_dim": 32, "num_heads": 4,
                  "num_queries": 4, "num_qformer_layers": 1, "num_output_queries": 4, "label_names": LABELS,
                  "evidence_max_len": 6,
                  "evidence_decoder": {"embed_dim": 32, "num_layers": 1, "num_heads": 4, "max_len": 16},
                  "stmil": {"hidden_dim": 32}, "sccl_dim": 32, "use_cls_head": True, "lambda_cls": 0.5,
                  "max_txt_len": 192,
                  "llm": {"path": str(llm_dir), "lora_r": 4, "lora_alpha": 8, "dtype": "float32"}},
        "datasets": {"hero_dataset": {"max_dim": MAX_DIM, "label_names": LABELS, "max_len": 8,
                                      "build_info": {"images": {"storage": str(labels.parent / "features")},
                                                     "annotations": {"storage": str(labels)}}}},
        "run": {"task": "hero", "output_dir": str(root / "run"), "device": "cpu", "seed": 7, "max_epoch": 1,
                "iters_per_epoch": 1, "batch_size_train": 4, "batch_size_eval": 4, "valid_splits": [],
                "progress_bar": False, **run},
    }
    path = root / "hero_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_llm_dir) -> dict[str, Path]:
    """One optimiser step of hero-train (batch 4 of 8 clips); the test split has 7 (one unlabeled)."""
    from minigpt4.cli.train import run as train_run

    root = tmp_path_factory.mktemp("eval_e2e")
    labels = write_tiny_dataset(root / "data", {"train": 8, "test": 7}, unlabeled_test=1)
    cfg = write_tiny_config(root, tiny_llm_dir, labels)
    train_run(["--cfg-path", str(cfg)])
    run = root / "run"
    assert (run / "checkpoints" / "ckpt_00000001" / "model.safetensors").is_file()
    return {"root": root, "cfg": cfg, "run": run, "labels": labels}


def _check_predictions(path: Path, labels_json: Path) -> list[dict[str, Any]]:
    recs = eu.read_jsonl(path)
    gold = {r["video_id"]: r.get("emotion") for r in json.loads(labels_json.read_text()) if r["split"] == "test"}
    assert [r["video_id"] for r in recs] == list(gold)  # every clip once, in dataset order
    for r in recs:
        assert list(r) == list(eu.RECORD_KEYS)
        assert r["gold_emotion"] == gold[r["video_id"]]
        assert r["pred_emotion"] in LABELS + ["unknown"]
        assert isinstance(r["report"], str) and isinstance(r["format_ok"], bool)
        assert (r["pred_emotion"] == "unknown") == (not r["format_ok"])
        assert r["correct"] == (None if r["gold_emotion"] is None else r["pred_emotion"] == r["gold_emotion"])
        assert set(r["modality_weights"]) == set(EXPERT_ORDER)
        assert sum(r["modality_weights"].values()) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= r["synergy_score"] <= 1.0
        assert set(r["evidence"]) <= set(EXPERT_ORDER)
    return recs


def _check_metrics_match(metrics: Mapping[str, Any], recs: list[dict[str, Any]]) -> None:
    from minigpt4.evaluation.metrics import compute_metrics

    ref = compute_metrics([r["gold_emotion"] for r in recs], [r["pred_emotion"] for r in recs], LABELS,
                          format_ok=[r["format_ok"] for r in recs],
                          modality_weights=[r["modality_weights"] for r in recs])
    for key in ("accuracy", "weighted_f1", "macro_f1", "uar", "war", "format_compliance", "n_clips", "n_labeled",
                "n_unlabeled", "confusion_matrix", "per_class"):
        assert metrics[key] == (pytest.approx(ref[key]) if isinstance(ref[key], float) else ref[key]), key
    for cls, w in ref["modality_weights_per_class"].items():
        got = metrics["modality_weights_per_class"][cls]
        assert (got is None) == (w is None) and (w is None or got == pytest.approx(w)), cls


def test_command_end_to_end_with_missing_audio_writes_every_file(trained_run):
    res = _run(["eval_hero.py", "--cfg-path", str(trained_run["cfg"]), "--ckpt", str(trained_run["run"]),
                "--missing", "audio", "--max_new_tokens", "6", "--batch_size", "3"], timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    out = trained_run["run"] / "eval_test_missing-audio"  # default: inside the run folder
    written = json.loads((out / "metrics.json").read_text())
    # the reliability diagram is drawn for each condition whose reports parsed with a confidence
    reliability = [f"reliability{sfx}.png" for sfx, m in (("", written), ("_full", written["full"]))
                   if m["calibration"] is not None]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "predictions.jsonl", "predictions_full.jsonl", "metrics.json", "confusion_matrix.png",
        "confusion_matrix_full.png", "modality_weights.png", "modality_weights_full.png", *reliability])
    summary = [l for l in res.stdout.splitlines() if l.startswith("eval test")]
    assert len(summary) == 1 and "(7 clips, without audio): accuracy " in summary[0]
    assert " | W-F1 " in summary[0] and " | UAR " in summary[0] and " | format " in summary[0]
    assert summary[0].endswith(f" clips/s -> {out}")
    reduced = _check_predictions(out / "predictions.jsonl", trained_run["labels"])
    full = _check_predictions(out / "predictions_full.jsonl", trained_run["labels"])
    # the model saw the clips without audio: the audio expert gets no weight, every clip had audio
    assert all(r["modality_weights"]["audio"] == 0.0 and "audio" not in r["evidence"] for r in reduced)
    assert all(r["modality_weights"]["audio"] > 0.0 for r in full)
    metrics = json.loads((out / "metrics.json").read_text())
    _check_metrics_match(metrics, reduced)
    _check_metrics_match(metrics["full"], full)
    assert metrics["n_clips"] == 7 and metrics["n_unlabeled"] == 1 and metrics["world_size"] == 1
    assert metrics["missing_modalities"] == ["audio"] and metrics["split"] == "test"
    assert metrics["checkpoint"].endswith("ckpt_00000001") and metrics["prediction_source"] == "report"
    assert metrics["command"][-6:] == ["--missing", "audio", "--max_new_tokens", "6", "--batch_size", "3"]
    assert metrics["use_cot"] is True and metrics["generation"] == {"max_new_tokens": 6, "num_beams": 1}
    assert 0 < metrics["predict_seconds"] <= metrics["seconds"]
    assert metrics["clips_per_s"] == pytest.approx(7 / metrics["predict_seconds"], rel=1e-2)
    for key in ("accuracy", "weighted_f1", "uar", "format_compliance"):
        assert metrics["drop"][key] == pytest.approx(metrics["full"][key] - metrics[key]), key
    assert metrics["modality_weights_per_class"]["all"]["audio"] == 0.0
    assert sorted(metrics["files"]) == sorted(p.name for p in out.iterdir())
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_output_folder_is_written_as_a_whole(trained_run, monkeypatch):
    """A plain evaluation into the folder of a --missing one leaves none of the latter's files; an
    evaluation that fails while writing leaves the previous folder as it was; a folder holding
    files eval did not write is refused before any prediction is made."""
    from minigpt4.cli import eval_report

    base = ["--cfg-path", str(trained_run["cfg"]), "--ckpt", str(trained_run["run"]), "--max_new_tokens", "4"]
    out = trained_run["run"] / "eval_reused"
    eval_cli.run(base + ["--out", str(out), "--missing", "audio"])
    assert (out / "predictions_full.jsonl").is_file()
    eval_cli.run(base + ["--out", str(out)])
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(json.loads((out / "metrics.json").read_text())["files"])
    assert not any("_full" in n for n in names)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_plot(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("minigpt4.evaluation.plots.plot_confusion_matrix", broken_plot)
    with pytest.raises(OSError, match="disk full"):
        eval_report.write_outputs(out, {"full": [[]]}, [], LABELS, [], {"split": "test"}, 0.0)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".eval_reused")) == []
    (out / "notes.txt").write_text("mine")
    calls = []
    monkeypatch.setattr("minigpt4.runners.components.build_components", lambda *a, **k: calls.append(a))
    with pytest.raises(FileExistsError, match=r"eval_reused holds files this command did not write \(notes.txt\)"):
        eval_cli.run(base + ["--out", str(out)])
    assert (out / "notes.txt").read_text() == "mine" and not calls


def test_config_drift_that_keeps_the_shapes_is_an_error(trained_run):
    """Same shapes, other predictions (temporal positions off, a permuted label set): refused unless asked."""
    from minigpt4.runners.components import ConfigDriftError

    base = ["--cfg-path", str(trained_run["cfg"]), "--ckpt", str(trained_run["run"]), "--use_cls_head"]
    with pytest.raises(ConfigDriftError, match=r"model\.temporal_position \(True in the run, False here\)"):
        eval_cli.run(base + ["--options", "model.temporal_position=false"])
    permuted = "[" + ", ".join(LABELS[1:] + LABELS[:1]) + "]"
    with pytest.raises(ConfigDriftError, match=r"model\.label_names"):
        eval_cli.run(base + ["--options", f"model.label_names={permuted}",
                             f"datasets.hero_dataset.label_names={permuted}"])
    out = trained_run["run"] / "eval_drift"
    metrics = eval_cli.run(base + ["--out", str(out), "--allow_config_drift", "--options",
                                   "model.temporal_position=false"])
    assert metrics["n_clips"] == 7
    # how the model is asked is not drift: the report's evidence section written by the LLM instead
    asked = eval_cli.run(["--cfg-path", str(trained_run["cfg"]), "--ckpt", str(trained_run["run"]), "--max_new_tokens",
                          "2", "--out", str(trained_run["run"] / "eval_llm_evidence"), "--options",
                          "model.report_evidence=llm"])
    assert asked["n_clips"] == 7


def test_classification_head_and_config_errors(trained_run, capsys):
    from minigpt4.common.checkpoint import CheckpointMismatchError

    base = ["--cfg-path", str(trained_run["cfg"]), "--ckpt", str(trained_run["run"])]
    metrics = eval_cli.run(base + ["--use_cls_head"])
    out = trained_run["run"] / "eval_test_clshead"
    assert metrics == json.loads((out / "metrics.json").read_text())
    recs = eu.read_jsonl(out / "predictions.jsonl")
    assert len(recs) == 7 and all(r["prediction_source"] == "cls_head" for r in recs)
    assert all(r["pred_emotion"] in LABELS and 1 / len(LABELS) <= r["confidence"] <= 1.0 for r in recs)
    assert all(r["report"] is None and r["format_ok"] is None for r in recs)
    assert metrics["format_compliance"] is None and metrics["use_cot"] is None
    assert metrics["accuracy"] == pytest.approx(np.mean([r["correct"] for r in recs if r["correct"] is not None]))
    assert "format n/a" in capsys.readouterr().out
    # label-only instruction: its own folder, use_cot reaches the model (a CoT-free parse)
    metrics = eval_cli.run(base + ["--no_cot", "--max_new_tokens", "4"])
    out = trained_run["run"] / "eval_test_nocot"
    assert metrics["use_cot"] is False and metrics["generation"]["max_new_tokens"] == 4
    recs = eu.read_jsonl(out / "predictions.jsonl")
    assert len(recs) == 7 and all(isinstance(r["report"], str) for r in recs)
    assert metrics["format_compliance"] == pytest.approx(np.mean([r["format_ok"] for r in recs]))
    # a model without the head: a clear error before anything runs
    with pytest.raises(eval_cli.EvalError, match="has no classification head"):
        eval_cli.run(base + ["--use_cls_head", "--options", "model.use_cls_head=false", "model.lambda_cls=0.0"])
    # a config that does not fit the checkpoint: the first mismatched keys, and what changed
    with pytest.raises(CheckpointMismatchError) as err:
        eval_cli.run(base + ["--options", "model.hidden_dim=48"])
    msg = str(err.value)
    assert "shape mismatches" in msg and "evidence_stack." in msg
    assert "model.hidden_dim (32 in the run, 48 here)" in msg


def test_calibrate_fits_on_another_split_and_inference_applies_it(trained_run, capsys):
    """--calibrate train: the temperature fitted on the train split's head probabilities (checked
    against a fit on that split's own evaluation), predictions unchanged, confidences rescaled,
    the before/after calibration in metrics.json, and calibration.json used by hero-infer's session."""
    from minigpt4.evaluation import temperature as ts
    from minigpt4.inference.session import InferenceSession

    base = ["--cfg-path", str(trained_run["cfg"]), "--ckpt", str(trained_run["run"])]
    with pytest.raises(SystemExit):
        eval_cli.parse_args(base + ["--calibrate", "test"])  # fitting on the scored split is refused
    assert "fit the temperature on another split" in capsys.readouterr().err
    eval_cli.run(base + ["--use_cls_head", "--split", "train", "--out", str(trained_run["root"] / "train_head")])
    train_recs = eu.read_jsonl(trained_run["root"] / "train_head" / "predictions.jsonl")
    expected = ts.fit_from_records(train_recs, LABELS)
    plain = eval_cli.run(base + ["--use_cls_head"])
    metrics = eval_cli.run(base + ["--use_cls_head", "--calibrate", "train"])
    t = metrics["temperature"]
    assert t["fitted_on_split"] == "train" and t["n"] == 8
    assert t["temperature"] == pytest.approx(expected.temperature, rel=1e-6) and t["nll_after"] <= t["nll_before"]
    assert plain["temperature"] is None
    assert abs(t["temperature"] - 1.0) > 0.05  # a scaling that changes the numbers (0.66 here)
    before = eu.read_jsonl(trained_run["run"] / "eval_test_clshead" / "predictions.jsonl")
    after = eu.read_jsonl(trained_run["run"] / "eval_test_clshead_calibrated" / "predictions.jsonl")
    assert [r["pred_emotion"] for r in after] == [r["pred_emotion"] for r in before]
    for b, a in zip(before, after):
        names = list(b["label_probs"])
        scaled = ts.rescale([[b["label_probs"][n] for n in names]], t["temperature"])[0]
        assert a["confidence"] == pytest.approx(float(scaled[names.index(a["pred_emotion"])]), abs=1e-5)
    assert metrics["calibration_uncalibrated"]["ece"] == pytest.approx(plain["calibration"]["ece"], abs=1e-5)
    assert "before temperature scaling: ECE" in capsys.readouterr().out
    saved = json.loads((trained_run["run"] / ts.CALIBRATION_FILE).read_text())
    assert saved["temperature"] == pytest.approx(t["temperature"])
    # the reports path prints the calibrated number too
    metrics = eval_cli.run(base + ["--calibrate", "train", "--max_new_tokens", "8"])
    for rec in eu.read_jsonl(trained_run["run"] / "eval_test_calibrated" / "predictions.jsonl"):
        if rec["confidence_source"] == "head":
            probs = [rec["label_probs"][n] for n in LABELS]
            assert rec["confidence"] == pytest.approx(rec["label_probs"][rec["pred_emotion"]], abs=1e-4)
            assert max(probs) == pytest.approx(rec["head_confidence"])
    # inference applies the run's calibration.json to the checkpoint it was fitted for
    session = InferenceSession.from_run(trained_run["run"])
    assert session.head_temperature == pytest.approx(t["temperature"])
    assert InferenceSession.from_run(trained_run["run"], calibrated=False).head_temperature == 1.0
    (trained_run["run"] / ts.CALIBRATION_FILE).unlink()  # other tests of this module see the run as trained


def test_finish_evidence_trains_only_the_decoder_and_eval_applies_it(trained_run, capsys):
    """hero-finish-evidence: the decoder alone learns (its loss falls on train and on held-out
    clips), the file names its checkpoint, hero-eval uses it (and records it) unless told not
    to, a file for another checkpoint is ignored and a broken one is an error naming it."""
    from safetensors.torch import load_file

    from minigpt4.cli import finish_evidence
    from minigpt4.common.checkpoint import resolve_checkpoint
    from minigpt4.runners import evidence_finish as ef

    run = trained_run["run"]
    ckpt = resolve_checkpoint(run, prefer_best=True)
    own = load_file(str(ckpt / "model.safetensors"))
    assert finish_evidence.main(["--ckpt", str(run), "--epochs", "30", "--lr", "3e-3", "--val_split", "test"]) == 0
    line = capsys.readouterr().out
    assert "evidence decoder finished: 30 epochs on" in line and str(run / ef.FINISHED_DECODER_FILE) in line
    path = run / ef.FINISHED_DECODER_FILE
    finished = load_file(str(path))
    assert finished and all(k.startswith(("evidence_stack.decoder.", "evidence_stack.evidence_bank.")) for k in finished)
    assert ef.finished_for(run, ckpt) == path
    changed = [k for k in finished if k in own and not torch.equal(finished[k], own[k])]
    assert any(".decoder." in k for k in changed)
    # only the visual and audio sentences exist, one per emotion: the bank holds them
    assert finished["evidence_stack.evidence_bank.lengths"].gt(0).sum(-1).tolist() == [0, 4, 0, 0, 4, 0]

    base = ["--cfg-path", str(trained_run["cfg"]), "--ckpt", str(run), "--max_new_tokens", "8"]
    used = eval_cli.run(base)
    stats = used["evidence_finish"]
    assert stats["epochs"] == 30 and stats["file"] == str(path)
    assert stats["train_loss_after"] < 0.5 * stats["train_loss_before"]
    assert stats["val_loss_after"] < stats["val_loss_before"]
    assert eval_cli.run(base + ["--no_finished_decoder"])["evidence_finish"] is None
    assert (run / "eval_test_unfinished" / "metrics.json").is_file()

    other = run / "checkpoints" / "elsewhere"
    assert ef.finished_for(run, other) is None  # made for another checkpoint: not applied
    path.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a finished evidence decoder"):
        ef.finished_for(run, ckpt)
    path.unlink()  # other tests of this module see the run as trained
    assert finish_evidence.main(["--ckpt", str(trained_run["root"] / "nowhere")]) == 2
    assert "hero-finish-evidence: run folder not found" in capsys.readouterr().err


def test_content_probe_reads_the_annotations_topic_from_the_audio_summaries(trained_run, tmp_path):
    """--content_probe fits its probes on the train split and scores them on the evaluated one,
    under metrics.json's content_probe; an annotation file without the field is a clear error."""
    from minigpt4.evaluation.content_probe import ContentProbeError

    records = json.loads(trained_run["labels"].read_text())
    for i, rec in enumerate(records):
        rec["topic"] = ("work", "food")[i % 2]
    labels = trained_run["labels"].parent / "labels_topic.json"
    labels.write_text(json.dumps(records))
    common = ["--cfg-path", str(trained_run["cfg"]), "--ckpt", str(trained_run["run"]), "--use_cls_head",
              "--options", f"datasets.hero_dataset.build_info.annotations.storage={labels}"]
    metrics = eval_cli.run([*common, "--content_probe", "--out", str(tmp_path / "probe")])
    probe = metrics["content_probe"]
    assert probe["field"] == "topic" and set(probe) == {"field", "audio", "text"}
    audio = probe["audio"]
    assert audio["n_train"] == 8 and audio["n_test"] == 7  # every clip has audio and a topic (one test clip unlabelled)
    assert 0.0 <= audio["content_accuracy"] <= 1.0 and audio["content_chance"] == pytest.approx(4 / 7)
    assert json.loads((tmp_path / "probe" / "metrics.json").read_text())["content_probe"] == probe
    with pytest.raises(ContentProbeError, match="'speaker'"):
        eval_cli.run([*common, "--content_probe", "speaker", "--out", str(tmp_path / "none")])


def test_cue_probe_script_reads_a_trained_run_s_expert_summaries(trained_run, tmp_path, capsys):
    """scripts/cue_probe.py end to end on a trained run: the run's own model and data, a latents.json
    beside its features, a table on stdout and the same numbers in --out."""
    from scripts import cue_probe

    data = trained_run["root"] / "data"
    rng = np.random.default_rng(0)
    records = json.loads(trained_run["labels"].read_text())
    latents = [{"video_id": r["video_id"], "split": r["split"], "present": {"audio": True},
                "audio_tone": float(rng.normal())} for r in records]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "latents.json").write_text(json.dumps(latents))
    (tmp_path / "corpus" / "features").symlink_to(data / "features")
    out = tmp_path / "cues.json"
    rc = cue_probe.main(["--run", str(trained_run["run"]), "--data", str(tmp_path / "corpus"), "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    tone = result["audio_tone"]
    assert (tone["modality"], tone["n_train"], tone["n_test"]) == ("audio", 8, 7)
    assert isinstance(tone["expert_r2"], float) and isinstance(tone["frames_r2"], float)
    assert "audio_tone" in capsys.readouterr().out
    assert cue_probe.main(["--run", str(trained_run["run"]), "--data", str(tmp_path / "nowhere")]) == 2


def test_cue_probe_worth_prices_each_expert_s_reading_with_the_generator_oracle(trained_run, tmp_path, capsys):
    """--worth on a corpus the demo generator wrote (its manifest beside demo latents for the run's
    clips): every modality left out and read from its expert, in the table and in --out; without a
    generator manifest it is an error (exit 2)."""
    from minigpt4.synthetic import demo, demo_cues
    from minigpt4.synthetic.common import EMOTIONS
    from scripts import cue_probe

    rng = np.random.default_rng(0)
    records = json.loads(trained_run["labels"].read_text())
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "features").symlink_to(trained_run["root"] / "data" / "features")
    latents = [demo_cues.sample_cues(rng, EMOTIONS[i % 3], r["video_id"], r["split"]).to_json()
               for i, r in enumerate(records)]
    (corpus / "latents.json").write_text(json.dumps(latents))
    args = ["--run", str(trained_run["run"]), "--data", str(corpus), "--worth"]
    assert cue_probe.main(args) == 2  # no manifest: no generator to price with
    assert "no demo or shift manifest" in capsys.readouterr().err
    (corpus / demo.MANIFEST).write_text("{}")
    out = tmp_path / "worth.json"
    assert cue_probe.main(args + ["--out", str(out)]) == 0
    worth = json.loads(out.read_text())["worth"]
    for m in ("motion", "audio", "au", "text", "visual"):
        assert 0.0 <= worth[f"{m}_left_out"] <= 1.0
        assert f"{m}_from_expert" in worth
    assert 0.0 <= worth["noise_free"] <= 1.0 and 0.0 <= worth["all_from_experts"] <= 1.0
    assert "logistic regression on the noise-free cues" in capsys.readouterr().out
    assert cue_probe.main(["--run", str(trained_run["run"]), "--data", str(corpus), "--frame"]) == 2
    assert "needs --worth" in capsys.readouterr().err
    # --frame reads each clip's cues from its file: latents that say otherwise are an error naming them
    assert cue_probe.main(args + ["--frame"]) == 2
    assert "cannot read the clips' cues from their files" in capsys.readouterr().err
    for rec in latents:
        rec["video_id"] = "other_" + rec["video_id"]  # latents of some other corpus
    (corpus / "latents.json").write_text(json.dumps(latents))
    assert cue_probe.main(args) == 2
    assert "no train clip has both latents and an expert summary" in capsys.readouterr().err
