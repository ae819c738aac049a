"""Secure by default: sealed-link refusals, CSPRNG only, what each party receives, the wire, the output policy.

* Sealed links over real ZeroMQ tcp:// (``parties.seal``): a key that does not
  match is refused at the first hello, at once and at both ends (nothing gets
  through); a forged, a replayed and a reordered frame are each refused with
  an error that says which; an authenticated peer can neither claim another
  sender nor slip a hostile frame through: every such frame is an error naming
  the key's owner.
* Randomness: with every non-cryptographic generator of torch, numpy and
  ``random`` made to raise, the protocols still run (they draw from
  ``os.urandom`` and AES-CTR only).
* Secrecy (thread tier, ``received=``): in two small workloads no party (nor
  the dealer) receives the encoding of a value it does not learn; the frames it
  receives have the same metadata whatever the inputs, are statistically
  indistinguishable between two input sets, and change from run to run.
* A wire tap between two parties: on sealed links the bytes on the link hold
  no header and no payload; with ``--insecure`` they hold both (control).
* Output policy: every reveal is logged with its recipient and shape, never
  with a value or a share.

Every check comes with a control that shows it can fail.
"""

from __future__ import annotations

import logging
import math
import random
import re
import select
import socket
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from raw_peer import RawPeer

import mpc
from mpc.config import MPCConfig
from mpc.context import Expect
from mpc.errors import DesyncError, SecurityError, WireError
from mpc.fixedpoint import FixedPoint
from parties import wire, zmq_comm
from parties.keys import ephemeral_keys
from parties.ports import Listeners
from parties.simulator import run_threads
from parties.zmq_comm import NodeKeys, ZmqCommunicator

ENC = FixedPoint(16)
_FMT = struct.Struct("<4sBBBBIQQ32s16qQ8s8sIQ")  # the header layout parties/wire.py documents


def _header(sender=1, seq=0, op="x", shape=(2,), **fields: Any) -> bytes:
    """A data header for an int64 tensor; ``fields`` overwrite raw header fields (magic, version, code, nbytes)."""
    n = 1
    for d in shape:
        n *= d
    f = list(_FMT.unpack(wire.encode_header(wire.KIND_DATA, sender, seq, op, torch.int64, shape, 8 * n)))
    for name, value in fields.items():
        f[{"magic": 0, "version": 1, "code": 3, "nbytes": 7}[name]] = value
    return _FMT.pack(*f)


# ----- 1. sealed links over tcp:// ------------------------------------------------------------------


def _keys(keys: list[tuple[bytes, bytes]], node: int, own: tuple[bytes, bytes] | None = None) -> NodeKeys:
    """Node ``node``'s keys for the cluster ``keys``; ``own`` replaces the key pair it really uses."""
    public, secret = own or keys[node]
    return NodeKeys(public, secret, tuple(k[0] for k in keys))


@pytest.fixture
def no_linger(monkeypatch):
    # These communicators queue frames for peers that never come; the default close linger would make
    # every close wait 2 s for them.
    monkeypatch.setattr(zmq_comm, "CLOSE_LINGER_MS", 0)


@pytest.fixture
def authenticated_link(no_linger):
    """Party 0's communicator and a raw peer that speaks to it with party 1's real keys, handshake done."""
    keys = ephemeral_keys(3)
    with Listeners(3) as ls:  # party 0 and the raw peer adopt the ports bound here; nobody listens for the dealer
        addrs, fd0, fd1 = ls.addresses, ls.take(0), ls.take(1)
    c0 = ZmqCommunicator(0, 2, addrs, MPCConfig(timeout=5.0), keys=_keys(keys, 0), listen_fd=fd0)
    raw = None
    try:
        raw = RawPeer(1, keys, addrs[1], 0, addrs[0], fd1)
        raw.handshake()
        yield c0, raw
    finally:
        if raw is not None:
            raw.close()
        c0.abort("test over")


