"""The one lifecycle of a party and of the dealer, used by every runner.

``mpc.run`` (``parties.runner``), the thread simulator (``parties.simulator``)
and the ``mpc party`` / ``mpc dealer`` commands (``parties.cli``, which
``mpc launch`` starts) all do the same thing with an open communicator:

party:  setup (``setup_party``) -> run the program with the context current
        -> close (bye to every peer, wait for theirs);
dealer: serve until every party said bye -> close.

A party's result leaves the run in the clear (it is pickled back to ``mpc.run``'s
caller, or handed to ``run_threads``'s): a result that holds a ``SecretTensor``
(even inside a list, tuple, set or dict) is refused with a ``ProtocolError``
that names the party and says to reveal it first (``check_result``), before the
closing barrier, so that every runner reports it the same way.

On any error the node first reports it (``report``, given by the runner: the
first failure must be on record before the abort notices make the others fail
too, so that the runner can name the root cause), then sends every peer an
abort notice naming the failure (``abort_reason``: its type, and the peer that
caused it, never values), and the error propagates to the runner.  A
communicator that is already closed or aborted ignores the abort.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from mpc.api import use_context
from mpc.config import MPCConfig
from mpc.context import CommStats, PartyContext
from mpc.errors import ConfigError, ProtocolError
from mpc.tensor import SecretTensor
from protocols.families import get_family

from .comm_base import BufferedCommunicator, abort_reason
from .dealer import serve_dealer
from .party import setup_party

__all__ = ["open_context", "run_party", "run_dealer", "check_result"]

T = TypeVar("T")
Report = Callable[[BaseException], None]

_MAX_DEPTH = 32  # containers nested deeper than this are not searched (nobody returns such a thing)


def _secret_path(value: object, path: str, seen: set[int], depth: int) -> str | None:
    """Where in ``value`` a ``SecretTensor`` sits (``result[1]['w']``), or ``None``."""
    if isinstance(value, SecretTensor):
        return path
    if depth >= _MAX_DEPTH or id(value) in seen:
        return None
    if isinstance(value, dict):
        seen.add(id(value))
        for k, v in value.items():
            found = _secret_path(k, f"{path} (a key)", seen, depth + 1) or _secret_path(
                v, f"{path}[{k!r}]", seen, depth + 1
            )
            if found:
                return found
    elif isinstance(value, list | tuple):
        seen.add(id(value))
        for i, v in enumerate(value):
            found = _secret_path(v, f"{path}[{i}]", seen, depth + 1)
            if found:
                return found
    elif isinstance(value, set | frozenset):
        seen.add(id(value))
        for v in value:
            found = _secret_path(v, f"{path} (an element)", seen, depth + 1)
            if found:
                return found
    return None


def check_result(result: object, who: str) -> None:
    """Refuse a party's result that holds a ``SecretTensor``: only revealed values may leave the run."""
    where = _secret_path(result, "result", set(), 0)
    if where is not None:
        shown = "" if where == "result" else f" (at {where})"
        raise ProtocolError(
            f"{who}'s function returned a SecretTensor{shown}: a share is useless outside the run and "
            "is not the value; open it first: return x.reveal() (every party gets the value) or "
            "x.reveal(to=k) (party k gets it, the others None)"
        )


def _fail(comm: BufferedCommunicator, exc: BaseException, who: str, report: Report | None) -> None:
    if report is not None:
        try:
            report(exc)
        finally:
            comm.abort(abort_reason(exc, who))
    else:
        comm.abort(abort_reason(exc, who))


def _local_settings(comm: BufferedCommunicator, config: MPCConfig) -> None:
    """What ``config`` sets on this node's communicator before its first frame: the emulated latency."""
    if config.link_delay:
        comm.set_link_delay(config.link_delay)


def open_context(comm: BufferedCommunicator, config: MPCConfig, report: Report | None = None) -> PartyContext:
    """Setup over ``comm``; on failure report, abort the run (so peers stop at once) and re-raise."""
    try:
        _local_settings(comm, config)
        return setup_party(comm, config)
    except BaseException as exc:
        _fail(comm, exc, f"{comm.name(comm.rank)} during setup", report)
        raise


def run_party(
    comm: BufferedCommunicator,
    config: MPCConfig,
    program: Callable[[PartyContext], T],
    report: Report | None = None,
) -> tuple[T, CommStats]:
    """Setup, ``program(ctx)`` with ``ctx`` current, close: ``(its result, the party's traffic)``.

    Any error (in setup, the program or the closing barrier) is passed to
    ``report`` (inside the ``except`` block: ``traceback.format_exc()`` works
    there), then aborts the run, and is re-raised.
    """
    ctx = open_context(comm, config, report)
    try:
        with use_context(ctx):
            result = program(ctx)
        check_result(result, comm.name(comm.rank))
        comm.close()
    except BaseException as exc:
        _fail(comm, exc, comm.name(comm.rank), report)
        raise
    return result, ctx.stats


def run_dealer(
    comm: BufferedCommunicator,
    config: MPCConfig,
    idle_timeout: float | None = None,
    report: Report | None = None,
) -> int:
    """Serve correlations until every party said bye; the number of requests served.

    On any error the dealer reports it, aborts the run and re-raises it.
    """
    try:
        family = get_family(config.protocol)
        if not family.needs_dealer:
            raise ConfigError(f"the {family.name} protocol family needs no dealer: do not start one")
        _local_settings(comm, config)
        return serve_dealer(comm, config, idle_timeout=idle_timeout)
    except BaseException as exc:
        _fail(comm, exc, "the dealer", report)
        raise
