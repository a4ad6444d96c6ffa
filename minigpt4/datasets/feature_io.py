"""Per-video feature files (docs/ARCHITECTURE.md "Feature files"): write and read them safely.

One file per clip, `<features_dir>/<video_id>.npz` (or `.safetensors`): float16 arrays
`[T, D]` under the extractor keys (`videomae`, `hubert`, `au`, `bert`, `clip`), the Whisper
`transcript` as a 0-d unicode array and optional `meta_<name>` strings. A modality that could
not be extracted is simply absent. Nothing here unpickles unless the caller opts in, because
unpickling a file runs arbitrary code: legacy pickled `.npy` dicts are read only with
`allow_pickle=True` (or converted once with `scripts/convert_legacy_features.py`).

Every problem is a `FeatureFileError` naming the file and the key, so a bad clip in a folder
of 100k is found from the message alone.
"""
from __future__ import annotations

import io
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from minigpt4.common.atomic_io import atomic_open
from minigpt4.datasets.npz_container import MemberCRCError, npz_members, signature_problem

PathLike = Union[str, "os.PathLike[str]"]

TRANSCRIPT_KEY = "transcript"
META_PREFIX = "meta_"
NPZ_SUFFIX = ".npz"
SAFETENSORS_SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".npy"
# Suffixes a features folder may hold, in lookup order (the safe formats first).
FEATURE_SUFFIXES: tuple[str, ...] = (NPZ_SUFFIX, SAFETENSORS_SUFFIX, LEGACY_SUFFIX)
# Legacy key names that differ from ours.
LEGACY_KEY_MAP: dict[str, str] = {"video_mae": "videomae"}
CONVERT_HINT = (
    "convert the folder once with `python scripts/convert_legacy_features.py --input_dir DIR "
    "--output_dir DIR` (writes safe .npz files), or set `allow_pickle: true` in the dataset "
    "config if you trust every file"
)


class FeatureFileError(ValueError):
    """A feature file that cannot be used; `path` and `key` (None = whole file) say where."""

    def __init__(self, path: PathLike, key: Optional[str], problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path} [key {key!r}]" if key is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass
class FeatureRecord:
    """The contents of one feature file.

    arrays: feature key -> float32 `[T, D]` (T >= 1 frames, D >= 1 dims, all finite); the
        stored dtype instead when read with `dtype=None` (values still within float32 range).
    transcript: the Whisper transcript ("" when the file has none).
    meta: `meta_<name>` entries, keyed by `<name>`.
    """

    arrays: dict[str, np.ndarray]
    transcript: str = ""
    meta: dict[str, str] = field(default_factory=dict)


def _validate_array(path: PathLike, key: str, arr: Any, max_dim: Optional[int], dtype: Any = None) -> np.ndarray:
    """Check one feature array `[T, D]`; return it as stored (dtype None) or cast to `dtype`
    (writing casts to float16 and refuses values that overflow it)."""
    if not isinstance(arr, np.ndarray):
        raise FeatureFileError(path, key, f"expected a numpy array, got {type(arr).__name__}")
    if arr.dtype == object:
        raise FeatureFileError(path, key, "object dtype (pickled Python objects) is not a feature array")
    if arr.dtype.kind not in "fiub":
        raise FeatureFileError(path, key, f"dtype {arr.dtype} is not numeric")
    if arr.ndim != 2:
        raise FeatureFileError(path, key, f"expected a 2-D [T, D] array, got shape {tuple(arr.shape)}")
    t, d = arr.shape
    if t == 0 or d == 0:
        raise FeatureFileError(
            path, key, f"empty array of shape {tuple(arr.shape)}; leave an absent modality out instead"
        )
    if max_dim is not None and d > max_dim:
        raise FeatureFileError(path, key, f"feature dim {d} is larger than max_dim {max_dim}")
    bad = _count_nonfinite(arr)
    if bad:
        raise FeatureFileError(path, key, f"{bad} NaN/Inf value(s)")
    # dtype None: every consumer casts to float32 at most, so that range is checked now
    _check_range(path, key, arr, np.dtype(np.float32 if dtype is None else dtype))
    if dtype is None or arr.dtype == dtype:
        return arr
    return arr.astype(dtype)


