"""Thread tier: comparisons, ReLU, sign, abs, where, clamp, max/argmax and max_pool2d against torch.

All of these are exact: the results must equal torch's (float64 oracle on
fixed-point grid inputs) bit for bit, over the whole documented range
``|v| < 2^30`` including its ends, zeros and exact ties, for N = 2 and 3
parties.  Ties in max/argmax go to the first index (``torch.argmax``'s rule).
Costs are checked too: a comparison is 4 rounds; ReLU sends
8 + 28/8 + 6/8 + 1/8 bytes per element to each other party.

Every test of results runs under every protocol family (``conftest.FAMILIES``);
costs are the secure family's and are checked for it alone, as is the
traffic's independence of the values.

The secure family's ``protocols.comparison.compare`` is also checked directly,
against plain ring arithmetic, for every option (products with the input and
an extra multiplicand, negation, XOR-shared result, bits below the sign) at
sizes around the leaf layout's edges (four elements to a leaf word: 1, 2, 3,
not a multiple of 4, of 64 or of 256, empty, several dimensions) and 1 to 5
thresholds, with the dealer request and the leaf width that prove the layout.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import SECURE, families

import mpc
from mpc import SecretTensor
from mpc.context import Handle
from mpc.errors import ProtocolError
from mpc.ring import wrap_int
from parties import wire
from protocols import bitforms as bf
from protocols.binary import open_words
from protocols.comparison import compare
from protocols.correlated import CMP_LANES
from protocols.sharing import open_all

F16 = 2.0**16
TOP = 2.0**30 - 2.0**-16  # the largest value of the documented range


def grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * F16) / F16


def spread(n: int, seed: int, lim: float = TOP) -> torch.Tensor:
    """Values over the whole range: random signs, log-uniform magnitudes from 2^-16 to lim, plus edges."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * (torch.log(torch.tensor(lim)) + 16 * 0.6932))
    v = grid(mag * 2.0**-16 * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double())
    edges = torch.tensor([0.0, TOP, -TOP, 2.0**-16, -(2.0**-16), 1.0, -1.0, 0.5], dtype=torch.float64)
    v[: len(edges)] = edges
    return v.clamp(-lim, lim)


def _share2(ctx, a, b):
    x = mpc.share(a if ctx.rank == 0 else None, owner=0)
    y = mpc.share(b if ctx.rank == ctx.world_size - 1 else None, owner=ctx.world_size - 1)
    return x, y


OPS = {
    "lt": lambda x, y: x < y,
    "le": lambda x, y: x <= y,
    "gt": lambda x, y: x > y,
    "ge": lambda x, y: x >= y,
    "eq": lambda x, y: x == y,
    "ne": lambda x, y: x != y,
}


def _compare_all(ctx, a, b):
    x, y = _share2(ctx, a, b)
    out, rounds = {}, {}
    for name, op in OPS.items():
        before = ctx.stats.rounds
        r = op(x, y)
        rounds[name] = ctx.stats.rounds - before
        out[name] = (r.reveal(), r.dtype)
        out[name + " public"] = (op(x, b).reveal(), None)
        out[name + " reflected"] = (op(b[0].item(), x).reveal(), None)  # python scalar on the left
    return out, rounds


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_comparisons_exact_over_whole_range(sim, protocol, n):
    a = spread(4000, 1)
    b = torch.where(torch.arange(4000) % 3 == 0, a, spread(4000, 2))  # a third exact ties
    b[torch.arange(4000) % 7 == 0] += 2.0**-16  # and values one ulp apart
    b = b.clamp(-TOP, TOP)
    for out, rounds in sim(functools.partial(_compare_all, a=a, b=b), n, protocol=protocol):
        for name, op in OPS.items():
            got, dtype = out[name]
            assert dtype == torch.bool and got.dtype == torch.bool
            assert torch.equal(got, op(a, b)), name
            assert torch.equal(out[name + " public"][0], op(a, b)), name
            assert torch.equal(out[name + " reflected"][0], op(b[0].item(), a)), name
            assert rounds[name] == 4 or protocol != SECURE, name


def _broadcast(ctx):
    x = mpc.share(torch.tensor([[1.0], [-2.0], [3.0]]) if ctx.rank == 0 else None, 0)
    y = mpc.share(torch.tensor([[1.0, -2.0, 0.0, 3.0]]) if ctx.rank == 1 else None, 1)
    pub = torch.tensor([0.0, 1.0, 5.0, -2.0])
    return (x < y).reveal(), (x >= pub).reveal(), (x == y).reveal(), mpc.maximum(x, y).reveal()


