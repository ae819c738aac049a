"""The ``additive-dealer`` family: n-out-of-n additive sharing over Z_2^64 with a seed-compressed dealer.

Shares are ``AdditiveShare`` (and ``BinaryShare`` for XOR-shared words).  The
primitives are the ring kernels of ``sharing``, ``beaver``, ``truncation``,
``binary`` and ``conversions``; the family overrides two composites with
dealer-assisted variants: ``compare`` (``protocols.comparison``: 4 rounds
instead of the generic 9) and ``powers`` (one opening for all powers).
The dealer is this family's extra node: the party setup asks ``needs_dealer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mpc.context import Communicator, CorrelationSource, PartyContext
from mpc.shares import AdditiveShare, BinaryShare, Share, holds_public

from . import beaver, binary, comparison, conversions, lookup, ring_family, sharing, truncation
from .correlated import OP_MUL, DealerSource
from .family import CmpResult
from .ring_family import RingFamily

__all__ = ["AdditiveDealerFamily"]


def _a(ctx: PartyContext, t: torch.Tensor) -> AdditiveShare:
    return AdditiveShare(t, holds_public(ctx.rank))


def _b(ctx: PartyContext, t: torch.Tensor) -> BinaryShare:
    return BinaryShare(t, holds_public(ctx.rank))


def _wrap(ctx: PartyContext, t: torch.Tensor | None) -> AdditiveShare | None:
    return None if t is None else _a(ctx, t)


class AdditiveDealerFamily(RingFamily):
    """n-out-of-n additive sharing with a dealer (n >= 2); secure against a semi-honest coalition of n-1."""

    name = "additive-dealer"
    min_parties = 2
    needs_dealer = True

    def correlation_source(
        self, comm: Communicator, seed: bytes | None, rank: int, world_size: int
    ) -> CorrelationSource | None:
        if seed is None:
            raise ValueError("the additive-dealer family needs the dealer's seed")
        return DealerSource(comm, seed, rank, world_size)

    # ----- sharing and opening -------------------------------------------------------------------
    def share_input(self, ctx: PartyContext, value: Any, owner: int) -> tuple[Share, torch.dtype]:
        if ctx.rank == owner and value is not None:
            self.check_input(ctx, value)
        t, dtype = sharing.share_input(ctx, value, owner)
        return _a(ctx, t), dtype

    def open_all(self, ctx: PartyContext, shares: Sequence[Share], op: str) -> list[torch.Tensor]:
        return sharing.open_all(ctx, [s.data for s in shares], op)  # type: ignore[attr-defined]

    def open_to(self, ctx: PartyContext, share: Share, to: int, op: str) -> torch.Tensor | None:
        return sharing.open_to(ctx, share.data, to, op)  # type: ignore[attr-defined]

    # ----- products and truncation -----------------------------------------------------------------
    def product(self, ctx, kind, x, y, extra=(), op="mul"):
        return _a(ctx, beaver.beaver_product(ctx, kind, x.data, y.data, extra, name=op))

    def mul_blocks(self, ctx, x, y, op="mul"):
        if ctx.config.frac_bits == 0:
            return super().mul_blocks(ctx, x, y, op)
        return _a(ctx, beaver.mul_blocks(ctx, x.data, y.data, ctx.config.frac_bits, ring_family.MUL_BLOCK, op))

    def product_many(self, ctx, items, op="mul"):
        zs = beaver.beaver_products(ctx, [(k, x.data, y.data, e) for k, x, y, e in items], name=op)
        return [_a(ctx, z) for z in zs]

    def product_truncated_many(self, ctx, items, op="mul"):
        f = ctx.config.frac_bits
        if f == 0:
            return super().product_truncated_many(ctx, items, op)
        # Matrix products and convolutions keep their operands' opened masks (a weight, a data matrix: used
        # again in the backward pass or the next step); elementwise products do not (their operands rarely
        # recur, and a mask kept is twice the operand's memory for as long as it lives).
        memos = [(x.memo(), y.memo()) if k != OP_MUL else (None, None) for k, x, y, _ in items]
        zs = beaver.product_truncated_many(
            ctx, [(k, x.data, y.data, e) for k, x, y, e in items], f, name=op, memos=memos
        )
        return [_a(ctx, z) for z in zs]

    def square_raw(self, ctx, x, op="square"):
        return _a(ctx, beaver.square_raw(ctx, x.data, op))

    def divide_many(self, ctx, items, op):
        return [_a(ctx, t) for t in truncation.divide_many(ctx, [(s.data, d) for s, d in items], op)]

    def exact_rshift(self, ctx, x, bits, op):
        return _a(ctx, truncation.exact_rshift(ctx, x.data, bits, op))

    def powers(self, ctx, v, degree, f, op):
        return [_a(ctx, t) for t in beaver.powers(ctx, v.data, degree, f, op)]

    # ----- binary shares and conversions -----------------------------------------------------------
    def and_(self, ctx, x, y, op="and"):
        return _b(ctx, binary.and_(ctx, x.data, y.data, op))

    def open_words(self, ctx, words, op):
        return binary.open_words(ctx, [w.data for w in words], op)

    def b2a(self, ctx, bits, op="b2a"):
        return _a(ctx, conversions.b2a(ctx, bits.data, op))

    def b2a_positions(self, ctx, words, positions, flip, op="b2a"):
        return _a(ctx, conversions.b2a_positions(ctx, words.data, list(positions), list(flip), op))

    def a2b(self, ctx, x, op="a2b"):
        return _b(ctx, conversions.a2b(ctx, x.data, op))

    # ----- the dealer-assisted comparison (overrides the generic one) ----------------------------------
    def compare(self, ctx: PartyContext, x: Share, thresholds: Sequence[int], **kw: Any) -> CmpResult:
        extra = kw.pop("extra", None)
        res = comparison.compare(ctx, x.data, thresholds, extra=None if extra is None else extra.data, **kw)
        return CmpResult(
            bits=_wrap(ctx, res.bits),
            binary=None if res.binary is None else _b(ctx, res.binary),
            xbits=_wrap(ctx, res.xbits),
            ybits=_wrap(ctx, res.ybits),
        )

    # ----- the one-hot table lookup (overrides the thermometer tables where the encoding allows) -------
    def exp(self, ctx: PartyContext, x: Share) -> Share:
        if not lookup.exp_supports(ctx.config.frac_bits):
            return super().exp(ctx, x)
        return _a(ctx, lookup.exp_lookup(ctx, x.data, lookup.EXP_HI, "exp"))

    def exp_nonpositive(self, ctx: PartyContext, x: Share) -> Share:
        if not lookup.exp_supports(ctx.config.frac_bits):
            return super().exp_nonpositive(ctx, x)
        return _a(ctx, lookup.exp_lookup(ctx, x.data, None, "exp"))

    def sigmoid(self, ctx: PartyContext, x: Share) -> Share:
        if not lookup.fits(lookup.SIGMOID, ctx.config.frac_bits):
            return super().sigmoid(ctx, x)
        return _a(ctx, lookup.uniform_lookup(ctx, x.data, lookup.SIGMOID, "sigmoid"))

    def tanh(self, ctx: PartyContext, x: Share) -> Share:
        if not lookup.fits(lookup.TANH, ctx.config.frac_bits):
            return super().tanh(ctx, x)
        return _a(ctx, lookup.uniform_lookup(ctx, x.data, lookup.TANH, "tanh"))
