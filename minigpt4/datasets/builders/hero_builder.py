"""Builder "hero_dataset": the `datasets.hero_dataset` config section -> {split: dataset}.

Features come from `build_info.images.storage` (a folder; MiniGPT-4's key name) or, when
`build_info.shards` is set, from webdataset tar shards; labels from
`build_info.annotations.storage` (one JSON file with a `split` field per record, or a
mapping split -> file). Unset keys take the defaults of configs/datasets/hero_dataset.yaml;
a key that file does not define is an error naming the nearest valid key, and a value of the
wrong type or range is an error naming its key when the builder is made (before any file is read).
Split names must be train, val, test or listed in `splits` (a record's `trian` is an error).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import Dataset

from minigpt4.common.registry import registry
from minigpt4.common.schema import ConfigError, build, nearest
from minigpt4.datasets.annotations import SPLIT_ORDER, load_annotations, order_splits
from minigpt4.datasets.datasets.hero_dataset import HERODataset, SampleBuilder
from minigpt4.datasets.shards import HEROShardDataset

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "datasets" / "hero_dataset.yaml"
# Keys of MiniGPT-4 dataset configs that this feature dataset accepts and does not use.
_IGNORED_KEYS = frozenset({"vis_processor", "text_processor", "sample_ratio"})
_PREFIX = "datasets.hero_dataset."


@dataclass
class _ScalarKeys:
    """Types of the section's scalar keys (the mappings are checked by `SampleBuilder`)."""

    data_type: str = "features"
    max_dim: int = 1024
    skip_missing: bool = False
    allow_pickle: bool = False
    use_cot: bool = True
    splits: Optional[list[str]] = None
    seed: int = 42
    measured_evidence: bool = True
    au_fps: float = 1.0


def _check_keys(cfg: Any, ref: Any, prefix: str) -> None:
    """Raise KeyError for a key of `cfg` missing from `ref`, naming the nearest valid key."""
    if not isinstance(cfg, DictConfig) or not isinstance(ref, DictConfig):
        return
    valid = list(ref.keys())
    for key in cfg.keys():
        if prefix == "" and key in _IGNORED_KEYS:
            continue
        if key not in ref:
            near = nearest(str(key), [str(v) for v in valid])
            hint = f"; did you mean {prefix + near!r}?" if near else ""
            raise KeyError(
                f"unknown dataset config key {prefix + str(key)!r}{hint} (valid here: {sorted(map(str, valid))})"
            )
        sub_ref = ref.get(key)
        # free-form values (shards / storage mappings) are not checked below this level
        if isinstance(sub_ref, DictConfig) and key not in ("storage",):
            _check_keys(cfg.get(key), sub_ref, f"{prefix}{key}.")


def default_dataset_config() -> DictConfig:
    """The `datasets.hero_dataset` section of configs/datasets/hero_dataset.yaml."""
    return OmegaConf.load(DEFAULT_CONFIG).datasets.hero_dataset