@pytest.mark.timeout(60)
def test_broadcasting(sim, protocol):
    a = torch.tensor([[1.0], [-2.0], [3.0]])
    b = torch.tensor([[1.0, -2.0, 0.0, 3.0]])
    pub = torch.tensor([0.0, 1.0, 5.0, -2.0])
    for lt, ge, eq, mx in sim(_broadcast, 2, protocol=protocol):
        assert torch.equal(lt, a < b) and torch.equal(ge, a >= pub) and torch.equal(eq, a == b)
        assert torch.equal(mx, torch.maximum(a, b).float())


def _unary(ctx, a):
    x = mpc.share(a if ctx.rank == 0 else None, 0)
    before = ctx.stats.snapshot()
    r = x.relu()
    after = ctx.stats.snapshot()
    cost = (after["rounds"] - before["rounds"], after["bytes_sent"] - before["bytes_sent"])
    return r.reveal(), x.sign().reveal(), abs(x).reveal(), x.abs().dtype, cost


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_relu_sign_abs_exact_and_cost(sim, protocol, n):
    a = spread(64 * 50, 3)  # a multiple of 64 elements: no padding in the element-sliced rounds
    for relu, sign, ab, dtype, (rounds, nbytes) in sim(functools.partial(_unary, a=a), n, protocol=protocol):
        assert torch.equal(relu, a.relu()) and torch.equal(sign, a.sign()) and torch.equal(ab, a.abs())
        assert dtype == torch.float64
        if protocol != SECURE:
            continue
        assert rounds == 4
        assert nbytes == (n - 1) * a.numel() * (8 + 28 / 8 + 6 / 8 + 1 / 8)


def _small(ctx, values):
    out = []
    for a in values:
        x = mpc.share(a if ctx.rank == 0 else None, 0)
        out.append((x.relu().reveal(), x.sign().reveal(), x.abs().reveal(), (x < 0.25).reveal()))
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_relu_sign_abs_small_and_multidim(sim, protocol, n):
    """Sizes that leave leaf lanes empty (1, 2, 3, not a multiple of 4) and several dimensions."""
    values = [spread(64, 20 + k)[:k].reshape(shape) for k, shape in ((1, (1,)), (2, (2,)), (3, (3,)), (30, (2, 3, 5)))]
    for outs in sim(functools.partial(_small, values=values), n, protocol=protocol):
        for a, (relu, sign, ab, lt) in zip(values, outs):
            assert torch.equal(relu, a.relu()) and torch.equal(sign, a.sign()) and torch.equal(ab, a.abs())
            assert torch.equal(lt, a < 0.25)


