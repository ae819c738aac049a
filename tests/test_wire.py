"""Pure tier: the wire codec, fed good, split, truncated, corrupt and hostile frames.

Also what a communicator does with such frames when they arrive from a peer
(over the in-memory transport and over ZeroMQ ``inproc://``): every malformed
frame is a ``WireError`` naming the peer, never an unpickle, a crash or a hang.
"""

from __future__ import annotations

import os
import struct

import pytest
import torch
import zmq

from mpc.config import MPCConfig
from mpc.context import Expect
from mpc.errors import DesyncError, PeerTimeout, SecurityError, WireError
from parties import wire
from parties.memory import MemoryCommunicator, MemoryHub
from parties.zmq_comm import ZmqCommunicator

LIMIT = 1 << 20
_FMT = struct.Struct("<4sBBBBIQQ32s16qQ8s8sIQ")  # the layout the wire module documents


def _header(kind=wire.KIND_DATA, sender=1, seq=7, op="mul", dtype=torch.int64, shape=(3, 4), nbytes=None):
    if nbytes is None:
        n = 1
        for d in shape:
            n *= d
        nbytes = n * torch.empty(0, dtype=dtype).element_size()
    return wire.encode_header(kind, sender, seq, op, dtype, shape, nbytes)


def _fields(buf: bytes) -> list:
    return list(_FMT.unpack(buf))


def _pack(fields: list) -> bytes:
    return _FMT.pack(*fields)


# ----- round trips ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("dtype", list(wire.DTYPES.values()))
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4), (1,) * 16])
def test_header_and_payload_round_trip(dtype, shape):
    t = (torch.arange(int(torch.tensor(shape).prod()) if shape else 1) % 3).to(dtype).reshape(shape)
    payload = wire.payload_of(t)
    hb = wire.encode_header(wire.KIND_DATA, 4, 2**40 + 3, "matmul:trunc", dtype, tuple(shape), payload.nbytes)
    assert len(hb) == wire.HEADER_SIZE == _FMT.size
    h = wire.decode_header(hb, LIMIT, peer=4)
    assert (h.kind, h.sender, h.seq, h.op, h.dtype, h.shape, h.nbytes) == (
        wire.KIND_DATA,
        4,
        2**40 + 3,
        "matmul:trunc",
        dtype,
        tuple(shape),
        payload.nbytes,
    )
    back = wire.decode_payload(h, bytes(payload), peer=4)
    assert back.dtype == dtype and torch.equal(back, t)


@pytest.mark.timeout(20)
def test_payload_of_non_contiguous_and_extreme_values():
    t = torch.tensor([[-(1 << 63), (1 << 63) - 1], [0, -1]], dtype=torch.int64).t()  # a transposed view
    p = wire.payload_of(t)
    h = wire.decode_header(_header(shape=(2, 2), dtype=torch.int64), LIMIT)
    assert torch.equal(wire.decode_payload(h, bytes(p)), t)
    # The decoded tensor owns its memory: changing the buffer afterwards changes nothing.
    buf = bytearray(p)
    back = wire.decode_payload(h, buf)
    buf[:] = b"\x00" * len(buf)
    assert torch.equal(back, t)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", [wire.KIND_ABORT, wire.KIND_BYE, wire.KIND_ACK, wire.KIND_NACK])
def test_control_kinds_round_trip(kind):
    h = wire.decode_header(_header(kind=kind, op="bye", dtype=torch.uint8, shape=(0,)), LIMIT)
    assert h.kind == kind and h.nbytes == 0


@pytest.mark.timeout(20)
def test_the_ack_field_round_trips_and_is_replaced_in_place():
    hb = wire.encode_header(wire.KIND_DATA, 1, 9, "x", torch.int64, (2,), 16, part=3, ack=2**40 + 1)
    assert _fields(hb)[-1] == 2**40 + 1 and wire.decode_header(hb, LIMIT).ack == 2**40 + 1
    again = wire.with_ack(hb, 17)
    assert len(again) == wire.HEADER_SIZE and _fields(again)[:-1] == _fields(hb)[:-1]
    h, h2 = wire.decode_header(hb, LIMIT), wire.decode_header(again, LIMIT)
    assert h2.ack == 17 and h.same_message(h2)  # a chunk sent again is still a chunk of the same message


