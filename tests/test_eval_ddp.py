"""The DDP path of hero-eval: 2 CPU ranks (gloo) under torchrun; every clip is gathered exactly once.

Run by pytest, this file starts `python -m torch.distributed.run --nproc_per_node 2 -m
tests.test_eval_ddp` on itself (from the repository root, so `tests.*` imports); each rank
then runs `_worker`: it evaluates its shard of a real tiny HERODataset through the eval
loader (`sharded_loader`) and `predict_shard` (with a recording stand-in for the model), and
the records go to rank 0 through `gather_records` / `merge_records`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _worker(data_dir: str, out_dir: str) -> None:
    from minigpt4.cli.eval_predict import predict_shard
    from minigpt4.evaluation import records as eu
    from minigpt4.common.dist_utils import destroy_distributed, init_distributed_mode
    from minigpt4.datasets.annotations import load_annotations
    from minigpt4.datasets.datasets.hero_dataset import HERODataset
    from minigpt4.runners.runner_base import sharded_loader
    from tests.test_eval import LABELS, MAX_DIM, RecordingModel

    info = init_distributed_mode("cpu")
    try:
        ds = HERODataset(load_annotations(Path(data_dir) / "labels.json")["test"], Path(data_dir) / "features",
                         split="test", max_dim=MAX_DIM, label_names=LABELS)
        ids = [a.video_id for a in ds.annotations]
        for mode in ("ok", "lose"):
            loader = sharded_loader(ds, 2, 0, info.rank, info.world_size, False)
            model = RecordingModel()
            records = predict_shard(model, loader, LABELS, missing=["audio"])
            if mode == "lose" and info.rank == 1:
                records["missing"] = records["missing"][:-1]  # a rank that silently lost a clip
            seen = [vid for batch in model.seen for vid in batch["video_id"]]
            gathered = {cond: eu.gather_records(recs) for cond, recs in records.items()}
            Path(out_dir, f"seen_{mode}_rank{info.rank}.json").write_text(json.dumps(seen))
            if info.rank != 0:
                assert all(g is None for g in gathered.values())  # only rank 0 receives
                continue
            result = {"world_size": info.world_size, "distributed": info.distributed, "expected": ids,
                      "per_rank": {c: [[r["video_id"] for r in part] for part in g] for c, g in gathered.items()}}
            try:
                result["merged"] = {c: [r["video_id"] for r in eu.merge_records(g, ids)[0]]
                                    for c, g in gathered.items()}
            except eu.GatherError as exc:
                result["error"] = str(exc)
            Path(out_dir, f"result_{mode}.json").write_text(json.dumps(result))
    finally:
        destroy_distributed()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict[str, dict]:
    """One torchrun launch (2 ranks) for both scenarios: {"ok": ..., "lose": ...}."""
    from tests.test_eval import write_tiny_dataset

    root = tmp_path_factory.mktemp("eval_ddp")
    data, out = root / "data", root / "out"
    write_tiny_dataset(data, {"test": 7})
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.test_eval_ddp", str(data), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = {}
    for mode in ("ok", "lose"):
        res = json.loads((out / f"result_{mode}.json").read_text())
        res["seen"] = [json.loads((out / f"seen_{mode}_rank{r}.json").read_text()) for r in range(2)]
        results[mode] = res
    return results


def test_two_ranks_gather_every_clip_exactly_once(ddp_results):
    res = ddp_results["ok"]
    assert res["world_size"] == 2 and res["distributed"]
    ids = res["expected"]
    assert len(ids) == 7
    # each rank evaluated its own clips (rank::2), each batch twice (full and without audio)
    assert res["seen"][0] == [ids[i] for i in (0, 2, 0, 2, 4, 6, 4, 6)]  # batches of 2
    assert res["seen"][1] == [ids[i] for i in (1, 3, 1, 3, 5, 5)]
    r0 = ids[0::2]
    r1 = ids[1::2]
    for cond in ("full", "missing"):
        assert res["per_rank"][cond] == [r0, r1]
        assert res["merged"][cond] == ids  # dataset order, each clip once
    assert set(r0).isdisjoint(r1)


def test_a_lost_clip_is_an_error_on_rank_zero(ddp_results):
    res = ddp_results["lose"]
    assert "merged" not in res
    assert "1 clip(s) without a prediction" in res["error"] and res["expected"][5] in res["error"]


def test_eval_hero_under_torchrun_matches_one_process(tmp_path: Path, tiny_llm_dir: Path):
    """The real command on 2 ranks: rank 0 writes every clip once, with the single-process predictions."""
    import minigpt4
    from minigpt4.cli.evaluate import run as eval_run
    from minigpt4.common.checkpoint import save_checkpoint, trainable_state_dict
    from minigpt4.common.config import load_config
    from minigpt4.evaluation.records import read_jsonl
    from minigpt4.common.registry import registry
    from tests.test_eval import write_tiny_config, write_tiny_dataset

    labels = write_tiny_dataset(tmp_path / "data", {"test": 7})
    cfg_path = write_tiny_config(tmp_path, tiny_llm_dir, labels)
    minigpt4.setup_registry()

    cfg = load_config(cfg_path)
    model = registry.get_model_class("hero").from_config(cfg.model)  # untrained weights are enough here
    ckpt = save_checkpoint(tmp_path / "run", 0, trainable_state_dict(model), {"step": 0})
    del model
    args = ["--cfg-path", str(cfg_path), "--ckpt", str(ckpt), "--use_cls_head", "--missing", "audio",
            "--batch_size", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "eval_hero.py"), *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.stdout.count("eval test (7 clips, without audio)") == 1  # one summary, from rank 0
    single = eval_run(args + ["--out", str(tmp_path / "one")])
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1 and ddp["n_clips"] == 7
    for name in ("predictions.jsonl", "predictions_full.jsonl"):
        a, b = read_jsonl(tmp_path / "ddp" / name), read_jsonl(tmp_path / "one" / name)
        assert [r["video_id"] for r in a] == [r["video_id"] for r in b] == [f"test_{i:03d}" for i in range(7)]
        for x, y in zip(a, b):
            assert x["pred_emotion"] == y["pred_emotion"], x["video_id"]
            assert x["confidence"] == pytest.approx(y["confidence"], abs=1e-5)
            assert x["modality_weights"] == pytest.approx(y["modality_weights"], abs=1e-5)
    for key in ("accuracy", "weighted_f1", "uar", "confusion_matrix"):
        assert ddp[key] == single[key] and ddp["full"][key] == single["full"][key], key


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