def _where(ctx, c, a, b):
    cond = mpc.share(c if ctx.rank == 0 else None, 0)
    x, y = _share2(ctx, a, b)
    r0 = ctx.stats.rounds
    w = mpc.where(cond, x, y)
    r1 = ctx.stats.rounds
    wp = mpc.where(cond, a, -1.5)
    r2 = ctx.stats.rounds
    wc = mpc.where(cond > 0.5, x, 2.0)  # a computed condition, one public branch
    return (
        w.reveal(),
        wp.reveal(),
        wc.reveal(),
        mpc.where(c, x, y).reveal(),
        x.where(cond, y).reveal(),
        r1 - r0,
        r2 - r1,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_where_exact(sim, protocol, n):
    c = torch.arange(300) % 2 == 0
    a, b = spread(300, 4), spread(300, 5)
    for w, wp, wc, wpub, wm, rounds, rounds_pub in sim(functools.partial(_where, c=c, a=a, b=b), n, protocol=protocol):
        assert torch.equal(w, torch.where(c, a, b)) and torch.equal(wpub, torch.where(c, a, b))
        assert torch.equal(wm, torch.where(c, a, b))
        assert torch.equal(wp, torch.where(c, a, torch.tensor(-1.5, dtype=torch.float64)))
        assert torch.equal(wc, torch.where(c, a, torch.tensor(2.0, dtype=torch.float64)))
        assert rounds == 2 and rounds_pub == 1 or protocol != SECURE


def _clamp(ctx, a, lo, hi):
    x, y = _share2(ctx, a, lo)
    h = mpc.share(hi if ctx.rank == 0 else None, 0)
    r0 = ctx.stats.rounds
    c1 = x.clamp(-2.5, 3.25)
    r1 = ctx.stats.rounds
    return (
        c1.reveal(),
        x.clamp(min=0.75).reveal(),
        x.clip(max=-1).reveal(),
        x.clamp(y, h).reveal(),
        x.clamp(max=h).reveal(),
        x.clamp(min=torch.tensor([0.0, -1.0, 2.0]).repeat(100)).reveal(),
        r1 - r0,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,n", families(2, 3))
def test_clamp_public_and_secret_bounds(sim, protocol, n):
    a = spread(300, 6, lim=8.0)
    lo = grid(-torch.rand(300, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 4)
    hi = lo + grid(torch.rand(300, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 4)
    for c1, c2, c3, c4, c5, c6, rounds in sim(functools.partial(_clamp, a=a, lo=lo, hi=hi), n, protocol=protocol):
        assert torch.equal(c1, a.clamp(-2.5, 3.25)) and torch.equal(c2, a.clamp(min=0.75))
        assert torch.equal(c3, a.clamp(max=-1.0)) and torch.equal(c4, torch.clamp(a, lo, hi))
        assert torch.equal(c5, torch.clamp(a, max=hi))
        assert torch.equal(c6, torch.clamp(a, min=torch.tensor([0.0, -1.0, 2.0], dtype=torch.float64).repeat(100)))
        assert rounds == 4 or protocol != SECURE


def _reductions(ctx, a):
    x = mpc.share(a if ctx.rank == 0 else None, 0)
    out = {"max": x.max().reveal(), "min": x.min().reveal(), "argmax": x.argmax().reveal()}
    for d in range(a.dim()):
        m = x.max(d)
        mk = x.min(d, keepdim=True)
        out[f"max{d}"] = (m.values.reveal(), m.indices.reveal(), m.indices.dtype)
        out[f"min{d}"] = (mk.values.reveal(), mk.indices.reveal())
        out[f"argmax{d}"] = x.argmax(d).reveal()
        out[f"argmin{d}"] = x.argmin(d, keepdim=True).reveal()
        out[f"onehot{d}"] = x.argmax(d, one_hot=True).reveal()
        out[f"onehotmin{d}"] = x.argmin(d, one_hot=True).reveal()
    out["rounds"] = ctx.stats.rounds
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol,n", families(2, 3))
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 9, 4), (1, 17)])
def test_max_argmax_with_ties_first_index(sim, protocol, n, shape):
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.randint(-3, 3, shape, generator=g).double() * 0.5  # many exact ties
    if a.numel() > 3:
        a.view(-1)[:2] = torch.tensor([TOP, TOP], dtype=torch.float64)  # a tie at the top of the range
        a.view(-1)[-1] = -TOP
    out = sim(functools.partial(_reductions, a=a), n, protocol=protocol)[0]
    assert torch.equal(out["max"], a.max()) and torch.equal(out["min"], a.min())
    assert torch.equal(out["argmax"], a.argmax())
    for d in range(a.dim()):
        v, i, dtype = out[f"max{d}"]
        assert torch.equal(v, a.max(d).values) and torch.equal(i, a.argmax(d)) and dtype == torch.int64
        v, i = out[f"min{d}"]
        assert torch.equal(v, a.min(d, keepdim=True).values) and torch.equal(i, a.argmin(d, keepdim=True))
        assert torch.equal(out[f"argmax{d}"], a.argmax(d))
        assert torch.equal(out[f"argmin{d}"], a.argmin(d, keepdim=True))
        assert torch.equal(out[f"onehot{d}"], F.one_hot(a.argmax(d), a.shape[d]).movedim(-1, d))
        assert torch.equal(out[f"onehotmin{d}"], F.one_hot(a.argmin(d), a.shape[d]).movedim(-1, d))


def _pool(ctx, img, kw):
    x = mpc.share(img if ctx.rank == 0 else None, 0)
    r0 = ctx.stats.rounds
    y = mpc.max_pool2d(x, **kw)
    rounds = ctx.stats.rounds - r0
    return y.reveal(), rounds


POOLS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2)),
    dict(kernel_size=2, stride=1, dilation=2),
    dict(kernel_size=3, stride=2, padding=1),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol,n", families(2, 3))
