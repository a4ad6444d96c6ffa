"""Fast reading of numpy's uncompressed `.npz` archives (what `numpy.savez` writes).

An `.npz` written by `numpy.savez` is a zip of `.npy` members stored without compression,
so every array is a plain slice of the file. Reading a whole file into one buffer and
viewing the arrays in place skips `zipfile` (its directory parse is a quarter of a read),
`np.load`'s per-member file objects and its eval-based `.npy` header parsing.

`npz_members` handles exactly that common case and returns None for anything else
(compression, encryption, zip64 directories, Fortran order, structured or object dtypes, an
unusual header), so the caller falls back to numpy's general reader. It never unpickles.
Each member's CRC-32 is still checked.
"""
from __future__ import annotations

import functools
import math
import re
import struct
from typing import Optional, Union

import numpy as np

try:  # ISA-L's CRC-32 is ~10x faster than zlib's; the check is the same (zip's CRC-32)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is in requirements.txt; zlib is the fallback
    from zlib import crc32

# zip records (APPNOTE.TXT 4.3): the end-of-central-directory record (no archive comment),
# a central-directory entry and a local file header, with the fields read here.
_EOCD = struct.Struct("<4s4H2LH")  # sig, disk, cd disk, entries here, entries, cd size, cd offset, comment len
_CENTRAL = struct.Struct("<4s4xHH4x3L3H8xL")  # sig, flags, method, crc, csize, usize, name/extra/comment len, offset
_LOCAL = struct.Struct("<4s22xHH")  # sig, name len, extra len
_EOCD_SIG, _CENTRAL_SIG, _LOCAL_SIG = b"PK\x05\x06", b"PK\x01\x02", b"PK\x03\x04"
_ZIP64_MARK = 0xFFFFFFFF
_FLAG_ENCRYPTED, _FLAG_UTF8 = 0x1, 0x800

# One .npy header as numpy.lib.format writes it (a dict literal), parsed without eval.
_NPY_HEADER = re.compile(
    r"^\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (False|True), 'shape': \(((?:\d+, ?)*\d*)\), \}\s*$"
)
_NPY_MAGIC = b"\x93NUMPY"
_PLAIN_KINDS = frozenset("fiubU")
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty archive
_PICKLE_PROTOCOLS = range(2, 6)  # pickle.dump's b"\x80" + protocol byte (2..5)
_NOT_VALID = "not a valid {fmt} file ({why}; starts with {head!r}: random bytes, a partial copy or another format)"


