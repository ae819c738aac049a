"""Results stay correct on a bad network (issue 11, item 9): the thread tier over a fault-injecting layer.

``parties.faults`` loses, duplicates, delays (so reorders) frames and takes a
link down for a while, under the in-memory transport (and once under ZeroMQ
``inproc://``); ``parties.reliable`` recovers (acks, nacks, frames sent again,
duplicates dropped).  Each test runs real protocols (secret multiplication,
matrix product, comparison and ReLU, a few SGD steps of a small ``mpc.nn``
model) and checks:

* every revealed value against the float64 oracle, within the fixed-point
  tolerance of the fault-free suite;
* that the faults happened (the fault layer's own counters) and that recovery
  was needed (frames sent again, duplicates dropped, frames reordered), so the
  test cannot pass with the faults silently off;
* that every party ends with nothing kept unacknowledged (what a sender keeps
  for a resend is freed).

Also: a failing party's abort notice gets through 20% loss (the others stop at
once, not at the timeout); a link that stays down past the receive timeout ends
the run with a ``PeerTimeout`` naming the peer; without faults nothing is sent
twice; and, in units, what a sender keeps until acknowledged and a lost frame
asked for by a nack.  Real packet loss, a rate limit and reset connections on a
real network are in ``test_netns.py``.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

import mpc
import mpc.nn as mnn
from mpc.config import MPCConfig
from mpc.context import Expect
from mpc.errors import ConfigError, PeerTimeout
from parties import reliable
from parties.faults import FaultNet, Faults, LinkDown
from parties.memory import MemoryCommunicator, MemoryHub
from parties.simulator import run_threads

TIMEOUT = 20.0  # the receive timeout: far above any recovery here, far below the tests' own limits
ATOL = 1e-3  # the thread tier's fixed-point tolerance (16 fractional bits)

FAULTS = {
    "loss": Faults(loss=0.05, seed=11),
    "duplication": Faults(duplicate=0.1, seed=12),
    "delay": Faults(delay=(0.0, 0.02), seed=13),
    "link-drop": Faults(down=(LinkDown((0, 1), after_frames=40, seconds=1.0),), seed=14),
}


def _evidence(kind: str, net: FaultNet) -> None:
    """The faults were on, and the communicators had to recover from them."""
    dropped = sum(c.stats.duplicates for c in net.comms)
    if kind == "loss":
        assert net.lost > 0 and net.retransmits > 0, (net.lost, net.retransmits)
    elif kind == "duplication":
        assert net.duplicated > 0 and dropped > 0, (net.duplicated, dropped)
    elif kind == "delay":
        assert net.delayed > 0 and net.reordered > 0, (net.delayed, net.reordered)
    elif kind == "link-drop":
        assert net.lost_down > 0 and net.retransmits > 0, (net.lost_down, net.retransmits)
    else:
        raise AssertionError(kind)


def _nothing_kept(net: FaultNet, parties: int) -> None:
    """Every party's frames were acknowledged by the end: nothing is kept for a resend (the dealer's bye, which
    nobody waits for, may be)."""
    for c in net.comms[:parties]:
        assert all(not k for k in c._keep), [len(k) for k in c._keep]
        assert all(b == 0 for b in c._kept)


def _run(program, n: int, faults: Faults, **kw) -> tuple[list, FaultNet]:
    net = FaultNet(faults)
    results = run_threads(program, n, MPCConfig(timeout=TIMEOUT), faults=net, join_timeout=4 * TIMEOUT, **kw)
    return results, net


# ----- workloads -----------------------------------------------------------------------------------------------

A = torch.linspace(-2.5, 2.5, 24, dtype=torch.float64).reshape(4, 6)
B = torch.linspace(1.5, -1.0, 18, dtype=torch.float64).reshape(6, 3)
C = torch.linspace(-1.0, 2.0, 24, dtype=torch.float64).reshape(4, 6)


def _arith(ctx):
    """Multiplications, matrix products and comparisons, in rounds: many small frames on every link."""
    a = mpc.share(A if ctx.rank == 0 else None, owner=0)
    b = mpc.share(B if ctx.rank == ctx.world_size - 1 else None, owner=ctx.world_size - 1)
    c = mpc.share(C if ctx.rank == ctx.world_size - 1 else None, owner=ctx.world_size - 1)
    out = {}
    for i in range(3):
        out[f"mul{i}"] = (a * c).reveal()
        out[f"matmul{i}"] = (a @ b).reveal()
    out["relu"] = (a @ b).relu().reveal()
    out["gt"] = (a > c).reveal()
    return out


ARITH = {
    **{f"mul{i}": A * C for i in range(3)},
    **{f"matmul{i}": A @ B for i in range(3)},
    "relu": (A @ B).clamp(min=0),
    "gt": (A > C).double(),
}


def _check_arith(results: list) -> None:
    for rank, out in enumerate(results):
        for k, want in ARITH.items():
            assert torch.allclose(out[k].double(), want, atol=ATOL), (rank, k, (out[k].double() - want).abs().max())


def _net() -> torch.nn.Module:
    g = torch.Generator().manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((torch.rand(p.shape, generator=g) - 0.5).round(decimals=2))  # on the fixed-point grid
    return net


X = torch.linspace(-1.0, 1.0, 32, dtype=torch.float32).reshape(8, 4)
Y = (X.sum(1, keepdim=True) * 0.5).float()
STEPS, LR = 3, 0.1


def _train(ctx):
    """Party 0 owns the model, party 1 the data: a few SGD steps, then the weights opened to everyone."""
    model = mnn.from_torch(_net() if ctx.rank == 0 else None, owner=0)
    opt = mpc.optim.SGD(model.parameters(), lr=LR)
    loss_fn = mnn.MSELoss()
    for _ in range(STEPS):
        xs = mpc.share(X if ctx.rank == 1 else None, owner=1)
        ys = mpc.share(Y if ctx.rank == 1 else None, owner=1)
        opt.zero_grad()
        loss_fn(model(xs), ys).backward()
        opt.step()
    return [p.reveal() for p in model.parameters()]


def _plaintext_weights() -> list[torch.Tensor]:
    ref = _net().double()
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(ref(X.double()), Y.double()).backward()
        opt.step()
    return [p.detach() for p in ref.parameters()]


# ----- one kind of fault at a time --------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", list(FAULTS))
def test_arithmetic_and_comparison_stay_correct(kind):
    results, net = _run(_arith, 2, FAULTS[kind])
    _check_arith(results)
    _evidence(kind, net)
    _nothing_kept(net, 2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(FAULTS))
def test_training_steps_stay_correct(kind):
    results, net = _run(_train, 2, FAULTS[kind])
    want = _plaintext_weights()
    for rank, got in enumerate(results):
        for w, ref in zip(got, want, strict=True):
            assert torch.allclose(w.double(), ref, atol=1e-2), (rank, (w.double() - ref).abs().max())
    _evidence(kind, net)
    _nothing_kept(net, 2)


# ----- everything at once, three parties; and under ZeroMQ --------------------------------------------------------


@pytest.mark.timeout(120)
def test_all_faults_at_once_with_three_parties():
    faults = Faults(
        loss=0.05,
        duplicate=0.05,
        delay=(0.0, 0.01),
        down=(LinkDown((1, 2), after_frames=30, seconds=0.8), LinkDown((0, 3), after_frames=5, seconds=0.5)),
        seed=21,
    )
    results, net = _run(_arith, 3, faults)
    _check_arith(results)
    for kind in ("loss", "duplication", "delay", "link-drop"):
        _evidence(kind, net)
    _nothing_kept(net, 3)


@pytest.mark.timeout(90)
def test_loss_under_zeromq_inproc():
    results, net = _run(_arith, 2, Faults(loss=0.05, duplicate=0.05, seed=31), transport="inproc")
    _check_arith(results)
    _evidence("loss", net)


@pytest.mark.timeout(60)
def test_a_sound_network_needs_no_recovery():
    """Control: without faults nothing is sent twice and nothing is dropped as a duplicate."""

    def program(ctx):
        return _arith(ctx), ctx.stats.retransmits, ctx.stats.duplicates

    results = run_threads(program, 3, MPCConfig(timeout=TIMEOUT), join_timeout=4 * TIMEOUT)
    _check_arith([r[0] for r in results])
    assert [r[1:] for r in results] == [(0, 0)] * 3


def _fail_in_party_one(ctx):
    a = mpc.share(A if ctx.rank == 0 else None, owner=0)
    for _ in range(3):
        (a * a).reveal()
    if ctx.rank == 1:
        raise ValueError("deliberate failure in party one")
    return (a * a).reveal()


@pytest.mark.timeout(60)
def test_an_abort_notice_survives_loss():
    """A failing party's abort notice is sent again until acknowledged: the others stop at once, naming the
    failure, instead of waiting for the timeout."""
    net = FaultNet(Faults(loss=0.2, seed=51))
    start = time.monotonic()
    with pytest.raises(ValueError, match="deliberate failure") as err:
        run_threads(_fail_in_party_one, 3, MPCConfig(timeout=TIMEOUT), faults=net, join_timeout=4 * TIMEOUT)
    assert "(raised in party 1)" in err.value.__notes__
    assert time.monotonic() - start < TIMEOUT / 2, "a lost abort notice left a party waiting for the timeout"
    assert net.lost > 0


# ----- a link that does not come back -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_link_down_past_the_timeout_names_the_peer():
    faults = Faults(down=(LinkDown((0, 1), after_frames=20, seconds=3600.0),), seed=41)
    net = FaultNet(faults)
    start = time.monotonic()
    with pytest.raises(PeerTimeout) as err:
        run_threads(_arith, 2, MPCConfig(timeout=2.0), faults=net, join_timeout=30)
    assert time.monotonic() - start < 15
    e = err.value
    assert e.peer in (0, 1) and f"from party {e.peer}" in str(e) and "unreachable" in str(e)
    assert net.lost_down > 0


# ----- units: what a sender keeps, and the configuration -------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_sender_keeps_frames_until_acknowledged_and_no_longer():
    hub = MemoryHub(2, dealer=False)
    c0, c1 = (MemoryCommunicator(hub, r, timeout=2.0, max_message_bytes=1 << 20) for r in (0, 1))
    t = torch.arange(8, dtype=torch.int64)
    for _ in range(reliable.KEEP_FRAMES):
        c1.send(0, "stream", t)
    assert len(c1._keep[0]) == reliable.KEEP_FRAMES  # nothing acknowledged yet: all kept
    for _ in range(reliable.KEEP_FRAMES):
        assert torch.equal(c0.recv(1, "stream", Expect((8,))), t)
    c1.send(0, "stream", t)  # over the soft limit: the send first takes in the acks that arrived
    assert len(c1._keep[0]) <= reliable.ACK_EVERY + 1
    assert c1._kept[0] == 64 * len(c1._keep[0])  # 64 payload bytes each
    # A message back carries the ack of everything received: nothing kept any more.
    c0.recv(1, "stream", Expect((8,)))
    c0.send(1, "back", t)
    c1.recv(0, "back", Expect((8,)))
    assert len(c1._keep[0]) == 0 and c1._kept[0] == 0
    assert c0.stats.retransmits == c1.stats.retransmits == c0.stats.duplicates == 0


@pytest.mark.timeout(20)
def test_a_lost_frame_is_asked_for_and_sent_again():
    """Two nodes in one thread: party 1's second message is lost on the way; party 0 asks for it by a nack
    after the retransmit interval, and party 1 sends it again when it next listens."""
    hub = MemoryHub(2, dealer=False)
    c0, c1 = (MemoryCommunicator(hub, r, 2.0, 1 << 20, retransmit_after=0.05) for r in (0, 1))
    c1.send(0, "x", torch.tensor([1]))
    c1.send(0, "x", torch.tensor([2]))
    c1.send(0, "x", torch.tensor([3]))
    frames = [hub.boxes[0].get_nowait() for _ in range(3)]
    hub.boxes[0].put(frames[0])
    hub.boxes[0].put(frames[2])  # #1 lost: #2 arrives ahead of the gap and is held
    assert int(c0.recv(1, "x", Expect((1,)))) == 1
    got: list[int] = []
    receiver = threading.Thread(target=lambda: got.extend(int(c0.recv(1, "x", Expect((1,)))) for _ in range(2)))
    receiver.start()
    deadline = time.monotonic() + 5
    while receiver.is_alive() and time.monotonic() < deadline:
        c1._drain()  # party 1 listens: takes in the nack, sends #1 (and #2) again
        time.sleep(0.01)
    receiver.join(5)
    assert got == [2, 3]
    assert c1.stats.retransmits >= 1


@pytest.mark.timeout(20)
def test_faults_are_validated():
    for bad in (dict(loss=1.0), dict(loss=-0.1), dict(duplicate=True), dict(delay=(0.2, 0.1)), dict(delay=(-1, 0))):
        with pytest.raises(ConfigError):
            Faults(**bad)
    with pytest.raises(ConfigError, match="two different nodes"):
        LinkDown((1, 1), 0, 1.0)
    with pytest.raises(ConfigError, match="seconds"):
        LinkDown((0, 1), 0, 0)