@pytest.mark.timeout(30)
def test_wrong_keys_are_refused_at_the_first_hello_and_nothing_gets_through(no_linger):
    keys = ephemeral_keys(3)  # party 0, party 1, dealer
    (intruder_keys,) = ephemeral_keys(1)
    # Party 0 and the intruder adopt the ports bound here; nobody listens at the dealer's address.
    with Listeners(3) as ls:
        addrs, fd0, fd1 = ls.addresses, ls.take(0), ls.take(1)
    got: list = []
    c0 = ZmqCommunicator(
        0,
        2,
        addrs,
        MPCConfig(timeout=10.0),
        keys=_keys(keys, 0),
        recorder=lambda *f: got.append(f),
        listen_fd=fd0,
    )
    intruder = None
    try:
        # The intruder poses as party 1 (it knows the cluster's public keys) with a key pair of its own.
        intruder = ZmqCommunicator(
            1, 2, addrs, MPCConfig(timeout=10.0), keys=_keys(keys, 1, own=intruder_keys), listen_fd=fd1
        )
        # Each side checks the other's hello at its first receive: both refuse at once, naming the other.
        start = time.monotonic()
        with pytest.raises(SecurityError, match="the hello of party 1 does not verify at party 0: the keys do not"):
            c0.recv(1, "x", Expect((2,)))
        with pytest.raises(SecurityError, match="the hello of party 0 does not verify at party 1: the keys do not"):
            intruder.recv(0, "x", Expect((2,)))
        assert time.monotonic() - start < 5.0, "a refused hello must be reported at once, not at the timeout"
        # Sending on the refused link fails the same way, at once, instead of blocking until the timeout.
        with pytest.raises(SecurityError, match="the hello of party 0 does not verify at party 1"):
            intruder.send(0, "y", torch.zeros(2, dtype=torch.int64))
        assert time.monotonic() - start < 5.0
        assert got == [] and not c0._seal.ready(1) and not intruder._seal.ready(0)
    finally:
        if intruder is not None:
            intruder.abort("test over")
        c0.abort("test over")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("claimed,name", [(2, "the dealer"), (0, "party 0")])
def test_authenticated_peer_cannot_claim_another_sender(authenticated_link, claimed, name):
    c0, raw = authenticated_link  # raw holds party 1's real keys
    raw.send(_header(sender=claimed), struct.pack("<2q", 5, 6))
    with pytest.raises(SecurityError) as err:
        c0.recv(1, "x", Expect((2,)))
    assert str(err.value) == f"a frame claims to come from {name} but was sent with the key of party 1"
    # Control: the same authenticated peer, naming itself, is accepted.
    raw.send(_header(sender=1), struct.pack("<2q", 7, -8))
    assert c0.recv(1, "x", Expect((2,))).tolist() == [7, -8]


_HOSTILE = {
    "wrong magic": ([_header(magic=b"HTTP"), bytes(16)], WireError, r"party 1 sent a frame with a wrong magic"),
    "wrong version": ([_header(version=1), bytes(16)], WireError, r"party 1 speaks wire version 1"),
    # Version 3 drew the dealer's correlations from other sub-seeds: mixed with this version it would be wrong.
    "previous version": ([_header(version=3), bytes(16)], WireError, r"party 1 speaks wire version 3, .* speaks 4"),
    "payload length": ([_header(), bytes(15)], WireError, r"party 1 sent 15 payload bytes for 'x'.*declared 16"),
    "forbidden dtype": ([_header(code=42), bytes(16)], WireError, r"party 1 sent a payload of forbidden dtype code 42"),
    # 8 TiB declared (consistently with the shape), 16 bytes sent: refused on the header, before any allocation.
    "huge shape": (
        [_header(shape=(1 << 40,)), bytes(16)],
        WireError,
        r"party 1 declared a tensor of shape \(1099511627776,\).*over the \d+-byte message limit",
    ),
    "unexpected op": ([_header(op="mul"), bytes(16)], DesyncError, r"party 1 sent 'mul'.*party 0 expected 'x'"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(_HOSTILE))
def test_hostile_frames_from_an_authenticated_peer(authenticated_link, case):
    frames, error, match = _HOSTILE[case]
    c0, raw = authenticated_link
    # Each refusal names the peer.  What a refusal costs in memory (RSS, under floods and oversized frames)
    # is measured in tests/test_memory_bounds.py.
    raw.send(*frames)
    with pytest.raises(error, match=match) as err:
        c0.recv(1, "x", Expect((2,)))
    assert err.value.peer == 1


def _sealed_refusal(c0, raw, attack: str) -> SecurityError:
    """Party 1 sends frames 'a' and 'b', then a 'c' that is ``attack``ed; party 0's receive of 'c' refuses it."""
    frames = [raw.seal(_header(seq=i, op=op), struct.pack("<2q", i, -i)) for i, op in enumerate("abc")]
    raw.send_raw(*frames[0])
    raw.send_raw(*frames[1])
    assert c0.recv(1, "a", Expect((2,))).tolist() == [0, 0]
    assert c0.recv(1, "b", Expect((2,))).tolist() == [1, -1]
    if attack == "replayed":
        raw.send_raw(*frames[0])
    else:
        head, body = frames[2]
        raw.send_raw(head, body[:5] + bytes([body[5] ^ 1]) + body[6:])  # one bit of the payload changed
    with pytest.raises(SecurityError) as err:
        c0.recv(1, "c", Expect((2,)))
    return err.value


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "attack,match",
    [
        ("forged", r"^a frame that claims to come from party 1 does not authenticate at party 0 \(forged"),
        ("replayed", r"^party 1 sent frame #1 after frame #2, and #1 was accepted before .*\(replayed\)"),
        ("reordered", r"^party 1 sent frame #2 after frame #3, and #2 was skipped \(reordered\)"),
    ],
)
def test_forged_replayed_and_reordered_frames_are_refused_on_a_real_link(authenticated_link, attack, match):
    c0, raw = authenticated_link
    if attack == "reordered":
        raw.send_raw(*raw.seal(_header(seq=0, op="a"), struct.pack("<2q", 0, 0)))
        skipped = raw.seal(_header(seq=1, op="b"), struct.pack("<2q", 1, -1))
        raw.send_raw(*raw.seal(_header(seq=2, op="c"), struct.pack("<2q", 2, -2)))
        raw.send_raw(*skipped)
        assert c0.recv(1, "a", Expect((2,))).tolist() == [0, 0]
        with pytest.raises(SecurityError, match=match):
            c0.recv(1, "b", Expect((2,)))  # frame #3 ('c') is held for later; #2 is refused when it comes
        return
    err = _sealed_refusal(c0, raw, attack)
    assert re.match(match, str(err)), str(err)
    # Every later call fails the same way: nothing goes on over a link that was attacked.
    with pytest.raises(SecurityError, match=match):
        c0.send(1, "d", torch.zeros(2, dtype=torch.int64))


