"""ZeroMQ transport: one PULL socket per node, one PUSH link to each peer.

Each node binds a PULL socket at its own address and connects a PUSH socket to
every peer it talks to (parties to all parties and the dealer; the dealer to
all parties).  Frames are ``[header, raw buffer]``; large buffers go with
``copy=False``.  ZeroMQ's I/O thread sends while this thread receives, so the
sends and receives of one round overlap and large exchanges cannot deadlock.

With CURVE keys every link is encrypted and both ends are authenticated: the
server side runs a ZAP handler that admits only the public keys of the cluster,
and every received frame carries the ZAP ``User-Id`` (the sender's key), which
must belong to the party named in the header.  Socket monitors turn a dead
peer into ``PeerLost`` and a refused handshake into ``SecurityError`` at once,
instead of at the timeout.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zmq
import zmq.auth.base
import zmq.auth.thread
from zmq.utils.monitor import recv_monitor_message

from mpc.config import MPCConfig
from mpc.errors import ConfigError, PeerLost, PeerTimeout, SecurityError, WireError

from . import wire
from .comm_base import BufferedCommunicator, Frames, Recorder

__all__ = ["CurveKeys", "ZmqCommunicator", "inproc_communicators"]

log = logging.getLogger("mpc.zmq")

BIG = 1 << 16
# Messages (a header and one chunk each) libzmq queues per peer before it stops reading that peer's socket.
RCV_HWM = 8
FRAME_OVERHEAD = 256
CLOSE_LINGER_MS = 2000
# Seconds the ZAP authenticator thread gets to stop at close.
AUTH_STOP = 5.0
# A peer whose port refuses reconnection is lost if its bye has not arrived this long after
# (its last frames travel on the other connection of the pair and may come later).
LOST_GRACE = 1.0
# The receive-side retransmit interval (comm_base): TCP loses nothing on a connection that stays up, and what a
# dropped one lost is sent again when it is back; the timer is a safety net, long enough that a slow link's
# frames in flight are not asked for again.
RETRANSMIT_MIN = 1.0
RETRANSMIT_TIMEOUT_SHARE = 8
_MON_EVENTS = (
    zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_CONNECTED
)


@dataclass(frozen=True)
class CurveKeys:
    """This node's CURVE key pair and every node's public key (index = node id)."""

    public: bytes
    secret: bytes
    node_keys: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"CurveKeys(public={self.public!r}, secret=<hidden>)"


class _AllowList:
    """ZAP credentials provider: admit exactly the cluster's keys; remember refusals."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.keys = set(keys)
        self.refused: list[bytes] = []

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.refused.append(key)
        log.warning("refused a connection from an unknown CURVE key %s", key.decode("ascii", "replace"))
        return False


