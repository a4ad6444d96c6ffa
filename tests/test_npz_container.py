"""npz_container: the in-place .npz reader agrees with np.load, and falls back (None) or
reports a CRC error on everything it does not handle, never raising anything else."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from minigpt4.datasets.npz_container import MemberCRCError, npz_members, signature_problem


def _npz_bytes(compress: bool = False, **arrays: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return np.frombuffer(bytearray(buf.getvalue()), dtype=np.uint8)


def _mixed_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "hubert": rng.standard_normal((37, 1024)).astype(np.float16),
        "clip": rng.standard_normal((3, 16)).astype(np.float32),
        "au": rng.integers(0, 5, size=(4, 35)).astype(np.int64),
        "mask": rng.random((2, 3)) > 0.5,
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
        "scalar": np.array(3.5),
        "transcript": np.array("héllo wörld", dtype=np.str_),
    }


def test_members_match_np_load_bit_for_bit() -> None:
    arrays = _mixed_arrays()
    data = _npz_bytes(**arrays)
    got = npz_members(data)
    assert got is not None and list(got) == list(arrays)
    with np.load(io.BytesIO(data.tobytes()), allow_pickle=False) as ref:
        for key in arrays:
            assert got[key].dtype == ref[key].dtype and got[key].shape == ref[key].shape
            np.testing.assert_array_equal(got[key], ref[key])
    # views into the buffer, writable because the buffer is (no copy was made)
    assert np.shares_memory(got["hubert"], data) and got["hubert"].flags.writeable


def test_unhandled_archives_fall_back() -> None:
    arr = np.ones((4, 8), dtype=np.float16)
    assert npz_members(_npz_bytes(compress=True, a=arr)) is None  # deflated members
    assert npz_members(_npz_bytes(a=np.asfortranarray(np.ones((4, 8))))) is None  # Fortran order
    assert npz_members(_npz_bytes(a=np.zeros(3, dtype=[("x", "<f4"), ("y", "<i2")]))) is None  # structured
    commented = io.BytesIO()
    with zipfile.ZipFile(commented, "w") as zf:
        zf.writestr("a.npy", _npy_bytes(arr))
        zf.comment = b"archive comment"
    assert npz_members(np.frombuffer(commented.getvalue(), dtype=np.uint8)) is None
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", b"not an array")
    assert npz_members(np.frombuffer(other.getvalue(), dtype=np.uint8)) is None
    prefixed = np.concatenate([np.frombuffer(b"junk" * 8, dtype=np.uint8), _npz_bytes(a=arr)])
    assert npz_members(prefixed) is None  # offsets no longer add up: let zipfile judge it
    assert npz_members(np.frombuffer(b"PK\x05\x06", dtype=np.uint8)) is None


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_crc_mismatch_names_the_member() -> None:
    data = _npz_bytes(clip=np.zeros((8, 64), dtype=np.float16), hubert=np.zeros((20, 64), dtype=np.float16))
    got = npz_members(data)
    assert got is not None and np.shares_memory(got["hubert"], data)
    where = got["hubert"].ctypes.data - data.ctypes.data  # offset of hubert's array data
    flipped = data.copy()
    flipped[where + 5] ^= 0xFF
    with pytest.raises(MemberCRCError) as err:
        npz_members(flipped)
    assert err.value.name == "hubert"


def test_every_truncation_and_byte_flip_is_none_crc_error_or_valid() -> None:
    """Bounds checks: a damaged archive never raises IndexError/struct.error/TypeError."""
    data = _npz_bytes(hubert=np.ones((3, 8), dtype=np.float16), transcript=np.array("hi"))
    for cut in range(len(data)):
        assert npz_members(data[:cut].copy()) is None
    rng = np.random.default_rng(1)
    for pos in range(len(data)):
        damaged = data.copy()
        damaged[pos] ^= int(rng.integers(1, 256))
        try:
            got = npz_members(damaged)
        except MemberCRCError:
            continue
        if got is not None:  # e.g. a flip in a name or an unchecked field: still views of the buffer
            assert all(isinstance(v, np.ndarray) for v in got.values())


def test_signature_problem_tells_formats_apart() -> None:
    """Issue 20 case 8: random bytes were "pickled (object) data"; the signature check says what
    the bytes are not, and lets every real file of each format (and a pickled .npy) through."""
    noise = np.random.default_rng(3).bytes(1000)
    for suffix in (".npz", ".npy", ".safetensors"):
        assert signature_problem(noise, suffix).startswith(f"not a valid {suffix} file")
    assert signature_problem(_npz_bytes(a=np.ones(3)), ".npz") is None
    assert signature_problem(_npz_bytes(compress=True, a=np.ones(3)), ".npz") is None
    npy = io.BytesIO()
    np.save(npy, {"clip": np.ones((2, 2))}, allow_pickle=True)  # a legacy pickled dict: the caller decides
    assert signature_problem(npy.getvalue(), ".npy") is None
    assert signature_problem(b"\x80\x04\x95" + noise[:20], ".npy") is None  # a pickle.dump file
    plain = io.BytesIO()
    np.save(plain, np.zeros((2, 3), np.float16))
    assert "a plain float16 array of shape (2, 3)" in signature_problem(plain.getvalue(), ".npy")
    assert "not an .npz archive" in signature_problem(plain.getvalue(), ".npz")
    from safetensors.numpy import save

    assert signature_problem(save({"a": np.ones((1, 2), np.float16)}), ".safetensors") is None
    assert "8 bytes" in signature_problem(b"\x00" * 8, ".safetensors")
    assert signature_problem(noise, ".mp4") is None  # not a feature format: the caller reports the suffix
