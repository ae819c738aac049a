"""Reliable links: every link in order, once, under any transport (acks, nacks, resends).

A mixin of ``parties.comm_base.BufferedCommunicator``: the checks and the accounting
there see each frame once and in link order, whatever the transport did with it.

Bad networks: every link is made reliable here, under the checks above, so
that a transport may lose, duplicate, delay or reorder frames (a fault layer
in tests, ``parties.faults``; a TCP connection that ZeroMQ re-establishes, in
real runs).  Data, abort, bye and desync frames are numbered on their link by
``(seq, part)`` (message, chunk); hello, ack and nack frames stand outside.

* Received in order: a frame is passed up only at the link's next position
  ``(seq, part)``.  One below it is a duplicate: dropped (``duplicates``).  One
  above it is held until the gap fills (at most ``max_buffered_bytes`` and
  ``EARLY_FRAMES`` frames per peer; beyond, dropped and asked for again).
* Acknowledged: every header carries ``ack``, the number of whole messages
  received from the peer; an explicit ack frame goes back after
  ``ACK_EVERY`` messages or ``ACK_BYTES`` bytes that nothing carried the ack
  for, and after ``ACK_DELAY`` s of waiting with an ack owed.
* Sent again: a receiver that waits for a peer (or holds frames ahead of a
  gap) without progress for ``retransmit_after`` s sends a nack naming its
  next position (again after twice as long each time, up to 4x); the sender
  sends every frame it keeps from there on (``retransmits``).  On a link that
  has lost frames, the waiting node also sends again what it keeps for that
  peer (the peer may be waiting for it in turn).  A transport that
  re-established a link (``_link_restored``) has everything unacknowledged on it
  sent again at once.
* Kept: each frame sent on a numbered kind stays referenced (its encoded header
  and its payload: a view of the tensor that was sent, no copy; payloads under
  ``SMALL`` bytes as their own bytes, so that a tensor changed in place after
  the send cannot change a copy sent again) until the peer's ack covers its
  message, then dropped.  A sender that keeps over ``KEEP_FRAMES`` frames or
  ``KEEP_BYTES`` bytes for a peer takes in the acks waiting before it goes on.
  So a sender holds what its peers have not yet taken in (which they hold too,
  up to their ``max_buffered_bytes``) plus about ``ACK_EVERY`` messages or
  ``ACK_BYTES`` bytes per link.
* Closing: a bye is acknowledged as soon as it arrives, and every ack owed goes
  out after the closing barrier.  On a link that has lost frames (or that the
  transport calls lossy) a closing party then stays until its own bye is
  acknowledged (within the close deadline), sending it again every
  ``LINGER_EVERY`` s, then ``QUIET`` such intervals longer to acknowledge a
  peer's bye sent again; an aborting node stays up to ``ABORT_LINGER`` s for its
  abort notice's ack.  On a link that never lost a frame nothing waits.

Every check above applies to the frames passed up, once each and in order, so
a real desync is still a ``DesyncError`` (never a resend loop), and a link that
stays down ends in the receive's ``PeerTimeout`` naming the peer.
"""

from __future__ import annotations

import time
from collections import deque

import torch

from mpc.errors import CommunicationError, ConfigError, WireError

from . import wire

# Recovery on lossy links (see the module docstring).
RETRANSMIT_AFTER = 0.25  # seconds without progress before a receiver asks again (the default)
ACK_DELAY = 0.05  # seconds an ack may wait for a frame to carry it
ACK_EVERY = 16  # messages, or
ACK_BYTES = 1 << 22  # bytes, received before an explicit ack
EARLY_FRAMES = 1024  # frames held ahead of a gap, per peer
KEEP_FRAMES = 4 * ACK_EVERY  # frames, or
KEEP_BYTES = 4 * ACK_BYTES  # bytes kept for a peer beyond which a send first takes in the acks waiting
SMALL = 1 << 16  # payloads below this are kept as their own bytes, above it by reference
LINGER_EVERY = 0.2  # seconds between resends while closing (at most: the retransmit interval if shorter)
QUIET = 4  # such intervals a closing node stays to acknowledge byes sent again
ABORT_LINGER = 1.0  # seconds an aborting node waits for its abort notice's ack on a lossy link
ZERO_RUN = bytes(wire.RUN_ID_BYTES)
ZERO_DIGEST = bytes(wire.DIGEST_BYTES)