# ----- 2. only cryptographic randomness --------------------------------------------------------------

_WEAK_RNGS: list[tuple[Any, list[str]]] = [
    (
        torch,
        "rand randn randint randperm rand_like randint_like randn_like bernoulli multinomial normal poisson "
        "manual_seed seed Generator".split(),
    ),
    (torch.Tensor, "random_ uniform_ normal_ bernoulli_ exponential_ geometric_ cauchy_ log_normal_".split()),
    (
        np.random,
        "default_rng RandomState random rand randn randint bytes seed choice shuffle permutation uniform normal "
        "random_sample".split(),
    ),
    (
        random,
        "random randint randrange choice choices shuffle sample uniform gauss getrandbits randbytes seed".split(),
    ),
]


def _forbid_weak_rngs(monkeypatch) -> list[str]:
    """Make every non-cryptographic generator raise; returns the list of those called (in any thread)."""
    calls: list[str] = []
    for owner, names in _WEAK_RNGS:
        for name in names:
            label = f"{getattr(owner, '__name__', owner)}.{name}"

            def boom(*args, _label=label, **kwargs):
                calls.append(_label)
                raise AssertionError(f"{_label} called: protocols must draw from os.urandom / AES-CTR only")

            monkeypatch.setattr(owner, name, boom)
    return calls


@pytest.mark.timeout(30)
def test_weak_generators_are_really_patched(sim, monkeypatch):
    """Control: under the patch, a party that draws from torch.rand fails, and the call is recorded."""
    calls = _forbid_weak_rngs(monkeypatch)

    def prog(ctx):
        x = mpc.share(torch.rand(3) if ctx.rank == 0 else None, owner=0)
        return x.reveal()

    with pytest.raises(AssertionError, match="torch.rand called") as err:
        sim(prog, 2)
    assert "(raised in party 0)" in err.value.__notes__
    assert calls == ["torch.rand"]
    for draw in (np.random.default_rng, np.random.RandomState, random.random, torch.zeros(2).uniform_, torch.Generator):
        with pytest.raises(AssertionError, match="called"):
            draw()
    monkeypatch.undo()
    assert torch.rand(2).shape == (2,)


