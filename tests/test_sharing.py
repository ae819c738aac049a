"""Thread tier: sharing inputs and opening them; what each party receives; desync detection.

Tolerances: ``share`` encodes a real ``v`` as ``round(v 2^16)`` and ``reveal``
decodes it exactly (float64 holds every ring value of the documented range), so
a revealed float64 must equal ``round(v 2^16) / 2^16`` exactly, which is within
half a unit in the last place (2^-17) of ``v``.  Integers and booleans are exact.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
import types

import pytest
import torch

import mpc
from mpc.config import MPCConfig
from mpc.dtypes import DTYPE_CODES
from mpc.errors import ConfigError, DesyncError, EncodingError, PeerAborted, ProtocolError
from mpc.shares import AdditiveShare, holds_public
from parties import wire
from parties.memory import MemoryCommunicator, MemoryHub
from parties.party import setup_party
from protocols.sharing import recv_metadata

ULP = 2.0**-16
PARTY_COUNTS = [2, 3, 5]


def _value(rank: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + rank)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 1000).to(dtype)
    lo = 0 if dtype == torch.uint8 else max(-1000, torch.iinfo(dtype).min)
    hi = min(1000, torch.iinfo(dtype).max)
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


def _expected(v: torch.Tensor) -> torch.Tensor:
    """What an exact fixed-point round trip gives: v rounded to the 2^-16 grid, in v's dtype."""
    if v.dtype.is_floating_point:
        return (torch.round(v.double() * 2**16) / 2**16).to(v.dtype)
    return v.clone()


def _round_trip(ctx, dtype, shape):
    n = ctx.world_size
    xs = [mpc.share(_value(k, dtype, shape) if ctx.rank == k else None, owner=k) for k in range(n)]
    opened = [x.reveal() for x in xs]
    to_each = [[x.reveal(to=k) for k in range(n)] for x in xs]
    return opened, to_each, [x.dtype for x in xs], [tuple(x.shape) for x in xs]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", PARTY_COUNTS)
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]
)
def test_share_reveal_round_trip(sim, n, dtype):
    shapes = [(), (7,), (2, 3, 4)] if n != 5 else [(2, 3)]
    for shape in shapes:
        results = sim(functools.partial(_round_trip, dtype=dtype, shape=shape), n)
        for rank, (opened, to_each, dtypes, got_shapes) in enumerate(results):
            for k in range(n):
                want = _expected(_value(k, dtype, shape))
                assert dtypes[k] == dtype and got_shapes[k] == shape  # public metadata travels
                assert opened[k].dtype == dtype and torch.equal(opened[k], want), (rank, k)
                for target in range(n):
                    got = to_each[k][target]
                    if rank == target:
                        assert got is not None and got.dtype == dtype and torch.equal(got, want)
                    else:
                        assert got is None
        if dtype.is_floating_point:  # the stated tolerance against the original value
            v = _value(0, dtype, shape).double()
            tol = 0.5 * ULP if dtype == torch.float64 else 0.5 * ULP + v.abs() * 2.0**-24
            assert bool(((results[0][0][0].double() - v).abs() <= tol).all())


@pytest.mark.timeout(30)
def test_share_python_scalars_and_empty_tensors(sim):
    def prog(ctx):
        a = mpc.share(2.5 if ctx.rank == 0 else None, owner=0)
        b = mpc.share(7 if ctx.rank == 1 else None, owner=1)
        c = mpc.share(torch.empty(0, 3) if ctx.rank == 0 else None, owner=0)
        return a.reveal(), b.reveal(), c.reveal(), a.dtype, b.dtype

    a, b, c, da, db = sim(prog, 2)[1]
    assert float(a) == 2.5 and int(b) == 7 and c.shape == (0, 3)
    assert da == torch.float32 and db == torch.int64  # torch.as_tensor's dtypes


# ----- refusals ------------------------------------------------------------------------------------


