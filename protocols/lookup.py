"""Table lookup by a shared one-hot index: ``exp``, ``sigmoid``, ``tanh`` in 4 rounds and 2 comparisons each.

The piecewise tables of ``protocols.approx`` find the interval of ``x`` with a
thermometer of comparisons, one per threshold: ``exp`` on [-11, 12) costs 24
comparisons per element, most of its time.  Here the interval comes from
arithmetic instead, and comparisons are left only for saturation:

``e^x = 2^y = 2^k 2^v`` with ``y = x log2(e)``, ``k`` an integer near ``y`` and
``v = y - k`` in [-1, 1].

The input is opened once, for everything.  One dealer request (``cmplut``)
gives the comparison's material for a uniform mask ``r`` and, derived from
``R = L r`` (``L = round(log2(e) 2^14)`` = 23637, odd, so ``R`` is uniform; off
``log2(e) 2^14`` by 6.6e-7 relative), an 8-entry one-hot of the bits
``[f + 17, f + 20)`` of ``R`` whose 1 is ``2^(7 - R_lo)`` for the 3 bits ``R_lo``
at ``[f + 14, f + 17)``, and the powers of ``-delta`` for the 12 bits ``delta``
at ``[f + 2, f + 14)``.

1. (round 1) Open ``c = x + r``: uniform.  It starts the comparisons
   ``[x >= lo]``, ``[x >= hi]`` (``protocols.comparison``, rounds 2-4 beside
   what follows), and ``L c + K = t + K + R`` is public for ``t = x L``
   (``K = 2^62``): an exact division of ``t`` (``protocols.truncation``) whose
   mask is ``R``, with nothing more to open.  Slices of ``t + K + R`` minus the
   same slices of ``R`` are the divisions' results: for ``k = t / 2^(f+14)``
   (stochastically rounded: ``floor`` or ``floor + 1``), ``k = 8 k_hi + j`` where
   ``j = T_lo - R_lo`` in (-8, 8) (``T_lo``: the public 3 bits at ``f + 14``)
   and ``k_hi + rho = c'`` modulo 8 (``rho``, ``c'``: the 3 bits above, of ``R``
   and of ``t + K + R``; the wrap counts 2^(64 - f - 17), 0 modulo 8).  So
   ``2^k = 2^T_lo 2^-R_lo 2^(8 k_hi)``, and ``A = 2^k`` (fixed point, 7 bits
   wider) is ``2^T_lo sum_i F[i] 2^(8 (c' - i))`` with the dealer's
   ``F = E_rho 2^(7 - R_lo)``: local, exact for every ``k`` in [-16, 15]
   (``k_hi`` in [-2, 2]; the other rows of the table are 0).  ``v``: the 12 bits
   below ``f + 14``, ``(bits of t + K + R) - delta``, is ``y`` with 12
   fractional bits minus ``k``, exactly, in (-1, 1); so ``v^m`` is local too,
   from the public ``v + delta`` and the dealer's powers of ``-delta``.
2. (round 2) ``P = p(v)`` for the degree-4 polynomial ``p`` closest to ``2^v``
   in relative error on [-1, 1] (2.5e-5), computed locally at scale 2^60 and
   truncated to ``f`` bits (19 at f = 20): open ``poly + K + r2``.  In the same round open
   ``A - a`` for the product ``S = A P``: ``P`` is ``pub - (r2 >> m) + g msb(r2)``
   (``m = 60 - f``; ``pub`` and ``g`` public), so with the dealer's shares of
   ``a (r2 >> m)`` and ``a msb(r2)``, ``S`` is local and ``P`` never opened.
3. (round 3) Truncate ``S`` (scale 2^(2f + 7)) to ``f`` bits: open ``S + K + r3``
   (``|S| < 2^62`` up to f = 20, where ``P`` keeps 19 bits).
   The quotient ``S'`` is again ``pub - (r3 >> f) + g msb(r3)``.
4. (round 4) The comparisons end: their bits arrive in arithmetic form as
   ``b = e + (1 - 2e) t`` (``e`` opened, ``t`` the dealer's bit), so
   ``b S' = e S' + (1 - 2e) S' t`` is local with the dealer's ``(r3 >> f) t``
   and ``msb(r3) t``: the saturation ``h S'`` (``h = [lo <= x < hi]``, 0 outside,
   where the index wraps and ``S'`` is meaningless) costs no round of its own.
   Add ``[x >= hi] e^hi``.

Rounds 4.  Bytes per element, per party and per other party: the opening 8,
the comparison bits 2 x 35/8, round 2 16, round 3 8: about 41
(``scripts/bench_nonlinear.py --table``: 40.8).  The dealer sends the one-hot
(64 bytes per element) and the rest (about 165) to the last party: 229 (a
32-entry one-hot of ``k`` took 418).

Accuracy (f = 16): relative error under 5e-4 on [-11, 10) plus 2^-16
absolute; ``0`` below ``lo = -11`` (true value < 1.7e-5) and ``e^10`` from
``hi = 10`` on (the documented domain ends at 10).  ``exp_nonpositive`` (the
softmax's ``e^(x - max)``) has no upper comparison.  Inputs beyond the range
of the split (``|x| >= 2^31``) make ``k`` and ``v`` garbage, but ``h`` is 0
there and ``h S'`` an exact 0.

Needs ``frac_bits <= 20`` (so do the thermometer tables of degree 4: wider encodings get an error).

Uniform tables (``UniformLookup``: sigmoid on [-9, 9) in rows of 1, tanh on
[-5, 5) in rows of 0.5, both degree 4) follow the same pattern with
``u = x - lo``, whose public ``u + K + r`` is ``c`` shifted: the row index
``q`` (``u / step``, stochastically rounded, so ``q`` is the row of ``x`` or
the next one and ``v = u - q step`` lies in ``(-step, step)``: each row's
polynomial is fitted over two rows' width) is the slice of bits above
``log2(step) + f`` (the step is a power of two), ``v`` the 12 bits below.  The
coefficients ``C_m`` are secret (each row's, selected by the one-hot from a
``(degree + 1, 32)`` table rotated by the index).  With ``w = v + delta``
public, ``p(v) = sum_j (-delta)^j Q_j`` for the Taylor coefficients
``Q_j = sum_m C(m, j) w^(m - j) C_m`` of ``p`` at ``w`` (local: a Horner shift,
the same integers as ``sum_m C_m v^m``), so round 2 opens ``Q_j - a_j`` for
``j >= 1`` and ``(-delta)^j Q_j`` is local from the dealer's powers of
``-delta`` and ``a_j (-delta)^j`` (``degree`` products; expanding
``C_m v^m`` instead took one for each ``1 <= j <= m``: 48 more dealer bytes
per element); round 3 truncates the polynomial (scale 2^61) to ``f`` bits,
and the comparison bits of round 4 multiply it locally as above (``below``
under ``lo``, ``above`` from ``hi`` on).  Only where the rows and ends lie on the fixed-point grid
(``fits``); elsewhere the thermometer tables run.  Max error (f = 16, 2 x 10^5
points on [-30, 30]): sigmoid 1.7e-4, tanh 3.3e-4 (the issue's target: 1e-3).
Bytes per element: 8 + 2 x 35/8 + 8 degree + 8 = 56.75; the dealer sends 434 (256 of them
the one-hot).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

import mpc.kernels as kernels
from mpc.context import PartyContext
from mpc.ring import logical_rshift, msb, wrap_int
from mpc.shares import holds_public

from .approx import _fit
from .beaver import raw_powers
from .comparison import compare_rounds
from .correlated import LUT_EXP, LUT_TABLE
from .rounds import ADD, Steps, drive_one, parallel
from .truncation import OFFSET_BITS

__all__ = ["exp_lookup", "supports", "fits", "EXP_LO", "EXP_HI", "exp_poly", "uniform_lookup", "SIGMOID", "TANH"]

LOG2E_BITS = 14
LOG2E = round(math.log2(math.e) * 2**LOG2E_BITS)  # 23637, within 6.6e-7 of log2(e) 2^14; odd
V_BITS = 12  # fractional bits of v (its fourth power takes 48 of the 60 bits of the polynomial's scale)
DEGREE = 4
POLY_SCALE = 60  # |p(v)| < 2.0004, so p(v) 2^60 < 2^62: the truncation's range
TABLE = 32  # rows of a uniform table
EXP_LOW = 3  # k = 8 k_hi + j: j from the 3 bits at the index (no one-hot), k_hi in [-2, 2] from the 3 above
EXP_TABLE = 8
EXP_LO, EXP_HI = -11.0, 10.0


def supports(frac_bits: int) -> bool:
    """Whether the lookup fits the ring at this encoding (``A P`` at scale 2^(2f) stays below 2^62)."""
    return frac_bits <= 20


# Below this many fractional bits exp's polynomial value (in [1, 2)) keeps too few bits: at f = 4 exp(5) came
# out 152 (2.4% off), at f = 0 exp(1) came out 4; the thermometer table runs there instead (148.375 at f = 4).
EXP_MIN_FRAC_BITS = 8
# P = p(v) keeps at most this many fractional bits (A P, scale 2^(f + 7 + 19) at f = 20, stays under 2^62, the
# truncation's range); exp's lookup runs up to f = 20, as the tables do (``supports``).
EXP_P_BITS = 19


def exp_supports(frac_bits: int) -> bool:
    """Whether exp's lookup is accurate (``EXP_MIN_FRAC_BITS`` or more) and fits the ring at this encoding."""
    return EXP_MIN_FRAC_BITS <= frac_bits and supports(frac_bits)