def _all_ops(ctx, inputs):
    n = ctx.world_size
    a = mpc.share(inputs["a"] if ctx.rank == 0 else None, owner=0)
    b = mpc.share(inputs["b"] if ctx.rank == n - 1 else None, owner=n - 1)
    img = mpc.share(inputs["img"] if ctx.rank == 0 else None, owner=0)
    ker = mpc.share(inputs["ker"] if ctx.rank == n - 1 else None, owner=n - 1)
    d = a - b
    out = {
        "add": a + b,
        "mul": a * b,
        "matmul": a @ b.t(),
        "conv2d": mpc.conv2d(img, ker, padding=1),
        "square": a.square(),
        "scale": a * 0.37,
        "gt": a > b,
        "relu": d.relu(),
        "max": a.max(dim=1).values,
        "sigmoid": d.sigmoid(),
        "exp": d.exp(),
        "reciprocal": a.reciprocal(),
        "softmax": d.softmax(1),
    }
    opened = {k: v.reveal() for k, v in out.items()}
    opened["to 1"] = (a * b).reveal(to=1)
    return opened


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_protocols_use_no_weak_randomness(sim, monkeypatch, n):
    g = torch.Generator().manual_seed(7)  # test data only, made before the patch
    inputs = {
        "a": torch.rand(3, 4, generator=g, dtype=torch.float64) * 1.5 + 0.5,
        "b": torch.rand(3, 4, generator=g, dtype=torch.float64) * 1.5 + 0.5,
        "img": torch.randn(1, 1, 5, 5, generator=g, dtype=torch.float64),
        "ker": torch.randn(1, 1, 3, 3, generator=g, dtype=torch.float64),
    }
    a, b, d = inputs["a"], inputs["b"], inputs["a"] - inputs["b"]
    want = {
        "add": a + b,
        "mul": a * b,
        "matmul": a @ b.t(),
        "conv2d": torch.nn.functional.conv2d(inputs["img"], inputs["ker"], padding=1),
        "square": a * a,
        "scale": a * 0.37,
        "gt": (a > b).double(),
        "relu": d.clamp(min=0),
        "max": a.max(dim=1).values,
        "sigmoid": torch.sigmoid(d),
        "exp": torch.exp(d),
        "reciprocal": 1 / a,
        "softmax": torch.softmax(d, 1),
    }
    calls = _forbid_weak_rngs(monkeypatch)
    results = sim(lambda ctx: _all_ops(ctx, inputs), n)
    assert calls == []
    monkeypatch.undo()
    for rank, opened in enumerate(results):
        for k, v in want.items():
            assert torch.allclose(opened[k].double(), v, rtol=1e-2, atol=1e-2), (rank, k)
        assert (opened["to 1"] is None) == (rank != 1)
    assert torch.allclose(results[1]["to 1"].double(), a * b, atol=1e-3)


# ----- 3. what each party receives -------------------------------------------------------------------


def _signed(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    mag = torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
    return mag * (torch.randint(0, 2, shape, generator=g) * 2 - 1)


@dataclass(frozen=True)
class _Workload:
    """A computation with two input owners: who owns which input, who learns the output."""

    inputs: Callable[[int], dict[str, torch.Tensor]]  # seed -> inputs
    program: Callable  # (ctx, inputs) -> (revealed, {name: share}) for every input and intermediate
    owners: dict[str, int]
    revealed_to: dict[str, int]  # one output
    oracle: Callable[[dict[str, torch.Tensor]], torch.Tensor]  # inputs -> the revealed output in plaintext

    def learns(self, node: int) -> set[str]:
        return {k for k, r in {**self.owners, **self.revealed_to}.items() if r == node}


def _inference_inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"X": _signed(g, (8, 16), 0.5, 3.0), "W": _signed(g, (16, 4), 0.5, 3.0)}


def _inference(ctx, inp):
    x = mpc.share(inp["X"] if ctx.rank == 0 else None, owner=0)
    w = mpc.share(inp["W"] if ctx.rank == 1 else None, owner=1)
    xw = x @ w
    y = xw.relu()
    return y.reveal(to=0), {"X": x.share.data, "W": w.share.data, "X@W": xw.share.data, "y": y.share.data}


def _logreg_inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # w is smaller so that X @ w stays mostly inside sigmoid's non-saturated range (p is then worth hiding).
    return {
        "X": _signed(g, (16, 8), 0.5, 3.0),
        "labels": torch.randint(0, 2, (16, 1), generator=g).double(),
        "w": _signed(g, (8, 1), 0.25, 0.75),
    }


def _logreg(ctx, inp):
    x = mpc.share(inp["X"] if ctx.rank == 0 else None, owner=0)
    lab = mpc.share(inp["labels"] if ctx.rank == 0 else None, owner=0)
    w = mpc.share(inp["w"] if ctx.rank == 1 else None, owner=1)
    xw = x @ w
    p = xw.sigmoid()
    d = p - lab
    g = (x.t() @ d) / 16
    shares = {
        "X": x.share.data,
        "labels": lab.share.data,
        "w": w.share.data,
        "X@w": xw.share.data,
        "p": p.share.data,
        "p-y": d.share.data,
    }
    return g.reveal(to=1), {**shares, "g": g.share.data}


def _softmax_inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"Z": _signed(g, (8, 6), 0.25, 2.5), "B": _signed(g, (8, 6), 0.25, 2.5)}


