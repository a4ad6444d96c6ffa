"""Webdataset tar shards of feature files, for datasets too big for one folder.

A shard holds, per clip, `<key>.json` (its annotation record, with `split`) and
`<key>.npz` (the feature file's bytes, unchanged, or `.safetensors`). Keys are running
numbers, because webdataset splits a member name at its first dot and video ids may have dots.

Reading splits the shard list deterministically: rank r of W takes shards[r::W], and worker
w of that rank's N DataLoader workers takes every N-th of those, so every clip is read
exactly once per epoch. Training shuffles the shard order per epoch with a seed shared by all
ranks. Only local files are read (no `pipe:`/URL openers: a config should not run commands).
"""
from __future__ import annotations

import json
import logging
import os
import random
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch.utils.data import IterableDataset, get_worker_info

from minigpt4.common.atomic_io import atomic_open, atomic_write_json
from minigpt4.datasets.annotations import Annotation, AnnotationError, order_splits, parse_record
from minigpt4.datasets.datasets.hero_dataset import MissingFeaturesError, SampleBuilder
from minigpt4.datasets.feature_io import FEATURE_SUFFIXES, find_feature_file, read_features, read_features_bytes

logger = logging.getLogger(__name__)

_MEMBER_SUFFIXES = tuple(s.lstrip(".") for s in FEATURE_SUFFIXES)


