"""The same program over every transport: in-memory, ZeroMQ inproc://, ipc:// and tcp:// (sealed and --insecure).

Thread tier: one thread per node, real ZeroMQ sockets where the transport has
them.  The process tier (``test_processes.py``, ``test_cli.py``) covers tcp://
between processes.
"""

from __future__ import annotations

import functools
import threading
import time

import pytest
import torch

import mpc
from mpc.config import MPCConfig
from mpc.context import Expect
from parties.keys import ephemeral_keys
from parties.ports import Listeners
from parties.simulator import run_threads
from parties.zmq_comm import NodeKeys, ZmqCommunicator

X = torch.linspace(-3, 3, 24, dtype=torch.float64).reshape(4, 6)
W = torch.linspace(2, -1, 18, dtype=torch.float64).reshape(6, 3)
CFG = MPCConfig(timeout=20.0)


def _program(ctx):
    x = mpc.share(X if ctx.rank == 0 else None, owner=0)
    w = mpc.share(W if ctx.rank == ctx.world_size - 1 else None, owner=ctx.world_size - 1)
    y = (x @ w).relu()
    return y.reveal(), ctx.stats.rounds


def _check(results, n):
    want = (X @ W).clamp(min=0)
    assert len(results) == n
    for got, rounds in results:
        assert torch.allclose(got, want, atol=1e-3)
        assert rounds == results[0][1] > 0


def _zmq_comms(addresses: list[str], n: int, sealed: bool, listeners: Listeners | None = None) -> list[ZmqCommunicator]:
    """One communicator per node; over tcp the ports are bound first (``listeners``) and adopted, never guessed."""
    keys = ephemeral_keys(n + 1) if sealed else None
    comms = []
    try:
        for r in range(n + 1):
            ck = NodeKeys(keys[r][0], keys[r][1], tuple(k[0] for k in keys)) if keys else None
            fd = listeners.take(r) if listeners is not None else None
            comms.append(ZmqCommunicator(r, n, addresses, CFG, keys=ck, listen_fd=fd))
    except BaseException:
        for c in comms:
            c.abort("setup failed")
        raise
    return comms


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_inproc_transport(n):
    _check(run_threads(_program, n, CFG, transport="inproc", join_timeout=60), n)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sealed", [False, True], ids=["insecure", "sealed"])
def test_ipc_transport(tmp_path, sealed):
    n = 3
    addresses = [f"ipc://{tmp_path}/node{i}.sock" for i in range(n + 1)]
    _check(run_threads(_program, n, CFG, comms=_zmq_comms(addresses, n, sealed), join_timeout=60), n)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sealed", [False, True], ids=["insecure", "sealed"])
def test_tcp_transport_in_threads(sealed):
    n = 2
    with Listeners(n + 1) as ls:
        comms = _zmq_comms(ls.addresses, n, sealed, ls)
    _check(run_threads(_program, n, CFG, comms=comms, join_timeout=60), n)


@pytest.mark.timeout(30)
def test_unknown_simulator_transport_is_refused():
    with pytest.raises(mpc.ConfigError, match="unknown simulator transport 'udp'"):
        run_threads(functools.partial(_program), 2, CFG, transport="udp")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sealed", [False, True], ids=["insecure", "sealed"])
def test_large_simultaneous_exchange_neither_deadlocks_nor_is_refused(sealed):
    """Both parties send 32 MiB to each other in the same round over tcp://: sends and receives overlap."""
    with Listeners(3) as ls:
        comms = _zmq_comms(ls.addresses, 2, sealed, ls)
    size = 4 << 20  # int64 elements: 32 MiB each way
    sent = [torch.arange(size, dtype=torch.int64) * (r + 3) for r in range(2)]
    got: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def party(r: int) -> None:
        try:
            got[r] = comms[r].exchange("big", {1 - r: sent[r]}, {1 - r: Expect((size,))})[1 - r]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=party, args=(r,), daemon=True) for r in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert not any(t.is_alive() for t in threads), "the exchange did not finish: deadlock"
        assert not errors, errors
        assert torch.equal(got[0], sent[1]) and torch.equal(got[1], sent[0])
        assert comms[0].stats.bytes_sent == comms[0].stats.bytes_recv == 8 * size
    finally:
        for c in comms:
            c.abort("test over")