def _softmax(ctx, inp):
    """exp (the one-hot table lookup: its index opening too) and softmax of a sum of two owners' inputs."""
    z = mpc.share(inp["Z"] if ctx.rank == 0 else None, owner=0)
    b = mpc.share(inp["B"] if ctx.rank == 1 else None, owner=1)
    s = z + b
    e = (s - 5.0).exp()
    p = s.softmax(-1) + e
    shares = {"Z": z.share.data, "B": b.share.data, "Z+B": s.share.data, "exp": e.share.data}
    return p.reveal(to=0), {**shares, "p": p.share.data}


WORKLOADS = {
    "inference": _Workload(
        _inference_inputs,
        _inference,
        {"X": 0, "W": 1},
        {"y": 0},
        lambda i: (i["X"] @ i["W"]).clamp(min=0),
    ),
    "softmax": _Workload(
        _softmax_inputs,
        _softmax,
        {"Z": 0, "B": 1},
        {"p": 0},
        lambda i: torch.softmax(i["Z"] + i["B"], -1) + torch.exp(i["Z"] + i["B"] - 5.0),
    ),
    "logreg": _Workload(
        _logreg_inputs,
        _logreg,
        {"X": 0, "labels": 0, "w": 1},
        {"g": 1},
        lambda i: i["X"].t() @ (torch.sigmoid(i["X"] @ i["w"]) - i["labels"]) / 16,
    ),
}
SIM_CFG = MPCConfig(timeout=20.0)


def _run(name: str, n: int, inputs: dict[str, torch.Tensor], program=None):
    """One run: (what each node received, the ring value of every secret)."""
    wl = WORKLOADS[name]
    received: dict[int, list] = {}
    results = run_threads(
        lambda ctx: (program or wl.program)(ctx, inputs), n, SIM_CFG, received=received, join_timeout=80
    )
    (recipient,) = wl.revealed_to.values()
    out = results[recipient][0]
    assert torch.allclose(out.double(), wl.oracle(inputs), atol=2e-3), "the workload itself is wrong"
    ring = {k: sum(r[1][k] for r in results) for k in results[0][1]}  # int64 sums wrap: addition in Z_2^64
    for k in wl.owners:
        assert torch.equal(ring[k], ENC.encode(inputs[k]))
    return received, ring


# Byte search.  A needle is the 8-byte little-endian encoding of one secret element.  Only needles with at
# least two bytes outside {0x00, 0x01, 0xff} are searched: the structured payloads a node receives (share
# metadata and dealer requests, int64 words below 256; opened bits) consist of such bytes, with at most one
# other byte in any 8-byte window, so a kept needle cannot match there; in uniformly random payloads a
# match has probability 2^-64 per position.  The inputs are drawn with magnitudes >= 0.25 and a random
# fraction (encodings >= 2^14 with two random low bytes), so nearly all of their elements are kept; labels
# (encodings 0 and 2^16) are not searchable.
_DULL = frozenset((0x00, 0x01, 0xFF))


def _needles(ring: torch.Tensor) -> set[bytes]:
    packed = (struct.pack("<q", v) for v in ring.reshape(-1).tolist())
    return {b for b in packed if sum(c not in _DULL for c in b) >= 2}


def _plaintext_found(wl: _Workload, received: dict[int, list], ring: dict[str, torch.Tensor]) -> dict[int, set]:
    """For each node, the secrets it does not learn whose encodings occur in a payload it received."""
    needles = {k: _needles(v) for k, v in ring.items()}
    found: dict[int, set] = {}
    for node, frames in received.items():
        learned = wl.learns(node)
        allowed = set().union(*(needles[k] for k in learned))  # X@W's positive entries are y's, say
        payloads = [p for _, _, p in frames]
        found[node] = {
            k for k in ring if k not in learned and any(nd in p for nd in needles[k] - allowed for p in payloads)
        }
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_no_party_receives_an_encoding_it_does_not_learn(name, n):
    wl = WORKLOADS[name]
    for seed in (1, 2):
        inputs = wl.inputs(seed)
        received, ring = _run(name, n, inputs)
        for k in wl.owners:
            kept = len(_needles(ring[k]))
            assert k == "labels" or kept >= 0.9 * ring[k].numel(), f"only {kept} searchable elements in {k}"
        assert set(received) == set(range(n + 1))
        assert _plaintext_found(wl, received, ring) == {r: set() for r in range(n + 1)}


