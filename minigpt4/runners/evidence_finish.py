"""Finishing the evidence decoder on a trained run's frozen experts (`hero-finish-evidence`).

Why: in the joint run the decoder chases experts that keep changing, under a learning rate
that decays to nothing, and ends undertrained: on the demo its validation `loss_evidence` was
still falling at the last epoch, and a linear probe on the same run's expert summaries read
the audio state on 0.83 of the test clips while the decoder wrote the right one on 0.49.
Trained a few epochs more on the final experts' tokens (eval mode, the rest of the model
frozen, the LLM not run), it writes what the experts know.

The result is a small file beside the run's checkpoints (FINISHED_DECODER_FILE: the decoder's
weights and evidence bank, and in its metadata the checkpoint it was finished for); loading
that checkpoint for evaluation or inference applies it (`apply_finished_decoder`), as
calibration.json's temperature is applied. The LLM's brief then holds the finished decoder's
sentences, which it did not see in training: the closing numbers of a finish say what that
did to accuracy (measured on the demo: none lost).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
from torch import Tensor

from minigpt4.models.hero import evidence_sources as sources_

logger = logging.getLogger(__name__)

FINISHED_DECODER_FILE = "evidence_decoder.safetensors"
_DECODER_KEYS = ("evidence_stack.decoder.", "evidence_stack.evidence_bank.")


@dataclass
class DecoderRows:
    """Every (clip, expert) with an evidence target: the decoder's inputs, kept on the CPU.

    memory [N, Q, H], expert_index [N], input_ids / attention_mask [N, L], condition [N, C] or None.
    """

    memory: Tensor
    expert_index: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    condition: Optional[Tensor]

    def __len__(self) -> int:
        return int(self.expert_index.shape[0])

    def take(self, idx: Tensor, device: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
        cond = None if self.condition is None else self.condition[idx].to(device)
        return (self.memory[idx].to(device), self.expert_index[idx].to(device), self.input_ids[idx].to(device),
                self.attention_mask[idx].to(device), cond)


@dataclass
class FinishStats:
    """What a finish did: rows trained and validated on, and the teacher-forced loss before and after."""

    epochs: int
    lr: float
    train_rows: int
    val_rows: int
    train_loss_before: float
    train_loss_after: float
    val_loss_before: Optional[float]
    val_loss_after: Optional[float]


@torch.no_grad()
def collect_rows(model: Any, batches: Iterable[Any], record_bank: bool = False) -> DecoderRows:
    """The decoder's training rows of a split, read with the model in eval mode (no dropout).

    With `record_bank`, the annotated sentences also go into the evidence bank (a checkpoint
    from before the bank existed gets the one its training would have recorded).
    """
    stack = model.evidence_stack
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {k: [] for k in ("memory", "index", "ids", "mask", "cond")}
    width = 1
    try:
        for samples in batches:
            targets = model.build_evidence_targets(samples)
            if targets is None:
                continue
            out = stack(model._on_device(samples), None, compute_losses=False)
            if record_bank:
                annotated = sources_.annotated_mask(samples, len(targets.present)).to(targets.present.device)
                stack.evidence_bank.update(targets.input_ids, targets.attention_mask, annotated & targets.present)
            rows = (out.expert_present & targets.present.to(out.expert_present.device)).nonzero(as_tuple=False)
            if rows.shape[0] == 0:
                continue
            b, e = rows[:, 0], rows[:, 1]
            parts["memory"].append(out.expert_tokens[b, e].float().cpu())
            parts["index"].append(e.cpu())
            parts["ids"].append(targets.input_ids[b, e].cpu())
            parts["mask"].append(targets.attention_mask[b, e].cpu())
            cond = stack._decoder_condition(out, b, e)
            if cond is not None:
                parts["cond"].append(cond.float().cpu())
            width = max(width, int(targets.input_ids.shape[-1]))
    finally:
        model.train(was_training)
    if not parts["index"]:
        raise ValueError("no clip of this split has an evidence sentence for a present expert: nothing to finish on")
    pad = int(stack.pad_token_id)
    ids = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t in parts["ids"]])
    mask = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in parts["mask"]])
    return DecoderRows(torch.cat(parts["memory"]), torch.cat(parts["index"]), ids, mask,
                       torch.cat(parts["cond"]) if parts["cond"] else None)


@torch.no_grad()
def rows_loss(decoder: Any, rows: DecoderRows, batch_size: int, device: Any) -> float:
    """Mean (over rows) teacher-forced loss of the decoder, in eval mode."""
    was_training = decoder.training
    decoder.eval()
    total = 0.0
    try:
        for start in range(0, len(rows), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(rows)))
            memory, index, ids, mask, cond = rows.take(idx, device)
            total += float(decoder.loss(memory, index, ids, mask, cond)) * len(idx)
    finally:
        decoder.train(was_training)
    return total / max(1, len(rows))


def finish_decoder(model: Any, train: DecoderRows, val: Optional[DecoderRows], epochs: int, lr: float,
                   batch_size: int = 64, seed: int = 0, progress: Any = None) -> FinishStats:
    """Train the evidence decoder alone on `train` rows for `epochs` (AdamW at a constant `lr`,
    dropout on); everything else stays as it is. Returns the losses before and after."""
    if epochs < 1 or not lr > 0 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    decoder = model.evidence_stack.decoder
    device = next(decoder.parameters()).device
    before = (rows_loss(decoder, train, batch_size, device), rows_loss(decoder, val, batch_size, device) if val else None)
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(seed))
    decoder.train()
    steps = epochs * math.ceil(len(train) / batch_size)
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), batch_size):
            memory, index, ids, mask, cond = train.take(order[start: start + batch_size], device)
            loss = decoder.loss(memory, index, ids, mask, cond)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(epoch, float(loss.detach()), steps)
    decoder.eval()
    after = (rows_loss(decoder, train, batch_size, device), rows_loss(decoder, val, batch_size, device) if val else None)
    return FinishStats(epochs, float(lr), len(train), len(val) if val else 0, before[0], after[0], before[1], after[1])


def save_finished(run_dir: Union[str, Path], model: Any, checkpoint: Union[str, Path], stats: FinishStats) -> Path:
    """Write `<run_dir>/evidence_decoder.safetensors` atomically: the decoder and bank tensors,
    and in its metadata the checkpoint they belong to and the finish's numbers."""
    from safetensors.torch import save

    from minigpt4.common.atomic_io import atomic_open

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(_DECODER_KEYS)}
    meta = {"checkpoint": str(Path(checkpoint).resolve()), "stats": json.dumps(asdict(stats))}
    path = Path(run_dir) / FINISHED_DECODER_FILE
    with atomic_open(path, "wb") as fh:
        fh.write(save(state, metadata=meta))
    return path


