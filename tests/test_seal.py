"""Sealed links, frame by frame (``parties.seal``; no sockets).

Round trips in both directions; every refusal: a changed byte anywhere in a
frame, a replayed or reordered counter, another run's keys, a frame reflected
back to its sender, a hello under wrong keys, a second handshake, an
unencrypted peer; the one tolerated late frame (after a replaced connection,
once); nonces that never repeat; key files that ZeroMQ's CURVE wrote still
work.  Each refusal comes with the control that the same frame, unchanged, is
accepted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zmq

from mpc.errors import ConfigError, ProtocolError, SecurityError, WireError
from parties import seal, wire
from parties.seal import NodeKeys, Sealer


def _header(seq: int = 0, op: str = "x", n: int = 4) -> bytes:
    return wire.encode_header(wire.KIND_DATA, 0, seq, op, torch.int64, (n,), 8 * n)


def _payload(n: int = 4, start: int = 0) -> memoryview:
    return wire.payload_of(torch.arange(start, start + n, dtype=torch.int64))


def _keys(pairs: list[tuple[bytes, bytes]], node: int, own: tuple[bytes, bytes] | None = None) -> NodeKeys:
    public, secret = own or pairs[node]
    return NodeKeys(public, secret, tuple(p[0] for p in pairs))


def _linked(pairs: list[tuple[bytes, bytes]] | None = None) -> tuple[Sealer, Sealer]:
    """Nodes 0 and 1 of a 3-node cluster (node 2 not linked here), hellos exchanged."""
    pairs = pairs or [seal.keypair() for _ in range(3)]
    a = Sealer(0, _keys(pairs, 0), [1])
    b = Sealer(1, _keys(pairs, 1), [0])
    assert a.open(b.hello(0), b"") == (1, None, None)
    assert b.open(a.hello(1), b"") == (0, None, None)
    return a, b


def _frame(sender: Sealer, peer: int, seq: int = 0, n: int = 4) -> tuple[bytes, bytes]:
    head, body = sender.seal(peer, _header(seq, n=n), _payload(n, seq))
    return head, bytes(body)


def _flip(data: bytes, i: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 0x01
    return bytes(out)


# ----- round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 4, 1 << 14], ids=["empty", "small", "128KiB"])
def test_round_trip_both_directions(n):
    a, b = _linked()
    for src, dst, peer in ((a, b, 1), (b, a, 0)):
        for seq in range(3):
            head, body = src.seal(peer, _header(seq, n=n), _payload(n, seq))
            assert len(head) == seal.HEAD_BYTES and len(body) == 8 * n + seal.TAG_BYTES
            sender, header, payload = dst.open(head, body)
            assert sender == src.rank and header == _header(seq, n=n)
            assert isinstance(payload, np.ndarray) and payload.tobytes() == bytes(_payload(n, seq))
            assert torch.equal(
                wire.decode_payload(wire.decode_header(header, 1 << 30), payload), torch.arange(seq, seq + n)
            )


def test_nothing_is_sealed_before_the_peers_hello_and_its_frames_wait():
    pairs = [seal.keypair() for _ in range(2)]
    a, b = Sealer(0, _keys(pairs, 0), [1]), Sealer(1, _keys(pairs, 1), [0])
    assert not a.ready(1)
    with pytest.raises(ProtocolError, match="no key for node 1 yet"):
        a.seal(1, _header(), _payload())
    b.open(a.hello(1), b"")
    head, body = _frame(b, 0)  # b has a's hello, a not yet b's: a cannot open it, drops it as lost
    assert a.open(head, body) is None
    a.open(b.hello(0), b"")
    assert a.ready(1) and a._eph is None, "the ephemeral secret goes once every link has its keys"


def test_the_header_and_payload_are_not_on_the_wire():
    a, b = _linked()
    head, body = a.seal(1, _header(op="secret-op-name"), _payload(64))
    assert b"secret-op-name" not in head and wire.MAGIC not in head
    assert bytes(_payload(64))[8:40] not in bytes(body)


# ----- refusals ----------------------------------------------------------------------------------------------


def test_every_changed_byte_is_refused():
    a, b = _linked()
    frames = [_frame(a, 1, seq) for seq in range(1 + seal.HEAD_BYTES + 48)]
    k = 0
    for part in (0, 1):
        size = len(frames[0][part])
        for i in range(size):
            head, body = frames[k]
            k += 1
            forged = (_flip(head, i), body) if part == 0 else (head, _flip(body, i))
            with pytest.raises((SecurityError, WireError)) as err:
                b.open(*forged)
            field = i if part == 0 else seal.PREFIX.size
            if part == 1 or field >= 12:  # the counter, the sealed header, its tag, the payload, its tag
                assert type(err.value) is SecurityError and "claims to come from node 0 does not authenticate" in str(
                    err.value
                )
    assert k < len(frames)
    assert b.open(*frames[k])[0] == 0  # control: an unchanged frame, after all those refusals


def test_a_replayed_frame_is_refused():
    a, b = _linked()
    f1, f2 = _frame(a, 1, 0), _frame(a, 1, 1)
    b.open(*f1)
    b.open(*f2)
    for f in (f1, f2):
        with pytest.raises(SecurityError, match=r"node 0 sent frame #\d after frame #2.*replayed"):
            b.open(*f)
    assert b.open(*_frame(a, 1, 2))[0] == 0


def test_a_reordered_frame_is_refused():
    a, b = _linked()
    f1, f2, f3 = (_frame(a, 1, s) for s in range(3))
    b.open(*f1)
    b.open(*f3)
    with pytest.raises(SecurityError, match=r"node 0 sent frame #2 after frame #3.*reordered") as err:
        b.open(*f2, conn=None)
    assert isinstance(err.value, seal.LateFrame) and err.value.peer == 0


def test_after_a_reconnect_a_skipped_frame_is_taken_once():
    """ZeroMQ may read a dropped connection's last frames after the first ones of its successor."""
    a, b = _linked()
    f = [_frame(a, 1, s) for s in range(6)]
    b.open(*f[0], conn="old")
    b.open(*f[3], conn="new")  # #2 and #3 (frames f[1], f[2]) skipped
    assert b.open(*f[1], conn="old")[0] == 0  # on the old connection: late, taken
    with pytest.raises(SecurityError, match="replayed"):
        b.open(*f[1], conn="third")  # but once only
    b.open(*f[4], conn="new")
    assert b.open(*f[2], conn="old")[0] == 0
    with pytest.raises(SecurityError, match="replayed"):
        b.open(*f[0], conn="old")  # never skipped
    assert b.late == 2
    # With one file descriptor number for both connections, the transport's word is what counts.
    c, d = _linked()
    g = [_frame(c, 1, s) for s in range(4)]
    d.open(*g[0], conn=7)
    d.open(*g[2], conn=7)
    with pytest.raises(seal.LateFrame):
        d.open(*g[1], conn=7)
    d.connection_ended(0)
    assert d.open(*g[1], conn=7)[0] == 0


