"""Selection and order statistics built on ``protocols.comparison``: where, clamp, max/argmax.

* ``mul_bits``: a secret 0/1 integer times a secret, one Beaver round and no
  truncation (the bit carries no fractional bits), exact.
* ``where(cond, a, b) = b + cond (a - b)``: the condition arrives in fixed
  point (``bit 2^f``), is turned into an integer bit exactly
  (``conversions.exact_rshift``, one round) and multiplied (one round).
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
"""

from __future__ import annotations

import torch

from mpc.context import PartyContext
from mpc.errors import ProtocolError

from .beaver import beaver_product
from .comparison import compare, relu
from .conversions import exact_rshift
from .correlated import OP_MUL

__all__ = ["mul_bits", "where", "clamp_public", "clamp_secret", "maximum", "max_reduce"]


def mul_bits(ctx: PartyContext, bits: torch.Tensor, y: torch.Tensor, op: str = "mulbit") -> torch.Tensor:
    """``bits * y`` for integer 0/1 ``bits``: one Beaver round, exact (broadcasts)."""
    return beaver_product(ctx, OP_MUL, bits, y, name=op)


def unscale_bits(ctx: PartyContext, cond: torch.Tensor, op: str = "unscale") -> torch.Tensor:
    """Integer 0/1 shares from shares of a bit held in fixed point (``bit 2^f``), exactly. Rounds 1."""
    return exact_rshift(ctx, cond, ctx.config.frac_bits, op)


def where(ctx: PartyContext, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor, op: str = "where") -> torch.Tensor:
    """``cond ? a : b`` with ``cond`` a fixed-point 0/1 share, ``a`` and ``b`` shares. Rounds 2, exact."""
    bit = unscale_bits(ctx, cond, f"{op}:bit")
    return b + mul_bits(ctx, bit, a - b, f"{op}:mul")


def clamp_public(ctx: PartyContext, x: torch.Tensor, lo: int | None, hi: int | None, op: str = "clamp") -> torch.Tensor:
    """Clamp to public ring bounds (either may be None). Rounds 4, exact."""
    ts = ([lo] if lo is not None else []) + ([hi + 1] if hi is not None else [])
    if not ts:
        return x.clone()
    res = compare(ctx, x, ts, mul_input=True, op=op)  # [x < T] and x [x < T]
    assert res.bits is not None and res.xbits is not None
    out = x.clone()
    i = 0
    if lo is not None:
        # + [x < lo] (lo - x)
        out = out + res.bits[0] * lo - res.xbits[0]
        i = 1
    if hi is not None:
        # + [x > hi] (hi - x) = (1 - [x < hi + 1]) (hi - x)
        under, xunder = res.bits[i], res.xbits[i]
        hx = (hi if ctx.rank == 0 else 0) - x
        out = out + hx - (under * hi - xunder)
    return out


def clamp_secret(
    ctx: PartyContext, x: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None, op: str = "clamp"
) -> torch.Tensor:
    """Clamp to secret bounds (shares broadcastable to ``x``): ``x + relu(lo - x) - relu(x - hi)``. Rounds 4."""
    parts = []
    if lo is not None:
        parts.append(torch.broadcast_tensors(lo - x, x)[0])
    if hi is not None:
        parts.append(torch.broadcast_tensors(x - hi, x)[0])
    if not parts:
        return x.clone()
    r = relu(ctx, torch.stack(parts), op)
    out = torch.broadcast_tensors(x, r[0])[0].clone()
    i = 0
    if lo is not None:
        out = out + r[0]
        i = 1
    if hi is not None:
        out = out - r[i]
    return out


def maximum(ctx: PartyContext, a: torch.Tensor, b: torch.Tensor, op: str = "maximum") -> torch.Tensor:
    """Elementwise ``max(a, b) = b + relu(a - b)``. Rounds 4, exact."""
    a, b = torch.broadcast_tensors(a, b)
    return b + relu(ctx, a - b, op)