def _frames(received: dict[int, list]) -> dict[int, list[tuple[int, wire.Header, bytes]]]:
    return {r: [(s, wire.decode_header(h, 1 << 40), p) for s, h, p in frames] for r, frames in received.items()}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([1.0, float("nan")]),
        torch.tensor([float("inf"), 0.0]),
        torch.tensor([0.0, -float("inf")], dtype=torch.float64),
        torch.tensor([1.5e9, 1.0], dtype=torch.float64),
        torch.tensor([-(2.0**30), 1.0], dtype=torch.float64),
        torch.tensor([2**31, 5], dtype=torch.int64),
    ],
    ids=["nan", "inf", "-inf", "1.5e9", "-2^30", "int 2^31"],
)
def test_owner_refuses_unencodable_input_before_sending(sim, n, bad):
    owner = n - 1

    def prog(ctx):
        x = mpc.share(bad if ctx.rank == owner else None, owner=owner)
        return x.reveal()

    received: dict[int, list] = {}
    with pytest.raises(EncodingError) as err:
        sim(prog, n, received=received)
    msg = str(err.value)
    assert f"input of party {owner}" in msg
    finite = bool(torch.isfinite(bad.double()).all())
    leaks = [str(int(bad.abs().max())), f"{float(bad.abs().max()):g}"] if finite else []
    if finite:
        assert "|v| < 2^30" in msg and "frac_bits=16" in msg
        assert not any(text in msg for text in leaks)  # never the value itself
    else:
        assert "NaN or infinity" in msg
    assert any(f"party {owner}" in note for note in getattr(err.value, "__notes__", []))
    # Nothing of the input left the owner: after setup it sent nothing but the abort notice.
    frames = _frames(received)
    for rank, got in frames.items():
        for sender, h, payload in got:
            if sender == owner:
                assert h.op in ("setup", "setup:nonce") or h.kind == wire.KIND_ABORT, (rank, h)
            assert h.op != "share"
            if h.kind == wire.KIND_ABORT:
                assert not any(text.encode() in payload for text in leaks)
    # Its abort notice reached the others (some may have stopped first on another party's echo of it).
    assert any(s == owner and h.kind == wire.KIND_ABORT for r in range(n) if r != owner for s, h, _ in frames[r])


@pytest.mark.timeout(30)
def test_non_owner_passing_a_tensor_is_refused(sim):
    def prog(ctx):
        return mpc.share(torch.ones(3), owner=0).reveal()  # party 1 wrongly passes its tensor too

    received: dict[int, list] = {}
    with pytest.raises(ProtocolError, match=r"party 1 is not the owner \(owner=0\) and must pass None") as err:
        sim(prog, 2, received=received)
    assert "(raised in party 1)" in err.value.__notes__
    # Party 1 refused before sending anything of its tensor.
    assert all(
        h.op in ("setup", "setup:nonce") or h.kind == wire.KIND_ABORT for s, h, _ in _frames(received)[0] if s == 1
    )


@pytest.mark.timeout(30)
def test_owner_passing_none_is_refused(sim):
    def prog(ctx):
        return mpc.share(None, owner=1).reveal()

    with pytest.raises(ProtocolError, match="party 1 is the owner and must pass a tensor"):
        sim(prog, 3)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("owner", [-1, 3, 17, 1.0, "0", None, True])
