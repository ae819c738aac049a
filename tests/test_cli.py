"""Process tier: the ``mpc`` command (keygen, party, dealer, launch) on 127.0.0.1.

Runs of real processes are few and each checks several things; the many error
cases of the per-party command run ``parties.cli.main`` in this process (the
same code as the console script, without the cost of starting torch) and one
runs the console script itself, for its exit code.  Every test bounds its time,
and every error must come well before that bound: never a hang.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mpc.errors import ConfigError
from parties import cli
from parties.cluster import load_cluster, parse_cluster

TIMEOUT = 5.0  # the cluster's receive timeout in the process tests

SCRIPT = r"""
import json, os, signal, sys, time

import torch

import mpc

ctx = mpc.init()
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
print(f"PID {os.getpid()}", flush=True)
x = mpc.share(torch.tensor([1.5, -2.0, 3.25]) if ctx.rank == 0 else None, owner=0)
y = mpc.share(torch.tensor([2.0, 4.0, -1.0]) if ctx.rank == 1 else None, owner=1)
z = (x * y).reveal()
if mode == "fail" and ctx.rank == 0:
    time.sleep(120)  # a party that would not notice for long: the launcher must stop it
if mode == "fail" and ctx.rank == 1:
    raise ValueError("deliberate failure in party 1")
