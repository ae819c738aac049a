"""Shape arithmetic without tensors.

``torch.broadcast_shapes`` runs through ``torch._refs`` in Python, 8-10 us a
call here, and its first call in a process imports sympy (327 ms of CPU and
35 MB of RSS, whose objects every full garbage collection then walks).  The
protocols ask for a broadcast shape on every product, at the parties and at
the dealer (the output shape of each request).  ``broadcast_shapes`` below
follows the same rules in 2-4 us.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

__all__ = ["broadcast_shapes"]


def _dims(shape: Iterable[int] | int) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints (``torch.Size`` and tuples of ints as they are; NumPy integers
    through ``operator.index``); a ``RuntimeError`` for anything else."""
    if isinstance(shape, tuple) and all(type(d) is int for d in shape):
        dims = shape
    else:
        try:
            dims = (operator.index(shape),) if not isinstance(shape, Iterable) else tuple(map(operator.index, shape))
        except TypeError:
            raise RuntimeError(f"broadcast_shapes: {shape!r} is not a shape (integer dimensions)") from None
    if any(d < 0 for d in dims):
        raise RuntimeError(f"broadcast_shapes: {tuple(dims)} is not a shape (non-negative dimensions)")
    return tuple(dims)


def broadcast_shapes(*shapes: Iterable[int] | int) -> tuple[int, ...]:
    """The shape that ``shapes`` broadcast to, by torch's (and NumPy's) rules: aligned at the last dimension,
    each dimension equal or 1 (a 0 broadcasts with 1 only).  A ``RuntimeError`` names the shapes that do not
    broadcast, as torch's does."""
    norm = [_dims(shape) for shape in shapes]
    out: list[int] = []
    for dims in norm:
        if len(dims) > len(out):
            out[:0] = [1] * (len(dims) - len(out))
        off = len(out) - len(dims)
        for i, d in enumerate(dims):
            have = out[off + i]
            if have == d or d == 1:
                continue
            if have != 1:
                raise RuntimeError(f"shape mismatch: shapes {tuple(norm)} cannot be broadcast to a single shape")
            out[off + i] = d
    return tuple(out)
