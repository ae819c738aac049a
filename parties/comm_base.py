"""The communicator logic shared by every transport: tags, buffering, deadlines, counting.

A transport supplies three primitives: post frames to a peer, poll for the next
incoming frames (with the transport's idea of who sent them) and close.  All
checks and all accounting happen here, once.

Messages of one link are taken in the order sent, once each (``parties.reliable``
restores it where a transport does not).  A receive takes the next
message of the awaited peer; messages from other peers that arrive meanwhile
are buffered by sender.  The header's sequence number and operation must be
the ones this party expects, else ``DesyncError`` names both sides'
operations.

Node ids are the parties ``0..n-1`` and, when the protocol family has one, the
dealer ``n`` (``dealer=False``: no node ``n``; nothing may be sent to it).

Memory is bounded against any peer.  A payload larger than ``chunk_bytes``
travels as several frames (``parties.wire``); a frame over the chunk limit is
refused (the ZeroMQ transport cuts the connection before holding it).  The
first frame of a message is checked before anything is allocated: its declared
shape against ``max_message_bytes``, and, when the current operation awaits
this peer's next message, its operation, sequence number, dtype and shape
against what the operation expects (a mismatch is refused at once, the rest of
its chunks are dropped as they come).  Messages a peer sends ahead of what
this node awaits are held up to ``max_buffered_bytes`` per peer; beyond, the
peer is refused with an error that names it.

Bad networks: every link is made reliable under these checks by ``parties.reliable``
(acks, nacks, resends, reordering), so a transport may lose, duplicate, delay or
reorder frames.

Emulated latency (``MPCConfig.link_delay``, which ``parties.lifecycle`` hands to
``set_link_delay`` at every node, the dealer included): every frame the transport
delivers, data and control alike, is held until ``delay`` seconds after it was
taken in, then passed up in arrival order (``_DelayLine``, under ``_poll``, so
every transport gets it and every wait keeps its deadline).  Sends stay
asynchronous and bandwidth is unchanged: a message costs one delay, a reply two.
A frame that waited in the transport while this node computed is stamped when
it is taken in, so it may wait up to one delay longer than on a real network.
The retransmit interval grows by a round trip (``2 x delay``), so a delayed
frame is not asked for again.  At most ``max_buffered_bytes`` of payload is
held; beyond, frames stay in the transport (bounded there) until the first is due.
"""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from mpc.buffers import BufferPool
from mpc.config import LINK_DELAY_MAX
from mpc.context import CommStats, Communicator, Expect
from mpc.errors import (
    ClosedError,
    CommunicationError,
    ConfigError,
    DesyncError,
    PeerAborted,
    PeerTimeout,
    ProtocolError,
    SecurityError,
    WireError,
)
from mpc.transcript import Transcript

from . import wire
from .desync import clean, decode_records, encode_records, explain
from .reliable import (
    ABORT_LINGER,
    KEEP_BYTES,
    KEEP_FRAMES,
    RETRANSMIT_AFTER,
    SMALL,
    ZERO_DIGEST,
    ZERO_RUN,
    ReliableLinks,
)

__all__ = ["BufferedCommunicator", "Frames", "abort_reason"]

log = logging.getLogger("mpc.comm")

# (header bytes, payload bytes, identity the transport authenticated or None)
Frames = tuple[bytes | memoryview, bytes | memoryview, int | None]
Recorder = Callable[[int, bytes, bytes], None]

ABORT_TEXT_LIMIT = 400
DEFAULT_CHUNK_BYTES = 1 << 22
DEFAULT_BUFFERED_BYTES = 1 << 31


@dataclass
class _Partial:
    """A message whose chunks are still arriving: its first header and where its bytes go (None: dropped)."""

    header: wire.Header
    dest: torch.Tensor | None
    filled: int
    next_part: int = 1


