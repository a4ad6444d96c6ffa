"""YAML run configs: `includes:`, schema defaults, checked `--options` overrides, atomic saving.

A config has `model`, `datasets` and `run` sections (README, "Configuration"). Loading order:

1. every file named in the top-level `includes:` list (relative to the including file, else
   to the repository root), merged in order, each one's own includes first;
2. the file's own keys on top;
3. the schema's defaults (`minigpt4/common/schema.py`) under anything the files leave unset in
   `run`, and in `model` when its `arch` has a schema;
4. the `--options key.path=value` overrides.

Every file's `run` and `model` keys are checked against the schema (a typo names the file and
the nearest key), and so is every override; the merged values are then type- and range-checked.
A key below one whose value is `null` is accepted in an override: null marks a slot the config
leaves open (e.g. a split -> shards mapping). Values are parsed as YAML scalars (ints, floats
such as `1e-4`, bools, null, `[lists]`, `{mappings}`); a value for a string key stays the
literal text.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from minigpt4.common.atomic_io import atomic_write_text
from minigpt4.common.schema import MODEL_SCHEMAS, ConfigError, RunConfig, build, check_keys, nearest, run_defaults

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("model", "datasets", "run")

# Every run key the runner reads, with its default (written once, in schema.RunConfig). Listed
# here so `--options run.<key>=...` can be checked against it even when a file leaves it out.
RUN_DEFAULTS: dict[str, Any] = run_defaults()


# ------------------------------------------------------------------------------ loading
def _read_yaml(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except Exception as exc:  # yaml errors carry line numbers; keep them
        raise ConfigError(f"cannot parse config {path}: {exc}") from exc
    if node is None:
        node = OmegaConf.create({})
    if not isinstance(node, DictConfig):
        raise ConfigError(f"config {path} must be a mapping at the top level, got a {type(node).__name__}")
    return node


def _resolve_include(name: str, including: Path) -> Path:
    candidates = [Path(name)] if Path(name).is_absolute() else [including.parent / name, REPO_ROOT / name]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{including}: included file {name!r} not found (tried {tried})")


def load_yaml_with_includes(path: Union[str, Path], _stack: Tuple[Path, ...] = (),
                            files: Optional[List[Tuple[Path, DictConfig]]] = None) -> DictConfig:
    """One YAML file with its `includes:` merged underneath it (recursively, cycles rejected).

    `files`, when given, collects every file read with its own keys (for errors that name the file).
    """
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in _stack + (path,))
        raise ConfigError(f"include cycle: {chain}")
    node = _read_yaml(path)
    includes = node.pop("includes", None) if "includes" in node else None
    if includes is None:
        includes = []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, (list, ListConfig)):
        raise ConfigError(f"{path}: `includes` must be a list of file paths")
    parts = [load_yaml_with_includes(_resolve_include(str(inc), path), _stack + (path,), files) for inc in includes]
    if files is not None:
        files.append((path, node))
    return OmegaConf.merge(*parts, node) if parts else node


def load_config(cfg_path: Union[str, Path], options: Optional[Sequence[str]] = None) -> DictConfig:
    """Load a run config -> DictConfig: includes, then schema defaults under what the files leave
    unset, then `options` overrides; every file's keys and the final values are checked
    against the schema (`minigpt4/common/schema.py`)."""
    files: List[Tuple[Path, DictConfig]] = []
    cfg = load_yaml_with_includes(cfg_path, files=files)
    for section in SECTIONS:
        if section in cfg and cfg[section] is not None and not isinstance(cfg[section], DictConfig):
            raise ConfigError(f"{cfg_path}: section `{section}` must be a mapping")
    model = cfg.get("model")
    schema = MODEL_SCHEMAS.get(str(model.get("arch"))) if isinstance(model, DictConfig) else None
    for path, node in files:  # a misspelled key in a file is an error naming that file
        check_keys(node.get("run"), RunConfig, str(path), "run.")
        if schema is not None:
            check_keys(node.get("model"), schema, str(path), "model.")
    run = cfg.get("run") or {}
    cfg["run"] = OmegaConf.merge(OmegaConf.create(RUN_DEFAULTS), run)
    if schema is not None:
        cfg["model"] = OmegaConf.merge(OmegaConf.create(dataclasses.asdict(schema())), model)
    apply_options(cfg, options or [], source=str(cfg_path))
    check_config(cfg, str(cfg_path))
    return cfg


def check_config(cfg: DictConfig, where: str = "config") -> None:
    """Types and values of the `run` section and of a model section with a schema (errors name the key)."""
    build(RunConfig, cfg.get("run"), "run.", where)
    model = cfg.get("model")
    schema = MODEL_SCHEMAS.get(str(model.get("arch"))) if isinstance(model, DictConfig) else None
    if schema is not None:
        build(schema, model, "model.", where)


# ---------------------------------------------------------------------------- overrides
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """YAML scalar/list/mapping parsing, plus floats like `1e-4` that YAML 1.1 reads as text."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value == text.strip() and _NUMBER.match(value):  # unquoted 1e-4
        return float(value)
    return value


