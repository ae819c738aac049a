"""A bad network under any transport, for tests: frames lost, duplicated, delayed (so reordered), links down.

A TESTING AID, not an option of real runs.  ``FaultNet(Faults(...)).install(comm)``
puts the faults under a communicator's raw ``_poll`` (every frame it receives
passes through them, data and control alike), tells the communicator that
every link may lose frames (``assume_lossy``) and sets its retransmit interval;
``parties.simulator.run_threads(..., faults=...)`` does it for every node of a
run.  The recovery under test is ``parties.reliable``'s (acks, nacks, frames
sent again, duplicates dropped); the faults only make it necessary.

Faults act where a frame is received, per link ``sender -> receiver``:

* ``loss``: each frame is dropped with this probability;
* ``duplicate``: each frame that is kept is delivered twice with this probability;
* ``delay=(lo, hi)``: each copy is held for a uniform time in ``[lo, hi]`` seconds
  before delivery, so frames of one link overtake each other;
* ``down``: ``LinkDown((a, b), after_frames, seconds)``: once ``after_frames`` frames
  have crossed the link between nodes ``a`` and ``b`` (either way), every frame on
  it, both ways, is lost for ``seconds`` (frames in flight then included); then it
  comes back.

Which frames suffer is drawn from ``random.Random`` instances seeded from
``seed`` and the node id: a non-cryptographic generator is right here, and only
here, because it decides nothing but which frames a test loses (never a secret,
never a share), and it makes a failing run reproducible.  The instances are made
at ``install``, outside any protocol.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mpc.errors import ConfigError

from . import wire
from .comm_base import BufferedCommunicator, Frames

__all__ = ["Faults", "LinkDown", "FaultNet"]

_SENDER = struct.Struct("<I")
_SENDER_OFFSET = 8  # magic (4), version, kind, dtype, ndim (1 each): then the sender (wire.py)


def _probability(name: str, p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise ConfigError(f"{name} must be a probability in [0, 1), got {p!r}")


@dataclass(frozen=True)
class LinkDown:
    """The link between nodes ``between`` goes down after ``after_frames`` frames crossed it, for ``seconds``."""

    between: tuple[int, int]
    after_frames: int
    seconds: float

    def __post_init__(self) -> None:
        a, b = self.between
        if a == b or min(a, b) < 0:
            raise ConfigError(f"a link joins two different nodes, got {self.between!r}")
        if isinstance(self.after_frames, bool) or not isinstance(self.after_frames, int) or self.after_frames < 0:
            raise ConfigError(f"after_frames must be an integer >= 0, got {self.after_frames!r}")
        if not isinstance(self.seconds, int | float) or not self.seconds > 0:
            raise ConfigError(f"seconds must be positive, got {self.seconds!r}")

    @property
    def link(self) -> tuple[int, int]:
        return (min(self.between), max(self.between))


@dataclass(frozen=True)
class Faults:
    """What goes wrong on the network (module docstring); ``retransmit_after``: the nodes' retransmit interval."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    down: tuple[LinkDown, ...] = ()
    seed: int = 0
    retransmit_after: float = 0.1

    def __post_init__(self) -> None:
        _probability("loss", self.loss)
        _probability("duplicate", self.duplicate)
        lo, hi = self.delay
        if not 0 <= lo <= hi or not math.isfinite(hi):
            raise ConfigError(f"delay must be (lo, hi) seconds with 0 <= lo <= hi, got {self.delay!r}")
        if not isinstance(self.retransmit_after, int | float) or not self.retransmit_after > 0:
            raise ConfigError(f"retransmit_after must be positive, got {self.retransmit_after!r}")
        object.__setattr__(self, "down", tuple(self.down))
        if not all(isinstance(d, LinkDown) for d in self.down):
            raise ConfigError(f"down must list LinkDown outages, got {self.down!r}")


