"""Emulated link latency (``MPCConfig.link_delay``, ``parties.comm_base``): held on arrival, at every node.

Issue 12, item 6.  The delay line under a communicator's ``_poll`` holds every
frame it takes in for ``link_delay`` seconds, then passes it up in arrival
order.  Checked here: the delay line alone (pure tier, a fake transport); a
message costs one delay and a reply two, over the memory transport; a run's
results do not change, every round costs at least one delay and nothing is
sent again; every node of a run (the dealer too) gets the delay through the
lifecycle; deadlines still hold; losses are still recovered under a delay;
the value is validated (``ConfigError``) wherever it enters; and ``mpc.run``
carries it to real party processes.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

import mpc
from mpc.config import LINK_DELAY_MAX, MPCConfig
from mpc.context import Expect
from mpc.errors import ConfigError, PeerTimeout
from parties.cluster import parse_cluster
from parties.comm_base import _DelayLine
from parties.faults import FaultNet, Faults
from parties.memory import MemoryCommunicator, MemoryHub
from parties.simulator import run_threads

DELAY = 0.05
TIMEOUT = 20.0
ATOL = 1e-3  # 16 fractional bits


# ----- pure tier: the delay line --------------------------------------------------------------------------


class _FakeTransport:
    """Frames that ``arrive`` are handed out by ``poll``, at most one per call, as a transport does."""

    def __init__(self) -> None:
        self.waiting: list = []

    def arrive(self, *payloads: bytes) -> None:
        self.waiting += [(b"h", p, 0) for p in payloads]

    def poll(self, timeout: float):
        if self.waiting:
            return self.waiting.pop(0)
        time.sleep(min(timeout, 0.005))
        return None


@pytest.mark.timeout(10)
def test_the_delay_line_holds_each_frame_its_delay_in_arrival_order():
    delay = 0.2
    t = _FakeTransport()
    line = _DelayLine(t.poll, delay, limit=1 << 20)
    t.arrive(b"a", b"b")
    start = time.monotonic()
    assert line.poll(0.0) is None  # taken in, not yet due: a poll without waiting returns nothing
    assert line.bytes == 2 and not t.waiting
    assert line.poll(0.02) is None  # still not due: the wait ends at its own deadline
    assert time.monotonic() - start < delay
    first = line.poll(1.0)
    assert first is not None and first[1] == b"a" and time.monotonic() - start >= delay
    assert line.poll(0.0)[1] == b"b"  # due at (almost) the same time, after the first
    assert line.bytes == 0 and line.poll(0.0) is None


@pytest.mark.timeout(10)
def test_the_delay_line_leaves_frames_in_the_transport_beyond_its_byte_limit():
    t = _FakeTransport()
    line = _DelayLine(t.poll, DELAY, limit=3)
    t.arrive(b"aa", b"bb", b"cc")
    assert line.poll(0.0) is None
    assert line.bytes == 4 and len(t.waiting) == 1  # over the limit after two: the third stays where it was
    assert [line.poll(1.0)[1] for _ in range(3)] == [b"aa", b"bb", b"cc"]


# ----- thread tier: over the memory transport -------------------------------------------------------------


def _pair(delay: float, timeout: float = TIMEOUT) -> tuple[MemoryCommunicator, MemoryCommunicator]:
    hub = MemoryHub(2, dealer=False)
    c0, c1 = (MemoryCommunicator(hub, r, timeout, 1 << 20) for r in (0, 1))
    for c in (c0, c1):
        c.set_link_delay(delay)
    return c0, c1


@pytest.mark.timeout(20)
def test_a_message_costs_one_delay_and_a_reply_two():
    c0, c1 = _pair(DELAY)
    t = torch.arange(4, dtype=torch.int64)
    start = time.monotonic()
    c0.send(1, "ping", t)
    assert torch.equal(c1.recv(0, "ping", Expect((4,))), t)
    one_way = time.monotonic() - start
    c1.send(0, "pong", t + 1)
    assert torch.equal(c0.recv(1, "pong", Expect((4,))), t + 1)
    round_trip = time.monotonic() - start
    assert DELAY <= one_way < DELAY + 0.5 and 2 * DELAY <= round_trip < 2 * DELAY + 0.5
    # A send does not wait for the delay: it returns at once.
    start = time.monotonic()
    for _ in range(5):
        c0.send(1, "burst", t)
    assert time.monotonic() - start < DELAY


@pytest.mark.timeout(20)
def test_a_receive_keeps_its_deadline_under_a_delay():
    c0, _ = _pair(DELAY, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(PeerTimeout, match="party 1"):
        c0.recv(1, "never", Expect((1,)))
    assert 0.3 <= time.monotonic() - start < 0.3 + 1.0


def test_the_retransmit_interval_grows_by_the_round_trip():
    hub = MemoryHub(2, dealer=False)
    c = MemoryCommunicator(hub, 0, TIMEOUT, 1 << 20, retransmit_after=0.25)
    c.set_link_delay(DELAY)
    assert c.retransmit_after == pytest.approx(0.25 + 2 * DELAY)
    c.set_retransmit_after(0.5)  # as a fault layer does: the round trip stays on top
    assert c.retransmit_after == pytest.approx(0.5 + 2 * DELAY)
    c.set_link_delay(0.0)
    assert c.retransmit_after == pytest.approx(0.5)


A = torch.tensor([1.5, -2.0, 0.75, 3.0], dtype=torch.float64)
B = torch.tensor([0.5, 1.25, -4.0, 0.125], dtype=torch.float64)
MULS = 4


def _chain(ctx):
    """``MULS`` products in sequence, each one truncated and opened: a known number of rounds."""
    x = mpc.share(A if ctx.rank == 0 else None, owner=0)
    y = mpc.share(B if ctx.rank == 1 else None, owner=1)
    x.reveal()  # setup's and sharing's rounds are not timed
    rounds = ctx.stats.rounds
    start = time.monotonic()
    z = x
    for _ in range(MULS):
        z = z * y
    seconds = time.monotonic() - start
    timed = ctx.stats.rounds - rounds  # the rounds inside the timed part (the reveal's is after it)
    return z.reveal(), ctx.stats.rounds - rounds, (seconds, timed), ctx.stats.retransmits


def _comms(config: MPCConfig) -> list[MemoryCommunicator]:
    hub = MemoryHub(2, dealer=True)
    return [MemoryCommunicator(hub, r, config.timeout, config.max_message_bytes) for r in range(3)]


@pytest.mark.timeout(90)
def test_a_run_under_a_delay_costs_a_delay_per_round_and_gives_the_same_results():
    plain = run_threads(_chain, 2, MPCConfig(timeout=TIMEOUT), join_timeout=4 * TIMEOUT)
    config = MPCConfig(timeout=TIMEOUT, link_delay=DELAY)
    comms = _comms(config)
    late = run_threads(_chain, 2, config, comms=comms, join_timeout=4 * TIMEOUT)
    want = A * B**MULS
    for (got, rounds, _, _), (got_late, rounds_late, (seconds, timed), retransmits) in zip(plain, late):
        assert torch.allclose(got.double(), want, atol=ATOL) and torch.equal(got, got_late)
        assert rounds == rounds_late >= MULS
        # Both sides of a round send at once: each round costs at least one delay (a reply, two).
        assert timed >= 2 * MULS and seconds >= timed * DELAY, (seconds, timed)
        assert retransmits == 0  # a delayed frame is not taken for a lost one
    # Every node got the delay from the run's config, the dealer included (parties.lifecycle).
    assert [c.link_delay for c in comms] == [DELAY] * 3
    assert all(isinstance(c._delay_line, _DelayLine) for c in comms)


@pytest.mark.timeout(120)
def test_losses_are_recovered_under_a_delay():
    net = FaultNet(Faults(loss=0.05, seed=21))
    config = MPCConfig(timeout=TIMEOUT, link_delay=0.01)
    results = run_threads(_chain, 2, config, faults=net, join_timeout=4 * TIMEOUT)
    for got, *_ in results:
        assert torch.allclose(got.double(), A * B**MULS, atol=ATOL)
    assert net.lost > 0 and net.retransmits > 0, (net.lost, net.retransmits)


# ----- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf, LINK_DELAY_MAX + 0.5, True, "5ms", None])
def test_bad_link_delays_are_refused_with_the_fix(bad):
    with pytest.raises(ConfigError, match="link_delay must be a number of seconds"):
        MPCConfig(link_delay=bad)
    hub = MemoryHub(2, dealer=False)
    with pytest.raises(ConfigError, match="link_delay"):
        MemoryCommunicator(hub, 0, TIMEOUT, 1 << 20).set_link_delay(bad)


def test_a_delay_must_leave_time_within_the_timeout():
    with pytest.raises(ConfigError, match="raise timeout above 2 x link_delay"):
        MPCConfig(timeout=0.5, link_delay=0.25)
    MPCConfig(timeout=0.5, link_delay=0.2)


def test_link_delay_is_a_local_setting_in_cluster_files():
    assert MPCConfig(link_delay=0.005).fingerprint() == MPCConfig().fingerprint()
    parties = [{"id": 0, "address": "tcp://h:2"}, {"id": 1, "address": "tcp://h:3"}]
    cluster = parse_cluster({"options": {"protocol": "plaintext", "link_delay": 0.005}, "parties": parties})
    assert cluster.config().link_delay == 0.005
    with pytest.raises(ConfigError, match="link_delay"):
        parse_cluster({"options": {"protocol": "plaintext", "link_delay": -1}, "parties": parties})


def test_mpc_run_refuses_a_bad_delay_before_starting_anything():
    with pytest.raises(ConfigError, match="link_delay"):
        mpc.run(_delays, parties=2, insecure=True, link_delay=-0.5)


# ----- process tier: mpc.run carries it to every party process --------------------------------------------


def _delays(ctx):
    return ctx.config.link_delay, ctx.comm.link_delay


@pytest.mark.timeout(120)
def test_mpc_run_sets_the_delay_in_every_party_process():
    assert mpc.run(_delays, parties=2, insecure=True, timeout=30, link_delay=0.01) == [(0.01, 0.01)] * 2
