"""The ``mpc`` command: launch, party, dealer, keygen.

::

    mpc launch -n N [--protocol P] [--stats] [--timeout S] [--insecure] script.py [args...]
    mpc party  --cluster cluster.toml --id I (--key FILE | --insecure) [--stats] script.py [args...]
    mpc dealer --cluster cluster.toml (--key FILE | --insecure) [--idle-timeout S]
    mpc keygen --out DIR --id NAME

The protocol family of ``mpc party`` and ``mpc dealer`` is the cluster file's
(``[options] protocol``); a family without a dealer has no [dealer] section and
``mpc dealer`` refuses to start for it.  ``--listen-fd`` is how ``mpc launch``
hands a node the listening socket it bound for it (``parties.ports``).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

from mpc.config import PROTOCOLS
from mpc.context import PartyContext
from mpc.errors import MPCError, PeerAborted

from .cluster import load_cluster
from .env import PartyEnv
from .keys import keygen, load_secret_key
from .launch import ECHO_EXIT, launch
from .lifecycle import run_dealer, run_party
from .node import configure_logging, open_dealer, open_party_comm

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mpc", description="Secure multi-party computation on torch tensors.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    la = sub.add_parser("launch", help="run a script in N local parties plus the dealer")
    la.add_argument("-n", "--parties", type=int, required=True, help="number of parties (>= 2)")
    la.add_argument("--stats", action="store_true", help="print each party's rounds and bytes at the end")
    la.add_argument("--timeout", type=float, default=None, help="seconds a receive waits for a peer (default 60)")
    la.add_argument("--frac-bits", type=int, default=None, help="fixed-point fractional bits (default 16)")
    la.add_argument("--insecure", action="store_true", help="no encryption or authentication (warned at every party)")
    la.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="protocol family (default additive-dealer; plaintext is NOT secure, starts no dealer, for debugging)",
    )
    la.add_argument("script")
    la.add_argument("args", nargs=argparse.REMAINDER)

    pa = sub.add_parser("party", help="run a script as one party of a cluster")
    pa.add_argument("--cluster", required=True, help="cluster TOML file")
    pa.add_argument("--id", type=int, required=True, help="this party's id in the cluster file")
    pa.add_argument("--key", help="this party's secret key file (from mpc keygen)")
    pa.add_argument("--insecure", action="store_true", help="no encryption or authentication (warned)")
    pa.add_argument("--timeout", type=float, default=None, help="override the cluster file's receive timeout")
    pa.add_argument("--stats", action="store_true", help="print rounds and bytes at the end")
    pa.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # set by mpc launch
    pa.add_argument("script")
    pa.add_argument("args", nargs=argparse.REMAINDER)

    de = sub.add_parser("dealer", help="run the dealer of a cluster")
    de.add_argument("--cluster", required=True)
    de.add_argument("--key", help="the dealer's secret key file")
    de.add_argument("--insecure", action="store_true")
    de.add_argument("--idle-timeout", type=float, default=None, help="give up after this many idle seconds")
    de.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # set by mpc launch

    kg = sub.add_parser("keygen", help="write a CURVE key pair")
    kg.add_argument("--out", required=True, help="directory for NAME.key and NAME.key_secret")
    kg.add_argument("--id", required=True, dest="name", help="name of the key files, e.g. party0")
    return ap


def _secret(args) -> bytes | None:
    if args.insecure:
        return None
    if not args.key:
        raise MPCError("give this node's secret key with --key FILE (create one with `mpc keygen`), or --insecure")
    return load_secret_key(args.key)


def _print_stats(rank: int, stats: dict) -> None:
    lines = [
        f"stats of party {rank}: rounds={stats['rounds']} sent={stats['bytes_sent']} B "
        f"received={stats['bytes_recv']} B messages={stats['messages_sent']}/{stats['messages_recv']} "
        f"dealer={stats['dealer_bytes_recv']} B"
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


def _party(args) -> int:
    cluster = load_cluster(args.cluster)
    if not 0 <= args.id < cluster.world_size:
        raise MPCError(f"unknown party id {args.id}: {args.cluster} lists parties 0..{cluster.world_size - 1}")
    script = Path(args.script)
    if not script.is_file():
        raise MPCError(f"script {script} not found")
    config = cluster.config(timeout=args.timeout)
    comm = open_party_comm(cluster, args.id, config, _secret(args), args.insecure, args.listen_fd)
    # The script, and any process it starts, finds this party through the names mpc.init() reads.
    env = PartyEnv(args.cluster, args.id, cluster.world_size, None if args.insecure else args.key, args.insecure)
    os.environ.update(env.variables())
    in_script = False

    def program(ctx: PartyContext) -> None:
        nonlocal in_script
        sys.argv = [str(script), *args.args]
        sys.path.insert(0, str(script.resolve().parent))
        in_script = True
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            if _exit_code(exc):
                raise  # the lifecycle aborts the run: the script failed
        except BaseException:
            traceback.print_exc()
            raise
        in_script = False

    try:
        _, stats = run_party(comm, config, program)
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException as exc:
        if not in_script:
            raise  # setup or closing: reported by main()
        return ECHO_EXIT if isinstance(exc, PeerAborted) else 1
    if args.stats:
        _print_stats(args.id, stats.as_dict())
    return 0


def _dealer(args) -> int:
    cluster = load_cluster(args.cluster)
    config = cluster.config()
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
        return launch(
            args.parties,
            args.script,
            script_args,
            stats=args.stats,
            timeout=args.timeout,
            insecure=args.insecure,
            frac_bits=args.frac_bits,
            protocol=args.protocol,
        )
    prefix = "" if args.cmd == "dealer" else ""
    configure_logging(prefix)
    try:
        return _party(args) if args.cmd == "party" else _dealer(args)
    except MPCError as exc:
        who = "dealer" if args.cmd == "dealer" else f"party {args.id}"
        print(f"mpc {args.cmd}: {who}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ECHO_EXIT if isinstance(exc, PeerAborted) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
