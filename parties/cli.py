"""The ``mpc`` command: launch, party, dealer, keygen.

::

    mpc launch -n N [--protocol P] [--resume DIR] [--stats] [--timeout S] [--insecure] [--debug] script.py [args...]
    mpc party  --cluster cluster.toml --id I (--key FILE | --insecure) [--resume DIR] [--stats] [--debug]
               script.py [args...]
    mpc dealer --cluster cluster.toml (--key FILE | --insecure) [--idle-timeout S] [--nice N] [--threads N] [--debug]
    mpc keygen --out DIR --id NAME

The protocol family of ``mpc party`` and ``mpc dealer`` is the cluster file's
(``[options] protocol``); a family without a dealer has no [dealer] section and
``mpc dealer`` refuses to start for it.  ``--listen-fd`` is how ``mpc launch``
hands a node the listening socket it bound for it (``parties.ports``), and
``--parent-pid`` its own pid: the node stops when the launcher dies.

``--resume DIR`` continues a checkpointed training (``mpc.Checkpointer``):
the directory reaches the script in its config (``ctx.config.resume_dir``, and
``MPC_RESUME`` for the processes it starts), and the script's checkpointer
restores the newest step that every party has in ``DIR/party<id>/``, after
the parties agree on it.  ``mpc launch --resume DIR`` passes it to every party.

SIGINT, SIGTERM or SIGHUP to a node aborts the run (every peer fails at once
with ``PeerAborted`` naming it) and the node exits with ``128 + signal``
(``parties.stopping``).

What a failing node prints (on stderr):

* an error of the toolkit outside the script (a bad cluster file or key, an
  unreachable peer at setup), any ``CommunicationError`` (``PeerLost``,
  ``PeerTimeout``, ``PeerAborted``, ``DesyncError``: a peer died, went silent,
  failed, or runs another program) and a refused checkpoint (``CheckpointError``:
  it names the file and the fix), even one raised inside the script: ONE line,
  ``mpc party: party 0: PeerLost: ... (at script.py:12)``, naming the peer and
  the likely cause.  The toolkit's frames would tell the user nothing more;
* any other exception raised while the script runs (the user's own, or a
  misuse of the API such as a shape error): its traceback, starting at the
  script's frame (the launcher's frames above it are dropped), because the
  line of the script that raised it is what the user needs;
* with ``--debug`` (which ``mpc launch --debug`` passes on to every node): the
  full traceback as well, in every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import runpy
import signal
import sys
import traceback
from pathlib import Path

import torch

from mpc.config import PROTOCOLS
from mpc.context import PartyContext
from mpc.errors import CheckpointError, CommunicationError, ConfigError, MPCError, PeerAborted

from .cluster import load_cluster
from .dealer import IDLE_FACTOR, idle_limit
from .desync import clean
from .env import ENV_RESUME, PartyEnv
from .keys import keygen, load_secret_key
from .launch import ECHO_EXIT, STOP_GRACE, launch, resume_dir
from .lifecycle import run_dealer, run_party
from .node import configure_logging, open_dealer, open_party_comm
from .stopping import Stopped, StopSignals, die_with_parent

__all__ = ["main"]


MESSAGE_LIMIT = 2000  # characters of an error message printed on the one failure line

_DEBUG_HELP = "print the full traceback of every error (by default a lost or failed peer is one line)"
_RESUME_HELP = (
    "continue a checkpointed training from DIR (where it wrote DIR/party<id>/step-*.mpc, e.g. with the "
    "training scripts' --checkpoint DIR): the parties agree on the newest step that every party has, restore "
    "their own shares of it and go on from there; the script's other arguments must be the same as before"
)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mpc", description="Secure multi-party computation on torch tensors.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    la = sub.add_parser("launch", help="run a script in N local parties plus the dealer")
    la.add_argument("-n", "--parties", type=int, required=True, help="number of parties (>= 2)")
    la.add_argument("--stats", action="store_true", help="print each party's rounds and bytes at the end")
    la.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds any receive waits for a peer before naming it (default 60); the dealer gives up after "
        f"{IDLE_FACTOR} x this without a request, and a stopped run's processes get {STOP_GRACE:g} s to exit "
        "before SIGKILL",
    )
    la.add_argument("--frac-bits", type=int, default=None, help="fixed-point fractional bits (default 16)")
    la.add_argument("--insecure", action="store_true", help="no encryption or authentication (warned at every party)")
    la.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="protocol family (default additive-dealer; plaintext is NOT secure, starts no dealer, for debugging)",
    )
    la.add_argument("--debug", action="store_true", help=_DEBUG_HELP + " (passed to every node)")
    la.add_argument("--resume", metavar="DIR", default=None, help=_RESUME_HELP + " (passed to every party)")
    la.add_argument("script")
    la.add_argument("args", nargs=argparse.REMAINDER)

    pa = sub.add_parser("party", help="run a script as one party of a cluster")
    pa.add_argument("--cluster", required=True, help="cluster TOML file")
    pa.add_argument("--id", type=int, required=True, help="this party's id in the cluster file")
    pa.add_argument("--key", help="this party's secret key file (from mpc keygen)")
    pa.add_argument("--insecure", action="store_true", help="no encryption or authentication (warned)")
    pa.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds any receive waits for a peer before naming it (default: the cluster file's [options] "
        "timeout, else 60); the closing barrier waits as long",
    )
    pa.add_argument("--stats", action="store_true", help="print rounds and bytes at the end")
    pa.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    pa.add_argument("--resume", metavar="DIR", default=None, help=_RESUME_HELP)
    pa.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # set by mpc launch
    pa.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # set by mpc launch
    pa.add_argument("script")
    pa.add_argument("args", nargs=argparse.REMAINDER)

    de = sub.add_parser("dealer", help="run the dealer of a cluster")
    de.add_argument("--cluster", required=True)
    de.add_argument("--key", help="the dealer's secret key file")
    de.add_argument("--insecure", action="store_true")
    de.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help=f"give up after S seconds without a request from the last party (default: {IDLE_FACTOR} x the "
        f"cluster's receive timeout, i.e. {IDLE_FACTOR * 60} s with the default timeout of 60 s)",
    )
    de.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="lower the dealer's priority by N (os.nice) so that its work ahead of the requests yields the "
        "cores to parties on the same machine (mpc launch passes 10)",
    )
    de.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads for the dealer's work (default: torch's, one per core; mpc launch passes 1, since "
        "the parties use the same cores)",
    )
    de.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    de.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # set by mpc launch
    de.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # set by mpc launch

    kg = sub.add_parser("keygen", help="write a Curve25519 key pair (NAME.key, NAME.key_secret)")
    kg.add_argument("--out", required=True, help="directory for NAME.key and NAME.key_secret")
    kg.add_argument("--id", required=True, dest="name", help="name of the key files, e.g. party0")
    return ap


def _secret(args) -> bytes | None:
    if args.insecure:
        return None
    if not args.key:
        raise ConfigError("give this node's secret key with --key FILE (create one with `mpc keygen`), or --insecure")
    return load_secret_key(args.key)


def _print_stats(rank: int, stats: dict) -> None:
    lines = [
        f"stats of party {rank}: rounds={stats['rounds']} sent={stats['bytes_sent']} B "
        f"received={stats['bytes_recv']} B messages={stats['messages_sent']}/{stats['messages_recv']} "
        f"dealer={stats['dealer_bytes_recv']} B"
        + (
            f" (requests answered ahead: {stats['dealer_pushed']}, guesses dropped: {stats['dealer_pushed_wrong']})"
            if stats.get("dealer_pushed") or stats.get("dealer_pushed_wrong")
            else ""
        )
    ]
    lines.append(f"{'operation':<20} {'rounds':>7} {'bytes sent':>12} {'bytes recv':>12}")
    for op, s in stats["by_op"].items():
        lines.append(f"{op:<20} {s['rounds']:>7} {s['bytes_sent']:>12} {s['bytes_recv']:>12}")
    print("\n".join(lines), file=sys.stderr)
    print(
        "MPC_STATS " + json.dumps({"party": rank, **{k: v for k, v in stats.items() if k != "by_op"}}), file=sys.stderr
    )


def _exit_code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _who(args) -> str:
    return "dealer" if args.cmd == "dealer" else f"party {args.id}"


def _fail_line(args, exc: BaseException, where: str = "") -> int:
    """An error of the toolkit as one line (after its traceback with ``--debug``); the exit code."""
    if args.debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    # One line whatever the message quotes (peer text is cleaned where it is received; this is the backstop).
    print(
        f"mpc {args.cmd}: {_who(args)}: {type(exc).__name__}: {clean(str(exc), MESSAGE_LIMIT)}{where}", file=sys.stderr
    )
    return ECHO_EXIT if isinstance(exc, PeerAborted) else 1


def _in_script(tb, script: str):
    """The frames of ``tb`` that lie in ``script``, outermost first."""
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) == script:
            yield tb
        tb = tb.tb_next


def _script_line(exc: BaseException, script: Path) -> str:
    """`` (at script.py:12)``: the innermost line of the script in ``exc``'s traceback ('' if none)."""
    frames = list(_in_script(exc.__traceback__, os.path.realpath(script)))
    return f" (at {script.name}:{frames[-1].tb_lineno})" if frames else ""


