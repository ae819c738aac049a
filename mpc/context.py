"""The party context and the interfaces it is built from.

A ``PartyContext`` is the one object through which a party reaches its
services: its communicator (how bytes move), its protocol family, the family's
correlated-randomness source (the dealer, for the dealer family; none for
families that need none), its pairwise seeds and its configuration.  Nothing here knows
about ZeroMQ or processes: those are in ``parties/``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import MPCConfig
from .errors import ProtocolError
from .fixedpoint import FixedPoint
from .prg import Prg
from .transcript import Transcript

__all__ = ["Communicator", "CommStats", "OpStats", "Expect", "CorrelationSource", "Handle", "PartyContext"]

log = logging.getLogger("mpc")


@dataclass
class OpStats:
    rounds: int = 0
    messages_sent: int = 0
    messages_recv: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0


@dataclass
class CommStats:
    """Traffic of one party: totals, per operation name, and with the dealer apart.

    A round is one ``exchange`` among parties: every message of a round is sent
    before any is awaited, so a round costs one network latency.

    ``retransmits``: frames this node sent again because a peer missed them (a
    lossy network, ``parties.comm_base``); ``duplicates``: frames it received
    twice and dropped.  Both stay 0 on a network that loses nothing.

    ``dealer_pushed``: the last party's requests answered by material the dealer
    pushed before they were made (its guess was right); ``dealer_pushed_wrong``:
    pushed material dropped because the guess was not the request (its bytes
    count in ``dealer_bytes_recv`` all the same).
    """

    rounds: int = 0
    messages_sent: int = 0
    messages_recv: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    dealer_messages: int = 0
    dealer_bytes_sent: int = 0
    dealer_bytes_recv: int = 0
    retransmits: int = 0
    duplicates: int = 0
    dealer_pushed: int = 0
    dealer_pushed_wrong: int = 0
    by_op: dict[str, OpStats] = field(default_factory=dict)

    def op(self, name: str) -> OpStats:
        s = self.by_op.get(name)
        if s is None:
            s = self.by_op[name] = OpStats()
        return s

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "by_op"}
        d["by_op"] = {k: dict(v.__dict__) for k, v in sorted(self.by_op.items())}
        return d

    def snapshot(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "by_op"}

    def reset(self) -> None:
        fresh = CommStats()
        self.__dict__.update(fresh.__dict__)


@dataclass(frozen=True)
class Expect:
    """What a receive expects: a shape (None: any, checked against the header) and a dtype."""

    shape: tuple[int, ...] | None
    dtype: torch.dtype = torch.int64


class Communicator(ABC):
    """How tagged tensors move between parties (ids 0..n-1) and the dealer (id n, if the family has one).

    Every message carries the sender, a per-link sequence number and the
    operation's name; a receiver that expected another operation or shape raises
    ``DesyncError`` naming both sides.  Every receive has a deadline and names the
    silent peer when it passes.
    """

    rank: int
    world_size: int
    stats: CommStats
    transcript: Transcript | None = None
    has_dealer: bool = True  # False when the protocol family runs without a dealer (node ids 0..n-1 only)

    @property
    def dealer_id(self) -> int:
        if not self.has_dealer:
            raise ProtocolError(
                "this run has no dealer: its protocol family needs none, so nothing may ask it for "
                "correlations (run with protocol='additive-dealer' for dealer-backed protocols)"
            )
        return self.world_size

    @abstractmethod
    def exchange(
        self, op: str, sends: Mapping[int, torch.Tensor], recvs: Mapping[int, Expect]
    ) -> dict[int, torch.Tensor]:
        """One round: post every send, then wait for every receive."""

    def send(self, peer: int, op: str, tensor: torch.Tensor) -> None:
        self.exchange(op, {peer: tensor}, {})

    def recv(self, peer: int, op: str, expect: Expect) -> torch.Tensor:
        return self.exchange(op, {}, {peer: expect})[peer]

    @abstractmethod
    def abort(self, reason: str) -> None:
        """Tell every peer (best effort) that this party failed, without values."""

    @abstractmethod
    def close(self) -> None:
        """Release sockets; further use raises ``ClosedError``."""


class Handle:
    """One requested correlation: this party's random parts at once, its derived parts on ``derived()``.

    Random parts are drawn locally (from a seed), so a protocol can mask and
    open with them while the derived parts (which may come over the network)
    are still on their way.
    """

    __slots__ = ("randoms", "_fetch", "_derived", "serial")

    def __init__(self, randoms: list[torch.Tensor], fetch: Callable[[], list[torch.Tensor]], serial: int = -1) -> None:
        self.randoms = randoms
        self._fetch = fetch
        self._derived: list[torch.Tensor] | None = None
        self.serial = serial  # the request's number in the source's stream (-1: a source that counts none)

    def derived(self) -> list[torch.Tensor]:
        if self._derived is None:
            self._derived = self._fetch()
        return self._derived


class CorrelationSource(ABC):
    """Where a protocol family's correlated randomness (Beaver triples, truncation pairs, ...) comes from.

    Protocols call ``request(kind, params)`` at the point of use.  ``prefetch``
    is the hook for asking ahead of time: a source may start producing (or
    fetching) the correlation then, and hand it out at the matching later
    ``request``.  The default does nothing, which is always correct.
    """

    @abstractmethod
    def request(self, kind: str, params: tuple[int, ...]) -> Handle:
        """This party's parts of one correlation of ``kind`` with public ``params``."""

    def prefetch(self, kind: str, params: tuple[int, ...]) -> None:
        """Announce that ``request(kind, params)`` will come; a hint, never required."""
        return None


class PartyContext:
    """Everything one party needs to run protocols: rank, links, randomness, config."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        comm: Communicator,
        correlations: CorrelationSource | None,
        pair_prgs: Mapping[int, Prg],
        local_prg: Prg,
        config: MPCConfig,
        family: Any = None,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.comm = comm
        self.correlations = correlations
        self.pair_prgs = dict(pair_prgs)
        self.local_prg = local_prg
        self.config = config
        self.encoder = FixedPoint(config.frac_bits)
        # The protocol family (a ``protocols.family.ProtocolFamily``; typed Any so the core needs no protocols).
        self.family = family
        # The running digest of this party's public transcript; the communicator sends it with every frame.
        self.transcript = Transcript()
        comm.transcript = self.transcript
        self.log = logging.LoggerAdapter(log, {"party": rank})
        # Autograd's grad mode for this party's secret tensors (``mpc.no_grad`` switches it off for a block).
        self.grad_enabled = True

    @property
    def stats(self) -> CommStats:
        return self.comm.stats

    def __repr__(self) -> str:
        return f"PartyContext(rank={self.rank}, world_size={self.world_size})"

    # Convenience methods that delegate to the user layer live in mpc.api; the
    # context itself stays free of protocol code.