def test_another_runs_keys_are_refused():
    pairs = [seal.keypair() for _ in range(3)]
    a, b = _linked(pairs)
    old = _frame(a, 1, 0)
    a2, b2 = _linked(pairs)  # the same long-lived keys, a new run: new ephemeral keys
    with pytest.raises(SecurityError, match="does not authenticate"):
        b2.open(*old)
    assert b2.open(*_frame(a2, 1, 0))[0] == 0
    # A hello of the old run, replayed into the new one: a second handshake, refused.
    with pytest.raises(SecurityError, match="node 0 sent a new handshake in the middle of the run"):
        b2.open(a.hello(1), b"")
    assert b2.open(a2.hello(1), b"") == (0, None, None)  # the same hello again (a reconnect) is fine


def test_a_frame_reflected_back_to_its_sender_is_refused():
    a, b = _linked()
    head, body = _frame(a, 1)
    with pytest.raises(SecurityError, match="names node 0 itself as its sender: a frame reflected back"):
        a.open(head, body)
    # Relabelled as coming from node 1: the key of the direction 1 -> 0 does not open it.
    relabelled = bytearray(head)
    seal.PREFIX.pack_into(relabelled, 0, *seal.PREFIX.unpack_from(head)[:4], 1, seal.PREFIX.unpack_from(head)[5])
    with pytest.raises(SecurityError, match="claims to come from node 1 does not authenticate"):
        a.open(bytes(relabelled), body)
    assert b.open(head, body)[0] == 0


