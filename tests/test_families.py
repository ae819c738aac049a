"""The seam between the user layer and the protocol families.

* torch's own functions on secret tensors (``torch.add(x, y)``, ``F.relu(x)``,
  ``P @ x``) under every family, against torch on the plaintext values; torch
  functions that have no entry in the table are refused naming the function;
* the operation table: every entry has a forward and a cost, and every
  computing method of ``SecretTensor`` reaches its entry's forward;
* the composites are written against the family interface: under a family
  whose comparison and powers are the generic ones (built on ``a2b``/``b2a``
  and products only), ReLU, comparisons, max/argmax, pooling and the
  nonlinear functions give the same results, at a higher round count;
* the ``plaintext`` family's reports (``FixedPointWarning``): one per call
  site, naming the operation, the value and the user's ``file:line``; none for
  a clean program; no dealer node; the secure family's results within
  fixed-point error;
* share types (pure tier): the local operations of additive, XOR and plain
  shares, checked by combining hand-made shares of 2 or 3 parties.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, PLAINTEXT, SECURE

import mpc
from mpc.ops import OPS, TORCH_OPS
from mpc.shares import AdditiveShare, BinaryShare, PlainShare, holds_public
from mpc.tensor import SecretTensor
from protocols.additive import AdditiveDealerFamily
from protocols.ring_family import RingFamily

ULP = 2.0**-16


def grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 2**16) / 2**16


def _rand(shape, seed: int, lo: float = -2.0, hi: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return grid(torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo)


INPUTS = {
    "x": _rand((3, 4), 1),
    "y": _rand((3, 4), 2),
    "p": _rand((3, 4), 3, 0.5, 4.0),  # positive: log, sqrt
    "w": _rand((4, 2), 4),
    "v": _rand((2, 4), 5),
    "img": _rand((1, 2, 6, 6), 6),
    "k": _rand((3, 2, 3, 3), 7, -0.5, 0.5),
}
P = _rand((3, 4), 8)  # public operands
B = _rand((2,), 9)

# (abs, rel) tolerances: exact, one truncation, the targets for the nonlinear functions.
EXACT = (0.0, 0.0)
TRUNC = (1.5 * ULP, 0.0)
MEAN = (16 * ULP, 0.0)  # 1.5 ulp + 2^-17 |sum| for the off-grid 1/12
EXP = (2.0**-14, 1e-3)
SQRT = (2.0**-14, 1e-3)
LOG = (2e-3, 0.0)
SMOOTH = (1e-3, 0.0)  # sigmoid, tanh, softmax
LOGSM = (2e-3, 0.0)

TORCH_CASES = [
    ("torch.add", lambda x, y: torch.add(x, y), EXACT),
    ("torch.sub", lambda x, y: torch.sub(x, y), EXACT),
    ("torch.mul", lambda x, y: torch.mul(x, y), TRUNC),
    ("torch.matmul", lambda x, w: torch.matmul(x, w), TRUNC),
    ("torch.cat", lambda x, y: torch.cat([x, y], 1), EXACT),
    ("torch.stack", lambda x, y: torch.stack([x, y]), EXACT),
    ("torch.where", lambda x, y: torch.where(x > y, x, y), EXACT),
    ("torch.sum", lambda x: torch.sum(x, 1), EXACT),
    ("torch.mean", lambda x: torch.mean(x), MEAN),
    ("torch.reshape", lambda x: torch.reshape(x, (4, 3)), EXACT),
    ("torch.flatten", lambda x: torch.flatten(x), EXACT),
    ("torch.transpose", lambda x: torch.transpose(x, 0, 1), EXACT),
    ("torch.exp", lambda x: torch.exp(x), EXP),
    ("torch.log", lambda p: torch.log(p), LOG),
    ("torch.sqrt", lambda p: torch.sqrt(p), SQRT),
    ("torch.sigmoid", lambda x: torch.sigmoid(x), SMOOTH),
    ("torch.tanh", lambda x: torch.tanh(x), SMOOTH),
    ("torch.relu", lambda x: torch.relu(x), EXACT),
    ("torch.abs", lambda x: torch.abs(x), EXACT),
    ("torch.clamp", lambda x: torch.clamp(x, -1.0, 1.25), EXACT),
    ("torch.maximum", lambda x, y: torch.maximum(x, y), EXACT),
    ("torch.softmax", lambda x: torch.softmax(x, 1), SMOOTH),
    ("torch.log_softmax", lambda x: torch.log_softmax(x, dim=1), LOGSM),
    ("F.relu", lambda x: F.relu(x), EXACT),
    ("F.sigmoid", lambda x: F.sigmoid(x), SMOOTH),
    ("F.softmax", lambda x: F.softmax(x, dim=1), SMOOTH),
    ("F.log_softmax", lambda x: F.log_softmax(x, dim=1), LOGSM),
    ("F.linear", lambda x, v: F.linear(x, v, B), TRUNC),
    ("F.linear public weight", lambda x: F.linear(x, P[:2], B), TRUNC),
    ("F.conv2d", lambda img, k: F.conv2d(img, k, padding=1), TRUNC),
    ("F.max_pool2d", lambda img: F.max_pool2d(img, 2), EXACT),
    ("F.avg_pool2d", lambda img: F.avg_pool2d(img, 2), TRUNC),
    ("tensor + secret", lambda x: P + x, EXACT),
    ("tensor - secret", lambda x: P - x, EXACT),
    ("tensor @ secret", lambda w: P @ w, TRUNC),
    ("torch.matmul(tensor, secret)", lambda w: torch.matmul(P, w), TRUNC),
    ("torch.add(tensor, secret)", lambda x: torch.add(P, x), EXACT),
]


def _args(fn) -> list[str]:
    return list(fn.__code__.co_varnames[: fn.__code__.co_argcount])


def _run_torch_case(ctx, fn):
    xs = []
    for i, name in enumerate(_args(fn)):
        owner = i % ctx.world_size
        xs.append(mpc.share(INPUTS[name] if ctx.rank == owner else None, owner=owner))
    out = fn(*xs)
    assert isinstance(out, SecretTensor), type(out)
    return out.reveal()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", FAMILIES)
@pytest.mark.parametrize("name,fn,tol", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_torch_functions_on_secret_tensors(sim, protocol, name, fn, tol):
    want = fn(*[INPUTS[a] for a in _args(fn)])
    atol, rtol = tol
    for rank, got in enumerate(sim(functools.partial(_run_torch_case, fn=fn), 2, protocol=protocol)):
        assert got.shape == want.shape and got.dtype == want.dtype, (name, rank, got.shape, want.shape)
        err = (got - want).abs()
        bound = atol + rtol * want.abs() + 1e-9 * want.abs()
        assert bool((err <= bound).all()), f"{name}, party {rank}: max error {float(err.max()):.3g}"


UNSUPPORTED = [
    ("torch.sin", lambda x: torch.sin(x)),
    ("torch.cos", lambda x: torch.cos(x)),
    ("torch.nn.functional.gelu", lambda x: F.gelu(x)),
    ("torch.nn.functional.silu", lambda x: F.silu(x)),
    ("torch.fft.fft", lambda x: torch.fft.fft(x)),
]


def _unsupported(ctx, fn):
    x = mpc.share(INPUTS["x"] if ctx.rank == 0 else None, owner=0)
    fn(x)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", FAMILIES)
@pytest.mark.parametrize("name,fn", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_torch_functions_are_refused_by_name(sim, protocol, name, fn):
    with pytest.raises(mpc.MPCError) as info:
        sim(functools.partial(_unsupported, fn=fn), 2, protocol=protocol, timeout=10.0)
    assert isinstance(info.value, mpc.ops.NotSupportedError)
    msg = str(info.value)
    assert f"{name} is not supported on secret tensors" in msg, msg


# ----- the operation table ----------------------------------------------------------------------------


def test_every_operation_has_a_forward_and_a_cost():
    assert {name for name, _ in METHODS.values()} | set(FUNCTIONAL) <= set(OPS)
    for name, op in OPS.items():
        assert op.name == name and callable(op.forward), name
        assert isinstance(op.cost, str) and op.cost.strip(), f"{name} has no cost"
    for func, op in TORCH_OPS.items():
        assert OPS[op.name] is op and func in op.torch


def _x() -> SecretTensor:
    # No party is needed: every forward below is replaced by a spy.
    return SecretTensor(None, PlainShare(torch.ones(2, 3, dtype=torch.float64)), torch.float64)  # type: ignore[arg-type]


# method (or property) -> (operation, how to call it)
METHODS = {
    "__add__": ("add", lambda x: x + 1),
    "__radd__": ("add", lambda x: 1 + x),
    "add": ("add", lambda x: x.add(1)),
    "__sub__": ("sub", lambda x: x - 1),
    "__rsub__": ("sub", lambda x: 1 - x),
    "sub": ("sub", lambda x: x.sub(1)),
    "__neg__": ("neg", lambda x: -x),
    "neg": ("neg", lambda x: x.neg()),
    "__mul__": ("mul", lambda x: x * 2),
    "__rmul__": ("mul", lambda x: 2 * x),
    "mul": ("mul", lambda x: x.mul(2)),
    "__truediv__": ("div", lambda x: x / 2),
    "__rtruediv__": ("div", lambda x: 2 / x),
    "div": ("div", lambda x: x.div(2)),
    "square": ("square", lambda x: x.square()),
    "matmul": ("matmul", lambda x: x.matmul(x)),
    "__matmul__": ("matmul", lambda x: x @ x),
    "__rmatmul__": ("matmul", lambda x: x.__rmatmul__(torch.ones(3, 2))),
    "pow": ("pow", lambda x: x.pow(2)),
    "__pow__": ("pow", lambda x: x**2),
    "sum": ("sum", lambda x: x.sum()),
    "mean": ("mean", lambda x: x.mean()),
    "reshape": ("reshape", lambda x: x.reshape(3, 2)),
    "view": ("view", lambda x: x.view(6)),
    "transpose": ("transpose", lambda x: x.transpose(0, 1)),
    "t": ("t", lambda x: x.t()),
    "T": ("permute", lambda x: x.T),
    "mT": ("transpose", lambda x: x.mT),
    "permute": ("permute", lambda x: x.permute(1, 0)),
    "movedim": ("movedim", lambda x: x.movedim(0, 1)),
    "flatten": ("flatten", lambda x: x.flatten()),
    "squeeze": ("squeeze", lambda x: x.squeeze()),
    "unsqueeze": ("unsqueeze", lambda x: x.unsqueeze(0)),
    "expand": ("expand", lambda x: x.expand(2, 3)),
    "expand_as": ("expand", lambda x: x.expand_as(x)),
    "repeat": ("repeat", lambda x: x.repeat(1, 2)),
    "contiguous": ("contiguous", lambda x: x.contiguous()),
    "clone": ("clone", lambda x: x.clone()),
    "__getitem__": ("getitem", lambda x: x[0]),
    "__lt__": ("lt", lambda x: x < 0),
    "__gt__": ("gt", lambda x: x > 0),
    "__le__": ("le", lambda x: x <= 0),
    "__ge__": ("ge", lambda x: x >= 0),
    "__eq__": ("eq", lambda x: x == 0),
    "__ne__": ("ne", lambda x: x != 0),
    "lt": ("lt", lambda x: x.lt(0)),
    "gt": ("gt", lambda x: x.gt(0)),
    "le": ("le", lambda x: x.le(0)),
    "ge": ("ge", lambda x: x.ge(0)),
    "eq": ("eq", lambda x: x.eq(0)),
    "ne": ("ne", lambda x: x.ne(0)),
    "sign": ("sign", lambda x: x.sign()),
    "abs": ("abs", lambda x: x.abs()),
    "__abs__": ("abs", lambda x: abs(x)),
    "relu": ("relu", lambda x: x.relu()),
    "clamp": ("clamp", lambda x: x.clamp(0, 1)),
    "clip": ("clamp", lambda x: x.clip(0, 1)),
    "where": ("where", lambda x: x.where(x > 0, x)),
    "maximum": ("maximum", lambda x: x.maximum(x)),
    "minimum": ("minimum", lambda x: x.minimum(x)),
    "max": ("max", lambda x: x.max()),
    "min": ("min", lambda x: x.min()),
    "argmax": ("argmax", lambda x: x.argmax()),
    "argmin": ("argmin", lambda x: x.argmin()),
    "exp": ("exp", lambda x: x.exp()),
    "log": ("log", lambda x: x.log()),
    "reciprocal": ("reciprocal", lambda x: x.reciprocal()),
    "sqrt": ("sqrt", lambda x: x.sqrt()),
    "rsqrt": ("rsqrt", lambda x: x.rsqrt()),
    "sigmoid": ("sigmoid", lambda x: x.sigmoid()),
    "tanh": ("tanh", lambda x: x.tanh()),
    "softmax": ("softmax", lambda x: x.softmax(1)),
    "log_softmax": ("log_softmax", lambda x: x.log_softmax(1)),
    "norm": ("norm", lambda x: x.norm()),
    "reveal": ("reveal", lambda x: x.reveal()),
}

# The table's entries reached through mpc's functions (and torch's) rather than methods.
FUNCTIONAL = ("cat", "stack", "conv2d", "linear", "max_pool2d", "avg_pool2d")

# Public metadata and refusals: they compute nothing and need no table entry.
NOT_COMPUTING = {
    "__init__", "__torch_function__", "shape", "size", "dim", "ndim", "numel", "__len__", "protocol", "__repr__",
    "__bool__", "item", "tolist", "numpy", "__float__", "__int__", "__index__", "__array__", "_new", "__hash__",
}  # fmt: skip


def test_every_computing_method_is_listed():
    members = {k for k, v in vars(SecretTensor).items() if callable(v) or isinstance(v, property)}
    assert members - NOT_COMPUTING == set(METHODS), "a SecretTensor method is missing from METHODS"


class _Sentinel:
    pass


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_goes_through_the_table(monkeypatch, method):
    """Replace every entry's forward: the method must return what its own entry's forward returns."""
    name, use = METHODS[method]
    calls: list[str] = []
    sentinel = _Sentinel()
    for other, op in OPS.items():
        # Other entries may run first (``x.where(x > 0, x)`` builds its condition): they return a secret tensor.
        fake = (lambda *a, _n=other, **k: calls.append(_n) or sentinel) if other == name else (
            lambda *a, _n=other, **k: calls.append(_n) or _x()
        )  # fmt: skip
        monkeypatch.setattr(op, "forward", fake)
    assert use(_x()) is sentinel, calls
    assert calls[-1] == name and calls.count(name) == 1, calls


def test_torch_functions_reach_the_table_entry(monkeypatch):
    seen = []
    for name in ("add", "relu", "softmax", "exp"):
        monkeypatch.setattr(OPS[name], "forward", lambda *a, _n=name, **k: seen.append(_n) or _Sentinel())
    x = _x()
    torch.add(x, 1), F.relu(x), torch.relu(x), F.softmax(x, dim=1), torch.exp(x)
    assert seen == ["add", "relu", "relu", "softmax", "exp"]


# ----- the composites use only the family's primitives ---------------------------------------------------


class GenericAdditive(AdditiveDealerFamily):
    """The additive dealer family with the generic comparison and powers (primitives only)."""

    name = "additive-generic"
    compare = RingFamily.compare
    powers = RingFamily.powers


COMPOSITE_INPUTS = {
    "x": grid(torch.linspace(-3, 3, 24, dtype=torch.float64).reshape(4, 6)),
    "y": _rand((4, 6), 11, -3.0, 3.0),
    "img": _rand((1, 2, 4, 4), 12, -3.0, 3.0),
    "pos": _rand((4, 6), 13, 0.5, 8.0),
}


def _composites(ctx, generic: bool):
    if generic:
        ctx.family = GenericAdditive()
    v = COMPOSITE_INPUTS
    x = mpc.share(v["x"] if ctx.rank == 0 else None, owner=0)
    y = mpc.share(v["y"] if ctx.rank == 1 else None, owner=1)
    img = mpc.share(v["img"] if ctx.rank == 0 else None, owner=0)
    pos = mpc.share(v["pos"] if ctx.rank == 1 else None, owner=1)
    r0 = ctx.stats.rounds
    lt = x < y
    rounds = ctx.stats.rounds - r0
    m = x.max(1)
    out = {
        "relu": x.relu(),
        "lt": lt,
        "ge": x >= y,
        "eq": x == x.clamp(-1, 1),
        "max": m.values,
        "argmax": m.indices,
        "argmax onehot": y.argmax(0, one_hot=True),
        "max_pool2d": mpc.max_pool2d(img, 2),
        "sigmoid": x.sigmoid(),
        "exp": x.exp(),
        "reciprocal": pos.reciprocal(),
        "softmax": x.softmax(1),
    }
    return {k: t.reveal() for k, t in out.items()}, rounds, type(ctx.family).__name__


COMPOSITE_WANT = {
    "relu": (lambda v: v["x"].relu(), EXACT),
    "lt": (lambda v: v["x"] < v["y"], EXACT),
    "ge": (lambda v: v["x"] >= v["y"], EXACT),
    "eq": (lambda v: v["x"] == v["x"].clamp(-1, 1), EXACT),
    "max": (lambda v: v["x"].max(1).values, EXACT),
    "argmax": (lambda v: v["x"].argmax(1), EXACT),
    "argmax onehot": (lambda v: F.one_hot(v["y"].argmax(0), 4).movedim(-1, 0), EXACT),
    "max_pool2d": (lambda v: F.max_pool2d(v["img"], 2), EXACT),
    "sigmoid": (lambda v: v["x"].sigmoid(), SMOOTH),
    "exp": (lambda v: v["x"].exp(), EXP),
    "reciprocal": (lambda v: v["pos"].reciprocal(), (2.0**-14, 1e-3)),
    "softmax": (lambda v: v["x"].softmax(1), SMOOTH),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_composites_under_the_generic_comparison_and_powers(sim, n):
    generic = sim(functools.partial(_composites, generic=True), n)
    dealer = sim(functools.partial(_composites, generic=False), n)
    for (out, rounds, fam), (_, dealer_rounds, dealer_fam) in zip(generic, dealer):
        assert fam == "GenericAdditive" and dealer_fam == "AdditiveDealerFamily"
        for key, (oracle, (atol, rtol)) in COMPOSITE_WANT.items():
            want = oracle(COMPOSITE_INPUTS)
            got = out[key]
            assert got.shape == want.shape and got.dtype == want.dtype, (key, got.dtype, want.dtype)
            err = (got.double() - want.double()).abs()
            assert bool((err <= atol + rtol * want.double().abs()).all()), f"{key}: max error {float(err.max()):.3g}"
        # 7 rounds of a2b + b2a + the product against the dealer's 4: the generic path really ran.
        assert dealer_rounds == 4 and rounds > dealer_rounds, (rounds, dealer_rounds)


# ----- the plaintext family's reports ------------------------------------------------------------------


@contextlib.contextmanager
def warnings_by_thread():
    """Every warning issued inside, with the thread (party) that issued it."""
    got: list[tuple[str, type, str, str, int]] = []

    def show(message, category, filename, lineno, file=None, line=None):
        got.append((threading.current_thread().name, category, str(message), filename, lineno))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield got


REPORTS = [
    # (case, input value, the call (one line: its line is the call site), op named, value named)
    ("out of range", 1e5, lambda x: x * x, "mul", "1e+10"),
    ("sqrt of -1", -1.0, lambda x: x.sqrt(), "sqrt", "-1"),
    ("reciprocal of 0", 0.0, lambda x: x.reciprocal(), "reciprocal", "0"),
    ("log of -1", -1.0, lambda x: x.log(), "log", "-1"),
    ("exp of 20", 20.0, lambda x: x.exp(), "exp", "20"),
    ("lossy constant", 1.0, lambda x: x * torch.tensor([3e-6, 0.5]), "mul", "3e-06"),
]


def _report_program(ctx, value, fn):
    x = mpc.share(torch.tensor([value, 1.0], dtype=torch.float64) if ctx.rank == 0 else None, owner=0)
    for _ in range(3):  # the same call site three times: reported once
        fn(x)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,value,fn,op,shown", REPORTS, ids=[r[0] for r in REPORTS])
def test_plaintext_reports_each_problem_once_per_call_site(sim, case, value, fn, op, shown):
    n = 2
    with warnings_by_thread() as got:
        sim(functools.partial(_report_program, value=value, fn=fn), n, protocol=PLAINTEXT)
    line = fn.__code__.co_firstlineno
    for rank in range(n):
        mine = [g for g in got if g[0] == f"mpc-party-{rank}"]
        assert len(mine) == 1, f"{case}: party {rank} got {len(mine)} warnings: {[g[2] for g in mine]}"
        _, category, message, filename, lineno = mine[0]
        assert category is mpc.FixedPointWarning
        assert f"dry run: {op}" in message, message  # the operation
        assert shown in message, message  # the offending value
        assert f"test_families.py:{line}" in message, message  # the user's call site
        assert filename == __file__ and lineno == line
    assert len(got) == n, [g[2] for g in got]


def _two_sites(ctx):
    x = mpc.share(torch.tensor([1e5]) if ctx.rank == 0 else None, owner=0)
    x * x
    x * x  # another call site: reported on its own


@pytest.mark.timeout(60)
def test_plaintext_reports_each_call_site(sim):
    with warnings_by_thread() as got:
        sim(_two_sites, 2, protocol=PLAINTEXT)
    lines = sorted(g[4] for g in got if g[0] == "mpc-party-0")
    first = _two_sites.__code__.co_firstlineno
    assert lines == [first + 2, first + 3]


def _clean_program(ctx):
    x = mpc.share(INPUTS["x"] if ctx.rank == 0 else None, owner=0)
    w = mpc.share(INPUTS["w"] if ctx.rank == 1 else None, owner=1)
    h = (x @ w).relu()
    s = h.softmax(1)
    e = (x * 0.5).exp() + x.sigmoid() + INPUTS["p"].sqrt()
    return s.reveal(), h.mean().reveal(), e.reveal(), (x / 4).reveal(), (s.sum(1) * (x > 0).sum()).reveal()


@pytest.mark.timeout(60)
def test_a_clean_program_gets_no_report(sim):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sim(_clean_program, 2, protocol=PLAINTEXT)


def _mixed(ctx):
    x = mpc.share(INPUTS["x"] if ctx.rank == 0 else None, owner=0)
    w = mpc.share(INPUTS["w"] if ctx.rank == 1 else None, owner=1)
    h = torch.relu(x @ w + 0.25)
    s = F.softmax(h, dim=1)
    return s.reveal(), h.mean(0).reveal(), (s * h).mean().reveal()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_plaintext_matches_the_secure_family(sim, n):
    plain = sim(_mixed, n, protocol=PLAINTEXT)
    secure = sim(_mixed, n, protocol=SECURE)
    x, w = INPUTS["x"], INPUTS["w"]
    h = torch.relu(x @ w + 0.25)
    s = F.softmax(h, dim=1)
    want = [s, h.mean(0), (s * h).mean()]
    for p_res, s_res in zip(plain, secure):
        # softmax: 1e-3; the mean: a truncation and the off-grid 1/3 times |sum|; s * h: softmax's error times |h|.
        tols = (1e-3, 1.5 * ULP + 2.0**-17 * float(h.abs().sum(0).max()) + 2 * ULP, 1e-3 * float(h.abs().max()) + 1e-4)
        for p, s_, wt, tol in zip(p_res, s_res, want, tols):
            assert torch.allclose(p, wt, rtol=0, atol=1e-12)  # plaintext: exact float64
            assert float((p - s_).abs().max()) <= tol  # the secure family: within fixed-point error


def _share_and_reveal(ctx):
    x = mpc.share(INPUTS["x"] if ctx.rank == 0 else None, owner=0)
    return (x.relu() + 1).reveal()


@pytest.mark.timeout(60)
def test_plaintext_runs_start_no_dealer(sim):
    n = 2
    received: dict = {}
    out = sim(_share_and_reveal, n, protocol=PLAINTEXT, received=received)
    assert torch.equal(out[0], INPUTS["x"].relu() + 1)
    from_dealer = {r: [f for f in frames if f[0] == n] for r, frames in received.items() if r < n}
    assert not any(from_dealer.values()), "a party of a plaintext run heard from a dealer node"
    assert not received.get(n), "a plaintext run sent frames to a dealer node"


# ----- share types: local operations (pure tier) ------------------------------------------------------------


def _additive(value: torch.Tensor, parties: int, seed: int) -> list[AdditiveShare]:
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(-(2**62), 2**62, value.shape, generator=g, dtype=torch.int64) for _ in range(parties - 1)]
    last = value.clone()
    for p in parts:
        last = last - p  # wraps modulo 2^64
    datas = [last, *parts]  # party 0 (the public holder) holds the correction
    return [AdditiveShare(d, holds_public(r)) for r, d in enumerate(datas)]


def _binary(value: torch.Tensor, parties: int, seed: int) -> list[BinaryShare]:
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(-(2**62), 2**62, value.shape, generator=g, dtype=torch.int64) for _ in range(parties - 1)]
    first = value.clone()
    for p in parts:
        first = first ^ p
    return [BinaryShare(d, holds_public(r)) for r, d in enumerate([first, *parts])]


def _open_add(shares) -> torch.Tensor:
    out = torch.zeros_like(shares[0].data)
    for s in shares:
        out = out + s.data
    return out


def _open_xor(shares) -> torch.Tensor:
    out = torch.zeros_like(shares[0].data)
    for s in shares:
        out = out ^ s.data
    return out


VA = torch.tensor([[1, -2, 3], [2**40, -(2**50), 7]], dtype=torch.int64)
VB = torch.tensor([[5, 6, -7], [8, 9, 2**61]], dtype=torch.int64)
COND = VA > 0
# Public weights whose products wrap modulo 2^64 (what the tables' selects pass: ring-encoded differences).
WEIGHTS = torch.tensor([[3, -1], [2**62, 5], [-(2**63), 2**61 + 1]], dtype=torch.int64)


def _ring_mm(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``w @ v`` modulo 2^64, row by row in Python integers (the reference for the shares' int64 product); on
    floats (plaintext shares) the float product."""
    if v.is_floating_point():
        return w.to(v.dtype) @ v
    out = [
        [sum(int(w[i, k]) * int(v[k, j]) for k in range(w.shape[1])) for j in range(v.shape[1])]
        for i in range(w.shape[0])
    ]
    return torch.tensor([[(x + 2**63) % 2**64 - 2**63 for x in row] for row in out], dtype=torch.int64)