class _DelayLine:
    """An emulated one-way latency under a transport's ``_poll`` (module docstring, "Emulated latency")."""

    def __init__(self, inner: Callable[[float], Frames | None], delay: float, limit: int) -> None:
        self.inner = inner
        self.delay = delay
        self.limit = limit  # payload bytes held at most; beyond, frames wait in the transport
        self.held: deque[tuple[float, Frames]] = deque()  # (when due, frames), in arrival order
        self.bytes = 0

    def poll(self, timeout: float) -> Frames | None:
        """The next frame due, waiting at most ``timeout`` s (0: take in what the transport has, no wait)."""
        deadline = time.monotonic() + timeout
        held = self.held
        while True:
            now = time.monotonic()
            if held and held[0][0] <= now:
                _, frames = held.popleft()
                self.bytes -= len(frames[1])
                return frames
            wake = min(deadline, held[0][0]) if held else deadline
            if self.bytes < self.limit:
                frames = self.inner(max(0.0, wake - now))
                if frames is not None:
                    held.append((time.monotonic() + self.delay, frames))
                    self.bytes += len(frames[1])
                    continue
            elif wake > now:
                time.sleep(wake - now)
            if time.monotonic() >= deadline and not (held and held[0][0] <= time.monotonic()):
                return None


def abort_reason(exc: BaseException, who: str) -> str:
    """The abort notice a failing node sends: its error's type and, when a peer caused it, that peer.

    An echo (this node stopped because another one aborted) passes the original
    reason on unchanged, so every party names the node that failed first, not
    the neighbour that told it.  Only the toolkit's own communication errors are
    quoted: they name peers, operations and shapes, never values.
    """
    if isinstance(exc, PeerAborted) and getattr(exc, "reason", ""):
        return exc.reason
    if isinstance(exc, CommunicationError) and exc.peer is not None:
        return f"{type(exc).__name__} in {who}: {exc}"
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or a stop signal (parties.stopping): "stopped by SIGTERM"
        return f"{who} was {exc or 'interrupted'}"
    return f"{type(exc).__name__} in {who}"


