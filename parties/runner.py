"""``mpc.run``: a function in N real party processes plus the dealer, over ZeroMQ on localhost.

And ``mpc.init``: the party context of a script started by ``mpc launch`` or
``mpc party``.

Processes are started with the ``spawn`` method (a forked child can deadlock
in torch's thread pool).  Results come back as pickled bytes produced in the
child with plain ``pickle`` (not through multiprocessing's reducers, which would
pass torch tensors by file descriptor); these bytes travel only between the
caller and its own child processes, never between parties.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from mpc.api import current_context, set_context
from mpc.config import MPCConfig
from mpc.context import PartyContext
from mpc.errors import ConfigError, PartyFailed, ProtocolError

from .cluster import Cluster, Node, free_tcp_addresses, load_cluster
from .comm_base import abort_reason
from .dealer import serve_dealer
from .keys import ephemeral_keys, load_secret_key
from .node import env_flag, open_comm, open_party

__all__ = ["run", "init"]

GRACE = 3.0


def _local_cluster(n: int, insecure: bool, options: dict[str, Any]) -> tuple[Cluster, list[bytes | None]]:
    addrs = free_tcp_addresses(n + 1)
    if insecure:
        keys: list[tuple[bytes | None, bytes | None]] = [(None, None)] * (n + 1)
    else:
        keys = list(ephemeral_keys(n + 1))
    nodes = [Node(i, addrs[i], keys[i][0].decode() if keys[i][0] else None) for i in range(n + 1)]
    dealer = Node("dealer", nodes[n].address, nodes[n].public_key)
    return Cluster(tuple(nodes[:n]), dealer, options), [k[1] for k in keys]


def _party_main(
    cluster: Cluster, rank: int, secret: bytes | None, insecure: bool, fn: Callable, conn: Connection
) -> None:
    ctx = None
    try:
        config = cluster.config()
        ctx = open_party(cluster, rank, config, secret, insecure)
        set_context(ctx)
        result = fn(ctx)
        ctx.comm.close()
        conn.send_bytes(pickle.dumps(("ok", result, ctx.stats.as_dict())))
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        conn.send_bytes(
            pickle.dumps(("err", f"{type(exc).__name__}: {exc}", traceback.format_exc(), type(exc).__name__))
        )
        if ctx is not None:
            ctx.comm.abort(abort_reason(exc, f"party {rank}"))


def _dealer_main(cluster: Cluster, secret: bytes | None, insecure: bool, conn: Connection) -> None:
    comm = None
    try:
        config = cluster.config()
        comm = open_comm(cluster, cluster.world_size, config, secret, insecure)
        served = serve_dealer(comm, config)
        conn.send_bytes(pickle.dumps(("ok", served, None)))
    except BaseException as exc:  # noqa: BLE001
        conn.send_bytes(
            pickle.dumps(("err", f"{type(exc).__name__}: {exc}", traceback.format_exc(), type(exc).__name__))
        )
        if comm is not None:
            comm.abort(abort_reason(exc, "the dealer"))


def run(
    fn: Callable[[PartyContext], Any],
    parties: int = 2,
    *,
    timeout: float = 60.0,
    frac_bits: int = 16,
    insecure: bool = False,
    return_stats: bool = False,
    run_timeout: float | None = None,
) -> list[Any]:
    """Run ``fn(ctx)`` in ``parties`` processes plus the dealer; return the results in rank order.

    ``fn`` must be picklable (a module-level function or a ``functools.partial``
    of one).  Links are encrypted with fresh CURVE keys unless ``insecure``.  An
    exception in any party is raised here as ``PartyFailed`` with that party's
    id and traceback, and every other process is stopped.  With
    ``return_stats`` each result is a pair ``(value, stats dict)``.
    """
    if not isinstance(parties, int) or isinstance(parties, bool) or parties < 2:
        raise ConfigError(f"parties must be an integer >= 2, got {parties!r}")
    MPCConfig(frac_bits=frac_bits, timeout=timeout)  # validate early, in the caller
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise ProtocolError(
            f"fn must be picklable (a module-level function or functools.partial of one): {exc}"
        ) from None
    cluster, secrets = _local_cluster(parties, insecure, {"frac_bits": frac_bits, "timeout": float(timeout)})
    spawn = mp.get_context("spawn")
    procs: dict[int | str, mp.process.BaseProcess] = {}
    conns: dict[int | str, Connection] = {}
    try:
        for who in [*range(parties), "dealer"]:
            recv, send = spawn.Pipe(duplex=False)
            if who == "dealer":
                p = spawn.Process(
                    target=_dealer_main, args=(cluster, secrets[parties], insecure, send), name="mpc-dealer"
                )
            else:
                p = spawn.Process(
                    target=_party_main, args=(cluster, who, secrets[who], insecure, fn, send), name=f"mpc-party-{who}"
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

    Returns the context the CLI opened, or opens one from the environment the
    launcher sets (``MPC_CLUSTER``, ``MPC_RANK``, ``MPC_KEY``, ``MPC_INSECURE``).
    """
    try:
        return current_context()
    except ProtocolError:
        pass
    cluster_path, rank = os.environ.get("MPC_CLUSTER"), os.environ.get("MPC_RANK")
    if not cluster_path or rank is None:
        raise ConfigError(
            "mpc.init() found no party environment: start the script with `mpc launch -n N script.py` "
            "or `mpc party --cluster FILE --id I script.py`"
        )
    cluster = load_cluster(cluster_path)
    if not rank.isdigit():
        raise ConfigError(f"MPC_RANK must be a party id, got {rank!r}")
    insecure = env_flag("MPC_INSECURE")
    key = os.environ.get("MPC_KEY")
    secret = load_secret_key(key) if key and not insecure else None
    ctx = open_party(cluster, int(rank), cluster.config(), secret, insecure)
    set_context(ctx)
    atexit.register(ctx.comm.close)
    return ctx