def max_reduce(
    ctx: PartyContext, x: torch.Tensor, index: bool = False, one_hot: bool = False, op: str = "max"
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Maximum over the last dimension; optionally the (first) argmax as an integer and as a one-hot vector.

    Returns ``(values, index, one_hot)``; the index and one-hot entries are
    integers (not scaled).  Rounds ``4 ceil(log2 C)``.
    """
    c = x.shape[-1]
    if c == 0:
        raise ProtocolError("max: the reduced dimension is empty")
    lead = tuple(x.shape[:-1])
    party0 = ctx.rank == 0
    vals = x
    # Index of each candidate: public at first (None means "its own position").
    idx: torch.Tensor | None = None
    pub_idx = torch.arange(c, dtype=torch.int64)
    # One-hot of each candidate over its segment of original positions: (…, cand, seg).
    seg = 1
    oh: torch.Tensor | None = None  # None: public unit vectors (seg = 1)
    level = 0
    while vals.shape[-1] > 1:
        cand = vals.shape[-1]
        npair, odd = cand // 2, cand % 2
        a, b = vals[..., 0 : 2 * npair : 2], vals[..., 1 : 2 * npair : 2]
        extras = []
        if index and idx is not None:
            extras.append((idx[..., 0 : 2 * npair : 2] - idx[..., 1 : 2 * npair : 2]).unsqueeze(-1))
        if one_hot and oh is not None:
            extras.append(torch.cat([oh[..., 0 : 2 * npair : 2, :], oh[..., 1 : 2 * npair : 2, :]], -1))
        extra = torch.cat(extras, -1).unsqueeze(0) if extras else None
        res = compare(ctx, a - b, (0,), negate=True, mul_input=True, extra=extra, op=f"{op}{level}")
        assert res.bits is not None and res.xbits is not None
        s = res.bits[0]
        new_vals = b + res.xbits[0]
        yb = res.ybits[0] if res.ybits is not None else None
        col = 0
        if index:
            if idx is None:
                ia, ib = pub_idx[0 : 2 * npair : 2], pub_idx[1 : 2 * npair : 2]
                new_idx = s * (ia - ib)
                if party0:
                    new_idx = new_idx + ib
            else:
                assert yb is not None
                new_idx = idx[..., 1 : 2 * npair : 2] + yb[..., 0]
                col = 1
        if one_hot:
            if oh is None:
                new_oh = torch.stack([s, -s + (1 if party0 else 0)], -1)
            else:
                assert yb is not None
                sa, sb = yb[..., col : col + seg], yb[..., col + seg : col + 2 * seg]
                new_oh = torch.cat([sa, oh[..., 1 : 2 * npair : 2, :] - sb], -1)
        if odd:
            new_vals = torch.cat([new_vals, vals[..., -1:]], -1)
            if index:
                last = idx[..., -1:] if idx is not None else _pub(pub_idx[-1:], (*lead, 1), party0)
                new_idx = torch.cat([new_idx, last], -1)
            if one_hot:
                last_oh = oh[..., -1:, :] if oh is not None else _pub(torch.ones(1, 1), (*lead, 1, 1), party0)
                pad = torch.zeros((*lead, 1, seg), dtype=torch.int64)
                new_oh = torch.cat([new_oh, torch.cat([last_oh, pad], -1)], -2)
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
        out_idx = idx[..., 0] if idx is not None else torch.zeros(lead, dtype=torch.int64)
    if one_hot:
        if oh is None:
            out_oh = _pub(torch.ones(1), (*lead, 1), party0)
        else:
            out_oh = oh[..., 0, :c]
    return values, out_idx, out_oh


def _pub(value: torch.Tensor, shape: tuple[int, ...], party0: bool) -> torch.Tensor:
    """A public integer tensor as shares (party 0 holds it), broadcast to ``shape``."""
    if party0:
        return torch.broadcast_to(value.to(torch.int64), shape).clone()
    return torch.zeros(shape, dtype=torch.int64)