LOCAL_OPS = [
    # (name, on shares (per party list), on values); ``pub``: a public operand, in the share's number system
    ("add", lambda a, b, pub: [x + y for x, y in zip(a, b)], lambda a, b, pub: a + b),
    ("sub", lambda a, b, pub: [x - y for x, y in zip(a, b)], lambda a, b, pub: a - b),
    ("neg", lambda a, b, pub: [-x for x in a], lambda a, b, pub: -a),
    ("add_public", lambda a, b, pub: [x.add_public(pub) for x in a], lambda a, b, pub: a + pub),
    ("add_public broadcast", lambda a, b, pub: [x[0].add_public(pub) for x in a], lambda a, b, pub: a[0] + pub),
    ("add_public scalar", lambda a, b, pub: [x.add_public(-9) for x in a], lambda a, b, pub: a - 9),
    ("mul_public", lambda a, b, pub: [x.mul_public(3) for x in a], lambda a, b, pub: a * 3),
    ("reshape", lambda a, b, pub: [x.reshape(3, 2) for x in a], lambda a, b, pub: a.reshape(3, 2)),
    ("transpose", lambda a, b, pub: [x.transpose(0, 1) for x in a], lambda a, b, pub: a.t()),
    ("index", lambda a, b, pub: [x[:, 1:] for x in a], lambda a, b, pub: a[:, 1:]),
    ("index list", lambda a, b, pub: [x[[1, 0, 1]] for x in a], lambda a, b, pub: a[[1, 0, 1]]),
    ("cat", lambda a, b, pub: [type(x).cat([x, y], 1) for x, y in zip(a, b)], lambda a, b, pub: torch.cat([a, b], 1)),
    ("stack", lambda a, b, pub: [type(x).stack([x, y]) for x, y in zip(a, b)], lambda a, b, pub: torch.stack([a, b])),
    ("sum", lambda a, b, pub: [x.sum() for x in a], lambda a, b, pub: a.sum()),
    ("sum dim", lambda a, b, pub: [x.sum(1, keepdim=True) for x in a], lambda a, b, pub: a.sum(1, keepdim=True)),
    ("pad_public", lambda a, b, pub: [x.pad_public((1, 2, 0, 1), 11) for x in a], lambda a, b, pub: F.pad(a, (1, 2, 0, 1), value=11)),
    ("select_public", lambda a, b, pub: [x.select_public(COND, y) for x, y in zip(a, b)], lambda a, b, pub: torch.where(COND, a, b)),
    ("weighted_sum", lambda a, b, pub: [x.weighted_sum([3, -(2**62)]) for x in a], lambda a, b, pub: _ring_mm(torch.tensor([[3, -(2**62)]]), a)[0]),
    ("weighted_sums", lambda a, b, pub: [x.weighted_sums(WEIGHTS) for x in a], lambda a, b, pub: _ring_mm(WEIGHTS, a)),
]  # fmt: skip


