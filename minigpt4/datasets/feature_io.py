"""Per-video feature files (DESIGN.md section 3): write and read them safely.

One file per clip, `<features_dir>/<video_id>.npz` (or `.safetensors`): float16 arrays
`[T, D]` under the extractor keys (`videomae`, `hubert`, `au`, `bert`, `clip`), the Whisper
`transcript` as a 0-d unicode array and optional `meta_<name>` strings. A modality that could
not be extracted is simply absent. Nothing here unpickles unless the caller opts in, because
unpickling a file runs arbitrary code: the seed's pickled `.npy` dicts are read only with
`allow_pickle=True` (or converted once with `scripts/convert_legacy_features.py`).

Every problem is a `FeatureFileError` naming the file and the key, so a bad clip in a folder
of 100k is found from the message alone.
"""
from __future__ import annotations

import functools
import io
import math
import os
import re
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

try:  # ISA-L's CRC-32 is ~10x faster than zlib's; the check is the same (zip's CRC-32)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is in requirements.txt; zlib is the fallback
    from zlib import crc32

from minigpt4.common.atomic_io import atomic_open

PathLike = Union[str, "os.PathLike[str]"]

TRANSCRIPT_KEY = "transcript"
META_PREFIX = "meta_"
NPZ_SUFFIX = ".npz"
SAFETENSORS_SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".npy"
# Suffixes a features folder may hold, in lookup order (the safe formats first).
FEATURE_SUFFIXES: tuple[str, ...] = (NPZ_SUFFIX, SAFETENSORS_SUFFIX, LEGACY_SUFFIX)
# The seed's legacy key names that differ from ours.
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
        stored dtype instead when read with `dtype=None`.
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
    if dtype is None or arr.dtype == dtype:
        return arr
    with np.errstate(over="ignore"):
        out = arr.astype(dtype)
    if not np.isfinite(out).all():
        raise FeatureFileError(path, key, f"value(s) overflow {np.dtype(dtype).name} (|x| > {np.finfo(dtype).max:g})")
    return out


def _count_nonfinite(arr: np.ndarray) -> int:
    """Number of NaN/Inf values. float16 is tested on its bits (all-ones exponent), which is
    ~20x faster than numpy's float16 isfinite."""
    if arr.dtype == np.float16:
        bits = np.ascontiguousarray(arr).view(np.uint16) & 0x7FFF
        if int(bits.max()) < 0x7C00:
            return 0
        return int(np.count_nonzero(bits >= 0x7C00))
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
    with np.errstate(over="ignore"):  # float64 overflow is reported by the caller
        return arr.astype(np.float32)


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
    out = {}
    for key, arr in record.arrays.items():
        conv = _as_float32(arr)
        if arr.dtype.itemsize > 4 and not np.isfinite(conv).all():
            raise FeatureFileError(path, key, "value(s) overflow float32")
        out[key] = conv
    return FeatureRecord(arrays=out, transcript=record.transcript, meta=record.meta)


def _is_string_key(key: str) -> bool:
    return key == TRANSCRIPT_KEY or key.startswith(META_PREFIX)


# One .npy header as numpy.lib.format writes it (a dict literal), parsed without eval.
_NPY_HEADER = re.compile(
    r"^\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (False|True), 'shape': \(((?:\d+, ?)*\d*)\), \}\s*$"
)
_NPY_MAGIC = b"\x93NUMPY"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_FAST_KINDS = frozenset("fiubU")


@functools.lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> Optional[tuple[np.dtype, tuple[int, ...], int]]:
    """(dtype, shape, element count) of a plain .npy header, None when numpy's general reader is
    needed. Cached: a dataset repeats a few hundred distinct headers (one per dtype and shape)."""
    m = _NPY_HEADER.match(header.decode("latin1"))
    if m is None or m.group(2) == "True":
        return None
    dtype = np.dtype(m.group(1))
    if dtype.kind not in _FAST_KINDS or dtype.hasobject:
        return None
    shape = tuple(int(x) for x in m.group(3).replace(" ", "").split(",") if x)
    return dtype, shape, math.prod(shape)