class FaultNet:
    """One faulty network: the outages' state (shared by the nodes of a run) and what the faults did."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._lock = threading.Lock()
        self._crossed: dict[tuple[int, int], int] = {}
        self._until: dict[int, float] = {}  # index in faults.down -> when that outage ends (once started)
        self.comms: list[BufferedCommunicator] = []
        self.lost = 0  # frames dropped at random
        self.lost_down = 0  # frames dropped on a link that was down
        self.duplicated = 0
        self.delayed = 0
        self.reordered = 0  # frames delivered before one of the same link that arrived earlier

    def install(self, comm: BufferedCommunicator) -> None:
        """Put the faults under ``comm``'s receiving side and make it expect losses."""
        layer = _FaultyPoll(self, comm.rank, comm._poll, random.Random(f"{self.faults.seed}:{comm.rank}"))
        comm._poll = layer.poll  # type: ignore[method-assign] - this instance only
        comm.assume_lossy()
        comm.set_retransmit_after(self.faults.retransmit_after)
        self.comms.append(comm)

    @property
    def retransmits(self) -> int:
        """Frames the nodes sent again, all together."""
        return sum(c.stats.retransmits for c in self.comms)

    def _is_down(self, a: int, b: int, now: float) -> bool:
        link = (min(a, b), max(a, b))
        with self._lock:
            crossed = self._crossed.get(link, 0) + 1
            self._crossed[link] = crossed
            down = False
            for i, d in enumerate(self.faults.down):
                if d.link != link:
                    continue
                if i not in self._until and crossed > d.after_frames:
                    self._until[i] = now + d.seconds
                if now < self._until.get(i, 0.0):
                    down = True
            if down:
                self.lost_down += 1
            return down

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)


class _FaultyPoll:
    """A node's receiving side through the faults: frames wait in a heap until their delivery time."""

    def __init__(self, net: FaultNet, rank: int, inner: Callable[[float], Frames | None], rng: random.Random):
        self.net = net
        self.rank = rank
        self.inner = inner
        self.rng = rng
        self.heap: list[tuple[float, int, int, Frames]] = []  # (due, arrival order, sender, frames)
        self.order = itertools.count()
        self.released: dict[int, int] = {}  # sender -> arrival order of the last frame delivered

    def poll(self, timeout: float) -> Frames | None:
        """The next frame due (``timeout`` 0: take in what the transport has, without waiting)."""
        deadline = time.monotonic() + timeout
        heap = self.heap
        while True:
            now = time.monotonic()
            if heap and heap[0][0] <= now:
                _, order, sender, frames = heapq.heappop(heap)
                if order < self.released.get(sender, -1):
                    self.net._count("reordered")
                else:
                    self.released[sender] = order
                return frames
            wake = min(deadline, heap[0][0]) if heap else deadline
            frames = self.inner(max(0.0, wake - now))
            if frames is not None:
                self._arrive(frames, time.monotonic())
            elif time.monotonic() >= deadline and not (heap and heap[0][0] <= time.monotonic()):
                return None

    def _arrive(self, frames: Frames, now: float) -> None:
        hbuf = frames[0]
        if len(hbuf) != wire.HEADER_SIZE:  # not a frame of ours: the communicator refuses it, unharmed
            heapq.heappush(self.heap, (now, next(self.order), -1, frames))
            return
        sender = _SENDER.unpack_from(hbuf, _SENDER_OFFSET)[0]
        f, net, rng = self.net.faults, self.net, self.rng
        if f.down and net._is_down(sender, self.rank, now):
            return
        if f.loss and rng.random() < f.loss:
            net._count("lost")
            return
        copies = 2 if f.duplicate and rng.random() < f.duplicate else 1
        if copies == 2:
            net._count("duplicated")
        lo, hi = f.delay
        for _ in range(copies):
            wait = rng.uniform(lo, hi) if hi > 0 else 0.0
            if wait:
                net._count("delayed")
            heapq.heappush(self.heap, (now + wait, next(self.order), sender, frames))