@pytest.mark.parametrize("kw", POOLS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_max_pool2d(sim, protocol, n, kw):
    g = torch.Generator().manual_seed(9)
    img = grid(torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64) * 10)
    img[0, 0, :2, :2] = 1.0  # a tied window
    for got, rounds in sim(functools.partial(_pool, img=img, kw=kw), n, protocol=protocol):
        assert torch.equal(got, F.max_pool2d(img, **kw))
        k = kw["kernel_size"]
        window = k * k if isinstance(k, int) else k[0] * k[1]
        assert rounds == 4 * (window - 1).bit_length() or protocol != SECURE


def _pool3d(ctx, img):
    x = mpc.share(img if ctx.rank == 0 else None, 0)
    return mpc.max_pool2d(x, 2).reveal()


@pytest.mark.timeout(60)
def test_max_pool2d_unbatched(sim, protocol):
    img = grid(torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    for got in sim(functools.partial(_pool3d, img=img), 2, protocol=protocol):
        assert torch.equal(got, F.max_pool2d(img, 2))


def _empty(ctx):
    x = mpc.share(torch.zeros(0, 4) if ctx.rank == 0 else None, 0)
    r0 = ctx.stats.rounds
    r = (x < 1.0).reveal(), x.relu().reveal(), x.max(1).values.reveal(), x.argmax(1).reveal()
    return (*r, ctx.stats.rounds - r0)


@pytest.mark.timeout(60)
def test_empty_dims(sim, protocol):
    for lt, relu, mx, am, rounds in sim(_empty, 2, protocol=protocol):
        assert lt.shape == relu.shape == (0, 4) and mx.shape == am.shape == (0,)
        assert rounds == 4 or protocol != SECURE  # the reveals only


def _misuse(ctx, what):
    x = mpc.share(torch.zeros(3, 0) if ctx.rank == 0 else None, 0)
    if what == "max of empty":
        return x.max(1)
    if what == "clamp nothing":
        return x.clamp()
    if what == "where public":
        return mpc.where(torch.tensor([True]), 1.0, 2.0)
    if what == "pool ceil":
        return mpc.max_pool2d(mpc.share(torch.zeros(1, 1, 4, 4) if ctx.rank == 0 else None, 0), 2, ceil_mode=True)
    raise AssertionError(what)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "what,match",
    [
        ("max of empty", "empty"),
        ("clamp nothing", "at least one"),
        ("where public", "SecretTensor"),
        ("pool ceil", "ceil_mode"),
    ],
)
def test_misuse_is_refused(sim, protocol, what, match):
    with pytest.raises(ProtocolError, match=match):
        sim(functools.partial(_misuse, what=what), 2, timeout=10.0, protocol=protocol)


def _traffic(ctx, a):
    x = mpc.share(a if ctx.rank == 0 else None, 0)
    _ = x < 0.0
    return None


@pytest.mark.timeout(60)
def test_traffic_does_not_depend_on_values(sim):
    """What each party receives during a comparison has the same operations and sizes whatever the inputs."""
    shapes = []
    for a in (torch.zeros(100, dtype=torch.float64), spread(100, 11)):
        received: dict = {}
        sim(functools.partial(_traffic, a=a), 2, received=received)
        links = {}
        for r, frames in received.items():
            for sender, header, payload in frames:
                h = wire.decode_header(header, 1 << 40)
                if h.op == "bye":  # shutdown handshake: whether it is read before close is a race
                    continue
                links.setdefault((r, sender), []).append((h.op, h.shape, h.dtype, len(payload)))
        shapes.append(links)
    assert shapes[0] == shapes[1]
    assert any(op == "lt:l1" for msgs in shapes[0].values() for op, *_ in msgs)


