"""Table lookup by a shared one-hot index: ``exp``, ``sigmoid``, ``tanh`` in 6 rounds and 2 comparisons each.

The piecewise tables of ``protocols.approx`` find the interval of ``x`` with a
thermometer of comparisons, one per threshold: ``exp`` on [-11, 12) costs 24
comparisons per element, most of its time.  Here the interval comes from
arithmetic instead, and comparisons are left only for saturation:

``e^x = 2^y = 2^k 2^v`` with ``y = x log2(e)``, ``k`` an integer near ``y`` and
``v = y - k`` in [-1, 1].

1. (round 1) ``t = x L`` with the public ``L = round(log2(e) 2^14)`` (off by
   6.6e-7 relative).  Two exact divisions of ``t`` (``protocols.truncation``;
   stochastically rounded, so each is ``floor`` or ``floor + 1``) give
   ``k = t / 2^(f+14)`` and ``y' = t / 2^(f+14-12)`` (``y`` with 12 fractional
   bits); ``v = y' - k 2^12`` is local and exact, and whatever the two roundings
   did, ``|v| <= 1 + 2^-12`` and ``k + v = y'`` exactly.
2. (round 2) The dealer's ``onehot`` correlation: a random ``rho`` in Z_32
   (additively shared in Z_2^64, so its shares reduce to Z_32 locally) and the
   one-hot vector ``E_rho`` of length 32, additively shared.  Open
   ``c = k + rho mod 32`` (uniform: one byte per element); then
   ``[k == j] = E_rho[c - j mod 32]``, so ``A = 2^k`` (in fixed point) is the
   local sum ``sum_i E_rho[i] 2^(c - i)`` over a public table rotated by ``c``:
   exact, for every ``k`` in [-16, 15].  In the same round, the powers of ``v``:
   open ``v - a`` against the dealer's ``a, a^2, a^3, a^4``.
3. (round 3) ``P = p(v)`` for the degree-4 polynomial ``p`` closest to ``2^v``
   in relative error on [-1, 1] (2.5e-5), computed locally from the
   untruncated powers at scale 2^60 and truncated once to ``f`` bits.
4. (round 4) One Beaver product ``S = A P``.
5. (rounds 5, 6) Saturation: a comparison batch ``[x >= lo], [x >= hi]`` runs
   beside rounds 1-4 (``protocols.rounds.drive``: its four rounds share the
   exchanges); ``h = [lo <= x < hi]`` times ``S`` (one Beaver product, ``h`` is an
   integer), truncated by ``f``; plus ``[x >= hi] e^hi``.  Outside [lo, hi) the
   index wraps modulo 32 and ``S`` is meaningless, but it is multiplied by 0.

Rounds 6.  Bytes per element, per party and per other party: comparison
8 + 2 x 35/8, divisions 16, index 1, powers 8, polynomial 8, products 32,
final truncation 8: about 90 (``scripts/bench_nonlinear.py --table``: 89.8).  The dealer sends the one-hot (256 bytes per
element) and the usual corrections to the last party.

Accuracy (f = 16): relative error under 5e-4 on [-11, 10) plus 2^-16
absolute; ``0`` below ``lo = -11`` (true value < 1.7e-5) and ``e^10`` from
``hi = 10`` on (the documented domain ends at 10).  ``exp_nonpositive`` (the
softmax's ``e^(x - max)``) has no upper comparison.

Needs ``frac_bits <= 20`` (so do the thermometer tables of degree 4: wider encodings get an error).

Uniform tables (``UniformLookup``: sigmoid on [-9, 9) in rows of 0.75, degree 3;
tanh on [-5, 5) in rows of 0.5, degree 4) follow the same pattern with the row
index ``q = (x - lo) / step`` (one exact division, stochastically rounded, so
``q`` is the row of ``x`` or the next one and ``v = x - lo - q step`` lies in
``[-step, step]``: each row's polynomial is fitted over two rows' width), the
one-hot selecting each power's coefficient (a ``(rows, 32)`` table rotated by
the opened index), the powers of ``v`` truncated in one round and one batched
product for ``sum_m C_m v^m``; saturation as for exp (``below`` under ``lo``,
``above`` from ``hi`` on).  Only where the rows and ends lie on the
fixed-point grid (``fits``); elsewhere the thermometer tables run.  Max error
(f = 16): sigmoid 2.0e-4, tanh 2.3e-4 (the issue's target: 1e-3).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from mpc.context import PartyContext
from mpc.ring import wrap_int
from mpc.shares import holds_public

from .approx import _fit
from .beaver import finish_product, product_truncated, raw_powers
from .comparison import compare_steps
from .correlated import OP_MUL, pack_shapes
from .rounds import ADD, Steps, drive
from .truncation import divide_finish, divide_start

__all__ = ["exp_lookup", "supports", "fits", "EXP_LO", "EXP_HI", "exp_poly", "uniform_lookup", "SIGMOID", "TANH"]

LOG2E_BITS = 14  # L = round(log2(e) 2^14) = 23637 is within 6.6e-7 of log2(e) 2^14
V_BITS = 12  # fractional bits of v (its fourth power takes 48 of the 60 bits of the polynomial's scale)
DEGREE = 4
POLY_SCALE = 60  # |p(v)| < 2.0004, so p(v) 2^60 < 2^62: the truncation's range
TABLE = 32  # k in [-16, 15]
EXP_LO, EXP_HI = -11.0, 10.0


def supports(frac_bits: int) -> bool:
    """Whether the lookup fits the ring at this encoding (``A P`` at scale 2^(2f) stays below 2^62)."""
    return frac_bits <= 20


# Below this many fractional bits exp's polynomial value (in [1, 2)) keeps too few bits: at f = 4 exp(5) came
# out 152 (2.4% off), at f = 0 exp(1) came out 4; the thermometer table runs there instead (148.375 at f = 4).
EXP_MIN_FRAC_BITS = 8


def exp_supports(frac_bits: int) -> bool:
    """Whether exp's lookup is accurate (``EXP_MIN_FRAC_BITS`` or more) and fits the ring at this encoding."""
    return EXP_MIN_FRAC_BITS <= frac_bits and supports(frac_bits)