@pytest.mark.timeout(60)
def test_a_vanished_peer_is_lost_at_once_not_at_the_timeout():
    """Over tcp://: a node that closes its sockets without a bye (as a crash does) is ``PeerLost`` within
    seconds: its port refuses libzmq's reconnection.  (A link that drops and comes back is not given up:
    ``test_netns.py`` resets live connections in the middle of a run.)"""
    with Listeners(3) as ls:
        comms = _zmq_comms(ls.addresses, 2, True, ls)
    one = torch.ones(1, dtype=torch.int64)
    try:
        helper = threading.Thread(target=lambda: comms[1].exchange("hi", {0: one}, {0: Expect((1,))}), daemon=True)
        helper.start()
        comms[0].exchange("hi", {1: one}, {1: Expect((1,))})  # both links up
        helper.join(20)
        comms[1]._close_transport(linger=0)  # gone without a word
        start = time.monotonic()
        with pytest.raises(mpc.PeerLost, match="party 1 finished and its port refuses a new one") as err:
            comms[0].recv(1, "x", Expect((1,)))
        assert err.value.peer == 1 and time.monotonic() - start < CFG.timeout / 2
    finally:
        for c in comms:
            c.abort("test over")


@pytest.mark.timeout(60)
def test_an_abort_before_any_hello_was_read_still_reaches_the_peers():
    """Sealed links: a node that fails right after it opened (its peers' hellos unread, so no keys yet) waits
    a moment for them at the close, so that its abort notice goes out sealed."""
    with Listeners(3) as ls:
        comms = _zmq_comms(ls.addresses, 2, True, ls)
    try:
        comms[0].abort("failed at the start")
        start = time.monotonic()
        for peer in (1, 2):
            with pytest.raises(mpc.PeerAborted, match="party 0 failed and stopped the run: failed at the start"):
                comms[peer].recv(0, "x", Expect((1,)))
        assert time.monotonic() - start < CFG.timeout / 2
    finally:
        for c in comms:
            c.abort("test over")


@pytest.mark.timeout(60)
def test_a_sealed_and_an_insecure_node_each_say_what_is_wrong():
    (k0, k1) = ephemeral_keys(2)
    keys = NodeKeys(*k0, (k0[0], k1[0]))
    with Listeners(2) as ls:
        sealed = ZmqCommunicator(0, 2, ls.addresses, CFG, keys=keys, dealer=False, listen_fd=ls.take(0))
        plain = ZmqCommunicator(1, 2, ls.addresses, CFG, dealer=False, listen_fd=ls.take(1))
    try:
        plain.send(0, "x", torch.ones(1, dtype=torch.int64))
        with pytest.raises(mpc.SecurityError, match="sent party 0 an unencrypted frame: it runs with --insecure"):
            sealed.recv(1, "x", Expect((1,)))
        with pytest.raises(mpc.WireError, match="sealed frame: it runs without --insecure and this node with it"):
            plain.recv(0, "x", Expect((1,)))
    finally:
        for c in (sealed, plain):
            c.abort("test over")


@pytest.mark.timeout(60)
def test_sealed_payloads_go_out_in_buffers_used_again():
    """Large sealed payloads are sealed into buffers that libzmq has finished sending (no fresh pages per
    frame), and a buffer is never reused while libzmq still holds it: every round arrives intact."""
    with Listeners(3) as ls:
        comms = _zmq_comms(ls.addresses, 2, True, ls)
    size, rounds = 1 << 20, 8  # int64: 8 MiB each way per round, two chunks
    errors: list[BaseException] = []

    def party(r: int) -> None:
        try:
            for i in range(rounds):
                mine = torch.full((size,), 10 * i + r, dtype=torch.int64)
                got = comms[r].exchange(f"r{i}", {1 - r: mine}, {1 - r: Expect((size,))})[1 - r]
                assert torch.equal(got, torch.full((size,), 10 * i + 1 - r, dtype=torch.int64)), i
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=party, args=(r,), daemon=True) for r in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert not errors, errors
        for c in comms[:2]:
            assert c._buffers.fresh <= 4, c._buffers.fresh  # most of the 16 chunks went out in reused buffers
    finally:
        for c in comms:
            c.abort("test over")