def _parse_npy(buf: memoryview) -> Optional[np.ndarray]:
    """Array view of one plain .npy member, or None when it needs numpy's general reader
    (Fortran order, structured/object dtypes, an unusual header). Never unpickles."""
    if len(buf) < 10 or buf[:6] != _NPY_MAGIC:
        return None
    major = buf[6]
    if major == 1:
        hlen, start = int.from_bytes(buf[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(buf[8:12], "little"), 12
    else:
        return None
    parsed = _npy_header(bytes(buf[start : start + hlen]))
    if parsed is None:
        return None
    dtype, shape, count = parsed
    offset = start + hlen
    if len(buf) - offset != count * dtype.itemsize:
        return None
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)


def _fast_npz_members(path: PathLike, data: np.ndarray) -> Optional[dict[str, np.ndarray]]:
    """All members of an uncompressed .npz held in `data`, as arrays viewing `data`.

    numpy.savez stores members uncompressed, so each array is a slice of the file: this
    skips np.load's per-member file objects and its eval-based header parsing (~4x faster
    in total). CRCs are still checked. Returns None to fall back to np.load.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(memoryview(data)))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    view = memoryview(data)
    out: dict[str, np.ndarray] = {}
    with zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or not info.filename.endswith(".npy"):
                return None
            off = info.header_offset
            if off + _LOCAL_HEADER.size > len(data):
                return None
            sig, n_name, n_extra = _LOCAL_HEADER.unpack_from(data, off)
            if sig != b"PK\x03\x04":
                return None
            begin = off + _LOCAL_HEADER.size + n_name + n_extra
            end = begin + info.file_size
            if end > len(data) or info.compress_size != info.file_size:
                return None
            member = view[begin:end]
            if crc32(member) != info.CRC:
                raise FeatureFileError(path, info.filename[:-4], "CRC mismatch (corrupted file)")
            arr = _parse_npy(member)
            if arr is None:
                return None
            out[info.filename[:-4]] = arr
    return out


def _read_npz(path: PathLike, source: Any, max_dim: int) -> FeatureRecord:
    """`source` is a filesystem path or a binary file object; `path` names it in errors."""
    data = _read_all(source)
    members = _fast_npz_members(path, data) if data is not None else None
    if members is not None:
        raw = {k: v for k, v in members.items() if not _is_string_key(k)}
        strings = {k: v for k, v in members.items() if _is_string_key(k)}
        return _finish(path, raw, strings, max_dim)
    try:
        npz = np.load(source, allow_pickle=False)
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


def _read_all(source: Any) -> Optional[np.ndarray]:
    """The whole file in one writable uint8 buffer (arrays then view it), or None if unreadable.

    np.empty + readinto: no zero-fill pass and no immutable bytes. (A copy-on-write mmap was
    measured too: faster for 0.6 MB files, slower for 160 KB ones, and a file truncated in
    place would raise SIGBUS instead of an error, so plain reads stay.)
    """
    try:
        if isinstance(source, io.BytesIO):
            return np.frombuffer(bytearray(source.getbuffer()), dtype=np.uint8)
        with open(source, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            buf = np.empty(size, dtype=np.uint8)
            n = fh.readinto(buf)
        return buf if n == size else None
    except OSError:
        return None


def _safetensors_metadata(path: PathLike, data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors header (8-byte little-endian length + JSON)."""
    import json

    if len(data) < 8:
        raise FeatureFileError(path, None, "unreadable .safetensors (truncated header)")
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FeatureFileError(path, None, f"unreadable .safetensors header ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta or {})


def _read_safetensors(path: PathLike, data: Optional[bytes], max_dim: int) -> FeatureRecord:
    """Read from `path`, or from `data` (the file's bytes) when given."""
    raw: dict[str, Any] = {}
    try:
        if data is None:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as fh:
                metadata = dict(fh.metadata() or {})
                for key in fh.keys():
                    raw[key] = fh.get_tensor(key)
        else:
            from safetensors.numpy import load

            metadata = _safetensors_metadata(path, data)
            raw = dict(load(data))
    except FeatureFileError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError types
        raise FeatureFileError(path, None, f"unreadable .safetensors ({type(exc).__name__}: {exc})") from exc
    strings = {k: v for k, v in metadata.items() if _is_string_key(k)}
    return _finish(path, raw, strings, max_dim)


def _read_legacy(path: PathLike, source: Any, max_dim: int, allow_pickle: bool) -> FeatureRecord:
    """The seed's pickled dict `{video_mae, clip, hubert, bert, au, transcript}`.

    A 1-D array (a pooled vector, as the seed often stored) is read as one frame `[1, D]`.
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
    raises FeatureFileError on a missing, empty or unreadable file, a NaN/Inf value, a
    non-2-D array, D > max_dim or an object array.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise FeatureFileError(path, None, f"cannot read file ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise FeatureFileError(path, None, "not a regular file")
    if st.st_size == 0:
        raise FeatureFileError(path, None, "zero-byte file (an interrupted write?)")
    if path.suffix == NPZ_SUFFIX:
        record = _read_npz(path, path, max_dim)
    elif path.suffix == SAFETENSORS_SUFFIX:
        record = _read_safetensors(path, None, max_dim)
    elif path.suffix == LEGACY_SUFFIX:
        record = _read_legacy(path, path, max_dim, allow_pickle)
    else:
        raise FeatureFileError(path, None, f"unsupported suffix {path.suffix!r}; expected one of {FEATURE_SUFFIXES}")
    return _convert(path, record, dtype)


def read_features_bytes(
    data: bytes, suffix: str, name: str, max_dim: int = 1024, allow_pickle: bool = False, *, dtype: Any = np.float32
) -> FeatureRecord:
    """Like read_features, for a file's bytes (e.g. a member of a webdataset tar shard).

    suffix: the format (`.npz`, `.safetensors` or `.npy`); name: how errors name the source.
    """
    if not data:
        raise FeatureFileError(name, None, "zero-byte file (an interrupted write?)")
    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    if suffix == NPZ_SUFFIX:
        record = _read_npz(name, io.BytesIO(data), max_dim)
    elif suffix == SAFETENSORS_SUFFIX:
        record = _read_safetensors(name, bytes(data), max_dim)
    elif suffix == LEGACY_SUFFIX:
        record = _read_legacy(name, io.BytesIO(data), max_dim, allow_pickle)
    else:
        raise FeatureFileError(name, None, f"unsupported suffix {suffix!r}; expected one of {FEATURE_SUFFIXES}")
    return _convert(name, record, dtype)


def find_feature_file(features_dir: PathLike, video_id: str) -> Optional[Path]:
    """The first existing `<features_dir>/<video_id><suffix>` in FEATURE_SUFFIXES order, or None."""
    base = Path(features_dir)
    for suffix in FEATURE_SUFFIXES:
        candidate = base / f"{video_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None