def expand_shards(pattern: Union[str, Sequence[str]]) -> list[str]:
    """Brace-expand a shard pattern (or a list of them); every shard must be a local file."""
    from braceexpand import braceexpand

    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    shards: list[str] = []
    for p in patterns:
        shards.extend(braceexpand(str(p)))
    if not shards:
        raise FileNotFoundError(f"shard pattern {pattern!r} expands to no files")
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(shards)} shards of {pattern!r} are not local files (first: {missing[:3]})"
        )
    return shards


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, or (0, 1) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def partition_shards(shards: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards rank `rank`'s worker `worker` reads: disjoint, covering, deterministic."""
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(f"bad partition rank={rank}/{world_size} worker={worker}/{num_workers}")
    if len(shards) < world_size:
        raise ValueError(
            f"{len(shards)} shard(s) cannot be split across {world_size} ranks (each needs at least one); "
            "repack with a smaller --shard_size"
        )
    return list(shards[rank::world_size])[worker::num_workers]


class HEROShardDataset(IterableDataset):
    """Streams the samples of one split from webdataset shards (same samples as HERODataset)."""

    def __init__(
        self,
        shards: Union[str, Sequence[str]],
        builder: SampleBuilder,
        split: str,
        *,
        filter_split: bool = True,
        skip_missing: bool = False,
        allow_pickle: bool = False,
        training: Optional[bool] = None,
        shuffle_shards: Optional[bool] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.pattern = shards
        self.shards = expand_shards(shards)
        self.builder = builder
        self.label_names = builder.label_names
        self.split = split
        self.filter_split = filter_split
        self.skip_missing = skip_missing
        self.allow_pickle = allow_pickle
        self.training = (split == "train") if training is None else bool(training)
        self.shuffle_shards = self.training if shuffle_shards is None else bool(shuffle_shards)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def expect_dims(self, dims: Mapping[str, int]) -> None:
        """Check every clip against the model's widths (`SampleBuilder.expect_dims`) as it streams."""
        self.builder.expect_dims(dims)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard_order(self) -> list[str]:
        """All shards, in this epoch's order (the same on every rank)."""
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(self.builder.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = distributed_rank_world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_partition(rank, world, worker, num_workers)

    def iter_partition(self, rank: int, world_size: int, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """The samples one (rank, worker) reads."""
        import webdataset as wds

        mine = partition_shards(self.shard_order(), rank, world_size, worker, num_workers)
        pipeline = wds.DataPipeline(wds.SimpleShardList(mine), wds.tarfile_to_samples())
        missing: list[str] = []
        for item in pipeline:
            url, key = item.get("__url__", "?"), item.get("__key__", "?")
            where = f"{url}:{key}"
            if "json" not in item:
                raise AnnotationError(where, None, "shard member without a .json annotation")
            try:
                raw = json.loads(item["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise AnnotationError(f"{where}.json", None, f"invalid JSON ({exc})") from exc
            rec = parse_record(raw, f"{where}.json", None)
            if self.filter_split and rec.split != self.split:
                continue
            suffix = next((s for s in _MEMBER_SUFFIXES if s in item), None)
            if suffix is None:
                if not self.skip_missing:
                    raise MissingFeaturesError(
                        f"{where} (video_id {rec.video_id!r}) has no feature member; repack it or set skip_missing: true"
                    )
                missing.append(rec.video_id)
                continue
            self.builder.check_annotation(rec)
            source = f"{where}.{suffix}"
            feat = read_features_bytes(
                item[suffix], suffix, source, max_dim=self.builder.max_dim, allow_pickle=self.allow_pickle, dtype=None
            )
            yield self.builder.build(rec, feat, source, training=self.training, epoch=self.epoch)
        if missing:
            msg = (
                f"{len(missing)} clip(s) of split {self.split!r} without a feature member in shards "
                f"{mine[:2]}{'...' if len(mine) > 2 else ''} (first: {missing[:5]}); skipped (skip_missing: true)"
            )
            warnings.warn(msg, stacklevel=2)
            logger.warning(msg)

    def collater(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        from minigpt4.datasets.datasets.hero_dataset import collate_hero

        return collate_hero(samples)


# ---------------------------------------------------------------------------- packing


def _write_shard(path: Path, members: list[dict[str, Any]]) -> None:
    """One tar written atomically (temp file beside it, then renamed)."""
    import webdataset as wds

    with atomic_open(path, "wb") as fh:
        writer = wds.TarWriter(fh, encoder=False, mtime=0.0)
        for sample in members:
            writer.write(sample)
        writer.close()


def pack_shards(
    records_by_split: Mapping[str, Sequence[Annotation]],
    features_dir: Union[str, Path],
    output_dir: Union[str, Path],
    shard_size: int = 1000,
    prefix: str = "hero",
    skip_missing: bool = False,
    max_dim: int = 1024,
) -> dict[str, str]:
    """Pack each split's feature files + records into `<prefix>-<split>-NNNNNN.tar` shards.

    Every feature file is validated with read_features first (pickled legacy files are
    refused: convert them), so shards only hold clean, safe files. Returns split -> brace
    pattern, also written to `<output_dir>/shards.json` with sample and shard counts.
    """
    from minigpt4.datasets.datasets.hero_dataset import report_missing

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    patterns: dict[str, str] = {}
    manifest: dict[str, Any] = {}
    counter = 0
    for split in order_splits(list(records_by_split)):
        records = records_by_split[split]
        found: list[tuple[Annotation, Path]] = []
        missing: list[str] = []
        for rec in records:
            path = find_feature_file(features_dir, rec.video_id)
            if path is None:
                missing.append(rec.video_id)
            else:
                found.append((rec, path))
        report_missing(missing, f"{features_dir} (split {split!r})", skip_missing, len(records))
        if not found:
            continue
        n_shards = (len(found) + shard_size - 1) // shard_size
        for s in range(n_shards):
            members = []
            for rec, path in found[s * shard_size : (s + 1) * shard_size]:
                read_features(path, max_dim=max_dim, allow_pickle=False)  # validate before packing
                record = rec.to_json()
                record["split"] = split
                members.append(
                    {
                        "__key__": f"{counter:09d}",
                        "json": json.dumps(record, ensure_ascii=False).encode("utf-8"),
                        path.suffix.lstrip("."): path.read_bytes(),
                    }
                )
                counter += 1
            _write_shard(out / f"{prefix}-{split}-{s:06d}.tar", members)
        last = f"{n_shards - 1:06d}"
        patterns[split] = str(out / f"{prefix}-{split}-{{000000..{last}}}.tar")
        manifest[split] = {"pattern": patterns[split], "num_shards": n_shards, "num_samples": len(found)}
    atomic_write_json(out / "shards.json", manifest)
    return patterns
