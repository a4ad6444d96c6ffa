"""DDP on CPU: `torchrun --nproc_per_node 2` (gloo) through hero-train (`minigpt4.cli.train.run`) on the toy model.

Both ranks must end with identical parameters, and they must match a single-process run with
the same global batch (2 ranks x batch 2 x accumulation 2 = 8 = 1 process x batch 8) within
TOLERANCE: the sums are the same but reduced in a different order, so bit-equality is not
expected. Run as a module (`torchrun -m tests.test_ddp`, from the repository root, which
makes `tests.toy_components` importable), this file is the per-rank worker.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TOLERANCE = 1e-5  # max |param_ddp - param_single|
REPO = Path(__file__).resolve().parents[1]


def _worker(dump_dir: str, argv: list[str]) -> None:
    """torchrun entry: train through hero-train's `run`, then save this rank's trainable params."""
    from safetensors.torch import save_file

    from minigpt4.cli.train import run as train_run
    from minigpt4.common.checkpoint import trainable_state_dict

    runner = train_run(argv)
    save_file(trainable_state_dict(runner.model_raw), os.path.join(dump_dir, f"rank{os.environ['RANK']}.safetensors"))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
else:
    import pytest
    import torch
    from safetensors.torch import load_file

    from minigpt4.cli.train import run as train_run
    from minigpt4.common.logger import read_log
    from tests.toy_components import write_toy_config

    RUN = {"max_epoch": 2, "save_freq": 5}
    # dropout would draw different masks per rank than in one process; `loss_sparse` is logged by
    # rank 0 only (a term one rank's batches lack), on each of its forwards, valued the forward's number
    MODEL = {"dropout": 0.0, "sparse_term_every": 1, "sparse_term_rank": 0}

    def torchrun(cfg: Path, dump: Path, *extra: str) -> tuple[dict, dict]:
        """Train on 2 CPU ranks; returns each rank's final trainable parameters."""
        dump.mkdir(parents=True)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.test_ddp", str(dump), "--cfg-path", str(cfg), *extra]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
        assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")

    def test_ddp_two_ranks_match_each_other_and_a_single_process(tmp_path: Path):
        ddp_cfg = write_toy_config(tmp_path / "ddp", run={**RUN, "batch_size_train": 2, "accum_grad_iters": 2},
                                   model=MODEL)
        r0, r1 = torchrun(ddp_cfg, tmp_path / "dump")
        assert sorted(r0) == sorted(r1) and "estimator.weight" in r0
        for k in r0:
            assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"

        single = train_run(["--cfg-path", str(write_toy_config(
            tmp_path / "single", run={**RUN, "batch_size_train": 8, "accum_grad_iters": 1}, model=MODEL))])
        ref = {n: p.detach() for n, p in single.model_raw.named_parameters() if p.requires_grad}
        max_diff = max(float((r0[k] - ref[k]).abs().max()) for k in ref)
        print(f"DDP(2x2x2) vs single(8): max |param diff| = {max_diff:.3g} (tolerance {TOLERANCE})")
        assert max_diff < TOLERANCE
        assert not torch.equal(ref["encoder.0.weight"], single_init(tmp_path))  # it did train

        logs = [{r["step"]: r for r in read_log(tmp_path / d / "run") if r.get("phase") == "train"}
                for d in ("ddp", "single")]
        assert sorted(logs[0]) == sorted(logs[1]) == list(range(1, 17))
        for step in logs[0]:  # rank 0 logs the mean over ranks, i.e. the global batch's loss
            assert logs[0][step]["loss"] == pytest.approx(logs[1][step]["loss"], rel=1e-5)
            # over rank 0's two batches of the step only (forwards 2s-1, 2s), not halved by rank 1
            assert logs[0][step]["loss_sparse"] == 2 * step - 0.5
        assert (tmp_path / "ddp" / "run" / "checkpoints" / "ckpt_00000016").is_dir()
        val = [{r["step"]: r["val_loss"] for r in read_log(tmp_path / d / "run") if r.get("phase") == "val"}
               for d in ("ddp", "single")]
        assert val[0].keys() == val[1].keys() and all(val[0][s] == pytest.approx(val[1][s], rel=1e-5) for s in val[0])

    def single_init(tmp_path: Path) -> torch.Tensor:
        from tests.toy_components import ToyRegressor

        torch.manual_seed(7)
        return ToyRegressor(in_dim=8, hidden=16, dropout=0.0).encoder[0].weight.detach()

    def test_ddp_resume_mid_epoch_is_exact(tmp_path: Path):
        """Per-rank RNG states and sampler positions survive a checkpoint: with dropout on, a DDP
        run resumed from its step-10 checkpoint (mid epoch 1) ends bit-identical to the full run."""
        run = {**RUN, "batch_size_train": 2, "accum_grad_iters": 2}
        full_cfg = write_toy_config(tmp_path / "full", run=run, model={"dropout": 0.2})
        full0, _ = torchrun(full_cfg, tmp_path / "dump_full")
        ckpt10 = tmp_path / "full" / "run" / "checkpoints" / "ckpt_00000010"
        res_cfg = write_toy_config(tmp_path / "res", run=run, model={"dropout": 0.2})
        res0, res1 = torchrun(res_cfg, tmp_path / "dump_res", "--resume", str(ckpt10))
        for k in full0:
            assert torch.equal(full0[k], res0[k]) and torch.equal(res0[k], res1[k]), k
        full = {r["step"]: r["loss"] for r in read_log(tmp_path / "full" / "run") if r.get("phase") == "train"}
        res = {r["step"]: r["loss"] for r in read_log(tmp_path / "res" / "run") if r.get("phase") == "train"}
        assert sorted(res) == list(range(11, 17)) and all(res[s] == full[s] for s in res)
