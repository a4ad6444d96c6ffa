"""Checkpoints: trainable weights (safetensors) + training state (plain tensors/containers).

Layout (docs/ARCHITECTURE.md "Checkpoints")::

    <run_dir>/checkpoints/ckpt_<step:08d>/model.safetensors     requires_grad parameters only
    <run_dir>/checkpoints/ckpt_<step:08d>/training_state.pt     optimisers, scheduler, scaler,
                                                                step, epoch, RNG, config text
    <run_dir>/checkpoints/ckpt_<step:08d>/checksums.json        sha256 of both files
    <run_dir>/checkpoints/best.json                             which checkpoint is best

A checkpoint is written into a hidden temp folder and renamed into place only once both files
are complete, so a crash mid-write leaves the previous checkpoints untouched and no half
checkpoint under a `ckpt_` name. Loading verifies each file against `checksums.json`, so a
flipped bit on disk is an error naming the file instead of silently different weights (a
checkpoint from before checksums loads with one warning). The training state is read with
`weights_only=True` (no unpickling of arbitrary objects), so it must hold only tensors and plain
containers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minigpt4.common.atomic_io import atomic_write_text

logger = logging.getLogger(__name__)

CKPT_SUBDIR = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
BEST_FILE = "best.json"
CHECKSUM_FILE = "checksums.json"
_UNVERIFIED_WARNED: Set[str] = set()  # checkpoint folders already warned about (once per process)
_CKPT_RE = re.compile(r"^ckpt_(\d{8,})$")
_TMP_PREFIX = ".tmp-"

PathLike = Union[str, Path]


class CheckpointMismatchError(ValueError):
    """Checkpoint keys/shapes do not fit the model; the message names the first offenders."""


class CheckpointCorruptError(ValueError):
    """A checkpoint file whose bytes differ from the sha256 recorded when it was written."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def trainable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """`{name: tensor}` of every parameter with `requires_grad`, plus the buffers (or frozen parameters)
    the model names in `checkpoint_buffer_names()` (state learned from the data, not by gradients, or
    frozen after it was loaded from another run) (CPU, contiguous, detached copies)."""
    module = unwrap_model(model)
    state = {name: p.detach().to("cpu", copy=True).contiguous()
             for name, p in module.named_parameters() if p.requires_grad}
    names = getattr(module, "checkpoint_buffer_names", None)
    if callable(names):
        buffers = {**dict(module.named_buffers()), **dict(module.named_parameters())}
        state.update({n: buffers[n].detach().to("cpu", copy=True).contiguous() for n in names()})
    return state


def checkpoint_name(step: int) -> str:
    return f"ckpt_{int(step):08d}"


def _ckpt_root(path: PathLike) -> Path:
    """A run dir or its `checkpoints/` folder -> the `checkpoints/` folder."""
    path = Path(path)
    return path if path.name == CKPT_SUBDIR else path / CKPT_SUBDIR


def is_complete_checkpoint(path: PathLike) -> bool:
    path = Path(path)
    return (path / MODEL_FILE).is_file() and (path / STATE_FILE).is_file()


def list_checkpoints(run_dir: PathLike) -> List[Path]:
    """Complete checkpoints of a run (run dir or its `checkpoints/`), oldest step first."""
    root = _ckpt_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _CKPT_RE.match(child.name)
        if m and child.is_dir() and is_complete_checkpoint(child):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(run_dir: PathLike) -> Optional[str]:
    """Path of the newest complete checkpoint of a run, or None."""
    ckpts = list_checkpoints(run_dir)
    return str(ckpts[-1]) if ckpts else None


def read_best(run_dir: PathLike) -> Optional[Dict[str, Any]]:
    """Contents of `checkpoints/best.json` (keys: path, step, epoch, metric, value, mode) or None."""
    f = _ckpt_root(run_dir) / BEST_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f}: not valid JSON ({exc})") from None


def find_best_checkpoint(run_dir: PathLike) -> Optional[str]:
    """Path of the checkpoint recorded in best.json (if it still exists), or None."""
    best = read_best(run_dir)
    if not best:
        return None
    path = _ckpt_root(run_dir) / best["path"]
    return str(path) if is_complete_checkpoint(path) else None


def resolve_checkpoint(path: PathLike, prefer_best: bool = False) -> Path:
    """A checkpoint dir, a `.safetensors` file, or a run dir (its latest checkpoint) -> checkpoint path.

    Returns the `.safetensors` file for file inputs and the checkpoint folder otherwise. With
    `prefer_best` a run dir resolves to the checkpoint of `best.json` when it still exists
    (evaluation wants the validated best; resuming wants the latest).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: expected a .safetensors file, a checkpoint folder or a run folder")
        return path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if is_complete_checkpoint(path):
        return path
    if (path / MODEL_FILE).is_file():  # weights-only folder (e.g. exported)
        return path
    best = find_best_checkpoint(path) if prefer_best else None
    if best is not None:
        return Path(best)
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: no {MODEL_FILE} and no complete checkpoint under {_ckpt_root(path)}")
    return Path(latest)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _write_checksums(folder: Path, names: Any) -> None:
    """`checksums.json` for the files just written into the (not yet renamed) checkpoint folder."""
    record = {"algorithm": "sha256", "files": {name: file_sha256(folder / name) for name in names}}
    (folder / CHECKSUM_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def verify_checkpoint_file(file: PathLike) -> None:
    """Check `file` against the sha256 in `checksums.json` beside it; raise CheckpointCorruptError
    naming it on a mismatch. Without a recorded checksum (a checkpoint from before they were
    written, or an exported weights file) it loads unverified, with one warning per folder."""
    file = Path(file)
    sums = file.parent / CHECKSUM_FILE
    want = None
    if sums.is_file():
        try:
            record = json.loads(sums.read_text(encoding="utf-8"))
            if record.get("algorithm") != "sha256" or not isinstance(record.get("files"), dict):
                raise ValueError("expected {'algorithm': 'sha256', 'files': {name: hex}}")
        except (ValueError, AttributeError) as exc:
            raise CheckpointCorruptError(f"{sums}: unreadable checksum record ({exc})") from None
        want = record["files"].get(file.name)
    if want is None:
        if str(file.parent) not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(str(file.parent))
            logger.warning("%s: no sha256 recorded in %s (written before checkpoints had checksums?); "
                           "loading it unverified", file, sums.name)
        return
    got = file_sha256(file)
    if got != want:
        raise CheckpointCorruptError(
            f"{file}: sha256 {got[:16]}... does not match {want[:16]}... recorded in {sums.name} when it was "
            "saved; the file is corrupted (disk or copy error) or was changed. Use another checkpoint "
            "(e.g. an older ckpt_* folder) or restore this one from a backup")


def save_checkpoint(run_dir: PathLike, step: int, model_state: Mapping[str, torch.Tensor],
                    training_state: Mapping[str, Any], keep_last_k: Optional[int] = None,
                    best: Optional[Mapping[str, Any]] = None) -> Path:
    """Write `ckpt_<step>` atomically, update best.json when `best` is given, prune old ones.

    `best` ({"metric", "value", "mode", "epoch"}) marks this checkpoint as the new best.
    Pruning keeps the newest `keep_last_k` checkpoints plus the best one (None/<=0: keep all).
    Returns the checkpoint folder.
    """
    root = _ckpt_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{_TMP_PREFIX}*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = root / checkpoint_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / MODEL_FILE),
                  metadata={"format": "pt", "step": str(int(step))})
        torch.save(dict(training_state), tmp / STATE_FILE)
        _write_checksums(tmp, (MODEL_FILE, STATE_FILE))
        for f in (MODEL_FILE, STATE_FILE, CHECKSUM_FILE):
            _fsync_file(tmp / f)
        old = None
        if final.exists():  # re-saving the same step: swap, then drop the old copy
            old = root / f"{_TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if best is not None:
        record = {"path": final.name, "step": int(step), **{k: best[k] for k in best}}
        atomic_write_text(root / BEST_FILE, json.dumps(record, indent=2) + "\n")
    if keep_last_k is not None and keep_last_k > 0:
        prune_checkpoints(root, keep_last_k)
    return final


