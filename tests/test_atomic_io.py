"""atomic_io: a write appears whole or not at all, with a shareable file mode."""
from __future__ import annotations

import os
import stat

import pytest

from minigpt4.common.atomic_io import atomic_open, atomic_write_text


def test_write_creates_parents_and_uses_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n")
    finally:
        os.umask(old)
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path, "wb") as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "y", "a"):
            pass


def test_json_is_indented_utf8_with_one_trailing_newline(tmp_path):
    from minigpt4.common.atomic_io import atomic_write_json

    path = atomic_write_json(tmp_path / "d.json", {"emotion": "häppy", "n": [1]})
    assert path.read_text(encoding="utf-8") == '{\n "emotion": "häppy",\n "n": [\n  1\n ]\n}\n'
