"""Thread tier: nonlinear functions against float64 torch over their whole domains (N = 2 and 3).

Inputs are on the fixed-point grid (f = 16), 10^4 of them per function,
spread over the domain (uniformly, or log-uniformly for the functions whose
domain spans decades), with the domain's ends, zero and every table threshold
added.  A result passes when ``|got - want| <= rel |want| + abs`` with the
issue's targets:

==========  =======================  =====  ========
function    domain                   rel    abs
==========  =======================  =====  ========
exp         [-12, 10]                1e-3   2^-14
sigmoid     [-30, 30]                -      1e-3
tanh        [-30, 30]                -      1e-3
log         [1e-3, 1e4]              -      2e-3
reciprocal  +-[1e-2, 1e4]            1e-3   2^-14
sqrt        [1e-3, 1e4]              1e-3   2^-14
rsqrt       [1e-3, 1e4]              1e-3   2^-14
softmax     logits [-30, 30], 2..1000 classes   abs 1e-3
==========  =======================  =====  ========

Out-of-domain results are checked against what ``protocols.nonlinear``
documents (saturation values).

Every test runs under every protocol family (``conftest.FAMILIES``); rounds
are checked for the secure family alone.  Outside a function's domain the
``plaintext`` family returns the true value instead of the saturation value,
and reports the call with a ``FixedPointWarning``.
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from conftest import SECURE, families

import mpc
from mpc.errors import ProtocolError
from protocols import nonlinear as NL
from protocols.plaintext import DOMAINS

F16 = 2.0**16
ULP = 2.0**-16


def grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * F16) / F16


def uniform(lo: float, hi: float, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def logu(lo: float, hi: float, n: int, seed: int, signed: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * (math.log(hi) - math.log(lo)) + math.log(lo))
    if signed:
        v = v * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    return v


def inputs(kind: str, lo: float, hi: float, table, seed: int, n: int = 10**4) -> torch.Tensor:
    body = uniform(lo, hi, n, seed) if kind == "uniform" else logu(lo, hi, n, seed, signed=kind == "signed")
    ts = torch.tensor([t for t in table.thresholds if lo <= abs(t) <= hi or lo <= t <= hi], dtype=torch.float64)
    ends = torch.tensor([lo, hi] + ([-lo, -hi] if kind == "signed" else []), dtype=torch.float64)
    extra = [ends, ts]
    if kind == "uniform" and lo < 0 < hi:
        extra.append(torch.zeros(1, dtype=torch.float64))
    v = grid(torch.cat([*extra, body]))
    # Rounding to the grid must not leave the domain (1e-2 would become 655/2^16 < 1e-2): clamp to its grid ends.
    inner = (math.ceil(lo * F16) / F16, math.floor(hi * F16) / F16)
    if kind == "uniform":
        return v.clamp(*inner)
    return v.sign() * v.abs().clamp(*inner)


CASES = {
    # name: (method, oracle, kind, lo, hi, (rel, abs), rounds, table)
    "exp": ("exp", torch.exp, "uniform", -12.0, 10.0, (1e-3, 2**-14), 4, NL.EXP),
    "sigmoid": ("sigmoid", torch.sigmoid, "uniform", -30.0, 30.0, (0.0, 1e-3), 4, NL.SIGMOID),
    "tanh": ("tanh", torch.tanh, "uniform", -30.0, 30.0, (0.0, 1e-3), 4, NL.TANH),
    "log": ("log", torch.log, "log", 1e-3, 1e4, (0.0, 2e-3), 21, NL.log_table()),
    "reciprocal": ("reciprocal", torch.reciprocal, "signed", 1e-2, 1e4, (1e-3, 2**-14), 21, NL.reciprocal_table()),
    "sqrt": ("sqrt", torch.sqrt, "log", 1e-3, 1e4, (1e-3, 2**-14), 21, NL.sqrt_table()),
    "rsqrt": ("rsqrt", torch.rsqrt, "log", 1e-3, 1e4, (1e-3, 2**-14), 21, NL.rsqrt_table()),
}


def _apply(ctx, v, method):
    x = mpc.share(v if ctx.rank == 0 else None, owner=0)
    before = ctx.stats.rounds
    y = getattr(x, method)()
    rounds = ctx.stats.rounds - before
    return y.reveal(), y.dtype, rounds


def check(got: torch.Tensor, want: torch.Tensor, rel: float, abs_: float) -> float:
    """The worst ratio of the error to its tolerance (passes when <= 1)."""
    err = (got.double() - want).abs()
    return float((err / (rel * want.abs() + abs_)).max())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol,n", families(2, 3))
@pytest.mark.parametrize("name", list(CASES))
def test_accuracy_over_domain(sim, name, protocol, n):
    method, oracle, kind, lo, hi, (rel, abs_), rounds, table = CASES[name]
    v = inputs(kind, lo, hi, table, seed=list(CASES).index(name))
    with warnings.catch_warnings():
        warnings.simplefilter("error", mpc.FixedPointWarning)  # inside the domain the dry run reports nothing
        results = sim(functools.partial(_apply, v=v, method=method), n, protocol=protocol)
    for got, dtype, r in results:
        assert dtype == torch.float64 and got.shape == v.shape
        worst = check(got, oracle(v), rel, abs_)
        assert worst <= 1.0, f"{name}: error reaches {worst:.3f} of the tolerance"
        assert r == rounds or protocol != SECURE


OUTSIDE = [
    # (method, inputs, expected) as documented in protocols.nonlinear
    ("exp", [10.0, 12.5, 20.0, 100.0], [math.exp(10)] * 4),
    ("exp", [-11.5, -20.0, -1000.0], [math.exp(-11.5), 0.0, 0.0]),
    ("log", [0.0, -5.0, 2.0**-16, 2.0**17], [math.log(2.0**-17)] * 2 + [math.log(2.0**-16), math.log(2.0**16)]),
    ("reciprocal", [0.0, 1e-3, -1e-3, 1e5, -1e6], [128.0, 128.0, -128.0, 2.0**-15, -(2.0**-15)]),
    ("sqrt", [0.0, -4.0, 2.0**-16, 2.0**17], [0.0, 0.0, 2.0**-8, 256.0]),
    ("rsqrt", [0.0, -4.0, 2.0**17], [256.0, 256.0, 2.0**-8]),
    ("sigmoid", [-1000.0, 1000.0], [0.0, 1.0]),
    ("tanh", [-1000.0, 1000.0], [-1.0, 1.0]),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method,xs,want", OUTSIDE, ids=[f"{m}{i}" for i, (m, _, _) in enumerate(OUTSIDE)])
def test_documented_behaviour_outside_domain(sim, protocol, method, xs, want):
    v = torch.tensor(xs, dtype=torch.float64)
    if protocol == SECURE:
        got, _, _ = sim(functools.partial(_apply, v=v, method=method), 2, protocol=protocol)[0]
        w = torch.tensor(want, dtype=torch.float64)
        assert check(got, w, 1e-3, 2**-14) <= 1.0, (got, w)
        return
    oracle = getattr(torch, method)
    if method in DOMAINS:
        # The dry run computes the true value and reports the call outside the domain.
        with pytest.warns(mpc.FixedPointWarning, match=rf"plaintext dry run: {method}: ") as record:
            got, _, _ = sim(functools.partial(_apply, v=v, method=method), 2, protocol=protocol)[0]
        domain = [str(w.message) for w in record if "outside its documented domain" in str(w.message)]
        assert domain and all("test_nonlinear.py" in m for m in domain), [str(w.message) for w in record]
    else:
        # sigmoid and tanh are defined on all reals: the values are no misuse, the saturation is the true value.
        with warnings.catch_warnings():
            warnings.simplefilter("error", mpc.FixedPointWarning)
            got, _, _ = sim(functools.partial(_apply, v=v, method=method), 2, protocol=protocol)[0]
    torch.testing.assert_close(got, oracle(v), equal_nan=True, rtol=0, atol=0)


def _softmax(ctx, v, dim):
    x = mpc.share(v if ctx.rank == 0 else None, owner=0)
    before = ctx.stats.rounds
    s = mpc.softmax(x, dim)
    rounds = ctx.stats.rounds - before
    return s.reveal(), x.log_softmax(dim).reveal(), rounds


@pytest.mark.timeout(180)
@pytest.mark.parametrize("protocol,n", families(2, 3))
@pytest.mark.parametrize("shape,dim", [((64, 2), 1), ((20, 3), -1), ((30, 10), 1), ((3, 1000), 1), ((10, 7), 0)])
def test_softmax_and_log_softmax(sim, protocol, n, shape, dim):
    v = grid(uniform(-30, 30, math.prod(shape), seed=shape[0]).reshape(shape))
    rows = v.movedim(dim, -1)
    rows[0] = 7.25  # a row of exact ties
    rows[1, :2] = torch.tensor([30.0, -30.0], dtype=torch.float64)  # the ends of the logit range
    c = shape[dim]
    for s, ls, rounds in sim(functools.partial(_softmax, v=v, dim=dim), n, protocol=protocol):
        assert check(s, torch.softmax(v, dim), 0.0, 1e-3) <= 1.0
        assert check(ls, torch.log_softmax(v, dim), 0.0, 2e-3) <= 1.0
        assert rounds == 15 + 4 * math.ceil(math.log2(c)) or protocol != SECURE


def _small_softmax(ctx):
    x = mpc.share(torch.tensor([[3.0], [-2.0]]) if ctx.rank == 0 else None, owner=0)
    e = mpc.share(torch.zeros(0, 4) if ctx.rank == 0 else None, owner=0)
    return x.softmax(1).reveal(), x.log_softmax(1).reveal(), e.softmax(1).reveal().shape, e.exp().reveal().shape


@pytest.mark.timeout(60)
def test_softmax_one_class_and_empty(sim, protocol):
    for s, ls, es, ee in sim(_small_softmax, 2, protocol=protocol):
        assert torch.equal(s, torch.ones(2, 1)) and torch.equal(ls, torch.zeros(2, 1))
        assert es == ee == (0, 4)


def _pow(ctx, v, ks):
    x = mpc.share(v if ctx.rank == 0 else None, owner=0)
    return [(x**k).reveal() for k in ks] + [x.pow(2.0).reveal()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_pow_integer_exponents(sim, protocol, n):
    ks = [0, 1, 2, 3, 4, 5, 7, 8]
    v = grid(uniform(-3, 3, 2000, 1))
    for res in sim(functools.partial(_pow, v=v, ks=ks), n, protocol=protocol):
        for k, got in zip(ks, res):
            assert check(got, v**k, 1e-4, 4 * ULP) <= 1.0, k
        assert check(res[-1], v**2, 0.0, 2 * ULP) <= 1.0
    w = grid(logu(0.5, 4.0, 2000, 2, signed=True))
    for res in sim(functools.partial(_pow, v=w, ks=[-1, -2, -3]), n, protocol=protocol):
        for k, got in zip([-1, -2, -3], res):
            assert check(got, w**k, 3e-3, 2**-14) <= 1.0, k


def _misuse(ctx, what):
    x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
    if what == "pow real":
        return x**0.5
    if what == "norm p":
        return x.norm(3)
    raise AssertionError(what)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what,match", [("pow real", "integer exponent"), ("norm p", "norm")])
def test_misuse_is_refused(sim, protocol, what, match):
    with pytest.raises(ProtocolError, match=match):
        sim(functools.partial(_misuse, what=what), 2, timeout=10.0, protocol=protocol)


def _div_norm(ctx, a, b, m):
    x = mpc.share(a if ctx.rank == 0 else None, owner=0)
    y = mpc.share(b if ctx.rank == 1 else None, owner=1)
    z = mpc.share(m if ctx.rank == 0 else None, owner=0)
    return (
        (x / y).reveal(),
        (2.5 / y).reveal(),
        (x[:3].reshape(3, 1) / y[:4].reshape(1, 4)).reveal(),
        z.norm().reveal(),
        z.norm(dim=1).reveal(),
        z.norm(1, dim=0, keepdim=True).reveal(),
        z.norm(float("inf")).reveal(),
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_division_and_norms(sim, protocol, n):
    a = grid(uniform(-100, 100, 3000, 3))
    b = grid(logu(1e-2, 1e4, 3000, 4, signed=True))
    m = grid(uniform(-1, 1, 20 * 50, 5).reshape(20, 50))
    for q, r, qb, n2, n2d, n1, ninf in sim(functools.partial(_div_norm, a=a, b=b, m=m), n, protocol=protocol):
        # x / y = x * (1/y): the reciprocal's error scaled by |x|, plus one product's truncation
        err = (q - a / b).abs()
        assert bool((err <= 1e-3 * (a / b).abs() + a.abs() * 2**-14 + 2 * ULP).all())
        assert check(r, 2.5 / b, 1e-3, 2.5 * 2**-14 + 2 * ULP) <= 1.0
        assert check(qb, a[:3].reshape(3, 1) / b[:4].reshape(1, 4), 1e-3, 100 * 2**-14 + 2 * ULP) <= 1.0
        assert check(n2, m.norm(), 1e-3, 2**-14) <= 1.0
        assert check(n2d, m.norm(dim=1), 1e-3, 2**-14) <= 1.0
        assert torch.equal(n1, m.norm(1, dim=0, keepdim=True))
        assert torch.equal(ninf, m.abs().max())
