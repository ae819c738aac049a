"""Exact dealer-assisted truncation: divide a shared value by 2^f.

After a fixed-point product the value carries 2f fractional bits and must be
shifted right by f.  The local share-shifting trick of SecureML fails with
probability ~|x|/2^64 and then errs by ~2^(64-f); we do not use it.

Protocol (the dealer gives shares of a uniform ``r`` in Z_2^64, of ``r >> f``
as an unsigned shift, and of ``msb(r)``; cf. Escudero et al., "Improved
primitives for MPC over mixed arithmetic-binary circuits", CRYPTO 2020):

1. Party 0 adds ``K + 2^(f-1)`` with ``K = 2^62``, so ``x' = x + K + 2^(f-1)``
   lies in [0, 2^63) for every |x| < 2^62 - 2^(f-1) (the documented range:
   |value| < 2^(62-2f) before truncation).
2. Open ``c = x' + r mod 2^64`` to all (one round, 8 (n-1) bytes per element
   per party).  ``c`` is uniform whatever ``x`` is: it reveals nothing.
3. Because ``x' < 2^63``, the addition wrapped iff ``msb(r) = 1`` and
   ``msb(c) = 0``: the wrap bit is ``w = msb(r) (1 - msb(c))``, linear in the
   shared ``msb(r)``.
4. ``x' >> f = (c >> f) - (r >> f) + w 2^(64-f) - b`` with a borrow ``b`` in
   {0, 1} from the low bits; the parties cannot know ``b`` and leave it out,
   then subtract ``K >> f`` to get the result.

Result: ``round(x / 2^f) + b`` (round half up), at most one unit in the last place above, for
every ``x`` in the range; there is no failure probability at all (the bound
2^-40 the toolkit promises is met with probability 1).  Outside the range the
result is wrong by a multiple of 2^(64-f): values must stay in range.

Rounds 1; bytes per party 8 (n-1) per element; dealer sends 16 bytes per
element to the last party.
"""

from __future__ import annotations

import torch

from mpc.context import PartyContext
from mpc.ring import logical_rshift, msb, wrap_int

from .sharing import open_all

__all__ = ["truncate", "OFFSET_BITS"]

OFFSET_BITS = 62


def truncate(ctx: PartyContext, x: torch.Tensor, f: int | None = None, op: str = "trunc") -> torch.Tensor:
    """Shares of ``x / 2^f`` (rounded half up, then +1 ulp at most) from shares of ``x``."""
    f = ctx.config.frac_bits if f is None else f
    if f == 0:
        return x
    handle = ctx.correlations.request("trunc", (f, *x.shape))
    (r,) = handle.randoms
    xp = x + wrap_int((1 << OFFSET_BITS) + (1 << (f - 1))) if ctx.rank == 0 else x
    (c,) = open_all(ctx, [xp + r], op)
    r_hi, r_msb = handle.derived()
    w = r_msb * (1 - msb(c))
    out = w * wrap_int(1 << (64 - f)) - r_hi
    if ctx.rank == 0:
        out += logical_rshift(c, f) - (1 << (OFFSET_BITS - f))
    return out
