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

Division by any public integer ``d`` (``divide_many``) is the same protocol
with ``floor(r / d)`` (unsigned) from the dealer and ``K`` a multiple of ``d``
(``d ceil(2^62 / d)``, so the range is |x| < 2^62 - d): writing
``c = q_c d + r_c`` and ``2^64 = Q d + R``, the wrapped sum is
``c + w 2^64 = (q_c + w Q) d + r_c + w R``, so
``floor((x' + r) / d) = q_c + w (Q + [r_c + R >= d])``, linear in the shared
``w``; and ``floor((x' + r) / d) - floor(r / d) = floor(x' / d) + b`` with a
carry ``b`` that is 1 with probability ``(x' mod d) / d``: stochastic rounding
again, unbiased, under one unit, exact on multiples of ``d``.  Truncation is
the case ``d = 2^f`` (``R = 0``).

Rounds 1 for any number of tensors; bytes per party 8 (n-1) per element;
the dealer sends 8 + ceil(f / 8) bytes per element to the last party (the msb's
correction counts only modulo 2^f), and for a truncated product fused with its
triple only 2 ceil(f / 8) beyond the triple's 8 (``finish_rotated``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpc.context import PartyContext
from mpc.ring import logical_rshift, msb, wrap_int
from mpc.shares import holds_public

from .correlated import udiv
from .sharing import open_all

__all__ = ["truncate", "truncate_many", "divide_many", "exact_rshift", "finish_rotated", "OFFSET_BITS"]

OFFSET_BITS = 62


class Division:
    """A division begun (``divide_start``): the masked values to open, and what ``divide_finish`` needs."""

    def __init__(self, todo, out, pow2, handles, masked, exact) -> None:
        self.todo, self.out, self.pow2, self.handles, self.masked, self.exact = todo, out, pow2, handles, masked, exact


def divide_many(
    ctx: PartyContext, items: Sequence[tuple[torch.Tensor, int]], op: str, exact: bool = False
) -> list[torch.Tensor]:
    """Shares of ``x / d`` for every ``(x, d)`` with a public integer ``d >= 1``, all in one round.

    The toolkit's one truncation: ``truncate_many`` is the case ``d = 2^f``.
    ``exact``: every ``x`` is a multiple of its ``d`` in [0, 2^63) (no offset, no carry).
    """
    st = divide_start(ctx, items, exact)
    return divide_finish(ctx, st, open_all(ctx, st.masked, op) if st.masked else [])


def divide_start(ctx: PartyContext, items: Sequence[tuple[torch.Tensor, int]], exact: bool = False) -> Division:
    """``divide_many`` up to its opening: the masked values go into a round of the caller's choosing (a
    pipelined product opens them with the next block's Beaver openings), then ``divide_finish``."""
    holder = holds_public(ctx.rank)
    todo = [(i, x, int(d)) for i, (x, d) in enumerate(items) if d != 1 and x.numel() > 0]
    out = [x.clone() if d == 1 or x.numel() == 0 else None for x, d in items]
    if not todo:
        return Division(todo, out, [], [], [], exact)
    pow2 = [d & (d - 1) == 0 for _, _, d in todo]
    handles = [
        ctx.correlations.request("trunc", (d.bit_length() - 1, *x.shape))
        if p
        else ctx.correlations.request("div", (d, *x.shape))
        for (_, x, d), p in zip(todo, pow2, strict=True)
    ]
    masked = []
    for (_, x, d), h in zip(todo, handles, strict=True):
        (r,) = h.randoms  # this request's own draw, not needed after: the masked value is built in it
        m = r.add_(x)
        if holder and not exact:
            m += wrap_int(_offset(d))
        masked.append(m)
    return Division(todo, out, pow2, handles, masked, exact)


def divide_finish(ctx: PartyContext, st: Division, opened: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The shares of ``divide_start``'s quotients, from the opened masked values."""
    holder = holds_public(ctx.rank)
    todo, out, exact = st.todo, st.out, st.exact
    for (i, _x, d), p, h, c in zip(todo, st.pow2, st.handles, opened, strict=True):
        r_q, r_msb = h.derived()
        w = r_msb * (1 - msb(c))
        if p:
            f = d.bit_length() - 1
            y = w * wrap_int(1 << (64 - f)) - r_q
            if holder:
                y += logical_rshift(c, f)
        else:
            big_q, big_r = divmod(1 << 64, d)
            q_c = udiv(c, d)
            r_c = c - q_c * d  # c mod d, as c - q d in the ring (exact: 0 <= c mod d < d)
            y = w * (wrap_int(big_q) + (r_c + big_r >= d).to(torch.int64)) - r_q
            if holder:
                y += q_c
        if holder and not exact:
            y -= _offset(d) // d
        out[i] = y
    return out  # type: ignore[return-value]


def finish_rotated(ctx: PartyContext, c: torch.Tensor, s: torch.Tensor, t: torch.Tensor, m: torch.Tensor, f: int):
    """Shares of ``x / 2^f`` from the opened ``c = x + K + r`` when the mask is ``r = rotl(s, f)`` (a fused
    product's ``ptrunc`` material: ``s`` random, ``t`` = the top f bits of ``s`` and ``m = msb(r)`` derived).

    ``r >> f = s - t 2^(64-f)``, so step 4 above becomes
    ``(c >> f) - s + (t + m (1 - msb(c))) 2^(64-f) - K / 2^f``: the same result as
    ``divide_finish``'s, with ``t`` and ``m`` counting only modulo 2^f.  ``t``, ``m`` and ``s`` are consumed.
    """
    y = m.mul_(1 - msb(c)).add_(t).mul_(wrap_int(1 << (64 - f))).sub_(s)
    if holds_public(ctx.rank):
        y += logical_rshift(c, f)
        y -= (1 << OFFSET_BITS) >> f
    return y


def _offset(d: int) -> int:
    """``K``: the smallest multiple of ``d`` that is at least 2^62 (it maps |x| < 2^62 - d into [0, 2^63))."""
    return -(-(1 << OFFSET_BITS) // d) * d


def truncate_many(
    ctx: PartyContext, items: Sequence[tuple[torch.Tensor, int]], op: str, exact: bool = False
) -> list[torch.Tensor]:
    """Shares of ``x / 2^f`` for every ``(x, f)``, all in one round."""
    return divide_many(ctx, [(x, 1 << f) for x, f in items], op, exact)


def truncate(ctx: PartyContext, x: torch.Tensor, f: int | None = None, op: str = "trunc") -> torch.Tensor:
    """Shares of ``x / 2^f`` (stochastically rounded, unbiased) from shares of ``x``."""
    return truncate_many(ctx, [(x, ctx.config.frac_bits if f is None else f)], op)[0]


def exact_rshift(ctx: PartyContext, x: torch.Tensor, f: int, op: str = "unscale") -> torch.Tensor:
    """``x / 2^f`` exactly, for ``x`` a multiple of 2^f in [0, 2^63). Rounds 1."""
    return truncate_many(ctx, [(x, f)], op, exact=True)[0]
