"""Names and settings every extraction module shares: modalities, the default config, the YAML loader.

Light on purpose (no torch or transformers): the command line imports it to print `--help`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "extract" / "default.yaml"
MODALITIES: tuple[str, ...] = ("clip", "videomae", "hubert", "au", "transcript", "bert", "prosody", "flow", "scene")
AUDIO_MODALITIES = ("hubert", "transcript", "bert", "prosody")
# Modalities made from the CLIP frames sampled at visual.fps (scene: CLIP's zero-shot labels).
CLIP_FRAME_MODALITIES = ("clip", "scene")
FAILURES_FILE = "failures.jsonl"
EXTRACTOR_VERSION = "hero-extract-1"


def load_extract_config(path: str, options: Sequence[str] = ()) -> "DictConfig":
    """The extraction YAML with `--options` applied (unknown keys are an error naming the nearest one)."""
    from minigpt4.common.config import apply_options, load_yaml_with_includes

    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    cfg = load_yaml_with_includes(path)
    apply_options(cfg, list(options), source=str(path))
    return cfg


def bert_path(cfg: "DictConfig") -> str:
    """The BERT for the configured language (text.bert.path_by_language), else text.bert.path."""
    by_lang = cfg.text.bert.get("path_by_language") or {}
    lang = cfg.text.language
    return str(by_lang[lang]) if lang is not None and lang in by_lang else str(cfg.text.bert.path)

