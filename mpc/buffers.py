"""Large byte buffers used again once nothing refers to them: messages received, dealer corrections packed,
large draws from the correlated-randomness streams (``mpc.prg.Prg`` with a pool).

A message of several chunks is put together in one buffer of its size, and
that buffer is what the receive returns (a dealer's correction is unpacked
into views of it); the dealer packs each correction into one buffer, which the
link keeps until the receiver acknowledges it.  A fresh buffer of tens of MB
costs a page fault per 4 KiB page the first time it is written, every time:
the 43 MB correction of a sigmoid of 10^5 elements spent about 20 ms of the
last party's time in them, on the path every party waits on
(``scripts/profile_workload.py sigmoid``: the receiver's ``_continue``, 22 ->
3 ms with the buffer reused).  A loop sends and receives the same sizes over
and over, so buffers of at least ``MIN_BYTES`` are kept and handed out again
for the same size once the last view of the previous one is gone.

The pool watches the numpy array it built the tensor on, with a weak
reference: every tensor or array that shares the memory (``torch.from_numpy``,
views, reshapes, ``.numpy()`` of those) keeps that array alive, so a buffer is
handed out again only when no one can read or write it.  At most ``KEEP``
buffers and ``MAX_BYTES`` in all are kept (idle buffers of other sizes make
room for a new size); beyond, buffers are allocated as before and freed with
their last view.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

__all__ = ["BufferPool", "MIN_BYTES", "MAX_BYTES", "KEEP"]

MIN_BYTES = 8 << 20  # smaller buffers come from the allocator's own free lists, without new pages
MAX_BYTES = 256 << 20  # the most kept, in all
KEEP = 4


class BufferPool:
    """Hands out uint8 tensors of a given size, reusing those whose every view has died."""

    def __init__(self, keep: int = KEEP, min_bytes: int = MIN_BYTES, max_bytes: int = MAX_BYTES) -> None:
        self.keep, self.min_bytes, self.max_bytes = keep, min_bytes, max_bytes
        self._slots: list[tuple[bytearray, weakref.ref | None]] = []  # (memory, the array handed out last)
        self.reused = 0  # buffers handed out again (for tests)

    def take(self, nbytes: int) -> torch.Tensor:
        """A writable uint8 tensor of ``nbytes`` (contents undefined)."""
        if not self.min_bytes <= nbytes <= self.max_bytes:
            return torch.empty(nbytes, dtype=torch.uint8)
        idle = [i for i, (_, ref) in enumerate(self._slots) if ref is None or ref() is None]
        for i in idle:
            if len(self._slots[i][0]) == nbytes:
                self.reused += 1
                return self._hand(i)
        for i in reversed(idle):  # idle buffers of other sizes make room, up to KEEP buffers and MAX_BYTES
            if len(self._slots) < self.keep and self.kept_bytes + nbytes <= self.max_bytes:
                break
            del self._slots[i]
        if len(self._slots) >= self.keep or self.kept_bytes + nbytes > self.max_bytes:
            return torch.empty(nbytes, dtype=torch.uint8)  # the kept buffers are in use: this one is not kept
        self._slots.append((bytearray(nbytes), None))
        return self._hand(len(self._slots) - 1)

    def _hand(self, i: int) -> torch.Tensor:
        memory = self._slots[i][0]
        arr = np.frombuffer(memory, dtype=np.uint8)
        self._slots[i] = (memory, weakref.ref(arr))
        return torch.from_numpy(arr)

    @property
    def kept_bytes(self) -> int:
        return sum(len(m) for m, _ in self._slots)