def test_bad_owner_ids(sim, owner):
    def prog(ctx):
        return mpc.share(torch.ones(2) if ctx.rank == 0 else None, owner=owner)

    with pytest.raises(ProtocolError, match=r"owner must be a party id in 0\.\.2") as err:
        sim(prog, 3)
    assert repr(owner) in str(err.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("to", [-1, 2, 1.0, "1", True])
def test_bad_reveal_targets(sim, to):
    def prog(ctx):
        return mpc.share(torch.ones(2) if ctx.rank == 0 else None, owner=0).reveal(to=to)

    with pytest.raises(ProtocolError, match=r"reveal target must be a party id in 0\.\.1"):
        sim(prog, 2)


@pytest.mark.timeout(30)
def test_unsupported_inputs(sim):
    def complex_input(ctx):
        return mpc.share(torch.ones(2, dtype=torch.complex64) if ctx.rank == 0 else None, owner=0)

    with pytest.raises(ProtocolError, match="dtype"):
        sim(complex_input, 2)

    def too_many_dims(ctx):
        return mpc.share(torch.ones((1,) * 17) if ctx.rank == 0 else None, owner=0)

    with pytest.raises(ProtocolError, match="16 dimensions"):
        sim(too_many_dims, 2)

    with pytest.raises(ProtocolError, match="no party context"):
        mpc.share(torch.ones(2), owner=0)  # outside any party


# ----- what each party receives --------------------------------------------------------------------


def _reveal_to(ctx, k: int, to_all: bool):
    x = mpc.share(torch.tensor([3.25, -7.5, 1e6, 0.0]) if ctx.rank == 0 else None, owner=0)
    y = mpc.share(torch.tensor([2.0, 0.5, -1.0, 4.0]) if ctx.rank == 1 else None, owner=1)
    z = x * y + x
    out = z.reveal() if to_all else z.reveal(to=k)
    return out, z.share.data.clone()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", PARTY_COUNTS)
def test_reveal_to_one_party_sends_nothing_to_the_others(sim, n):
    want = torch.tensor([3.25 * 2 + 3.25, -7.5 * 0.5 - 7.5, -1e6 + 1e6, 0.0])
    for k in range(n):
        received: dict[int, list] = {}
        results = sim(functools.partial(_reveal_to, k=k, to_all=False), n, received=received)
        frames = _frames(received)
        shares = [r[1] for r in results]
        for j in range(n):
            reveal_frames = [(s, h, p) for s, h, p in frames[j] if h.op == "reveal"]
            if j != k:
                assert results[j][0] is None
                # only the recipient's empty frame (it carries the transcript digest, no payload)
                assert [(s, len(p)) for s, _, p in reveal_frames] == [(k, 0)], (
                    f"party {j} received a share of the value revealed to party {k}"
                )
                continue
            assert torch.allclose(results[j][0].double(), want.double(), atol=4 * ULP)
            # Party k received exactly each other party's share, one frame each, and nothing more.
            assert sorted(s for s, _, _ in reveal_frames) == [i for i in range(n) if i != k]
            for s, h, p in reveal_frames:
                assert h.kind == wire.KIND_DATA and h.shape == (4,) and h.dtype == torch.int64
                assert torch.equal(wire.decode_payload(h, p), shares[s])
        # The dealer never receives any reveal traffic, nor anything from a party but requests.
        for s, h, _ in frames[n]:
            assert h.op.startswith(("corr:", "setup")) or h.kind == wire.KIND_BYE, h
            assert s == n - 1 or h.op in ("setup", "setup:nonce") or h.kind == wire.KIND_BYE


@pytest.mark.timeout(30)
def test_reveal_check_detects_an_open_to_all(sim):
    """Control for the test above: with reveal() to all, every party does receive reveal frames."""
    received: dict[int, list] = {}
    sim(functools.partial(_reveal_to, k=0, to_all=True), 3, received=received)
    frames = _frames(received)
    for j in range(3):
        assert sorted(s for s, h, _ in frames[j] if h.op == "reveal") == [i for i in range(3) if i != j]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [2, 3])
def test_sharing_sends_only_public_metadata(sim, n):
    """The owner sends each other party its input's dtype and shape and no byte that depends on the value."""

    def prog(ctx, v):
        return mpc.share(v if ctx.rank == 0 else None, owner=0).share

    seen = []
    for v in (torch.zeros(2, 3), torch.full((2, 3), 1234.5), torch.randn(2, 3)):
        received: dict[int, list] = {}
        sim(functools.partial(prog, v=v), n, received=received)
        frames = _frames(received)
        payloads = []
        for j in range(1, n):
            share_frames = [(s, h, p) for s, h, p in frames[j] if h.op == "share"]
            assert [s for s, _, _ in share_frames] == [0]
            (_, h, p) = share_frames[0]
            meta = wire.decode_payload(h, p).tolist()
            assert meta == [DTYPE_CODES[torch.float32], 2, 2, 3]  # float32 code, two dimensions, shape (2, 3)
            payloads.append(p)
        seen.append(payloads)
    assert seen[0] == seen[1] == seen[2]


# ----- shares are indistinguishable ----------------------------------------------------------------

