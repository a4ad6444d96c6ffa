"""Large CPU tensors on transparent huge pages: set once by every entry point, before torch allocates.

Why: a training step allocates its activations afresh, and glibc maps each large block from the
kernel anew, so the step first touches it 4 KiB page by page (a default demo run took ~52 M minor
page faults). torch backs CPU blocks of 2 MiB and more with huge pages when the environment
variable THP_MEM_ALLOC_ENABLE is 1; measured on the trained demo step (1 thread): 0.96-1.01 s ->
0.75-0.84 s, results bit for bit the same. torch reads the variable once, at its first CPU
allocation, so this must run before any tensor exists (importing torch alone is fine).
A user's own THP_MEM_ALLOC_ENABLE (e.g. 0) is kept.
"""
from __future__ import annotations

import os

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def enable_huge_pages() -> bool:
    """Ask torch for huge pages on large CPU blocks unless the environment already says; True when on.

    Without effect where the kernel's transparent huge pages are off (`never`) and on GPU memory."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")
    return os.environ[HUGE_PAGES_ENV] == "1"
