"""``mpc.run``: a function in N real party processes (and the dealer, if the family has one) over ZeroMQ.

And ``mpc.init``: the party context of a script started by ``mpc launch`` or
``mpc party``.

Processes are started with the ``spawn`` method (a forked child can deadlock
in torch's thread pool).  Results come back as pickled bytes produced in the
child with plain ``pickle`` (not through multiprocessing's reducers, which would
pass torch tensors by file descriptor); these bytes travel only between the
caller and its own child processes, never between parties.

The cluster comes from ``parties.local`` (shared with ``mpc launch``): each
child is handed the listening socket that the caller bound for it, so no port
is guessed.  Each child runs the one lifecycle of ``parties.lifecycle``, and
exits when the caller's process dies (``parties.stopping.die_with_parent``),
so that a caller killed by a signal leaves no party or dealer behind.
"""

from __future__ import annotations

import atexit
import dataclasses
import multiprocessing as mp
import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from mpc.api import current_context, set_context
from mpc.config import MPCConfig
from mpc.context import PartyContext
from mpc.errors import ConfigError, PartyFailed, ProtocolError

from .cluster import Cluster, load_cluster
from .env import ENV_CLUSTER, ENV_RANK, PartyEnv
from .keys import load_secret_key
from .lifecycle import run_dealer, run_party
from .local import LOCAL_DEALER_NICE, LOCAL_DEALER_THREADS, local_cluster
from .node import open_dealer, open_party, open_party_comm
from .ports import adopt_listener
from .stopping import die_with_parent

__all__ = ["run", "init"]

GRACE = 3.0


def _report_error(conn: Connection, exc: BaseException) -> None:
    conn.send_bytes(pickle.dumps(("err", f"{type(exc).__name__}: {exc}", traceback.format_exc(), type(exc).__name__)))


def _party_main(
    cluster: Cluster,
    rank: int,
    secret: bytes | None,
    insecure: bool,
    fn: Callable,
    conn: Connection,
    listener: socket.socket | None = None,
    parent: int | None = None,
) -> None:
    if parent is not None:
        die_with_parent(parent)  # SIGTERM (the default action: exit) when the caller dies
    reported: list[BaseException] = []

    def report(exc: BaseException) -> None:  # before the abort notices: the caller names the root cause
        reported.append(exc)
        _report_error(conn, exc)

    try:
        config = cluster.config()
        comm = open_party_comm(cluster, rank, config, secret, insecure, adopt_listener(listener))
        result, stats = run_party(comm, config, fn, report)
        try:
            data = pickle.dumps(("ok", result, stats.as_dict()))
        except Exception as exc:  # noqa: BLE001 - pickle raises many types for one user mistake
            raise ProtocolError(
                f"party {rank}'s result cannot be sent back to the caller ({type(exc).__name__}: {exc}): "
                "return tensors, numbers, strings, None, or lists, tuples and dicts of them"
            ) from None
        conn.send_bytes(data)
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        if not reported:
            _report_error(conn, exc)


def _dealer_main(
    cluster: Cluster,
    secret: bytes | None,
    insecure: bool,
    conn: Connection,
    listener: socket.socket | None = None,
    parent: int | None = None,
) -> None:
    if parent is not None:
        die_with_parent(parent)
    reported: list[BaseException] = []

    def report(exc: BaseException) -> None:
        reported.append(exc)
        _report_error(conn, exc)

    try:
        os.nice(LOCAL_DEALER_NICE)
        torch.set_num_threads(LOCAL_DEALER_THREADS)
        config = cluster.config()
        comm = open_dealer(cluster, config, secret, insecure, adopt_listener(listener))
        conn.send_bytes(pickle.dumps(("ok", run_dealer(comm, config, report=report), None)))
    except BaseException as exc:  # noqa: BLE001
        if not reported:
            _report_error(conn, exc)


