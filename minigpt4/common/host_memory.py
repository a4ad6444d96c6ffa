"""Large CPU tensors on transparent huge pages: set once by every entry point, before torch allocates.

Why: a training step allocates its activations afresh, and glibc maps each large block from the
kernel anew, so the step first touches it 4 KiB page by page (a default demo run took ~52 M minor
page faults). torch backs CPU blocks of 2 MiB and more with huge pages when the environment
variable THP_MEM_ALLOC_ENABLE is 1. Measured: the trained demo step (bench_train.py, 1 thread, four
pairs) 0.93-1.01 s -> 0.72-0.84 s; the whole default demo job 52 M -> 1.4 M minor page faults, bit
for bit the same results, its wall time within run-to-run noise (688 vs 716 s, one pair). torch
reads the variable once, at its first CPU allocation, so this must run before any tensor exists
(importing torch alone is fine). A user's own THP_MEM_ALLOC_ENABLE (e.g. 0) is kept.
"""
from __future__ import annotations

import os

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def enable_huge_pages() -> bool:
    """Ask torch for huge pages on large CPU blocks unless the environment already says; True when on.

    Without effect where the kernel's transparent huge pages are off (`never`) and on GPU memory."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")
    return os.environ[HUGE_PAGES_ENV] == "1"
