"""``mpc launch``: a script in N party processes (plus the dealer, if the family has one) on this machine.

The launcher writes a private run directory (mode 0700) with a cluster file and
fresh keys for every node (``parties.local``, shared with ``mpc.run``),
then starts ``mpc dealer`` (only when the protocol family needs one) and
``mpc party`` for each id: the same code path as a run across hosts.  The
loopback ports are bound here and each node is handed its listening socket
(``pass_fds`` and ``--listen-fd``; see ``parties.ports``), so none is guessed.  Every output line is prefixed with its process; the exit code is
non-zero when any process fails, and then the others are stopped.

SIGINT (Ctrl-C), SIGTERM or SIGHUP to the launcher stops every process it
started (SIGTERM to each node's process group; a node aborts the run and exits;
SIGKILL after ``STOP_GRACE`` seconds), deletes the run directory with its key
files, and exits with ``128 + signal``.  The same signals to one node make it
abort the run: its peers fail at once naming it, and the launcher stops the
rest.  Every node is told the launcher's pid (``--parent-pid``) and stops when
the launcher dies, even by SIGKILL (``parties.stopping``; the run directory is
then left behind, since nobody is left to delete it).

``resume`` (``mpc launch --resume DIR``) passes ``--resume DIR`` to every
party: the script's ``mpc.Checkpointer`` continues from the newest step that
every party has in ``DIR/party<id>/``.

Bad arguments (``-n``, a missing script, bad options, a ``--resume`` directory
that does not exist) raise ``ConfigError`` before anything starts.  ``debug`` passes ``--debug`` to every node (full
tracebacks).  The dealer runs with its default idle limit
(``parties.dealer.idle_limit``: 10 x the run's timeout), so a dealer whose
parties vanished gives up by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mpc.errors import ConfigError

from .cluster import write_cluster
from .keys import save_key_pair
from .local import LOCAL_DEALER_NICE, LOCAL_DEALER_THREADS, LocalCluster, local_cluster
from .stopping import STOP_SIGNALS, Stopped, StopSignals, signal_name

__all__ = ["launch", "resume_dir"]

# Seconds a node gets to abort and exit after SIGTERM before SIGKILL (its abort lingers at most 2 s).
STOP_GRACE = 3.0
KILL_WAIT = 1.0
# Seconds left for the output of stopped nodes to be printed.
PUMP_GRACE = 1.0
# Characters of one output line of a node that the launcher prints (the rest of the line follows on the next).
LINE_LIMIT = 16_384
# Exit code of a node that failed only because a peer aborted: the launcher names the peer's failure instead.
ECHO_EXIT = 3
# How long the launcher waits, after a first failure, for the process that caused it to exit too.
CAUSE_GRACE = 1.0


def printable_line(text: str, limit: int = LINE_LIMIT) -> str:
    """One output line of a node made safe to print after its prefix.

    Control characters other than tab are escaped (``\\r``, ``\\x1b``), so that no
    line can erase its prefix, move the cursor or pose as another node's line;
    a line over ``limit`` characters is cut, saying how much was dropped.
    """
    out = "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text[:limit])
    return out if len(text) <= limit else f"{out}... ({len(text) - limit} more characters)"


def _pump(stream, prefix: str, out) -> None:
    # readline(limit): a node that writes without newlines cannot make the launcher hold unbounded text.
    for raw in iter(lambda: stream.readline(LINE_LIMIT), b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        # A carriage return redraws the line (a progress bar): show what the line ends as, not the escapes.
        line = line.rsplit("\r", 1)[-1]
        out.write(prefix + printable_line(line) + "\n")
        out.flush()
    stream.close()


def resume_dir(path: str | None) -> str | None:
    """The absolute path of a ``--resume`` directory, checked to exist (None stays None)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(
            f"--resume {path}: no such directory; give the directory the training wrote its checkpoints to "
            "(its --checkpoint DIR), or start without --resume"
        )
    return str(p.resolve())


def write_local_run(run_dir: Path, local: LocalCluster) -> tuple[Path, list[Path | None]]:
    """Write the local cluster's file and its nodes' secret key files (mode 0600) into ``run_dir``."""
    cluster = local.cluster
    secrets: list[Path | None] = []
    for node, name in zip(cluster.nodes, local.node_names):
        secret = local.secrets[len(secrets)]
        if secret is None or node.public_key is None:
            secrets.append(None)
            continue
        _, sec = save_key_pair(run_dir / "keys", name.replace(" ", ""), node.public_key.encode("ascii"), secret)
        secrets.append(sec)
    path = run_dir / "cluster.toml"
    write_cluster(cluster, path)
    return path, secrets


