"""Importers for data prepared for Emotion-LLaMA (README "Coming from Emotion-LLaMA").

- `emotion_llama_features`: its per-encoder folders of `<clip>.npy` vectors -> HERO feature files;
- `merr_annotations`: MERR label lists, captions and transcripts -> HERO annotation records;
- `sources`: the transcript CSV both read, and `SourceError` (file and line of a problem).

The command-line tools are `scripts/import_emotion_llama_features.py` and `scripts/import_merr.py`.
"""
from minigpt4.datasets.importers.sources import SourceError, Transcripts, read_transcripts

__all__ = ["SourceError", "Transcripts", "read_transcripts"]