def _leaky_inference(ctx, inp):
    """The inference workload with a bug: party 0 also sends party 1 its encoded input."""
    revealed, shares = _inference(ctx, inp)
    if ctx.rank == 0:
        ctx.comm.send(1, "oops", ENC.encode(inp["X"]))
    elif ctx.rank == 1:
        ctx.comm.recv(0, "oops", Expect((8, 16)))
    return revealed, shares


@pytest.mark.timeout(30)
def test_byte_search_finds_a_plaintext_leak():
    received, ring = _run("inference", 2, _inference_inputs(1), _leaky_inference)
    assert _plaintext_found(WORKLOADS["inference"], received, ring) == {0: set(), 1: {"X"}, 2: set()}


def _by_link(frames: list) -> dict[int, list[tuple[wire.Header, bytes]]]:
    """Received frames per sender, in order.  One link delivers in order; links interleave differently
    from run to run, so only per-link sequences are comparable.  Byes are dropped: whether one arrives
    before the receiver closes is a race."""
    out: dict[int, list] = defaultdict(list)
    for sender, h, p in frames:
        hd = wire.decode_header(h, 1 << 40)
        if hd.kind != wire.KIND_BYE:
            out[sender].append((hd, p))
    return dict(out)


def _metadata(received: dict[int, list]) -> dict[int, dict[int, list]]:
    return {
        node: {s: [(h.kind, h.seq, h.op, h.shape, h.dtype, len(p)) for h, p in fr] for s, fr in _by_link(f).items()}
        for node, f in received.items()
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_frame_metadata_does_not_depend_on_inputs(name, n):
    wl = WORKLOADS[name]
    (ra, _), (rb, _) = (_run(name, n, wl.inputs(seed)) for seed in (1, 2))
    ma, mb = _metadata(ra), _metadata(rb)
    assert ma == mb
    assert sum(len(fr) for links in ma.values() for fr in links.values()) > 10 * n


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_same_inputs_give_fresh_shares_every_run(name, n):
    inputs = WORKLOADS[name].inputs(1)
    (ra, _), (rb, _) = (_run(name, n, inputs) for _ in range(2))
    fresh = 0
    for node in ra:
        la, lb = _by_link(ra[node]), _by_link(rb[node])
        assert la.keys() == lb.keys()
        for sender in la:
            for (h, pa), (_, pb) in zip(la[sender], lb[sender], strict=True):
                # Public by design: share metadata and the dealer's requests.  All else carries fresh
                # randomness (every setup message carries the sender's fresh run-id nonce).
                public = (
                    h.op == "share"
                    or (node == n and h.op.startswith("corr:"))  # requests to the dealer: kinds and shapes
                    or (h.op == "reveal" and h.nbytes == 0)  # the recipient's empty frame: no payload at all
                )
                if public:
                    assert pa == pb, (node, sender, h.op)
                else:
                    assert pa != pb, f"node {node} received the same {h.op!r} from node {sender} in two runs"
                    fresh += 1
    assert fresh >= 10


# Two-sample tests: for every received payload bit (frame by frame, position by position), the fraction of
# runs in which it is set, input set A against input set B (two-proportion z-test, Bonferroni over all bits
# of all nodes at overall level ALPHA).  Secure payloads are uniform or public at every position whatever the
# inputs; a payload that depends on the inputs differs at some position in a fixed way across runs.
RUNS = 40
ALPHA = 1e-4


def _z_critical(level: float) -> float:
    """The two-sided standard normal quantile: P(|Z| > z) = level."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erfc(mid / math.sqrt(2)) > level else (lo, mid)
    return hi


def _bit_z(runs_a: list[list[bytes]], runs_b: list[list[bytes]]) -> list[np.ndarray]:
    """Per frame, the z statistic of every payload bit (runs x frames of payload bytes in, aligned)."""
    out = []
    for k in range(len(runs_a[0])):
        a, b = ([np.frombuffer(r[k], np.uint8) for r in runs] for runs in (runs_a, runs_b))
        pa = np.unpackbits(np.stack(a), axis=1).mean(0)
        pb = np.unpackbits(np.stack(b), axis=1).mean(0)
        na, nb = len(a), len(b)
        p = (pa * na + pb * nb) / (na + nb)
        se = np.sqrt(p * (1 - p) * (1 / na + 1 / nb))
        diff = np.abs(pa - pb)
        out.append(np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff > 0, np.inf, 0.0)))
    return out


def _distinguishers(data: dict[int, tuple[list, list, list[str]]], alpha: float = ALPHA) -> list[str]:
    """The (node, frame) pairs whose payload bits tell set A from set B; ``data[node] = (runs A, runs B, labels)``."""
    zs = {node: _bit_z(a, b) for node, (a, b, _) in data.items()}
    tests = sum(z.size for per_frame in zs.values() for z in per_frame)
    crit = _z_critical(alpha / tests)
    return [
        f"node {node}, {data[node][2][k]}: bit {int(z.argmax())} z={float(z.max()):.1f} > {crit:.1f}"
        for node, per_frame in zs.items()
        for k, z in enumerate(per_frame)
        if z.size and z.max() > crit
    ]


def _flat(received: dict[int, list]) -> dict[int, tuple[list[str], list[bytes]]]:
    out = {}
    for node, frames in received.items():
        links = _by_link(frames)
        labels = [f"#{i} {h.op!r} from {s}" for s in sorted(links) for i, (h, _) in enumerate(links[s])]
        out[node] = (labels, [p for s in sorted(links) for _, p in links[s]])
    return out


@pytest.fixture(scope="module")
def indistinguishability_runs():
    """RUNS runs of each workload (2 parties) on input sets A (seed 1) and B (seed 2), collected once."""
    cache: dict[str, tuple] = {}

    def collect(name: str):
        if name not in cache:
            sets = []
            for seed in (1, 2):
                inputs = WORKLOADS[name].inputs(seed)
                runs = [_flat(_run(name, 2, inputs)[0]) for _ in range(RUNS)]
                sets.append((inputs, runs))
            cache[name] = sets
        return cache[name]

    return collect


def _per_node(sets) -> dict[int, tuple[list, list, list[str]]]:
    (_, runs_a), (_, runs_b) = sets
    data = {}
    for node in runs_a[0]:
        labels = runs_a[0][node][0]
        for runs in (runs_a, runs_b):
            assert all(r[node][0] == labels for r in runs)  # same frames in every run
        data[node] = ([r[node][1] for r in runs_a], [r[node][1] for r in runs_b], labels)
    return data


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_received_payloads_are_indistinguishable_between_inputs(indistinguishability_runs, name):
    data = _per_node(indistinguishability_runs(name))
    assert _distinguishers(data) == []


@pytest.mark.timeout(120)
def test_indistinguishability_check_detects_a_16_bit_mask(indistinguishability_runs):
    """Control: the same recorded runs, with party 0's matmul opening to party 1 masked by 16 bits only.

    (A 32-bit mask would hide these 18-bit encodings statistically; 16 bits leave the top bits.)"""
    sets = indistinguishability_runs("inference")
    data = _per_node(sets)
    runs_a, runs_b, labels = data[1]
    runs_a, runs_b = [list(r) for r in runs_a], [list(r) for r in runs_b]  # the recorded runs stay as they are
    data[1] = (runs_a, runs_b, labels)
    k = labels.index("#2 'matmul' from 0")

    def leak(payload: bytes, x: torch.Tensor) -> bytes:
        words = np.frombuffer(payload, np.int64)
        enc = np.resize(ENC.encode(x).reshape(-1).numpy(), words.size)
        return (enc + (words & 0xFFFF)).tobytes()

    for runs, (inputs, _) in ((runs_a, sets[0]), (runs_b, sets[1])):
        for r in runs:
            r[k] = leak(r[k], inputs["X"])
    found = _distinguishers(data)
    assert [f.split(": bit")[0] for f in found] == [f"node 1, {labels[k]}"], found


# ----- 4. a wire tap -----------------------------------------------------------------------------------


class _TapRelay:
    """A TCP relay to ``target`` that records every byte it forwards, both ways."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self.upstream = bytearray()  # client to server
        self.downstream = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="tap-accept")]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.1)[0]:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=2.0)
            except OSError:
                client.close()  # ZeroMQ reconnects
                continue
            t = threading.Thread(target=self._pump, args=(client, server), daemon=True, name="tap-pump")
            self._threads.append(t)
            t.start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                for s in select.select([client, server], [], [], 0.1)[0]:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    (server if s is client else client).sendall(data)
                    with self._lock:
                        (self.upstream if s is client else self.downstream).extend(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._listener.close()


def _tap_program(ctx):
    x = mpc.share(torch.linspace(-3, 3, 24, dtype=torch.float64).reshape(4, 6) if ctx.rank == 0 else None, owner=0)
    w = mpc.share(torch.linspace(2, -1, 18, dtype=torch.float64).reshape(6, 3) if ctx.rank == 1 else None, owner=1)
    return (x @ w).relu().reveal()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "insecure-control"])