# Two-sample tests at overall significance ALPHA (Bonferroni over 64 bit tests and 2 KS tests).
ALPHA = 1e-6
_TESTS = 66
_Z_CRIT = 5.66  # two-sided normal quantile for ALPHA / _TESTS = 1.5e-8
_KS_C = math.sqrt(-0.5 * math.log(ALPHA / _TESTS / 2))


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Ring elements as unsigned values scaled into [0, 1) (53 top bits)."""
    return ((x >> 11) & ((1 << 53) - 1)).double() / 2.0**53


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.sort(a).values, torch.sort(b).values
    pts = torch.cat([a, b])
    fa = torch.searchsorted(a, pts, right=True).double() / a.numel()
    fb = torch.searchsorted(b, pts, right=True).double() / b.numel()
    return float((fa - fb).abs().max())


def distinguish(a: torch.Tensor, b: torch.Tensor) -> list[str]:
    """The tests (out of 66) that tell samples ``a`` and ``b`` of ring elements apart."""
    a, b = a.reshape(-1), b.reshape(-1)
    na, nb = a.numel(), b.numel()
    failed = []
    for bit in range(64):
        pa = float(((a >> bit) & 1).double().mean())
        pb = float(((b >> bit) & 1).double().mean())
        p = (pa * na + pb * nb) / (na + nb)
        var = p * (1 - p) * (1 / na + 1 / nb)
        if (var == 0 and pa != pb) or (var > 0 and abs(pa - pb) / math.sqrt(var) > _Z_CRIT):
            failed.append(f"bit {bit}: {pa:.4f} vs {pb:.4f}")
    crit = _KS_C * math.sqrt((na + nb) / (na * nb))
    for name, fa, fb in [
        ("value", _unit(a), _unit(b)),
        ("low 32 bits", (a & 0xFFFFFFFF).double(), (b & 0xFFFFFFFF).double()),
    ]:
        d = _ks(fa, fb)
        if d > crit:
            failed.append(f"KS on {name}: D={d:.4f} > {crit:.4f}")
    return failed


def _leaky_share(ctx, value, owner: int, flaw: str) -> mpc.SecretTensor:
    """Deliberately broken sharings of a (SAMPLES_PER_RUN,) input; still correct (they open right)."""
    shape = (SAMPLES_PER_RUN,)
    mine = [j for j in range(ctx.world_size) if j != owner] if ctx.rank == owner else [ctx.rank]
    masks = {}
    for j in mine:
        if flaw == "plain":  # the owner's "share" is the encoded value itself
            masks[j] = torch.zeros(shape, dtype=torch.int64)
        elif flaw == "constant":  # x - c for a fixed c
            masks[j] = torch.full(shape, 0x5DEECE66D * (j + 1), dtype=torch.int64)
        elif flaw == "short mask":  # pseudo-random masks of 32 bits instead of 64
            masks[j] = ctx.pair_prgs[j if ctx.rank == owner else owner].int64(shape) & 0xFFFFFFFF
        else:
            raise AssertionError(flaw)
    if ctx.rank == owner:
        share = ctx.encoder.encode(value) - sum(masks.values())
    else:
        share = masks[ctx.rank]
    return mpc.SecretTensor(ctx, AdditiveShare(share, holds_public(ctx.rank)), torch.float32)


SAMPLES_PER_RUN = 2000
RUNS = 15
INPUTS = (0.0, 30000.5)  # x * x stays in range for both


def _collect(sim, n: int, value: float, flaw: str | None):
    def prog(ctx):
        v = torch.full((SAMPLES_PER_RUN,), value) if ctx.rank == 0 else None
        x = mpc.share(v, owner=0) if flaw is None else _leaky_share(ctx, v, 0, flaw)
        y = x * x if flaw is None else x  # a product's output shares, too
        opened = x.reveal()
        return x.share.data, y.share.data, opened

    per_party: list[list[torch.Tensor]] = [[] for _ in range(n)]
    products: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for _ in range(RUNS):
        for rank, (s, p, opened) in enumerate(sim(prog, n)):
            assert torch.allclose(opened.double(), torch.full_like(opened.double(), value), atol=ULP)
            per_party[rank].append(s)
            products[rank].append(p)
    return [torch.cat(s) for s in per_party], [torch.cat(p) for p in products]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_shares_of_different_inputs_are_indistinguishable(sim, n):
    (a, a_prod), (b, b_prod) = (_collect(sim, n, v, None) for v in INPUTS)
    for rank in range(n):  # the owner's share is x - masks, the others' the masks themselves
        assert distinguish(a[rank], b[rank]) == [], f"party {rank}'s share of an input depends on it"
        assert distinguish(a_prod[rank], b_prod[rank]) == [], f"party {rank}'s share of x*x depends on x"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flaw", ["plain", "constant", "short mask"])
def test_indistinguishability_check_detects_broken_sharings(sim, flaw):
    n = 3
    (a, _), (b, _) = (_collect(sim, n, v, flaw) for v in INPUTS)
    assert distinguish(a[0], b[0]) != [], f"the statistical test missed a {flaw!r} sharing"
    # Fairness: shares of the same input are not told apart, even with a broken sharing.
    (a2, _) = _collect(sim, n, INPUTS[0], flaw)
    assert distinguish(a[0], a2[0]) == []


# ----- desync ---------------------------------------------------------------------------------------


def _desync(ctx, case: str):
    x = mpc.share(torch.arange(6.0) if ctx.rank == 0 else None, owner=0)
    y = mpc.share(torch.ones(6) if ctx.rank == 1 else None, owner=1)
    if case == "programs":
        return (x * y).reveal() if ctx.rank == 0 else x.reveal()
    if case == "shapes":
        return x[: 2 if ctx.rank == 0 else 3].reveal()
    if case == "transposed":  # same size, other shape: adding mismatched elements would be garbage
        a = x.reshape(2, 3)
        return (a if ctx.rank == 0 else a.t()).reveal()
    if case == "matmul shapes":
        a = x.reshape(2, 3) if ctx.rank == 0 else x.reshape(3, 2)
        return (a @ a.t()).reveal()
    if case == "ends early":
        x.reveal()
        return x.reveal() if ctx.rank == 0 else None
    if case == "extra send":
        x.reveal()
        return x.reveal(to=0) if ctx.rank == 1 else None
    raise AssertionError(case)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "case,expected",
    [
        ("programs", [r"diverge at operation #3", r"mul\(secret", r"reveal\(secret"]),
        ("shapes", [r"diverge at operation #3", r"slice\(None, 2, None\)", r"slice\(None, 3, None\)"]),
        ("transposed", [r"diverge at operation #4", r"t\(secret\(2, 3\)", r"reveal\(secret\(2, 3\)"]),
        ("matmul shapes", [r"diverge at operation #3", r"reshape\(secret\(6,\):float32, 2, 3\)", "3, 2"]),
        ("ends early", [r"diverge at operation #4", "party 1 had no such operation", r"reveal\(secret"]),
        ("extra send", [r"diverge at operation #4", "party 0 had no such operation", r"reveal\(secret"]),
    ],
)
@pytest.mark.parametrize("n", [2, 3])
def test_desync_is_detected_and_names_both_sides(sim, case, expected, n):
    start = time.monotonic()
    with pytest.raises(DesyncError) as err:
        sim(functools.partial(_desync, case=case), n, timeout=20.0)
    elapsed = time.monotonic() - start
    msg = str(err.value)
    for pattern in expected:
        assert re.search(pattern, msg), (pattern, msg)
    assert err.value.peer is not None and f"party {err.value.peer}" in msg
    assert elapsed < 10.0, "a desync must be found when the message arrives, not at the timeout"


@pytest.mark.timeout(30)
def test_party_exception_is_reraised_with_its_rank(sim):
    def prog(ctx):
        x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
        if ctx.rank == 2:
            raise KeyError("boom in the user's code")
        return x.reveal()

    with pytest.raises(KeyError, match="boom") as err:
        sim(prog, 3)
    assert "(raised in party 2)" in err.value.__notes__


@pytest.mark.timeout(30)
def test_parties_with_different_options_are_refused_at_setup():
    hub = MemoryHub(2)
    comms = [MemoryCommunicator(hub, r, 10.0, 1 << 30) for r in range(3)]
    configs = [MPCConfig(frac_bits=16, timeout=10), MPCConfig(frac_bits=12, timeout=10)]
    errors: dict[int, BaseException] = {}

    def party(r):
        try:
            setup_party(comms[r], configs[r])
        except Exception as exc:  # noqa: BLE001 - inspected below
            errors[r] = exc
            comms[r].abort(type(exc).__name__)

    threads = [threading.Thread(target=party, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert isinstance(errors.get(0), ConfigError) and "party 1 runs with different options" in str(errors[0])
    assert isinstance(errors.get(1), ConfigError | PeerAborted)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shape", [(2048, 2048), (1 << 40,), (0, 1 << 40), (1 << 20, 0, 1 << 20)])
def test_a_declared_input_shape_over_the_limit_is_refused_before_allocating(shape):
    """The owner's declared shape is checked against the receiver's limit; a zero dimension hides nothing."""
    meta = torch.tensor([DTYPE_CODES[torch.float32], len(shape), *shape], dtype=torch.int64)
    ctx = types.SimpleNamespace(
        comm=types.SimpleNamespace(exchange=lambda op, sends, recvs: {0: meta}),
        config=MPCConfig(max_message_bytes=1 << 20),
    )
    with pytest.raises(ProtocolError, match=r"party 0 declared an input of shape .* over this party's 1048576-byte"):
        recv_metadata(ctx, 0)
    ok = torch.tensor([DTYPE_CODES[torch.float32], 2, 0, 8], dtype=torch.int64)
    ctx.comm.exchange = lambda op, sends, recvs: {0: ok}
    assert recv_metadata(ctx, 0) == ((0, 8), torch.float32)


@pytest.mark.timeout(30)
def test_a_header_with_a_zero_dimension_is_still_size_checked():
    header = wire.encode_header(wire.KIND_DATA, 1, 0, "x", torch.int64, (0, 1 << 40), 0)
    with pytest.raises(mpc.WireError, match="over the 1048576-byte message limit"):
        wire.decode_header(header, 1 << 20, 1)
