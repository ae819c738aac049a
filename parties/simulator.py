"""The in-process simulator: one thread per party and one for the dealer (if the family has one).

Same lifecycle (``parties.lifecycle``), setup, protocols and dealer code as real runs, over the in-memory
transport (default) or ZeroMQ ``inproc://`` sockets.  A party's exception is
re-raised in the caller with a note naming the party; the others are stopped
by the abort notice it sends.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from mpc.config import MPCConfig
from mpc.errors import CommunicationError, ConfigError, PartyFailed, PeerAborted, ProtocolError
from protocols.families import get_family

from .comm_base import BufferedCommunicator
from .faults import FaultNet, Faults
from .lifecycle import run_dealer, run_party
from .memory import MemoryCommunicator, MemoryHub
from .zmq_comm import inproc_communicators

__all__ = ["run_threads"]


def run_threads(
    fn: Callable[..., Any],
    parties: int = 2,
    config: MPCConfig | None = None,
    *,
    transport: str = "memory",
    received: dict[int, list] | None = None,
    comms: list[BufferedCommunicator] | None = None,
    join_timeout: float = 600.0,
    faults: Faults | FaultNet | None = None,
    **options: Any,
) -> list[Any]:
    """Run ``fn(ctx)`` in ``parties`` threads; return their results in rank order.

    ``received``: if a dict is given, ``received[r]`` becomes the list of
    ``(sender, header bytes, payload bytes)`` frames party ``r`` received (the
    dealer is ``parties``), for secrecy tests.  ``comms``: prebuilt
    communicators (one per party, then the dealer's if the family has one), e.g.
    ZeroMQ over TCP.  ``faults``: a bad network under every node's transport
    (``parties.faults``, a testing aid); pass a ``FaultNet`` to read what it did
    afterwards.  The protocol family comes from ``config.protocol`` (or
    ``protocol=...`` among ``options``); a dealer thread runs only when the family
    needs one.

    Bad arguments raise ``ConfigError``.  A result that holds a ``SecretTensor``
    is refused (``ProtocolError`` naming the party: reveal it first).
    """
    config = config or MPCConfig(**options)
    if not isinstance(parties, int) or isinstance(parties, bool) or parties < 2:
        raise ConfigError(f"parties must be an integer >= 2, got {parties!r}")
    if not callable(fn):
        raise ProtocolError(f"fn must be a function of the party context, fn(ctx), got {type(fn).__name__}")
    n = parties
    with_dealer = get_family(config.protocol).needs_dealer
    nodes = n + int(with_dealer)
    if comms is None:
        comms = _make_comms(n, config, transport, received, with_dealer)
    elif len(comms) != nodes:
        what = "parties and dealer" if with_dealer else f"one per party: the {config.protocol} family has no dealer"
        raise ConfigError(f"need {nodes} communicators ({what}), got {len(comms)}: pass one per node")
    if faults is not None:
        net = faults if isinstance(faults, FaultNet) else FaultNet(faults)
        for c in comms:
            net.install(c)
    results: list[Any] = [None] * n
    errors: dict[int | str, tuple[float, BaseException, str]] = {}

    def reporter(who: int | str):
        # Recorded before the abort notice goes out: the root cause is the earliest non-echo failure.
        def report(exc: BaseException) -> None:
            errors[who] = (time.monotonic(), exc, traceback.format_exc())

        return report

    def party(rank: int) -> None:
        try:
            results[rank], _ = run_party(comms[rank], config, fn, reporter(rank))
        except BaseException:  # noqa: BLE001, S110 - recorded by its reporter, re-raised in the caller
            pass

    def dealer() -> None:
        try:
            run_dealer(comms[n], config, report=reporter("dealer"))
        except BaseException:  # noqa: BLE001, S110
            pass

    threads = [threading.Thread(target=party, args=(r,), name=f"mpc-party-{r}", daemon=True) for r in range(n)]
    if with_dealer:
        threads.append(threading.Thread(target=dealer, name="mpc-dealer", daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + join_timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        for c in comms:
            c.abort("the simulator timed out")
        raise PartyFailed("launcher", f"threads {alive} did not finish within {join_timeout:g}s")
    _context_cleanup(comms)
    if errors:
        who, (_, exc, _tb) = root_cause(errors)
        exc.add_note(f"(raised in {'the dealer' if who == 'dealer' else f'party {who}'})")
        raise exc
    return results


def root_cause(errors: dict) -> tuple[Any, tuple]:
    """The failure that started it: not an echo (abort notice, timeout) of another's failure."""

    def rank_key(item):
        who, (t, exc, _tb) = item
        echo = isinstance(exc, PeerAborted) or isinstance(exc, CommunicationError) and exc.peer is not None
        return (echo, t)

    return min(errors.items(), key=rank_key)


def _make_comms(
    n: int, config: MPCConfig, transport: str, received: dict | None, dealer: bool
) -> list[BufferedCommunicator]:
    def recorder(rank: int):
        if received is None:
            return None
        log: list = received.setdefault(rank, [])
        return lambda sender, h, p: log.append((sender, h, p))

    if transport == "memory":
        hub = MemoryHub(n, dealer=dealer)
        nodes = n + int(dealer)
        limits = {"chunk_bytes": config.chunk_bytes, "max_buffered_bytes": config.max_buffered_bytes}
        return [
            MemoryCommunicator(hub, r, config.timeout, config.max_message_bytes, recorder(r), **limits)
            for r in range(nodes)
        ]
    if transport == "inproc":
        return inproc_communicators(n, config, recorder, dealer=dealer)
    raise ConfigError(f"unknown simulator transport {transport!r}; use 'memory' or 'inproc'")


def _context_cleanup(comms: list[BufferedCommunicator]) -> None:
    for c in comms:
        term = getattr(c, "terminate_context", None)
        if term is not None:
            term()