def test_a_hello_under_wrong_keys_fails_at_both_ends():
    pairs = [seal.keypair() for _ in range(3)]
    (intruder,) = [seal.keypair()]
    a = Sealer(0, _keys(pairs, 0), [1])
    fake = Sealer(1, _keys(pairs, 1, own=intruder), [0])  # it knows the cluster's public keys, not party 1's secret
    with pytest.raises(SecurityError, match="the hello of node 1 does not verify at node 0: the keys do not match"):
        a.open(fake.hello(0), b"")
    with pytest.raises(SecurityError, match="the hello of node 0 does not verify at node 1: the keys do not match"):
        fake.open(a.hello(1), b"")
    assert not a.ready(1)
    # A hello meant for another node does not verify either.
    c = Sealer(2, _keys(pairs, 2), [0, 1])
    b = Sealer(1, _keys(pairs, 1), [0, 2])
    with pytest.raises(SecurityError, match="the hello of node 1 does not verify at node 2"):
        c.open(b.hello(0), b"")  # node 1's hello to node 0, delivered to node 2
    c.open(b.hello(2), b"")  # control


def test_an_unencrypted_peer_and_strangers_are_refused():
    a, b = _linked()
    plain = wire.encode_header(wire.KIND_DATA, 0, 0, "x", torch.int64, (2,), 16)
    with pytest.raises(SecurityError, match="calls itself node 0 sent node 1 an unencrypted frame.*--insecure"):
        b.open(plain, bytes(16))
    with pytest.raises(WireError, match="not a sealed mpc frame"):
        b.open(b"GET / HTTP/1.1\r\n\r\n", b"")
    head, body = _frame(a, 1)
    stranger = bytearray(head)
    stranger[8] = 2  # the sender field: node 2 is no peer of node 1 here
    with pytest.raises(WireError, match="names sender 2, which is not a peer of node 1"):
        b.open(bytes(stranger), body)
    with pytest.raises(WireError, match="sent a hello with a payload"):
        b.open(a.hello(1), b"x")


def test_nonces_never_repeat():
    """Every (key, nonce) pair used to seal, over both directions and many frames, is used once."""
    a, b = _linked()
    used: list[tuple[int, bytes]] = []

    class Recording:
        def __init__(self, aead):
            self.aead = aead

        def encrypt(self, nonce, data, ad):
            used.append((id(self.aead), nonce))
            return self.aead.encrypt(nonce, data, ad)

        def encrypt_into(self, nonce, data, ad, buf):
            used.append((id(self.aead), nonce))
            return self.aead.encrypt_into(nonce, data, ad, buf)

    for s, peer in ((a, 1), (b, 0)):
        s._links[peer].tx = Recording(s._links[peer].tx)
    for i in range(200):
        for s, d, peer in ((a, b, 1), (b, a, 0)):
            n = 1 << 14 if i % 50 == 0 else 4  # some payloads sealed in place
            d.open(*_frame(s, peer, i, n))
    assert len(used) == 2 * 2 * 200 and len(set(used)) == len(used)
    assert a._links[1].tx.aead is not b._links[0].tx.aead


def test_keys_from_zeromq_curve_and_from_keygen_agree():
    public, secret = zmq.curve_keypair()  # key files written before sealed links keep working
    assert seal.public_of(secret) == public
    public, secret = seal.keypair()
    assert zmq.curve_public(secret) == public and len(public) == len(secret) == 40
    with pytest.raises(ConfigError, match="not a z85 Curve25519 key"):
        seal.public_of(b"short")
    pairs = [seal.keypair() for _ in range(2)]
    assert "secret=<hidden>" in repr(_keys(pairs, 0)) and pairs[0][1].decode() not in repr(_keys(pairs, 0))
