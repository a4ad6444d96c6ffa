"""Feature file format (docs/ARCHITECTURE.md "Feature files"): round trip, atomic writes, every validation error."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minigpt4.datasets.feature_io import (
    FeatureFileError,
    FeatureRecord,
    find_feature_file,
    read_features,
    read_features_bytes,
    write_features,
)


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "videomae": rng.standard_normal((4, 768)),
        "hubert": rng.standard_normal((9, 1024)),
        "au": rng.random((7, 35)),
        "bert": rng.standard_normal((5, 768)),
        "clip": rng.standard_normal((3, 1024)),
    }


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    arrays = _arrays(rng)
    path = tmp_path / f"clip_001{suffix}"
    write_features(path, arrays, transcript="Ich bin so glücklich! 我很高兴", meta={"fps": "25", "source": "x.mp4"})
    rec = read_features(path)
    assert isinstance(rec, FeatureRecord)
    assert set(rec.arrays) == set(arrays)
    for key, arr in arrays.items():
        got = rec.arrays[key]
        assert got.dtype == np.float32 and got.shape == arr.shape
        # stored as float16: exactly the float16 rounding of the input
        np.testing.assert_array_equal(got, arr.astype(np.float16).astype(np.float32))
    assert rec.transcript == "Ich bin so glücklich! 我很高兴"
    assert rec.meta == {"fps": "25", "source": "x.mp4"}
    # the same bytes read through the in-memory path (used by shards) give the same record
    rec2 = read_features_bytes(path.read_bytes(), suffix, "member")
    assert rec2.transcript == rec.transcript and rec2.meta == rec.meta
    for key in arrays:
        np.testing.assert_array_equal(rec2.arrays[key], rec.arrays[key])


def test_npz_layout_is_plain_numpy(tmp_path: Path) -> None:
    """The file is a plain numpy.savez archive: float16 arrays, 0-d unicode strings, no pickle."""
    path = tmp_path / "a.npz"
    write_features(path, {"au": np.ones((2, 35))}, transcript="hi", meta={"fps": "1"})
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["au", "meta_fps", "transcript"]
        assert z["au"].dtype == np.float16
        assert z["transcript"].shape == () and z["transcript"].dtype.kind == "U"
        assert str(z["meta_fps"][()]) == "1"


def test_no_transcript_and_absent_modalities(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    write_features(path, {"hubert": np.zeros((3, 1024))})
    rec = read_features(path)
    assert list(rec.arrays) == ["hubert"] and rec.transcript == "" and rec.meta == {}


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    write_features(path, {"au": np.ones((2, 35))}, transcript="old")
    with pytest.raises(FeatureFileError):
        write_features(path, {"au": np.full((2, 35), np.nan)}, transcript="new")
    assert read_features(path).transcript == "old"
    write_features(path, {"au": np.ones((2, 35))}, transcript="new")
    assert read_features(path).transcript == "new"
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


@pytest.mark.parametrize(
    "arrays, problem",
    [
        ({"au": np.array([[1.0, np.nan]])}, "NaN/Inf"),
        ({"au": np.array([[1.0, np.inf]])}, "NaN/Inf"),
        ({"au": np.ones(35)}, "2-D"),
        ({"au": np.ones((2, 3, 4))}, "2-D"),
        ({"au": np.ones((0, 35))}, "empty"),
        ({"au": np.array([[1e6]])}, "overflow float16"),
        ({"au": np.array([["a"]])}, "not numeric"),
        ({"transcript": np.ones((1, 2))}, "reserved"),
    ],
)
def test_write_refuses_bad_arrays(tmp_path: Path, arrays, problem: str) -> None:
    path = tmp_path / "bad.npz"
    with pytest.raises(FeatureFileError) as err:
        write_features(path, arrays)
    assert problem in str(err.value) and str(path) in str(err.value)
    assert not path.exists() and os.listdir(tmp_path) == []


def test_write_refuses_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(FeatureFileError, match="unsupported suffix"):
        write_features(tmp_path / "x.pt", {"au": np.ones((1, 35))})


def _raw_npz(path: Path, **arrays) -> None:
    """Write an .npz with np.savez directly, bypassing write_features' checks."""
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("hubert", np.array([[0.0, np.nan]], dtype=np.float16), "NaN/Inf"),
        ("hubert", np.array([[np.inf, 0.0]], dtype=np.float32), "NaN/Inf"),
        ("hubert", np.ones(8, dtype=np.float16), "2-D"),
        ("hubert", np.ones((2, 2, 2), dtype=np.float16), "2-D"),
        ("hubert", np.ones((2, 1025), dtype=np.float16), "larger than max_dim 1024"),
        ("hubert", np.array([[1, 2]], dtype=object), "object dtype"),
        ("hubert", np.array([["x"]]), "not numeric"),
        ("transcript", np.array(["a", "b"]), "0-d unicode"),
    ],
)
def test_read_refuses_bad_arrays_naming_file_and_key(tmp_path: Path, key: str, value, problem: str) -> None:
    path = tmp_path / "v1.npz"
    if value.dtype == object:  # np.savez pickles object arrays; the reader must refuse them
        with open(path, "wb") as fh:
            np.savez(fh, **{key: value})
    else:
        _raw_npz(path, **{key: value})
    with pytest.raises(FeatureFileError) as err:
        read_features(path)
    msg = str(err.value)
    assert problem in msg and str(path) in msg and repr(key) in msg
    assert err.value.key == key and err.value.path == str(path)
    assert isinstance(err.value, ValueError)