if mode == "kill-party" and ctx.rank == 1:
    print(f"KILL {time.time()}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "hang":
    print("READY", flush=True)
    time.sleep(120)  # every party waits: only Ctrl-C at the launcher ends the run
if mode == "kill-dealer":
    print("READY", flush=True)
    time.sleep(2.0)  # the test kills the dealer meanwhile
w = (x @ y).reveal(to=ctx.world_size - 1)
print("RESULT " + json.dumps({"rank": ctx.rank, "z": z.tolist(), "w": None if w is None else float(w)}), flush=True)
"""

Z = [3.0, -8.0, -3.25]
W = 3.0 - 8.0 - 3.25


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_cluster(path: Path, ports: list[int], keys: list[str] | None = None, timeout: float = TIMEOUT) -> Path:
    """A cluster file as a user writes it: parties 0..n-1 on ports[:-1], the dealer on ports[-1]."""
    n = len(ports) - 1
    lines = ["[options]", f"timeout = {timeout}", "", "[dealer]", f'address = "tcp://127.0.0.1:{ports[-1]}"']
    if keys:
        lines.append(f'public_key = "{keys[-1]}"')
    for i in range(n):
        lines += ["", "[[parties]]", f"id = {i}", f'address = "tcp://127.0.0.1:{ports[i]}"']
        if keys:
            lines.append(f'public_key = "{keys[i]}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_cluster(party_logs, mpc_cmd, tmp_path, cluster, n, mode, secrets=None, stats_for=()):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    auth = (lambda i: ["--key", str(secrets[i])]) if secrets else (lambda i: ["--insecure"])
    party_logs.start("dealer", [*mpc_cmd, "dealer", "--cluster", str(cluster), *auth(n)], tmp_path, cwd=tmp_path)
    for i in range(n):
        extra = ["--stats"] if i in stats_for else []
        cmd = [*mpc_cmd, "party", "--cluster", str(cluster), "--id", str(i), *auth(i), *extra, str(script), mode]
        party_logs.start(f"party {i}", cmd, tmp_path, cwd=tmp_path)


def _results(party_logs, n):
    out = {}
    for i in range(n):
        for line in party_logs.output(f"party {i}").splitlines():
            if line.startswith("RESULT "):
                out[i] = json.loads(line[7:])
    return out


# ----- whole runs through `mpc keygen`, `mpc dealer`, `mpc party` --------------------------------------------


@pytest.mark.timeout(90)
def test_keygen_then_secure_run_through_party_and_dealer_commands(party_logs, mpc_cmd, env, tmp_path):
    n = 3
    keydir = tmp_path / "keys"
    # The console script once (its exit code, output and file modes), then the same code in process.
    proc = subprocess.run(
        [*mpc_cmd, "keygen", "--out", str(keydir), "--id", "party0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    party_logs.record("keygen", proc.stdout + proc.stderr)
    assert proc.returncode == 0 and "party0.key_secret" in proc.stdout
    for name in ["party1", "party2", "dealer"]:
        assert cli.main(["keygen", "--out", str(keydir), "--id", name]) == 0
    names = [f"party{i}" for i in range(n)] + ["dealer"]
    for name in names:
        assert (keydir / f"{name}.key_secret").stat().st_mode & 0o777 == 0o600
    pubs = [(keydir / f"{name}.key").read_text().strip() for name in names]
    secrets = [keydir / f"{name}.key_secret" for name in names]
    # A second keygen for the same name refuses to overwrite the secret key.
    assert cli.main(["keygen", "--out", str(keydir), "--id", "party0"]) == 2

    cluster = write_cluster(tmp_path / "cluster.toml", _free_ports(n + 1), pubs)
    _start_cluster(party_logs, mpc_cmd, tmp_path, cluster, n, "ok", secrets, stats_for=(0,))
    done = party_logs.wait_all(60)
    assert {name: code for name, (code, _) in done.items()} == {"dealer": 0, "party 0": 0, "party 1": 0, "party 2": 0}
    results = _results(party_logs, n)
    assert sorted(results) == [0, 1, 2]
    for i, r in results.items():
        assert r["z"] == pytest.approx(Z, abs=2 * 2.0**-16)
        assert (r["w"] is None) == (i != n - 1)  # revealed to the last party only
    assert results[n - 1]["w"] == pytest.approx(W, abs=2 * 2.0**-16)
    assert "MPC_STATS" in party_logs.output("party 0") and "MPC_STATS" not in party_logs.output("party 1")
    assert "--insecure" not in "".join(party_logs.output(k) for k in party_logs.procs)  # no insecure warning


@pytest.mark.timeout(90)
def test_insecure_run_with_a_killed_party(party_logs, mpc_cmd, tmp_path):
    """Party 1 dies mid-protocol: every other node exits with an error naming party 1 within twice the timeout."""
    n = 3
    cluster = write_cluster(tmp_path / "cluster.toml", _free_ports(n + 1))
    _start_cluster(party_logs, mpc_cmd, tmp_path, cluster, n, "kill-party")
    kill_line = party_logs.wait_for_line("party 1", "KILL ", 60)
    assert kill_line is not None
    killed_at = float(kill_line.split()[1])
    done = party_logs.wait_all(3 * TIMEOUT)
    assert done["party 1"][0] == -signal.SIGKILL
    for name in ["party 0", "party 2", "dealer"]:
        code, exited_at = done[name]
        out = party_logs.output(name)
        assert code is not None and code != 0, f"{name} did not stop: {code}"
        assert exited_at - killed_at < 2 * TIMEOUT, f"{name} took {exited_at - killed_at:.1f}s"
        assert "party 1" in out and any(e in out for e in ("PeerLost", "PeerTimeout", "PeerAborted")), name
        assert "WARNING: running with --insecure" in out
        assert "RESULT" not in out


@pytest.mark.timeout(90)
def test_insecure_run_with_a_killed_dealer(party_logs, mpc_cmd, tmp_path):
    n = 3
    cluster = write_cluster(tmp_path / "cluster.toml", _free_ports(n + 1))
    _start_cluster(party_logs, mpc_cmd, tmp_path, cluster, n, "kill-dealer")
    assert party_logs.wait_for_line("party 0", "READY", 60) is not None
    killed_at = time.time()
    party_logs.procs["dealer"].kill()
    done = party_logs.wait_all(3 * TIMEOUT)
    for i in range(n):
        code, exited_at = done[f"party {i}"]
        out = party_logs.output(f"party {i}")
        assert code is not None and code != 0 and "RESULT" not in out
        assert exited_at - killed_at < 2 * TIMEOUT + 2.0  # + the script's own 2 s pause
        assert "the dealer" in out, f"party {i} does not name the dealer"


# ----- `mpc launch` ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_launch_exit_codes_and_prefixed_output(party_logs, mpc_cmd, env, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    ok = subprocess.run(
        [*mpc_cmd, "launch", "-n", "2", str(script), "ok"], capture_output=True, text=True, env=env, timeout=60
    )
    party_logs.record("launch ok", ok.stdout + ok.stderr)
    assert ok.returncode == 0
    lines = [ln for ln in ok.stdout.splitlines() if ln.strip()]
    assert lines and all(ln.startswith(("[party 0] ", "[party 1] ", "[dealer] ")) for ln in lines), lines
    results = [json.loads(ln.split("RESULT ", 1)[1]) for ln in lines if "RESULT " in ln]
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["z"] == pytest.approx(Z, abs=2 * 2.0**-16) for r in results)
    assert any(ln.startswith("[party 1] RESULT") for ln in lines)

    start = time.monotonic()
    bad = subprocess.run(
        [*mpc_cmd, "launch", "-n", "2", "--timeout", str(TIMEOUT), str(script), "fail"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    party_logs.record("launch fail", bad.stdout + bad.stderr)
    assert bad.returncode != 0
    # The launcher names the cause, party 1, not the dealer that stopped on its abort (exit code 3).
    assert "mpc launch: party 1 exited with code 1; stopping the others" in bad.stderr
    assert "[party 1] ValueError: deliberate failure in party 1" in bad.stdout
    # Party 0 sleeps for two minutes: the launcher stopped it instead of waiting.
    assert elapsed < 40
    pid = int(next(ln for ln in bad.stdout.splitlines() if ln.startswith("[party 0] PID ")).split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.timeout(90)
def test_launch_ctrl_c_stops_every_process(party_logs, mpc_cmd, env, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "launch.out"
    with out.open("w") as sink:
        launcher = subprocess.Popen(
            [*mpc_cmd, "launch", "-n", "2", str(script), "hang"], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
        try:
            deadline = time.monotonic() + 60
            while out.read_text().count("READY") < 2:
                assert launcher.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.1)
            launcher.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to the launcher
            code = launcher.wait(30)
        finally:
            if launcher.poll() is None:
                launcher.kill()
    text = out.read_text()
    party_logs.record("launch ctrl-c", text)
    assert code == 130 and "interrupted, stopping every process" in text
    pids = [int(ln.split()[-1]) for ln in text.splitlines() if " PID " in ln]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ----- errors of the per-party command (in this process: same code, no torch start-up) ----------------------


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``mpc ARGS`` in this process: (exit code, stderr, seconds)."""
    monkeypatch.delenv("MPC_RANK", raising=False)
    logger = logging.getLogger("mpc")
    level, handlers = logger.level, list(logger.handlers)

    def run(*args: str) -> tuple[int, str, float]:
        start = time.monotonic()
        code = cli.main(list(args))
        elapsed = time.monotonic() - start
        return code, capsys.readouterr().err, elapsed

    yield run
    for h in logger.handlers[:]:  # the command adds a handler on this test's stderr
        if h not in handlers:
            logger.removeHandler(h)
    logger.setLevel(level)


@pytest.fixture
def cluster3(tmp_path):
    return write_cluster(tmp_path / "cluster.toml", _free_ports(4), timeout=2.0)


@pytest.mark.timeout(30)
def test_missing_and_malformed_cluster_files(run_cli, tmp_path):
    script = tmp_path / "s.py"
    script.write_text("")
    code, err, _ = run_cli("party", "--cluster", str(tmp_path / "nope.toml"), "--id", "0", "--insecure", str(script))
    assert code == 1 and "nope.toml does not exist" in err and "party 0" in err
    bad = tmp_path / "bad.toml"
    for text, msg in [
        ("[[parties]\nid = 0", "not valid TOML"),
        ("[dealer]\naddress = 'tcp://127.0.0.1:1'\n[[parties]]\nid = 0\naddress = 'tcp://127.0.0.1:2'", "at least two"),
        (
            "[[parties]]\nid = 0\naddress = 'tcp://127.0.0.1:2'\n[[parties]]\nid = 1\naddress = 'tcp://127.0.0.1:3'",
            "[dealer]",
        ),
        (
            "[dealer]\naddress = 'tcp://h:1'\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 0\naddress = 'tcp://h:3'",
            "appears twice",
        ),
        (
            "[dealer]\naddress = 'tcp://h:1'\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 2\naddress = 'tcp://h:3'",
            "0..1",
        ),
        (
            "[dealer]\naddress = 'h:1'\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 1\naddress = 'tcp://h:3'",
            "tcp://HOST:PORT",
        ),
        (
            "[dealer]\naddress = 'tcp://h:99999'\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 1\naddress = 'tcp://h:3'",
            "1..65535",
        ),
        (
            "[dealer]\naddress = 'tcp://h:2'\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 1\naddress = 'tcp://h:3'",
            "claims the address",
        ),
        (
            "[options]\nfrac_bits = 99\n[dealer]\naddress = 'tcp://h:1'\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 1\naddress = 'tcp://h:3'",
            "frac_bits",
        ),
        (
            "[options]\ncolour = 1\n[dealer]\naddress = 'tcp://h:1'\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 1\naddress = 'tcp://h:3'",
            "[options] may only set",
        ),
        (
            "[dealer]\naddress = 'tcp://h:1'\npublic_key = 'short'\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 1\naddress = 'tcp://h:3'",
            "40-character",
        ),
        (
            "[dealer]\naddress = 'tcp://h:1'\nport = 3\n[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 1\naddress = 'tcp://h:3'",
            "unknown keys",
        ),
    ]:
        bad.write_text(text)
        for cmd in (
            ["party", "--cluster", str(bad), "--id", "0", "--insecure", str(script)],
            ["dealer", "--cluster", str(bad), "--insecure"],
        ):
            code, err, elapsed = run_cli(*cmd)
            assert code == 1 and msg in err and "ConfigError" in err, (text, err)
            assert elapsed < 5


@pytest.mark.timeout(30)
def test_unknown_ids_and_missing_keys(run_cli, cluster3, tmp_path):
    cluster = cluster3
    script = tmp_path / "s.py"
    script.write_text("")
    for pid in ("3", "7", "-1"):
        code, err, _ = run_cli("party", "--cluster", str(cluster), "--id", pid, "--insecure", str(script))
        assert code == 1 and f"unknown party id {pid}" in err and "lists parties 0..2" in err
    code, err, _ = run_cli("party", "--cluster", str(cluster), "--id", "0", "--insecure", str(tmp_path / "missing.py"))
    assert code == 1 and "missing.py not found" in err
    code, err, _ = run_cli("party", "--cluster", str(cluster), "--id", "0", str(script))
    assert code == 1 and "--key" in err and "--insecure" in err
    # A secure run needs public keys in the cluster file.
    assert cli.main(["keygen", "--out", str(tmp_path / "k"), "--id", "p0"]) == 0
    code, err, _ = run_cli(
        "party", "--cluster", str(cluster), "--id", "0", "--key", str(tmp_path / "k" / "p0.key_secret"), str(script)
    )
    assert code == 1 and "lists no public_key" in err


@pytest.mark.timeout(30)
def test_wrong_and_exposed_keys(run_cli, tmp_path):
    keydir = tmp_path / "keys"
    names = ["party0", "party1", "dealer"]
    for name in names:
        assert cli.main(["keygen", "--out", str(keydir), "--id", name]) == 0
    pubs = [(keydir / f"{name}.key").read_text().strip() for name in names]
    cluster = write_cluster(tmp_path / "cluster.toml", _free_ports(3), pubs, timeout=2.0)
    script = tmp_path / "s.py"
    script.write_text("")
    # party 0 started with party 1's key
    code, err, elapsed = run_cli(
        "party", "--cluster", str(cluster), "--id", "0", "--key", str(keydir / "party1.key_secret"), str(script)
    )
    assert code == 1 and "SecurityError" in err and "does not match" in err and elapsed < 5
    # a secret key readable by others
    exposed = keydir / "party0.key_secret"
    exposed.chmod(0o644)
    code, err, _ = run_cli("party", "--cluster", str(cluster), "--id", "0", "--key", str(exposed), str(script))
    assert code == 1 and "chmod 600" in err
    exposed.chmod(0o600)
    # not a key at all
    junk = keydir / "junk.key_secret"
    junk.write_text("hello")
    junk.chmod(0o600)
    code, err, _ = run_cli("dealer", "--cluster", str(cluster), "--key", str(junk))
    assert code == 1 and "does not hold" in err


@pytest.mark.timeout(30)
def test_port_in_use(run_cli, tmp_path):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        ports = _free_ports(3)
        ports[0] = holder.getsockname()[1]
        cluster = write_cluster(tmp_path / "cluster.toml", ports, timeout=2.0)
        script = tmp_path / "s.py"
        script.write_text("")
        code, err, elapsed = run_cli("party", "--cluster", str(cluster), "--id", "0", "--insecure", str(script))
        assert code == 1 and f"cannot listen on tcp://127.0.0.1:{ports[0]}" in err and "already in use" in err
        assert elapsed < 5
    finally:
        holder.close()


@pytest.mark.timeout(30)
def test_unreachable_peer_is_named_within_the_timeout(run_cli, tmp_path):
    timeout = 3.0  # nobody else is running
    cluster = write_cluster(tmp_path / "cluster.toml", _free_ports(4), timeout=timeout)
    script = tmp_path / "s.py"
    script.write_text("")
    code, err, elapsed = run_cli("party", "--cluster", str(cluster), "--id", "0", "--insecure", str(script))
    assert code == 1 and "PeerTimeout" in err and "waited 3s for 'setup' from party 1" in err and "unreachable" in err
    assert timeout <= elapsed < 2 * timeout, elapsed
    # the dealer first waits (the receive timeout) for every party's run-id nonce of the setup
    code, err, elapsed = run_cli("dealer", "--cluster", str(cluster), "--insecure", "--idle-timeout", "1")
    assert code == 1 and "PeerTimeout" in err and "waited 3s for 'setup:nonce' from party 0" in err, err
    assert timeout <= elapsed < 2 * timeout, elapsed


@pytest.mark.timeout(30)
def test_launch_argument_errors(run_cli, tmp_path):
    script = tmp_path / "s.py"
    script.write_text("")
    assert cli.main(["launch", "-n", "1", str(script)]) == 2
    assert cli.main(["launch", "-n", "2", str(tmp_path / "missing.py")]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["party", "--id", "0", str(script)])  # --cluster is required
    assert exc.value.code == 2


@pytest.mark.timeout(60)
def test_console_script_reports_errors_with_exit_codes(party_logs, mpc_cmd, env, tmp_path):
    proc = subprocess.run(
        [*mpc_cmd, "party", "--cluster", str(tmp_path / "none.toml"), "--id", "0", "--insecure", "x.py"],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    party_logs.record("mpc party", proc.stdout + proc.stderr)
    assert proc.returncode == 1
    assert "mpc party: party 0: ConfigError: cluster file" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.timeout(30)
def test_cluster_round_trip_through_the_parser(tmp_path):
    ports = _free_ports(3)
    path = write_cluster(tmp_path / "c.toml", ports, timeout=7.5)
    c = load_cluster(path)
    assert c.world_size == 2 and c.addresses[-1] == f"tcp://127.0.0.1:{ports[-1]}"
    assert c.config().timeout == 7.5 and c.config(timeout=3).timeout == 3
    with pytest.raises(ConfigError, match="at least two"):
        parse_cluster({"dealer": {"address": "tcp://h:1"}, "parties": []})
