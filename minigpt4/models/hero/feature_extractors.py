"""Re-export of the offline encoders, whose code lives in `minigpt4/extraction/encoders.py`."""
from minigpt4.extraction.encoders import (
    PRECISIONS,
    BertTextEncoder,
    ClipPreprocessor,
    CLIPFrameEncoder,
    HuBERTEncoder,
    ImagePreprocessor,
    LogMelPreprocessor,
    VideoMAEClipEncoder,
    WaveformPreprocessor,
    WhisperTranscriber,
    autocast_dtype,
    is_silent,
    resolve_device,
)

__all__ = [
    "PRECISIONS", "BertTextEncoder", "ClipPreprocessor", "CLIPFrameEncoder", "HuBERTEncoder", "ImagePreprocessor",
    "LogMelPreprocessor", "VideoMAEClipEncoder", "WaveformPreprocessor", "WhisperTranscriber", "autocast_dtype",
    "is_silent", "resolve_device",
]
