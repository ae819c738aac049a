"""ZeroMQ transport: one PULL socket per node, one PUSH link to each peer.

Each node binds a PULL socket at its own address and connects a PUSH socket to
every peer it talks to (parties to all parties and the dealer; the dealer to
all parties).  Frames are ``[header, raw buffer]``; large buffers go with
``copy=False``.  ZeroMQ's I/O thread sends while this thread receives, so the
sends and receives of one round overlap and large exchanges cannot deadlock.

With keys (``parties.seal.NodeKeys``, the default) every frame is sealed:
encrypted and authenticated with AES-256-GCM under per-direction keys that a
handshake derives from the nodes' Curve25519 keys (``parties.seal``).  The
sockets themselves are plain TCP.  Each node sends every peer a hello as the
first frame of its link (again after a reconnect: it names the connection);
frames for a peer whose hello has not come yet wait here, in order, and go as
soon as it comes.  A received frame is authenticated before anything else looks
at it, and its sender (the peer whose key opened it) must be the party that its
header names.  A hello that does not verify (keys that do not match) is a
``SecurityError`` at once, at both ends.  Socket monitors turn a dead peer into
``PeerLost`` at once, instead of at the timeout.  Without keys (``--insecure``)
frames go as they are.

A connection that drops is not fatal by itself: libzmq reconnects, and what was
in flight on it is sent again (``parties.comm_base``: everything the peer has not
acknowledged, as soon as the link is back).  The peer counts as lost when
libzmq's attempts to reconnect fail at once (its port is closed: the process is
gone) for ``LOST_GRACE`` seconds and its bye has not come; a peer that cannot be
reached at all (attempts that hang) is named by the receive's deadline.

Without a dealer (a protocol family that needs none, ``dealer=False``) the
nodes are the parties alone and ``addresses`` lists exactly ``n`` of them.

``listen_fd``: a TCP socket already bound and listening (by the parent that
started this node, see ``parties.ports``); the PULL socket adopts it through
ZeroMQ's ``ZMQ_USE_FD`` instead of binding a port of its own, and closes it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from mpc.config import MPCConfig
from mpc.errors import ConfigError, MPCError, PeerLost, PeerTimeout, SecurityError, WireError

from . import seal, wire
from .comm_base import BufferedCommunicator, Frames, Recorder
from .seal import NodeKeys

__all__ = ["NodeKeys", "ZmqCommunicator", "inproc_communicators"]

log = logging.getLogger("mpc.zmq")

BIG = 1 << 16
# Messages (a header and one chunk each) libzmq queues per peer before it stops reading that peer's socket.
RCV_HWM = 8
CLOSE_LINGER_MS = 2000
# A peer whose port refuses reconnection is lost if its bye has not arrived this long after
# (its last frames travel on the other connection of the pair and may come later).
LOST_GRACE = 1.0
# Idle buffers for sealed payloads kept for reuse (chunk_bytes each; see _SealBuffers).
SPARE_BUFFERS = 8
# Seconds a closing node waits for the hello of a peer that still has frames (an abort notice) waiting for it.
HELLO_GRACE = 1.0
# The receive-side retransmit interval (comm_base): TCP loses nothing on a connection that stays up, and what a
# dropped one lost is sent again when it is back; the timer is a safety net, long enough that a slow link's
# frames in flight are not asked for again.
RETRANSMIT_MIN = 1.0
RETRANSMIT_TIMEOUT_SHARE = 8
_MON_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED


class _SealBuffers:
    """The buffers that large sealed payloads go out in (``copy=False``), used again once libzmq let go of them.

    A new buffer for every frame costs a page fault per 4 KiB page: sealing into fresh 4 MiB arrays that stay
    held (as libzmq holds them until sent) ran at 0.7-2.7 GB/s here, into reused ones at 5.7-10 GB/s (the
    cipher's speed).  At most ``spare`` idle ones are kept.
    """

    def __init__(self, size: int, spare: int = SPARE_BUFFERS) -> None:
        self.size = size
        self._spare = spare
        self._free: list[np.ndarray] = []
        self._lent: deque[tuple[np.ndarray, zmq.MessageTracker]] = deque()
        self.fresh = 0  # buffers allocated (the rest were used again)

    def take(self, n: int) -> np.ndarray:
        lent = self._lent
        while lent and lent[0][1].done:
            buf = lent.popleft()[0]
            if len(self._free) < self._spare:
                self._free.append(buf)
        if n <= self.size and self._free:
            return self._free.pop()
        self.fresh += 1
        return np.empty(max(n, self.size), dtype=np.uint8)

    def lend(self, buf: np.ndarray, tracker: zmq.MessageTracker) -> None:
        if len(buf) == self.size:
            self._lent.append((buf, tracker))


class ZmqCommunicator(BufferedCommunicator):
    def __init__(
        self,
        rank: int,
        world_size: int,
        addresses: Sequence[str],
        config: MPCConfig,
        *,
        keys: NodeKeys | None = None,
        context: zmq.Context | None = None,
        recorder: Recorder | None = None,
        dealer: bool = True,
        listen_fd: int | None = None,
    ) -> None:
        super().__init__(
            rank,
            world_size,
            config.timeout,
            config.max_message_bytes,
            recorder,
            dealer=dealer,
            chunk_bytes=config.chunk_bytes,
            max_buffered_bytes=config.max_buffered_bytes,
            retransmit_after=max(RETRANSMIT_MIN, config.timeout / RETRANSMIT_TIMEOUT_SHARE),
        )
        self._listen_fd = listen_fd
        self._own_context = context is None
        self._zctx = zmq.Context() if context is None else context
        self._keys = keys
        self._seal: seal.Sealer | None = None
        self._unready: dict[int, list[tuple[bytes, bytes | memoryview, bool]]] = {}  # frames awaiting a hello
        self._refused: SecurityError | None = None  # the first refusal of the sealed links: every later call fails
        self._lost: dict[int, float] = {}  # peer -> when a reconnection to it was first refused
        self._down: dict[int, float] = {}  # peer -> when the link to it dropped (until it is back)
        self._dropped: dict[int, float] = {}  # peer -> when the link to it last dropped
        self._connected: set[int] = set()
        self._fd_peer: dict[int, int] = {}  # incoming connection (its fd) -> the authenticated peer on it
        # Incoming connections cut before a frame of theirs was read (libzmq may report the cut before it hands
        # over the last whole frames, a hello among them): fd -> when; the next frame read from it names the peer.
        self._cut_fds: dict[int, float] = {}
        self._cut: dict[int, float] = {}  # peer -> when this node's transport cut its incoming connection
        try:
            if len(addresses) != self.nodes:
                what = "parties and dealer" if dealer else "one per party, no dealer"
                raise ConfigError(f"need {self.nodes} addresses ({what}), got {len(addresses)}")
            self._open(addresses)
        except BaseException:
            self._close_transport(linger=0)
            raise

    def _open(self, addresses: Sequence[str]) -> None:
        peers = range(self.world_size) if self.has_dealer and self.rank == self.world_size else range(self.nodes)
        peers = [p for p in peers if p != self.rank]
        keys = self._keys
        if keys is not None:
            if len(keys.node_keys) != self.nodes:
                raise ConfigError(
                    f"sealed links need one public key per node ({self.nodes}), got {len(keys.node_keys)}"
                )
            self._seal = seal.Sealer(self.rank, keys, peers, self.name)
            self._buffers = _SealBuffers(self.chunk_bytes + seal.TAG_BYTES)
        pull = self._zctx.socket(zmq.PULL)
        self._pull = pull
        pull.setsockopt(zmq.LINGER, 0)
        # Bounded queues: at most RCV_HWM messages of one frame each per peer wait in libzmq, and a frame
        # over the chunk limit cuts the sender's connection as soon as its length is read (never held).
        pull.setsockopt(zmq.RCVHWM, RCV_HWM)
        # (Sealing adds a prefix and a tag to a frame part, seal.OVERHEAD bytes at most: the limit allows for
        # them, and comm_base refuses an opened payload over chunk_bytes.)
        pull.setsockopt(zmq.MAXMSGSIZE, max(self.chunk_bytes, wire.HEADER_SIZE) + seal.OVERHEAD)
        own = addresses[self.rank]
        try:
            if self._listen_fd is not None:
                os.set_blocking(self._listen_fd, False)
                pull.setsockopt(zmq.USE_FD, self._listen_fd)
                self._listen_fd = None  # the PULL socket owns (and closes) it now
            pull.bind(own)
        except zmq.ZMQError as exc:
            hint = " (address already in use: another process holds this port)" if exc.errno == zmq.EADDRINUSE else ""
            raise ConfigError(f"{self.name(self.rank)} cannot listen on {own}: {exc.strerror}{hint}") from None
        self._poller = zmq.Poller()
        self._poller.register(pull, zmq.POLLIN)
        # The PULL side's own disconnects: libzmq cuts a connection that sends a frame over MAXMSGSIZE.
        self._pull_mon = pull.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._poller.register(self._pull_mon, zmq.POLLIN)
        self._push: dict[int, zmq.Socket] = {}
        self._monitors: dict[zmq.Socket, int] = {}
        for peer in peers:
            s = self._zctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
            mon = s.get_monitor_socket(_MON_EVENTS)
            self._monitors[mon] = peer
            self._poller.register(mon, zmq.POLLIN)
            try:
                s.connect(addresses[peer])
            except zmq.ZMQError as exc:
                raise ConfigError(
                    f"{self.name(self.rank)} cannot connect to {self.name(peer)} at {addresses[peer]}: {exc.strerror}"
                ) from None
            self._push[peer] = s
            if self._seal is not None:
                self._unready[peer] = []
                self._send_hello(peer)  # the first frame on the link (queued until the connection is up)

    # ----- transport primitives ---------------------------------------------------
    def _post(self, peer: int, header: bytes, payload, final: bool = False) -> None:
        if not final and self._refused is not None:
            raise self._refused
        sealer = self._seal
        out = None
        if sealer is not None:
            waiting = self._unready.get(peer)
            if waiting is not None:  # no hello from the peer yet: no key to seal with; goes when it comes
                waiting.append((header, payload, final))
                return
            if len(payload) >= BIG:
                out = self._buffers.take(len(payload) + seal.TAG_BYTES)
            header, payload = sealer.seal(peer, header, payload, out)
        s = self._push[peer]
        flags = zmq.NOBLOCK if final else 0
        if not final and not s.poll(0, zmq.POLLOUT):
            self._wait_writable(peer, s)
        try:
            s.send(header, zmq.SNDMORE | flags)
            tracker = s.send(payload, flags, copy=len(payload) < BIG, track=out is not None)
            if out is not None:
                self._buffers.lend(out, tracker)
        except zmq.Again:
            if final:  # a bye or abort to a peer that is gone: nothing to tell it
                return
            raise PeerTimeout(
                f"{self.name(self.rank)} could not send to {self.name(peer)} within {self.timeout:g}s", peer
            ) from None

    def _send_hello(self, peer: int) -> None:
        assert self._seal is not None
        try:
            self._push[peer].send_multipart([self._seal.hello(peer), b""], zmq.NOBLOCK)
        except zmq.Again:  # the peer is gone; a live one gets it when the link is back
            pass

    def _wait_writable(self, peer: int, s: zmq.Socket) -> None:
        # A PUSH socket blocks until its connection is up: watch the monitors meanwhile, so that a dropped peer
        # is reported at once instead of when the send times out.
        deadline = time.monotonic() + self.timeout
        while not s.poll(50, zmq.POLLOUT):
            for mon, p in self._monitors.items():
                self._monitor_event(mon, p)
            self._raise_lost()
            if time.monotonic() > deadline:
                raise PeerTimeout(
                    f"{self.name(self.rank)} could not send to {self.name(peer)} within {self.timeout:g}s "
                    f"(no connection: is {self.name(peer)} running and reachable?)",
                    peer,
                )

    def _poll(self, timeout: float) -> Frames | None:
        self._raise_lost()
        wait_ms = max(1, min(int(timeout * 1000), 1000 if not self._lost else int(LOST_GRACE * 250)))
        events = dict(self._poller.poll(wait_ms))
        for mon, peer in self._monitors.items():
            if mon in events:
                self._monitor_event(mon, peer)
        if self._pull_mon in events and self._pull not in events:  # a cut connection's frames are read first
            self._pull_event()
        if self._pull in events:
            # A hello (or a frame dropped by the seal) passes nothing up: read on while frames are there.
            while True:
                try:
                    first = self._pull.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:  # none left, or one whose connection was cut on the way (see _rest_of_message)
                    self._pull_event()
                    break
                got = self._take(first)
                if got is not None:
                    return got
        self._raise_lost()
        return None

    def _take(self, first: zmq.Frame) -> Frames | None:
        """A received message, checked (and opened, on sealed links); None if it passes nothing up."""
        sealer = self._seal
        if sealer is None:
            frames = [first, *self._rest_of_message(first, None)]
            if len(frames) != 2:
                raise WireError(f"a peer of {self.name(self.rank)} sent a message of {len(frames)} frames, expected 2")
            head = frames[0].bytes
            if head[: len(seal.MAGIC)] == seal.MAGIC:
                raise WireError(
                    f"a peer sent {self.name(self.rank)} a sealed frame: it runs without --insecure and this node "
                    "with it; start every node with the same setting"
                )
            return head, frames[1].buffer, None
        claimed = sealer.claimed(first.buffer)
        claimed = claimed if claimed in self._push else None
        frames = [first, *self._rest_of_message(first, claimed)]
        if len(frames) != 2:
            who = self.name(claimed) if claimed is not None else f"a peer of {self.name(self.rank)}"
            raise WireError(f"{who} sent a message of {len(frames)} frames, expected 2", claimed)
        fd = first.get(zmq.SRCFD)
        try:
            opened = self._open_sealed(frames, fd)
        except SecurityError as exc:
            self._refused = self._refused or exc
            raise
        if opened is None:  # from a peer whose hello has not come: dropped (see parties.seal)
            return None
        auth, header, payload = opened
        self._fd_peer[fd] = auth
        when = self._cut_fds.pop(fd, None)
        if when is not None and auth not in self._bye:
            self._fd_peer.pop(fd, None)
            self._cut.setdefault(auth, when)
        if header is None:  # a hello: the peer's keys are there now, and what waited for them goes
            waiting = self._unready.pop(auth, None) if sealer.ready(auth) else None
            for h, p, final in waiting or ():
                self._post(auth, h, p, final)
            return None
        return header, payload, auth

    def _open_sealed(self, frames: list[zmq.Frame], fd: int) -> tuple[int, bytes | None, object] | None:
        assert self._seal is not None
        head, body = frames[0].buffer, frames[1].buffer
        try:
            return self._seal.open(head, body, fd)
        except seal.LateFrame as exc:
            # A dropped connection's last frames may come after the first ones of the connection that replaced
            # it, on the same file descriptor number: its disconnect waits on the monitor, look there.
            self._pull_event()
            if fd in self._cut_fds:
                self._seal.connection_ended(exc.peer)
            return self._seal.open(head, body, fd)

    def _monitor_event(self, mon: zmq.Socket, peer: int) -> None:
        while mon.poll(0):
            ev = recv_monitor_message(mon)["event"]
            if ev in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self._connected.add(peer)
                if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._down.pop(peer, None) is not None:
                    self._lost.pop(peer, None)  # it was only the link: back, and what it lost goes again
                    self._link_restored(peer)
                    if self._seal is not None:
                        self._send_hello(peer)
            elif ev == zmq.EVENT_DISCONNECTED and peer not in self._bye:
                now = time.monotonic()
                self._down.setdefault(peer, now)
                self._dropped[peer] = now
                self._lossy.add(peer)
            elif ev == zmq.EVENT_CLOSED and peer in self._down and peer not in self._bye:
                self._lost.setdefault(peer, time.monotonic())  # a reconnection attempt failed at once

    def _peer_gone(self, peer: int) -> bool:
        return super()._peer_gone(peer) or peer in self._lost

    def _rest_of_message(self, first: zmq.Frame, sender: int | None) -> list[zmq.Frame]:
        """The remaining frames of a message, waited for with a deadline.

        libzmq may show a message's first frame before the rest arrived; if the
        connection is then cut (a frame over the chunk limit), the rest never
        comes and a plain blocking receive would wait for ever.
        """
        rest: list[zmq.Frame] = []
        more = first.more
        deadline = time.monotonic() + self.timeout
        while more and len(rest) < 2:
            if self._pull.poll(50, zmq.POLLIN):
                frame = self._pull.recv(copy=False)
                rest.append(frame)
                more = frame.more
                continue
            self._pull_event()
            self._raise_lost()
            if time.monotonic() > deadline:
                who = self.name(sender) if sender is not None else "a peer"
                raise PeerTimeout(
                    f"{self.name(self.rank)} got the first frame of a message from {who} and not the rest "
                    f"within {self.timeout:g}s",
                    sender,
                )
        return rest

    def _pull_event(self) -> None:
        while self._pull_mon.poll(0):
            msg = recv_monitor_message(self._pull_mon)
            fd = int(msg["value"])
            peer = self._fd_peer.pop(fd, None)
            if msg["event"] != zmq.EVENT_DISCONNECTED:
                continue
            if peer is None:
                self._cut_fds[fd] = time.monotonic()
                continue
            if self._seal is not None:
                self._seal.connection_ended(peer)
            if peer not in self._bye:
                self._cut.setdefault(peer, time.monotonic())

    def _raise_lost(self) -> None:
        if self._refused is not None:  # a sealed link refused a frame or a hello: nothing goes on
            raise self._refused
        now = time.monotonic()
        for fd, since in list(self._cut_fds.items()):
            if now - since > LOST_GRACE:  # no frame of it came: a connection that never named its peer
                del self._cut_fds[fd]
        for peer, since in sorted(self._cut.items()):
            if now - since <= LOST_GRACE:
                continue
            if (
                peer in self._bye
                or peer in self._lost
                or peer in self._down
                or self._dropped.get(peer, -LOST_GRACE) >= since - LOST_GRACE
            ):
                del self._cut[peer]  # the network dropped both connections, or the peer finished or died
            else:
                # The incoming connection dropped while this node's link to the peer stayed up: the peer is
                # alive and libzmq cut it for a frame over the chunk limit (or a malformed one).
                raise WireError(
                    f"{self.name(peer)} sent {self.name(self.rank)} a frame over the {self.chunk_bytes}-byte chunk "
                    "limit, or a malformed one: the transport cut its connection without holding the frame "
                    "(chunk_bytes must be the same at every node)",
                    peer,
                )
        for peer, since in sorted(self._lost.items()):
            if peer not in self._bye and not self._buf[peer] and now - since > LOST_GRACE:
                raise PeerLost(
                    f"the connection from {self.name(self.rank)} to {self.name(peer)} dropped before "
                    f"{self.name(peer)} finished and its port refuses a new one: it crashed or was killed",
                    peer,
                )

    def _close_transport(self, linger: int | None = None) -> None:
        if getattr(self, "_closed_sockets", False):
            return
        self._closed_sockets = True
        ms = CLOSE_LINGER_MS if linger is None else linger
        if ms and any(getattr(self, "_unready", {}).values()):
            self._await_hellos(time.monotonic() + min(HELLO_GRACE, self.timeout))
        # Stop every monitor before closing the monitor sockets: closing a PAIR
        # socket whose monitor is still attached can hang libzmq's shutdown.
        pushes = list(getattr(self, "_push", {}).values())
        for s in pushes:
            try:
                s.disable_monitor()
            except zmq.ZMQError:
                pass
        for mon in getattr(self, "_monitors", {}):
            mon.close(linger=0)
        pull_mon = getattr(self, "_pull_mon", None)
        if pull_mon is not None:
            try:
                self._pull.disable_monitor()
            except zmq.ZMQError:
                pass
            pull_mon.close(linger=0)
        for s in pushes:
            s.close(linger=ms)
        pull = getattr(self, "_pull", None)
        if pull is not None:
            pull.close(linger=0)
        if getattr(self, "_listen_fd", None) is not None:  # never handed to ZeroMQ: close it here
            os.close(self._listen_fd)
            self._listen_fd = None
        if self._own_context:
            self._zctx.term()  # bounded: every socket is closed, with a linger of at most CLOSE_LINGER_MS

    def _await_hellos(self, until: float) -> None:
        """Closing with frames (an abort notice, a bye) still waiting for a peer's hello: wait a moment for it."""
        while any(self._unready.values()) and time.monotonic() < until:
            try:
                if self._pull.poll(50):
                    self._take(self._pull.recv(zmq.NOBLOCK, copy=False))  # what it passes up is not needed now
            except (zmq.ZMQError, MPCError):  # closing anyway: the notice stays undelivered
                return

    def terminate_context(self) -> None:
        """Terminate a shared context (inproc simulator) after every node closed."""
        if not self._own_context and not self._zctx.closed:
            self._zctx.term()


def inproc_communicators(
    n: int, config: MPCConfig, recorder: Callable[[int], Recorder | None], dealer: bool = True
) -> list[ZmqCommunicator]:
    """ZeroMQ ``inproc://`` communicators for the thread simulator (one shared context)."""
    zctx = zmq.Context()
    tag = os.urandom(6).hex()
    nodes = n + int(dealer)
    addresses = [f"inproc://mpc-{tag}-{i}" for i in range(nodes)]
    comms: list[ZmqCommunicator] = []
    for r in range(nodes):
        comms.append(ZmqCommunicator(r, n, addresses, config, context=zctx, recorder=recorder(r), dealer=dealer))
    return comms