@pytest.mark.parametrize("parties", [2, 3])
@pytest.mark.parametrize("name,on_shares,on_values", LOCAL_OPS, ids=[o[0] for o in LOCAL_OPS])
def test_additive_share_local_operations(parties, name, on_shares, on_values):
    a, b = _additive(VA, parties, 1), _additive(VB, parties, 2)
    assert torch.equal(_open_add(a), VA) and torch.equal(_open_add(b), VB)
    out = on_shares(a, b, VB)
    assert all(type(s) is AdditiveShare for s in out)
    assert [s.holder for s in out] == [r == 0 for r in range(parties)]
    assert torch.equal(_open_add(out), on_values(VA, VB, VB)), name


def test_weighted_sums_refuse_a_matrix_that_does_not_fit_the_rows():
    a = _additive(VA, 2, 1)
    with pytest.raises(
        ValueError, match=r"weighted_sums needs a matrix of one weight per row, got \(3, 3\) for 2 rows"
    ):
        a[0].weighted_sums(torch.ones(3, 3, dtype=torch.int64))


def test_additive_public_constants_go_to_the_holder_only():
    a = _additive(VA, 3, 3)
    out = [s.add_public(VB) for s in a]
    assert torch.equal(out[0].data, a[0].data + VB)
    assert all(torch.equal(out[r].data, a[r].data) for r in (1, 2))
    padded = [s.pad_public((1, 0), 5) for s in a]
    assert bool((padded[0].data[:, 0] == 5).all()) and all(bool((p.data[:, 0] == 0).all()) for p in padded[1:])
    pub = [AdditiveShare.public(VB, r) for r in range(3)]
    assert torch.equal(pub[0].data, VB) and not pub[1].data.any() and not pub[2].data.any()
    assert torch.equal(_open_add(pub), VB)


