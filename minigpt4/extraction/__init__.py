"""Offline feature extraction: raw videos -> one HERO feature file per video.

Kept import-free (no torch, no transformers at import time) so `--help` and the AU/resampling
helpers stay light. Layers: this package may import `minigpt4.common` and `minigpt4.datasets`
(the feature file writer), never `minigpt4.models`, `minigpt4.runners` or `minigpt4.tasks`.
The command line is `minigpt4.extraction.cli.main` (`scripts/extract_features.py`).
"""
