"""Test-only registry entries: a tiny regression model with an auxiliary estimator, and a
dataset builder for it (map-style or streaming). Registered as "toy_regressor" / "toy_dataset"
so runner, checkpoint and DDP tests exercise the real framework without the HERO model.

The model mirrors HERO's contract: `loss` plus named terms, and an estimator trained only
through `aux_losses["estimator"]` on detached inputs, which the main loss uses through
detached weights (the STMIL pattern).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from minigpt4.common.dist_utils import get_rank, get_world_size
from minigpt4.common.registry import registry


class ToyCrash(RuntimeError):
    """Raised by the toy model to simulate a job killed mid-training."""


@registry.register_model("toy_regressor")
class ToyRegressor(nn.Module):
    """x [B, in_dim] -> encoder (Linear, LayerNorm, GELU, Dropout) -> head -> y_hat [B]."""

    CONFIG_KEYS = ("in_dim", "hidden", "dropout", "aux", "aux_lr", "crash_after_calls", "freeze_head_bias",
                   "sparse_term_every", "sparse_term_rank")

    def __init__(self, in_dim: int = 8, hidden: int = 16, dropout: float = 0.1, aux: bool = True,
                 aux_lr: Optional[float] = None, crash_after_calls: int = 0, freeze_head_bias: bool = False,
                 sparse_term_every: int = 0, sparse_term_rank: int = -1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, 1)
        self.estimator = nn.Linear(hidden, 1) if aux else None
        self.aux_lr = aux_lr
        self.crash_after_calls = crash_after_calls
        self.sparse_term_every = sparse_term_every  # > 0: `loss_sparse` only on every n-th training forward
        self.sparse_term_rank = sparse_term_rank  # >= 0: ... and only on this rank
        self.calls = 0
        if freeze_head_bias:
            self.head.bias.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ToyRegressor":
        return cls(**{k: cfg[k] for k in cls.CONFIG_KEYS if k in cfg})

    def auxiliary_parameter_groups(self) -> Dict[str, Dict[str, Any]]:
        if self.estimator is None:
            return {}
        return {"estimator": {"params": list(self.estimator.parameters()), "lr": self.aux_lr, "weight_decay": 0.0}}

    def forward(self, samples: Mapping[str, Any]) -> Dict[str, Any]:
        if not isinstance(samples["id"], list):
            raise TypeError("non-tensor batch fields must reach the model untouched")
        if self.training:  # count training forwards only
            self.calls += 1
            if self.crash_after_calls and self.calls > self.crash_after_calls:
                raise ToyCrash(f"simulated crash at training forward {self.calls}")
        x, y = samples["x"], samples["y"]
        h = self.encoder(x)
        pred = self.head(h).squeeze(-1)
        loss_task = F.mse_loss(pred.float(), y.float())
        loss_reg = 0.01 * h.float().pow(2).mean()
        out: Dict[str, Any] = {"loss_task": loss_task, "loss_reg": loss_reg, "pred": pred}
        loss = loss_task + loss_reg
        if self.estimator is not None:
            est = self.estimator(h.detach()).squeeze(-1)
            out["aux_losses"] = {"estimator": F.mse_loss(est.float(), y.float())}
            w, b = self.estimator.weight.detach(), self.estimator.bias.detach()
            penalty = 0.01 * F.linear(h, w, b).float().pow(2).mean()
            out["loss_penalty"] = penalty
            loss = loss + penalty
        on_rank = self.sparse_term_rank < 0 or get_rank() == self.sparse_term_rank
        if self.training and self.sparse_term_every and self.calls % self.sparse_term_every == 0 and on_rank:
            # a logged term some batches lack (HERO: no evidence target); its value is the forward's number
            out["loss_sparse"] = torch.tensor(float(self.calls))
        out["loss"] = loss
        return out


@registry.register_model("toy_reporter")
class ToyReporter(ToyRegressor):
    """ToyRegressor that also "writes reports": its k-th validation pass by generation is right
    on every clip when `gen_schedule[k]` is true, else says `low` for all (a collapse).

    Lets a test script what generation-based validation sees, whatever the loss does.
    """

    label_names = ("low", "high")

    def __init__(self, gen_schedule: Sequence[bool] = (True,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gen_schedule = [bool(g) for g in gen_schedule]
        self.current_pass = -1  # validation passes so far (each starts by switching to eval mode)

    @staticmethod
    def label_of(y: torch.Tensor) -> str:
        return "high" if float(y) > 0 else "low"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ToyReporter":
        return cls(gen_schedule=list(cfg.get("gen_schedule", [True])), **{k: cfg[k] for k in cls.CONFIG_KEYS if k in cfg})

    def train(self, mode: bool = True) -> "ToyReporter":
        if not mode:  # each switch to eval mode starts a new validation pass
            self.current_pass += 1
        return super().train(mode)

    def generate(self, samples: Mapping[str, Any], max_new_tokens: int = 300, **kwargs: Any) -> list[Dict[str, Any]]:
        right = self.gen_schedule[min(self.current_pass, len(self.gen_schedule) - 1)]
        out = []
        for y in samples["y"]:
            label = self.label_of(y) if right else "low"
            out.append({"report": f'### Prediction\n{{"emotion": "{label}"}}', "emotion": label, "confidence": None,
                        "format_ok": True, "evidence": {}, "modality_weights": None, "synergy_score": None})
        return out


def make_regression(n: int, in_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n, in_dim] ~ N(0, 1), y [n] = tanh(x @ w) + 0.05 noise (fixed by `seed`)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    w = torch.randn(in_dim, generator=g)
    y = torch.tanh(x @ w / in_dim**0.5) + 0.05 * torch.randn(n, generator=g)
    return x, y


def collate_toy(samples: list[Dict[str, Any]]) -> Dict[str, Any]:
    ids = [s["id"] for s in samples]
    return {"x": torch.stack([s["x"] for s in samples]), "y": torch.stack([s["y"] for s in samples]),
            "id": ids, "video_id": list(ids), "emotion_label": [ToyReporter.label_of(s["y"]) for s in samples]}


class ToyDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, prefix: str) -> None:
        self.x, self.y, self.prefix = x, y, prefix
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "id": f"{self.prefix}{i}"}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def collater(self, samples: list[Dict[str, Any]]) -> Dict[str, Any]:
        return collate_toy(samples)


class ToyStream(IterableDataset):
    """Streams a rank's share (every world-th sample) in a per-epoch seeded order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        super().__init__()
        self.x, self.y, self.seed, self.epoch = x, y, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for i in order[get_rank()::get_world_size()].tolist():
            yield {"x": self.x[i], "y": self.y[i], "id": f"s{i}"}

    def collater(self, samples: list[Dict[str, Any]]) -> Dict[str, Any]:
        return collate_toy(samples)


