"""Thread tier: every operation of ``SecretTensor`` against plaintext float64 torch.

The same function is applied to secret tensors and to float64 torch tensors, so
every case checks the result against torch's own semantics (broadcasting,
batching, shapes).  Inputs are drawn on the fixed-point grid (multiples of
2^-16, f = 16), so encoding them is exact and the error comes from the protocol
alone.  Tolerances, in units in the last place (ulp = 2^-16):

* linear operations (+, -, neg, multiplication by public integers, sums,
  reshaping, indexing, cat/stack, ...) are exact in the ring: tolerance 0.
* one truncation (a product with a public real on the grid, or a Beaver
  product of two secrets, including whole matmul and conv2d sums, which are
  summed exactly in the ring before the single truncation): the truncation
  returns ``round(v) + b`` with ``b`` in {0, 1}, so |error| <= 1.5 ulp.
* a public real *off* the grid (0.3, 1/3, 1/count in mean) is itself encoded
  with error <= 2^-17, which the product scales by the other operand:
  |error| <= 1.5 ulp + 2^-17 * sum |other operand| (stated per case).

A tiny float64 slack (1e-9 relative) covers the float64 oracle's own rounding.
Each case also states its rounds: 0 for local operations, 1 for a truncation,
2 for a Beaver product (one opening plus one truncation).

Every test runs under every protocol family (``conftest.FAMILIES``): the
``plaintext`` family is exact, so it meets the same tolerances; rounds and
bytes are the secure family's costs and are checked for it alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import SECURE, families

import mpc
from mpc import SecretTensor
from mpc.errors import ProtocolError

ULP = 2.0**-16
TRUNC = 1.5  # ulps: the error bound of one truncation


def grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 2**16) / 2**16


def _inputs(shapes, seed: int, scale: float = 4.0, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        t = grid(torch.randn(s, generator=g, dtype=torch.float64) * scale)
        if dtype != torch.float64:
            t = torch.round(t).to(dtype) if not dtype.is_floating_point else t.to(dtype)
        out.append(t)
    return out


# ----- one body for every operation ------------------------------------------------------------


def _cat(ts, dim=0):
    return mpc.cat(ts, dim) if isinstance(ts[0], SecretTensor) else torch.cat(ts, dim)


def _stack(ts, dim=0):
    return mpc.stack(ts, dim) if isinstance(ts[0], SecretTensor) else torch.stack(ts, dim)


def _conv(x, w, b=None, **kw):
    if isinstance(x, SecretTensor) or isinstance(w, SecretTensor) or isinstance(b, SecretTensor):
        return mpc.conv2d(x, w, b, **kw)
    return F.conv2d(x, w, b, **kw)


@dataclass
class Case:
    name: str
    fn: Callable[..., Any]
    shapes: list[tuple[int, ...]]
    tol: float | Callable[[list[torch.Tensor]], float] = 0.0  # ulps
    rounds: int = 0
    dtype: torch.dtype = torch.float64
    scale: float = 4.0


def _program(ctx, case: Case, inputs: list[torch.Tensor]):
    xs = [
        mpc.share(t if ctx.rank == i % ctx.world_size else None, owner=i % ctx.world_size) for i, t in enumerate(inputs)
    ]
    before = ctx.stats.snapshot()
    out = case.fn(*xs)
    after = ctx.stats.snapshot()
    return out.reveal(), out.dtype, after["rounds"] - before["rounds"], after["bytes_sent"] - before["bytes_sent"]


def check(sim, case: Case, n: int, seed: int = 0, protocol: str = SECURE):
    inputs = _inputs(case.shapes, seed, case.scale, case.dtype)
    want = case.fn(*[t.clone() for t in inputs])
    results = sim(functools.partial(_program, case=case, inputs=inputs), n, protocol=protocol)
    tol_ulps = case.tol(inputs) if callable(case.tol) else case.tol
    for rank, (got, dtype, rounds, _) in enumerate(results):
        assert got.shape == want.shape, (rank, got.shape, want.shape)
        if case.dtype == torch.float64:
            assert dtype == want.dtype == got.dtype
        err = (got.double() - want.double()).abs()
        bound = tol_ulps * ULP + 1e-9 * want.double().abs()
        worst = float((err - bound).max()) if err.numel() else -1.0
        assert worst <= 0, f"{case.name}, party {rank}: max error {float(err.max()) / ULP:.3f} ulp > {tol_ulps} ulp"
        if protocol == SECURE:
            assert rounds == case.rounds, f"{case.name}: {rounds} rounds, expected {case.rounds}"
        assert torch.equal(got, results[0][0])  # every party opens the same value
    return results


# Public operands (on the grid unless stated).
P34 = grid(torch.linspace(-2, 3, 12, dtype=torch.float64).reshape(3, 4))
P4 = grid(torch.tensor([0.5, -1.25, 2.0, 3.75], dtype=torch.float64))
W53 = grid(torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(5, 3))
W_INT = torch.tensor([[1, -2, 0], [3, 1, -1], [0, 0, 2], [-1, 4, 1], [2, 2, 2]])
K_PUB = grid(torch.linspace(-0.5, 0.5, 4 * 3 * 3 * 3, dtype=torch.float64).reshape(4, 3, 3, 3))
IMG = grid(torch.linspace(-3, 3, 2 * 3 * 6 * 6, dtype=torch.float64).reshape(2, 3, 6, 6))


def _off_grid(reduce=lambda t: t):
    """Tolerance in ulps for a product with an off-grid public real c (encoded within 2^-17):
    1.5 ulp + 2^-17 |s| = (1.5 + 0.5 |s|) ulp, where s is what c multiplies (the input, or its sum)."""

    def tol(inputs):
        return TRUNC + 0.5 * float(reduce(inputs[0]).abs().max())

    return tol


LOCAL_CASES = [
    Case("add", lambda x, y: x + y, [(3, 4), (3, 4)]),
    Case("add broadcast", lambda x, y: x + y, [(3, 1), (1, 4)]),
    Case("sub broadcast", lambda x, y: x - y, [(2, 3, 4), (4,)]),
    Case("neg", lambda x: -x, [(5,)]),
    Case("add public scalar", lambda x: x + 2.5, [(3, 4)]),
    Case("radd public scalar", lambda x: 2.5 + x, [(3, 4)]),
    Case("sub public int", lambda x: x - 7, [(3, 4)]),
    Case("rsub public scalar", lambda x: 1.25 - x, [(3, 4)]),
    Case("add public tensor broadcast", lambda x: x + P4, [(3, 4)]),
    Case("sub public tensor broadcast", lambda x: x - P34, [(2, 3, 4)]),
    Case("mul public int", lambda x: x * 3, [(3, 4)]),
    Case("rmul public int", lambda x: -2 * x, [(3, 4)]),
    Case("mul public int tensor", lambda x: x * torch.tensor([1, -2, 3, 0]), [(3, 4)]),
    Case("matmul public int", lambda x: x @ W_INT.double(), [(4, 5)], tol=TRUNC, rounds=1),
    Case("sum", lambda x: x.sum(), [(3, 4, 5)]),
    Case("sum dim", lambda x: x.sum(1), [(3, 4, 5)]),
    Case("sum dims keepdim", lambda x: x.sum((0, 2), keepdim=True), [(3, 4, 5)]),
    Case("sum negative dim", lambda x: x.sum(-1), [(3, 4, 5)]),
    Case("reshape", lambda x: x.reshape(4, -1), [(2, 3, 4)]),
    Case("view", lambda x: x.view(6, 4), [(2, 3, 4)]),
    Case("transpose", lambda x: x.transpose(0, 2), [(2, 3, 4)]),
    Case("t", lambda x: x.t(), [(3, 4)]),
    Case("T", lambda x: x.T, [(3, 4)]),
    Case("mT", lambda x: x.mT, [(2, 3, 4)]),
    Case("permute", lambda x: x.permute(2, 0, 1), [(2, 3, 4)]),
    Case("flatten", lambda x: x.flatten(), [(2, 3, 4)]),
    Case("flatten dims", lambda x: x.flatten(1, 2), [(2, 3, 4, 5)]),
    Case("cat", lambda x, y: _cat([x, y], 0), [(2, 3), (4, 3)]),
    Case("cat dim 1", lambda x, y, z: _cat([x, y, z], 1), [(2, 3), (2, 1), (2, 2)]),
    Case("stack", lambda x, y: _stack([x, y], 1), [(2, 3), (2, 3)]),
    Case("index int", lambda x: x[1], [(3, 4)]),
    Case("index slice", lambda x: x[:, 1:3], [(3, 4)]),
    Case("index step", lambda x: x[..., ::2], [(2, 3, 5)]),
    Case("index negative", lambda x: x[-1, -2:], [(3, 4)]),
    Case("index list", lambda x: x[[0, 2, 2]], [(3, 4)]),
    Case("index mask", lambda x: x[torch.tensor([True, False, True])], [(3, 4)]),
    Case("index none", lambda x: x[None, :, None], [(3, 4)]),
    Case("squeeze", lambda x: x.squeeze(), [(1, 3, 1, 4)]),
    Case("squeeze dim", lambda x: x.squeeze(2), [(1, 3, 1, 4)]),
    Case("unsqueeze", lambda x: x.unsqueeze(1), [(3, 4)]),
    Case("expand", lambda x: x.expand(3, 4), [(3, 1)]),
    Case("expand add", lambda x, y: x.expand(2, 3, 4) + y, [(3, 1), (2, 3, 4)]),
    Case("expand_as", lambda x, y: x.expand_as(y) - y, [(1, 4), (3, 4)]),
    Case("repeat", lambda x: x.repeat(2, 3), [(2, 2)]),
    Case("contiguous clone", lambda x: x.t().contiguous().clone(), [(3, 4)]),
    Case("linear combination", lambda x, y, z: 3 * x - y + z * 2 - 1, [(4,), (4,), (4,)]),
]

TRUNC_CASES = [
    Case("mul public scalar on grid", lambda x: x * 0.375, [(3, 4)], tol=TRUNC, rounds=1),
    Case("rmul public scalar on grid", lambda x: -1.5 * x, [(3, 4)], tol=TRUNC, rounds=1),
    Case("mul public scalar off grid", lambda x: x * 0.3, [(3, 4)], tol=_off_grid(), rounds=1),
    Case("div public int", lambda x: x / 4, [(3, 4)], tol=TRUNC, rounds=1),
    Case("div public off grid", lambda x: x / 3, [(3, 4)], tol=_off_grid(), rounds=1),
    Case("div public tensor", lambda x: x / torch.tensor([2.0, 4.0, 0.5, -8.0]), [(3, 4)], tol=TRUNC, rounds=1),
    Case("mul public tensor", lambda x: x * P34, [(3, 4)], tol=TRUNC, rounds=1),
    Case("mul public tensor broadcast", lambda x: x * P4, [(2, 3, 4)], tol=TRUNC, rounds=1),
    Case("rmul public tensor", lambda x: P4 * x, [(3, 1)], tol=TRUNC, rounds=1),
    Case("matmul public", lambda x: x @ W53, [(4, 5)], tol=TRUNC, rounds=1),
    Case("matmul public batched", lambda x: x @ W53, [(2, 4, 5)], tol=TRUNC, rounds=1),
    Case("rmatmul public", lambda x: W53.t() @ x, [(5, 2)], tol=TRUNC, rounds=1),
    Case("rmatmul public int", lambda x: W_INT.t().double() @ x, [(5, 2)], tol=TRUNC, rounds=1),
    Case("mean", lambda x: x.mean(), [(3, 4)], tol=_off_grid(lambda t: t.sum()), rounds=1),
    Case("mean dim", lambda x: x.mean(0), [(5, 4)], tol=_off_grid(lambda t: t.sum(0)), rounds=1),
    Case(
        "mean dims",
        lambda x: x.mean((0, 2), keepdim=True),
        [(3, 4, 5)],
        tol=_off_grid(lambda t: t.sum((0, 2))),
        rounds=1,
    ),
    Case("conv2d public kernel", lambda x: _conv(x, K_PUB, padding=1), [(2, 3, 6, 6)], tol=TRUNC, rounds=1),
    Case(
        "conv2d public kernel strided",
        lambda x: _conv(x, K_PUB, stride=2, dilation=(1, 2)),
        [(1, 3, 7, 8)],
        tol=TRUNC,
        rounds=1,
    ),
    Case("conv2d public input", lambda w: _conv(IMG, w, padding=(1, 0)), [(4, 3, 3, 3)], tol=TRUNC, rounds=1),
    Case("conv2d public kernel and bias", lambda x: _conv(x, K_PUB, P4), [(1, 3, 5, 5)], tol=TRUNC, rounds=1),
]

BEAVER_CASES = [
    Case("mul", lambda x, y: x * y, [(3, 4), (3, 4)], tol=TRUNC, rounds=2),
    Case("mul broadcast", lambda x, y: x * y, [(3, 1), (1, 4)], tol=TRUNC, rounds=2),
    Case("mul broadcast batch", lambda x, y: x * y, [(2, 3, 4), (4,)], tol=TRUNC, rounds=2),
    Case("mul scalar tensors", lambda x, y: x * y, [(), ()], tol=TRUNC, rounds=2),
    Case("square", lambda x: x.square(), [(3, 4)], tol=TRUNC, rounds=2),
    Case("matmul", lambda x, y: x @ y, [(4, 5), (5, 3)], tol=TRUNC, rounds=2),
    Case("matmul method", lambda x, y: x.matmul(y), [(4, 5), (5, 3)], tol=TRUNC, rounds=2),
    Case("matmul vector left", lambda x, y: x @ y, [(5,), (5, 3)], tol=TRUNC, rounds=2),
    Case("matmul vector right", lambda x, y: x @ y, [(4, 5), (5,)], tol=TRUNC, rounds=2),
    Case("dot", lambda x, y: x @ y, [(6,), (6,)], tol=TRUNC, rounds=2),
    Case("matmul batched", lambda x, y: x @ y, [(2, 4, 5), (2, 5, 3)], tol=TRUNC, rounds=2),
    Case("matmul batched broadcast", lambda x, y: x @ y, [(2, 1, 4, 5), (3, 5, 2)], tol=TRUNC, rounds=2),
    Case("matmul batched by matrix", lambda x, y: x @ y, [(2, 3, 4, 5), (5, 6)], tol=TRUNC, rounds=2),
    Case("matmul transposed", lambda x, y: x.t() @ y, [(5, 4), (5, 3)], tol=TRUNC, rounds=2),
    Case("conv2d", lambda x, w: _conv(x, w), [(2, 3, 6, 6), (4, 3, 3, 3)], tol=TRUNC, rounds=2),
    Case(
        "conv2d padded strided",
        lambda x, w: _conv(x, w, stride=2, padding=1),
        [(1, 2, 7, 7), (3, 2, 3, 3)],
        tol=TRUNC,
        rounds=2,
    ),
    Case(
        "conv2d dilated",
        lambda x, w: _conv(x, w, dilation=2, padding=(2, 1)),
        [(1, 2, 8, 8), (2, 2, 3, 3)],
        tol=TRUNC,
        rounds=2,
    ),
    Case("conv2d groups", lambda x, w: _conv(x, w, groups=2), [(1, 4, 5, 5), (4, 2, 3, 3)], tol=TRUNC, rounds=2),
    Case(
        "conv2d secret bias",
        lambda x, w, b: _conv(x, w, b, padding=1),
        [(1, 3, 4, 4), (2, 3, 3, 3), (2,)],
        tol=TRUNC,
        rounds=2,
    ),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
@pytest.mark.parametrize("case", LOCAL_CASES, ids=lambda c: c.name)
def test_local_operations(sim, case, protocol, n):
    check(sim, case, n, protocol=protocol)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
@pytest.mark.parametrize("case", TRUNC_CASES, ids=lambda c: c.name)
def test_operations_with_public_reals(sim, case, protocol, n):
    check(sim, case, n, protocol=protocol)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3, 5))
@pytest.mark.parametrize("case", BEAVER_CASES, ids=lambda c: c.name)
def test_secret_by_secret_operations(sim, case, protocol, n):
    check(sim, case, n, seed=n, protocol=protocol)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_products_near_the_range_limit(sim, protocol, n):
    # |x y| up to 32760^2 = 0.9995 * 2^30 (the documented range): still within 1.5 ulp.
    big = Case("mul large", lambda x, y: x * y, [(64,), (64,)], tol=TRUNC, rounds=2, scale=1.0)
    x = grid(torch.linspace(-32760, 32760, 64, dtype=torch.float64))
    inputs = [x, -x.roll(1)]
    results = sim(functools.partial(_program, case=big, inputs=inputs), n, protocol=protocol)
    want = inputs[0] * inputs[1]
    assert float(want.abs().max()) > 0.99 * 2**30
    assert float((results[0][0] - want).abs().max()) <= TRUNC * ULP
    mm = Case("matmul large", lambda x, y: x @ y, [(1, 100), (100, 1)], tol=TRUNC, rounds=2)
    a = grid(torch.full((1, 100), 3000.0, dtype=torch.float64))
    b = grid(torch.full((100, 1), -3000.25, dtype=torch.float64))
    results = sim(functools.partial(_program, case=mm, inputs=[a, b]), n, protocol=protocol)
    assert float((results[0][0] - a @ b).abs().max()) <= TRUNC * ULP


@pytest.mark.timeout(60)
def test_integer_and_boolean_tensors(sim, protocol):
    def prog(ctx):
        i = mpc.share(torch.tensor([3, -4, 5]) if ctx.rank == 0 else None, owner=0)
        j = mpc.share(torch.tensor([-2, 6, 7]) if ctx.rank == 1 else None, owner=1)
        b = mpc.share(torch.tensor([True, False, True]) if ctx.rank == 0 else None, owner=0)
        m = mpc.share(torch.tensor([[1, 2], [3, 4]], dtype=torch.int32) if ctx.rank == 1 else None, owner=1)
        f = mpc.share(torch.tensor([0.5, 1.5, -2.0], dtype=torch.float32) if ctx.rank == 0 else None, owner=0)
        outs = [i * j, i + j, i * 3, i @ j, b + b, b.sum(), m @ m, i * f, f * f, i.square()]
        return [(o.reveal(), o.dtype) for o in outs]

    i, j = torch.tensor([3, -4, 5]), torch.tensor([-2, 6, 7])
    m = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    f = torch.tensor([0.5, 1.5, -2.0])
    want = [
        (i * j, torch.int64),
        (i + j, torch.int64),
        (i * 3, torch.int64),
        (i @ j, torch.int64),
        (torch.tensor([2, 0, 2]), torch.int64),  # bool + bool counts, as integers
        (torch.tensor(2), torch.int64),
        (m @ m, torch.int32),
        (i * f, torch.float32),
        (f * f, torch.float32),
        (i * i, torch.int64),
    ]
    for rank, got in enumerate(sim(prog, 2, protocol=protocol)):
        for k, ((g, gd), (w, wd)) in enumerate(zip(got, want)):
            assert gd == wd and g.dtype == wd, (rank, k, gd, wd)
            # integer results are exact: the truncation's +1 ulp vanishes when decoding rounds
            assert torch.equal(g, w) if not wd.is_floating_point else torch.allclose(g, w, atol=TRUNC * ULP), (k, g, w)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_a_training_step_within_a_derived_tolerance(sim, protocol, n):
    """A chain (linear layer, product, mean, update) against float64 with the error propagated by hand."""

    def step(x, w, y):
        err = x @ w - y  # one truncation: 1.5 ulp
        grad = x.t() @ err  # |x|_1 * 1.5 ulp + 1.5 ulp
        return w - grad * 0.125  # 0.125 * (previous) + 1.5 ulp; rounds 2 + 2 + 1

    x, w, y = _inputs([(8, 3), (3, 1), (8, 1)], seed=11, scale=1.0)
    col = float(x.abs().sum(0).max())
    tol = 0.125 * (col * TRUNC + TRUNC) + TRUNC
    case = Case("training step", step, [(8, 3), (3, 1), (8, 1)], tol=tol, rounds=5, scale=1.0)
    check(sim, case, n, seed=11, protocol=protocol)


@pytest.mark.timeout(60)
def test_traffic_of_one_beaver_product_matches_its_docstring(sim):
    """Elementwise product of |x| = |y| = |z| = 12 elements: 8 (n-1) (|x| + |y|) + 8 (n-1) |z| bytes per party."""
    for n in (2, 3):
        results = check(sim, BEAVER_CASES[0], n)
        for _, _, rounds, sent in results:
            assert rounds == 2 and sent == 8 * (n - 1) * (12 + 12) + 8 * (n - 1) * 12
        square = check(sim, next(c for c in BEAVER_CASES if c.name == "square"), n)
        for _, _, _, sent in square:
            assert sent == 8 * (n - 1) * 12 * 2


# ----- misuse ----------------------------------------------------------------------------------------


def _misuse(ctx, what: str):
    x = mpc.share(torch.ones(2, 3) if ctx.rank == 0 else None, owner=0)
    y = mpc.share(torch.ones(2, 3) if ctx.rank == 1 else None, owner=1)
    if what == "matmul shapes":
        return x @ y
    if what == "mul shapes":
        return x * mpc.share(torch.ones(4) if ctx.rank == 0 else None, owner=0)
    if what == "public matmul shapes":
        return x @ torch.ones(2, 2)
    if what == "truth value":
        return bool(x)
    if what == "secret index":
        return x[y]
    if what == "conv2d public only":
        return mpc.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2))
    if what == "conv2d stride":
        return mpc.conv2d(x.reshape(1, 1, 2, 3), torch.ones(1, 1, 1, 1), stride="2")
    if what == "conv2d shapes":
        return mpc.conv2d(x.reshape(1, 1, 2, 3), y.reshape(1, 1, 3, 2))
    if what == "cat of public":
        return mpc.cat([x, torch.ones(2, 3)])
    if what == "cat empty":
        return mpc.cat([])
    if what == "public real out of range":
        return x * 2.0**31
    if what == "public NaN":
        return x + float("nan")
    raise AssertionError(what)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "what,error,match",
    [
        ("matmul shapes", ProtocolError, r"x @ y: shapes \(2, 3\) and \(2, 3\) do not match"),
        ("mul shapes", ProtocolError, r"x \* y: shapes \(2, 3\) and \(4,\) do not broadcast"),
        ("public matmul shapes", ProtocolError, r"x @ y: shapes \(2, 3\) and \(2, 2\) do not match"),
        ("truth value", ProtocolError, "truth value"),
        ("secret index", ProtocolError, "indexing by a secret"),
        ("conv2d public only", ProtocolError, "at least one"),
        ("conv2d stride", ProtocolError, "stride"),
        ("conv2d shapes", ProtocolError, "conv2d"),
        ("cat of public", ProtocolError, "secret tensors"),
        ("cat empty", ProtocolError, "at least one"),
        ("public real out of range", mpc.EncodingError, "public operand"),
        ("public NaN", mpc.EncodingError, "NaN"),
    ],
)
def test_misuse_is_refused_clearly(sim, protocol, what, error, match):
    with pytest.raises(error, match=match):
        sim(functools.partial(_misuse, what=what), 2, timeout=10.0, protocol=protocol)
