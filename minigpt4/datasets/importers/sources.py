"""What both importers read: the per-clip transcript CSV, and the error that says where a problem is.

A MERR-sized corpus has tens of thousands of lines, so every problem names the file and the
line (or, in a JSON file, the clip) it was found at.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

# Columns that hold the spoken sentence, in the order they are tried: MER2023's
# `transcription_en_all.csv` has `sentence`, MER2024's `sentence_en`, other releases
# `english` and `chinese` side by side (English is then preferred).
TRANSCRIPT_COLUMNS: tuple[str, ...] = ("sentence", "sentence_en", "english", "chinese")


class SourceError(ValueError):
    """A problem in an input file: `path`, then `line` (1-based) or `item` (a clip name) if known."""

    def __init__(self, path: PathLike, problem: str, line: Optional[int] = None, item: Optional[str] = None) -> None:
        self.path = str(path)
        self.line = line
        self.item = item
        self.problem = problem
        where = self.path
        if line is not None:
            where += f":{line}"
        if item is not None:
            where += f": clip {item!r}"
        super().__init__(f"{where}: {problem}")


@dataclass
class Transcripts:
    """Clip name -> sentence from one CSV. `empty`: rows whose sentence was blank (left out)."""

    path: str
    column: str
    texts: dict[str, str] = field(default_factory=dict)
    empty: int = 0


def _pick_column(path: PathLike, header: list[str], column: Optional[str]) -> str:
    if column is not None:
        if column not in header:
            raise SourceError(path, f"no column {column!r} (header: {header})", line=1)
        return column
    for name in TRANSCRIPT_COLUMNS:
        if name in header:
            return name
    raise SourceError(path, f"no transcript column: expected one of {list(TRANSCRIPT_COLUMNS)} "
                            f"(or name one with --transcript_column), header: {header}", line=1)


def read_transcripts(path: PathLike, column: Optional[str] = None) -> Transcripts:
    """Read a `name, <sentence column>` CSV (MER style). A clip named twice is an error at its
    second line; a blank sentence means "no transcript" (counted, not stored as "")."""
    try:
        fh = open(path, "r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SourceError(path, f"cannot open ({exc.strerror or exc})") from exc
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise SourceError(path, "empty file (expected a header with a 'name' column)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SourceError(path, f"unreadable CSV header ({exc})", line=1) from exc
        if "name" not in header:
            raise SourceError(path, f"CSV header must have a 'name' column, got {header}", line=1)
        col = _pick_column(path, header, column)
        i_name, i_text = header.index("name"), header.index(col)
        out = Transcripts(path=str(path), column=col)
        first: dict[str, int] = {}
        line = reader.line_num
        while True:
            start = line + 1  # a quoted sentence may span lines: report where its row starts
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                raise SourceError(path, f"unreadable CSV row ({exc})", line=start) from exc
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) <= max(i_name, i_text):
                raise SourceError(path, f"{len(row)} field(s), expected {len(header)} ({header})", line=start)
            name = row[i_name].strip()
            if not name:
                raise SourceError(path, "empty 'name'", line=start)
            if name in first:
                raise SourceError(path, f"clip {name!r} is listed twice (first at line {first[name]})", line=start)
            first[name] = start
            text = " ".join(row[i_text].split())
            if text:
                out.texts[name] = text
            else:
                out.empty += 1
    return out