def _print_script_error(exc: BaseException, script: Path, debug: bool) -> None:
    """The traceback of an error raised by the script, from the script's frame on (in full with ``debug``)."""
    tb = exc.__traceback__
    if not debug:
        tb = next(_in_script(tb, os.path.realpath(script)), tb)
    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))
    sys.stderr.flush()


def _party(args) -> int:
    cluster = load_cluster(args.cluster)
    if not 0 <= args.id < cluster.world_size:
        raise ConfigError(
            f"unknown party id {args.id}: {args.cluster} lists parties 0..{cluster.world_size - 1}; "
            "pass one of them with --id"
        )
    script = Path(args.script)
    if not script.is_file():
        raise ConfigError(f"script {script} not found: give the path of the Python file to run (from {Path.cwd()})")
    config = cluster.config(timeout=args.timeout)
    resume = resume_dir(args.resume)
    if resume is not None:
        config = dataclasses.replace(config, resume_dir=resume)
    comm = open_party_comm(cluster, args.id, config, _secret(args), args.insecure, args.listen_fd)
    # The script, and any process it starts, finds this party through the names mpc.init() reads.
    env = PartyEnv(
        args.cluster, args.id, cluster.world_size, None if args.insecure else args.key, args.insecure, resume
    )
    os.environ.pop(ENV_RESUME, None)  # a fresh start: none inherited from whoever started this node
    os.environ.update(env.variables())
    printed: list[BaseException] = []  # the script's own errors, whose traceback is already out

    def program(ctx: PartyContext) -> None:
        sys.argv = [str(script), *args.args]
        sys.path.insert(0, str(script.resolve().parent))
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            if _exit_code(exc):
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)  # sys.exit("message"): Python prints it, and so do we
                raise  # the lifecycle aborts the run: the script failed
        except (CommunicationError, CheckpointError, KeyboardInterrupt):
            raise  # a peer's problem or a refused checkpoint, not the script's: one line (below); Ctrl-C: main()
        except BaseException as exc:
            _print_script_error(exc, script, args.debug)
            printed.append(exc)
            raise

    try:
        _, stats = run_party(comm, config, program)
    except SystemExit as exc:
        return _exit_code(exc)
    except MPCError as exc:
        if any(e is exc for e in printed):
            return 1
        return _fail_line(args, exc, _script_line(exc, script))
    except BaseException as exc:
        if any(e is exc for e in printed):
            return 1
        raise
    if args.stats:
        _print_stats(args.id, stats.as_dict())
    return 0