def split_options(options: Iterable[str]) -> List[Tuple[str, str]]:
    """`["a.b=1", "c=x=y"]` -> `[("a.b", "1"), ("c", "x=y")]`; a token without `=` is an error."""
    pairs = []
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--options expects key.path=value, got {opt!r}")
        key, raw = opt.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--options entry {opt!r} has an empty key")
        pairs.append((key, raw))
    return pairs


def flatten_keys(node: Any, prefix: str = "") -> List[str]:
    """Every dotted key path in a config, sections included (`run`, `run.seed`, ...)."""
    keys: List[str] = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            keys.extend(flatten_keys(node._get_node(k), full) if not OmegaConf.is_missing(node, k) else [])
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            full = f"{prefix}.{i}"
            keys.append(full)
            keys.extend(flatten_keys(node._get_node(i), full))
    return keys


def _unknown_key_error(cfg: DictConfig, key: str, parent: str, source: str) -> ConfigError:
    close = nearest(key, flatten_keys(cfg), cutoff=0.5)
    if close:
        hint = f"did you mean {close!r}?"
    else:
        node = OmegaConf.select(cfg, parent) if parent else cfg
        siblings = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
        hint = f"valid keys under {parent or 'the top level'!r}: {', '.join(siblings) or '(none)'}"
    return ConfigError(f"unknown config key {key!r} (in --options for {source}); {hint}")


def _open_slots(cfg: DictConfig) -> set[str]:
    """Keys whose value is null: the config leaves what goes below them to the user."""
    return {k for k in flatten_keys(cfg) if OmegaConf.select(cfg, k, throw_on_missing=False) is None}


def _check_key(cfg: DictConfig, key: str, source: str, open_slots: set[str] = frozenset()) -> Tuple[bool, Any]:
    """Walk `key`; return (exists, current value). Unknown keys raise, except below a null."""
    node: Any = cfg
    parts = key.split(".")
    if any(".".join(parts[:d]) in open_slots for d in range(1, len(parts))):
        return False, OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        if node is None:  # an open slot: the config leaves this subtree to the user
            return False, None
        if isinstance(node, DictConfig):
            if part not in node:
                raise _unknown_key_error(cfg, key, parent, source)
            node = node[part] if not OmegaConf.is_missing(node, part) else None
        elif isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--options {key}: {parent!r} is a list of {len(node)} items; "
                                  f"{part!r} is not a valid index ({source})")
            node = node[int(part)]
        else:
            raise ConfigError(f"--options {key}: {parent!r} is a value ({node!r}), not a section ({source})")
    return True, node


def _coerce(key: str, raw: str, value: Any, current: Any, source: str) -> Any:
    if isinstance(current, (DictConfig, ListConfig)) or current is None:
        if isinstance(current, DictConfig) and not isinstance(value, dict) and value is not None:
            raise ConfigError(f"--options {key}={raw}: {key!r} is a section; set its keys "
                              f"(e.g. {key}.<name>=...) or give a {{mapping}} ({source})")
        return value
    if isinstance(current, bool):  # a list passes on to the schema (a key may be true, false or a list)
        if not isinstance(value, (bool, list)):
            raise ConfigError(f"--options {key}={raw}: expects true or false ({source})")
        return value
    if isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if value is None:
                return None
            raise ConfigError(f"--options {key}={raw}: expects a number, got {raw!r} ({source})")
        return float(value) if isinstance(current, float) else value
    if isinstance(current, str) and isinstance(value, (int, float, bool)):
        return raw.strip()  # keep text keys as the literal text, e.g. a folder named 2024
    return value


def apply_options(cfg: DictConfig, options: Sequence[str], source: str = "config") -> DictConfig:
    """Apply `key.path=value` overrides in place (checked, type-aware); returns `cfg`."""
    open_slots = _open_slots(cfg)  # fixed before any override, so a slot stays open for all of them
    for key, raw in split_options(options):
        _, current = _check_key(cfg, key, source, open_slots)
        value = _coerce(key, raw, parse_value(raw), current, source)
        OmegaConf.update(cfg, key, value, merge=isinstance(value, dict) and isinstance(current, DictConfig),
                         force_add=True)
    return cfg


# ------------------------------------------------------------------------------ saving
def save_config(cfg: DictConfig, path: Union[str, Path]) -> Path:
    """Write the resolved config as YAML atomically (temp file in the same folder + rename)."""
    return atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


# --------------------------------------------------------------------------------- CLI
def add_config_args(parser: argparse.ArgumentParser, require_cfg: bool = True) -> argparse.ArgumentParser:
    """Add `--cfg-path` and `--options` (shared by every entry point)."""
    parser.add_argument("--cfg-path", "--cfg_path", dest="cfg_path", required=require_cfg,
                        help="YAML config with model / datasets / run sections")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. run.max_epoch=3 run.init_lr=1e-4 "
                             "(unknown keys are an error)")
    return parser