def _check_range(path: PathLike, key: str, arr: np.ndarray, target: np.dtype) -> None:
    """Refuse finite values that the cast to `target` would turn into Inf (a float64 1e300 is
    Inf as float32), here where the file and key are known rather than as a NaN loss later.
    Exact and cheap: casts are monotonic, so only the min and max need casting."""
    if arr.dtype.kind == "b" or np.can_cast(arr.dtype, target, "safe"):
        return
    extremes = np.array([arr.min(), arr.max()], dtype=arr.dtype)
    with np.errstate(over="ignore"):
        fits = np.isfinite(extremes.astype(target)).all()
    if not fits:
        peak, limit = max((float(x) for x in extremes), key=abs), float(np.finfo(target).max)
        raise FeatureFileError(path, key, f"values up to {peak:g} overflow {target.name} (largest finite {limit:g})")


def _count_nonfinite(arr: np.ndarray) -> int:
    """Number of NaN/Inf values.

    float16 is tested on its bits (NaN/Inf: all-ones exponent) with two reductions and no
    temporary array: as int16, +NaN/+Inf are the values >= 0x7C00; as uint16, -NaN/-Inf are
    those >= 0xFC00. ~20x faster than numpy's float16 isfinite.
    """
    if arr.dtype == np.float16:
        bits = np.ascontiguousarray(arr).view(np.uint16)
        if bits.max() < 0xFC00 and bits.view(np.int16).max() < 0x7C00:
            return 0
        return int(np.count_nonzero((bits & 0x7FFF) >= 0x7C00))
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return int((~np.isfinite(arr)).sum())
    return 0


def _as_float32(arr: np.ndarray) -> np.ndarray:
    """float32 copy of `arr`; float16 goes through torch's vectorised cast (numpy's is ~10x slower)."""
    if arr.dtype == np.float32:
        return arr
    if arr.dtype == np.float16 and arr.flags.writeable:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of the package
            return arr.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr)).float().numpy()
    return arr.astype(np.float32)  # in range: _check_range ran when the array was validated


def _validate_string(path: PathLike, key: str, value: Any) -> str:
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind != "U":
            raise FeatureFileError(
                path, key, f"expected a 0-d unicode array, got dtype {value.dtype} shape {tuple(value.shape)}"
            )
        return str(value[()])
    if isinstance(value, str):
        return value
    raise FeatureFileError(path, key, f"expected a string, got {type(value).__name__}")


# ----------------------------------------------------------------------------- writing


