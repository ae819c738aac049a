"""Sealed links: every frame encrypted and authenticated under per-direction keys from an X25519 handshake.

The default (not ``--insecure``) mode of ``parties.zmq_comm``: the sockets are
plain TCP ZeroMQ sockets and every frame is sealed here with AES-256-GCM
(``cryptography``, AES-NI).  Pure: no sockets; ``tests/test_seal.py`` tests it
frame by frame.

Keys.  Every node has a long-lived Curve25519 key pair (``mpc keygen``, z85
text; the cluster file lists every public key ``S``) and makes a fresh
ephemeral X25519 key pair ``e, E`` when its communicator opens (from the
operating system's CSPRNG).  The ephemeral secret is never written anywhere and
is dropped once every peer's keys are derived.

Handshake.  Node ``i`` sends every peer ``j`` a *hello*: ``E_i`` and a key
confirmation ``HMAC-SHA256(kh, prefix | E_i)`` under
``kh = HKDF-SHA256(DH(s_i, S_j), info = "mpc-torch hello v1" | i | j | S_i | S_j)``.
Only ``i`` and ``j`` can compute that static-static secret, so ``j`` checks the
hello with its own secret key and ``i``'s listed public key: a key file or a
cluster file that does not match fails at the first hello, at both ends, with a
``SecurityError`` that names the peer.  Both hellos of a link go at once
(neither waits for the other); a node seals nothing for a peer before that
peer's hello came.  A hello alone is not fresh (a recorded one verifies in any
run), but the frame keys depend on both ephemeral keys, so a replayed hello can
only stop a run, never open or forge a frame.

Frame keys: the four Diffie-Hellman values that Noise's KK pattern mixes
(Perrin, "The Noise Protocol Framework", rev. 34, 2018, section 7.5), through
one HKDF whose info binds the whole handshake.  For the direction ``i -> j``::

    ss = DH(s_i, S_j)   ee = DH(e_i, E_j)   se = DH(s_i, E_j)   es = DH(e_i, S_j)
    key(i -> j) = HKDF-SHA256(ss | ee | se | es, salt = none,
                              info = "mpc-torch seal v1" | i | j | S_i | S_j | E_i | E_j)   (32 bytes)

(ids as u32 little-endian; ``j`` computes the same four values with its own
secrets.)  ``ss`` authenticates both ends, ``ee`` gives forward secrecy (the
ephemeral secrets are gone after the run), ``se`` and ``es`` tie each side's
static key to the other's ephemeral, so that a stolen static key of ``i`` does
not let anyone pose as ``j`` towards ``i`` (key-compromise impersonation).  The
info binds the direction: the two directions of a link have different keys,
and every run has new ones.

Frames (two ZeroMQ parts)::

    prefix  (20 bytes, in the clear, authenticated as associated data of both seals)
            magic b"MPCS" | version u8 = 1 | kind u8 (1 frame, 2 hello) | zero u16 | sender u32 | counter u64
    part 1  prefix | AES-256-GCM(key, nonce(counter, 0), header, ad=prefix)        20 + 224 + 16 bytes
    part 2  AES-256-GCM(key, nonce(counter, 1), payload, ad=prefix)              payload + 16 bytes
    nonce(counter, d) = d (u32 LE) | counter (u64 LE)                            (12 bytes)
    hello   part 1: prefix (kind 2, counter 0) | E_i (32) | HMAC (32); part 2 empty

The counter numbers the frames of one direction 1, 2, 3, ... and is never
reused (a frame sent again after a reconnect is sealed again with a new one),
so no (key, nonce) pair repeats; a sender refuses to go past 2^64 - 2.

What a receiver refuses (``SecurityError`` naming the claimed sender):

* a frame that does not authenticate: a byte changed anywhere (prefix, header,
  payload, tag), a frame of another run or another link, a frame reflected
  back to its sender (its direction's key is not the one it was sealed with);
* a frame whose counter was accepted before (replayed) or that comes after a
  later one (reordered).  One case is not an attack: TCP delivers one
  connection's frames in order, but after ZeroMQ replaces a dropped connection
  it may hand over the old connection's last frames after the new one's first.
  So a frame below the highest counter accepted is taken only if its counter
  was skipped (never accepted) and only after the sender's connection was
  replaced (the transport says so, or its frames came on two connections); it
  is taken once, and the reliable layer puts it back in order by its
  authenticated sequence number.  The last ``MAX_GAPS`` runs of skipped
  counters are remembered; anything else below the highest is refused;
* a hello that does not verify (wrong keys), or a second, different hello from
  the same peer in one run (a restarted peer, or an old hello replayed).

A sealed frame from a peer whose hello has not come cannot be opened: it is
dropped as if lost (it can only follow a dropped connection that carried the
hello; the peer sends its hello and the frame again on the next one).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from zmq.utils import z85

from mpc.errors import ConfigError, ProtocolError, SecurityError, WireError

from . import wire

__all__ = [
    "NodeKeys",
    "Sealer",
    "LateFrame",
    "keypair",
    "public_of",
    "HEAD_BYTES",
    "HELLO_BYTES",
    "TAG_BYTES",
    "OVERHEAD",
]

MAGIC = b"MPCS"
VERSION = 1
KIND_FRAME, KIND_HELLO = 1, 2
PREFIX = struct.Struct("<4sBBHIQ")
TAG_BYTES = 16
KEY_BYTES = 32
HEAD_BYTES = PREFIX.size + wire.HEADER_SIZE + TAG_BYTES  # part 1 of a sealed frame
HELLO_BYTES = PREFIX.size + KEY_BYTES + 32  # part 1 of a hello
OVERHEAD = PREFIX.size + TAG_BYTES  # the most a frame part grows by sealing
MAX_COUNTER = (1 << 64) - 2
MAX_GAPS = 64  # runs of skipped counters remembered per sender (see the module docstring)
SEAL_LABEL = b"mpc-torch seal v1"
HELLO_LABEL = b"mpc-torch hello v1"
_NONCE = struct.Struct("<IQ")
_IDS = struct.Struct("<II")


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _decode(text: bytes, what: str) -> bytes:
    try:
        raw = z85.decode(text)
    except (ValueError, KeyError, IndexError, TypeError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"{what} is not a z85 Curve25519 key (40 characters from `mpc keygen`)")
    return raw


def keypair() -> tuple[bytes, bytes]:
    """A fresh Curve25519 key pair as z85 text ``(public, secret)`` (the format of ``mpc keygen``)."""
    secret = X25519PrivateKey.generate()
    raw_secret = secret.private_bytes_raw()
    return z85.encode(_raw_public(secret.public_key())), z85.encode(raw_secret)


def public_of(secret: bytes) -> bytes:
    """The z85 public key of a z85 secret key (``ConfigError`` if it is not one)."""
    raw = _decode(secret, "the secret key")
    return z85.encode(_raw_public(X25519PrivateKey.from_private_bytes(raw).public_key()))


@dataclass(frozen=True)
class NodeKeys:
    """This node's Curve25519 key pair and every node's public key (z85 text; index = node id)."""

    public: bytes
    secret: bytes
    node_keys: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"NodeKeys(public={self.public!r}, secret=<hidden>)"


class LateFrame(SecurityError):
    """An authentic frame below the highest counter accepted, in a run of skipped counters, before the sender's
    connection was known to be replaced: the transport may look for a dropped connection and try again."""

    def __init__(self, message: str, peer: int) -> None:
        super().__init__(message)
        self.peer = peer


def _nonce(counter: int, domain: int) -> bytes:
    return _NONCE.pack(domain, counter)


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(ikm)


class _Link:
    """One peer: this node's hello to it, and once its hello came, the keys and counters of both directions."""

    __slots__ = ("hello", "hello_key", "ss", "eph", "tx", "rx", "sent", "top", "gaps", "conn", "replaced")

    def __init__(self, hello: bytes, hello_key: bytes, ss: bytes) -> None:
        self.hello = hello  # this node's hello to the peer (the same bytes each time: sent again on a reconnect)
        self.hello_key = hello_key  # the key that checks the peer's hello
        self.ss = ss
        self.eph: bytes | None = None  # the peer's ephemeral public key
        self.tx: AESGCM | None = None
        self.rx: AESGCM | None = None
        self.sent = 0  # the last counter sealed for the peer
        self.top = 0  # the highest counter accepted from the peer
        self.gaps: list[list[int]] = []  # runs [lo, hi] of counters skipped below ``top``
        self.conn: object = None  # the connection the last accepted frame came on
        self.replaced = False  # whether the peer's connection was replaced (a reconnect)


