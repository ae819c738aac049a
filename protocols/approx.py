"""Piecewise polynomial approximation of a function of a secret tensor, in 8, 9 or 21 rounds.

The idea: the comparisons of ``protocols.comparison`` are cheap per extra
threshold once ``x`` is opened masked, so a whole *thermometer code*
``b_j = [x >= T_j]`` (j = 1..K) costs the four rounds of one comparison.  Its
differences are the one-hot vector of the interval that holds ``x``, and any
table indexed by the interval is then a *local* linear combination of the
``b_j`` (``select``).  On each interval the function is a polynomial of low
degree in a normalised variable ``v``; the coefficients are selected from
the table, so the polynomial differs per interval at no extra cost.

Protocol (``piecewise``), for a ``Piecewise`` table with thresholds ``T_j`` and
per interval ``i`` an affine map ``v = alpha_i x + beta_i`` (|v| <= 1/2) and
coefficients ``A_ik``:

1. Thermometer (rounds 1-4): ``b_j = [x >= T_j]`` for all j; when ``alpha``
   differs between intervals (octaves: ``alpha_i = 2^-j``) the same rounds
   also give ``x b_j`` exactly (``compare(..., mul_input=True)``).
2. ``v = sum_i alpha_i h_i x + beta_i h_i`` with ``h`` the one-hot: local when
   every ``alpha_i`` is 1 (``v = x - centre``), else one truncation (round 5).
3. Powers (2 rounds): open ``v - a`` once; the dealer gives ``a^2..a^d``, so
   ``v^k = sum_m C(k, m) (v - a)^(k-m) a^m`` is local; truncate ``v^k`` by
   ``(k - 1) f`` bits (one batched round).
4. Products (2 rounds): ``C_k = sum_i h_i A_ik`` (local, scaled by
   ``2^(f + F)`` with ``F`` extra bits chosen so that nothing overflows); one
   Beaver round for all ``C_k v^k``; the sum ``C_0 + sum_k C_k v^k`` is
   truncated once by ``f + F``.

Rounds 8 (uniform grids: exp, sigmoid, tanh) or 9 (octave grids: log,
reciprocal, sqrt, rsqrt).  Octave grids of 20 thresholds or more (log,
reciprocal, sqrt, rsqrt) take the thermometer from the bits of ``x`` instead
(``protocols.octave``: one a2b, a suffix OR, one conversion; 15 rounds, but
word operations instead of a carry tree per threshold), and ``v`` from one
product ``x (sum_i alpha_i h_i)``: rounds 21.  Bytes per element, per party
and per other party (comparison thermometer): 8 + 4.4 K (thermometer) [+ 8 normalisation] + 8 + 8 (d - 1) (powers)
+ 16 d (products) + 8 (final truncation).

Out-of-range intervals use ``alpha = 0`` (octave grids) or their exact zero
coefficients (``C_k = 0`` exactly in the ring, so whatever ``v^k`` is, the
product is 0): the constant ``A_i0`` is then the documented saturation value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mpc.context import PartyContext
from mpc.errors import ProtocolError
from mpc.ring import wrap_int
from mpc.shares import Share

from .correlated import OP_MUL
from .octave import MIN_THRESHOLDS, octave_bits

__all__ = ["Piecewise", "uniform_table", "octave_table", "piecewise", "select"]


def max_half_width(degree: int, f: int = 16) -> float:
    """The largest |v| whose ring power ``(v 2^f)^degree`` stays below 2^61 (the truncation needs < 2^62)."""
    return 2.0 ** (61 / degree - f)


@dataclass(frozen=True)
class Piecewise:
    """A public table: thresholds (real, on the fixed-point grid) and, per interval, (alpha, beta, coefficients)."""

    name: str
    thresholds: tuple[float, ...]
    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    coeffs: tuple[tuple[float, ...], ...]  # per interval, increasing powers of v
    degree: int
    vmax: float  # |v| on every polynomial interval

    @property
    def uniform(self) -> bool:
        return all(a == 1.0 for a in self.alpha)


def _fit(
    fn: Callable[[np.ndarray], np.ndarray],
    x_of_v: Callable[[np.ndarray], np.ndarray],
    degree: int,
    rel: bool,
    half: float,
) -> tuple[float, ...]:
    """Least squares on Chebyshev nodes of v in [-half, half] (near-minimax), weighted for relative error."""
    nodes = half * np.cos(np.pi * (np.arange(64) + 0.5) / 64)
    y = fn(x_of_v(nodes))
    w = 1.0 / np.abs(y) if rel else np.ones_like(y)
    c = np.polynomial.polynomial.polyfit(nodes, y, degree, w=w)
    return tuple(float(v) for v in c)


def uniform_table(
    name: str,
    fn: Callable[[np.ndarray], np.ndarray],
    lo: float,
    hi: float,
    step: float,
    degree: int,
    below: float,
    above: float,
    rel: bool = False,
) -> Piecewise:
    """Intervals ``[lo + i step, lo + (i+1) step)`` with ``v = x - centre``; constants below ``lo`` and above ``hi``."""
    if step / 2 > max_half_width(degree):
        raise ValueError(f"uniform_table: step {step} is too wide for degree {degree}")
    count = round((hi - lo) / step)
    ts = tuple(lo + i * step for i in range(count + 1))
    alpha, beta, coeffs = [1.0], [-lo], [(below,) + (0.0,) * degree]
    for i in range(count):
        centre = ts[i] + step / 2
        alpha.append(1.0)
        beta.append(-centre)
        coeffs.append(_fit(fn, lambda v, c=centre: c + v, degree, rel, step / 2))
    alpha.append(1.0)
    beta.append(-hi)
    coeffs.append((above,) + (0.0,) * degree)
    return Piecewise(name, ts, tuple(alpha), tuple(beta), tuple(coeffs), degree, step / 2)


def octave_table(
    name: str,
    fn: Callable[[np.ndarray], np.ndarray],
    jlo: int,
    jhi: int,
    degree: int,
    below: float,
    above: float,
    rel: bool = False,
    negative: bool = False,
    neg_below: float = 0.0,
    neg_above: float = 0.0,
) -> Piecewise:
    """Octaves ``[2^j, 2^(j+1))`` for ``jlo <= j < jhi`` with ``v = x / 2^j - 3/2``.

    ``below``: value on ``[0, 2^jlo)`` (and on all x < 0 unless ``negative``);
    ``above``: value on ``[2^jhi, inf)``.  With ``negative``, the mirrored
    octaves of negative x too, ``neg_below`` on ``(-2^jlo, 0)`` and
    ``neg_above`` on ``(-inf, -2^jhi]``.
    """
    ts: list[float] = []
    alpha: list[float] = []
    beta: list[float] = []
    coeffs: list[tuple[float, ...]] = []
    zero = (0.0,) * degree
    if negative:
        alpha.append(0.0), beta.append(0.0), coeffs.append((neg_above,) + zero)
        for j in range(jhi - 1, jlo - 1, -1):
            # x in [-2^(j+1), -2^j): v = -x / 2^j - 3/2, interval opens at the threshold -2^(j+1)
            ts.append(-(2.0 ** (j + 1)))
            alpha.append(-(2.0**-j))
            beta.append(-1.5)
            coeffs.append(_fit(fn, lambda v, j=j: -(2.0**j) * (v + 1.5), degree, rel, 0.5))
        ts.append(-(2.0**jlo))
        alpha.append(0.0), beta.append(0.0), coeffs.append((neg_below,) + zero)
        ts.append(0.0)
    alpha.append(0.0), beta.append(0.0), coeffs.append((below,) + zero)
    for j in range(jlo, jhi):
        ts.append(2.0**j)
        alpha.append(2.0**-j)
        beta.append(-1.5)
        coeffs.append(_fit(fn, lambda v, j=j: 2.0**j * (v + 1.5), degree, rel, 0.5))
    ts.append(2.0**jhi)
    alpha.append(0.0), beta.append(0.0), coeffs.append((above,) + zero)
    return Piecewise(name, tuple(ts), tuple(alpha), tuple(beta), tuple(coeffs), degree, 0.5)


# ----- protocol pieces (written against the family interface) ------------------------------------------


def select(bits: Share, table: Sequence[int]) -> Share:
    """``sum_i h_i q_i`` for the one-hot ``h`` of the thermometer ``bits`` (K, ...), ring table q (K+1,)."""
    q = torch.tensor([wrap_int(int(t)) for t in table], dtype=torch.int64)
    return select_linear(bits, table).add_public(q[0])


def select_many(bits: Share, tables: Sequence[Sequence[int]]) -> list[Share]:
    """``select(bits, t)`` for every table ``t``: one product of the table differences with the K rows when
    there are two or more (``Share.weighted_sums``), instead of a scaled accumulation per table."""
    if len(tables) < 2:
        return [select(bits, t) for t in tables]
    q = torch.tensor([[wrap_int(int(v)) for v in t] for t in tables], dtype=torch.int64)
    sel = bits.weighted_sums(q[:, 1:] - q[:, :-1])
    return [sel[i].add_public(q[i, 0]) for i in range(len(tables))]


def select_linear(bits: Share, table: Sequence[int]) -> Share:
    """``sum_j (q_(j+1) - q_j) bits_j`` without the constant ``q_0``: one scaled accumulation of the K rows
    (modulo 2^64, as the ring wants), not K scaled copies of the bits."""
    q = torch.tensor([wrap_int(int(t)) for t in table], dtype=torch.int64)
    dq = q[1:] - q[:-1]
    return bits.weighted_sum(dq.tolist())


def _ring(v: float, bits: int) -> int:
    return round(v * 2.0**bits)


def piecewise(ctx: PartyContext, x: Share, table: Piecewise, op: str = "approx") -> Share:
    """Evaluate a ``Piecewise`` table on the shared fixed-point ``x`` (see the module docstring)."""
    return piecewise_many(ctx, x, [table], op)[0]


def piecewise_many(ctx: PartyContext, x: Share, tables: Sequence[Piecewise], op: str = "approx") -> list[Share]:
    """Several tables on the same ``x`` in the rounds of one: they must share thresholds and normalisation
    (``alpha``, ``beta``); the thermometer, ``v`` and its powers (to the highest degree) are computed once,
    and every table's products and final truncation go in the same two rounds."""
    table = tables[0]
    for t in tables[1:]:
        if (t.thresholds, t.alpha, t.beta) != (table.thresholds, table.alpha, table.beta):
            raise ProtocolError(f"piecewise_many: {t.name} and {table.name} have different intervals")
    fam = ctx.family
    f = ctx.config.frac_bits
    d = max(t.degree for t in tables)
    if (d - 1) * f > 62 or 2 * f > 60:
        raise ProtocolError(
            f"{table.name} needs frac_bits <= {min(62 // max(d - 1, 1), 30)} (its powers and products must fit the "
            f"ring), got {f}"
        )
    tring = []
    for t in table.thresholds:
        tr = t * 2.0**f
        if tr != round(tr):
            raise ProtocolError(f"{table.name}: threshold {t} is not on the fixed-point grid of {f} bits")
        tring.append(int(tr))
    if x.numel() == 0:
        return [x for _ in tables]
    if not table.uniform and len(tring) >= MIN_THRESHOLDS and all(t == 0 or not abs(t) & (abs(t) - 1) for t in tring):
        # Many octave thresholds: all of them from one bit decomposition (``protocols.octave``).
        bits, xbits = octave_bits(ctx, x, tring, f"{op}:oct"), None
    else:
        res = fam.compare(ctx, x, tring, negate=True, mul_input=not table.uniform, op=f"{op}:cmp")
        bits, xbits = res.bits, res.xbits
    # Every table selected from the bits, in one product (``select_many``): the normalisation's (alpha where
    # it is a product, beta), then per table the coefficients of v^1..v^d and the constant.
    sel: list[list[int]] = []
    if table.uniform:
        sel.append([_ring(-b, f) for b in table.beta])
    else:
        fn_bits = max(0, max(-math.floor(math.log2(abs(a))) for a in table.alpha if a != 0.0)) + 8
        a_ring = [_ring(a, fn_bits) for a in table.alpha]
        if any(a != 0.0 and abs(a * 2.0**fn_bits - r) > 0 for a, r in zip(table.alpha, a_ring)):
            raise ProtocolError(f"{table.name}: scale factors must be powers of two")
        sel.append([_ring(b, f + fn_bits) for b in table.beta])
        if xbits is None:
            sel.append(a_ring)
    extras = []
    for t in tables:
        # Coefficients, scaled by 2^(f + extra) (the constant by 2^(2f + extra)); missing powers are 0.
        bound = max(sum(abs(c) * t.vmax**k for k, c in enumerate(cs)) for cs in t.coeffs)
        extra = int(max(0, min(24, math.floor(61 - 2 * f - math.log2(max(bound, 2.0**-30)) - 1))))
        coeffs = [tuple(cs) + (0.0,) * (d - t.degree) for cs in t.coeffs]
        sel += [[_ring(cs[k], f + extra) for cs in coeffs] for k in range(1, d + 1)]
        sel.append([_ring(cs[0], 2 * f + extra) for cs in coeffs])
        extras.append(extra)
    picked = select_many(bits, sel)
    norm, picked = picked[: len(sel) - len(tables) * (d + 1)], picked[len(sel) - len(tables) * (d + 1) :]
    # The normalised variable v.
    if table.uniform:
        v = x - norm[0]
    else:
        if xbits is not None:
            # sum_i alpha_i h_i x, with h_i x = xb_i - xb_(i+1), xb_0 = x, xb_(K+1) = 0 (telescoped).
            vb = select_linear(xbits, a_ring) + x.mul_public(a_ring[0])
        else:
            # (sum_i alpha_i h_i) x: one product (the comparison's free products are not there).
            vb = fam.product(ctx, OP_MUL, x, norm[1], op=f"{op}:norm")
        vb = vb + norm[0]
        (v,) = fam.truncate_many(ctx, [(vb, fn_bits)], f"{op}:norm")
    pw = fam.powers(ctx, v, d, f, op)
    kind = type(x)
    cks = [c for i in range(len(tables)) for c in picked[i * (d + 1) : i * (d + 1) + d]]
    c0s = [picked[i * (d + 1) + d] for i in range(len(tables))]
    prod = fam.product(ctx, OP_MUL, kind.stack(cks), kind.stack(pw * len(tables)), op=f"{op}:poly")
    sums = [prod[i * d : (i + 1) * d].sum(0) + c0 for i, c0 in enumerate(c0s)]
    return fam.truncate_many(ctx, [(s, f + e) for s, e in zip(sums, extras, strict=True)], f"{op}:out")
