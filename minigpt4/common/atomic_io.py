"""Atomic file writes: a temp file beside the target, fsync, then one rename.

A reader (or a crash) never sees a half-written feature file, checkpoint note, annotation
list or plot. Files get the usual umask-derived mode (mkstemp alone would leave them 0600,
unreadable to the rest of a team sharing the output folder).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Union

PathLike = Union[str, Path]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """Yield a file object for `path` (mode "w" text/UTF-8 or "wb"); it appears only on success.

    On any exception the temp file is removed and `path` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: PathLike, data: Any) -> Path:
    """Write `data` as indented UTF-8 JSON (one trailing newline) to `path` atomically."""
    return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")


def check_replaceable_dir(path: PathLike, replaceable: Callable[[Path], bool]) -> None:
    """Raise unless `path` is absent or a folder whose every entry `replaceable` accepts (call it
    before a long job, so a wrong output folder fails at once rather than after the work)."""
    final = Path(path)
    if not final.exists():
        return
    if not final.is_dir():
        raise NotADirectoryError(f"{final} exists and is not a folder")
    foreign = sorted(p.name for p in final.iterdir() if not replaceable(p))
    if foreign:
        raise FileExistsError(f"{final} holds files this command did not write ({', '.join(foreign[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''}); choose another output folder")


@contextmanager
def atomic_dir(path: PathLike, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Fill a folder as a whole: yields a fresh temp folder beside `path`; on success it replaces
    `path` (so no file of an earlier fill survives next to the new ones), on error it is removed
    and `path` is left as it was. An existing `path` holding anything `replaceable(file)` rejects
    is an error before anything is written: this never deletes what it did not write."""
    import shutil

    final = Path(path)
    check_replaceable_dir(final, replaceable)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.{os.getpid()}.old"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