@registry.register_builder("toy_dataset")
class ToyBuilder:
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg

    def build_datasets(self) -> Dict[str, Any]:
        c = self.cfg
        n_train, n_val, in_dim, seed = int(c.get("n_train", 64)), int(c.get("n_val", 16)), int(c.get("in_dim", 8)), \
            int(c.get("seed", 0))
        x, y = make_regression(n_train + n_val, in_dim, seed)
        train = ToyStream(x[:n_train], y[:n_train], seed) if c.get("iterable") else \
            ToyDataset(x[:n_train], y[:n_train], "t")
        return {"train": train, "val": ToyDataset(x[n_train:], y[n_train:], "v")}


def write_toy_config(folder: Path, run: Optional[Dict[str, Any]] = None, model: Optional[Dict[str, Any]] = None,
                     data: Optional[Dict[str, Any]] = None) -> Path:
    """A full config file for the toy model (CPU, no progress bar, log every step)."""
    cfg = {
        "model": {"arch": "toy_regressor", "in_dim": 8, "hidden": 16, "dropout": 0.1, "aux": True, "aux_lr": 1e-2,
                  "crash_after_calls": 0, "freeze_head_bias": False, **(model or {})},
        "datasets": {"toy_dataset": {"n_train": 64, "n_val": 16, "in_dim": 8, "seed": 0, "iterable": False,
                                     **(data or {})}},
        "run": {"task": "hero", "imports": ["tests.toy_components"], "output_dir": str(folder / "run"),
                "device": "cpu", "seed": 7, "max_epoch": 2, "batch_size_train": 8, "batch_size_eval": 8,
                "init_lr": 1e-2, "min_lr": 1e-4, "warmup_lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.05,
                "log_freq": 1, "progress_bar": False, "amp": "none", **(run or {})},
    }
    path = Path(folder) / "toy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