def resolve_config(cfg: Union[DictConfig, Mapping[str, Any], None]) -> DictConfig:
    """Defaults merged with `cfg` after checking that every key of `cfg` exists."""
    base = default_dataset_config()
    if cfg is None:
        return base
    user = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    _check_keys(user, base, "")
    merged = OmegaConf.merge(base, user)
    # per-modality mappings may legitimately be replaced by a scalar (one value for all)
    for key in ("max_len", "modality_dropout", "frame_dropout"):
        if key in user and not isinstance(user[key], DictConfig):
            merged[key] = user[key]
    # shards replace the folder: the default (demo) paths must not leak into a sharded set-up
    user_info = user.get("build_info") or {}
    if user_info.get("shards") is not None:
        for part in ("images", "annotations"):
            if OmegaConf.select(user, f"build_info.{part}.storage", default=None) is None:
                merged.build_info[part].storage = None
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@registry.register_builder("hero_dataset")
class HEROBuilder:
    """Builds the HERO feature datasets of every configured split."""

    def __init__(self, cfg: Union[DictConfig, Mapping[str, Any], None] = None) -> None:
        self.config = resolve_config(cfg)
        self.check()

    def check(self) -> None:
        """Every value of the section, each error naming its key: a bad value must not cost a dataset build."""
        c = self.config
        build(_ScalarKeys, {k: _plain(c.get(k)) for k in ("data_type", "max_dim", "skip_missing", "allow_pickle",
                                                           "use_cot", "splits", "seed", "measured_evidence",
                                                           "au_fps")},
              _PREFIX, "dataset config", check=False)
        try:
            self.sample_builder()
        except ValueError as exc:
            raise ConfigError(f"dataset config: {_PREFIX.rstrip('.')}: {exc}") from None

    def known_splits(self) -> list[str]:
        """Split names the annotations may use: train, val, test and those listed in `splits`."""
        wanted = _plain(self.config.splits) or []
        wanted = [wanted] if isinstance(wanted, str) else [str(s) for s in wanted]
        return list(SPLIT_ORDER) + [s for s in wanted if s not in SPLIT_ORDER]

    def sample_builder(self) -> SampleBuilder:
        c = self.config
        return SampleBuilder(
            max_dim=int(c.max_dim),
            label_names=list(c.label_names),
            feature_keys=_plain(c.feature_keys),
            max_len=_plain(c.max_len),
            use_cot=bool(c.use_cot),
            modality_dropout=_plain(c.modality_dropout),
            frame_dropout=_plain(c.frame_dropout),
            seed=int(c.seed),
            measured_evidence=bool(c.measured_evidence),
            au_fps=float(c.au_fps),
        )

    def _splits(self, present: list[str]) -> list[str]:
        wanted = _plain(self.config.splits)
        if wanted is None:
            return present
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        absent = [s for s in wanted if s not in present]
        if absent:
            raise ValueError(f"splits {absent} requested but the annotations only have {present}")
        return wanted

    def build_datasets(self) -> dict[str, Dataset]:
        """{split: HERODataset (folder) or HEROShardDataset (shards)}."""
        c = self.config
        info = c.build_info
        ann_storage = _plain(info.annotations.storage)
        shards = _plain(info.get("shards"))
        if shards is not None:
            return self._build_from_shards(shards, ann_storage)
        if ann_storage is None:
            raise ValueError("set datasets.hero_dataset.build_info.annotations.storage (the labels JSON)")
        features_dir = _plain(info.images.storage)
        if features_dir is None:
            raise ValueError(
                "set datasets.hero_dataset.build_info.images.storage (the features folder) or build_info.shards"
            )
        by_split = load_annotations(ann_storage, self.known_splits())
        datasets: dict[str, Dataset] = {}
        for split in self._splits(list(by_split)):
            datasets[split] = HERODataset(
                by_split[split],
                features_dir,
                split=split,
                max_dim=int(c.max_dim),
                label_names=list(c.label_names),
                feature_keys=_plain(c.feature_keys),
                max_len=_plain(c.max_len),
                modality_dropout=_plain(c.modality_dropout),
                frame_dropout=_plain(c.frame_dropout),
                measured_evidence=bool(c.measured_evidence),
                au_fps=float(c.au_fps),
                skip_missing=bool(c.skip_missing),
                allow_pickle=bool(c.allow_pickle),
                use_cot=bool(c.use_cot),
                seed=int(c.seed),
            )
        return datasets

    def _build_from_shards(self, shards: Any, ann_storage: Any) -> dict[str, Dataset]:
        """Shards carry their own records. With a split -> pattern mapping each split reads
        its own shards; with one pattern each split filters the records by their `split`, and
        the splits come from `splits` or else from the annotations file (set explicitly: the
        dataset config's default paths do not apply once shards are set)."""
        c = self.config
        if isinstance(shards, Mapping):
            present = order_splits([str(s) for s in shards])
        elif _plain(c.splits) is not None:
            wanted = _plain(c.splits)
            present = [wanted] if isinstance(wanted, str) else list(wanted)
        elif ann_storage is not None:
            present = list(load_annotations(ann_storage, self.known_splits()))
        else:
            raise ValueError(
                "with a single build_info.shards pattern, set datasets.hero_dataset.splits or "
                "build_info.annotations.storage so the builder knows which splits to build"
            )
        datasets: dict[str, Dataset] = {}
        for split in self._splits(present):
            if isinstance(shards, Mapping):
                pattern, filter_split = shards[split], False
            else:
                pattern, filter_split = shards, True
            datasets[split] = HEROShardDataset(
                pattern,
                self.sample_builder(),
                split,
                filter_split=filter_split,
                skip_missing=bool(c.skip_missing),
                allow_pickle=bool(c.allow_pickle),
            )
        return datasets