class Sealer:
    """This node's end of every sealed link: hellos, then ``seal`` / ``open`` with per-direction counters.

    ``peers`` are the nodes this node talks to; ``name`` names a node in messages.
    """

    def __init__(
        self, rank: int, keys: NodeKeys, peers: Iterable[int], name: Callable[[int], str] | None = None
    ) -> None:
        self.rank = rank
        self.name = name or (lambda i: f"node {i}")
        statics = [_decode(k, f"the public key of {self.name(i)}") for i, k in enumerate(keys.node_keys)]
        if not 0 <= rank < len(statics):
            raise ConfigError(f"no public key for {self.name(rank)}: {len(statics)} keys listed")
        secret = X25519PrivateKey.from_private_bytes(_decode(keys.secret, "the secret key"))
        # This node's own public key, whatever the cluster lists for it (``parties.keys`` checks that the two
        # agree before a real run): a node with another key fails at its peers' hellos, and they at its own.
        statics[rank] = _raw_public(secret.public_key())
        self._static = secret
        self._statics = statics
        self._eph: X25519PrivateKey | None = X25519PrivateKey.generate()
        self._eph_public = _raw_public(self._eph.public_key())
        self._links: dict[int, _Link] = {}
        self.late = 0  # frames taken late, after a reconnect (see the module docstring)
        for peer in peers:
            if peer == rank or not 0 <= peer < len(statics):
                raise ConfigError(f"{self.name(rank)} cannot link to node {peer}")
            ss = self._dh(secret, statics[peer], peer, "public key")
            prefix = PREFIX.pack(MAGIC, VERSION, KIND_HELLO, 0, rank, 0)
            mac = hmac.new(self._hello_key(ss, rank, peer), prefix + self._eph_public, hashlib.sha256).digest()
            self._links[peer] = _Link(prefix + self._eph_public + mac, self._hello_key(ss, peer, rank), ss)

    # ----- the handshake -----------------------------------------------------------------------------
    def _hello_key(self, ss: bytes, sender: int, receiver: int) -> bytes:
        info = HELLO_LABEL + _IDS.pack(sender, receiver) + self._statics[sender] + self._statics[receiver]
        return _hkdf(ss, info)

    def _dh(self, own: X25519PrivateKey, public: bytes, peer: int, what: str) -> bytes:
        try:
            return own.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:  # a low-order point: the shared secret would be all zeros
            raise SecurityError(f"the {what} of {self.name(peer)} is not a usable Curve25519 key") from None

    def hello(self, peer: int) -> bytes:
        """Part 1 of this node's hello to ``peer`` (part 2 is empty)."""
        return self._links[peer].hello

    def ready(self, peer: int) -> bool:
        """Whether ``peer``'s hello came: frames to it can be sealed."""
        return self._links[peer].tx is not None

    def _take_hello(self, sender: int, link: _Link, head: bytes | memoryview) -> None:
        if len(head) != HELLO_BYTES:
            raise WireError(f"{self.name(sender)} sent a hello of {len(head)} bytes, expected {HELLO_BYTES}", sender)
        body = bytes(head[: PREFIX.size + KEY_BYTES])
        eph, mac = body[PREFIX.size :], bytes(head[PREFIX.size + KEY_BYTES :])
        if not hmac.compare_digest(mac, hmac.new(link.hello_key, body, hashlib.sha256).digest()):
            me = self.name(self.rank)
            raise SecurityError(
                f"the hello of {self.name(sender)} does not verify at {me}: the keys do not match "
                f"({self.name(sender)}'s key is not the one {me}'s cluster file lists for it, or {me}'s key is "
                f"not the one {self.name(sender)}'s cluster file lists for it; check the key files and the "
                "cluster files)"
            )
        if link.eph is not None:
            if eph != link.eph:
                raise SecurityError(
                    f"{self.name(sender)} sent a new handshake in the middle of the run (it was restarted, or "
                    "someone replays a hello of another run): start every node of the run afresh"
                )
            link.replaced = True  # the same hello again: the peer opened a new connection
            return
        eph_own = self._eph
        if eph_own is None:  # every link was ready already: unreachable for a peer of this node
            raise ProtocolError(f"{self.name(self.rank)} has no ephemeral key left for {self.name(sender)}")
        ee = self._dh(eph_own, eph, sender, "ephemeral key")
        se = self._dh(self._static, eph, sender, "ephemeral key")  # DH(s_me, E_peer)
        es = self._dh(eph_own, self._statics[sender], sender, "public key")  # DH(e_me, S_peer)
        me, s_me, s_peer = self.rank, self._statics[self.rank], self._statics[sender]
        tx_info = SEAL_LABEL + _IDS.pack(me, sender) + s_me + s_peer + self._eph_public + eph
        rx_info = SEAL_LABEL + _IDS.pack(sender, me) + s_peer + s_me + eph + self._eph_public
        link.eph = eph
        link.tx = AESGCM(_hkdf(link.ss + ee + se + es, tx_info))
        link.rx = AESGCM(_hkdf(link.ss + ee + es + se, rx_info))
        if all(lk.tx is not None for lk in self._links.values()):
            self._eph = None  # every key is derived: the ephemeral secret is not needed any more

    # ----- frames ------------------------------------------------------------------------------------
    def seal(
        self, peer: int, header: bytes, payload: bytes | memoryview, out: np.ndarray | None = None
    ) -> tuple[bytes, bytes | np.ndarray]:
        """Parts 1 and 2 of the sealed frame ``[header, payload]`` for ``peer`` (``ready(peer)`` must hold).

        Part 2 is sealed into ``out`` (a uint8 array of at least ``len(payload) + TAG_BYTES``; the view of it
        that holds the part is returned) or, without one, into new bytes (under 64 KiB) or a new array.
        """
        link = self._links[peer]
        tx = link.tx
        if tx is None:
            raise ProtocolError(f"{self.name(self.rank)} has no key for {self.name(peer)} yet (no hello from it)")
        if link.sent >= MAX_COUNTER:
            raise SecurityError(f"the frame counter to {self.name(peer)} is exhausted: start a new run")
        link.sent += 1
        counter = link.sent
        prefix = PREFIX.pack(MAGIC, VERSION, KIND_FRAME, 0, self.rank, counter)
        head = prefix + tx.encrypt(_nonce(counter, 0), header, prefix)
        n = len(payload)
        if out is None and n < 1 << 16:
            return head, tx.encrypt(_nonce(counter, 1), payload, prefix)
        body = np.empty(n + TAG_BYTES, dtype=np.uint8) if out is None else out[: n + TAG_BYTES]
        tx.encrypt_into(_nonce(counter, 1), payload, prefix, body)
        return head, body

    def claimed(self, head: bytes | memoryview) -> int | None:
        """The sender a frame's prefix names (not yet verified), or None if it has no prefix."""
        if len(head) < PREFIX.size or bytes(head[:4]) != MAGIC:
            return None
        return PREFIX.unpack_from(head)[4]

    def open(
        self, head: bytes | memoryview, body: bytes | memoryview, conn: object = None
    ) -> tuple[int, bytes | None, np.ndarray | None] | None:
        """``(sender, header, payload)`` of a received frame, checked and decrypted; ``(sender, None, None)``
        for a hello; None for a frame from a peer whose hello has not come (dropped, as if lost on the way: it
        can come only after a connection that carried the hello dropped, and is sent again).

        ``conn`` names the connection the frame came on (any hashable: the transport's file descriptor).
        Every refusal raises (see the module docstring).
        """
        me = self.name(self.rank)
        if len(head) < PREFIX.size or bytes(head[:4]) != MAGIC:
            if bytes(head[:4]) == wire.MAGIC and len(head) == wire.HEADER_SIZE:
                sender = struct.unpack_from("<I", head, 8)[0]
                raise SecurityError(
                    f"a peer that calls itself node {sender} sent {me} an unencrypted frame: it runs with "
                    "--insecure and this node does not; start every node with the same setting"
                )
            raise WireError(f"{me} received a frame that is not a sealed mpc frame (wrong magic): not an mpc peer")
        magic, version, kind, zero, sender, counter = PREFIX.unpack_from(head)
        if version != VERSION:
            raise WireError(f"a peer speaks sealed-link version {version}, {me} speaks {VERSION}: upgrade both")
        if sender == self.rank:
            raise SecurityError(f"a frame names {me} itself as its sender: a frame reflected back to it, refused")
        link = self._links.get(sender)
        if link is None:
            raise WireError(f"a frame names sender {sender}, which is not a peer of {me}")
        who = self.name(sender)
        if kind not in (KIND_FRAME, KIND_HELLO) or zero:
            raise WireError(f"{who} sent a sealed frame of unknown kind {kind}", sender)
        if kind == KIND_HELLO:
            if len(body):
                raise WireError(f"{who} sent a hello with a payload", sender)
            self._take_hello(sender, link, head)
            return sender, None, None
        rx = link.rx
        if rx is None:
            return None
        if len(head) != HEAD_BYTES or len(body) < TAG_BYTES:
            raise WireError(f"{who} sent a sealed frame of {len(head)} + {len(body)} bytes: malformed", sender)
        prefix = bytes(head[: PREFIX.size])
        payload = np.empty(len(body) - TAG_BYTES, dtype=np.uint8)
        try:
            header = rx.decrypt(_nonce(counter, 0), head[PREFIX.size :], prefix)
            rx.decrypt_into(_nonce(counter, 1), body, prefix, payload)
        except InvalidTag:
            raise SecurityError(
                f"a frame that claims to come from {who} does not authenticate at {me} (forged, changed on the "
                "way, or sealed for another link or run): refused"
            ) from None
        self._count(link, who, counter, conn)
        return sender, header, payload

    def _count(self, link: _Link, who: str, counter: int, conn: object) -> None:
        """Accept ``counter`` from an authentic frame, or refuse it as replayed or reordered."""
        if conn is not None and link.conn is not None and conn != link.conn:
            link.replaced = True  # frames of this sender on a second connection
        if counter > link.top:
            if counter > link.top + 1:
                link.gaps.append([link.top + 1, counter - 1])
                if len(link.gaps) > MAX_GAPS:
                    del link.gaps[0]
            link.top = counter
            link.conn = conn
            return
        gap = next((g for g in link.gaps if g[0] <= counter <= g[1]), None)
        text = (
            f"{who} sent frame #{counter} after frame #{link.top}, and #{counter} "
            + ("was skipped (reordered)" if gap is not None else "was accepted before or is too old (replayed)")
            + f": refused by {self.name(self.rank)}"
        )
        if gap is None:
            raise SecurityError(text)
        if not link.replaced:
            raise LateFrame(text + " (no reconnection of its link that could explain it)", self._peer_of(link))
        i = link.gaps.index(gap)
        lo, hi = gap
        link.gaps[i : i + 1] = [g for g in ([lo, counter - 1], [counter + 1, hi]) if g[0] <= g[1]]
        link.conn = conn
        self.late += 1

    def _peer_of(self, link: _Link) -> int:
        return next(p for p, lk in self._links.items() if lk is link)

    def connection_ended(self, peer: int) -> None:
        """The transport saw ``peer``'s connection end: its last frames may come after a new connection's."""
        link = self._links.get(peer)
        if link is not None:
            link.replaced = True
