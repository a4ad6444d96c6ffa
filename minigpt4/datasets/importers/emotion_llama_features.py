"""Emotion-LLaMA's pre-extracted features (one `<clip>.npy` per clip in a folder per encoder) ->
HERO feature files (one `<clip>.npz` per clip holding every modality).

Emotion-LLaMA's loaders read `<root>/<folder>/<clip>.npy` with `np.load` and add a frame axis
to a 1-D vector, so a file holds an utterance-level `[D]` or `[1, D]` vector (a `[T, D]`
sequence is kept as T frames). Each folder is mapped to one of HERO's modalities and written
under a feature key: HERO's own key where the encoder is the one HERO extracts (HuBERT ->
`hubert`, VideoMAE -> `videomae`), the encoder's name otherwise (`facemae`), so a file does not
claim to hold CLIP features it does not hold; a folder not known here gets HERO's key for its
modality unless `FOLDER=MODALITY:KEY` names one (an EVA folder: `=visual:eva`). The `--options`
line the importer prints points `feature_keys` at keys that are not HERO's.

A clip absent from a folder is written without that modality (and the reason in
`meta_absent`): HERO masks an absent modality, while a zero vector would be read as a
measurement. A file that cannot be used (unreadable, pickled, not 1-/2-D, NaN/Inf, another
width than the folder's other files) skips its clip and is reported; the others go on.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from minigpt4.common.atomic_io import atomic_write_json
from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS, DIM_KEYS, STACK_ORDER
from minigpt4.datasets.feature_io import FeatureFileError, write_features
from minigpt4.datasets.importers.sources import SourceError, Transcripts

PathLike = Union[str, "os.PathLike[str]"]

# Emotion-LLaMA's folder names (MER2023 release, then the MER2024 code's) -> (modality, key).
# The face MAE (a masked autoencoder on face crops, Emotion-LLaMA's "local" encoder) is the
# face's appearance: HERO's visual expert (the report's Visual line), not the AU expert, which
# reads measured action units and keeps its slot for them.
KNOWN_FOLDERS: dict[str, tuple[str, str]] = {
    "HL-UTT": ("audio", "hubert"),
    "HL_23_UTT": ("audio", "hubert"),
    "maeV_399_UTT": ("motion", "videomae"),
    "maeVideo_399_23_UTT": ("motion", "videomae"),
    "mae_340_UTT": ("visual", "facemae"),
    "mae_340_23_UTT": ("visual", "facemae"),
}
SOURCE = "emotion-llama"
REPORT_NAME = "import_report.json"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class FolderMap:
    """One input folder, the HERO modality it feeds and the key it is written under."""

    folder: Path
    modality: str
    key: str

    @property
    def name(self) -> str:
        return self.folder.name


def _modality(text: str, item: str) -> str:
    """A stack name (`audio`) or a default feature key (`hubert`) -> the stack name."""
    by_key = {k: m for m, k in DEFAULT_FEATURE_KEYS.items()}
    if text in STACK_ORDER:
        return text
    if text in by_key:
        return by_key[text]
    raise ValueError(f"--map {item!r}: {text!r} is not a HERO modality; use one of {list(STACK_ORDER)} "
                     f"(or a feature key: {sorted(by_key)})")


def parse_maps(items: Sequence[str], root: PathLike = ".") -> list[FolderMap]:
    """`FOLDER=MODALITY[:KEY]` items (FOLDER relative to `root`) -> checked FolderMaps.

    KEY defaults to the known folder's key, else HERO's key for the modality. One folder per
    modality: two would need two experts."""
    maps: list[FolderMap] = []
    for item in items:
        folder, sep, target = item.rpartition("=")
        if not sep or not folder or not target:
            raise ValueError(f"--map {item!r}: expected FOLDER=MODALITY[:KEY], e.g. HL-UTT=audio")
        modality_text, _, key = target.partition(":")
        modality = _modality(modality_text.strip(), item)
        path = Path(root) / folder
        known = KNOWN_FOLDERS.get(path.name)
        key = key.strip() or (known[1] if known and known[0] == modality else DEFAULT_FEATURE_KEYS[modality])
        maps.append(FolderMap(path, modality, key))
    return check_maps(maps)


def default_maps(root: PathLike = ".") -> list[FolderMap]:
    """The known Emotion-LLaMA folders found under `root` (first of each modality)."""
    maps: list[FolderMap] = []
    for name, (modality, key) in KNOWN_FOLDERS.items():
        if (Path(root) / name).is_dir() and all(m.modality != modality for m in maps):
            maps.append(FolderMap(Path(root) / name, modality, key))
    return check_maps(maps)


def check_maps(maps: Sequence[FolderMap]) -> list[FolderMap]:
    """Folders exist; keys are plain names; no modality, key or folder name twice (HERO has one
    expert per modality, and a file one array per key)."""
    for m in maps:
        if not m.folder.is_dir():
            raise ValueError(f"{m.folder}: not a folder")
        if not m.key.isidentifier() or m.key == "transcript" or m.key.startswith("meta_"):
            raise ValueError(f"{m.name}: feature key {m.key!r} must be a plain name (not transcript / meta_*)")
    for what in ("modality", "key", "name"):
        values = [getattr(m, what) for m in maps]
        for value in values:
            if values.count(value) > 1:
                names = [m.name for m in maps if getattr(m, what) == value]
                raise ValueError(f"{'folder' if what == 'name' else what} {value!r} is mapped twice "
                                 f"({', '.join(names)}): map one folder per modality")
    return list(maps)


def _header(path: Path) -> Optional[tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype from an .npy header without reading the data (None if unreadable)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
    except (OSError, ValueError, EOFError):
        return None
    return tuple(shape), dtype


def folder_dim(files: Sequence[Path]) -> tuple[Optional[int], dict[int, int]]:
    """(the width most of the folder's 1-/2-D files have, count per width seen). A file of
    another width is then the odd one out: found from the folder, not from whichever file
    happens to be read first."""
    widths: Counter[int] = Counter()
    for path in files:
        head = _header(path)
        if head is not None and not head[1].hasobject and len(head[0]) in (1, 2) and head[0][-1] > 0:
            widths[int(head[0][-1])] += 1
    if not widths:
        return None, {}
    return widths.most_common(1)[0][0], dict(sorted(widths.items()))


def load_vector(path: Path, dim: Optional[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """(one clip's array as `[T, D]`, its shape in the file): a `[D]` vector is one frame.
    Never unpickles; raises SourceError naming the file and the problem."""
    head = _header(path)
    if head is None:
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise SourceError(path, f"cannot read ({exc.strerror or exc})") from exc
        if magic == b"PK\x03\x04":
            raise SourceError(path, "an .npz archive, not a single .npy array")
        raise SourceError(path, "not an .npy file (no valid .npy header: damaged or another format)")
    if head[1].hasobject:
        raise SourceError(path, "object array (pickled Python objects); refused: unpickling runs code "
                                "from the file, and a feature file holds a plain numeric array")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise SourceError(path, f"unreadable .npy array ({type(exc).__name__}: {exc})") from exc
    if arr.dtype.kind not in "fiu":
        raise SourceError(path, f"dtype {arr.dtype} is not a numeric feature array")
    shape = tuple(int(n) for n in arr.shape)
    if arr.ndim == 1:
        arr = arr[None, :]
    elif arr.ndim != 2:
        raise SourceError(path, f"shape {tuple(arr.shape)}: expected [D], [1, D] or [T, D]")
    if arr.size == 0:
        raise SourceError(path, f"empty array of shape {tuple(arr.shape)}")
    if dim is not None and arr.shape[1] != dim:
        raise SourceError(path, f"width {arr.shape[1]}, but most of the folder's files are {dim} wide")
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise SourceError(path, f"{bad} NaN/Inf value(s)")
    peak = max(abs(float(arr.min())), abs(float(arr.max())))
    if peak > _FLOAT16_MAX:
        raise SourceError(path, f"values up to {peak:g} overflow float16, the feature files' dtype")
    return arr, shape


@dataclass
class FolderReport:
    """What one folder gave: `count` clips written with it, `missing` clips without a file here."""

    folder: str
    modality: str
    key: str
    dim: Optional[int]
    files: int = 0
    count: int = 0
    sequences: int = 0  # files with T > 1 frames
    broken: int = 0
    missing: list[str] = field(default_factory=list)
    dims_seen: dict[int, int] = field(default_factory=dict)


@dataclass
class ImportReport:
    """The run's outcome, written as `import_report.json` next to the feature files."""

    clips: int = 0
    written: int = 0
    failed: int = 0
    folders: list[FolderReport] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    transcripts: Optional[dict[str, Any]] = None
    train_options: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for f in out["folders"]:
            f["missing_count"] = len(f["missing"])
            f["dims_seen"] = {str(k): v for k, v in f["dims_seen"].items()}
        return {"source": SOURCE, **out}


def train_options(maps: Sequence[FolderMap], dims: dict[str, int], out_dir: PathLike) -> list[str]:
    """`--options` for train_hero.py: each imported modality's width, the feature keys that are
    not HERO's defaults, max_dim wide enough, and the features folder."""
    opts = [f"model.{DIM_KEYS[m.modality]}={dims[m.name]}" for m in maps if dims.get(m.name)]
    opts += [f"datasets.hero_dataset.feature_keys.{m.modality}={m.key}" for m in maps
             if m.key != DEFAULT_FEATURE_KEYS[m.modality]]
    widest = max([d for d in dims.values() if d] or [0])
    if widest > 1024:  # the shipped configs pad to 1024
        opts.append(f"datasets.hero_dataset.max_dim={widest}")
    opts.append(f"datasets.hero_dataset.build_info.images.storage={out_dir}")
    return opts


def _clip_files(maps: Sequence[FolderMap]) -> dict[str, dict[str, Path]]:
    """Folder name -> {clip: file} (`*.npy` only; other files are not clips)."""
    return {m.name: {p.stem: p for p in sorted(m.folder.glob("*.npy")) if p.is_file()} for m in maps}


def import_features(
    maps: Sequence[FolderMap],
    out_dir: PathLike,
    transcripts: Optional[Transcripts] = None,
    progress: Optional[bool] = None,
    on_error: Optional[Callable[[str], None]] = None,
) -> ImportReport:
    """Write `<out_dir>/<clip>.npz` for every clip found in any folder; returns the report
    (also written, atomically, as `<out_dir>/import_report.json`). `progress`: None shows a
    bar on a terminal only; `on_error` gets each problem as it is found."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _clip_files(maps)
    folders = {}
    for m in maps:
        dim, seen = folder_dim(list(files[m.name].values()))
        folders[m.name] = FolderReport(m.name, m.modality, m.key, dim, files=len(files[m.name]), dims_seen=seen)
    clips = sorted(set().union(*(f.keys() for f in files.values()))) if files else []
    report = ImportReport(clips=len(clips), folders=list(folders.values()))
    for clip in tqdm(clips, desc="import", unit="clip", disable=(None if progress is None else not progress)):
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, str] = {"source": SOURCE}
        absent: list[str] = []
        problems: list[tuple[str, str]] = []
        for m in maps:
            rep = folders[m.name]
            path = files[m.name].get(clip)
            if path is None:
                rep.missing.append(clip)
                absent.append(f"{m.key}: no {m.name}/{clip}.npy")
                continue
            try:
                arr, shape = load_vector(path, rep.dim)
            except SourceError as exc:
                rep.broken += 1
                problems.append((f"{m.name}/{path.name}", exc.problem))
                continue
            arrays[m.key] = arr
            meta[f"import_{m.key}"] = json.dumps({"folder": m.name, "source_shape": list(shape),
                                                  "dim": int(arr.shape[1])})
        if absent:
            meta["absent"] = "; ".join(absent)
        text = transcripts.texts.get(clip) if transcripts is not None else None
        if not problems:
            try:
                write_features(out / f"{clip}.npz", arrays, transcript=text, meta=meta)
            except (FeatureFileError, OSError) as exc:
                problems.append((f"{clip}.npz", str(exc)))
        for where, problem in problems:
            report.failures.append({"clip": clip, "file": where, "problem": problem})
            if on_error is not None:
                on_error(f"{where}: {problem} (clip {clip!r} skipped)")
        if problems:
            report.failed += 1
            continue
        report.written += 1
        for m in maps:
            if m.key in arrays:
                folders[m.name].count += 1
                folders[m.name].sequences += int(arrays[m.key].shape[0] > 1)
    if transcripts is not None:
        report.transcripts = {"file": Path(transcripts.path).name, "column": transcripts.column,
                              "clips_with": sum(c in transcripts.texts for c in clips),
                              "clips_without": sum(c not in transcripts.texts for c in clips),
                              "rows_without_features": len(set(transcripts.texts) - set(clips))}
    dims = {name: rep.dim for name, rep in folders.items() if rep.dim}
    report.train_options = train_options(maps, dims, out_dir)
    atomic_write_json(out / REPORT_NAME, report.to_json())
    return report