class MemberCRCError(ValueError):
    """A member whose bytes do not match its stored CRC-32 (a corrupted file)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"member {name!r}: CRC mismatch")


def _members(data: memoryview) -> Optional[list[tuple[str, int, int, int]]]:
    """(name, data start, data end, CRC-32) of each stored member of the archive in `data`, from
    its central directory; None when it is not a plain single-disk, uncompressed, non-zip64 one."""
    size = len(data)
    eocd = size - _EOCD.size
    if eocd < 0:
        return None
    sig, disk, cd_disk, n_here, n_total, cd_size, cd_offset, comment = _EOCD.unpack_from(data, eocd)
    if sig != _EOCD_SIG or disk or cd_disk or n_here != n_total or comment or cd_offset + cd_size != eocd:
        return None  # also a zip64 archive: its markers break the offset + size == eocd identity
    out = []
    pos = cd_offset
    for _ in range(n_total):
        if pos + _CENTRAL.size > eocd:
            return None
        sig, flags, method, crc, csize, usize, n_name, n_extra, n_comment, offset = _CENTRAL.unpack_from(data, pos)
        if sig != _CENTRAL_SIG or method != 0 or flags & _FLAG_ENCRYPTED or csize != usize or _ZIP64_MARK in (usize, offset):
            return None
        name_end = pos + _CENTRAL.size + n_name
        raw = bytes(data[pos + _CENTRAL.size : name_end])
        # ASCII (numpy's names) reads the same in both encodings, and skips cp437's Python codec
        name = raw.decode("ascii") if raw.isascii() else raw.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
        pos = name_end + n_extra + n_comment
        if offset + _LOCAL.size > cd_offset:
            return None
        lsig, l_name, l_extra = _LOCAL.unpack_from(data, offset)
        begin = offset + _LOCAL.size + l_name + l_extra
        if lsig != _LOCAL_SIG or begin + usize > cd_offset:
            return None
        out.append((name, begin, begin + usize, crc))
    return out if pos == eocd else None


@functools.lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> Optional[tuple[np.dtype, tuple[int, ...], int]]:
    """(dtype, shape, element count) of a plain .npy header, None when numpy's general reader is
    needed. Cached: a dataset repeats a few hundred distinct headers (one per dtype and shape)."""
    m = _NPY_HEADER.match(header.decode("latin1"))
    if m is None or m.group(2) == "True":
        return None
    try:
        dtype = np.dtype(m.group(1))
    except TypeError:  # a type code numpy does not know
        return None
    if dtype.kind not in _PLAIN_KINDS or dtype.hasobject:
        return None
    shape = tuple(int(x) for x in m.group(3).replace(" ", "").split(",") if x)
    return dtype, shape, math.prod(shape)


def _npy_array(data: np.ndarray, view: memoryview, begin: int, end: int) -> Optional[np.ndarray]:
    """Array view of the .npy member in `data[begin:end]` (`view` is memoryview(data), for cheap
    slicing), or None when it needs numpy's general reader (Fortran order, structured/object
    dtypes, an unusual header)."""
    if end - begin < 12 or view[begin : begin + 6] != _NPY_MAGIC:
        return None
    major = view[begin + 6]
    if major == 1:
        hlen, start = view[begin + 8] | view[begin + 9] << 8, begin + 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(view[begin + 8 : begin + 12], "little"), begin + 12
    else:
        return None
    parsed = _npy_header(bytes(view[start : start + hlen]))
    if parsed is None:
        return None
    dtype, shape, count = parsed
    offset = start + hlen
    if end - offset != count * dtype.itemsize:
        return None
    return np.ndarray(shape, dtype=dtype, buffer=data, offset=offset)


def npz_members(data: np.ndarray) -> Optional[dict[str, np.ndarray]]:
    """Every member of the uncompressed `.npz` held in the uint8 buffer `data`, keyed by its
    name without `.npy`, as arrays viewing `data` (writable when `data` is).

    Returns None when the archive needs numpy's general reader; raises MemberCRCError when
    a member's bytes do not match their CRC-32.
    """
    view = memoryview(data)
    members = _members(view)
    if members is None:
        return None
    out: dict[str, np.ndarray] = {}
    for name, begin, end, crc in members:
        if not name.endswith(".npy"):
            return None
        key = name[:-4]
        if crc32(view[begin:end]) != crc:
            raise MemberCRCError(key)
        arr = _npy_array(data, view, begin, end)
        if arr is None:
            return None
        out[key] = arr
    return out


def signature_problem(data: Union[bytes, np.ndarray], suffix: str) -> Optional[str]:
    """Why `data` (a whole file) cannot be a `suffix` file (.npz/.npy/.safetensors), or None.

    Checked before a format's own reader, which misnames other bytes (numpy calls random bytes
    "pickled (object) data", and a legacy reader would refuse them as pickles), so the message
    says what is wrong. A pickled .npy is not judged here: the caller refuses or reads it.
    """
    view = memoryview(data)
    head = bytes(view[:16])
    if suffix == ".npz":
        if head.startswith(_NPY_MAGIC):
            return "a single .npy array, not an .npz archive (a renamed .npy file?)"
        if not head.startswith(_ZIP_MAGICS):
            return _NOT_VALID.format(fmt=".npz", why="no zip archive signature", head=head[:8])
    elif suffix == ".npy":
        if head.startswith(_NPY_MAGIC):
            return _plain_npy_problem(view)
        if not (len(head) > 1 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS):
            return _NOT_VALID.format(fmt=".npy", why="neither a .npy array nor a pickle", head=head[:8])
    elif suffix == ".safetensors":
        size, n = len(view), int.from_bytes(head[:8], "little")
        if size < 10 or n > size - 8 or head[8:9] != b"{":
            why = f"{size} bytes" if size < 10 else (
                f"header length {n} exceeds the file's {size} bytes" if n > size - 8 else "no JSON header")
            return _NOT_VALID.format(fmt=".safetensors", why=why, head=head[:8])
    return None


def _plain_npy_problem(view: memoryview) -> Optional[str]:
    """A .npy holding a plain (not pickled) array is no legacy feature dict; None otherwise."""
    if len(view) < 10 or view[6] != 1:  # versions 2/3 (rare): left to the legacy reader
        return None
    hlen = view[8] | view[9] << 8
    parsed = _npy_header(bytes(view[10 : 10 + hlen]))
    if parsed is None:  # object dtype (a pickle) or an unusual header
        return None
    dtype, shape, _ = parsed
    return (f"a plain {dtype} array of shape {shape}, not a legacy feature dict (feature files are .npz or "
            ".safetensors with one [T, D] array per key)")
