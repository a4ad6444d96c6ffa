"""Reusable zero-filled buffers for collated batches.

A collated batch `video_features [B, 5, T, max_dim]` is a few MB. Allocating it fresh for
every batch costs more than filling it: the C allocator hands blocks that large back to the
kernel when they are freed, so each new one is faulted in and zeroed page by page again
(~30 us per sample in bench/bench_data.py's loop, where the previous batch is still held
while the next one is built, as in a training loop).

`ZeroBufferPool.zeros` hands out arrays that view a few kept buffers. A buffer is handed out
again only once the array it last backed is gone, i.e. nothing refers to it any more: the
tensor `torch.from_numpy(array)` holds the array, and every view of that tensor holds the
tensor's storage, so a batch the caller still holds is never overwritten.

The contract for callers: wrap the returned array (`torch.from_numpy`) or keep the array
itself, but do not let a bare numpy *view* of it outlive it (numpy views point at the pool's
buffer, not at the returned array, so they would not keep the slot reserved).
"""
from __future__ import annotations

import math
import threading
import weakref
from typing import Optional

import numpy as np


class ZeroBufferPool:
    """Up to `slots` reusable buffers for zero-filled arrays of `min_bytes` to `max_bytes`;
    other sizes (and requests while every slot is in use) get a plain `np.zeros`.

    Three slots cover a training loop (the batch being built, the one the model holds, one
    prefetched); in DataLoader workers a batch leaves for shared memory at once, so one is
    reused. At most slots * max_bytes stay allocated (typical batches: 5 MB each).
    """

    def __init__(self, slots: int = 3, min_bytes: int = 1 << 20, max_bytes: int = 1 << 26) -> None:
        self.slots = int(slots)
        self.min_bytes = int(min_bytes)
        self.max_bytes = int(max_bytes)
        # each entry: [flat uint8 buffer, weak reference to the array it last backed (or None)]
        self._entries: list[list] = []
        self._lock = threading.Lock()

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A C-contiguous array of zeros of `shape` and `dtype`, like `np.zeros`."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if not self.min_bytes <= nbytes <= self.max_bytes:
            return np.zeros(shape, dtype)
        with self._lock:
            entry, fresh = self._free_entry(nbytes)
            if entry is None:
                if len(self._entries) >= self.slots:
                    return np.zeros(shape, dtype)  # all in use: the caller holds many batches
                entry, fresh = [np.zeros(nbytes, dtype=np.uint8), None], True
                self._entries.append(entry)
            out = entry[0][:nbytes].view(dtype).reshape(shape)
            if not fresh:  # fresh pages come zeroed from the kernel
                out.fill(0)
            entry[1] = weakref.ref(out)
            return out

    def _free_entry(self, nbytes: int) -> tuple[Optional[list], bool]:
        """(entry, fresh): a free buffer of at least `nbytes`; else a free one replaced by a
        fresh one of `nbytes` (the smallest, so the pool keeps its large buffers); else None."""
        free = [e for e in self._entries if e[1] is None or e[1]() is None]
        fits = [e for e in free if e[0].nbytes >= nbytes]
        if fits:
            return min(fits, key=lambda e: e[0].nbytes), False
        if free:
            entry = min(free, key=lambda e: e[0].nbytes)
            entry[0] = np.zeros(nbytes, dtype=np.uint8)
            return entry, True
        return None, False