BINARY_OPS = [
    ("xor", lambda a, b: [x ^ y for x, y in zip(a, b)], lambda a, b: a ^ b),
    ("xor_public", lambda a, b: [x.xor_public(VB) for x in a], lambda a, b: a ^ b),
    ("add_public is xor", lambda a, b: [x.add_public(VB) for x in a], lambda a, b: a ^ b),
    ("and_public", lambda a, b: [x.and_public(0xFF) for x in a], lambda a, b: a & 0xFF),
    ("invert", lambda a, b: [x.invert() for x in a], lambda a, b: ~a),
    ("lshift", lambda a, b: [x << 3 for x in a], lambda a, b: a << 3),
    ("rshift logical", lambda a, b: [x >> 5 for x in a], lambda a, b: (a >> 5) & ((1 << 59) - 1)),
    ("reshape", lambda a, b: [x.reshape(-1) for x in a], lambda a, b: a.reshape(-1)),
    ("index", lambda a, b: [x[1] for x in a], lambda a, b: a[1]),
    ("cat", lambda a, b: [BinaryShare.cat([x, y]) for x, y in zip(a, b)], lambda a, b: torch.cat([a, b])),
    ("stack", lambda a, b: [BinaryShare.stack([x, y], 2) for x, y in zip(a, b)], lambda a, b: torch.stack([a, b], 2)),
    ("pad_public", lambda a, b: [x.pad_public((0, 1), 3) for x in a], lambda a, b: F.pad(a, (0, 1), value=3)),
]