@functools.cache
def exp_poly() -> tuple[int, ...]:
    """The ring coefficients of ``p(v) ~ 2^v`` on |v| <= 1 + 2^-12: ``c_m`` at scale ``2^(60 - 12 m)``."""
    half = 1.0 + 2.0**-V_BITS
    coeffs = _fit(lambda v: np.exp2(v), lambda v: v, DEGREE, True, half)
    return tuple(round(c * 2.0 ** (POLY_SCALE - m * V_BITS)) for m, c in enumerate(coeffs))


@functools.lru_cache(maxsize=1)
def _rotations() -> torch.Tensor:
    """``ROT[c, j] = (c - j) mod TABLE``: row ``c`` rotates the one-hot by an opened index ``c`` (read only)."""
    j = torch.arange(TABLE, dtype=torch.int64)
    return (j.unsqueeze(1) - j) & (TABLE - 1)


def _select_rows(onehot: torch.Tensor, c: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``table[:, k]`` (rows, n) for the secret index ``k = c - rho`` (mod TABLE) of each element: the dealer's
    one-hot of ``rho`` (n, TABLE), turned into the one-hot of ``k`` by a public per-element rotation
    (``[k == j] = [rho == c - j]``), then a product with the table (mod 2^64).  ``c`` is in [0, TABLE)."""
    rot = _rotations()
    if table.shape[0] == 1:
        # One row: rotate the table rather than the one-hot, sum_m [rho == m] T[c - m], picking each element's
        # row of the 32 x 32 rotated table (10^5 elements: 4 ms against 15 for the gather and its index).
        return table[0][rot].index_select(0, c).mul_(onehot).sum(1).unsqueeze(0)
    hot = onehot.gather(1, rot.index_select(0, c))
    return (hot @ table.t()).t()


def _triple(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor):
    h = ctx.correlations.request("triple", (OP_MUL, *pack_shapes(x.shape, y.shape)))
    a, b = h.randoms
    return h, [(x - a, ADD), (y - b, ADD)]


def _triple_finish(ctx: PartyContext, h, opened) -> torch.Tensor:
    a, b = h.randoms
    (c,) = h.derived()
    return finish_product(ctx, OP_MUL, c, a, b, opened[0], opened[1])


def _exp_core(ctx: PartyContext, xf: torch.Tensor, op: str) -> Steps:
    """``2^k p(v)`` at scale 2^(2f), correct for ``x log2(e)`` in [-16, 15] (rounds 1-4 above)."""
    f = ctx.config.frac_bits
    party0 = holds_public(ctx.rank)
    n = xf.numel()
    t = xf * round(math.log2(math.e) * 2**LOG2E_BITS)
    split = divide_start(ctx, [(t, 1 << (f + LOG2E_BITS)), (t, 1 << (f + LOG2E_BITS - V_BITS))])
    opened = yield f"{op}:split", [(m, ADD) for m in split.masked]
    k, yv = divide_finish(ctx, split, opened)
    v = yv - (k << V_BITS)
    # (the last party fetches the dealer's corrections in the order of the requests)
    pw = ctx.correlations.request("pow", (DEGREE, n))
    oh = ctx.correlations.request("onehot", (TABLE, n))
    (rho,) = oh.randoms
    (a,) = pw.randoms
    idx = ((k + rho) & (TABLE - 1)).to(torch.uint8)
    cidx, e = yield f"{op}:index", [(idx, ADD), (v - a, ADD)]
    # The polynomial from the untruncated powers v^m = sum_j C(m, j) e^(m-j) a^j (scale 2^(12 m)).
    (ap,) = pw.derived()
    (onehot,) = oh.derived()  # (n, TABLE)
    cm = exp_poly()
    poly = v * cm[1]
    for m, vm in enumerate(raw_powers(ctx, e, a, ap, DEGREE)[1:], start=2):
        poly += vm * cm[m]
    if party0:
        poly += cm[0]
    del ap
    trunc = divide_start(ctx, [(poly, 1 << (POLY_SCALE - f))])
    (p,) = divide_finish(ctx, trunc, (yield f"{op}:poly", [(trunc.masked[0], ADD)]))
    # A = 2^k: the public table 2^j (j in [-16, 15]) rotated by the opened index, against the shared one-hot.
    c = cidx.to(torch.int64) & (TABLE - 1)
    table = torch.tensor([round(2.0 ** ((j if j < TABLE // 2 else j - TABLE) + f)) for j in range(TABLE)])
    big_a = _select_rows(onehot, c, table.reshape(1, -1))[0]
    del onehot
    tri, sends = _triple(ctx, big_a, p)
    return _triple_finish(ctx, tri, (yield f"{op}:mul", sends))


def exp_lookup(ctx: PartyContext, x: torch.Tensor, hi: float | None = EXP_HI, op: str = "exp") -> torch.Tensor:
    """``e^x`` on ring shares (see the module docstring): 0 below -11, ``e^hi`` from ``hi`` on (``hi=None``:
    no upper saturation, for ``x <= 0``). Rounds 6."""
    f = ctx.config.frac_bits
    if x.numel() == 0:
        return x.clone()
    shape = tuple(x.shape)
    xf = x.reshape(-1)
    thresholds = [wrap_int(round(EXP_LO * 2**f))] + ([] if hi is None else [wrap_int(round(hi * 2**f))])
    cmp, s = drive(
        ctx,
        [compare_steps(ctx, xf, thresholds, negate=True, op=f"{op}:cmp"), _exp_core(ctx, xf, op)],
    )
    bits = cmp.bits
    out = _saturate(ctx, bits[0] if hi is None else bits[0] - bits[1], s, f, op)
    if hi is not None:
        out += bits[1] * round(math.exp(hi) * 2**f)
    return out.reshape(shape)


def _saturate(ctx: PartyContext, h: torch.Tensor, s: torch.Tensor, shift: int, op: str) -> torch.Tensor:
    """``h s / 2^shift`` for the 0/1 interval indicator ``h``: one Beaver round (``h`` is an integer, the
    product keeps ``s``'s scale), then one truncation round, from one fused dealer request
    (``beaver.product_truncated``).  Outside the interval ``h s`` is an exact 0."""
    return product_truncated(ctx, OP_MUL, h, s, shift, name=f"{op}:sat")


# ----- uniform tables: sigmoid, tanh --------------------------------------------------------------------


@dataclass(frozen=True)
class UniformLookup:
    """A function on [lo, hi) by rows of ``step``: row ``i`` holds the degree-``d`` fit of ``fn`` on
    ``[lo + (i - 1) step, lo + (i + 1) step]`` in ``v = x - lo - i step`` (double width: the stochastic
    index is ``i`` or ``i + 1`` for ``x`` in row ``i``'s own cell, and ``v`` follows it exactly)."""

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
    coeffs = tuple(_fit(fn, lambda v, c=lo + i * step: c + v, degree, False, step) for i in range(count + 1))
    return UniformLookup(name, lo, hi, step, degree, coeffs, below, above)


def _uniform_core(ctx: PartyContext, xf: torch.Tensor, tab: UniformLookup, extra: int, op: str) -> Steps:
    """``sum_m C_m v^m`` at scale ``2^(2f + extra)``, rows selected by the one-hot (rounds 1-4)."""
    f = ctx.config.frac_bits
    party0 = holds_public(ctx.rank)
    n = xf.numel()
    div = round(tab.step * 2**f)
    u = xf - (wrap_int(round(tab.lo * 2**f)) if party0 else 0)
    split = divide_start(ctx, [(u, div)])
    (q,) = divide_finish(ctx, split, (yield f"{op}:split", [(split.masked[0], ADD)]))
    v = u - q * div
    d = tab.degree
    pw = ctx.correlations.request("pow", (d, n))
    oh = ctx.correlations.request("onehot", (TABLE, n))
    (rho,) = oh.randoms
    (a,) = pw.randoms
    idx = ((q + rho) & (TABLE - 1)).to(torch.uint8)
    cidx, e = yield f"{op}:index", [(idx, ADD), (v - a, ADD)]
    (ap,) = pw.derived()
    (onehot,) = oh.derived()
    raw = [(vm, 1 << ((m - 1) * f)) for m, vm in enumerate(raw_powers(ctx, e, a, ap, d)[1:], start=2)]
    tr = divide_start(ctx, raw)
    powers = [v, *divide_finish(ctx, tr, (yield f"{op}:powtr", [(t, ADD) for t in tr.masked]))]
    # Coefficients C_m = sum_i [q == i] A_im, the row table rotated by the opened index against the one-hot.
    c = cidx.to(torch.int64) & (TABLE - 1)
    table = torch.zeros((d + 1, TABLE), dtype=torch.int64)
    for i, cs in enumerate(tab.coeffs):
        for m, cm in enumerate(cs):
            table[m, i] = round(cm * 2.0 ** ((2 * f if m == 0 else f) + extra))
    coef = _select_rows(onehot, c, table)
    del onehot
    tri = ctx.correlations.request("triple", (OP_MUL, *pack_shapes((d, n), (d, n))))
    ta, tb = tri.randoms
    stacked = torch.stack(powers)
    opened = yield f"{op}:poly", [(coef[1:] - ta, ADD), (stacked - tb, ADD)]
    prod = _triple_finish(ctx, tri, opened)
    return prod.sum(0) + coef[0]


def fits(tab: UniformLookup, frac_bits: int) -> bool:
    """Whether ``tab``'s rows and ends lie on the fixed-point grid (a row at least 2 units wide): elsewhere the
    rows would not line up with the fits, and the thermometer table (which checks its grid) is used."""

    def on_grid(v: float, least: int = 0) -> bool:
        r = v * 2**frac_bits
        return r == round(r) and abs(r) >= least

    return supports(frac_bits) and on_grid(tab.step, 2) and on_grid(tab.lo) and on_grid(tab.hi)


def uniform_lookup(ctx: PartyContext, x: torch.Tensor, tab: UniformLookup, op: str) -> torch.Tensor:
    """``tab``'s function of the shared ``x``: ``below`` under ``lo``, ``above`` from ``hi`` on. Rounds 6."""
    f = ctx.config.frac_bits
    if x.numel() == 0:
        return x.clone()
    shape = tuple(x.shape)
    xf = x.reshape(-1)
    bound = max(sum(abs(cm) * tab.step**m for m, cm in enumerate(cs)) for cs in tab.coeffs)
    extra = int(max(0, min(24, math.floor(61 - 2 * f - math.log2(max(bound, 2.0**-30)) - 1))))
    thresholds = [wrap_int(round(tab.lo * 2**f)), wrap_int(round(tab.hi * 2**f))]
    cmp, s = drive(
        ctx, [compare_steps(ctx, xf, thresholds, negate=True, op=f"{op}:cmp"), _uniform_core(ctx, xf, tab, extra, op)]
    )
    bits = cmp.bits
    out = _saturate(ctx, bits[0] - bits[1], s, f + extra, op)
    out += bits[1] * round(tab.above * 2**f)
    if tab.below:
        out += (1 - bits[0]) * round(tab.below * 2**f) if holds_public(ctx.rank) else -bits[0] * round(tab.below * 2**f)
    return out.reshape(shape)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


SIGMOID = uniform_lookup_table("sigmoid", _sigmoid, -9.0, 9.0, 0.75, 3, 0.0, 1.0)
TANH = uniform_lookup_table("tanh", np.tanh, -5.0, 5.0, 0.5, 4, -1.0, 1.0)