class BufferedCommunicator(ReliableLinks, Communicator):
    def __init__(
        self,
        rank: int,
        world_size: int,
        timeout: float,
        max_message_bytes: int,
        recorder: Recorder | None = None,
        dealer: bool = True,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_buffered_bytes: int = DEFAULT_BUFFERED_BYTES,
        retransmit_after: float = RETRANSMIT_AFTER,
    ) -> None:
        self.rank = rank
        self.chunk_bytes = int(chunk_bytes)
        self.max_buffered_bytes = int(max_buffered_bytes)
        self.world_size = world_size
        self.has_dealer = bool(dealer)
        self.nodes = world_size + 1 if dealer else world_size
        self.timeout = float(timeout)
        self.max_message_bytes = int(max_message_bytes)
        self.stats = CommStats()
        self._recorder = recorder
        nodes = self.nodes
        if not 0 <= rank < nodes:
            raise ProtocolError(f"node id {rank} is outside 0..{nodes - 1}")
        self._out_seq = [0] * nodes
        self._in_seq = [0] * nodes
        self._buf: list[deque[tuple[wire.Header, bytes | memoryview | torch.Tensor | None]]] = [
            deque() for _ in range(nodes)
        ]
        self._held = [0] * nodes  # per peer: bytes of data messages received and not yet consumed
        self._partial: dict[int, _Partial] = {}
        self._recv_buffers = BufferPool()  # large messages' buffers, reused (mpc.buffers)
        # While a receive runs: the peers it awaits, with the operation and shape it expects (None: any).
        self._awaiting: dict[int, tuple[str | None, Expect | None]] = {}
        self._bye: set[int] = set()
        self._bye_hdr: dict[int, wire.Header] = {}
        self._state = "open"
        # The program-consistency check (mpc.transcript): set by the party setup; None for the dealer.
        self.transcript: Transcript | None = None
        self._agreed = [0] * nodes  # per peer: the last operation count on which both transcripts agreed
        self._desync_sent: set[int] = set()
        self._desync_recv: dict[int, list] = {}
        self._resolving = False
        self.run_id: bytes | None = None  # agreed at setup (parties.party); frames of another run are refused
        self.link_delay = 0.0  # emulated one-way latency (set_link_delay)
        self._delay_line: _DelayLine | None = None
        self._init_links(nodes, retransmit_after)

    # ----- transport primitives ---------------------------------------------------
    @abstractmethod
    def _post(self, peer: int, header: bytes, payload: bytes | memoryview, final: bool = False) -> None:
        """Queue frames for ``peer``; ``final`` (bye, abort) must never block."""

    @abstractmethod
    def _poll(self, timeout: float) -> Frames | None: ...

    @abstractmethod
    def _close_transport(self) -> None: ...

    # ----- emulated latency (module docstring) ----------------------------------------
    def set_link_delay(self, seconds: float) -> None:
        """Hold every frame this node receives ``seconds`` after it arrives (``MPCConfig.link_delay``); 0: none.

        Set before the first frame is taken in (``parties.lifecycle`` does); the
        retransmit interval grows by the round trip, ``2 * seconds``.
        """
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or not 0 <= seconds <= LINK_DELAY_MAX
        ):
            raise ConfigError(f"link_delay must be a number of seconds in [0, {LINK_DELAY_MAX:g}], got {seconds!r}")
        self.link_delay = float(seconds)
        if self._delay_line is None and seconds:
            self._delay_line = _DelayLine(self._poll, self.link_delay, self.max_buffered_bytes)
            self._poll = self._delay_line.poll  # type: ignore[method-assign] - this instance only
        elif self._delay_line is not None:
            self._delay_line.delay = self.link_delay
        self.set_retransmit_after(self._retransmit_base)

    def set_retransmit_after(self, seconds: float) -> None:
        """``ReliableLinks.set_retransmit_after``, plus the round trip of an emulated latency."""
        super().set_retransmit_after(seconds)  # checks the value
        self._retransmit_base = self.retransmit_after
        if self.link_delay:
            super().set_retransmit_after(self._retransmit_base + 2 * self.link_delay)

    # ----- naming -------------------------------------------------------------------
    def name(self, node: int) -> str:
        return "the dealer" if self.has_dealer and node == self.world_size else f"party {node}"

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClosedError(f"the communicator of {self.name(self.rank)} is {self._state}")

    # ----- sending ------------------------------------------------------------------
    def _send(self, peer: int, kind: int, op: str, tensor: torch.Tensor | None) -> int:
        if not 0 <= peer < self.nodes or peer == self.rank:
            raise ProtocolError(f"{self.name(self.rank)} cannot send to node {peer}")
        t = self.transcript
        count, digest = (t.count, t.digest) if t is not None else (0, ZERO_DIGEST)
        mark = (count, digest, self.run_id or ZERO_RUN)
        if tensor is None:
            payload: bytes | memoryview = b""
            dtype, shape = torch.uint8, (0,)
        else:
            payload = wire.payload_of(tensor)
            dtype, shape = tensor.dtype, tuple(tensor.shape)
        seq, n, c = self._out_seq[peer], len(payload), self.chunk_bytes
        self._out_seq[peer] += 1
        ack = self._acked(peer)
        keep = self._keep[peer]
        final = kind != wire.KIND_DATA
        now = time.monotonic()
        if n <= c:
            if n < SMALL and type(payload) is not bytes:
                payload = bytes(payload)  # kept for a resend: its own bytes (see the module docstring)
            header = wire.encode_header(kind, self.rank, seq, op, dtype, shape, n, *mark, ack=ack)
            keep.append([seq, 0, header, payload, now])
            self._kept[peer] += n
            self._post(peer, header, payload, final)
            if (len(keep) > KEEP_FRAMES or self._kept[peer] > KEEP_BYTES) and self._state == "open":
                self._drain()
            return n
        for part, start in enumerate(range(0, n, c)):  # one frame per chunk: bounded memory at the receiver
            piece = payload[start : start + c]
            if len(piece) < SMALL:
                piece = bytes(piece)
            header = wire.encode_header(kind, self.rank, seq, op, dtype, shape, n, *mark, part=part, ack=ack)
            keep.append([seq, part, header, piece, now])
            self._kept[peer] += len(piece)
            self._post(peer, header, piece, final)
        if (len(keep) > KEEP_FRAMES or self._kept[peer] > KEEP_BYTES) and self._state == "open":
            self._drain()
        return n

    def exchange(
        self, op: str, sends: Mapping[int, torch.Tensor], recvs: Mapping[int, Expect]
    ) -> dict[int, torch.Tensor]:
        self._check_open()
        dealer = self.world_size if self.has_dealer else -1
        stats = self.stats
        with_parties = any(p != dealer for p in sends) or any(p != dealer for p in recvs)
        opstats = stats.op(op) if with_parties else None
        if opstats is not None:
            stats.rounds += 1
            opstats.rounds += 1
        for peer, tensor in sends.items():
            n = self._send(peer, wire.KIND_DATA, op, tensor)
            if peer == dealer or opstats is None:
                stats.dealer_messages += 1
                stats.dealer_bytes_sent += n
            else:
                stats.messages_sent += 1
                stats.bytes_sent += n
                opstats.messages_sent += 1
                opstats.bytes_sent += n
        deadline = time.monotonic() + self.timeout
        out: dict[int, torch.Tensor] = {}
        self._awaiting = {peer: (op, e) for peer, e in recvs.items()}
        try:
            for peer, expect in recvs.items():
                h, payload = self._next(peer, op, deadline)
                self._awaiting.pop(peer, None)
                out[peer] = self._accept(peer, op, expect, h, payload)
                self._count_recv(peer, dealer, opstats, h.nbytes)
        finally:
            self._awaiting = {}
        return out

    def _count_recv(self, peer: int, dealer: int, opstats, n: int) -> None:
        stats = self.stats
        if peer == dealer or opstats is None:
            stats.dealer_messages += 1
            stats.dealer_bytes_recv += n
        else:
            stats.messages_recv += 1
            stats.bytes_recv += n
            opstats.messages_recv += 1
            opstats.bytes_recv += n

    def recv_any(self, peer: int, timeout: float | None = None) -> tuple[str, torch.Tensor] | None:
        """The next data message from ``peer`` whatever its operation; ``None`` once it said bye."""
        self._check_open()
        waited = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + waited
        self._awaiting = {peer: (None, None)}
        try:
            h, payload = self._next(peer, "<any>", deadline, waited)
        except DesyncError:
            if peer in self._bye and not self._buf[peer]:
                return None
            raise
        finally:
            self._awaiting = {}
        self._check_run(peer, h)
        t = wire.decode_payload(h, payload, peer)
        self.stats.dealer_messages += 1
        self.stats.dealer_bytes_recv += h.nbytes
        return h.op, t

    def has_message(self, peer: int) -> bool:
        """Whether a message (or the bye) from ``peer`` is waiting, after taking in what has arrived; does not
        wait for one (a ZeroMQ poll may take a millisecond): the dealer asks it between two pieces of work made
        ahead of the requests."""
        self._check_open()
        now = time.monotonic()
        self._pump(now, peer, now)
        return bool(self._buf[peer]) or peer in self._bye

    # ----- receiving ------------------------------------------------------------------
    def _next(
        self, peer: int, op: str, deadline: float, waited: float | None = None
    ) -> tuple[wire.Header, bytes | memoryview]:
        since = time.monotonic()
        while not self._buf[peer]:
            if peer in self._bye:
                if peer in self._bye_hdr:
                    self._check_transcript(peer, self._bye_hdr[peer])  # names the first difference, if any
                raise DesyncError(
                    f"{self.name(peer)} finished its program while {self.name(self.rank)} still expected "
                    f"'{op}' from it: the parties run different programs",
                    peer,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeout(
                    f"{self.name(self.rank)} waited {self.timeout if waited is None else waited:g}s for '{op}' "
                    f"from {self.name(peer)} "
                    f"and got nothing: {self.name(peer)} is dead, stuck or unreachable",
                    peer,
                )
            self._pump(deadline, peer, since)
        h, payload = self._buf[peer].popleft()
        self._held[peer] -= max(h.nbytes, wire.HEADER_SIZE)
        return h, payload

    def _ingest(self, frames: Frames, deliver: bool = True) -> None:
        """Check a frame, then pass it up in link order, once (``deliver=False``: acknowledge only)."""
        hbuf, payload, auth = frames
        h = wire.decode_header(hbuf, self.max_message_bytes, auth)
        sender = h.sender
        # An authenticated peer naming another node (the receiver itself included) is impersonation.
        if auth is not None and auth != sender and 0 <= sender < self.nodes:
            raise SecurityError(
                f"a frame claims to come from {self.name(sender)} but was sent with the key of {self.name(auth)}"
            )
        if not 0 <= sender < self.nodes or sender == self.rank:
            raise WireError(f"a frame names sender {sender}, which is not a peer of {self.name(self.rank)}", auth)
        if len(payload) > self.chunk_bytes:  # the ZeroMQ transport cuts such a frame before it is held
            raise WireError(
                f"{self.name(sender)} sent a frame of {len(payload)} bytes, over the {self.chunk_bytes}-byte "
                "chunk limit (chunk_bytes must be the same at every node)",
                sender,
            )
        self._sequence(sender, h, hbuf, payload, deliver)

    def _deliver(self, sender: int, h: wire.Header, hbuf, payload) -> None:
        """A frame in link order: record it, reassemble chunks, dispatch whole messages."""
        if self._recorder is not None:
            self._recorder(sender, bytes(hbuf), bytes(payload))
        if h.kind == wire.KIND_ABORT:
            self._partial.pop(sender, None)
        elif h.part or sender in self._partial:
            self._continue(sender, h, payload)
            return
        elif len(payload) == self.chunk_bytes < h.nbytes:  # the first of several chunks (all but the last full)
            self._begin(sender, h, payload)
            return
        if len(payload) != h.nbytes:
            raise WireError(
                f"{self.name(sender)} sent {len(payload)} payload bytes for '{h.op}', its header declared {h.nbytes}",
                sender,
            )
        if h.kind == wire.KIND_DATA:
            self._admit(sender, h)
        self._dispatch(sender, h, payload)

    def _admit(self, sender: int, h: wire.Header) -> bool:
        """Account for a data message before anything of it is held; False if the awaiting receive refuses it.

        The message the current receive awaits from ``sender`` (nothing of it is buffered yet) is checked
        against the expectation and is not counted against ``max_buffered_bytes``; any other one is.
        """
        cost = max(h.nbytes, wire.HEADER_SIZE)
        awaited = self._awaiting.get(sender)
        nxt = awaited is not None and not self._buf[sender] and h.seq == self._in_seq[sender]
        if not nxt and self._held[sender] + cost > self.max_buffered_bytes:
            raise WireError(
                f"{self.name(sender)} sent '{h.op}' (message #{h.seq}, {h.nbytes} bytes) ahead of what "
                f"{self.name(self.rank)} awaits, over the {self.max_buffered_bytes}-byte limit on data held for "
                f"one peer ({self._held[sender]} held): a misbehaving peer, or raise max_buffered_bytes",
                sender,
            )
        self._held[sender] += cost
        if not nxt:
            return True
        op, expect = awaited
        if op is None or expect is None:
            return True
        shape_ok = expect.shape is None or tuple(expect.shape) == h.shape
        return h.op == op and h.dtype == expect.dtype and shape_ok

    def _begin(self, sender: int, h: wire.Header, payload) -> None:
        """The first chunk of a message of several: checked, then its whole (declared, checked) size allocated."""
        if h.kind not in (wire.KIND_DATA, wire.KIND_DESYNC):
            raise WireError(f"{self.name(sender)} sent a control message in chunks", sender)
        if h.kind == wire.KIND_DATA and not self._admit(sender, h):
            # Not what the awaiting operation expects: refused now (the receive raises on it), chunks dropped.
            self._buf[sender].append((h, None))
            self._partial[sender] = _Partial(h, None, len(payload))
            return
        dest = self._recv_buffers.take(h.nbytes)
        dest.numpy()[: len(payload)] = memoryview(payload).cast("B")
        self._partial[sender] = _Partial(h, dest, len(payload))

    def _continue(self, sender: int, h: wire.Header, payload) -> None:
        st = self._partial.get(sender)
        if st is None:
            raise WireError(
                f"{self.name(sender)} sent chunk #{h.part} of '{h.op}' (message #{h.seq}) without its first chunk",
                sender,
            )
        if h.part != st.next_part or not st.header.same_message(h):
            raise WireError(
                f"{self.name(sender)} sent chunk #{h.part} of '{h.op}' (message #{h.seq}) where chunk "
                f"#{st.next_part} of '{st.header.op}' (message #{st.header.seq}) was due",
                sender,
            )
        end = st.filled + len(payload)
        if len(payload) != min(self.chunk_bytes, h.nbytes - st.filled):
            raise WireError(
                f"{self.name(sender)} sent a chunk of {len(payload)} bytes of '{h.op}' (message #{h.seq}) with "
                f"{st.filled} of its {h.nbytes} declared bytes received (chunks are {self.chunk_bytes} bytes)",
                sender,
            )
        if st.dest is not None:
            st.dest.numpy()[st.filled : end] = memoryview(payload).cast("B")
        st.filled, st.next_part = end, st.next_part + 1
        if end == h.nbytes:
            del self._partial[sender]
            if st.dest is not None:
                self._dispatch(sender, st.header, st.dest)

    def _dispatch(self, sender: int, h: wire.Header, payload) -> None:
        """A whole message: abort, bye and desync act at once; data waits in the sender's buffer."""
        if h.kind == wire.KIND_ABORT:
            self._check_run(sender, h)
            # Peer-controlled text: control characters escaped (no fake lines, no terminal escapes), bounded.
            reason = clean(bytes(payload[:ABORT_TEXT_LIMIT]).decode("utf-8", "replace"), ABORT_TEXT_LIMIT)
            err = PeerAborted(f"{self.name(sender)} failed and stopped the run: {reason}", sender)
            err.reason = reason  # type: ignore[attr-defined] - forwarded by abort_reason
            raise err
        if h.kind == wire.KIND_HELLO:  # the transport learnt which connection is the sender's; nothing else
            return
        if h.kind == wire.KIND_BYE:
            self._bye.add(sender)
            self._bye_hdr[sender] = h
            return
        if h.kind == wire.KIND_DESYNC:
            self._desync_recv[sender] = decode_records(
                payload.numpy().tobytes() if isinstance(payload, torch.Tensor) else payload
            )
            if self._is_party(sender) and self.transcript is not None:
                if self._resolving:
                    self._send_records(sender)  # answer, and go on resolving with the peer awaited
                elif sender not in self._desync_sent:
                    self._desync(sender)  # answer with this side's records, then raise
            return
        self._buf[sender].append((h, payload))

    # ----- run identity -------------------------------------------------------------------------
    def set_run_id(self, run_id: bytes) -> None:
        """From now on every frame carries ``run_id`` and every frame received must carry it."""
        if len(run_id) != wire.RUN_ID_BYTES:
            raise ProtocolError(f"a run id has {wire.RUN_ID_BYTES} bytes")
        self.run_id = bytes(run_id)

    def _check_run(self, peer: int, h: wire.Header) -> None:
        """Refuse a frame of another run: once the run id is agreed, every frame must carry it."""
        zeros = bytes(wire.RUN_ID_BYTES)
        if self.run_id is None or h.run == self.run_id or (h.run == zeros and h.kind == wire.KIND_ABORT):
            return
        raise WireError(
            f"{self.name(peer)} sent a frame of another run (run id {h.run.hex()}, this run is "
            f"{self.run_id.hex()}): a process left over from an earlier run, or a node started for another "
            "run, holds this cluster's keys; stop it and start every node of the run afresh",
            peer,
        )

    # ----- the program-consistency check --------------------------------------------------
    def _is_party(self, node: int) -> bool:
        return not (self.has_dealer and node == self.world_size) and self.rank != self.world_size

    def _check_transcript(self, peer: int, h: wire.Header) -> None:
        self._check_run(peer, h)
        t = self.transcript
        if t is None or not self._is_party(peer):
            return
        if h.opidx == t.count and h.digest == t.digest:
            self._agreed[peer] = t.count
            return
        self._desync(peer)

    def _records_for(self, peer: int) -> list:
        assert self.transcript is not None
        theirs = self._desync_recv.get(peer)
        start = self._agreed[peer]
        if theirs:
            start = min(start, theirs[0].index - 1)
        return self.transcript.since(start)

    def _send_records(self, peer: int) -> None:
        if peer in self._desync_sent:
            return
        self._desync_sent.add(peer)
        try:
            self._send(peer, wire.KIND_DESYNC, "desync", encode_records(self._records_for(peer)))
        except Exception:  # noqa: BLE001 - the peer may be gone; the error still names the divergence
            pass

    def _desync(self, peer: int) -> None:
        """Exchange transcript records with ``peer`` and raise the DesyncError that names the first difference.

        While waiting for the peer's records, records from other peers are answered and stored, and an
        abort from a third party does not cut the wait short: only the awaited peer's loss does.
        """
        t = self.transcript
        assert t is not None
        self._send_records(peer)
        since = time.monotonic()
        deadline = since + min(5.0, self.timeout)
        self._resolving = True
        try:
            while peer not in self._desync_recv and time.monotonic() < deadline:
                try:
                    self._pump(deadline, peer, since)
                except CommunicationError as exc:
                    if exc.peer == peer or exc.peer is None:
                        break
        finally:
            self._resolving = False
        mine = self._records_for(peer)
        raise DesyncError(
            explain(self.name(self.rank), self.name(peer), t.count, mine, self._desync_recv.get(peer)), peer
        )

    def _accept(self, peer: int, op: str, expect: Expect, h: wire.Header, payload) -> torch.Tensor:
        self._check_run(peer, h)
        self._check_transcript(peer, h)
        expected_seq = self._in_seq[peer]
        self._in_seq[peer] += 1
        if h.seq != expected_seq or h.op != op:
            raise DesyncError(
                f"{self.name(peer)} sent '{h.op}' (message #{h.seq}) where {self.name(self.rank)} expected "
                f"'{op}' (message #{expected_seq}): the parties run different programs",
                peer,
            )
        if h.dtype != expect.dtype or (expect.shape is not None and tuple(expect.shape) != h.shape):
            raise DesyncError(
                f"{self.name(peer)} sent '{op}' with shape {h.shape} ({h.dtype}) where {self.name(self.rank)} "
                f"expected shape {expect.shape} ({expect.dtype}): the parties disagree on shapes",
                peer,
            )
        if payload is None:  # refused at its first chunk; unreachable after the checks above
            raise DesyncError(f"{self.name(peer)} sent '{h.op}' that {self.name(self.rank)} did not expect", peer)
        return wire.decode_payload(h, payload, peer)

    # ----- lifecycle --------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        if self._state != "open":
            return
        self._state = "aborted"  # from here on a send takes nothing in (``_drain``): the notices go out first
        text = reason.encode("utf-8", "replace")[:ABORT_TEXT_LIMIT]
        for peer in range(self.nodes):
            if peer != self.rank:
                try:
                    self._send(
                        peer,
                        wire.KIND_ABORT,
                        "abort",
                        torch.frombuffer(bytearray(text), dtype=torch.uint8) if text else None,
                    )
                except Exception:  # best effort: the peer may be gone already
                    pass
        try:
            lossy = {p for p in self._lossy if not self._peer_gone(p)}
            if lossy:  # the notice may be lost: stay a moment to send it again until acknowledged
                self._linger(lossy, time.monotonic() + min(ABORT_LINGER, self.timeout))
        except Exception:  # noqa: BLE001 - best effort, like the notice itself
            pass
        finally:
            self._close_transport()

    def close(self, wait_for: list[int] | None = None) -> None:
        """Say bye to every peer, wait (bounded) for the byes of ``wait_for``, then close."""
        if self._state != "open":
            return
        try:
            for peer in range(self.nodes):
                if peer != self.rank:
                    self._send(peer, wire.KIND_BYE, "bye", None)
            deadline = time.monotonic() + self.timeout
            for peer in wait_for if wait_for is not None else self._default_barrier():
                since = time.monotonic()
                while peer not in self._bye:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PeerTimeout(f"{self.name(peer)} did not finish within {self.timeout:g}s", peer)
                    self._pump(deadline, peer, since)
                if self._buf[peer] and self._is_party(peer):
                    self._check_transcript(peer, self._buf[peer][0][0])
                if peer in self._bye_hdr:
                    self._check_transcript(peer, self._bye_hdr[peer])
                if self._buf[peer]:
                    h = self._buf[peer][0][0]
                    raise DesyncError(
                        f"{self.name(peer)} sent '{h.op}' that {self.name(self.rank)} never received: "
                        "the parties run different programs",
                        peer,
                    )
            self._finish(deadline)
        finally:
            self._state = "closed"
            self._close_transport()

    def _default_barrier(self) -> list[int]:
        if self.has_dealer and self.rank == self.world_size:  # the dealer waits for every party
            return list(range(self.world_size))
        return [p for p in range(self.world_size) if p != self.rank]

    @property
    def state(self) -> str:
        return self._state

    def __enter__(self) -> BufferedCommunicator:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort(abort_reason(exc, self.name(self.rank)))
        else:
            self.close()
