"""Datasets: HERODataset (a folder of feature files, `hero_dataset`), the per-sample `SampleBuilder`
(`sample_builder`) and the collater (`collate`)."""
from minigpt4.datasets.datasets.hero_dataset import (
    BATCH_KEYS,
    HERODataset,
    MissingFeaturesError,
    SampleBuilder,
    collate_hero,
    drop_modalities,
    without_training_dropout,
)

__all__ = ["BATCH_KEYS", "HERODataset", "MissingFeaturesError", "SampleBuilder", "collate_hero", "drop_modalities",
           "without_training_dropout"]
