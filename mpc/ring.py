"""The ring Z_2^64 represented by torch.int64 with wrap-around arithmetic.

torch's int64 addition, subtraction and multiplication wrap modulo 2^64 on
every backend we use, so a share is simply an int64 tensor.  This module holds
the few helpers that need care: logical (unsigned) shifts and the top bit.
"""

from __future__ import annotations

import torch

BITS = 64
DTYPE = torch.int64

__all__ = ["BITS", "DTYPE", "logical_rshift", "msb", "wrap_int"]


def logical_rshift(x: torch.Tensor, k: int) -> torch.Tensor:
    """Shift ``x`` right by ``k`` bits treating it as an unsigned 64-bit value."""
    if k == 0:
        return x.clone()
    mask = (1 << (BITS - k)) - 1
    return (x >> k) & mask


def msb(x: torch.Tensor) -> torch.Tensor:
    """The top bit of ``x`` (as unsigned), 0 or 1, as int64."""
    return (x >> (BITS - 1)) & 1


def wrap_int(v: int) -> int:
    """Map a Python integer to the int64 value congruent modulo 2^64."""
    v &= (1 << BITS) - 1
    return v - (1 << BITS) if v >= 1 << (BITS - 1) else v
