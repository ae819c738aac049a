"""Exact dealer-assisted truncation: divide shared values by 2^f, unbiased, in one round.

After a fixed-point product the value carries 2f fractional bits and must be
shifted right by f.  The local share-shifting trick of SecureML fails with
probability ~|x|/2^64 and then errs by ~2^(64-f); we do not use it.

Protocol (the dealer gives shares of a uniform ``r`` in Z_2^64, of ``r >> f``
as an unsigned shift, and of ``msb(r)``; cf. Escudero et al., "Improved
primitives for MPC over mixed arithmetic-binary circuits", CRYPTO 2020):

1. The holder of the public part adds ``K = 2^62``, so ``x' = x + K`` lies in
   [0, 2^63) for every |x| < 2^62 (the documented range: |value| < 2^(62-2f)
   before truncation).  ``exact`` callers (``x`` already in [0, 2^63)) add nothing.
2. Open ``c = x' + r mod 2^64`` to all (one round, 8 (n-1) bytes per element
   per party).  ``c`` is uniform whatever ``x`` is: it reveals nothing.
3. Because ``x' < 2^63``, the addition wrapped iff ``msb(r) = 1`` and
   ``msb(c) = 0``: the wrap bit is ``w = msb(r) (1 - msb(c))``, linear in the
   shared ``msb(r)``.
4. ``(c >> f) - (r >> f) + w 2^(64-f) = floor(x' / 2^f) + b``, where the carry
   ``b = [(x' mod 2^f) + (r mod 2^f) >= 2^f]`` out of the low bits is 1 with
   probability exactly ``(x' mod 2^f) / 2^f`` (``r`` is uniform).  Subtract
   ``K >> f``.

Result: ``floor(x / 2^f)`` or ``floor(x / 2^f) + 1``, the latter with
probability equal to the fractional part: stochastic rounding, so the error is
under one unit in the last place and its expectation is exactly zero; a
multiple of 2^f comes back exact.  There is no failure probability at all in
the range.  Outside the range the result is wrong by a multiple of 2^(64-f):
values must stay in range.  With ``exact`` (``x`` a multiple of 2^f in
[0, 2^63), a bit held in fixed point, say) there is no carry and the result is
exact.

Rounds 1 for any number of tensors; bytes per party 8 (n-1) per element;
the dealer sends 16 bytes per element to the last party.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpc.context import PartyContext
from mpc.ring import logical_rshift, msb, wrap_int
from mpc.shares import holds_public

from .sharing import open_all

__all__ = ["truncate", "truncate_many", "exact_rshift", "OFFSET_BITS"]

OFFSET_BITS = 62


def truncate_many(
    ctx: PartyContext, items: Sequence[tuple[torch.Tensor, int]], op: str, exact: bool = False
) -> list[torch.Tensor]:
    """Shares of ``x / 2^f`` for every ``(x, f)``, all in one round (the toolkit's one truncation)."""
    holder = holds_public(ctx.rank)
    todo = [(i, x, f) for i, (x, f) in enumerate(items) if f > 0 and x.numel() > 0]
    out = [x.clone() if f == 0 or x.numel() == 0 else None for x, f in items]
    if not todo:
        return out  # type: ignore[return-value]
    handles = [ctx.correlations.request("trunc", (f, *x.shape)) for _, x, f in todo]
    masked = []
    for (_, x, _f), h in zip(todo, handles, strict=True):
        (r,) = h.randoms
        masked.append((x + wrap_int(1 << OFFSET_BITS) if holder and not exact else x) + r)
    opened = open_all(ctx, masked, op)
    for (i, _x, f), h, c in zip(todo, handles, opened, strict=True):
        r_hi, r_msb = h.derived()
        y = r_msb * (1 - msb(c)) * wrap_int(1 << (64 - f)) - r_hi
        if holder:
            y += logical_rshift(c, f)
            if not exact:
                y -= 1 << (OFFSET_BITS - f)
        out[i] = y
    return out  # type: ignore[return-value]


def truncate(ctx: PartyContext, x: torch.Tensor, f: int | None = None, op: str = "trunc") -> torch.Tensor:
    """Shares of ``x / 2^f`` (stochastically rounded, unbiased) from shares of ``x``."""
    return truncate_many(ctx, [(x, ctx.config.frac_bits if f is None else f)], op)[0]


def exact_rshift(ctx: PartyContext, x: torch.Tensor, f: int, op: str = "unscale") -> torch.Tensor:
    """``x / 2^f`` exactly, for ``x`` a multiple of 2^f in [0, 2^63). Rounds 1."""
    return truncate_many(ctx, [(x, f)], op, exact=True)[0]