def _prepare_for_write(
    path: PathLike, arrays: Mapping[str, np.ndarray], transcript: Optional[str], meta: Optional[Mapping[str, str]]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Validate inputs; return float16 arrays and the string entries (transcript, meta_*)."""
    out: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        if not isinstance(key, str) or not key:
            raise FeatureFileError(path, str(key), "feature keys must be non-empty strings")
        if key == TRANSCRIPT_KEY or key.startswith(META_PREFIX):
            raise FeatureFileError(path, key, "reserved key (transcript / meta_*) used for an array")
        # straight to float16 (no float32 step, so the stored value is the nearest float16)
        out[key] = _validate_array(path, key, np.asarray(arr), max_dim=None, dtype=np.float16)
    strings: dict[str, str] = {}
    if transcript is not None:
        strings[TRANSCRIPT_KEY] = _validate_string(path, TRANSCRIPT_KEY, transcript)
    for name, value in (meta or {}).items():
        key = f"{META_PREFIX}{name}"
        if key in out:
            raise FeatureFileError(path, key, "meta name collides with a feature key")
        strings[key] = _validate_string(path, key, value)
    return out, strings


def write_features(
    path: PathLike,
    arrays: Mapping[str, np.ndarray],
    transcript: Optional[str] = None,
    meta: Optional[Mapping[str, str]] = None,
) -> None:
    """Write one clip's features atomically (`.npz` via numpy.savez, or `.safetensors`).

    arrays: key -> `[T, D]` numeric array, stored as float16 (refused if 2-D-ness, finiteness
    or the float16 range is violated, so a bad file is never written in the first place).
    """
    path = Path(path)
    half, strings = _prepare_for_write(path, arrays, transcript, meta)
    if path.suffix == NPZ_SUFFIX:
        payload: dict[str, np.ndarray] = dict(half)
        for key, value in strings.items():
            payload[key] = np.array(value, dtype=np.str_)
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **payload)
    elif path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.numpy import save

        data = save({k: np.ascontiguousarray(v) for k, v in half.items()}, metadata=strings or None)
        with atomic_open(path, "wb") as fh:
            fh.write(data)
    else:
        raise FeatureFileError(path, None, f"unsupported suffix {path.suffix!r}; use .npz or .safetensors")


# ----------------------------------------------------------------------------- reading


def _finish(path: PathLike, raw_arrays: Mapping[str, Any], strings: Mapping[str, Any], max_dim: int) -> FeatureRecord:
    """Validate the arrays (kept in their stored dtype) and the string entries."""
    arrays = {k: _validate_array(path, k, v, max_dim) for k, v in raw_arrays.items()}
    transcript = ""
    meta: dict[str, str] = {}
    for key, value in strings.items():
        text = _validate_string(path, key, value)
        if key == TRANSCRIPT_KEY:
            transcript = text
        else:
            meta[key[len(META_PREFIX):]] = text
    return FeatureRecord(arrays=arrays, transcript=transcript, meta=meta)


def _convert(path: PathLike, record: FeatureRecord, dtype: Any) -> FeatureRecord:
    """Cast the validated arrays to `dtype` (None: keep the stored dtype)."""
    if dtype is None:
        return record
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"dtype must be float32 or None, got {dtype}")
    out = {key: _as_float32(arr) for key, arr in record.arrays.items()}
    return FeatureRecord(arrays=out, transcript=record.transcript, meta=record.meta)


def _is_string_key(key: str) -> bool:
    return key == TRANSCRIPT_KEY or key.startswith(META_PREFIX)


def _read_npz(path: PathLike, data: np.ndarray, max_dim: int) -> FeatureRecord:
    """`data`: the whole file as a writable uint8 buffer (the arrays view it); `path` names it
    in errors. numpy's general reader is the fallback for what npz_members does not handle."""
    try:
        members = npz_members(data)
    except MemberCRCError as exc:
        raise FeatureFileError(path, exc.name, "CRC mismatch (corrupted file)") from exc
    if members is not None:
        raw, strings = {}, {}
        for key, value in members.items():
            (strings if _is_string_key(key) else raw)[key] = value
        return _finish(path, raw, strings, max_dim)
    try:
        npz = np.load(io.BytesIO(memoryview(data)), allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise FeatureFileError(path, None, f"unreadable .npz ({type(exc).__name__}: {exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise FeatureFileError(path, None, "not an .npz archive")
    raw: dict[str, Any] = {}
    strings: dict[str, Any] = {}
    with npz:
        for key in npz.files:
            try:
                value = npz[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    raise FeatureFileError(path, key, "object dtype (would need unpickling); refused") from exc
                raise FeatureFileError(path, key, f"unreadable array ({exc})") from exc
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise FeatureFileError(path, key, f"unreadable array ({type(exc).__name__}: {exc})") from exc
            (strings if _is_string_key(key) else raw)[key] = value
    return _finish(path, raw, strings, max_dim)


def _read_file(path: Path) -> np.ndarray:
    """The whole regular file in one writable uint8 buffer (arrays then view it in place).

    One open + fstat: O_NONBLOCK so a FIFO in the folder is reported instead of blocking the
    open (it has no effect on regular files). np.empty + readv: no zero-fill pass and no
    immutable bytes. (A copy-on-write mmap was measured too: faster for 0.6 MB files, slower
    for 160 KB ones, and a file truncated in place would raise SIGBUS instead of an error.)
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FeatureFileError(path, None, f"cannot read file ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FeatureFileError(path, None, "not a regular file")
        if st.st_size == 0:
            raise FeatureFileError(path, None, "zero-byte file (an interrupted write?)")
        buf = np.empty(st.st_size, dtype=np.uint8)
        done = 0
        while done < st.st_size:
            n = os.readv(fd, [memoryview(buf)[done:]])
            if n == 0:
                raise FeatureFileError(path, None, f"file shrank while reading ({done} of {st.st_size} bytes)")
            done += n
        return buf
    except OSError as exc:
        raise FeatureFileError(path, None, f"cannot read file ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


def _safetensors_metadata(path: PathLike, data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors header (8-byte little-endian length + JSON)."""
    import json

    n = int.from_bytes(data[:8], "little")  # the length was checked by signature_problem
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FeatureFileError(path, None, f"not a valid .safetensors file (header is not JSON: {exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta or {})


def _read_safetensors(path: PathLike, data: bytes, max_dim: int) -> FeatureRecord:
    """`data`: the file's bytes; `path` names it in errors."""
    from safetensors.numpy import load

    try:
        metadata = _safetensors_metadata(path, data)
        raw = dict(load(data))
    except FeatureFileError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError types
        raise FeatureFileError(path, None, f"unreadable .safetensors ({type(exc).__name__}: {exc})") from exc
    strings = {k: v for k, v in metadata.items() if _is_string_key(k)}
    return _finish(path, raw, strings, max_dim)


def _read_legacy(path: PathLike, source: Any, max_dim: int, allow_pickle: bool) -> FeatureRecord:
    """A legacy pickled dict `{video_mae, clip, hubert, bert, au, transcript}`.

    A 1-D array (a pooled vector, as legacy files often hold) is read as one frame `[1, D]`.
    """
    if not allow_pickle:
        raise FeatureFileError(
            path,
            None,
            "legacy pickled .npy feature file refused: unpickling runs arbitrary code from the "
            f"file. To use it, {CONVERT_HINT}",
        )
    try:
        obj = np.load(source, allow_pickle=True)
    except Exception as exc:  # unpickling can raise anything
        raise FeatureFileError(path, None, f"unreadable legacy .npy ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    if not isinstance(obj, dict):
        raise FeatureFileError(path, None, f"legacy .npy must hold a dict, got {type(obj).__name__}")
    raw: dict[str, Any] = {}
    strings: dict[str, Any] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise FeatureFileError(path, str(key), "legacy dict keys must be strings")
        if _is_string_key(key):
            strings[key] = str(value) if isinstance(value, (str, np.str_)) else value
            continue
        name = LEGACY_KEY_MAP.get(key, key)
        arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
        if arr.ndim == 1 and arr.dtype != object:
            arr = arr[None, :]
        raw[name] = arr
    return _finish(path, raw, strings, max_dim)


def read_features(
    path: PathLike, max_dim: int = 1024, allow_pickle: bool = False, *, dtype: Any = np.float32
) -> FeatureRecord:
    """Read and validate one feature file (`.npz`, `.safetensors`, or legacy `.npy`).

    Returns float32 `[T, D]` arrays with D <= max_dim (`dtype=None` keeps the stored dtype,
    float16 for files written here, so a caller that subsamples frames converts only those);
    raises FeatureFileError on a missing, empty, unreadable or not-this-format file, a NaN/Inf
    value, a value beyond float32 range (any dtype), a non-2-D array, D > max_dim or an object array.
    """
    path = path if isinstance(path, Path) else Path(path)
    data = _read_file(path)
    return _decode(path, data, path.suffix, max_dim, allow_pickle, dtype)


def read_features_bytes(
    data: bytes, suffix: str, name: str, max_dim: int = 1024, allow_pickle: bool = False, *, dtype: Any = np.float32
) -> FeatureRecord:
    """Like read_features, for a file's bytes (e.g. a member of a webdataset tar shard).

    suffix: the format (`.npz`, `.safetensors` or `.npy`); name: how errors name the source.
    """
    if not data:
        raise FeatureFileError(name, None, "zero-byte file (an interrupted write?)")
    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    return _decode(name, data, suffix, max_dim, allow_pickle, dtype)


def _decode(
    path: PathLike, data: Union[bytes, np.ndarray], suffix: str, max_dim: int, allow_pickle: bool, dtype: Any
) -> FeatureRecord:
    """A feature file's contents by format. `data`: its bytes, or (from `_read_file`) a writable
    uint8 buffer; each format copies only what it needs (the .npz arrays view a writable buffer,
    safetensors wants `bytes`)."""
    problem = signature_problem(data, suffix)  # before a format's reader misnames random bytes
    if problem is not None:
        raise FeatureFileError(path, None, problem)
    if suffix == NPZ_SUFFIX:
        buf = data if isinstance(data, np.ndarray) else np.frombuffer(bytearray(data), dtype=np.uint8)
        record = _read_npz(path, buf, max_dim)
    elif suffix == SAFETENSORS_SUFFIX:
        record = _read_safetensors(path, bytes(data), max_dim)
    elif suffix == LEGACY_SUFFIX:
        record = _read_legacy(path, io.BytesIO(data), max_dim, allow_pickle)
    else:
        raise FeatureFileError(path, None, f"unsupported suffix {suffix!r}; expected one of {FEATURE_SUFFIXES}")
    return _convert(path, record, dtype)


def prefetch(paths: Sequence[PathLike]) -> None:
    """Ask the kernel to start reading these files now (POSIX_FADV_WILLNEED), so the reads of a
    batch from a cold disk overlap instead of waiting for each file in turn. Only a hint:
    nothing is read here and problems are left to the read itself (which reports them)."""
    if not hasattr(os, "posix_fadvise"):  # pragma: no cover - not on macOS / Windows
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def find_feature_file(features_dir: PathLike, video_id: str) -> Optional[Path]:
    """The first existing `<features_dir>/<video_id><suffix>` in FEATURE_SUFFIXES order, or None."""
    base = Path(features_dir)
    for suffix in FEATURE_SUFFIXES:
        candidate = base / f"{video_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None