def _finished_meta(run_dir: Union[str, Path], checkpoint: Union[str, Path]) -> Optional[tuple[Path, dict]]:
    """(file, metadata) of the run's finished decoder when it was made for `checkpoint`, else None."""
    from safetensors import safe_open

    path = Path(run_dir) / FINISHED_DECODER_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # a truncated or foreign file: say which, never guess
        raise ValueError(f"{path}: not a finished evidence decoder ({exc}); delete it or rerun hero-finish-evidence") from exc
    if "checkpoint" not in meta:
        raise ValueError(f"{path}: no checkpoint in its metadata; delete it or rerun hero-finish-evidence")
    return (path, meta) if Path(meta["checkpoint"]) == Path(checkpoint).resolve() else None


def finished_for(run_dir: Union[str, Path], checkpoint: Union[str, Path]) -> Optional[Path]:
    """The run's finished decoder file when it was made for `checkpoint`, else None."""
    found = _finished_meta(run_dir, checkpoint)
    return None if found is None else found[0]


def apply_finished_decoder(model: Any, run_dir: Union[str, Path], checkpoint: Union[str, Path]) -> Optional[dict]:
    """Load the finished decoder made for `checkpoint` into `model` (strict on its keys); returns
    the finish's stats, or None when the run has none for this checkpoint."""
    from safetensors.torch import load_file

    found = _finished_meta(run_dir, checkpoint)
    if found is None:
        return None
    path, meta = found
    state = load_file(str(path))
    own = dict(model.state_dict())
    wrong = sorted(k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape))
    missing = sorted(k for k in own if k.startswith(_DECODER_KEYS[0]) and k not in state)
    if wrong or missing:
        raise ValueError(f"{path} does not fit this model (keys {(wrong + missing)[:4]}); rerun hero-finish-evidence")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].device))
    logger.info("evidence decoder finished by hero-finish-evidence (%s)", path)
    return {"file": str(path), **json.loads(meta.get("stats") or "{}")}