def _dealer(args) -> int:
    cluster = load_cluster(args.cluster)
    config = cluster.config()
    idle_limit(config, args.idle_timeout)  # a bad value is named before anything is opened
    if args.nice:
        if not 0 < args.nice <= 19:
            raise ConfigError(f"--nice takes a niceness increment in [1, 19], got {args.nice}")
        os.nice(args.nice)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads takes a number of threads of at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    run_dealer(open_dealer(cluster, config, _secret(args), args.insecure, args.listen_fd), config, args.idle_timeout)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "keygen":
        try:
            pub, sec = keygen(args.out, args.name)
        except MPCError as exc:
            print(f"mpc keygen: {exc}", file=sys.stderr)
            return 2
        print(f"public key: {pub}\nsecret key: {sec} (mode 0600, keep it on this host)")
        return 0
    if args.cmd == "launch":
        script_args = args.args[1:] if args.args[:1] == ["--"] else args.args
        try:
            return launch(
                args.parties,
                args.script,
                script_args,
                stats=args.stats,
                timeout=args.timeout,
                insecure=args.insecure,
                frac_bits=args.frac_bits,
                protocol=args.protocol,
                debug=args.debug,
                resume=args.resume,
            )
        except MPCError as exc:
            print(f"mpc launch: {exc}", file=sys.stderr)
            return 2
    configure_logging("")
    # SIGINT, SIGTERM and SIGHUP abort the run (peers fail at once, naming this node); exit 128 + signal.
    with StopSignals() as stops:
        try:
            if args.parent_pid is not None:
                die_with_parent(args.parent_pid)  # started by mpc launch: stop when the launcher dies
            return _party(args) if args.cmd == "party" else _dealer(args)
        except MPCError as exc:
            stops.hold()
            return _fail_line(args, exc)
        except KeyboardInterrupt as exc:
            stops.hold()
            stopped = isinstance(exc, Stopped) and exc.signum != signal.SIGINT
            print(f"mpc {args.cmd}: {_who(args)}: {exc if stopped else 'interrupted'}", file=sys.stderr)
            return exc.exit_code if isinstance(exc, Stopped) else 130


if __name__ == "__main__":
    sys.exit(main())
