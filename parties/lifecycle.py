"""The one lifecycle of a party and of the dealer, used by every runner.

``mpc.run`` (``parties.runner``), the thread simulator (``parties.simulator``)
and the ``mpc party`` / ``mpc dealer`` commands (``parties.cli``, which
``mpc launch`` starts) all do the same thing with an open communicator:

party:  setup (``setup_party``) -> run the program with the context current
        -> close (bye to every peer, wait for theirs);
dealer: serve until every party said bye -> close.

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
from mpc.errors import ConfigError
from protocols.families import get_family

from .comm_base import BufferedCommunicator, abort_reason
from .dealer import serve_dealer
from .party import setup_party

__all__ = ["open_context", "run_party", "run_dealer"]

T = TypeVar("T")
Report = Callable[[BaseException], None]


def _fail(comm: BufferedCommunicator, exc: BaseException, who: str, report: Report | None) -> None:
    if report is not None:
        try:
            report(exc)
        finally:
            comm.abort(abort_reason(exc, who))
    else:
        comm.abort(abort_reason(exc, who))


def open_context(comm: BufferedCommunicator, config: MPCConfig, report: Report | None = None) -> PartyContext:
    """Setup over ``comm``; on failure report, abort the run (so peers stop at once) and re-raise."""
    try:
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
        return serve_dealer(comm, config, idle_timeout=idle_timeout)
    except BaseException as exc:
        _fail(comm, exc, "the dealer", report)
        raise