class _Recorder:
    """A party's correlation source that records each request and the shapes of its derived parts."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen: list = []

    def request(self, kind, params):
        handle = self.inner.request(kind, params)
        entry = [kind, tuple(params), None]
        self.seen.append(entry)

        def recorded():
            parts = handle.derived()
            entry[2] = [tuple(p.shape) for p in parts]
            return parts

        return Handle(handle.randoms, recorded)


def _ring_share(ctx, v: torch.Tensor) -> torch.Tensor:
    """An additive sharing of a public test ring value (pairwise-random masks)."""
    out = v.clone() if ctx.rank == 0 else torch.zeros_like(v)
    for j in range(ctx.world_size):
        if j != ctx.rank and (ctx.rank == 0 or j == 0):
            r = ctx.pair_prgs[j].int64(v.shape)
            out = out - r if ctx.rank == 0 else out + r
    return out


# (shape, thresholds, options): sizes around the leaf layout's edges, 1 to 5 thresholds, every option.
LANE_CASES = [
    ((1,), (0,), dict(mul_input=True, negate=True)),
    ((2,), (0,), dict(mul_input=True)),
    ((3,), (0,), dict(arithmetic=False)),
    ((5,), (0, 1), dict(mul_input=True)),
    ((63,), (0,), dict(negate=True, arithmetic=False, bit=17)),
    ((65,), (3, -7, 0), dict(mul_input=True, bit=40)),
    ((257,), (0,), dict(extra=2, mul_input=True, negate=True)),
    ((3, 5, 7), (0,), dict(mul_input=True, negate=True)),
    ((2, 9), (1, 2, 3, 4, 5), dict(extra=1)),
    ((1000,), (0, 5), dict(negate=True)),
    ((0,), (0,), dict(mul_input=True)),
    ((2, 0, 3), (0, 1), dict(extra=2)),
]


def _lane_cases(ctx, cases):
    ctx.correlations = rec = _Recorder(ctx.correlations)
    out = []
    for (_, ts, kw), (v, y) in cases:
        kw = dict(kw)
        if "extra" in kw:
            kw["extra"] = _ring_share(ctx, y)
        r0 = ctx.stats.rounds
        res = compare(ctx, _ring_share(ctx, v), ts, **kw)
        rounds = ctx.stats.rounds - r0
        parts = [p for p in (res.bits, res.xbits, res.ybits) if p is not None]
        opened = open_all(ctx, parts, "rv") if parts else []
        binary = open_words(ctx, [res.binary & 1], "rvb")[0] if res.binary is not None else None  # XOR shares
        out.append((opened, binary, rounds))
    return out, rec.seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_compare_with_lane_packed_leaves(sim, n):
    g = torch.Generator().manual_seed(21)
    cases = []
    for shape, ts, kw in LANE_CASES:
        v = torch.randint(-(2**40), 2**40, shape, generator=g, dtype=torch.int64)
        if v.numel() >= 4:
            v.view(-1)[:4] = torch.tensor([0, -1, 1, -(2**40)])
        y = torch.randint(-(2**30), 2**30, (len(ts), *shape, kw.get("extra", 1)), generator=g, dtype=torch.int64)
        cases.append(((shape, ts, kw), (v, y)))
    results = sim(functools.partial(_lane_cases, cases=cases), n)
    for outs, seen in results:
        requests = [r for r in seen if r[0] == "cmp"]
        assert len(requests) == sum(1 for (shape, _, _), _ in cases if torch.Size(shape).numel())
        for ((shape, ts, kw), (v, y)), (opened, binary, rounds) in zip(cases, outs):
            z = v.unsqueeze(0) - torch.tensor([wrap_int(t) for t in ts]).reshape(-1, *[1] * v.dim())
            want = (z >> kw.get("bit", 63)) & 1
            if kw.get("negate"):
                want = 1 - want
            case = f"{shape} {ts} {kw}"
            if kw.get("arithmetic", True):
                got = list(opened)
                assert torch.equal(got.pop(0), want), case
                if kw.get("mul_input"):
                    assert torch.equal(got.pop(0), v.unsqueeze(0) * want), case
                if "extra" in kw:
                    assert torch.equal(got.pop(0), y * want.unsqueeze(-1)), case
            else:
                assert torch.equal(binary, want), case
            if v.numel():
                assert rounds == (4 if kw.get("arithmetic", True) else 3), case
            else:
                assert rounds == 0, case
        # the packed layout is what was asked for and what came: four elements to a leaf word
        sized = iter(requests)
        for (shape, ts, _), _ in cases:
            elems = torch.Size(shape).numel()
            if not elems:
                continue
            kind, params, derived = next(sized)
            assert params[:2] == (elems, len(ts)) and params[2] & CMP_LANES
            assert derived[1] == (len(bf.LEAF_MONOS), -(-elems // 4))


def test_hash_stays_by_identity():
    assert SecretTensor.__hash__ is not None