def _stop_authenticator(auth: zmq.auth.thread.ThreadAuthenticator) -> bool:
    """``auth.stop()`` with a bounded join (pyzmq's joins its thread without a timeout); False if it hung."""
    thread = auth.thread
    if auth.pipe is not None and thread is not None:
        try:
            auth.pipe.send(b"TERMINATE", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        thread.join(AUTH_STOP)
        if thread.is_alive():
            return False
        auth.thread = None  # type: ignore[assignment]
        auth.pipe.close()
        auth.pipe = None  # type: ignore[assignment]
    zmq.auth.base.Authenticator.stop(auth)
    return True


class ZmqCommunicator(BufferedCommunicator):
    def __init__(
        self,
        rank: int,
        world_size: int,
        addresses: Sequence[str],
        config: MPCConfig,
        *,
        curve: CurveKeys | None = None,
        context: zmq.Context | None = None,
        recorder: Recorder | None = None,
        authenticator: bool = True,
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
        self._curve = curve
        self._auth: zmq.auth.thread.ThreadAuthenticator | None = None
        self._allow: _AllowList | None = None
        self._key_rank: dict[bytes, int] = {}
        self._lost: dict[int, float] = {}  # peer -> when a reconnection to it was first refused
        self._down: dict[int, float] = {}  # peer -> when the link to it dropped (until it is back)
        self._dropped: dict[int, float] = {}  # peer -> when the link to it last dropped
        self._connected: set[int] = set()
        self._refused_by: set[int] = set()
        self._fd_peer: dict[int, int] = {}  # incoming connection (its fd) -> the authenticated peer on it
        # Incoming connections cut before a frame of theirs was read (libzmq may report the cut before it hands
        # over the last whole frames, a hello among them): fd -> when; the next frame read from it names the peer.
        self._cut_fds: dict[int, float] = {}
        self._cut: dict[int, float] = {}  # peer -> when this node's transport cut its incoming connection
        try:
            if len(addresses) != self.nodes:
                what = "parties and dealer" if dealer else "one per party, no dealer"
                raise ConfigError(f"need {self.nodes} addresses ({what}), got {len(addresses)}")
            self._open(addresses, authenticator)
        except BaseException:
            self._close_transport(linger=0)
            raise

    def _open(self, addresses: Sequence[str], authenticator: bool) -> None:
        curve = self._curve
        if curve is not None:
            if len(curve.node_keys) != self.nodes:
                raise ConfigError(
                    f"CURVE setup needs one public key per node ({self.nodes}), got {len(curve.node_keys)}"
                )
            self._key_rank = {k: i for i, k in enumerate(curve.node_keys)}
            if authenticator:
                self._allow = _AllowList(k for i, k in enumerate(curve.node_keys) if i != self.rank)
                self._auth = zmq.auth.thread.ThreadAuthenticator(self._zctx, log=logging.getLogger("mpc.zap"))
                self._auth.start()
                self._auth.configure_curve_callback(domain="mpc", credentials_provider=self._allow)
        pull = self._zctx.socket(zmq.PULL)
        self._pull = pull
        pull.setsockopt(zmq.LINGER, 0)
        # Bounded queues: at most RCV_HWM messages of one frame each per peer wait in libzmq, and a frame
        # over the chunk limit cuts the sender's connection as soon as its length is read (never held).
        pull.setsockopt(zmq.RCVHWM, RCV_HWM)
        # (CURVE wraps each frame in a MESSAGE command of a few dozen bytes more: the limit allows for it,
        # and comm_base refuses a decrypted frame over chunk_bytes.)
        pull.setsockopt(zmq.MAXMSGSIZE, max(self.chunk_bytes, wire.HEADER_SIZE) + FRAME_OVERHEAD)
        if curve is not None:
            pull.curve_secretkey = curve.secret
            pull.curve_publickey = curve.public
            pull.curve_server = True
            pull.zap_domain = b"mpc"
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
        peers = range(self.world_size) if self.has_dealer and self.rank == self.world_size else range(self.nodes)
        for peer in peers:
            if peer == self.rank:
                continue
            s = self._zctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
            if curve is not None:
                s.curve_secretkey = curve.secret
                s.curve_publickey = curve.public
                s.curve_serverkey = curve.node_keys[peer]
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
            if curve is not None:
                self._hello(peer)

    # ----- transport primitives ---------------------------------------------------
    def _post(self, peer: int, header: bytes, payload, final: bool = False) -> None:
        s = self._push[peer]
        flags = zmq.NOBLOCK if final else 0
        if not final:
            if self._refused_by:
                self._raise_lost()
            if not s.poll(0, zmq.POLLOUT):
                self._wait_writable(peer, s)
        try:
            s.send(header, zmq.SNDMORE | flags)
            s.send(payload, flags, copy=len(payload) < BIG)
        except zmq.Again:
            if final:  # a bye or abort to a peer that is gone: nothing to tell it
                return
            raise PeerTimeout(
                f"{self.name(self.rank)} could not send to {self.name(peer)} within {self.timeout:g}s", peer
            ) from None

    def _wait_writable(self, peer: int, s: zmq.Socket) -> None:
        # A PUSH socket blocks until its connection is up: watch the monitors meanwhile, so that a refused
        # handshake or a dropped peer is reported at once instead of when the send times out.
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
            try:
                first = self._pull.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:  # a message whose connection was cut on the way (see _rest_of_message)
                self._pull_event()
                self._raise_lost()
                return None
            auth = None
            if self._curve is not None:
                uid = first.get("User-Id")
                auth = self._key_rank.get(uid.encode("ascii")) if uid else None
                if auth is None:
                    raise SecurityError(f"{self.name(self.rank)} received a frame without an authenticated cluster key")
                fd = first.get(zmq.SRCFD)
                self._fd_peer[fd] = auth
                when = self._cut_fds.pop(fd, None)
                if when is not None and auth not in self._bye:
                    self._fd_peer.pop(fd, None)
                    self._cut.setdefault(auth, when)
            frames = [first, *self._rest_of_message(first, auth)]
            if len(frames) != 2:
                who = self.name(auth) if auth is not None else f"a peer of {self.name(self.rank)}"
                raise WireError(f"{who} sent a message of {len(frames)} frames, expected 2", auth)
            return frames[0].bytes, frames[1].buffer, auth
        self._raise_lost()
        return None

    def _monitor_event(self, mon: zmq.Socket, peer: int) -> None:
        while mon.poll(0):
            ev = recv_monitor_message(mon)["event"]
            if ev in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self._connected.add(peer)
                if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._down.pop(peer, None) is not None:
                    self._lost.pop(peer, None)  # it was only the link: back, and what it lost goes again
                    self._link_restored(peer)
                    if self._curve is not None:
                        self._hello(peer)
            elif ev == zmq.EVENT_DISCONNECTED and peer not in self._bye:
                now = time.monotonic()
                self._down.setdefault(peer, now)
                self._dropped[peer] = now
                self._lossy.add(peer)
            elif ev == zmq.EVENT_CLOSED and peer in self._down and peer not in self._bye:
                self._lost.setdefault(peer, time.monotonic())  # a reconnection attempt failed at once
            elif ev in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self._refused_by.add(peer)

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
            elif peer not in self._bye:
                self._cut.setdefault(peer, time.monotonic())

    def _raise_lost(self) -> None:
        if self._refused_by:
            peer = min(self._refused_by)
            raise SecurityError(
                f"{self.name(peer)} refused the CURVE handshake of {self.name(self.rank)}: the key this party "
                f"uses is not the one {self.name(peer)}'s cluster file lists for it (check the key files and "
                "the cluster file), or the peer runs with a different --insecure setting"
            )
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
        stuck = self._auth is not None and not _stop_authenticator(self._auth)
        if stuck:  # its sockets stay open, so term() would wait for ever: leave the context to the exit
            log.warning("the ZAP authenticator thread did not stop within %gs; not terminating its context", AUTH_STOP)
        elif self._own_context:
            self._zctx.term()  # bounded: every socket is closed, with a linger of at most CLOSE_LINGER_MS

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
