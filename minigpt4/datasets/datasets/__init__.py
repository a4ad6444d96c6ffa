"""Datasets: HERODataset (a folder of feature files) and its collater."""
from minigpt4.datasets.datasets.hero_dataset import (
    BATCH_KEYS,
    HERODataset,
    MissingFeaturesError,
    SampleBuilder,
    collate_hero,
    drop_modalities,
)

__all__ = ["BATCH_KEYS", "HERODataset", "MissingFeaturesError", "SampleBuilder", "collate_hero", "drop_modalities"]
