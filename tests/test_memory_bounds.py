"""Memory bounded against an authenticated peer (issue 11, item 2), measured as the receiver's RSS.

The receiver is a real communicator over tcp:// in this process, on sealed
links (``parties.seal``); the hostile peer runs in another process with party
1's real keys (it does the handshake and seals every frame, so each one
authenticates), so that what it holds (a 256 MiB frame, a flood of frames) is
not counted here.  Memory is the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``):
libzmq's buffers are invisible to ``tracemalloc``, and a peak cannot be missed
by sampling.  Each case first checks that the attack carries far more than the
bound, so a test that allowed it would fail.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
import torch
from raw_peer import RawPeer

from mpc.config import MPCConfig
from mpc.context import Expect
from mpc.errors import DesyncError, WireError
from parties import wire, zmq_comm
from parties.keys import ephemeral_keys
from parties.ports import Listeners
from parties.zmq_comm import NodeKeys, ZmqCommunicator

MiB = 1 << 20
CHUNK = 1 * MiB
HELD = 16 * MiB
# What the receiver may add while refusing: what it may hold for the peer, libzmq's queue of RCV_HWM chunks,
# and allocator slack.
BOUND = HELD + zmq_comm.RCV_HWM * CHUNK + 24 * MiB


def _clear_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _attacker(keys, target_address: str, frames: list[tuple[bytes, int]], published, ready) -> None:
    """Party 1 (its real keys) sending ``frames``: (header, payload size) pairs, payload bytes made here.

    It listens on a port of its own (bound first, then published: the receiver's hello comes there).
    """
    peer = RawPeer(1, keys, "tcp://127.0.0.1:*", 0, target_address)
    published.put(peer.address)
    peer.handshake(timeout=30)
    for header, size in frames:
        peer.send(header, bytes(size))
    ready.set()
    time.sleep(30)  # keep the connection (and the queued frames) alive; the test kills this process


@pytest.fixture
def receiver(monkeypatch):
    """``attack(frames)``: starts the attacker, then party 0's communicator (which it returns)."""
    monkeypatch.setattr(zmq_comm, "CLOSE_LINGER_MS", 0)
    if not _clear_peak():
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    keys = ephemeral_keys(3)
    listeners = Listeners(3)  # party 0 adopts its port; nobody listens at the dealer's
    cfg = MPCConfig(timeout=8.0, chunk_bytes=CHUNK, max_buffered_bytes=HELD)
    procs: list = []
    comms: list = []

    def attack(frames: list[tuple[bytes, int]]) -> ZmqCommunicator:
        ctx = mp.get_context("spawn")
        published, ready = ctx.Queue(), ctx.Event()
        args = (keys, listeners.addresses[0], frames, published, ready)
        p = ctx.Process(target=_attacker, args=args, daemon=True)
        p.start()
        procs.append(p)
        addrs = [listeners.addresses[0], published.get(timeout=30), listeners.addresses[2]]
        c0 = ZmqCommunicator(
            0, 2, addrs, cfg, keys=NodeKeys(*keys[0], tuple(k[0] for k in keys)), listen_fd=listeners.take(0)
        )
        comms.append(c0)
        listeners.close()
        assert ready.wait(60), "the attacking process did not start"
        return c0

    try:
        yield attack
    finally:
        for p in procs:
            p.kill()
            p.join(5)
        for c in comms:
            c.abort("test over")
        listeners.close()


def _data(seq: int, shape: tuple[int, ...], op: str = "flood", part: int = 0) -> bytes:
    n = 8
    for d in shape:
        n *= d
    return wire.encode_header(wire.KIND_DATA, 1, seq, op, torch.int64, shape, n, part=part)


def _chunked(seq: int, nbytes: int, op: str) -> list[tuple[bytes, int]]:
    shape = (nbytes // 8,)
    return [(_data(seq, shape, op, part), min(CHUNK, nbytes - off)) for part, off in enumerate(range(0, nbytes, CHUNK))]


def _peak_while(fn) -> tuple[BaseException, int]:
    base = _status("VmRSS")
    _clear_peak()
    try:
        fn()
    except (WireError, DesyncError) as exc:
        return exc, _status("VmHWM") - base
    raise AssertionError("the hostile traffic was not refused")


@pytest.mark.timeout(90)
def test_a_flood_of_valid_frames_is_refused_within_the_buffer_limit(receiver):
    attack = receiver
    frames = [f for seq in range(32) for f in _chunked(seq, 8 * MiB, "flood")]  # 256 MiB of well-formed data
    assert sum(size for _, size in frames) > 4 * BOUND
    c0 = attack(frames)
    # Party 0 awaits the dealer meanwhile: party 1's frames are ahead of anything it expects.
    err, grew = _peak_while(lambda: c0.recv(2, "x", Expect((2,))))
    assert isinstance(err, WireError) and err.peer == 1, err
    assert "party 1 sent 'flood'" in str(err) and "max_buffered_bytes" in str(err)
    assert grew < BOUND, f"RSS grew by {grew / MiB:.0f} MiB while refusing (bound {BOUND / MiB:.0f} MiB)"


@pytest.mark.timeout(90)
def test_an_oversized_frame_is_cut_before_it_is_held(receiver):
    attack = receiver
    size = 256 * MiB
    assert size > 4 * BOUND
    c0 = attack([(_data(0, (size // 8,), "x"), size)])  # one frame, 256 times the chunk limit
    err, grew = _peak_while(lambda: c0.recv(1, "x", Expect((size // 8,))))
    assert isinstance(err, WireError) and err.peer == 1, err
    assert "party 1 sent party 0 a frame over the 1048576-byte chunk limit" in str(err)
    assert grew < BOUND, f"RSS grew by {grew / MiB:.0f} MiB while refusing (bound {BOUND / MiB:.0f} MiB)"


@pytest.mark.timeout(90)
def test_a_declared_shape_the_operation_does_not_expect_allocates_nothing(receiver):
    attack = receiver
    size = 1 << 30  # 1 GiB declared (under max_message_bytes), sent in full as valid chunks
    c0 = attack(_chunked(0, size, "x")[:200])  # 200 MiB of its chunks actually sent
    err, grew = _peak_while(lambda: c0.recv(1, "x", Expect((2,))))
    assert isinstance(err, DesyncError) and err.peer == 1, err
    assert "expected shape (2,)" in str(err)
    assert grew < BOUND, f"RSS grew by {grew / MiB:.0f} MiB while refusing (bound {BOUND / MiB:.0f} MiB)"


@pytest.mark.timeout(90)
def test_an_absurd_declared_shape_is_refused_on_its_header(receiver):
    attack = receiver
    header = _data(0, (1 << 40,), "x")  # 8 TiB declared
    c0 = attack([(header, CHUNK)] * 64)
    err, grew = _peak_while(lambda: c0.recv(1, "x", Expect((2,))))
    assert isinstance(err, WireError) and err.peer == 1, err
    assert "over the 4294967296-byte message limit" in str(err)
    assert grew < BOUND


@pytest.mark.timeout(60)
def test_large_messages_still_travel_in_chunks(receiver):
    """The bound is not bought by refusing honest traffic: a 48 MiB message arrives whole, in 48 chunks."""
    attack = receiver
    frames = _chunked(0, 48 * MiB, "x")
    assert len(frames) == 48
    c0 = attack(frames)
    got = c0.recv(1, "x", Expect((6 * MiB,)))
    assert got.shape == (6 * MiB,) and not got.any()