@pytest.mark.parametrize("parties", [2, 3])
@pytest.mark.parametrize("name,on_shares,on_values", BINARY_OPS, ids=[o[0] for o in BINARY_OPS])
def test_binary_share_local_operations(parties, name, on_shares, on_values):
    a, b = _binary(VA, parties, 4), _binary(VB, parties, 5)
    assert torch.equal(_open_xor(a), VA)
    out = on_shares(a, b)
    assert all(type(s) is BinaryShare for s in out)
    assert torch.equal(_open_xor(out), on_values(VA, VB)), name


def test_binary_shares_refuse_addition():
    a, b = _binary(VA, 2, 6), _binary(VB, 2, 7)
    with pytest.raises(TypeError, match="XOR"):
        a[0] + b[0]
    with pytest.raises(TypeError, match="XOR"):
        a[0] - b[0]


def test_share_types_do_not_mix():
    a, b = _additive(VA, 2, 8), _binary(VB, 2, 9)
    with pytest.raises(TypeError, match="cannot combine"):
        a[0] + b[0]  # type: ignore[operator]
    with pytest.raises(TypeError, match="cannot combine"):
        b[0] ^ a[0]  # type: ignore[operator]
    with pytest.raises(TypeError, match="cannot combine"):
        a[0] + PlainShare(VA.double())  # type: ignore[operator]


FA, FB = VA.double() / 7, VB.double() / 3


@pytest.mark.parametrize("name,on_shares,on_values", LOCAL_OPS, ids=[o[0] for o in LOCAL_OPS])
def test_plain_share_local_operations(name, on_shares, on_values):
    # Every party holds the value itself (float64): each party's result is the value's result.
    a = [PlainShare(FA.clone()) for _ in range(3)]
    b = [PlainShare(FB.clone()) for _ in range(3)]
    out = on_shares(a, b, FB)
    want = on_values(FA, FB, FB)
    for s in out:
        assert type(s) is PlainShare and s.value.dtype == torch.float64
        assert torch.allclose(s.value, want, rtol=1e-15, atol=0), name


def test_plain_share_public_values():
    pub = [PlainShare.public(VB, r) for r in range(3)]
    assert all(p.value.dtype == torch.float64 and torch.equal(p.value, VB.double()) for p in pub)
    assert torch.equal(PlainShare(FA).pad_public((1, 0), 2.5).value[:, 0], torch.full((2,), 2.5, dtype=torch.float64))
