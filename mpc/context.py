"""The party context and the interfaces it is built from.

A ``PartyContext`` is the one object through which a party reaches its
services: its communicator (how bytes move), its correlated-randomness source
(the dealer), its pairwise seeds and its configuration.  Nothing here knows
about ZeroMQ or processes: those are in ``parties/``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import MPCConfig
from .errors import ProtocolError
from .fixedpoint import FixedPoint
from .prg import Prg

__all__ = ["Communicator", "CommStats", "OpStats", "Expect", "CorrelationSource", "PartyContext"]

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
    """

    rounds: int = 0
    messages_sent: int = 0
    messages_recv: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    dealer_messages: int = 0
    dealer_bytes_sent: int = 0
    dealer_bytes_recv: int = 0
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


class CorrelationSource(ABC):
    """Where correlated randomness (Beaver triples, truncation pairs, ...) comes from."""

    @abstractmethod
    def get(self, kind: str, params: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """This party's shares of one correlation of ``kind`` with public ``params``."""

    def prefetch(self, kind: str, params: tuple[int, ...]) -> Pending:
        """Start fetching a correlation; ``.wait()`` returns what ``get`` would."""
        value = self.get(kind, params)
        return Pending(lambda: value)


class Pending:
    def __init__(self, fn) -> None:
        self._fn = fn
        self._done = False
        self._value: Any = None

    def wait(self) -> Any:
        if not self._done:
            self._value = self._fn()
            self._done = True
        return self._value


class PartyContext:
    """Everything one party needs to run protocols: rank, links, randomness, config."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        comm: Communicator,
        correlations: CorrelationSource,
        pair_prgs: Mapping[int, Prg],
        local_prg: Prg,
        config: MPCConfig,
        suite: Any = None,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.comm = comm
        self.correlations = correlations
        self.pair_prgs = dict(pair_prgs)
        self.local_prg = local_prg
        self.config = config
        self.encoder = FixedPoint(config.frac_bits)
        self.suite = suite
        self.log = logging.LoggerAdapter(log, {"party": rank})

    @property
    def stats(self) -> CommStats:
        return self.comm.stats

    def __repr__(self) -> str:
        return f"PartyContext(rank={self.rank}, world_size={self.world_size})"

    # Convenience methods that delegate to the user layer live in mpc.api; the
    # context itself stays free of protocol code.