class ReliableLinks:
    """Per-peer link state and timers; needs ``_post``, ``_poll``, ``_ingest`` and ``_deliver`` of its host."""

    def _init_links(self, nodes: int, retransmit_after: float) -> None:
        now = time.monotonic()
        self._rx = [(0, 0)] * nodes  # the next (seq, part) expected from the peer
        self._early: list[dict[tuple[int, int], tuple]] = [{} for _ in range(nodes)]  # frames ahead of a gap
        self._early_bytes = [0] * nodes
        self._gap_since = [0.0] * nodes
        # Frames sent and not yet acknowledged: [seq, part, header, payload, when last sent].
        self._keep: list[deque[list]] = [deque() for _ in range(nodes)]
        self._kept = [0] * nodes  # their payload bytes
        self._peer_ack = [0] * nodes  # the peer's latest ack: it holds every message below
        self._owed = [0] * nodes  # messages received since an ack last went to the peer
        self._owed_bytes = [0] * nodes
        self._owed_since = [0.0] * nodes  # when the first of them arrived (0: none owed)
        self._ack_at = [0.0] * nodes  # when an explicit ack last went out
        self._progress = [now] * nodes  # when the peer's last in-order frame arrived
        self._nack_at = [0.0] * nodes
        self._nack_wait = [0.0] * nodes
        self._resent: list[tuple[tuple[int, int], float]] = [((-1, -1), 0.0)] * nodes
        self._lossy: set[int] = set()  # links that lost or duplicated frames (or that the transport calls lossy)
        self._gone: set[int] = set()  # peers that aborted: nothing more will come from them
        self._restored: set[int] = set()  # links the transport re-established: send again what is unacknowledged
        self._next_tick = 0.0
        self.set_retransmit_after(retransmit_after)

    def set_retransmit_after(self, seconds: float) -> None:
        """Seconds a receiver waits without progress before it asks a peer to send again."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise ConfigError(f"retransmit_after must be a positive number of seconds, got {seconds!r}")
        self.retransmit_after = float(seconds)
        self._tick_every = min(ACK_DELAY, self.retransmit_after / 2)
        self._linger_every = min(LINGER_EVERY, self.retransmit_after)
        self._nack_wait = [self.retransmit_after] * self.nodes

    def assume_lossy(self) -> None:
        """Treat every link as one that loses frames (a fault layer under the transport says so)."""
        self._lossy.update(p for p in range(self.nodes) if p != self.rank)

    def _link_restored(self, peer: int) -> None:
        """The transport re-established its link to ``peer``: frames in flight may be lost."""
        self._lossy.add(peer)
        self._restored.add(peer)

    def _peer_gone(self, peer: int) -> bool:
        """Whether nothing more will come from ``peer`` (it aborted; transports add what they know)."""
        return peer in self._gone

    def _acked(self, peer: int) -> int:
        """The ack to send ``peer`` now (whole messages received from it); nothing is owed after it."""
        self._owed[peer] = self._owed_bytes[peer] = 0
        self._owed_since[peer] = 0.0
        return self._rx[peer][0]

    def _control(self, peer: int, kind: int, pos: tuple[int, int] = (0, 0)) -> None:
        """An ack, or a nack asking ``peer`` to send again from ``pos``: outside the sequence, never kept."""
        ack = self._acked(peer)
        self._ack_at[peer] = time.monotonic()
        op = "ack" if kind == wire.KIND_ACK else "nack"
        mark = (0, ZERO_DIGEST, self.run_id or ZERO_RUN)
        header = wire.encode_header(kind, self.rank, pos[0], op, torch.uint8, (0,), 0, *mark, part=pos[1], ack=ack)
        self._post(peer, header, b"", True)

    def _take_ack(self, peer: int, ack: int) -> None:
        if ack > self._peer_ack[peer]:
            self._peer_ack[peer] = ack
            keep = self._keep[peer]
            while keep and keep[0][0] < ack:
                self._kept[peer] -= len(keep.popleft()[3])

    def _resend(self, peer: int, pos: tuple[int, int], force: bool = False) -> None:
        """Send ``peer`` again every kept frame from ``pos`` on.

        Unless ``force``d: once per half retransmit interval for one position, and only frames sent at least
        that long ago (a nack that crossed a frame on its way does not make it go twice).
        """
        now = time.monotonic()
        last, at = self._resent[peer]
        half = self.retransmit_after / 2
        if not force and last == pos and now - at < half:
            return
        self._resent[peer] = (pos, now)
        todo = [f for f in self._keep[peer] if (f[0], f[1]) >= pos and (force or now - f[4] >= half)]
        if not todo:  # nothing missing (the peer waited on a busy node) or just sent
            return
        self._lossy.add(peer)
        ack = self._acked(peer)
        self.stats.retransmits += len(todo)
        for f in todo:
            f[4] = now
            self._post(peer, wire.with_ack(f[2], ack), f[3], True)

    def _run_ok(self, h: wire.Header) -> bool:
        return self.run_id is None or h.run == self.run_id or h.run == ZERO_RUN

    def _tick(self, now: float, awaited: int | None, since: float) -> None:
        """Timers: send again on re-established links, nack stalled ones, send the acks owed for a while."""
        self._next_tick = now + self._tick_every
        while self._restored:
            peer = self._restored.pop()
            self._resend(peer, (self._peer_ack[peer], 0), force=True)
        for peer in range(self.nodes):
            if peer == self.rank:
                continue
            if peer == awaited or self._early[peer]:
                ref = max(
                    self._progress[peer], self._nack_at[peer], since if peer == awaited else self._gap_since[peer]
                )
                if now - ref >= self._nack_wait[peer]:
                    self._control(peer, wire.KIND_NACK, self._rx[peer])
                    self._nack_at[peer] = now
                    self._nack_wait[peer] = min(2 * self._nack_wait[peer], 4 * self.retransmit_after)
                    if peer == awaited and peer in self._lossy and self._keep[peer]:
                        # The peer may wait for this node in turn (a request it never got): send it again.
                        self._resend(peer, (self._peer_ack[peer], 0))
            owed = self._owed_since[peer]
            if owed and now - owed >= ACK_DELAY:
                self._control(peer, wire.KIND_ACK)

    def _drain(self) -> None:
        """Take in whatever has arrived, without waiting: a node that only sends still gets its acks."""
        while (frames := self._poll(0.0)) is not None:
            self._ingest(frames)

    def _pump(self, deadline: float, awaited: int | None = None, since: float = 0.0) -> None:
        """Wait (until ``deadline`` at most) for one frame and take it in; keep the timers going meanwhile."""
        now = time.monotonic()
        if now >= self._next_tick:
            self._tick(now, awaited, since)
        frames = self._poll(max(0.0, min(deadline, self._next_tick) - now))
        if frames is not None:
            self._ingest(frames)

    def _linger(self, peers: set[int], until: float) -> None:
        """Stay (until ``until``) while a peer in ``peers`` has not acknowledged everything sent to it.

        Frames keep coming in (acked, never passed up), what is kept is sent again every ``LINGER_EVERY`` s,
        owed acks go out at once.  With ``peers`` empty: just answer until ``until`` (a peer's bye sent again
        gets its ack again).  Errors end the wait: the node is closing anyway.
        """
        start = time.monotonic()
        last = dict.fromkeys(peers, start)  # what was just sent needs a retransmit interval to be acknowledged
        while True:
            now = time.monotonic()
            waiting = [p for p in peers if self._keep[p] and not self._peer_gone(p)]
            if now >= until or (peers and not waiting):
                return
            for p in waiting:
                if now - last[p] >= self._linger_every:
                    last[p] = now
                    head = self._keep[p][0]
                    self._resend(p, (head[0], head[1]), force=True)
            for p in range(self.nodes):
                if self._owed_since[p] and not self._peer_gone(p):
                    self._control(p, wire.KIND_ACK)
            try:
                frames = self._poll(max(0.0, min(until, now + self._tick_every) - now))
                if frames is not None:
                    self._ingest(frames, deliver=False)
            except CommunicationError as exc:
                if exc.peer is None:
                    return
                self._gone.add(exc.peer)

    def _finish(self, deadline: float) -> None:
        """After a clean barrier: the acks owed; on lossy links, stay until this node's bye is acknowledged."""
        for p in range(self.nodes):
            if self._owed_since[p]:
                self._control(p, wire.KIND_ACK)
        lossy = {p for p in self._lossy if not self._peer_gone(p)}
        if not lossy:
            return
        # Every node waits for a party's bye; nobody waits for the dealer's.
        if not (self.has_dealer and self.rank == self.world_size):
            self._linger(lossy, deadline)
        self._linger(set(), min(deadline, time.monotonic() + QUIET * self._linger_every))

    def _sequence(self, sender: int, h: wire.Header, hbuf, payload, deliver: bool) -> None:
        """Pass a checked frame up in link order, once: drop duplicates, hold frames ahead of a gap."""
        kind = h.kind
        if h.ack and self._run_ok(h):
            self._take_ack(sender, h.ack)
        if kind in wire.UNSEQUENCED:
            if kind == wire.KIND_HELLO:
                if deliver:
                    self._deliver(sender, h, hbuf, payload)
                return
            if h.nbytes or len(payload):
                raise WireError(f"{self.name(sender)} sent an {h.op} frame with a payload", sender)
            if kind == wire.KIND_NACK and self._run_ok(h):
                self._resend(sender, (h.seq, h.part))
            return
        pos, want = (h.seq, h.part), self._rx[sender]
        if pos != want:
            self._lossy.add(sender)
            if pos < want:  # sent again, or twice: this node has it; the peer may have missed the ack
                self.stats.duplicates += 1
                if time.monotonic() - self._ack_at[sender] >= self._tick_every:
                    self._control(sender, wire.KIND_ACK)
                return
            if h.kind == wire.KIND_ABORT:  # the end of the link: no need to wait for what it overtook
                self._gone.add(sender)
                if deliver:
                    self._deliver(sender, h, hbuf, payload)
                return
            early = self._early[sender]
            if pos in early:
                self.stats.duplicates += 1
            elif len(early) < EARLY_FRAMES and self._early_bytes[sender] + len(payload) <= self.max_buffered_bytes:
                if not early:
                    self._gap_since[sender] = time.monotonic()
                early[pos] = (h, hbuf, payload)
                self._early_bytes[sender] += len(payload)
            return
        self._in_order(sender, h, hbuf, payload, deliver)
        early = self._early[sender]
        while early:
            nxt = early.pop(self._rx[sender], None)
            if nxt is None:
                break
            self._early_bytes[sender] -= len(nxt[2])
            self._in_order(sender, *nxt, deliver)

    def _in_order(self, sender: int, h: wire.Header, hbuf, payload, deliver: bool) -> None:
        """The frame at the link's next position: advance the position, owe an ack, pass it up."""
        c = self.chunk_bytes
        now = time.monotonic()
        self._progress[sender] = now
        self._nack_wait[sender] = self.retransmit_after
        if h.nbytes <= c or h.part + 1 >= -(-h.nbytes // c):  # the message's last frame
            self._rx[sender] = (h.seq + 1, 0)
            if not self._owed_since[sender]:
                self._owed_since[sender] = now
            self._owed[sender] += 1
            self._owed_bytes[sender] += h.nbytes
            if self._owed[sender] >= ACK_EVERY or self._owed_bytes[sender] >= ACK_BYTES:
                self._control(sender, wire.KIND_ACK)
        else:
            self._rx[sender] = (h.seq, h.part + 1)
        if not self._early[sender]:
            self._gap_since[sender] = 0.0
        if h.kind == wire.KIND_ABORT:
            self._gone.add(sender)
        elif h.kind == wire.KIND_BYE:
            self._control(sender, wire.KIND_ACK)  # the peer may be lingering for it (``_finish``)
        if deliver:
            self._deliver(sender, h, hbuf, payload)
