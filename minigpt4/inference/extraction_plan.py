"""How inference turns new videos into features: the extraction config and its check against the model.

Why: a model only understands features made exactly as its training features were. The run's
`extraction.json` (written at train start, `minigpt4/runners/extraction_record.py`) records
the settings each modality was made with; `plan_from_run` rebuilds the extraction config from
configs/extract/default.yaml plus those settings, and checks the rebuild reproduces every one.
An explicit extraction config (`--extract-config FILE`) replaces that; `--extract-options
k=v ...` apply on top of either. `check_encoder_dims` then compares what each encoder outputs
(read from its Hugging Face config, no weights loaded) with the model's `model.*_dim`, so a
wrong encoder fails before any video is decoded.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from minigpt4.common.modalities import DIM_KEYS

if TYPE_CHECKING:
    from omegaconf import DictConfig

logger = logging.getLogger(__name__)

# (modality, setting) as `meta_settings` records it -> the extraction config key it comes from
SETTING_KEYS: dict[tuple[str, str], str] = {
    ("clip", "path"): "visual.path", ("clip", "fps"): "visual.fps", ("clip", "output"): "visual.output",
    ("videomae", "path"): "motion.path", ("videomae", "fps"): "motion.fps",
    ("hubert", "path"): "audio.path", ("hubert", "num_layers"): "audio.num_layers", ("hubert", "fps"): "audio.fps",
    ("hubert", "segment_seconds"): "decode.segment_seconds",
    ("au", "min_confidence"): "au.min_confidence", ("au", "fps"): "au.fps",
    ("bert", "path"): "text.bert.path", ("bert", "max_length"): "text.bert.max_length",
}
_SPEECH = {"whisper": "text.whisper.path", "language": "text.language", "task": "text.whisper.task",
           "max_new_tokens": "text.whisper.max_new_tokens", "num_beams": "text.whisper.num_beams",
           "silence_dbfs": "text.whisper.silence_dbfs", "segment_seconds": "decode.segment_seconds"}
for _m in ("transcript", "bert"):
    SETTING_KEYS.update({(_m, k): v for k, v in _SPEECH.items() if (_m, k) not in SETTING_KEYS})
# the measured signals (prosody, optical flow, CLIP scene labels)
SETTING_KEYS.update({("prosody", k): f"prosody.{k}" for k in ("fps", "fmin", "fmax", "resolution", "speech_dbfs",
                                                               "speech_bridge")})
SETTING_KEYS.update({("prosody", "segment_seconds"): "decode.segment_seconds", ("flow", "fps"): "flow.fps",
                     ("flow", "short_side"): "flow.short_side", ("flow", "method"): "flow.method",
                     ("scene", "path"): "visual.path", ("scene", "fps"): "visual.fps",
                     ("scene", "prompts"): "visual.scene_prompts"})


class ExtractionMismatchError(ValueError):
    """The extraction config makes features the model cannot read (another width than `model.*_dim`)."""


@dataclass
class ExtractionPlan:
    """The extraction config for new videos, the modalities to extract, and where it came from."""

    cfg: "DictConfig"
    modalities: tuple[str, ...]
    origin: str  # the run's extraction.json, or the --extract-config file
    differs: list[str] = field(default_factory=list)  # settings that differ from the training features'


def _typed(text: str, current: Any) -> Any:
    """A recorded setting (a string, numbers as `repr(float)`) as the config value it came from."""
    from omegaconf import ListConfig

    if text == "None":
        return None
    if isinstance(current, (list, ListConfig)):  # recorded as JSON (e.g. scene prompts)
        return json.loads(text)
    if isinstance(current, bool):
        return text == "True"
    if isinstance(current, int):
        return int(float(text))
    if isinstance(current, float):
        return float(text)
    if current is None:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def config_from_settings(settings: Mapping[str, Mapping[str, str]], base: Optional[Union[str, Path]] = None) -> "DictConfig":
    """configs/extract/default.yaml (or `base`) with every recorded setting put back in its key.

    Raises ValueError naming the first setting the config cannot reproduce (a setting this
    version does not know, or one whose value does not read back the same)."""
    from omegaconf import OmegaConf

    from minigpt4.extraction.config import DEFAULT_CONFIG, load_extract_config
    from minigpt4.extraction.rerun import modality_settings

    cfg = load_extract_config(str(base or DEFAULT_CONFIG))
    for modality, values in settings.items():
        for key, text in values.items():
            target = SETTING_KEYS.get((modality, key))
            if target is None:
                continue  # checked below: it may equal this version's default
            OmegaConf.update(cfg, target, _typed(str(text), OmegaConf.select(cfg, target)), merge=False,
                             force_add=True)
    if "bert" in settings and "path" in settings["bert"]:
        cfg.text.bert.path_by_language = {}  # the recorded path is the one used, whatever the language
    rebuilt = modality_settings(cfg, list(settings))
    for modality, values in settings.items():
        if modality not in rebuilt:
            raise ValueError(f"features of modality {modality!r} cannot be made by this version's extractor")
        for key, text in values.items():
            if key in rebuilt[modality] and rebuilt[modality][key] != str(text):
                raise ValueError(f"setting {modality}.{key} = {text} cannot be reproduced "
                                 f"(the rebuilt config gives {rebuilt[modality][key]})")
    return cfg


def settings_diff(cfg: "DictConfig", settings: Mapping[str, Mapping[str, str]]) -> list[str]:
    """`modality.key: training -> now` for each recorded setting `cfg` makes differently."""
    from minigpt4.extraction.rerun import modality_settings

    now = modality_settings(cfg, list(settings))
    return [f"{m}.{k}: {v} -> {now[m][k]}" for m, values in settings.items() if m in now
            for k, v in values.items() if k in now[m] and now[m][k] != str(v)]


def plan_from_run(run_dir: Union[str, Path], extract_config: Optional[Union[str, Path]] = None,
                  extract_options: Sequence[str] = ()) -> Optional[ExtractionPlan]:
    """The extraction plan of a run: from `extract_config` when given, else rebuilt from the run's
    extraction.json; None when neither exists (the run can then only read feature files)."""
    from minigpt4.common.config import apply_options
    from minigpt4.extraction.config import MODALITIES, load_extract_config
    from minigpt4.runners.extraction_record import EXTRACTION_FILE, read_extraction_settings

    record = read_extraction_settings(run_dir)
    settings = (record or {}).get("settings") or {}
    if extract_config is not None:
        cfg = load_extract_config(str(extract_config), list(extract_options))
        modalities = tuple(str(m) for m in cfg.extract.modalities)
        origin = str(extract_config)
    elif record is not None:
        where = Path(run_dir) / EXTRACTION_FILE
        try:
            cfg = config_from_settings(settings)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}; pass an extraction config (--extract-config) instead") from None
        apply_options(cfg, list(extract_options), source="--extract-options")
        recorded = [str(m) for m in record.get("modalities") or settings]
        modalities = tuple(m for m in MODALITIES if m in recorded)
        origin = str(where)
    else:
        return None
    bad = [m for m in modalities if m not in MODALITIES]
    if bad:
        raise ValueError(f"{origin}: unknown modality {bad[0]!r}; choose from {', '.join(MODALITIES)}")
    if extract_options:
        origin += " with --extract-options " + " ".join(extract_options)
    differs = settings_diff(cfg, settings) if settings else []
    if differs:
        logger.warning("extracting with settings other than the training features': %s", "; ".join(differs[:6]))
    return ExtractionPlan(cfg=cfg, modalities=modalities, origin=origin, differs=differs)


def _hf_config(cls_name: str, path: str, what: str) -> Any:
    import transformers

    try:
        return getattr(transformers, cls_name).from_pretrained(path)
    except Exception as exc:  # OSError (not found / offline), ValueError (not that kind of model)
        raise ExtractionMismatchError(f"cannot read the {what} encoder's config from {path!r}: "
                                      f"{type(exc).__name__}: {exc}") from None


def encoder_widths(cfg: "DictConfig", modalities: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Feature file key -> (width its encoder outputs, where that width comes from), from the
    encoders' Hugging Face configs as the extractor loads them (no weights read)."""
    from minigpt4.extraction.action_units import AU_DIM
    from minigpt4.extraction.config import bert_path

    out: dict[str, tuple[int, str]] = {}
    if "clip" in modalities:
        c = _hf_config("CLIPVisionConfig", str(cfg.visual.path), "visual (CLIP)")
        pooled = str(cfg.visual.output) == "pooled"
        out["clip"] = (int(c.hidden_size if pooled else c.projection_dim),
                       f"visual.path={cfg.visual.path} {'hidden_size' if pooled else 'projection_dim'} "
                       f"(visual.output={cfg.visual.output})")
    if "videomae" in modalities:
        c = _hf_config("VideoMAEConfig", str(cfg.motion.path), "motion (VideoMAE)")
        out["videomae"] = (int(c.hidden_size), f"motion.path={cfg.motion.path} hidden_size")
    if "hubert" in modalities:
        c = _hf_config("HubertConfig", str(cfg.audio.path), "audio (HuBERT)")
        out["hubert"] = (int(c.hidden_size), f"audio.path={cfg.audio.path} hidden_size")
    if "bert" in modalities:
        path = bert_path(cfg)
        c = _hf_config("AutoConfig", path, "text (BERT)")
        out["bert"] = (int(c.hidden_size), f"BERT {path} hidden_size")
    if "au" in modalities:
        out["au"] = (AU_DIM, "OpenFace action units")
    return out


def check_encoder_dims(plan: ExtractionPlan, feature_keys: Mapping[str, Optional[str]],
                       model_dims: Mapping[str, int]) -> dict[str, int]:
    """Raise ExtractionMismatchError when an encoder the model reads outputs another width than
    its `model.*_dim`; returns the checked widths (modality -> width).

    `feature_keys`: modality -> feature file key (the run's dataset config); `model_dims`:
    modality -> `model.*_dim`. Keys no encoder of the plan writes are not checked.
    """
    widths = encoder_widths(plan.cfg, plan.modalities)
    checked, wrong = {}, []
    for modality, key in feature_keys.items():
        if key is None or key not in widths or modality not in model_dims:
            continue
        width, what = widths[key]
        checked[modality] = width
        if width != int(model_dims[modality]):
            wrong.append(f"{key} features would be {width} wide ({what}) but the model reads "
                         f"model.{DIM_KEYS[modality]} = {model_dims[modality]}")
    if wrong:
        raise ExtractionMismatchError(f"extraction config {plan.origin} does not fit the model: " + "; ".join(wrong)
                                      + ". Use the encoders the run was trained with (its extraction.json), "
                                        "or fix --extract-config / --extract-options")
    return checked
