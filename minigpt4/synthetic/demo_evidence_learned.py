"""What a reader can *learn* of each demo expert's evidence state from the training clips' frames.

The oracle (demo_evidence_oracle.py) knows the generator's directions and burst windows, so it
bounds what any model could read; it says nothing about what can be learned from the few
hundred annotated clips the demo has. This reader is trained directly and only on that: per
expert, a small temporal CNN over the expert's frames (synergy: audio and motion, one encoder
each), two convolutions of width 3, max- and mean-pooled over the real frames, a linear layer
over the states of the train and val clips' golden sentences (`evidence_state`). It sees the
answer for every training clip, which HERO's experts never do (they learn from the emotion and
the sentence together, through shared weights), so it is a supervised reference, not a rival.

Fixed settings, not tuned on the test split: 64 channels, AdamW (weight decay 1e-2) under a
one-cycle schedule peaking at lr 3e-3, batch 32, 60 epochs, dropout 0.2; features standardised
with the training frames' statistics. The schedule's annealing is what lets the reader gain from
more clips (`make_demo_data.py --num_clips`); at a constant lr it did not.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS
from minigpt4.datasets.feature_io import find_feature_file, read_features
from minigpt4.synthetic.demo_evidence_oracle import evidence_state

# the modalities each expert's reader sees
READER_INPUTS: dict[str, tuple[str, ...]] = {
    "motion": ("motion",), "audio": ("audio",), "au": ("au",), "text": ("text",), "visual": ("visual",),
    "synergy": ("audio", "motion"),
}
CHANNELS, EPOCHS, BATCH, LR, WEIGHT_DECAY, DROPOUT = 64, 60, 32, 3e-3, 1e-2, 0.2


class _FrameEncoder(nn.Module):
    """x [N, T, D], mask [N, T] -> [N, 2C]: max and mean of two width-3 convolutions over real frames."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dim, CHANNELS, 3, padding=1)
        self.conv2 = nn.Conv1d(CHANNELS, CHANNELS, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask[..., None].to(x.dtype)
        h = F.relu(self.conv2(F.relu(self.conv1((x * m).transpose(1, 2))))).transpose(1, 2)
        top = h.masked_fill(~mask[..., None], float("-inf")).max(1).values
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.cat([top, mean], -1)


class StateReader(nn.Module):
    """One encoder per input modality, then dropout and a linear layer over the states."""

    def __init__(self, dims: Sequence[int], num_states: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(_FrameEncoder(d) for d in dims)
        self.out = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(2 * CHANNELS * len(dims), num_states))

    def forward(self, inputs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        return self.out(torch.cat([enc(x, m) for enc, (x, m) in zip(self.encoders, inputs)], -1))


def _pack(arrays: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Variable-length [T_i, D] arrays -> zero-padded [N, T, D] and mask [N, T]."""
    t = max(len(a) for a in arrays)
    x = np.zeros((len(arrays), t, arrays[0].shape[1]), np.float32)
    mask = np.zeros((len(arrays), t), bool)
    for i, a in enumerate(arrays):
        x[i, : len(a)], mask[i, : len(a)] = a, True
    return torch.from_numpy(x), torch.from_numpy(mask)


def _standardised(packed: Sequence[tuple[Tensor, Tensor]], stats: Sequence[tuple[Tensor, Tensor]]
                  ) -> list[tuple[Tensor, Tensor]]:
    """Each (x, mask) with the training frames' (mean, std); padded frames stay 0."""
    return [((x - mu) / sd * m[..., None], m) for (x, m), (mu, sd) in zip(packed, stats)]


def learned_states(data: Path, expert: str, clips: Sequence[str], seed: int = 0) -> dict[str, str]:
    """The state the reader trained on `data`'s train and val clips names for each of `clips`
    (video ids with the expert's modalities); {} when fewer than two states are annotated."""
    if not clips:
        return {}
    records = json.loads((data / "annotations.json").read_text(encoding="utf-8"))
    arrays: dict[str, Mapping[str, np.ndarray]] = {}

    def frames(vid: str) -> Mapping[str, np.ndarray]:
        if vid not in arrays:
            arrays[vid] = read_features(find_feature_file(data / "features", vid)).arrays
        return arrays[vid]

    keys = [DEFAULT_FEATURE_KEYS[m] for m in READER_INPUTS[expert]]
    train = [(r["video_id"], evidence_state(expert, r["evidence"][expert])) for r in records
             if r.get("split") in ("train", "val") and (r.get("evidence") or {}).get(expert)
             and all(k in frames(r["video_id"]) for k in keys)]
    states = sorted({s for _, s in train})
    if len(states) < 2:
        return {}
    index = {s: i for i, s in enumerate(states)}
    inputs = [_pack([np.asarray(frames(v)[k], np.float32) for v, _ in train]) for k in keys]
    stats = [(x[m].mean(0), x[m].std(0) + 1e-4) for x, m in inputs]
    inputs = _standardised(inputs, stats)
    y = torch.tensor([index[s] for _, s in train])
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reader = StateReader([x.shape[2] for x, _ in inputs], len(states))
    opt = torch.optim.AdamW(reader.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = -(-len(y) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch)
    reader.train()
    for _ in range(EPOCHS):
        for rows in torch.randperm(len(y), generator=gen).split(BATCH):
            loss = F.cross_entropy(reader([(x[rows], m[rows]) for x, m in inputs]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    reader.eval()
    test = _standardised([_pack([np.asarray(frames(v)[k], np.float32) for v in clips]) for k in keys], stats)
    with torch.no_grad():
        picked = reader(test).argmax(-1).tolist()
    return {vid: states[k] for vid, k in zip(clips, picked)}
