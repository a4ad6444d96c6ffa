"""Names and orders shared by the data, the model and the tools (docs/ARCHITECTURE.md "Shared constants")."""
from __future__ import annotations

# Stack index of each modality in `video_features [5, T, max_dim]`. Fixed: see docs/ARCHITECTURE.md "A collated batch".
STACK_ORDER: tuple[str, ...] = ("motion", "audio", "au", "text", "visual")
MOTION, AUDIO, AU, TEXT, VISUAL = range(5)

# The six observation experts: the five modality Q-Formers plus the audio-visual synergy expert.
EXPERT_ORDER: tuple[str, ...] = STACK_ORDER + ("synergy",)
SYNERGY = 5

# Default key of each modality inside a feature file (docs/ARCHITECTURE.md "Feature files").
DEFAULT_FEATURE_KEYS: dict[str, str] = {
    "motion": "videomae",
    "audio": "hubert",
    "au": "au",
    "text": "bert",
    "visual": "clip",
}

# Model config key holding each modality's true feature dim (`model.*_dim`).
DIM_KEYS: dict[str, str] = {
    "motion": "video_dim",
    "audio": "audio_dim",
    "au": "au_dim",
    "text": "text_dim",
    "visual": "visual_dim",
}

# MER2023/2024's six discrete labels, the default label set.
DEFAULT_EMOTIONS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")

VIDEO_PLACEHOLDER = "<video><VideoHere></video>"
IMAGE_TOKEN = "<VideoHere>"