def launch(
    n: int,
    script: str,
    args: list[str],
    *,
    stats: bool = False,
    timeout: float | None = None,
    insecure: bool = False,
    frac_bits: int | None = None,
    protocol: str | None = None,
    debug: bool = False,
    resume: str | None = None,
) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ConfigError(f"-n must be a number of parties of at least 2, got {n!r}: e.g. `mpc launch -n 2 {script}`")
    if not Path(script).is_file():
        raise ConfigError(f"script {script} not found: give the path of the Python file to run (from {Path.cwd()})")
    resume = resume_dir(resume)
    options: dict = {}
    if timeout is not None:
        options["timeout"] = float(timeout)
    if frac_bits is not None:
        options["frac_bits"] = int(frac_bits)
    if protocol is not None:
        options["protocol"] = protocol
    local = local_cluster(n, insecure, options)  # a bad option raises ConfigError before any process starts
    procs: dict[str, subprocess.Popen] = {}
    pumps: list[threading.Thread] = []
    run_dir: Path | None = None
    with StopSignals() as stops:
        try:
            run_dir = Path(tempfile.mkdtemp(prefix="mpc-run-"))
            os.chmod(run_dir, 0o700)
            with local.listeners:  # each child holds its own copy once started; ours close after the loop
                cluster_path, secrets = write_local_run(run_dir, local)
                base = [sys.executable, "-m", "parties.cli"]
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                for node, who in enumerate(local.node_names):
                    fd = local.listeners.fd(node)
                    is_party = who != "dealer"
                    cmd = base + (["party"] if is_party else ["dealer"]) + ["--cluster", str(cluster_path)]
                    local_dealer = ["--nice", str(LOCAL_DEALER_NICE), "--threads", str(LOCAL_DEALER_THREADS)]
                    cmd += ["--id", str(node)] if is_party else local_dealer
                    cmd += ["--listen-fd", str(fd)]
                    cmd += ["--parent-pid", str(os.getpid())]
                    cmd += ["--insecure"] if insecure else ["--key", str(secrets[node])]
                    cmd += ["--debug"] if debug else []
                    if is_party:
                        cmd += ["--resume", resume] if resume is not None else []
                        cmd += (["--stats"] if stats else []) + [script, *args]
                    p = subprocess.Popen(
                        cmd,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                        pass_fds=(fd,),
                    )
                    procs[who] = p
                    t = threading.Thread(target=_pump, args=(p.stdout, f"[{who}] ", sys.stdout), daemon=True)
                    t.start()
                    pumps.append(t)
            return _supervise(procs)
        except KeyboardInterrupt as exc:
            stops.hold()
            if isinstance(exc, Stopped) and exc.signum != signal.SIGINT:
                print(f"mpc launch: {exc}, stopping every process", file=sys.stderr)
                return exc.exit_code
            print("mpc launch: interrupted, stopping every process", file=sys.stderr)
            return 130
        finally:
            stops.hold()  # a second signal must not cut the clean-up short
            _stop_all(procs)
            deadline = time.monotonic() + PUMP_GRACE
            for t in pumps:
                t.join(max(0.0, deadline - time.monotonic()))
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)


def _failed(procs: dict[str, subprocess.Popen]) -> dict[str, int]:
    codes = {who: p.poll() for who, p in procs.items()}
    return {who: c for who, c in codes.items() if c not in (None, 0)}


def _exited(code: int) -> str:
    """``exited with code 1``; ``was killed by SIGKILL (code -9)``; ``exited with code 143 (stopped by SIGTERM)``."""
    if code < 0:
        return f"was killed by {signal_name(-code)} (code {code})"
    if code - 128 in STOP_SIGNALS:
        return f"exited with code {code} (stopped by {signal_name(code - 128)})"
    return f"exited with code {code}"


def _supervise(procs: dict[str, subprocess.Popen]) -> int:
    parties = {w: p for w, p in procs.items() if w != "dealer"}
    while True:
        failed = _failed(procs)
        if failed:
            # A node that only echoes a peer's abort exits with ECHO_EXIT; wait a moment for the cause.
            deadline = time.monotonic() + CAUSE_GRACE
            while all(c == ECHO_EXIT for c in failed.values()) and time.monotonic() < deadline:
                time.sleep(0.05)
                failed = _failed(procs)
            who, code = min(failed.items(), key=lambda wc: (wc[1] == ECHO_EXIT, wc[1] > 0))
            print(f"mpc launch: {who} {_exited(code)}; stopping the others", file=sys.stderr)
            return code if code > 0 else 1
        if all(p.poll() == 0 for p in parties.values()):
            dealer = procs.get("dealer")
            if dealer is not None:
                try:
                    code = dealer.wait(STOP_GRACE * 3)
                except subprocess.TimeoutExpired:
                    print("mpc launch: the dealer did not finish after every party did", file=sys.stderr)
                    return 1
                if code != 0:
                    print(f"mpc launch: the dealer {_exited(code)}", file=sys.stderr)
                    return code if code > 0 else 1
            return 0
        time.sleep(0.05)


def _signal_groups(procs: dict[str, subprocess.Popen], sig: int) -> None:
    # Every node leads its own process group (start_new_session): the group holds whatever its script started.
    for p in procs.values():
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_all(procs: dict[str, subprocess.Popen]) -> None:
    """SIGTERM to every node's process group (each aborts the run and exits), SIGKILL after ``STOP_GRACE``."""
    if all(p.poll() is not None for p in procs.values()):
        return
    _signal_groups(procs, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for p in procs.values():
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    if any(p.poll() is None for p in procs.values()):
        _signal_groups(procs, signal.SIGKILL)
        for p in procs.values():
            try:
                p.wait(KILL_WAIT)
            except subprocess.TimeoutExpired:  # unkillable (uninterruptible sleep): do not block the clean-up
                print(f"mpc launch: process {p.pid} did not die after SIGKILL", file=sys.stderr)