def run(
    fn: Callable[[PartyContext], Any],
    parties: int = 2,
    *,
    timeout: float = 60.0,
    frac_bits: int = 16,
    insecure: bool = False,
    return_stats: bool = False,
    run_timeout: float | None = None,
    protocol: str = MPCConfig.protocol,
    link_delay: float = 0.0,
) -> list[Any]:
    """Run ``fn(ctx)`` in ``parties`` processes; return the results in rank order.

    ``protocol`` names the protocol family (``mpc.config.PROTOCOLS``); a dealer
    process is started only when the family needs one.  ``"plaintext"`` is NOT
    secure (every node warns): for debugging only.

    ``fn`` must be picklable (a module-level function or a ``functools.partial``
    of one), and so must its results, which travel back in the clear: a result
    that holds a ``SecretTensor`` is refused (``ProtocolError`` naming the party:
    return ``x.reveal()`` or ``x.reveal(to=k)`` instead).  The dealer gives up
    after ``parties.dealer.idle_limit`` seconds without a request (10 x
    ``timeout``).  ``run_timeout`` bounds the whole run (default ``None``: no
    bound, since a program may compute for hours; every wait for a peer is still
    bounded by ``timeout``, so only a party that computes without end keeps the
    caller waiting).  Links are encrypted and authenticated with fresh keys unless
    ``insecure``.  An exception in any party is raised here as ``PartyFailed`` with that party's
    id and traceback, and every other process is stopped.  With
    ``return_stats`` each result is a pair ``(value, stats dict)``.
    ``link_delay``: seconds every node (the dealer too) holds each frame it
    receives, an emulated one-way network latency (``MPCConfig.link_delay``;
    ``scripts/bench.py --latency``).
    """
    if not isinstance(parties, int) or isinstance(parties, bool) or parties < 2:
        raise ConfigError(f"parties must be an integer >= 2, got {parties!r}")
    if not callable(fn):
        raise ProtocolError(f"fn must be a function of the party context, fn(ctx), got {type(fn).__name__}")
    if run_timeout is not None and (
        isinstance(run_timeout, bool) or not isinstance(run_timeout, int | float) or not run_timeout > 0
    ):
        raise ConfigError(f"run_timeout must be a positive number of seconds or None, got {run_timeout!r}")
    # validate early, in the caller
    MPCConfig(frac_bits=frac_bits, timeout=timeout, protocol=protocol, link_delay=link_delay)
    options = {"frac_bits": frac_bits, "timeout": float(timeout), "protocol": protocol}
    if link_delay:
        options["link_delay"] = float(link_delay)
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise ProtocolError(
            f"fn must be picklable (a module-level function or functools.partial of one): {exc}"
        ) from None
    local = local_cluster(parties, insecure, options)
    cluster, secrets, listeners = local.cluster, local.secrets, local.listeners
    spawn = mp.get_context("spawn")
    procs: dict[int | str, mp.process.BaseProcess] = {}
    conns: dict[int | str, Connection] = {}
    try:
        with listeners:  # the children hold their own copies once started; ours close after the loop
            for node, who in enumerate([*range(parties), *(["dealer"] if cluster.dealer is not None else [])]):
                recv, send = spawn.Pipe(duplex=False)
                sock = listeners.socket(node)
                if who == "dealer":
                    p = spawn.Process(
                        target=_dealer_main,
                        args=(cluster, secrets[node], insecure, send, sock, os.getpid()),
                        name="mpc-dealer",
                    )
                else:
                    p = spawn.Process(
                        target=_party_main,
                        args=(cluster, who, secrets[node], insecure, fn, send, sock, os.getpid()),
                        name=f"mpc-party-{who}",
                    )
                p.daemon = True
                p.start()
                send.close()
                procs[who], conns[who] = p, recv
        results = _collect(procs, conns, parties, run_timeout)
    finally:
        _stop(procs)
    if return_stats:
        return [(r[1], r[2]) for r in results]
    return [r[1] for r in results]


_ECHOES = ("PeerAborted", "PeerLost", "PeerTimeout")


def _collect(procs, conns, parties: int, run_timeout: float | None) -> list[tuple]:
    """Wait for every report; on a failure, gather the others briefly and raise the root cause."""
    results: dict[int | str, tuple] = {}
    failures: list[PartyFailed] = []
    deadline = None if run_timeout is None else time.monotonic() + run_timeout
    waiting = dict(conns)
    by_conn = {c: w for w, c in conns.items()}
    by_sentinel = {procs[w].sentinel: w for w in procs}
    while waiting:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait([*waiting.values(), *(procs[w].sentinel for w in waiting)], timeout=left)
        if not ready:
            if failures:
                break
            raise PartyFailed("launcher", f"the run did not finish within {run_timeout:g}s")
        for obj in ready:
            who = by_conn.get(obj)
            if who is None or who not in waiting:
                continue
            try:
                msg = pickle.loads(obj.recv_bytes())
            except EOFError:  # the pipe closed without a report: the process died
                del waiting[who]
                failures.append(_died(procs[who], who))
                continue
            del waiting[who]
            if msg[0] == "ok":
                results[who] = msg
            else:
                failures.append(PartyFailed(who, msg[1], msg[2], error_type=msg[3]))
        for obj in ready:
            who = by_sentinel.get(obj)
            if who is not None and who in waiting and not waiting[who].poll():
                del waiting[who]
                failures.append(_died(procs[who], who))
        if failures and (deadline is None or deadline > time.monotonic() + GRACE):
            deadline = time.monotonic() + GRACE  # let the root cause's own report arrive
    if failures:
        roots = [f for f in failures if f.error_type not in _ECHOES] or failures
        raise roots[0]
    return [results[r] for r in range(parties)]


def _died(proc, who: int | str) -> PartyFailed:
    proc.join(1.0)  # its pipe and sentinel close a moment before its exit status is ready
    return PartyFailed(who, f"its process exited with code {proc.exitcode} without reporting (killed or crashed)")


def _stop(procs) -> None:
    for p in procs.values():
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + GRACE
    for p in procs.values():
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def init() -> PartyContext:
    """The party context of a script started by ``mpc launch`` or ``mpc party``.

    Returns the context the CLI opened, or opens one from the environment that
    ``mpc party`` sets for its script and the processes it starts (the names
    are those of ``parties.env``: ``MPC_CLUSTER``, ``MPC_RANK``, ``MPC_KEY``,
    ``MPC_INSECURE``, ``MPC_RESUME``).
    """
    try:
        return current_context()
    except ProtocolError:
        pass
    env = PartyEnv.read(os.environ)
    if env is None:
        raise ConfigError(
            f"mpc.init() found no party environment ({ENV_CLUSTER}, {ENV_RANK}): start the script with "
            "`mpc launch -n N script.py` or `mpc party --cluster FILE --id I script.py`"
        )
    cluster = load_cluster(env.cluster)
    secret = load_secret_key(env.key) if env.key and not env.insecure else None
    config = cluster.config()
    if env.resume is not None:  # read here, at the edge; mpc.Checkpointer finds it in ctx.config
        config = dataclasses.replace(config, resume_dir=env.resume)
    ctx = open_party(cluster, env.rank, config, secret, env.insecure)
    set_context(ctx)
    atexit.register(ctx.comm.close)
    return ctx