def prune_checkpoints(run_dir: PathLike, keep_last_k: int) -> List[Path]:
    """Delete all but the newest `keep_last_k` checkpoints, never the best one; returns deleted."""
    best = read_best(run_dir)
    best_name = best["path"] if best else None
    ckpts = list_checkpoints(run_dir)
    doomed = [p for p in ckpts[:-keep_last_k] if p.name != best_name] if keep_last_k > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def load_training_state(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """The training state of a checkpoint folder (or run dir: latest), loaded with weights_only=True."""
    ckpt = resolve_checkpoint(path)
    f = ckpt / STATE_FILE if ckpt.is_dir() else ckpt.parent / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{ckpt}: no {STATE_FILE} (weights-only checkpoint cannot resume training)")
    verify_checkpoint_file(f)
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{f}: cannot load training state safely ({exc})") from exc


def first_items(items: List[str], n: int = 5) -> str:
    """The first `n` of `items`, comma-separated, with a count of the rest (for error messages)."""
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def read_model_file(file: Path) -> Dict[str, torch.Tensor]:
    """A checkpoint's `.safetensors` tensors, checked against its recorded sha256 first (no pickle)."""
    verify_checkpoint_file(file)
    try:
        return load_file(str(file))
    except Exception as exc:
        raise ValueError(f"{file}: not a readable safetensors file ({exc})") from exc


@dataclass
class StateFit:
    """How a saved state fits a module: `targets` (its parameters and buffers by name), the trainable
    parameters the state lacks, the state's keys the module lacks (sorted), and shape mismatches."""

    targets: Dict[str, torch.Tensor]
    missing: List[str]
    unexpected: List[str]
    shapes: List[str]  # "key (file (...) vs model (...))", in the state's order

    @property
    def mismatched(self) -> set[str]:
        """The keys of `shapes`: tensors the module has in another shape."""
        return {s.split(" ", 1)[0] for s in self.shapes}

    def copy(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy every tensor of `state` that fits (known key, same shape) into its target."""
        bad = self.mismatched
        with torch.no_grad():
            for k, v in state.items():
                if k in self.targets and k not in bad:
                    self.targets[k].copy_(v.to(self.targets[k].device))


def state_fit(model: nn.Module, state: Mapping[str, torch.Tensor]) -> StateFit:
    """`StateFit` of `state` against `model` (unwrapped from DDP)."""
    module = unwrap_model(model)
    targets: Dict[str, torch.Tensor] = dict(module.named_buffers())
    targets.update(dict(module.named_parameters()))
    missing = [n for n, p in module.named_parameters() if p.requires_grad and n not in state]
    unexpected = sorted(k for k in state if k not in targets)
    shapes = [f"{k} (file {tuple(v.shape)} vs model {tuple(targets[k].shape)})"
              for k, v in state.items() if k in targets and tuple(v.shape) != tuple(targets[k].shape)]
    return StateFit(targets, missing, unexpected, shapes)


def load_model_weights(model: nn.Module, path: PathLike, strict: bool = True) -> str:
    """Copy saved trainable weights into `model` (verified against `checksums.json`); returns the
    `.safetensors` file used.

    `path`: a checkpoint dir, a `.safetensors` file or a run dir (latest checkpoint).
    Strict (default): every trainable parameter must be in the file, every key of the file must
    be a parameter or buffer of the model, and shapes must match; otherwise
    `CheckpointMismatchError` names the first offending keys. Non-strict loads what fits.
    """
    ckpt = resolve_checkpoint(path)
    file = ckpt if ckpt.is_file() else ckpt / MODEL_FILE
    state = read_model_file(file)
    fit = state_fit(model, state)
    problems = []
    if fit.missing:
        problems.append(f"missing trainable keys: {first_items(fit.missing)}")
    if fit.unexpected:
        problems.append(f"unexpected keys: {first_items(fit.unexpected)}")
    if fit.shapes:
        problems.append(f"shape mismatches: {first_items(fit.shapes)}")
    if problems and strict:
        raise CheckpointMismatchError(f"{file} does not fit {type(unwrap_model(model)).__name__}: "
                                      + "; ".join(problems))
    if problems:
        logger.warning("%s: loading what fits; %s", file, "; ".join(problems))
    fit.copy(state)
    return str(file)
