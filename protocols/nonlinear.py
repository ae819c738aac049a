"""Nonlinear functions of secret tensors: exp, log, reciprocal, sqrt, rsqrt, sigmoid, tanh, softmax, pow.

Every function is a piecewise polynomial table evaluated by
``protocols.approx.piecewise`` (a thermometer of comparisons selects the
interval and its coefficients, then one polynomial of degree 3 or 4 in a
normalised variable): 8 rounds on uniform grids, 9 on octave grids, 21 on
octave grids with 20 or more thresholds (log, reciprocal, sqrt, rsqrt: the
thermometer from one bit decomposition, ``protocols.octave``).  The
dealer family computes ``exp`` (and softmax's ``e^(x - max)``) by a one-hot
table lookup instead (``protocols.lookup``: ``e^x = 2^k 2^v``, 4 rounds and two
comparisons, for saturation, instead of 24), and sigmoid and tanh by one-hot
rows of a uniform table (4 rounds, two comparisons instead of 12 and 10; rows
of 1 and 0.5, fits of degree 4 over two rows' width; max error 1.7e-4
and 3.3e-4); the table below gives the lookup's exp, and the thermometer tables
(``EXP``, ``SIGMOID``, ``TANH``) stay the generic families'.  The
tables, their domains and what happens outside (f = 16 fractional bits;
errors measured against float64 torch over 2 x 10^4 grid points spread over
the domain, see ``tests/test_nonlinear.py``; tolerance = target):

=============  ==========================  ============================  =============================  ==========
function       documented domain           grid                          outside the domain             max error
=============  ==========================  ============================  =============================  ==========
exp            [-12, 10]                   lookup: 2^k, k in [-16, 15],  0 below -11 (true < 1.7e-5),    0.34 tol
                                           2^v on [-1, 1], d 4           e^10 from 10 on (saturates)
sigmoid        [-30, 30] (all reals)       steps 1.5 on [-9, 9), d 3     0 below -9, 1 above 9           2.2e-4
tanh           [-30, 30] (all reals)       unit steps on [-5, 5), d 4    -1 below -5, 1 above 5          1.0e-4
log            [1e-3, 1e4] (exact on       octaves 2^-16 .. 2^16, d 3    log 2^-17 for x <= 0,           5.3e-4
               [2^-16, 2^16))                                            log 2^16 above 2^16
reciprocal     +-[1e-2, 1e4] (exact for    octaves of |x|, 2^-7 .. 2^14  +-2^7 for |x| < 2^-7,           0.36 tol
               |x| >= 2^-7)                each sign, d 4                +-2^-15 above 2^14 (in tol)
sqrt           [1e-3, 1e4] (exact on       octaves 2^-16 .. 2^16, d 3    0 for x <= 0, 256 above 2^16    0.24 tol
               [0, 2^16))
rsqrt          [1e-3, 1e4] (exact on       octaves 2^-16 .. 2^16, d 4    256 for x <= 0, 2^-8 above      0.32 tol
               [2^-16, 2^16))
=============  ==========================  ============================  =============================  ==========

("tol" is the issue's target: rel 1e-3 + abs 2^-14 for exp, reciprocal,
sqrt, rsqrt; abs 1e-3 for sigmoid and tanh; abs 2e-3 for log.)

Composite functions:

* ``softmax(x)`` along the last dimension: ``m = max(x)`` (exact tournament,
  ``4 ceil(log2 C)`` rounds), ``e = exp(x - m)`` for non-positive
  arguments (4 rounds; the maximum gives 1 within 5e-4), ``s = sum e`` in
  ``[1, C]``, ``1 / s`` by an octave table on ``[2^-1, 2 C)`` (9 rounds), and
  ``e (1/s)`` (2 rounds).  Rounds ``15 + 4 ceil(log2 C)``.  Logits in
  [-30, 30] (any range that keeps ``x - m`` in the fixed-point range works).
* ``log_softmax(x) = x - m - log(s)``: rounds ``13 + 4 ceil(log2 C)``.
* ``pow(x, k)`` for a public integer ``k``: square-and-multiply, the products
  of one step in one batch: rounds ``2 floor(log2 |k|)`` (+2 when ``k`` is not a
  power of two, + reciprocal's 9 when ``k < 0``); every intermediate power
  must stay in the fixed-point range.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from mpc.context import PartyContext
from mpc.errors import ProtocolError
from mpc.shares import Share

from .approx import Piecewise, octave_table, piecewise, piecewise_many, uniform_table
from .correlated import OP_MUL

__all__ = [
    "EXP",
    "SIGMOID",
    "TANH",
    "exp_table",
    "log_table",
    "reciprocal_table",
    "sqrt_table",
    "rsqrt_table",
    "exp",
    "exp_nonpositive",
    "sigmoid",
    "tanh",
    "log",
    "reciprocal",
    "sqrt",
    "rsqrt",
    "sqrt_wide",
    "softmax",
    "log_softmax",
    "pow_int",
    "mul",
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def exp_table(lo: int = -11, hi: int = 12) -> Piecewise:
    return uniform_table("exp", np.exp, lo, hi, 1.0, 4, 0.0, float(np.exp(hi)), rel=True)


def log_table(jlo: int = -16, jhi: int = 16) -> Piecewise:
    return octave_table("log", np.log, jlo, jhi, 3, math.log(2.0 ** (jlo - 1)), math.log(2.0**jhi))


def reciprocal_table(jlo: int = -7, jhi: int = 14, negative: bool = True) -> Piecewise:
    lim, tiny = 2.0**-jlo, 2.0 ** -(jhi + 1)
    return octave_table(
        "reciprocal", lambda x: 1.0 / x, jlo, jhi, 4, lim, tiny, rel=True, negative=negative,
        neg_below=-lim, neg_above=-tiny,
    )  # fmt: skip


def sqrt_table(jlo: int = -16, jhi: int = 16) -> Piecewise:
    return octave_table("sqrt", np.sqrt, jlo, jhi, 3, 0.0, 2.0 ** (jhi / 2), rel=True)


def rsqrt_table(jlo: int = -16, jhi: int = 16) -> Piecewise:
    return octave_table("rsqrt", lambda x: x**-0.5, jlo, jhi, 4, 2.0 ** (-jlo / 2), 2.0 ** (-jhi / 2), rel=True)


EXP = exp_table()
SIGMOID = uniform_table("sigmoid", _sigmoid, -9, 9, 1.5, 3, 0.0, 1.0)
TANH = uniform_table("tanh", np.tanh, -5, 5, 1.0, 4, -1.0, 1.0)
LOG = log_table()
RECIPROCAL = reciprocal_table()
SQRT = sqrt_table()
RSQRT = rsqrt_table()
SQRT_WIDE = sqrt_table(-16, 30)


# Below this many fractional bits the exp table's normalised variable and coefficients keep too few bits: at
# f = 2 exp(5) came out 142.75 (3.8% off), at f = 0 exp(0) came out 2 and exp(5) 91.  An error, not a wrong value.
EXP_MIN_FRAC_BITS = 4


def _check_exp_encoding(ctx: PartyContext) -> None:
    f = ctx.config.frac_bits
    if f < EXP_MIN_FRAC_BITS:
        raise ProtocolError(
            f"exp needs frac_bits >= {EXP_MIN_FRAC_BITS} (at {f} fractional bits its table keeps too few bits: "
            f"exp(5) came out 142.75 at 2 bits, exp(0) came out 2 at 0); raise frac_bits in the run's config"
        )


def exp(ctx: PartyContext, x: Share) -> Share:
    """``e^x``; domain [-12, 10], exact to 12, 0 below -11, ``e^12`` above 12. Rounds 8."""
    _check_exp_encoding(ctx)
    return piecewise(ctx, x, EXP, "exp")


EXP_NONPOSITIVE = exp_table(-11, 0)


def exp_nonpositive(ctx: PartyContext, x: Share) -> Share:
    """``e^x`` on ``x <= 0`` (probabilities from log-probabilities): 0 below -11 (true < 1.7e-5). Rounds 8."""
    _check_exp_encoding(ctx)
    return piecewise(ctx, x, EXP_NONPOSITIVE, "exp")


def sigmoid(ctx: PartyContext, x: Share) -> Share:
    """``1 / (1 + e^-x)`` on all reals (0 below -9 and 1 above 9 are within 1.3e-4). Rounds 8."""
    return piecewise(ctx, x, SIGMOID, "sigmoid")


def tanh(ctx: PartyContext, x: Share) -> Share:
    """``tanh x`` on all reals (+-1 beyond +-5 are within 1e-4). Rounds 8."""
    return piecewise(ctx, x, TANH, "tanh")


def log(ctx: PartyContext, x: Share) -> Share:
    """Natural log; domain [1e-3, 1e4], exact on [2^-16, 2^16); ``log 2^-17`` for x <= 0. Rounds 21."""
    return piecewise(ctx, x, LOG, "log")


def reciprocal(ctx: PartyContext, x: Share) -> Share:
    """``1 / x``; domain 1e-2 <= |x| <= 1e4 (and beyond 1e4); ``+-128`` for 0 < |x| < 2^-7, 128 at 0. Rounds 21."""
    return piecewise(ctx, x, RECIPROCAL, "reciprocal")


def sqrt(ctx: PartyContext, x: Share) -> Share:
    """Square root; domain [1e-3, 1e4], exact on [0, 2^16); 0 for x <= 0, 256 above 2^16. Rounds 21."""
    return piecewise(ctx, x, SQRT, "sqrt")


def rsqrt(ctx: PartyContext, x: Share) -> Share:
    """``1 / sqrt(x)``; domain [1e-3, 1e4], exact on [2^-16, 2^16); 256 for x <= 0. Rounds 21."""
    return piecewise(ctx, x, RSQRT, "rsqrt")


def sqrt_wide(ctx: PartyContext, x: Share) -> Share:
    """Square root on [2^-16, 2^30) (the whole positive range: norms). Rounds 21."""
    return piecewise(ctx, x, SQRT_WIDE, "sqrt")


def mul(ctx: PartyContext, x: Share, y: Share, op: str = "mul") -> Share:
    """Fixed-point product (broadcasting), one Beaver round and one truncation."""
    fam = ctx.family
    (z,) = fam.truncate_many(ctx, [(fam.product(ctx, OP_MUL, x, y, op=op), ctx.config.frac_bits)], f"{op}:trunc")
    return z


def _octaves_for(count: int) -> int:
    return max(1, math.ceil(math.log2(max(count, 1)))) + 1


def softmax(ctx: PartyContext, x: Share) -> Share:
    """Softmax over the last dimension (see the module docstring). Rounds 15 + 4 ceil(log2 C)."""
    c = x.shape[-1]
    if x.numel() == 0:
        return x
    if c == 1:
        return ones_like(ctx, x)
    m, _, _ = ctx.family.max_reduce(ctx, x, op="softmax:max")
    e = ctx.family.exp_nonpositive(ctx, x - m.unsqueeze(-1))
    s = e.sum(-1, keepdim=True)
    inv = piecewise(ctx, s, reciprocal_table(-1, _octaves_for(c), negative=False), "softmax:inv")
    return mul(ctx, e, inv, "softmax:mul")


def log_softmax(ctx: PartyContext, x: Share) -> Share:
    """``x - max - log(sum exp(x - max))`` over the last dimension. Rounds 13 + 4 ceil(log2 C)."""
    return log_softmax_keep(ctx, x, keep=False)[0]


@functools.cache
def _sum_tables(octaves: int) -> tuple[Piecewise, Piecewise]:
    """log and reciprocal of a sum of exponentials (in [1, C]) on the same octaves, so one thermometer serves
    both (``piecewise_many``); degree 4 (the highest whose powers fit the ring on octaves): relative error
    of the reciprocal 3.5e-4, 2.0 below 1/2, 2^-octaves above its top."""
    log = log_table(-1, octaves)
    recip = octave_table("reciprocal", lambda v: 1.0 / v, -1, octaves, 4, 2.0, 2.0**-octaves, rel=True)
    return log, recip


def log_softmax_keep(ctx: PartyContext, x: Share, keep: bool = True) -> tuple[Share, tuple[Share, Share] | None]:
    """``log_softmax`` and, with ``keep``, ``(e, r)``: ``e = exp(x - max)`` and ``r = 1 / sum(e)`` (last
    dimension kept, size 1), so that ``softmax = e r`` (what its backward needs) costs one product instead of
    an exponential.  ``r`` comes in the rounds of the log (the same thermometer, ``piecewise_many``).
    Rounds 13 + 4 ceil(log2 C) either way."""
    c = x.shape[-1]
    if x.numel() == 0 or c == 1:
        zero = type(x).public(torch.zeros(x.shape, dtype=torch.int64), ctx.rank)
        one = ones_like(ctx, x)
        return (x if x.numel() == 0 else zero), ((one, one) if keep else None)
    m, _, _ = ctx.family.max_reduce(ctx, x, op="logsoftmax:max")
    z = x - m.unsqueeze(-1)
    e = ctx.family.exp_nonpositive(ctx, z)
    s = e.sum(-1, keepdim=True)
    octaves = _octaves_for(c)
    if not keep:
        return z - piecewise(ctx, s, log_table(-1, octaves), "logsoftmax:log"), None
    ls, r = piecewise_many(ctx, s, _sum_tables(octaves), "logsoftmax:log")
    return z - ls, (e, r)


def ones_like(ctx: PartyContext, x: Share) -> Share:
    return type(x).public(torch.full(tuple(x.shape), 1 << ctx.config.frac_bits, dtype=torch.int64), ctx.rank)


def pow_int(ctx: PartyContext, x: Share, k: int) -> Share:
    """``x^k`` for a public integer ``k`` by square-and-multiply (one batched product per step)."""
    if not isinstance(k, int):
        raise ProtocolError(f"pow: the exponent must be a public integer, got {k!r}")
    if k < 0:
        return pow_int(ctx, ctx.family.reciprocal(ctx, x), -k)
    if k == 0:
        return ones_like(ctx, x)
    kind = type(x)
    result: Share | None = None
    base = x
    step = 0
    while True:
        if k & 1:
            if result is None:
                result = base
                k >>= 1
                if not k:
                    break
                base = mul(ctx, base, base, f"pow{step}")
                step += 1
                continue
            k >>= 1
            if not k:
                result = mul(ctx, result, base, f"pow{step}")
                break
            # square the base and multiply into the result in one batch
            both = mul(ctx, kind.stack([base, result]), kind.stack([base, base]), f"pow{step}")
            base, result = both[0], both[1]
        else:
            k >>= 1
            base = mul(ctx, base, base, f"pow{step}")
        step += 1
    assert result is not None
    return result