def test_wire_tap_sees_no_header_and_no_payload(sealed):
    n = 2
    listeners = Listeners(n + 1)
    real = listeners.addresses
    keys = ephemeral_keys(n + 1) if sealed else None
    relay = _TapRelay(real[1])
    got: list = []  # what party 1 received: (sender, header, payload)
    comms: list[ZmqCommunicator] = []
    try:
        for r in range(n + 1):
            addrs = [real[0], relay.address, real[2]] if r == 0 else real  # party 0 reaches party 1 via the tap
            comms.append(
                ZmqCommunicator(
                    r,
                    n,
                    addrs,
                    MPCConfig(timeout=20.0),
                    keys=_keys(keys, r) if keys else None,
                    recorder=(lambda *f: got.append(f)) if r == 1 else None,
                    listen_fd=listeners.take(r),
                )
            )
        results = run_threads(_tap_program, n, MPCConfig(timeout=20.0), comms=comms, join_timeout=50)
    except BaseException:
        for c in comms:
            c.abort("test failed")
        raise
    finally:
        listeners.close()
        relay.close()
    want = (torch.linspace(-3, 3, 24).reshape(4, 6).double() @ torch.linspace(2, -1, 18).reshape(6, 3).double()).relu()
    assert all(torch.allclose(y.double(), want, atol=1e-3) for y in results)
    tapped = bytes(relay.upstream) + bytes(relay.downstream)
    payloads = [p for s, _, p in got if s == 0]
    # 16-byte chunks of what party 0 sent party 1; low-entropy chunks (runs of zeros, metadata) are skipped,
    # since ZeroMQ's greeting has zero padding of its own.
    chunks = {p[i : i + 16] for p in payloads for i in range(0, len(p) - 15, 16)}
    chunks = {c for c in chunks if len(set(c)) >= 10}
    assert len(chunks) >= 50
    assert len(relay.upstream) > sum(map(len, payloads)), "party 0's traffic did not go through the tap"
    seen = [c for c in chunks if c in tapped]
    # Operation names (headers are secret too: a tap must not learn which operations run).
    ops = {wire.decode_header(h, 1 << 40).op.encode() for s, h, _ in got if s == 0}
    ops = {op for op in ops if len(op) >= 4}
    assert len(ops) >= 3
    named = [op for op in ops if op in tapped]
    if sealed:
        assert wire.MAGIC not in tapped
        assert seen == [] and named == []
    else:
        assert tapped.count(wire.MAGIC) >= len(payloads)
        assert len(seen) == len(chunks) and len(named) == len(ops)