def test_max_dim_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    write_features(path, {"clip": np.ones((2, 512))})
    assert read_features(path, max_dim=512).arrays["clip"].shape == (2, 512)
    with pytest.raises(FeatureFileError, match="larger than max_dim 256"):
        read_features(path, max_dim=256)


def test_unreadable_zero_byte_missing_and_truncated_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(FeatureFileError, match="zero-byte"):
        read_features(empty)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(FeatureFileError, match="not a valid .npz file"):
        read_features(garbage)
    good = tmp_path / "good.npz"
    write_features(good, {"au": np.ones((50, 35))})
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(FeatureFileError, match=str(truncated)):
        read_features(truncated)
    with pytest.raises(FeatureFileError, match="cannot read"):
        read_features(tmp_path / "missing.npz")
    st = tmp_path / "bad.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(FeatureFileError, match="not a valid .safetensors file"):
        read_features(st)
    st.write_bytes(b"\x0a\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(FeatureFileError, match="header is not JSON"):
        read_features(st)
    with pytest.raises(FeatureFileError, match="zero-byte"):
        read_features_bytes(b"", ".npz", "shard.tar:0001.npz")


def test_non_regular_files_are_reported_not_waited_on(tmp_path: Path) -> None:
    """A FIFO (or a folder) named like a feature file is an error; opening a FIFO for reading
    would otherwise block until a writer appears, hanging the data loader."""
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(FeatureFileError, match="not a regular file"):
        read_features(fifo)
    folder = tmp_path / "dir.npz"
    folder.mkdir()
    with pytest.raises(FeatureFileError, match="not a regular file"):
        read_features(folder)


def test_safetensors_validation_names_key(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "s.safetensors"
    save_file({"clip": np.ones((2, 2048), dtype=np.float16)}, str(path), metadata={"transcript": "t"})
    with pytest.raises(FeatureFileError) as err:
        read_features(path)
    assert err.value.key == "clip" and "max_dim" in str(err.value)


def _legacy(path: Path) -> dict:
    rng = np.random.default_rng(1)
    data = {
        "video_mae": rng.standard_normal((3, 768)).astype(np.float32),
        "clip": rng.standard_normal(1024).astype(np.float32),  # pooled vector, as the seed stored
        "hubert": rng.standard_normal((6, 1024)).astype(np.float32),
        "bert": rng.standard_normal((4, 768)).astype(np.float32),
        "au": rng.random((5, 35)).astype(np.float32),
        "transcript": "legacy words",
    }
    np.save(path, data, allow_pickle=True)
    return data


def test_legacy_npy_refused_without_flag(tmp_path: Path) -> None:
    path = tmp_path / "old.npy"
    _legacy(path)
    with pytest.raises(FeatureFileError) as err:
        read_features(path)
    msg = str(err.value)
    assert "unpickling runs arbitrary code" in msg
    assert "scripts/convert_legacy_features.py" in msg and "allow_pickle" in msg


def test_legacy_npy_read_with_flag_maps_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.npy"
    data = _legacy(path)
    rec = read_features(path, allow_pickle=True)
    assert set(rec.arrays) == {"videomae", "clip", "hubert", "bert", "au"}
    np.testing.assert_array_equal(rec.arrays["videomae"], data["video_mae"])
    np.testing.assert_array_equal(rec.arrays["clip"], data["clip"][None, :])
    assert rec.transcript == "legacy words"
    rec_b = read_features_bytes(path.read_bytes(), ".npy", "m", allow_pickle=True)
    np.testing.assert_array_equal(rec_b.arrays["hubert"], data["hubert"])
    bad = tmp_path / "list.npy"
    np.save(bad, np.array([1, 2, 3], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureFileError, match="must hold a dict"):
        read_features(bad, allow_pickle=True)


def test_find_feature_file_prefers_safe_formats(tmp_path: Path) -> None:
    assert find_feature_file(tmp_path, "v") is None
    _legacy(tmp_path / "v.npy")
    assert find_feature_file(tmp_path, "v") == tmp_path / "v.npy"
    write_features(tmp_path / "v.npz", {"au": np.ones((1, 35))})
    assert find_feature_file(tmp_path, "v") == tmp_path / "v.npz"


def test_npz_never_unpickles(tmp_path: Path) -> None:
    """An .npz member that holds a pickle is refused before any code could run."""

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.npz"
    buf = io.BytesIO()
    np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hubert.npy", buf.getvalue())
    with pytest.raises(FeatureFileError, match="object dtype"):
        read_features(path)
    assert not (tmp_path / "pwned").exists()


def test_convert_legacy_features_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    src, dst = tmp_path / "old", tmp_path / "new"
    src.mkdir()
    data = _legacy(src / "clip_a.npy")
    np.save(src / "clip_b.npy", {"hubert": np.full((2, 2048), 1.0, np.float32)}, allow_pickle=True)  # too wide
    cmd = [sys.executable, str(repo / "scripts/convert_legacy_features.py"), "--input_dir", str(src), "--output_dir", str(dst)]
    res = subprocess.run(cmd + ["--keep_going"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "clip_b.npy" in res.stderr and "max_dim" in res.stderr
    assert "converted 1" in res.stdout and "failed 1" in res.stdout
    rec = read_features(dst / "clip_a.npz")  # safe format now: no allow_pickle needed
    assert rec.transcript == "legacy words" and set(rec.arrays) == {"videomae", "clip", "hubert", "bert", "au"}
    np.testing.assert_array_equal(rec.arrays["videomae"], data["video_mae"].astype(np.float16).astype(np.float32))
    assert not (dst / "clip_b.npz").exists()
    (src / "clip_b.npy").unlink()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "skipped 1 existing" in res.stdout


def test_fast_and_fallback_npz_paths_agree(tmp_path: Path) -> None:
    """Compressed or Fortran-ordered members take numpy's general reader; same result."""
    from minigpt4.datasets.npz_container import npz_members

    rng = np.random.default_rng(3)
    arr = rng.standard_normal((6, 40)).astype(np.float16)
    plain = tmp_path / "plain.npz"
    write_features(plain, {"clip": arr}, transcript="t")
    assert npz_members(np.fromfile(plain, dtype=np.uint8)) is not None  # the fast path applies
    compressed = tmp_path / "comp.npz"
    with open(compressed, "wb") as fh:
        np.savez_compressed(fh, clip=arr, transcript=np.array("t"))
    assert npz_members(np.fromfile(compressed, dtype=np.uint8)) is None
    fortran = tmp_path / "fortran.npz"
    _raw_npz(fortran, clip=np.asfortranarray(arr), transcript=np.array("t"))
    for path in (compressed, fortran):
        rec = read_features(path)
        np.testing.assert_array_equal(rec.arrays["clip"], read_features(plain).arrays["clip"])
        assert rec.transcript == "t"


def test_corrupted_member_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "flip.npz"
    write_features(path, {"hubert": np.zeros((20, 1024))})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip a byte inside the array data
    path.write_bytes(bytes(raw))
    with pytest.raises(FeatureFileError, match="CRC|unreadable|Bad CRC"):
        read_features(path)


def test_stored_dtype_reads_and_float64_overflow(tmp_path: Path) -> None:
    path = tmp_path / "k.npz"
    arr = np.random.default_rng(4).standard_normal((5, 8))
    write_features(path, {"au": arr})
    raw = read_features(path, dtype=None)
    assert raw.arrays["au"].dtype == np.float16
    np.testing.assert_array_equal(raw.arrays["au"].astype(np.float32), read_features(path).arrays["au"])
    ok64 = tmp_path / "ok64.npz"
    _raw_npz(ok64, au=np.array([[1e30, -2.0]]))
    assert read_features(ok64, dtype=None).arrays["au"].dtype == np.float64  # in float32 range: kept
    nan16 = tmp_path / "nan16.npz"
    _raw_npz(nan16, au=np.array([[np.nan, np.inf, -np.inf, 1.0, 65504.0]], dtype=np.float16))
    with pytest.raises(FeatureFileError, match="3 NaN/Inf"):
        read_features(nan16, dtype=None)


def test_prefetch_hints_each_file_and_never_fails(tmp_path: Path, monkeypatch) -> None:
    """prefetch asks the kernel for every readable file (POSIX_FADV_WILLNEED) and leaves every
    problem (missing file, FIFO, folder) to the read that reports it: it must not raise or block."""
    from minigpt4.datasets import feature_io

    good = tmp_path / "good.npz"
    write_features(good, {"au": np.ones((3, 35))})
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    folder = tmp_path / "dir.npz"
    folder.mkdir()
    hinted = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        hinted.append((os.fstat(fd).st_ino, advice))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    feature_io.prefetch([tmp_path / "missing.npz", fifo, folder, good])
    assert (good.stat().st_ino, os.POSIX_FADV_WILLNEED) in hinted
    assert read_features(good).arrays["au"].shape == (3, 35)


@pytest.mark.parametrize("dtype", [None, np.float32])
@pytest.mark.parametrize("value", [1e300, -1e300, 3.5e38])
def test_float64_beyond_float32_names_file_and_key(tmp_path: Path, dtype, value: float) -> None:
    """Issue 20 case 8: a finite float64 value that overflows float32 used to pass `dtype=None`
    (the dataset's read) and become Inf in the batch: a loss crash naming no file, and an eval
    with all weights 0 for the clip and exit 0. Now the read refuses it, naming file and key."""
    big = tmp_path / "big.npz"
    _raw_npz(big, hubert=np.array([[1.0, value], [0.0, 2.0]]), transcript=np.array("t"))
    with pytest.raises(FeatureFileError) as err:
        read_features(big, dtype=dtype)
    assert err.value.path == str(big) and err.value.key == "hubert"
    assert f"values up to {value:g} overflow float32" in str(err.value)
    with pytest.raises(FeatureFileError, match="overflow float32"):
        read_features_bytes(big.read_bytes(), ".npz", "shard.tar:big.npz", dtype=dtype)
    st = tmp_path / "big.safetensors"
    from safetensors.numpy import save_file

    save_file({"clip": np.array([[value]])}, str(st))
    with pytest.raises(FeatureFileError, match="overflow float32") as err:
        read_features(st, dtype=dtype)
    assert err.value.key == "clip"
    ints = tmp_path / "ints.npz"  # int64 always fits float32: read, not refused
    _raw_npz(ints, au=np.array([[2**62, -(2**62)]], dtype=np.int64))
    assert read_features(ints).arrays["au"].dtype == np.float32


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".safetensors"])
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_random_bytes_are_not_called_pickled(tmp_path: Path, suffix: str, allow_pickle: bool) -> None:
    """Issue 20 case 8: random bytes named .npz were reported as "pickled (object) data" (numpy's
    words) and as .npy as a refused legacy pickle; now: not a valid file of that format."""
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(FeatureFileError) as err:
        read_features(path, allow_pickle=allow_pickle)
    msg = str(err.value)
    assert f"not a valid {suffix} file" in msg and str(path) in msg and "pickled" not in msg
    with pytest.raises(FeatureFileError, match=f"not a valid \\{suffix} file"):
        read_features_bytes(path.read_bytes(), suffix, "shard.tar:noise", allow_pickle=allow_pickle)


def test_plain_npy_and_renamed_npy_are_named_as_such(tmp_path: Path) -> None:
    """A .npy holding a plain array is no pickle (and no legacy dict); an .npy renamed .npz is no archive."""
    plain = tmp_path / "plain.npy"
    np.save(plain, np.ones((2, 3), np.float32))
    for allow in (False, True):
        with pytest.raises(FeatureFileError, match=r"a plain float32 array of shape \(2, 3\), not a legacy feature dict"):
            read_features(plain, allow_pickle=allow)
    renamed = tmp_path / "renamed.npz"
    renamed.write_bytes(plain.read_bytes())
    with pytest.raises(FeatureFileError, match="a single .npy array, not an .npz archive"):
        read_features(renamed)