@pytest.mark.timeout(20)
def test_encode_header_refuses_what_cannot_be_sent():
    with pytest.raises(ValueError, match="longer than 32"):
        _header(op="x" * 33)
    _header(op="x" * 32)
    with pytest.raises(UnicodeEncodeError):
        _header(op="mül")
    with pytest.raises(ValueError, match="dimensions"):
        _header(shape=(1,) * 17)
    for dtype in (torch.float16, torch.bfloat16, torch.complex64):
        with pytest.raises(ValueError, match="cannot be sent"):
            _header(dtype=dtype, shape=(1,), nbytes=2)


# ----- hostile and broken headers ---------------------------------------------------------------


def _refused(buf: bytes, match: str, peer: int | None = 3) -> WireError:
    with pytest.raises(WireError, match=match) as err:
        wire.decode_header(buf, LIMIT, peer=peer)
    assert err.value.peer == peer
    return err.value


@pytest.mark.timeout(20)
def test_truncated_and_oversized_headers():
    good = _header()
    for cut in (0, 1, 4, wire.HEADER_SIZE // 2, wire.HEADER_SIZE - 1):
        e = _refused(good[:cut], "header of")
        assert "party 3" in str(e)
    _refused(good + b"\x00", "header of")
    with pytest.raises(WireError, match="an unidentified peer"):
        wire.decode_header(good[:-1], LIMIT, peer=None)


@pytest.mark.timeout(20)
def test_wrong_magic_version_kind():
    f = _fields(_header())
    _refused(_pack([b"XXXX", *f[1:]]), "wrong magic")
    _refused(b"GET / HTTP/1.1\r\n".ljust(wire.HEADER_SIZE, b"\x00"), "wrong magic")
    for version in (0, 1, 2, 255):
        g = list(f)
        g[1] = version
        e = _refused(_pack(g), "wire version")
        assert f"version {version}" in str(e)
    for kind in (0, 8, 255):
        g = list(f)
        g[2] = kind
        _refused(_pack(g), "unknown message kind")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("code", [0, 9, 10, 42, 255])
def test_forbidden_dtype_codes(code):
    g = _fields(_header())
    g[3] = code
    _refused(_pack(g), "forbidden dtype")


@pytest.mark.timeout(20)
def test_bad_shapes_and_sizes():
    f = _fields(_header(shape=(3, 4)))  # int64: 96 bytes
    # ndim over 16
    g = list(f)
    g[4] = 17
    _refused(_pack(g), "17-dimensional")
    # negative dimension
    g = list(f)
    g[9] = -3
    _refused(_pack(g), "malformed shape")
    # a non-zero dimension beyond ndim (hidden data in the padding)
    g = list(f)
    g[11] = 5
    _refused(_pack(g), "malformed shape")
    # declared size disagrees with the shape
    for nbytes in (0, 95, 97, 96 * 2, 2**63):
        g = list(f)
        g[7] = nbytes
        _refused(_pack(g), "declared")
    # non-ASCII operation name
    g = list(f)
    g[8] = b"\xff\xfe".ljust(32, b"\x00")
    _refused(_pack(g), "not ASCII")


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "shape",
    [(LIMIT // 8 + 1,), (1 << 20, 1 << 20), (1 << 62, 1 << 62), (2**63 - 1,) * 16, (1, 2**63 - 1)],
)
def test_huge_declared_shapes_are_refused_before_allocating(shape):
    # nbytes is made consistent with the shape where it fits in 64 bits, so only the limit can refuse it.
    n = 1
    for d in shape:
        n *= d
    g = _fields(_header(shape=(1,)))
    g[4] = len(shape)
    g[7] = min(8 * n, 2**64 - 1)
    g[9 : 9 + 16] = list(shape) + [0] * (16 - len(shape))
    e = _refused(_pack(g), "message limit")
    assert str(LIMIT) in str(e)


@pytest.mark.timeout(20)
def test_payload_size_mismatch():
    h = wire.decode_header(_header(shape=(3, 4)), LIMIT, peer=2)
    for n in (0, 95, 97, 200):
        with pytest.raises(WireError, match="payload bytes") as err:
            wire.decode_payload(h, b"\x00" * n, peer=2)
        assert err.value.peer == 2 and "party 2" in str(err.value)


@pytest.mark.timeout(20)
def test_fuzzed_headers_only_ever_raise_wire_error():
    good = bytearray(_header(shape=(2, 5), op="reveal"))
    rng = torch.Generator().manual_seed(0)
    accepted = 0
    for _ in range(4000):
        buf = bytearray(good)
        for _ in range(int(torch.randint(1, 4, (1,), generator=rng))):
            pos = int(torch.randint(0, len(buf), (1,), generator=rng))
            buf[pos] = int(torch.randint(0, 256, (1,), generator=rng))
        try:
            h = wire.decode_header(bytes(buf), LIMIT, peer=1)
        except WireError:
            continue
        accepted += 1
        # Whatever got through is self-consistent.
        n = 1
        for d in h.shape:
            n *= d
        assert h.nbytes == n * torch.empty(0, dtype=h.dtype).element_size() <= LIMIT
        assert h.dtype in wire.DTYPES.values()
    assert 0 < accepted < 4000


# ----- a communicator fed broken frames ----------------------------------------------------------


def _memory_pair():
    hub = MemoryHub(2)
    return hub, MemoryCommunicator(hub, 0, timeout=2.0, max_message_bytes=LIMIT)


@pytest.mark.timeout(20)
def test_communicator_refuses_frames_with_wrong_payload_length():
    hub, c0 = _memory_pair()
    hub.boxes[0].put((_header(sender=1, seq=0, op="x", shape=(2,)), b"\x00" * 15, 1))
    with pytest.raises(WireError, match="party 1 sent 15 payload bytes") as err:
        c0.recv(1, "x", Expect((2,)))
    assert err.value.peer == 1


@pytest.mark.timeout(20)
def test_communicator_refuses_corrupt_and_spoofed_frames():
    # corrupt header
    hub, c0 = _memory_pair()
    hub.boxes[0].put((b"\x01\x02garbage", b"", 1))
    with pytest.raises(WireError, match="party 1 sent a header of 9 bytes"):
        c0.recv(1, "x", Expect((2,)))
    # a sender id that names no peer
    hub, c0 = _memory_pair()
    hub.boxes[0].put((_header(sender=9, seq=0, op="x", shape=(2,)), b"\x00" * 16, 1))
    with pytest.raises(WireError, match="sender 9"):
        c0.recv(1, "x", Expect((2,)))
    # a frame from party 1 that claims to come from the dealer (node 2)
    hub, c0 = _memory_pair()
    hub.boxes[0].put((_header(sender=2, seq=0, op="x", shape=(2,)), b"\x00" * 16, 1))
    with pytest.raises(SecurityError, match="claims to come from the dealer"):
        c0.recv(1, "x", Expect((2,)))
    # a frame over the message limit (checked on the header, before the payload is touched)
    hub, c0 = _memory_pair()
    hub.boxes[0].put((_header(sender=1, seq=0, op="x", shape=(LIMIT,)), b"", 1))
    with pytest.raises(WireError, match="message limit"):
        c0.recv(1, "x", Expect(None))


@pytest.mark.timeout(20)
def test_communicator_refuses_wrong_operation_and_dtype():
    hub, c0 = _memory_pair()
    hub.boxes[0].put((_header(sender=1, seq=0, op="y", shape=(2,)), b"\x00" * 16, 1))
    with pytest.raises(DesyncError, match=r"sent 'y' \(message #0\) where party 0 expected 'x' \(message #0\)"):
        c0.recv(1, "x", Expect((2,)))
    hub, c0 = _memory_pair()
    hub.boxes[0].put((_header(sender=1, seq=0, op="x", shape=(2,), dtype=torch.float64), b"\x00" * 16, 1))
    with pytest.raises(DesyncError, match="float64"):
        c0.recv(1, "x", Expect((2,)))
    # the good frame is accepted, for contrast
    hub, c0 = _memory_pair()
    hub.boxes[0].put((_header(sender=1, seq=0, op="x", shape=(2,)), struct.pack("<2q", -5, 9), 1))
    assert c0.recv(1, "x", Expect((2,))).tolist() == [-5, 9]


def _sent_to(hub: MemoryHub, node: int) -> list[wire.Header]:
    out = []
    while not hub.boxes[node].empty():
        out.append(wire.decode_header(hub.boxes[node].get_nowait()[0], LIMIT))
    return out


@pytest.mark.timeout(20)
def test_a_message_ahead_of_a_gap_waits_for_it_and_the_gap_is_asked_for():
    """Message #5 first: held, not passed up; the receiver asks party 1 to send again from #0, and names it at
    the deadline.  Once #0..#4 arrive (with a duplicate), all six are taken in order."""
    hub = MemoryHub(2)
    c0 = MemoryCommunicator(hub, 0, timeout=0.6, max_message_bytes=LIMIT, retransmit_after=0.1)
    frame = {i: (_header(sender=1, seq=i, op="x", shape=(1,)), struct.pack("<q", i), 1) for i in range(6)}
    hub.boxes[0].put(frame[5])
    with pytest.raises(PeerTimeout, match="waited 0.6s for 'x' from party 1") as err:
        c0.recv(1, "x", Expect((1,)))
    assert err.value.peer == 1
    nacks = [h for h in _sent_to(hub, 1) if h.kind == wire.KIND_NACK]
    assert nacks and all((h.seq, h.part) == (0, 0) for h in nacks)
    for i in (0, 1, 1, 2, 3, 4):
        hub.boxes[0].put(frame[i])
    assert [int(c0.recv(1, "x", Expect((1,)))) for _ in range(6)] == list(range(6))
    assert c0.stats.duplicates == 1


@pytest.mark.timeout(30)
def test_zmq_communicator_refuses_split_frames():
    """Over ZeroMQ, a message must be exactly [header, payload]: one or three frames are refused."""
    zctx = zmq.Context()
    tag = os.urandom(4).hex()
    addrs = [f"inproc://wire-{tag}-{i}" for i in range(3)]
    cfg = MPCConfig(timeout=3.0, max_message_bytes=LIMIT)
    c0 = ZmqCommunicator(0, 2, addrs, cfg, context=zctx)
    raw = zctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(addrs[0])
    try:
        good = _header(sender=1, seq=0, op="x", shape=(2,))
        for frames in ([good], [good, b"\x00" * 16, b"extra"]):
            raw.send_multipart(frames)
            with pytest.raises(WireError, match=f"{len(frames)} frames"):
                c0.recv(1, "x", Expect((2,)))
        # A header cut short and its payload: refused with the header's length.
        raw.send_multipart([good[:100], b"\x00" * 16])
        with pytest.raises(WireError, match="header of 100 bytes"):
            c0.recv(1, "x", Expect((2,)))
        # A well-formed message still gets through afterwards.
        raw.send_multipart([good, struct.pack("<2q", 3, -4)])
        assert c0.recv(1, "x", Expect((2,))).tolist() == [3, -4]
    finally:
        raw.close(0)
        c0.abort("test over")
        zctx.term()


# ----- chunked messages ---------------------------------------------------------------------------------

CHUNK = 4096


def _chunked_pair(**limits):
    hub = MemoryHub(2)
    return hub, MemoryCommunicator(hub, 0, timeout=2.0, max_message_bytes=LIMIT, chunk_bytes=CHUNK, **limits)


def _chunks(t: torch.Tensor, seq=0, op="x", sender=1):
    data = bytes(wire.payload_of(t))
    frames = []
    for part, off in enumerate(range(0, len(data), CHUNK)):
        h = wire.encode_header(wire.KIND_DATA, sender, seq, op, t.dtype, tuple(t.shape), len(data), part=part)
        frames.append((h, data[off : off + CHUNK], sender))
    return frames


@pytest.mark.timeout(20)
def test_a_large_message_is_sent_in_chunks_and_reassembled():
    hub = MemoryHub(2)
    cs = [MemoryCommunicator(hub, r, timeout=2.0, max_message_bytes=LIMIT, chunk_bytes=CHUNK) for r in (0, 1)]
    t = torch.arange(3 * CHUNK // 8 + 5, dtype=torch.int64).reshape(-1, 1)
    cs[1].send(0, "big", t)
    frames = [hub.boxes[0].get_nowait() for _ in range(hub.boxes[0].qsize())]  # what travelled
    for f in frames:
        hub.boxes[0].put(f)
    assert len(frames) == 4 and all(len(p) <= CHUNK for _, p, _ in frames)
    assert [wire.decode_header(h, LIMIT).part for h, _, _ in frames] == [0, 1, 2, 3]
    got = cs[0].recv(1, "big", Expect(tuple(t.shape)))
    assert torch.equal(got, t)
    assert cs[0].stats.bytes_recv == t.numel() * 8


def _refused_chunks(frames, error, match, expect=(CHUNK,), **limits):
    hub, c0 = _chunked_pair(**limits)
    for f in frames:
        hub.boxes[0].put(f)
    with pytest.raises(error, match=match) as err:
        c0.recv(1, "x", Expect(expect))
    assert err.value.peer == 1
    return c0


@pytest.mark.timeout(20)
def test_chunks_out_of_order_are_put_back_in_order():
    t = torch.arange(CHUNK, dtype=torch.int64)  # 8 chunks
    fr = _chunks(t)
    hub, c0 = _chunked_pair()
    for i in (3, 0, 7, 1, 1, 3, 2, 6, 5, 4):  # reordered, with duplicates
        hub.boxes[0].put(fr[i])
    assert torch.equal(c0.recv(1, "x", Expect((CHUNK,))), t)
    assert c0.stats.duplicates == 2


@pytest.mark.timeout(20)
def test_chunks_of_another_message_or_too_many_are_refused():
    t = torch.zeros(CHUNK, dtype=torch.int64)  # 8 chunks
    fr = _chunks(t)
    _refused_chunks(
        [fr[0], _chunks(t, op="y")[1]],
        WireError,
        r"chunk #1 of 'y' \(message #0\) where chunk #1 of 'x' \(message #0\)",
    )
    h, p, s = fr[1]
    _refused_chunks([fr[0], (h, p + b"\x00", s)], WireError, r"frame of 4097 bytes, over the 4096-byte chunk")
    odd = _chunks(torch.zeros(CHUNK // 8 + CHUNK // 16, dtype=torch.int64))  # 1.5 chunks: more than declared
    _refused_chunks(
        [odd[0], (odd[1][0], bytes(CHUNK), 1)], WireError, r"chunk of 4096 bytes.*4096 of its 6144", expect=(768,)
    )
    _refused_chunks([fr[0], (h, p[:-1], s)], WireError, r"chunk of 4095 bytes")
    h0, p0, _ = fr[0]
    _refused_chunks([(h0, p0 + p0, 1)], WireError, r"frame of 8192 bytes, over the 4096-byte chunk limit")


@pytest.mark.timeout(20)
def test_a_chunk_whose_predecessors_never_come_ends_in_the_deadline():
    fr = _chunks(torch.zeros(CHUNK, dtype=torch.int64))
    hub = MemoryHub(2)
    c0 = MemoryCommunicator(hub, 0, timeout=0.5, max_message_bytes=LIMIT, chunk_bytes=CHUNK, retransmit_after=0.1)
    hub.boxes[0].put(fr[1])
    with pytest.raises(PeerTimeout, match="from party 1") as err:
        c0.recv(1, "x", Expect((CHUNK,)))
    assert err.value.peer == 1 and 1 not in c0._partial  # held apart, nothing allocated for it


@pytest.mark.timeout(20)
def test_an_unexpected_shape_is_refused_at_its_first_chunk():
    t = torch.zeros(CHUNK, dtype=torch.int64)
    fr = _chunks(t)
    # Only the first chunk arrives: the receive refuses at once, without waiting for (or holding) the rest.
    c0 = _refused_chunks(fr[:1], DesyncError, r"expected shape \(2,\)", expect=(2,))
    assert c0._partial[1].dest is None  # nothing allocated for it: the rest would be dropped


@pytest.mark.timeout(20)
def test_data_sent_ahead_is_held_up_to_the_limit():
    t = torch.zeros(CHUNK // 8, dtype=torch.int64)  # one chunk each
    frames = [f for seq in range(6) for f in _chunks(t, seq=seq, op="ahead")]
    hub, c0 = _chunked_pair(max_buffered_bytes=4 * CHUNK)
    for f in frames:
        hub.boxes[0].put(f)
    # Party 0 awaits the dealer: party 1's messages are ahead of it; the fifth is over the limit.
    with pytest.raises(WireError, match=r"party 1 sent 'ahead' \(message #4.*over the 16384-byte limit") as err:
        c0.recv(2, "x", Expect((2,)))
    assert err.value.peer == 1
    # The same messages, awaited one by one, pass: what the current operation expects is not "ahead".
    hub, c0 = _chunked_pair(max_buffered_bytes=4 * CHUNK)
    for f in frames:
        hub.boxes[0].put(f)
    for _ in range(6):
        c0.recv(1, "ahead", Expect(tuple(t.shape)))