# ----- 5. output policy --------------------------------------------------------------------------------


def _logged_secrets(records: list[logging.LogRecord], secrets: set[str]) -> list[str]:
    text = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in records)
    return sorted(s for s in secrets if s in text)


@pytest.mark.timeout(30)
def test_reveals_are_logged_with_recipient_and_shape_but_no_values(sim, caplog):
    caplog.set_level(logging.INFO, logger="mpc")
    x_in = torch.tensor([[3.14159, -2.71828, 1234.5678], [9.87654, 42.4242, -7.77777]], dtype=torch.float64)
    y_in = torch.tensor([[1.41421, 1.73205, -2.23606], [6.02214, -1.60217, 8.31446]], dtype=torch.float64)

    def prog(ctx, careless=False):
        x = mpc.share(x_in if ctx.rank == 0 else None, owner=0)
        y = mpc.share(y_in if ctx.rank == 1 else None, owner=1)
        z = x + y
        if careless and ctx.rank == 0:
            ctx.log.info("debugging: %s", x_in[0].tolist())
        return x.reveal(to=1), z.reveal(), x.share.data, z.share.data

    results = sim(prog, 3)
    assert torch.allclose(results[1][0], x_in, atol=1e-4) and torch.allclose(results[2][1], x_in + y_in, atol=1e-4)
    reveal_lines = [r for r in caplog.records if r.getMessage().startswith("revealing")]
    for target in ("party 1", "all parties"):
        want = f"revealing a torch.float64 tensor of shape (2, 3) to {target}"
        assert sorted(r.party for r in reveal_lines if r.getMessage() == want) == [0, 1, 2], target
    secrets = {str(v)[:6] for v in torch.cat([x_in, y_in, x_in + y_in]).reshape(-1).tolist()}  # 5 digits
    secrets |= {str(v) for v in ENC.encode(torch.cat([x_in, x_in + y_in])).reshape(-1).tolist()}
    secrets |= {str(v) for r in results for share in r[2:] for v in share.reshape(-1)[:3].tolist()}
    assert _logged_secrets(caplog.records, secrets) == []
    # Control: a program that logs an input is caught by the same check.
    caplog.clear()
    sim(lambda ctx: prog(ctx, careless=True), 3)
    assert _logged_secrets(caplog.records, secrets) == ["-2.718", "1234.5", "3.1415"]
