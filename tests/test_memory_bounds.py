"""Memory bounded against an authenticated peer (issue 11, item 2), measured as the receiver's RSS.

The receiver is a real CURVE communicator over tcp:// in this process; the
hostile peer runs in another process with party 1's real key, so that what it
holds (a 256 MiB frame, a flood of frames) is not counted here.  Memory is the
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
import zmq

from mpc.config import MPCConfig
from mpc.context import Expect
from mpc.errors import DesyncError, WireError
from parties import wire, zmq_comm
from parties.keys import ephemeral_keys
from parties.ports import Listeners
from parties.zmq_comm import CurveKeys, ZmqCommunicator

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


def _attacker(keys, server_public: bytes, address: str, frames: list[tuple[bytes, int]], ready) -> None:
    """Party 1 (its real key) sending ``frames``: (header, payload size) pairs, payload bytes made here."""
    zctx = zmq.Context()
    s = zctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_publickey, s.curve_secretkey = keys
    s.curve_serverkey = server_public
    s.connect(address)
    # A node built on this toolkit names its connection first (wire.KIND_HELLO), as this one does.
    s.send_multipart([wire.encode_header(wire.KIND_HELLO, 1, 0, "hello", torch.uint8, (0,), 0), b""])
    buffers: dict[int, bytes] = {}
    for header, size in frames:
        payload = buffers.setdefault(size, bytes(size))
        s.send_multipart([header, payload], copy=False)
    ready.set()
    time.sleep(30)  # keep the connection (and the queued frames) alive; the test kills this process


@pytest.fixture
def receiver(monkeypatch):
    monkeypatch.setattr(zmq_comm, "CLOSE_LINGER_MS", 0)
    if not _clear_peak():
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    keys = ephemeral_keys(3)
    with Listeners(3) as ls:
        addrs, fd0 = ls.addresses, ls.take(0)
    cfg = MPCConfig(timeout=8.0, chunk_bytes=CHUNK, max_buffered_bytes=HELD)
    curve = CurveKeys(keys[0][0], keys[0][1], tuple(k[0] for k in keys))
    c0 = ZmqCommunicator(0, 2, addrs, cfg, curve=curve, listen_fd=fd0)
    procs: list = []

    def attack(frames: list[tuple[bytes, int]]) -> None:
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        p = ctx.Process(target=_attacker, args=(keys[1], keys[0][0], addrs[0], frames, ready), daemon=True)
        p.start()
        procs.append(p)
        assert ready.wait(30), "the attacking process did not start"

    try:
        yield c0, attack
    finally:
        for p in procs:
            p.kill()
            p.join(5)
        c0.abort("test over")


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
    c0, attack = receiver
    frames = [f for seq in range(32) for f in _chunked(seq, 8 * MiB, "flood")]  # 256 MiB of well-formed data
    assert sum(size for _, size in frames) > 4 * BOUND
    attack(frames)
    # Party 0 awaits the dealer meanwhile: party 1's frames are ahead of anything it expects.
    err, grew = _peak_while(lambda: c0.recv(2, "x", Expect((2,))))
    assert isinstance(err, WireError) and err.peer == 1, err
    assert "party 1 sent 'flood'" in str(err) and "max_buffered_bytes" in str(err)
    assert grew < BOUND, f"RSS grew by {grew / MiB:.0f} MiB while refusing (bound {BOUND / MiB:.0f} MiB)"


@pytest.mark.timeout(90)
def test_an_oversized_frame_is_cut_before_it_is_held(receiver):
    c0, attack = receiver
    size = 256 * MiB
    assert size > 4 * BOUND
    attack([(_data(0, (size // 8,), "x"), size)])  # one frame, 256 times the chunk limit
    err, grew = _peak_while(lambda: c0.recv(1, "x", Expect((size // 8,))))
    assert isinstance(err, WireError) and err.peer == 1, err
    assert "party 1 sent party 0 a frame over the 1048576-byte chunk limit" in str(err)
    assert grew < BOUND, f"RSS grew by {grew / MiB:.0f} MiB while refusing (bound {BOUND / MiB:.0f} MiB)"


@pytest.mark.timeout(90)
def test_a_declared_shape_the_operation_does_not_expect_allocates_nothing(receiver):
    c0, attack = receiver
    size = 1 << 30  # 1 GiB declared (under max_message_bytes), sent in full as valid chunks
    attack(_chunked(0, size, "x")[:200])  # 200 MiB of its chunks actually sent
    err, grew = _peak_while(lambda: c0.recv(1, "x", Expect((2,))))
    assert isinstance(err, DesyncError) and err.peer == 1, err
    assert "expected shape (2,)" in str(err)
    assert grew < BOUND, f"RSS grew by {grew / MiB:.0f} MiB while refusing (bound {BOUND / MiB:.0f} MiB)"


@pytest.mark.timeout(90)
def test_an_absurd_declared_shape_is_refused_on_its_header(receiver):
    c0, attack = receiver
    header = _data(0, (1 << 40,), "x")  # 8 TiB declared
    attack([(header, CHUNK)] * 64)
    err, grew = _peak_while(lambda: c0.recv(1, "x", Expect((2,))))
    assert isinstance(err, WireError) and err.peer == 1, err
    assert "over the 4294967296-byte message limit" in str(err)
    assert grew < BOUND


@pytest.mark.timeout(60)
def test_large_messages_still_travel_in_chunks(receiver):
    """The bound is not bought by refusing honest traffic: a 48 MiB message arrives whole, in 48 chunks."""
    c0, attack = receiver
    frames = _chunked(0, 48 * MiB, "x")
    assert len(frames) == 48
    attack(frames)
    got = c0.recv(1, "x", Expect((6 * MiB,)))
    assert got.shape == (6 * MiB,) and not got.any()
