"""Thread tier: autograd on secret tensors against torch's autograd on the same plaintext values.

For every operation with a backward rule (``mpc.grads``), each case computes
``loss = (f(x, ...) * v).sum()`` with an upstream weight ``v`` (on the
fixed-point grid, not constant, so the rule sees a real incoming gradient),
calls ``loss.backward()`` and reveals every ``x.grad``; torch does the same in
float64.  Each case runs twice: with a *public* ``v`` (the incoming gradient
stays a public tensor until it meets a secret: products with public tensors)
and with a *secret* ``v`` (every rule runs its secret x secret form).

Tolerances (absolute, plus a relative part where the rule's error is
relative), with ulp = 2^-16:

* linear and shape rules (add, sum, reshape, indexing, cat, ...): exact in the
  ring (0; ``mean``: 1 ulp for the exact division by the count);
* bilinear rules (mul, matmul, conv2d, linear, square, pow; pooling): one
  truncation of 1.5 ulp per product, summed over broadcast dimensions:
  ``TRUNC * (terms)`` ulps, stated per case;
* nonlinear rules: the documented max error of the function the rule uses
  (``protocols.nonlinear``; README's accuracy table) times the largest
  incoming gradient ``|v| <= 1.5``, times the factor that the derivative puts
  on it (``2 |t|`` for tanh's ``1 - t^2``, ``|1 - 2s|`` for sigmoid, 3 for a
  cube of a relative error...), plus a few ulps for the products.  Stated per
  case.

The ``plaintext`` family is exact and meets the same tolerances.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from conftest import PLAINTEXT, SECURE, families

import mpc
from mpc import SecretTensor
from mpc.autograd import NONDIFF
from mpc.errors import MPCError, ProtocolError
from mpc.ops import call

ULP = 2.0**-16
TRUNC = 1.5 * ULP
VMAX = 1.5  # |v|, the largest incoming gradient


def grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 2**16) / 2**16


def _secret(*ts) -> bool:
    return any(isinstance(t, SecretTensor) for t in ts)


# torch and mpc spell a few functions differently: one body for both.
def _cat(ts, dim=0):
    return mpc.cat(ts, dim) if _secret(*ts) else torch.cat(ts, dim)


def _stack(ts, dim=0):
    return mpc.stack(ts, dim) if _secret(*ts) else torch.stack(ts, dim)


def _where(c, a, b):
    return mpc.where(c, a, b) if _secret(c, a, b) else torch.where(c, a, b)


def _maximum(a, b):
    return mpc.maximum(a, b) if _secret(a, b) else torch.maximum(a, b)


def _minimum(a, b):
    return mpc.minimum(a, b) if _secret(a, b) else torch.minimum(a, b)


def _conv(x, w, b=None, **kw):
    return mpc.conv2d(x, w, b, **kw) if _secret(x, w, b) else F.conv2d(x, w, b, **kw)


def _linear(x, w, b=None):
    return mpc.linear(x, w, b) if _secret(x, w, b) else F.linear(x, w, b)


def _max_pool(x, *a, **kw):
    return mpc.max_pool2d(x, *a, **kw) if _secret(x) else F.max_pool2d(x, *a, **kw)


def _avg_pool(x, *a, **kw):
    return mpc.avg_pool2d(x, *a, **kw) if _secret(x) else F.avg_pool2d(x, *a, **kw)


@dataclass
class Case:
    name: str
    fn: Callable
    shapes: list[tuple[int, ...]]
    tol: float = 0.0  # absolute
    rel: float = 0.0  # relative to the gradient
    lo: float = -2.0  # inputs uniform in [lo, hi] (on the grid)
    hi: float = 2.0
    grad: tuple[bool, ...] | None = None  # which inputs require grad (default: all)
    away: float = 0.0  # keep inputs at least this far from 0 (kinks of relu, abs, comparisons)
    extra: dict = field(default_factory=dict)


P34 = grid(torch.linspace(-1.5, 2.0, 12, dtype=torch.float64).reshape(3, 4))
W_PUB = grid(torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3))
K_PUB = grid(torch.linspace(-0.5, 0.5, 2 * 2 * 3 * 3, dtype=torch.float64).reshape(2, 2, 3, 3))
IMG = grid(torch.linspace(-1, 1, 2 * 2 * 5 * 5, dtype=torch.float64).reshape(2, 2, 5, 5))

LINEAR = [
    Case("add broadcast", lambda x, y: x + y, [(3, 1), (1, 4)]),
    Case("add alpha", lambda x, y: x.add(y, alpha=3), [(3, 4), (4,)]),
    Case("sub alpha", lambda x, y: x.sub(y, alpha=2), [(3, 4), (3, 4)]),
    Case("rsub public", lambda x: 1.25 - x, [(3, 4)]),
    Case("neg", lambda x: -x, [(5,)]),
    Case("add public tensor", lambda x: x + P34, [(3, 4)]),
    Case("mul public int", lambda x: x * 3, [(3, 4)]),
    Case("sum", lambda x: x.sum(), [(3, 4)]),
    Case("sum dim", lambda x: x.sum(1), [(3, 4, 2)]),
    Case("sum dims keepdim", lambda x: x.sum((0, 2), keepdim=True), [(3, 4, 2)]),
    Case("mean", lambda x: x.mean(), [(3, 4)], tol=1 * ULP),
    Case("mean dim", lambda x: x.mean(0), [(3, 4)], tol=1 * ULP),
    Case("reshape view flatten", lambda x: x.reshape(4, 6).view(2, 12).flatten(), [(2, 3, 4)]),
    Case("squeeze unsqueeze", lambda x: x.squeeze(1).unsqueeze(0), [(3, 1, 4)]),
    Case("transpose t", lambda x: x.transpose(0, 2).flatten(1).t(), [(2, 3, 4)]),
    Case("permute", lambda x: x.permute(2, 0, 1), [(2, 3, 4)]),
    Case("T mT", lambda x: x.T.mT.T, [(3, 4)]),
    Case("movedim", lambda x: x.movedim(0, 2), [(2, 3, 4)]),
    Case("expand", lambda x: x.expand(2, 3, 4), [(3, 1)]),
    Case("expand_as", lambda x, y: x.expand_as(y) * 2 + y, [(1, 4), (3, 4)]),
    Case("repeat", lambda x: x.repeat(2, 1, 3), [(2, 2)]),
    Case("clone contiguous", lambda x: x.t().contiguous().clone(), [(3, 4)]),
    Case("index slice", lambda x: x[1:, ::2], [(3, 4)]),
    Case("index int negative", lambda x: x[-1, 1], [(3, 4)]),
    Case("index list repeats", lambda x: x[[0, 2, 2]], [(3, 4)]),
    Case("index mask none", lambda x: x[torch.tensor([True, False, True])][None], [(3, 4)]),
    Case("cat", lambda x, y: _cat([x, y, x], 1), [(2, 3), (2, 1)]),
    Case("stack", lambda x, y: _stack([x, y], 1), [(2, 3), (2, 3)]),
    Case("torch functions", lambda x, y: torch.sum(torch.add(torch.reshape(x, (4, 3)), y), 0), [(3, 4), (3,)]),
]

BILINEAR = [
    Case("mul", lambda x, y: x * y, [(3, 4), (3, 4)], tol=2 * TRUNC),
    Case("mul broadcast", lambda x, y: x * y, [(3, 1), (1, 4)], tol=4 * TRUNC),
    Case("mul public tensor", lambda x: x * P34, [(3, 4)], tol=2 * TRUNC),
    Case("div public", lambda x: x / 4, [(3, 4)], tol=2 * TRUNC),
    Case("div public tensor", lambda x: x / torch.tensor([2.0, 4.0, 0.5, -8.0]), [(3, 4)], tol=2 * TRUNC),
    Case("square", lambda x: x.square(), [(3, 4)], tol=2 * TRUNC),
    Case("pow 3", lambda x: x.pow(3), [(3, 4)], tol=12 * TRUNC),
    Case("matmul", lambda x, y: x @ y, [(3, 4), (4, 2)], tol=2 * TRUNC),
    Case("matmul batched broadcast", lambda x, y: x @ y, [(2, 1, 3, 4), (3, 4, 2)], tol=6 * TRUNC),
    Case("matmul batched by matrix", lambda x, y: x @ y, [(2, 3, 4), (4, 2)], tol=2 * TRUNC),
    Case("matmul vectors", lambda x, y, z: (x @ y) @ z, [(4,), (4, 3), (3,)], tol=4 * TRUNC),
    Case("matmul public right", lambda x: x @ W_PUB, [(2, 4)], tol=2 * TRUNC),
    Case("rmatmul public left", lambda x: W_PUB.t() @ x, [(4, 2)], tol=2 * TRUNC),
    Case("linear", lambda x, w, b: _linear(x, w, b), [(2, 5, 4), (3, 4), (3,)], tol=4 * TRUNC),
    Case("conv2d", lambda x, w: _conv(x, w), [(2, 2, 5, 5), (3, 2, 3, 3)], tol=2 * TRUNC),
    Case(
        "conv2d stride padding bias",
        lambda x, w, b: _conv(x, w, b, stride=2, padding=1),
        [(1, 2, 6, 7), (3, 2, 3, 3), (3,)],
        tol=2 * TRUNC,
    ),
    Case(
        "conv2d dilation groups",
        lambda x, w: _conv(x, w, dilation=(2, 1), padding=(2, 0), groups=2),
        [(1, 4, 6, 5), (4, 2, 3, 2)],
        tol=2 * TRUNC,
    ),
    Case(
        "conv2d large padding",
        lambda x, w: _conv(x, w, padding=2, stride=2),
        [(1, 1, 4, 4), (1, 1, 2, 2)],
        tol=2 * TRUNC,
    ),
    Case("conv2d public kernel", lambda x: _conv(x, K_PUB, padding=1), [(1, 2, 5, 5)], tol=2 * TRUNC),
    Case("conv2d public input", lambda w: _conv(IMG, w, stride=2), [(3, 2, 3, 3)], tol=2 * TRUNC),
    Case("avg_pool2d", lambda x: _avg_pool(x, 2), [(1, 2, 4, 6)], tol=2 * TRUNC),
    Case("avg_pool2d padded 3-d", lambda x: _avg_pool(x, 3, 1, 1), [(2, 4, 4)], tol=10 * TRUNC),
]

SELECTION = [
    Case("relu", lambda x: x.relu(), [(3, 4)], tol=2 * TRUNC, away=0.05),
    Case("F.relu", lambda x: F.relu(x), [(3, 4)], tol=2 * TRUNC, away=0.05),
    Case("abs", lambda x: x.abs(), [(3, 4)], tol=2 * TRUNC, away=0.05),
    Case("clamp public", lambda x: x.clamp(-0.5, 1.0), [(4, 4)], tol=2 * TRUNC),
    Case("clamp min only", lambda x: x.clamp(min=0.25), [(4, 4)], tol=2 * TRUNC),
    Case("clamp secret", lambda x, lo, hi: x.clamp(lo, hi), [(3, 4), (4,), (3, 1)], tol=4 * TRUNC, extra={"bounds": 1}),
    Case("maximum", lambda x, y: _maximum(x, y), [(3, 4), (3, 4)], tol=2 * TRUNC),
    Case("minimum broadcast", lambda x, y: _minimum(x, y), [(3, 4), (4,)], tol=6 * TRUNC),
    Case(
        "where",
        lambda x, y, z: _where(z > 0, x, y),
        [(3, 4), (3, 4), (3, 4)],
        tol=2 * TRUNC,
        grad=(True, True, False),
        away=0.05,
    ),
    Case("where public condition", lambda x, y: _where(P34 > 0, x, y), [(3, 4), (4,)], tol=6 * TRUNC),
    Case("max", lambda x: x.max(), [(3, 4)], tol=2 * TRUNC),
    Case("max dim", lambda x: x.max(1).values, [(3, 5)], tol=2 * TRUNC),
    Case("min dim keepdim", lambda x: x.min(0, keepdim=True)[0], [(3, 5)], tol=2 * TRUNC),
    Case("max_pool2d", lambda x: _max_pool(x, 2), [(1, 2, 4, 6)], tol=2 * TRUNC),
    Case("max_pool2d overlapping padded", lambda x: _max_pool(x, 3, 1, 1), [(1, 1, 4, 5)], tol=10 * TRUNC),
    Case("max_pool2d 3-d", lambda x: _max_pool(x, 2, stride=1), [(2, 3, 3)], tol=10 * TRUNC),
]

# Nonlinear rules: tolerance = the function's documented error (abs, or rel + abs 2^-14) times |v| and the
# derivative's factor on it, plus a few truncations.
NONLINEAR = [
    # e^x: rel 1e-3 + abs 2^-14 on the reused output, times g.
    Case("exp", lambda x: x.exp(), [(3, 4)], tol=VMAX * 2**-14 + 4 * TRUNC, rel=1e-3),
    # g / x: the reciprocal's rel 1e-3 + abs 2^-14.
    Case("log", lambda x: x.log(), [(3, 4)], lo=0.25, hi=4.0, tol=VMAX * 2**-14 + 4 * TRUNC, rel=1e-3),
    # -g r^2: twice the reciprocal's relative error.
    Case("reciprocal", lambda x: x.reciprocal(), [(3, 4)], lo=0.5, hi=4.0, tol=VMAX * 2**-13 + 8 * TRUNC, rel=2e-3),
    # x / y: g / y (rel 1e-3) and -g x / y^2 (out and 1/y: 2e-3).
    Case("div secret", lambda x, y: x / y, [(3, 4), (3, 4)], lo=0.5, hi=4.0, tol=VMAX * 2**-13 + 8 * TRUNC, rel=2e-3),
    Case("rdiv public", lambda x: 2.0 / x, [(3, 4)], lo=0.5, hi=4.0, tol=VMAX * 2**-13 + 8 * TRUNC, rel=2e-3),
    # g / (2 sqrt x): rsqrt's rel 1e-3.
    Case("sqrt", lambda x: x.sqrt(), [(3, 4)], lo=0.25, hi=4.0, tol=VMAX * 2**-14 + 4 * TRUNC, rel=1e-3),
    # -g out^3 / 2: three times rsqrt's relative error.
    Case("rsqrt", lambda x: x.rsqrt(), [(3, 4)], lo=0.25, hi=4.0, tol=VMAX * 2**-13 + 8 * TRUNC, rel=3e-3),
    # g s (1 - s): |1 - 2s| ds <= 1e-3 (s abs 1e-3).
    Case("sigmoid", lambda x: x.sigmoid(), [(3, 4)], lo=-4, hi=4, tol=VMAX * 1e-3 + 4 * TRUNC),
    # g (1 - t^2): 2 |t| dt <= 2e-3.
    Case("tanh", lambda x: x.tanh(), [(3, 4)], lo=-3, hi=3, tol=VMAX * 2e-3 + 4 * TRUNC),
    # s (g - sum g s) over n = 5: |ds| (|g| + |sum g s|) + s |sum g ds| <= 1e-3 (2 + 5) |g|.
    Case("softmax", lambda x: x.softmax(1), [(3, 5)], lo=-3, hi=3, tol=VMAX * 7e-3 + 4 * TRUNC),
    # g - p sum(g): p = exp(out) within 1e-3 rel (+ log-softmax's own 2e-3 on out), times n |g|.
    Case("log_softmax", lambda x: F.log_softmax(x, dim=1), [(3, 5)], lo=-3, hi=3, tol=VMAX * 5 * 4e-3),
    # g x / |x|: the reciprocal of the norm, rel 1e-3.
    Case("norm", lambda x: x.norm(), [(3, 4)], lo=0.5, hi=2.0, tol=VMAX * 2**-14 + 8 * TRUNC, rel=1e-3),
    Case("norm 1 dim", lambda x: x.norm(1, dim=1), [(3, 4)], tol=4 * TRUNC, away=0.05),
    Case("norm inf dim", lambda x: x.norm(float("inf"), dim=1), [(3, 4)], tol=4 * TRUNC, away=0.05),
    # -g x^-2: the reciprocal's rel 1e-3, squared.
    Case("pow -1", lambda x: x.pow(-1), [(3, 4)], lo=0.5, hi=4.0, tol=VMAX * 2**-13 + 8 * TRUNC, rel=2e-3),
    # A diamond (x reaches the output along three paths through non-leaf nodes): the rules' errors add up,
    # sigmoid's 1e-3 and exp's 1e-3 relative each times e^x <= e, for x in [-1, 1].
    Case("diamond", lambda x: x.sigmoid() * x.exp() + x, [(3, 4)], lo=-1, hi=1, tol=VMAX * 1e-2),
]

ALL = LINEAR + BILINEAR + SELECTION + NONLINEAR


def _inputs(case: Case, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in case.shapes:
        t = case.lo + (case.hi - case.lo) * torch.rand(shape, generator=g, dtype=torch.float64)
        if case.away:
            t = torch.where(t.abs() < case.away, t.sign() * case.away + (t == 0) * case.away, t)
        out.append(grid(t))
    if case.extra.get("bounds"):  # clamp's secret bounds: lo below hi
        out[1], out[2] = grid(out[1] * 0.5 - 0.75), grid(out[2] * 0.5 + 0.75)
    return out


def _upstream(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return grid(VMAX * (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1))


def _requires(case: Case) -> tuple[bool, ...]:
    return case.grad or (True,) * len(case.shapes)


def _torch_grads(case: Case, inputs, v) -> list[torch.Tensor | None]:
    xs = [t.clone().requires_grad_(r) for t, r in zip(inputs, _requires(case))]
    (case.fn(*xs) * v).sum().backward()
    return [x.grad for x in xs]


def _program(ctx, cases, inputs, upstreams, secret_upstream: bool):
    n = ctx.world_size
    results = []
    for i, (case, ins, v) in enumerate(zip(cases, inputs, upstreams)):
        xs = [
            mpc.share(t if ctx.rank == (i + j) % n else None, owner=(i + j) % n, requires_grad=r)
            for j, (t, r) in enumerate(zip(ins, _requires(case)))
        ]
        out = case.fn(*xs)
        if secret_upstream:
            v = mpc.share(v if ctx.rank == (i + 1) % n else None, owner=(i + 1) % n)
        (out * v).sum().backward()
        results.append([x.grad.reveal() if x.grad is not None else None for x in xs])
    return results


def _check(sim, cases: list[Case], protocol: str, n: int, secret_upstream: bool) -> None:
    inputs = [_inputs(c, k) for k, c in enumerate(cases)]
    shapes = [tuple(c.fn(*ins).shape) for c, ins in zip(cases, inputs)]
    ups = [_upstream(s, k) for k, s in enumerate(shapes)]
    results = sim(
        functools.partial(_program, cases=cases, inputs=inputs, upstreams=ups, secret_upstream=secret_upstream),
        n,
        protocol=protocol,
    )
    failures = []
    for k, case in enumerate(cases):
        want = _torch_grads(case, inputs[k], ups[k])
        for rank, res in enumerate(results):
            for j, (got, w) in enumerate(zip(res[k], want)):
                if w is None:
                    assert got is None, (case.name, j)
                    continue
                assert got is not None and got.shape == w.shape, (case.name, j, got, w.shape)
                err = (got.double() - w).abs()
                bound = case.tol + case.rel * w.abs() + 1e-9 * (1 + w.abs())
                if bool((err > bound).any()):
                    failures.append(
                        f"{case.name} input {j} party {rank}: max error {float(err.max()):.3g} > tol "
                        f"{case.tol:.3g} + {case.rel} |grad|"
                    )
    assert not failures, "\n".join(failures)


GROUPS = {"linear": LINEAR, "bilinear": BILINEAR, "selection": SELECTION, "nonlinear": NONLINEAR}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("upstream", ["public", "secret"])
@pytest.mark.parametrize("protocol,n", families(2))
def test_gradients_match_torch(sim, protocol, n, group, upstream):
    _check(sim, GROUPS[group], protocol, n, upstream == "secret")


@pytest.mark.timeout(120)
def test_gradients_match_torch_with_three_parties(sim):
    cases = [c for c in ALL if c.name in ("mul broadcast", "matmul", "conv2d", "relu", "sigmoid", "max_pool2d")]
    _check(sim, cases, SECURE, 3, True)


def test_every_differentiable_operation_has_a_rule():
    """Every float-valued entry of the table either has a rule, is marked non-differentiable, or is listed
    here as deliberately without one (backward refuses it by name)."""
    without = {name for name, op in mpc.OPS.items() if op.backward is None}
    assert without <= {"max_pool2d_backward", "matmuls"}, without  # matmuls refuses operands that require grad
    assert {n for n, op in mpc.OPS.items() if op.backward is NONDIFF} >= {"lt", "eq", "sign", "argmax", "reveal"}


# ----- the API: accumulation, no_grad, detach, errors ---------------------------------------------------------------


X = grid(torch.tensor([[0.5, -1.25, 2.0], [1.5, 0.75, -0.5]], dtype=torch.float64))


def _api_program(ctx):
    out = {}
    x = mpc.share(X if ctx.rank == 0 else None, owner=0, requires_grad=True)
    assert x.requires_grad and x.is_leaf and x.grad is None and x.grad_fn is None
    y = (x * x).sum()
    assert y.requires_grad and not y.is_leaf and repr(y.grad_fn) == "<sumBackward>"
    y.backward()
    (x * 3).sum().backward()  # accumulates: 2x + 3
    out["accumulated"] = x.grad.reveal()
    x.grad = None
    z = (x * 2).sum()
    z.backward(retain_graph=True)
    z.backward()  # through the retained graph again: 2 + 2
    out["retained"] = x.grad.reveal()
    try:
        z.backward()
    except ProtocolError as e:
        out["freed"] = str(e)
    x.grad = None
    with mpc.no_grad():
        w = x * 2
        out["no_grad enabled"] = mpc.is_grad_enabled()
    out["no_grad"] = (w.requires_grad, w.grad_fn is None, mpc.is_grad_enabled())

    @mpc.no_grad()
    def step(t):
        return t * 5

    out["decorated"] = step(x).requires_grad
    with torch.no_grad():
        out["torch.no_grad"] = (x * 2).requires_grad
    d = x.detach()
    out["detach"] = (d.requires_grad, d.is_leaf)
    (d * x).sum().backward()  # only the path through x
    out["detached grad"] = x.grad.reveal()
    x.grad = None
    # a secret and a public gradient for a non-scalar output
    m = x * x
    m.backward(torch.ones(2, 3, dtype=torch.float64) * 0.5)
    g = mpc.share(torch.full((2, 3), 2.0) if ctx.rank == 1 else None, owner=1)
    (x + 1).backward(g)
    out["given grads"] = x.grad.reveal()  # x + 2
    errors = {}
    for name, fn in {
        "non-scalar": lambda: (x * 2).backward(),
        "no grad": lambda: x.detach().sum().backward(),
        "integer": lambda: mpc.share(
            torch.ones(2, dtype=torch.int64) if ctx.rank == 0 else None, owner=0, requires_grad=True
        ),
        "no rule": lambda: (
            call("max_pool2d_backward", torch.ones(1, 1, 1, 1), x.reshape(1, 1, 2, 3), 2).sum().backward()
        ),
        "wrong shape": lambda: (x * 2).backward(torch.ones(3)),
    }.items():
        try:
            fn()
            errors[name] = None
        except MPCError as e:
            errors[name] = str(e)
    out["errors"] = errors
    # comparisons carry no gradient; the rules' operations are counted and transcribed
    out["comparison"] = (x > 0).requires_grad
    before = ctx.stats.snapshot()["rounds"]
    count = ctx.transcript.count
    (x.sigmoid() * x).sum().backward()
    out["rounds"] = ctx.stats.snapshot()["rounds"] - before
    out["records"] = [r.name for r in ctx.transcript.since(count)]
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", [SECURE, PLAINTEXT])
def test_accumulation_no_grad_detach_and_errors(sim, protocol):
    for out in sim(_api_program, 2, protocol=protocol):
        torch.testing.assert_close(out["accumulated"], 2 * X + 3, atol=4 * TRUNC, rtol=0)
        torch.testing.assert_close(out["retained"], torch.full((2, 3), 4.0, dtype=torch.float64), atol=0, rtol=0)
        assert "retain_graph=True" in out["freed"]
        assert out["no_grad enabled"] is False
        assert out["no_grad"] == (False, True, True)
        assert out["decorated"] is False and out["torch.no_grad"] is False
        assert out["detach"] == (False, True)
        torch.testing.assert_close(out["detached grad"], X, atol=2 * TRUNC, rtol=0)
        torch.testing.assert_close(out["given grads"], X + 2, atol=4 * TRUNC, rtol=0)
        errors = out["errors"]
        assert "one element" in errors["non-scalar"]
        assert "does not require grad" in errors["no grad"]
        assert "floating-point" in errors["integer"]
        assert "'max_pool2d_backward' has no backward rule" in errors["no rule"]
        assert "shape" in errors["wrong shape"]
        assert out["comparison"] is False
        assert "backward" in out["records"] and "sigmoid" in out["records"] and "square" in out["records"]
        if protocol == SECURE:
            assert out["rounds"] > 0


# ----- a training step ---------------------------------------------------------------------------------------------


def _mlp_data():
    g = torch.Generator().manual_seed(7)
    x = grid(torch.randn(8, 4, generator=g, dtype=torch.float64))
    y = F.one_hot(torch.randint(0, 3, (8,), generator=g), 3).double()
    params = {
        "w1": grid(torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.5),
        "b1": grid(torch.randn(6, generator=g, dtype=torch.float64) * 0.1),
        "w2": grid(torch.randn(6, 3, generator=g, dtype=torch.float64) * 0.5),
        "b2": grid(torch.randn(3, generator=g, dtype=torch.float64) * 0.1),
    }
    return x, y, params


def _mlp_loss(x, y, p):
    h = (x @ p["w1"] + p["b1"]).relu()
    logits = h @ p["w2"] + p["b2"]
    lp = logits.log_softmax(1) if isinstance(logits, SecretTensor) else F.log_softmax(logits, 1)
    return -(lp * y).sum() / x.shape[0]


LR = 0.5


def _mlp_program(ctx, x, y, params):
    xs = mpc.share(x if ctx.rank == 0 else None, owner=0)
    ys = mpc.share(y if ctx.rank == 0 else None, owner=0)
    ps = {k: mpc.share(v if ctx.rank == 1 else None, owner=1, requires_grad=True) for k, v in params.items()}
    t = time.monotonic()
    _mlp_loss(xs, ys, ps).backward()
    grads = {k: p.grad.reveal() for k, p in ps.items()}
    with mpc.no_grad():
        new = {k: (p - LR * p.grad).reveal() for k, p in ps.items()}
    return grads, new, time.monotonic() - t


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_mlp_training_step_matches_torch(sim, protocol, n):
    x, y, params = _mlp_data()
    tp = {k: v.clone().requires_grad_() for k, v in params.items()}
    _mlp_loss(x, y, tp).backward()
    # log_softmax's gradient carries softmax's error (1e-3 per class, 3 classes) times |dL/dlogits| <= 1/8 per
    # row, then two products with |h|, |w| < 4 summed over 8 rows: 2e-3 absolute is a safe bound.
    for grads, new, _ in sim(functools.partial(_mlp_program, x=x, y=y, params=params), n, protocol=protocol):
        for k, p in tp.items():
            torch.testing.assert_close(grads[k].double(), p.grad, atol=2e-3, rtol=0, msg=k)
            torch.testing.assert_close(new[k].double(), params[k] - LR * p.grad, atol=2e-3, rtol=0, msg=k)


# ----- costs: what the rules' docstrings state ------------------------------------------------------------------------

COSTS = {
    # name: (forward on (x, y), backward rounds with a secret incoming gradient)
    "mul": (lambda x, y: x * y, 2),  # only x requires grad: one Beaver product
    "matmul": (lambda x, y: x @ y.t(), 2),  # both: two Beaver matmuls in one batch
    "sigmoid": (lambda x, y: x.sigmoid(), 4),  # a square, then one product
    "relu": (lambda x, y: x.relu(), 1),  # one product by the mask the forward kept
    "sum": (lambda x, y: (x + y).sum(1, keepdim=True), 0),  # local
    "conv2d": (lambda x, y: mpc.conv2d(x.reshape(1, 1, 2, 3), y.reshape(1, 1, 2, 3)[..., :2], padding=1), 4),
    "max_pool2d": (lambda x, y: mpc.max_pool2d(x.reshape(1, 1, 2, 3), 2, stride=1), 10),  # tournament 8, product 2
    "exp": (lambda x, y: x.exp(), 2),  # one product with the saved output
    "log_softmax": (lambda x, y: x.log_softmax(1), 4),  # softmax from what the forward kept (2), one product (2)
}


def _cost_program(ctx, name):
    fn, _ = COSTS[name]
    x = mpc.share(X if ctx.rank == 0 else None, owner=0, requires_grad=True)
    y = mpc.share(X if ctx.rank == 1 else None, owner=1, requires_grad=name != "mul")
    out = fn(x, y)
    v = mpc.share(torch.ones(out.shape, dtype=torch.float64) * 0.5 if ctx.rank == 1 else None, owner=1)
    before = ctx.stats.snapshot()["rounds"]
    out.backward(v)
    return ctx.stats.snapshot()["rounds"] - before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(COSTS))
def test_backward_rounds_are_the_documented_ones(sim, name):
    """Rounds of ``backward`` with a secret incoming gradient: each rule's docstring (products of one rule
    that do not depend on each other still run one after the other)."""
    assert sim(functools.partial(_cost_program, name=name), 2) == [COSTS[name][1]] * 2


# ----- forward values kept for backward, independent products batched -----------------------------------------------


def _kept_program(ctx):
    x = mpc.share(X if ctx.rank == 0 else None, owner=0, requires_grad=True)
    y = mpc.share(X if ctx.rank == 1 else None, owner=1, requires_grad=True)
    r = x.relu()
    out = {"kept": r.grad_fn.saved is not None, "left_on_result": r._saved is not None}
    with mpc.no_grad(ctx):
        out["kept_without_grad"] = x.relu()._saved is not None
    with pytest.raises(ProtocolError, match="records no gradients"):
        mpc.ops.call("matmuls", [x], [y.t()])
    with mpc.no_grad(ctx):
        a, b = mpc.ops.call("matmuls", [x, y], [y.t(), x.t()])
        out["matmuls"] = (a.reveal(), b.reveal())
    return out


@pytest.mark.timeout(60)
def test_relu_keeps_its_mask_and_matmuls_batch(sim, protocol):
    """relu's node holds the mask (never the result tensor, never without grad); ``matmuls`` gives each product
    and refuses operands that require grad (it records no graph)."""
    for out in sim(_kept_program, 2, protocol=protocol):
        assert out["kept"] and not out["left_on_result"] and not out["kept_without_grad"]
        want = X @ X.t()
        for got in out["matmuls"]:
            assert torch.allclose(got.double(), want, atol=1e-3)
