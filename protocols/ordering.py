"""Selection and order statistics, written once against the family interface: where, clamp, max/argmax.

Every function takes shares and reaches protocols only through ``ctx.family``
(its ``compare``, ``relu``, ``product`` and ``exact_rshift``), so any family
whose shares live in Z_2^64 runs them unchanged.

* ``mul_bits``: a secret 0/1 integer times a secret, one Beaver round and no
  truncation (the bit carries no fractional bits), exact.
* ``where(cond, a, b) = b + cond (a - b)``: the condition arrives in fixed
  point (``bit 2^f``), is turned into an integer bit exactly
  (``exact_rshift``, one round) and multiplied (one round).
  Rounds 2 (1 when ``a`` and ``b`` are public); bytes 8 + 16 per element.
* ``clamp`` with public bounds: one batch of two comparisons on the same
  opening, ``x + [x < lo](lo - x) + [x > hi](hi - x)`` from the bits and the
  products ``x bit`` of the comparison's last round.  Rounds 4; bytes
  8 + 2 x 35/8 per element.  Secret bounds: ``x + relu(lo - x) - relu(x - hi)``,
  both ReLUs in one batch (rounds 4).
* ``max_reduce``: a tournament over the last dimension: pairs ``(a, b)`` of
  neighbours give ``s = [a >= b]`` and ``max = b + relu(a - b)`` in one
  comparison (4 rounds per level, ``ceil(log2 C)`` levels); the winner's index
  ``i_b + s (i_a - i_b)`` (or its one-hot vector, kept per segment of the
  original positions) rides in the same comparison as a Beaver product whose
  opening goes with round 1.  Ties go to ``a``, the lower index, so argmax
  returns the *first* maximal position, as ``torch.argmax`` does.  Bytes per
  level: (8 + 35/8) per pair, + 8 per pair for the index (+ 8 per one-hot
  entry).

(Costs are those of the additive dealer family's comparison.)
"""

from __future__ import annotations

import torch

from mpc.context import PartyContext
from mpc.errors import ProtocolError
from mpc.shapes import broadcast_shapes
from mpc.shares import Share

from .correlated import OP_MUL

__all__ = ["mul_bits", "where", "clamp_public", "clamp_secret", "maximum", "max_reduce", "broadcast"]


def broadcast(a: Share, b: Share) -> tuple[Share, Share]:
    shape = broadcast_shapes(a.shape, b.shape)
    return (a if a.shape == shape else a.broadcast_to(shape)), (b if b.shape == shape else b.broadcast_to(shape))


def mul_bits(ctx: PartyContext, bits: Share, y: Share, op: str = "mulbit") -> Share:
    """``bits * y`` for integer 0/1 ``bits``: one Beaver round, exact (broadcasts)."""
    return ctx.family.product(ctx, OP_MUL, bits, y, op=op)


def where(ctx: PartyContext, cond: Share, a: Share, b: Share, op: str = "where") -> Share:
    """``cond ? a : b`` with ``cond`` a fixed-point 0/1 share, ``a`` and ``b`` shares. Rounds 2, exact."""
    bit = ctx.family.exact_rshift(ctx, cond, ctx.config.frac_bits, f"{op}:bit")
    return b + mul_bits(ctx, bit, a - b, f"{op}:mul")


def clamp_public(ctx: PartyContext, x: Share, lo: int | None, hi: int | None, op: str = "clamp") -> Share:
    """Clamp to public ring bounds (either may be None). Rounds 4, exact."""
    ts = ([lo] if lo is not None else []) + ([hi + 1] if hi is not None else [])
    if not ts:
        return x
    res = ctx.family.compare(ctx, x, ts, mul_input=True, op=op)  # [x < T] and x [x < T]
    out = x
    i = 0
    if lo is not None:
        # + [x < lo] (lo - x)
        out = out + res.bits[0].mul_public(lo) - res.xbits[0]
        i = 1
    if hi is not None:
        # + [x > hi] (hi - x) = (1 - [x < hi + 1]) (hi - x)
        under, xunder = res.bits[i], res.xbits[i]
        out = out + (-x).add_public(hi) - (under.mul_public(hi) - xunder)
    return out


def clamp_secret(ctx: PartyContext, x: Share, lo: Share | None, hi: Share | None, op: str = "clamp") -> Share:
    """Clamp to secret bounds (shares broadcastable to ``x``): ``x + relu(lo - x) - relu(x - hi)``. Rounds 4."""
    parts = []
    if lo is not None:
        parts.append(broadcast(lo - x, x)[0] if lo.shape != x.shape else lo - x)
    if hi is not None:
        parts.append(broadcast(x - hi, x)[0] if hi.shape != x.shape else x - hi)
    if not parts:
        return x
    shape = broadcast_shapes(*(p.shape for p in parts))
    r = ctx.family.relu(ctx, type(x).stack([p.broadcast_to(shape) for p in parts]), op)
    out = x if x.shape == shape else x.broadcast_to(shape)
    i = 0
    if lo is not None:
        out = out + r[0]
        i = 1
    if hi is not None:
        out = out - r[i]
    return out