@functools.cache
def exp_poly() -> tuple[int, ...]:
    """The ring coefficients of ``p(v) ~ 2^v`` on |v| <= 1 + 2^-12: ``c_m`` at scale ``2^(60 - 12 m)``."""
    half = 1.0 + 2.0**-V_BITS
    coeffs = _fit(lambda v: np.exp2(v), lambda v: v, DEGREE, True, half)
    return tuple(round(c * 2.0 ** (POLY_SCALE - m * V_BITS)) for m, c in enumerate(coeffs))


@functools.lru_cache(maxsize=4)
def _rotations(size: int) -> torch.Tensor:
    """``ROT[c, j] = (c - j) mod size``: row ``c`` rotates the one-hot by an opened index ``c`` (read only)."""
    j = torch.arange(size, dtype=torch.int64)
    return (j.unsqueeze(1) - j) & (size - 1)


def _select_rows(onehot: torch.Tensor, c: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``table[:, k]`` (rows, n) for the secret index ``k = c - rho`` (mod TABLE) of each element: the dealer's
    one-hot of ``rho`` (n, TABLE), turned into the one-hot of ``k`` by a public per-element rotation
    (``[k == j] = [rho == c - j]``), then a product with the table (mod 2^64).  ``c`` is in [0, TABLE)."""
    rot = _rotations(onehot.shape[-1])
    if table.shape[0] == 1:
        # One row: rotate the table rather than the one-hot, sum_m [rho == m] T[c - m], picking each element's
        # row of the 32 x 32 rotated table (10^5 elements: 4 ms against 15 for the gather and its index).
        return table[0][rot].index_select(0, c).mul_(onehot).sum(1).unsqueeze(0)
    hot = onehot.gather(1, rot.index_select(0, c))
    return kernels.matmul(hot, table.t()).t()


def _request(ctx: PartyContext, mode: int, n: int, kk: int, mult: int, ish: int, table: int, low: int, degree: int,
             tb: int, ts: int):  # fmt: skip
    """The one dealer request of a lookup (``cmplut``); ``v`` takes the ``V_BITS`` (or fewer) bits below the
    index."""
    vbits = min(V_BITS, ish)
    params = (mode, n, kk, mult, ish, table, low, ish - vbits, vbits, degree, tb, ts)
    return ctx.correlations.request("cmplut", params)


def _split(pub: torch.Tensor, ish: int, table: int, low: int = 0):
    """From the public ``u + K + R``: the index ``k + rho`` (mod ``table``) from the bits at ``ish + low``, the
    ``low`` bits at ``ish``, ``v + delta`` (the bits below ``ish``) and the position of ``v``'s lowest bit."""
    vbits = min(V_BITS, ish)
    cidx = logical_rshift(pub, ish + low) & (table - 1)
    lows = logical_rshift(pub, ish) & ((1 << low) - 1)
    return cidx, lows, logical_rshift(pub, ish - vbits) & ((1 << vbits) - 1), ish - vbits


def _centred(size: int) -> list[int]:
    """``j`` read modulo ``size`` as a signed index: 0, 1, .., size/2 - 1, -size/2, .., -1."""
    return [j if j < size // 2 else j - size for j in range(size)]


def _quotient(c: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The public parts of a truncation's quotient from the opened ``c``: ``(c >> shift) - K / 2^shift`` and the
    wrap's factor ``(1 - msb(c)) 2^(64 - shift)``."""
    return logical_rshift(c, shift) - ((1 << OFFSET_BITS) >> shift), (1 - msb(c)) * wrap_int(1 << (64 - shift))


def _truncated(ctx: PartyContext, pub: torch.Tensor, g: torch.Tensor, rq, rm, t_a=None, rqt=None, rmt=None):
    """Shares of ``y / 2^shift`` from ``_quotient``'s public parts of the opened ``c = y + K + r`` and the
    dealer's ``r >> shift``, ``msb(r)`` (``protocols.truncation``): ``pub - (r >> shift) + g msb(r)``, so the
    quotient times the comparison bits ``t`` is local too, from the dealer's ``(r >> shift) t`` and
    ``msb(r) t`` (returned second, ``(K, n)``, when ``t_a`` is given)."""
    y = g * rm - rq
    if holds_public(ctx.rank):
        y += pub
    if t_a is None:
        return y, None
    return y, pub * t_a - rqt + g * rmt


def _exp_steps(ctx: PartyContext, xf: torch.Tensor, hi: float | None, op: str) -> Steps:
    """``e^x`` of the flat ``xf`` (see the module docstring), 4 rounds; ``hi=None``: no upper saturation."""
    f = ctx.config.frac_bits
    n = xf.numel()
    party0 = holds_public(ctx.rank)
    thresholds = [wrap_int(round(EXP_LO * 2**f))] + ([] if hi is None else [wrap_int(round(hi * 2**f))])
    pb = min(f, EXP_P_BITS)  # P's fractional bits
    m = POLY_SCALE - pb
    # A's extra bits: 7 for the dealer's 2^(7 - low bits), and below f = 16 what makes 2^-16 an integer
    wide = (1 << EXP_LOW) - 1 + max(0, 16 - f)
    h = _request(ctx, LUT_EXP, n, len(thresholds), LOG2E, f + LOG2E_BITS, EXP_TABLE, EXP_LOW, DEGREE, m, pb + wide)
    r_a, a1, a2, a_big, r2, r3 = h.randoms
    # Round 1: c = x + r, uniform; it serves the comparisons and, as L c = t + L r, the split of t = x L.
    (c,) = yield f"{op}:open", [(xf + r_a, ADD)]
    r_b, leaf_p, l1_p, l2_p, t_a, onehot, apow, r2q, r2m, u, z, r3q, r3m, r3qt, r3mt = h.derived()
    cmp = compare_rounds(ctx, c, thresholds, (r_b, leaf_p, l1_p, l2_p, a1, a2), t_a, True, 63, f"{op}:cmp")
    cidx, lows, pub_v, _ = _split(c * LOG2E + wrap_int(1 << OFFSET_BITS), f + LOG2E_BITS, EXP_TABLE, EXP_LOW)

    def core() -> Steps:
        # v^m from the public v + delta and the dealer's powers of -delta (v = (v + delta) + (-delta)).
        cm = exp_poly()
        pw = raw_powers(ctx, pub_v, apow[0], apow[1:], DEGREE)
        poly = pw[0] * cm[1]
        for j, vj in enumerate(pw[1:], start=2):
            poly += vj * cm[j]
        del pw
        if party0:
            poly += cm[0] + wrap_int(1 << OFFSET_BITS)
        # A = 2^k 2^(f + wide), k = 8 k_hi + j: 2^(8 k_hi) from the public table (k_hi in [-2, 2]) rotated by the
        # index, against the dealer's one-hot whose 1 is 2^(7 - the low bits of R); times 2^(those of t + K + R).
        table = torch.tensor([0 if abs(c8) > 2 else 1 << (8 * c8 + f + wide - 7) for c8 in _centred(EXP_TABLE)])
        big_a = _select_rows(onehot, cidx, table.reshape(1, -1))[0].bitwise_left_shift_(lows)
        # Round 2: the polynomial's truncation and A's Beaver opening.
        c2, e_a = yield f"{op}:poly", [(poly.add_(r2), ADD), (big_a - a_big, ADD)]
        # P = pub_p - (r2 >> m) + g msb(r2), so A P = e_a P + a pub_p - [a (r2 >> m)] + g [a msb(r2)]: local.
        pub_p, g = _quotient(c2, m)
        p, _ = _truncated(ctx, pub_p, g, r2q, r2m)
        s = e_a * p + a_big * pub_p - u + g * z  # A P, scale 2^(f + wide + pb)
        if party0:
            s += wrap_int(1 << OFFSET_BITS)
        # Round 3: S back to f bits; its products with the comparison bits of round 4 are local.
        (c3,) = yield f"{op}:trunc", [(s.add_(r3), ADD)]
        return _truncated(ctx, *_quotient(c3, pb + wide), r3q, r3m, t_a, r3qt, r3mt)

    (e, sgn, bits), (s, st) = yield from parallel([cmp, core()])
    ys = e * s + sgn * st  # [x >= T_k] S = e S + (1 - 2 e) S t (the comparison's conversion)
    if hi is None:
        return ys[0]
    return ys[0] - ys[1] + bits[1] * round(math.exp(hi) * 2**f)


def exp_lookup(ctx: PartyContext, x: torch.Tensor, hi: float | None = EXP_HI, op: str = "exp") -> torch.Tensor:
    """``e^x`` on ring shares (see the module docstring): 0 below -11, ``e^hi`` from ``hi`` on (``hi=None``:
    no upper saturation, for ``x <= 0``). Rounds 4."""
    if x.numel() == 0:
        return x.clone()
    return drive_one(ctx, _exp_steps(ctx, x.reshape(-1), hi, op)).reshape(x.shape)


# ----- uniform tables: sigmoid, tanh --------------------------------------------------------------------

TABLE_SCALE = 61  # the table polynomials' scale: |p| < 1.001 on every row, so p 2^61 < 2^62


@dataclass(frozen=True)
class UniformLookup:
    """A function on [lo, hi) by rows of ``step`` (a power of two): row ``i`` holds the degree-``d`` fit of
    ``fn`` on ``[lo + (i - 1) step, lo + (i + 1) step]`` in ``v = x - lo - i step`` (double width: the
    stochastic index is ``i`` or ``i + 1`` for ``x`` in row ``i``'s own cell, and ``v`` follows it exactly)."""

    name: str
    lo: float
    hi: float
    step: float
    degree: int
    coeffs: tuple[tuple[float, ...], ...]  # per row, increasing powers of v
    below: float
    above: float

    @property
    def rows(self) -> int:
        return len(self.coeffs)


def uniform_lookup_table(name, fn, lo, hi, step, degree, below, above) -> UniformLookup:
    count = round((hi - lo) / step)
    if count + 1 > TABLE:
        raise ValueError(f"{name}: {count + 1} rows do not fit a one-hot of {TABLE}")
    if math.frexp(step)[0] != 0.5:
        raise ValueError(f"{name}: the step {step} is not a power of two")
    coeffs = tuple(_fit(fn, lambda v, c=lo + i * step: c + v, degree, False, step) for i in range(count + 1))
    return UniformLookup(name, lo, hi, step, degree, coeffs, below, above)


def _uniform_steps(ctx: PartyContext, xf: torch.Tensor, tab: UniformLookup, op: str) -> Steps:
    """``tab``'s function of the flat ``xf`` in 4 rounds (the module docstring)."""
    f = ctx.config.frac_bits
    n, d = xf.numel(), tab.degree
    party0 = holds_public(ctx.rank)
    lo = wrap_int(round(tab.lo * 2**f))
    thresholds = [lo, wrap_int(round(tab.hi * 2**f))]
    ish = f + math.frexp(tab.step)[1] - 1  # the step is 2^(ish - f)
    tb = TABLE_SCALE - f
    h = _request(ctx, LUT_TABLE, n, 2, 1, ish, TABLE, 0, d, tb, 0)
    r_a, a1, a2, masks, r2 = h.randoms
    (c,) = yield f"{op}:open", [(xf + r_a, ADD)]
    r_b, leaf_p, l1_p, l2_p, t_a, onehot, apow, ad, r2q, r2m, r2qt, r2mt = h.derived()
    cmp = compare_rounds(ctx, c, thresholds, (r_b, leaf_p, l1_p, l2_p, a1, a2), t_a, True, 63, f"{op}:cmp")
    cidx, _, pub_v, vsh = _split(c - lo + wrap_int(1 << OFFSET_BITS), ish, TABLE)  # u + K + r for u = x - lo

    def core() -> Steps:
        # Row coefficients C_m = sum_i [q == i] T_mi at scale 2^(61 - m (f - vsh)) (v has f - vsh fractional
        # bits), the row table rotated by the index against the one-hot.
        table = torch.zeros((d + 1, TABLE), dtype=torch.int64)
        for i, cs in enumerate(tab.coeffs):
            for m, cm in enumerate(cs):
                table[m, i] = round(cm * 2.0 ** (TABLE_SCALE - m * (f - vsh)))
        coef = _select_rows(onehot, cidx, table)
        # p(v) = sum_m C_m (w - delta)^m for the public w = v + delta is sum_j (-delta)^j Q_j with
        # Q_j = sum_{m >= j} C(m, j) w^(m - j) C_m (p's Taylor coefficients at w): local from the C_m, exactly
        # the same integers.  Q_0 needs nothing more; for j >= 1, round 2 opens Q_j - a_j and
        # (-delta)^j Q_j = (Q_j - a_j) [(-delta)^j] + [a_j (-delta)^j] from the dealer's powers and products.
        q = coef  # (d + 1, n): Horner's Taylor shift in place, d (d + 1) / 2 products with the public w
        for i in range(d):
            for k in range(d - 1, i - 1, -1):
                q[k] += q[k + 1] * pub_v
        (e_q,) = yield f"{op}:coef", [(q[1:] - masks, ADD)]  # (d, n)
        poly = q[0]
        if party0:
            poly += wrap_int(1 << OFFSET_BITS)
        poly += (e_q * apow).sum(0).add_(ad.sum(0))
        # Round 3: the polynomial back to f bits; its products with the comparison bits are local.
        (c3,) = yield f"{op}:trunc", [(poly.add_(r2), ADD)]
        return _truncated(ctx, *_quotient(c3, tb), r2q, r2m, t_a, r2qt, r2mt)

    (e, sgn, bits), (p, pt) = yield from parallel([cmp, core()])
    ys = e * p + sgn * pt  # [x >= lo] P and [x >= hi] P
    out = ys[0] - ys[1] + bits[1] * round(tab.above * 2**f)
    if tab.below:
        below = round(tab.below * 2**f)
        out += (1 - bits[0]) * below if party0 else -bits[0] * below
    return out


def fits(tab: UniformLookup, frac_bits: int) -> bool:
    """Whether ``tab``'s rows and ends lie on the fixed-point grid (a row at least 2 units wide, and the index
    within the split's bits): elsewhere the rows would not line up with the fits, and the thermometer table
    (which checks its grid) is used."""

    def on_grid(v: float, least: int = 0) -> bool:
        r = v * 2**frac_bits
        return r == round(r) and abs(r) >= least

    ish = frac_bits + math.frexp(tab.step)[1] - 1
    return supports(frac_bits) and on_grid(tab.step, 2) and on_grid(tab.lo) and on_grid(tab.hi) and ish <= 57


def uniform_lookup(ctx: PartyContext, x: torch.Tensor, tab: UniformLookup, op: str) -> torch.Tensor:
    """``tab``'s function of the shared ``x``: ``below`` under ``lo``, ``above`` from ``hi`` on. Rounds 4."""
    if x.numel() == 0:
        return x.clone()
    return drive_one(ctx, _uniform_steps(ctx, x.reshape(-1), tab, op)).reshape(x.shape)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


SIGMOID = uniform_lookup_table("sigmoid", _sigmoid, -9.0, 9.0, 1.0, 4, 0.0, 1.0)
TANH = uniform_lookup_table("tanh", np.tanh, -5.0, 5.0, 0.5, 4, -1.0, 1.0)
