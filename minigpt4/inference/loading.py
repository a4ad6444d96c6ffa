"""A trained run, loaded once for inference: its config, the model with its weights, the sample builder.

Why this path: the model is built from the run's own `config.yaml` exactly as `hero-eval` builds it
(`runners.components.build_model` shares `build_components`' set-up and `load_weights`' checks),
but no dataset is built, so the run's training corpus need not exist here. Clips become samples
through the run's own dataset section (`HEROBuilder.sample_builder`), so feature keys, widths,
`max_len`, masks, transcripts and measured evidence are handled as in training and evaluation.
The head's temperature comes from the run's `calibration.json` when training (`run.calibrate`) or
`hero-eval --calibrate` fitted one for this checkpoint (1.0 otherwise, or with `calibrated=False`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"


@dataclass
class LoadedRun:
    """Everything inference keeps of a run (the model in eval mode on `device`)."""

    run_dir: Path
    checkpoint: Path
    cfg: Any  # the run's config (DictConfig)
    model: Any  # nn.Module with `generate` and `label_names`
    device: Any  # torch.device
    amp_dtype: Any  # autocast dtype or None (the run's `run.amp` on this device)
    builder: Any  # SampleBuilder of the run's dataset section
    label_names: list[str]
    model_dims: dict[str, int]  # modality -> model.*_dim
    head_temperature: float = 1.0  # from calibration.json; scales the reported confidence only


def _dataset_section(cfg: Any, source: Path) -> Any:
    """The run's HERO feature dataset section (the first one, as training reads them all alike)."""
    from minigpt4.common.registry import registry
    from minigpt4.datasets.builders.hero_builder import HEROBuilder

    for name, section in (cfg.get("datasets") or {}).items():
        builder_cls = registry.get_builder_class(name)
        if builder_cls is not None and issubclass(builder_cls, HEROBuilder):
            return builder_cls(section)
    raise ValueError(f"{source}: no HERO feature dataset section (datasets.hero_dataset); "
                     "inference reads clips the way that section says")


def find_run(path: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None) -> tuple[Path, Path]:
    """(run folder, checkpoint) for `path` (a run folder or a checkpoint folder inside one) and an
    optional explicit `checkpoint`; a run folder gives its best checkpoint by validation, else its latest."""
    from minigpt4.common.checkpoint import resolve_checkpoint
    from minigpt4.evaluation.records import run_dir_of

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run folder not found: {path}")
    ckpt = resolve_checkpoint(checkpoint if checkpoint is not None else path, prefer_best=True)
    run_dir = run_dir_of(path)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG_FILE}; give a HERO run folder (what hero-train writes) "
                                "or a checkpoint folder inside one")
    return run_dir, ckpt


@dataclass
class RunView:
    """What a run's files say, before any model is built: its folder, checkpoint, config, the
    sample builder of its dataset section, labels and the model's feature widths."""

    run_dir: Path
    checkpoint: Path
    cfg: Any
    builder: Any
    label_names: list[str]
    model_dims: dict[str, int]


def read_run(path: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None) -> RunView:
    """The run's config.yaml, checked, and what inference needs from it (no weights read)."""
    import minigpt4
    from minigpt4.common.config import load_config
    from minigpt4.common.modalities import STACK_ORDER
    from minigpt4.models.hero.observation_experts import modality_dims

    run_dir, ckpt = find_run(path, checkpoint)
    cfg_path = run_dir / CONFIG_FILE
    cfg = load_config(cfg_path)
    minigpt4.setup_registry()
    builder = _dataset_section(cfg, cfg_path).sample_builder()
    dims = dict(zip(STACK_ORDER, modality_dims(cfg.get("model"))))
    builder.expect_dims(dims)  # a feature file of another width is an error naming it, as in training
    labels = [str(label) for label in (cfg.model.get("label_names") or builder.label_names)]
    if [label.lower() for label in labels] != [label.lower() for label in builder.label_names]:
        raise ValueError(f"{cfg_path}: model.label_names {labels} differ from the dataset's label_names "
                         f"{builder.label_names}")
    return RunView(run_dir=run_dir, checkpoint=Path(ckpt), cfg=cfg, builder=builder, label_names=labels,
                   model_dims=dims)


def load_run(view: RunView, device: str = "auto", calibrated: bool = True) -> LoadedRun:
    """Build the run's model from its config (as hero-eval does), load the checkpoint, move it to
    `device`; with `calibrated`, apply the temperature the run's calibration.json holds for it."""
    from minigpt4.common.dist_utils import resolve_device
    from minigpt4.evaluation.temperature import load_temperature
    from minigpt4.runners.components import build_model, load_weights
    from minigpt4.runners.optimizers import resolve_amp

    torch_device = resolve_device(device)
    model = build_model(view.cfg)
    labels = [str(label) for label in getattr(model, "label_names", view.label_names)]
    loaded = load_weights(model, view.checkpoint, view.cfg, str(view.run_dir / CONFIG_FILE))
    model.to(torch_device).eval()
    temperature = load_temperature(view.run_dir, view.checkpoint) if calibrated else None
    if temperature is not None:
        model.head_temperature = temperature
    amp_dtype, _ = resolve_amp(view.cfg.run.get("amp", "auto"), torch_device)
    logger.info("inference with %s on %s%s", loaded, torch_device,
                "" if temperature is None else f", head confidence at temperature {temperature:.4f} (calibration.json)")
    return LoadedRun(run_dir=view.run_dir, checkpoint=view.checkpoint, cfg=view.cfg, model=model, device=torch_device,
                     amp_dtype=amp_dtype, builder=view.builder, label_names=labels, model_dims=view.model_dims,
                     head_temperature=float(getattr(model, "head_temperature", 1.0)))