def maximum(ctx: PartyContext, a: Share, b: Share, op: str = "maximum") -> Share:
    """Elementwise ``max(a, b) = b + relu(a - b)``. Rounds 4, exact."""
    a, b = broadcast(a, b)
    return b + ctx.family.relu(ctx, a - b, op)


def max_reduce(
    ctx: PartyContext, x: Share, index: bool = False, one_hot: bool = False, op: str = "max"
) -> tuple[Share, Share | None, Share | None]:
    """Maximum over the last dimension; optionally the (first) argmax as an integer and as a one-hot vector.

    Returns ``(values, index, one_hot)``; the index and one-hot entries are
    integers (not scaled).  Rounds ``4 ceil(log2 C)``.
    """
    c = x.shape[-1]
    if c == 0:
        raise ProtocolError("max: the reduced dimension is empty")
    kind = type(x)
    lead = tuple(x.shape[:-1])
    vals = x
    # Index of each candidate: public at first (None means "its own position").
    idx: Share | None = None
    pub_idx = torch.arange(c, dtype=torch.int64)
    # One-hot of each candidate over its segment of original positions: (…, cand, seg).
    seg = 1
    oh: Share | None = None  # None: public unit vectors (seg = 1)
    level = 0
    while vals.shape[-1] > 1:
        cand = vals.shape[-1]
        npair, odd = cand // 2, cand % 2
        a, b = vals[..., 0 : 2 * npair : 2], vals[..., 1 : 2 * npair : 2]
        extras = []
        if index and idx is not None:
            extras.append((idx[..., 0 : 2 * npair : 2] - idx[..., 1 : 2 * npair : 2]).unsqueeze(-1))
        if one_hot and oh is not None:
            extras.append(kind.cat([oh[..., 0 : 2 * npair : 2, :], oh[..., 1 : 2 * npair : 2, :]], -1))
        extra = kind.cat(extras, -1).unsqueeze(0) if extras else None
        res = ctx.family.compare(ctx, a - b, (0,), negate=True, mul_input=True, extra=extra, op=f"{op}{level}")
        s = res.bits[0]
        new_vals = b + res.xbits[0]
        yb = res.ybits[0] if res.ybits is not None else None
        col = 0
        if index:
            if idx is None:
                ia, ib = pub_idx[0 : 2 * npair : 2], pub_idx[1 : 2 * npair : 2]
                new_idx = s.mul_public(ia - ib).add_public(torch.broadcast_to(ib, s.shape))
            else:
                assert yb is not None
                new_idx = idx[..., 1 : 2 * npair : 2] + yb[..., 0]
                col = 1
        if one_hot:
            if oh is None:
                new_oh = kind.stack([s, (-s).add_public(1)], -1)
            else:
                assert yb is not None
                sa, sb = yb[..., col : col + seg], yb[..., col + seg : col + 2 * seg]
                new_oh = kind.cat([sa, oh[..., 1 : 2 * npair : 2, :] - sb], -1)
        if odd:
            new_vals = kind.cat([new_vals, vals[..., -1:]], -1)
            if index:
                last = idx[..., -1:] if idx is not None else _pub(kind, pub_idx[-1:], (*lead, 1), ctx.rank)
                new_idx = kind.cat([new_idx, last], -1)
            if one_hot:
                last_oh = oh[..., -1:, :] if oh is not None else _pub(kind, torch.ones(1, 1), (*lead, 1, 1), ctx.rank)
                pad = kind.public(torch.zeros((*lead, 1, seg), dtype=torch.int64), ctx.rank)
                new_oh = kind.cat([new_oh, kind.cat([last_oh, pad], -1)], -2)
        vals = new_vals
        if index:
            idx = new_idx
        if one_hot:
            oh = new_oh
            seg *= 2
        level += 1
    values = vals[..., 0]
    out_idx = out_oh = None
    if index:
        out_idx = idx[..., 0] if idx is not None else kind.public(torch.zeros(lead, dtype=torch.int64), ctx.rank)
    if one_hot:
        out_oh = _pub(kind, torch.ones(1), (*lead, 1), ctx.rank) if oh is None else oh[..., 0, :c]
    return values, out_idx, out_oh


def _pub(kind: type[Share], value: torch.Tensor, shape: tuple[int, ...], rank: int) -> Share:
    """A public integer tensor as a share, broadcast to ``shape``."""
    return kind.public(torch.broadcast_to(value.to(torch.int64), shape), rank)
