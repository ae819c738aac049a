"""``RingFamily``: the composites every family over Z_2^64 with fixed-point encoding shares.

The primitives are abstract (``protocols.family.ProtocolFamily``); everything
here is written against them once: fixed-point products and truncation,
comparison (a generic version over ``a2b``/``b2a``, which a family overrides
with a faster one), ReLU, where, clamp, max/argmax, pooling's tournament, and
every nonlinear function (``protocols.nonlinear``).  The user layer calls only
these methods and the primitives, through ``ctx.family``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import torch

from mpc.callsite import OncePerSite, lossy_constants
from mpc.context import PartyContext
from mpc.errors import FixedPointWarning
from mpc.fixedpoint import FixedPoint
from mpc.ring import wrap_int
from mpc.shares import AdditiveShare, Share

from . import nonlinear, ordering
from .approx import piecewise
from .correlated import MAX_DIVISOR, OP_CONV2D, OP_MATMUL, OP_MUL
from .family import CmpResult, ProtocolFamily

__all__ = ["RingFamily", "compare_generic", "powers_generic", "APPROACH"]

# A revealed value within this factor of the range's edge warns that the program is about to overflow.
APPROACH = 16


def _ratio(c: Fraction, bound: int) -> tuple[int, int]:
    """``(m, d)`` with ``|m| <= bound``, ``d >= 1`` and ``m / d`` the best such approximation of ``c``."""
    if c == 0:
        return 0, 1
    sign = -1 if c < 0 else 1
    a = abs(c)
    if a.denominator == 1 and a.numerator <= bound:
        return sign * a.numerator, 1
    inv = (1 / a).limit_denominator(bound)  # d / m: the best approximation of 1/c with m <= bound
    if inv == 0:
        return 0, 1
    return sign * inv.denominator, inv.numerator


def compare_generic(
    ctx: PartyContext,
    x: Share,
    thresholds: Sequence[int],
    *,
    negate: bool = False,
    arithmetic: bool = True,
    mul_input: bool = False,
    extra: Share | None = None,
    bit: int = 63,
    op: str = "cmp",
) -> CmpResult:
    """``[x < T_k]`` from the primitives alone: bit ``bit`` of ``a2b(x - T_k)``, then ``b2a`` and products.

    Rounds 7 (a2b) + 1 (b2a) + 1 (products); a family with a dedicated
    comparison overrides ``compare``.
    """
    fam = ctx.family
    kk = len(thresholds)
    kind = type(x)
    xs = kind.stack([x.add_public(wrap_int(-int(t))) for t in thresholds])
    word = (fam.a2b(ctx, xs, f"{op}:a2b") >> bit).and_public(1)
    if negate:
        word = word.xor_public(1)
    if not arithmetic:
        return CmpResult(binary=word)
    bits = fam.b2a(ctx, word, f"{op}:b2a")
    res = CmpResult(bits=bits)
    if mul_input:
        res.xbits = fam.product(ctx, OP_MUL, bits, x.unsqueeze(0).broadcast_to((kk, *x.shape)), op=f"{op}:mul")
    if extra is not None:
        res.ybits = fam.product(ctx, OP_MUL, bits.unsqueeze(-1), extra, op=f"{op}:mulx")
    return res


def powers_generic(ctx: PartyContext, v: Share, degree: int, f: int, op: str) -> list[Share]:
    """``[v, v^2, ..., v^degree]`` by repeated fixed-point products (2 rounds per power)."""
    out = [v]
    for _ in range(2, degree + 1):
        out.append(ctx.family.truncate_many(ctx, [(ctx.family.product(ctx, OP_MUL, out[-1], v, op=op), f)], op)[0])
    return out


# Elementwise products of more elements than this run block by block (two rounds a block): the working set
# (openings, the dealer's material, the truncation's masks: about a dozen ring elements per element) stays
# a few hundred MB at any size, and the result is the only buffer that grows with the size.  The dealer
# generates each block's material when asked, so its memory is bounded the same way.
BLOCK_ELEMENTS = 1 << 20
# Elementwise products over this many elements run block by block, pipelined (``beaver.mul_blocks``: block
# k's truncation opens in the round of block k + 1's Beaver openings, so B blocks take B + 1 rounds and two
# blocks' working sets are alive at once).  Measured (``scripts/bench.py --memory``, 2 parties, with the
# openings built in one buffer and the products finished in place): at 2^17, 10^6 elements take 9 rounds
# and 37 / 7 bytes per element beyond the inputs (issue 11 asks at most 48); at 2^18, 5 rounds and 80 / 57;
# at 2^20, 2 rounds and 130 / 100.  The 2^17 blocks cost time on a bare 10^6 multiply (0.17 s against
# 0.12 s at 2^20, 2 parties): memory first; products of networks' layers are far below a block.
MUL_BLOCK = 1 << 17


def _blockwise(x: Share, y: Share, fn: Callable[[Share, Share], Share], block: int | None = None) -> Share:
    """``fn`` over aligned blocks of the flattened ``x`` and ``y`` (same shape), written into one result."""
    n = x.numel()
    block = BLOCK_ELEMENTS if block is None else block
    xf, yf = x.reshape(-1), y.reshape(-1)
    out: Share | None = None
    for start in range(0, n, block):
        stop = min(n, start + block)
        z = fn(xf[start:stop], yf[start:stop])
        if out is None:
            out = z._map(lambda t: torch.empty(n, dtype=t.dtype))
        out._zip(z, lambda o, t, a=start, b=stop: o[a:b].copy_(t))
        del z
    assert out is not None
    return out.reshape(x.shape)


class RingFamily(ProtocolFamily):
    """Composites for families over Z_2^64 (fixed point with ``frac_bits`` fractional bits)."""

    share_type: type[Share] = AdditiveShare
    lowest = -(1 << 61)  # below every encodable value: max pooling's padding

    def __init__(self) -> None:
        self.warnings = OncePerSite()

    # ----- encoding -------------------------------------------------------------------------------
    def encode_public(self, ctx: PartyContext, value: Any, what: str = "public operand") -> torch.Tensor:
        """Encode a public constant; warn (once per call site) when fixed point rounds it by more than 1%."""
        enc = ctx.encoder.encode(value, what=what)
        lost = lossy_constants(value, ctx.encoder.scale)
        if lost is not None:
            self.warnings.warn(
                "rounding",
                f"{what}: the public constant {lost:.6g} becomes {round(lost * ctx.encoder.scale) / ctx.encoder.scale:.6g} "
                f"in fixed point with {ctx.config.frac_bits} fractional bits (off by more than 1%); multiply by a "
                "public scalar instead (exact), or raise frac_bits",
                FixedPointWarning,
            )
        return enc

    def check_input(self, ctx: PartyContext, value: Any) -> None:
        """At the owner, before sharing: warn when non-zero values of the input encode to zero."""
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if t.is_floating_point() and t.numel():
            vanish = (t != 0) & ((t.to(torch.float64) * ctx.encoder.scale).round() == 0)
            if bool(vanish.any()):
                self.warnings.warn(
                    "underflow",
                    f"input: {int(vanish.sum())} non-zero values are below half the fixed-point resolution "
                    f"2^-{ctx.config.frac_bits} and become 0; rescale the data or raise frac_bits",
                    FixedPointWarning,
                )

    def decode(self, ctx: PartyContext, opened: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Decode an opened value; warn when it is outside the range (an intermediate overflowed)."""
        out = ctx.encoder.decode(opened, dtype)
        if opened.numel():
            big = float(opened.abs().max()) / ctx.encoder.scale
            if ctx.encoder.bound / APPROACH <= big < ctx.encoder.bound:
                self.warnings.warn(
                    "approach",
                    f"a revealed value has magnitude {big:.4g}, within a factor {APPROACH} of the fixed-point range "
                    f"|v| < {ctx.encoder.bound:.4g}: a product of such values overflows; rescale the inputs, lower "
                    "the learning rate or clip the gradients (mpc.nn.utils.clip_grad_value_)",
                    FixedPointWarning,
                )
            if big >= ctx.encoder.bound:
                self.warnings.warn(
                    "overflow",
                    f"a revealed value has magnitude {big:.4g}, outside the fixed-point range |v| < "
                    f"{ctx.encoder.bound:.4g}: an intermediate value overflowed and the result is garbage; rescale "
                    "the inputs or dry-run the program with protocol='plaintext' to find where",
                    FixedPointWarning,
                )
        return out

    def is_exact_multiplier(self, value: Any) -> bool:
        return FixedPoint.is_integral(value)

    def scale_int(self, ctx: PartyContext, x: Share) -> Share:
        """An integer-valued share (a bit, an index) into fixed point."""
        return x << ctx.config.frac_bits  # type: ignore[operator]

    # ----- products with truncation -----------------------------------------------------------------
    def truncate_many(self, ctx: PartyContext, items: Sequence[tuple[Share, int]], op: str) -> list[Share]:
        return self.divide_many(ctx, [(x, 1 << bits) for x, bits in items], op)

    def truncate(self, ctx: PartyContext, x: Share, bits: int | None = None, op: str = "trunc") -> Share:
        return self.truncate_many(ctx, [(x, ctx.config.frac_bits if bits is None else bits)], op)[0]

    def product_truncated_many(
        self, ctx: PartyContext, items: Sequence[tuple[int, Share, Share, tuple[int, ...]]], op: str = "mul"
    ) -> list[Share]:
        """``(x kind y) / 2^f`` for each ``(kind, x, y, extra)``: the fixed-point products, 2 rounds for all (a
        family may fuse the product's and the truncation's material: ``AdditiveDealerFamily``)."""
        prods = self.product_many(ctx, items, op=op)
        f = ctx.config.frac_bits
        return self.truncate_many(ctx, [(p, f) for p in prods], op=f"{op}:trunc")

    def mul(self, ctx: PartyContext, x: Share, y: Share, op: str = "mul") -> Share:
        if x.shape == y.shape and x.numel() > MUL_BLOCK:
            return self.mul_blocks(ctx, x, y, op)
        return self.product_truncated_many(ctx, [(OP_MUL, x, y, ())], op)[0]

    def matmul(self, ctx: PartyContext, x: Share, y: Share, op: str = "matmul") -> Share:
        return self.product_truncated_many(ctx, [(OP_MATMUL, x, y, ())], op)[0]

    def mul_blocks(self, ctx: PartyContext, x: Share, y: Share, op: str = "mul") -> Share:
        """An elementwise product over ``MUL_BLOCK`` elements, block by block (a family that can pipelines
        the blocks' rounds: ``AdditiveDealerFamily``, ``B + 1`` rounds; here 2 a block)."""
        return _blockwise(
            x, y, lambda a, b: self.truncate(ctx, self.product(ctx, OP_MUL, a, b, op=op), op=f"{op}:trunc"), MUL_BLOCK
        )

    def matmul_many(self, ctx: PartyContext, pairs: Sequence[tuple[Share, Share]], op: str = "matmul") -> list[Share]:
        """``x @ y`` for every pair, opened together and truncated together. Rounds 2 for all."""
        return self.product_truncated_many(ctx, [(OP_MATMUL, x, y, ()) for x, y in pairs], op)

    def conv2d(self, ctx: PartyContext, x: Share, w: Share, stride, padding, dilation, groups: int) -> Share:
        extra = (*stride, *padding, *dilation, groups)
        return self.product_truncated_many(ctx, [(OP_CONV2D, x, w, extra)], "conv2d")[0]

    def square(self, ctx: PartyContext, x: Share) -> Share:
        if x.numel() > BLOCK_ELEMENTS:
            return _blockwise(x, x, lambda a, _: self.square(ctx, a))
        return self.truncate(ctx, self.square_raw(ctx, x), op="square:trunc")

    def mul_public(self, ctx: PartyContext, x: Share, value: Any, op: str = "mul_public") -> Share:
        """``x * c`` for a public ``c``: local for an integer; see ``scale_public`` for a real scalar.

        A tensor of reals is encoded with ``f`` fractional bits and the product
        truncated once (one round; each element of ``c`` is rounded to 2^-f).
        """
        if self.is_exact_multiplier(value):
            k = value.to(torch.int64) if isinstance(value, torch.Tensor) else int(value)
            return x.mul_public(k)
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            return self.truncate(ctx, x.mul_public(self.encode_public(ctx, value)), op=op)
        return self.scale_public(ctx, x, float(value), op)

    def scale_public(self, ctx: PartyContext, x: Share, c: float, op: str = "mul_public") -> Share:
        """``x * c`` for a public real scalar, within 1 ulp plus 2^-20 relative whenever the result is in range.

        ``c`` is written as ``m / d`` with integers (the best rational
        approximation whose numerator keeps ``x m`` inside the ring for every
        ``x`` whose product is in range: ``m < 2^f max(1, |c|)``); then ``x m`` is
        local and ``/ d`` is one exact division (``divide_many``): one round,
        8 (n-1) bytes per element, error under 1 ulp plus the approximation's
        (exact for ``1 / N``, ``1e-4``, ``3e-6``, ``1 / 3000``...: every ``c`` that
        is a ratio of small integers; under 2^-21 relative for the others).
        In the rare case where no such ratio is within 2^-21 (``c`` just off a
        ratio of small integers), ``c 2^14`` is split into two ratios, both
        divisions go in one round at 14 extra fractional bits, and a second round
        truncates them: two rounds, error under (1 + 2^-13) ulp.
        """
        f = ctx.config.frac_bits
        ctx.encoder.encode(c, what="public operand")  # refuses NaN, infinities and |c| beyond the range
        exact = Fraction(c)
        if exact == 0:
            return x.mul_public(0)
        bound = int((1 << f) * max(1, abs(exact))) - 1
        m, d = _ratio(exact, bound)
        if d > MAX_DIVISOR:  # |x c| is below one ulp for every x in range
            return x.mul_public(0)
        if abs(Fraction(m, d) - exact) <= abs(exact) * Fraction(1, 1 << 21):
            return x.mul_public(m) if d == 1 else self.divide_many(ctx, [(x.mul_public(m), d)], op)[0]
        guard = 14
        target = exact * (1 << guard)
        m1, d1 = _ratio(target, bound)
        m2, d2 = _ratio(target - Fraction(m1, d1), bound)
        parts = [(x.mul_public(m1), d1)] + ([(x.mul_public(m2), d2)] if m2 and d2 <= MAX_DIVISOR else [])
        fine = self.divide_many(ctx, parts, op)
        total = fine[0] if len(fine) == 1 else fine[0] + fine[1]
        return self.truncate(ctx, total, guard, op=f"{op}:2")

    def matmul_public(self, ctx: PartyContext, x: Share, m: torch.Tensor, left: bool = False) -> Share:
        if not m.is_floating_point():
            return x.matmul_public(m.to(torch.int64), left)
        return self.truncate(ctx, x.matmul_public(self.encode_public(ctx, m), left), op="matmul_public")

    def conv2d_public(self, ctx: PartyContext, x: Share, w: torch.Tensor, kernel_secret: bool, **kw) -> Share:
        prod = x.conv2d_public(self.encode_public(ctx, w), kernel_secret=kernel_secret, **kw)
        return self.truncate(ctx, prod, op="conv2d_public")

    # ----- comparison ------------------------------------------------------------------------------
    def compare(self, ctx: PartyContext, x: Share, thresholds: Sequence[int], **kw: Any) -> CmpResult:
        return compare_generic(ctx, x, thresholds, **kw)

    def powers(self, ctx: PartyContext, v: Share, degree: int, f: int, op: str) -> list[Share]:
        return powers_generic(ctx, v, degree, f, op)

    def less_than(self, ctx: PartyContext, z: Share, negate: bool = False, op: str = "lt") -> Share:
        """``[z < 0]`` (or ``[z >= 0]``) in fixed point. Rounds 4."""
        return self.scale_int(ctx, self.compare(ctx, z, (0,), negate=negate, op=op).bits[0])

    def equal(self, ctx: PartyContext, z: Share, negate: bool = False, op: str = "eq") -> Share:
        """``[z == 0]`` = ``[z < 1 ulp] - [z < 0]`` (or its negation) in fixed point, one batch. Rounds 4."""
        b = self.compare(ctx, z, (0, 1), op=op).bits
        bit = (b[0] - b[1]).add_public(1) if negate else b[1] - b[0]
        return self.scale_int(ctx, bit)

    def sign(self, ctx: PartyContext, x: Share) -> Share:
        """-1, 0 or 1: ``1 - [x < 1 ulp] - [x < 0]``. Rounds 4."""
        b = self.compare(ctx, x, (0, 1), op="sign").bits
        return self.scale_int(ctx, (-b[1] - b[0]).add_public(1))

    def abs(self, ctx: PartyContext, x: Share) -> Share:
        """``|x| = x - 2 x [x < 0]``. Rounds 4."""
        res = self.compare(ctx, x, (0,), mul_input=True, op="abs")
        return x - res.xbits[0].mul_public(2)

    def relu(self, ctx: PartyContext, x: Share, op: str = "relu") -> Share:
        """``max(x, 0) = x [x >= 0]``, exact. Rounds 4."""
        return self.compare(ctx, x, (0,), negate=True, mul_input=True, op=op).xbits[0]

    def relu_mask(self, ctx: PartyContext, x: Share, op: str = "relu") -> tuple[Share, Share]:
        """``(max(x, 0), [x > 0])``: the result and its mask as an integer 0/1 share, from one comparison
        (``[x >= 1 ulp]``; ``x [x >= 1 ulp]`` is ``max(x, 0)`` exactly).  Rounds 4, as ``relu``."""
        res = self.compare(ctx, x, (1,), negate=True, mul_input=True, op=op)
        return res.xbits[0], res.bits[0]

    def mask_mul(self, ctx: PartyContext, mask: Share, g: Share, op: str = "relu:grad") -> Share:
        """``mask * g`` for an integer 0/1 ``mask`` (``relu_mask``'s): one Beaver product, no truncation. Rounds 1."""
        return ordering.mul_bits(ctx, mask, g, op)

    def clamp_public(self, ctx: PartyContext, x: Share, lo: float | None, hi: float | None) -> Share:
        lo_r = None if lo is None else int(self.encode_public(ctx, float(lo)))
        hi_r = None if hi is None else int(self.encode_public(ctx, float(hi)))
        return ordering.clamp_public(ctx, x, lo_r, hi_r)

    def clamp_secret(self, ctx: PartyContext, x: Share, lo: Share | None, hi: Share | None) -> Share:
        return ordering.clamp_secret(ctx, x, lo, hi)

    def maximum(self, ctx: PartyContext, a: Share, b: Share, op: str = "maximum") -> Share:
        return ordering.maximum(ctx, a, b, op)

    def where(self, ctx: PartyContext, cond: Share, a: Share, b: Share) -> Share:
        return ordering.where(ctx, cond, a, b)

    def where_public(self, ctx: PartyContext, cond: Share, a: torch.Tensor, b: torch.Tensor) -> Share:
        """``cond ? a : b`` for public encoded branches: ``b + bit (a - b)``. Rounds 1."""
        bit = self.exact_rshift(ctx, cond, ctx.config.frac_bits, "where:bit")
        return bit.mul_public(a - b).add_public(b)

    def max_reduce(
        self, ctx: PartyContext, x: Share, index: bool = False, one_hot: bool = False, op: str = "max"
    ) -> tuple[Share, Share | None, Share | None]:
        """Max over the last dimension; the index and one-hot come back in fixed point."""
        vals, idx, oh = ordering.max_reduce(ctx, x, index, one_hot, op)
        return (
            vals,
            (None if idx is None else self.scale_int(ctx, idx)),
            (None if oh is None else self.scale_int(ctx, oh)),
        )

    # ----- nonlinear functions ------------------------------------------------------------------------
    def exp(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.exp(ctx, x)

    def exp_nonpositive(self, ctx: PartyContext, x: Share) -> Share:
        """``e^x`` for ``x <= 0`` (softmax's table: 0 below -11, exact to 1e-5 there). Rounds 8."""
        return nonlinear.exp_nonpositive(ctx, x)

    def log(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.log(ctx, x)

    def reciprocal(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.reciprocal(ctx, x)

    def sqrt(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.sqrt(ctx, x)

    def rsqrt(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.rsqrt(ctx, x)

    def sqrt_wide(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.sqrt_wide(ctx, x)

    def sigmoid(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.sigmoid(ctx, x)

    def tanh(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.tanh(ctx, x)

    def softmax(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.softmax(ctx, x)

    def log_softmax(self, ctx: PartyContext, x: Share) -> Share:
        return nonlinear.log_softmax(ctx, x)

    def log_softmax_keep(self, ctx: PartyContext, x: Share) -> tuple[Share, tuple[Share, Share]]:
        out, kept = nonlinear.log_softmax_keep(ctx, x)
        assert kept is not None
        return out, kept

    def pow_int(self, ctx: PartyContext, x: Share, k: int) -> Share:
        return nonlinear.pow_int(ctx, x, k)

    def piecewise(self, ctx: PartyContext, x: Share, table: Any, op: str = "approx") -> Share:
        return piecewise(ctx, x, table, op)
