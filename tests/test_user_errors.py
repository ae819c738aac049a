"""Errors a user can act on, on the parties side: each names what went wrong, who, and what to change.

* a secret tensor returned from the function given to ``run_threads`` or
  ``mpc.run``: refused in the party, naming it, saying to reveal first;
* a public key file given as ``--key``: recognised, naming the secret key file;
* a lost or failed peer under ``mpc party`` / ``mpc launch``: one line naming
  the peer and the likely cause, no traceback (unless ``--debug``);
* the dealer's idle limit: finite by default, stated in ``--help``, and its
  message says how long it waited and for whom;
* bad arguments of ``mpc launch``, ``mpc party``, ``mpc dealer``, ``mpc keygen``,
  ``mpc.run`` and ``run_threads``: ``mpc.MPCError`` subclasses that say what to change.

Thread tier where it suffices; real processes for the CLI's output and for the
dealer's idle limit under ``mpc launch``.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import mpc
from mpc.config import MPCConfig
from mpc.errors import ConfigError, PeerTimeout, ProtocolError
from parties import cli
from parties.dealer import IDLE_FACTOR, idle_limit
from parties.launch import launch
from parties.ports import Listeners
from parties.simulator import run_threads

# ----- programs (module level: mpc.run pickles them) ------------------------------------------------------------


def _x(ctx):
    return mpc.share(torch.tensor([1.0, 2.0]) if ctx.rank == 0 else None, owner=0)


def returns_secret(ctx, shape: str):
    x = _x(ctx)
    if shape == "bare":
        return x
    if shape == "list":
        return [x.reveal(), x]
    if shape == "dict":
        return {"loss": 1.0, "weights": (x.reveal(), [x])}
    if shape == "max":  # a named tuple of secret tensors
        return x.max(dim=0)
    raise AssertionError(shape)


def secret_at_last_party(ctx):
    x = _x(ctx)
    return {"w": x} if ctx.rank == ctx.world_size - 1 else x.reveal()


def unpicklable_result(ctx):
    x = _x(ctx).reveal()
    return (x, lambda: None) if ctx.rank == 0 else x


def idle(ctx, seconds: float):
    time.sleep(seconds)
    return ctx.rank


# ----- 1. a secret tensor returned from a party's function ------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "shape, where",
    [("bare", ""), ("list", "(at result[1])"), ("dict", "(at result['weights'][1][0])"), ("max", "(at result[0])")],
)
def test_threads_refuse_a_returned_secret_tensor(shape, where):
    with pytest.raises(ProtocolError) as err:
        run_threads(functools.partial(returns_secret, shape=shape), 2, timeout=20.0)
    text = str(err.value)
    assert "'s function returned a SecretTensor" in text and "x.reveal()" in text and "x.reveal(to=k)" in text
    assert where in text
    assert isinstance(err.value, mpc.MPCError)
    assert any(n.startswith("(raised in party ") for n in err.value.__notes__)


@pytest.mark.timeout(60)
def test_threads_name_the_party_that_returned_a_secret_tensor():
    with pytest.raises(ProtocolError, match=r"party 2's function returned a SecretTensor \(at result\['w'\]\)"):
        run_threads(secret_at_last_party, 3, timeout=20.0)


@pytest.mark.timeout(120)
def test_processes_refuse_a_returned_secret_tensor_and_an_unpicklable_result(party_logs):
    with pytest.raises(mpc.PartyFailed) as err:
        mpc.run(secret_at_last_party, parties=2, timeout=30, insecure=True, run_timeout=90)
    party_logs.record("secret", str(err.value))
    assert err.value.rank == 1 and err.value.error_type == "ProtocolError"
    assert "party 1's function returned a SecretTensor (at result['w'])" in str(err.value)
    assert "x.reveal()" in str(err.value)
    assert "pickl" not in str(err.value).split("--- traceback")[0].lower()  # not the obscure pickling error

    with pytest.raises(mpc.PartyFailed) as err:
        mpc.run(unpicklable_result, parties=2, timeout=30, insecure=True, run_timeout=90, protocol="plaintext")
    party_logs.record("unpicklable", str(err.value))
    assert err.value.rank == 0 and err.value.error_type == "ProtocolError"
    assert "party 0's result cannot be sent back to the caller" in str(err.value)
    assert "return tensors, numbers" in str(err.value)


# ----- the per-party command in this process --------------------------------------------------------------------


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``mpc ARGS`` in this process: (exit code, stderr)."""
    monkeypatch.delenv("MPC_RANK", raising=False)
    logger = logging.getLogger("mpc")
    level, handlers = logger.level, list(logger.handlers)

    def run(*args: str) -> tuple[int, str]:
        code = cli.main(list(args))
        return code, capsys.readouterr().err

    yield run
    for h in logger.handlers[:]:
        if h not in handlers:
            logger.removeHandler(h)
    logger.setLevel(level)


def _cluster(path: Path, n: int, keys: list[str] | None = None, timeout: float = 2.0, plaintext: bool = False) -> Path:
    """A cluster file of ``n`` parties (and a dealer unless ``plaintext``) on ports nobody listens on."""
    with Listeners(n + 1) as held:
        addrs = held.addresses
    lines = ["[options]", f"timeout = {timeout}"] + (['protocol = "plaintext"'] if plaintext else [])
    if not plaintext:
        lines += ["[dealer]", f'address = "{addrs[n]}"'] + ([f'public_key = "{keys[n]}"'] if keys else [])
    for i in range(n):
        lines += ["[[parties]]", f"id = {i}", f'address = "{addrs[i]}"']
        lines += [f'public_key = "{keys[i]}"'] if keys else []
    path.write_text("\n".join(lines) + "\n")
    return path


# ----- 2. a public key file given as --key ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_public_key_given_as_key_names_the_secret_key_file(run_cli, tmp_path):
    keydir = tmp_path / "keys"
    names = ["party0", "party1", "dealer"]
    for name in names:
        assert cli.main(["keygen", "--out", str(keydir), "--id", name]) == 0
    pubs = [(keydir / f"{name}.key").read_text().strip() for name in names]
    cluster = _cluster(tmp_path / "cluster.toml", 2, pubs)
    script = tmp_path / "s.py"
    script.write_text("")
    party = ["party", "--cluster", str(cluster), "--id", "0"]

    # NAME.key beside NAME.key_secret
    code, err = run_cli(*party, "--key", str(keydir / "party0.key"), str(script))
    assert code == 1 and "ConfigError" in err and "not its public key" in err
    assert f"pass --key {keydir / 'party0.key_secret'}" in err
    code, err = run_cli("dealer", "--cluster", str(cluster), "--key", str(keydir / "dealer.key"))
    assert code == 1 and f"pass --key {keydir / 'dealer.key_secret'}" in err

    # a lone NAME.key that others may read (as keygen writes public keys)
    lone = tmp_path / "copied" / "party0.key"
    lone.parent.mkdir()
    shutil.copy(keydir / "party0.key", lone)
    lone.chmod(0o644)
    code, err = run_cli(*party, "--key", str(lone), str(script))
    assert code == 1 and "looks like a public key file" in err and "key_secret" in err
    assert "SecurityError" not in err  # not the "secret key leaked" advice

    # any other file holding a public key of the cluster, mode 0600
    disguised = tmp_path / "mine.txt"
    disguised.write_text(pubs[1] + "\n")
    disguised.chmod(0o600)
    code, err = run_cli(*party, "--key", str(disguised), str(script))
    assert code == 1 and "ConfigError" in err
    assert "the key given to party 0 is a public key" in err and "lists it as party 1's public_key" in err
    assert "key_secret" in err

    # the secret key itself still works up to the network (nobody else runs: setup times out)
    code, err = run_cli(*party, "--key", str(keydir / "party0.key_secret"), "--timeout", "0.5", str(script))
    assert code == 1 and "PeerTimeout" in err and "public key" not in err


# ----- 3. a lost or failed peer: one line, no traceback (unless --debug) ---------------------------------------

KILL_SCRIPT = r"""
import os, signal, sys, time

import torch

import mpc

ctx = mpc.init()
x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
print("SHARED", flush=True)
if ctx.rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)
y = (x * x).reveal()
print("RESULT", flush=True)
"""


def _line_of(script: str, text: str) -> int:
    """The number of the first line of ``script`` that starts with ``text`` (after indentation)."""
    return next(i for i, ln in enumerate(script.split("\n"), 1) if ln.strip().startswith(text))


def _one_liners(out: str, prefix: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(prefix)]


@pytest.mark.timeout(120)
def test_a_killed_peer_is_one_line_without_traceback_and_debug_shows_it(party_logs, mpc_cmd, tmp_path):
    n = 3
    cluster = _cluster(tmp_path / "cluster.toml", n, timeout=5.0)
    script = tmp_path / "script.py"
    script.write_text(KILL_SCRIPT)
    base = ["--cluster", str(cluster), "--insecure"]
    party_logs.start("dealer", [*mpc_cmd, "dealer", *base], tmp_path, cwd=tmp_path)
    for i in range(n):
        debug = ["--debug"] if i == 2 else []
        party_logs.start(f"party {i}", [*mpc_cmd, "party", *base, "--id", str(i), *debug, str(script)], tmp_path)
    done = party_logs.wait_all(60)
    assert done["party 1"][0] == -signal.SIGKILL
    for name, cmd in [("party 0", "party"), ("dealer", "dealer"), ("party 2", "party")]:
        code, _ = done[name]
        out = party_logs.output(name)
        assert code not in (None, 0) and "RESULT" not in out, name
        lines = _one_liners(out, f"mpc {cmd}: {'dealer' if name == 'dealer' else name}: ")
        assert len(lines) == 1, (name, out)
        line = lines[0]
        assert any(e in line for e in ("PeerLost", "PeerAborted", "PeerTimeout")), line
        assert "party 1" in line and any(c in line for c in ("crashed or was killed", "dead, stuck")), line
        if name == "party 2":  # --debug: the traceback as well
            assert "Traceback (most recent call last)" in out
        else:
            assert "Traceback" not in out, out
    # Raised inside the script: the one line says where.
    assert "(at script.py:" in _one_liners(party_logs.output("party 0"), "mpc party: party 0: ")[0]


DESYNC_SCRIPT = r"""
import sys

import torch

import mpc

ctx = mpc.init()
if ctx.rank == 0:  # party 1 never sends this: a program that differs between parties
    y = mpc.share(None, owner=1)
print("DONE", flush=True)
"""

FAIL_SCRIPT = r"""
import mpc

ctx = mpc.init()


def helper():
    raise KeyError("deliberate")


if ctx.rank == 0:
    helper()
"""


@pytest.mark.timeout(150)
def test_launch_prints_a_desync_as_one_line_and_passes_debug_on(party_logs, mpc_cmd, env, tmp_path):
    script = tmp_path / "desync.py"
    script.write_text(DESYNC_SCRIPT)
    cmd = [*mpc_cmd, "launch", "-n", "2", "--insecure", "--protocol", "plaintext", "--timeout", "10"]
    plain = subprocess.run([*cmd, str(script)], capture_output=True, text=True, env=env, timeout=100)
    party_logs.record("launch", plain.stdout + plain.stderr)
    assert plain.returncode == 1
    # Either side may notice first (party 0 waiting for party 1's input, or party 1 at its closing barrier).
    failed = re.search(r"mpc launch: party (\d) exited with code 1; stopping the others", plain.stderr)
    assert failed, plain.stderr
    who = f"party {failed.group(1)}"
    lines = _one_liners(plain.stdout, f"[{who}] mpc party: {who}: DesyncError: ")
    assert len(lines) == 1 and "party 0" in lines[0] and "party 1" in lines[0], plain.stdout
    assert f"desync.py:{_line_of(DESYNC_SCRIPT, 'y = mpc.share')}" in lines[0]  # where the programs part
    assert "Traceback" not in plain.stdout

    debug = subprocess.run([*cmd, "--debug", str(script)], capture_output=True, text=True, env=env, timeout=100)
    party_logs.record("launch --debug", debug.stdout + debug.stderr)
    assert debug.returncode == 1
    failed = re.search(r"mpc launch: party (\d) exited with code 1; stopping the others", debug.stderr)
    assert failed, debug.stderr
    who = f"party {failed.group(1)}"
    assert f"[{who}] Traceback (most recent call last):" in debug.stdout
    assert len(_one_liners(debug.stdout, f"[{who}] mpc party: {who}: DesyncError: ")) == 1

    # The script's own error: its traceback, starting at the script (not at the launcher's frames).
    fail = tmp_path / "fail.py"
    fail.write_text(FAIL_SCRIPT)
    own = subprocess.run([*cmd, str(fail)], capture_output=True, text=True, env=env, timeout=100)
    party_logs.record("launch fail", own.stdout + own.stderr)
    assert own.returncode == 1
    party0 = [ln[len("[party 0] ") :] for ln in own.stdout.splitlines() if ln.startswith("[party 0] ")]
    tb = party0[party0.index("Traceback (most recent call last):") :]
    assert (
        f'fail.py", line {_line_of(FAIL_SCRIPT, "helper()")}, in <module>' in tb[1]
        and "KeyError: 'deliberate'" in tb[-1]
    )
    assert not any("runpy" in ln or "lifecycle" in ln for ln in tb)


# ----- 4. the dealer's idle limit -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_dealer_help_states_a_finite_idle_timeout(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["dealer", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--idle-timeout S" in text and f"default: {IDLE_FACTOR} x the cluster's receive timeout" in text
    assert f"{IDLE_FACTOR * 60} s with the default timeout of 60 s" in text
    assert idle_limit(MPCConfig()) == IDLE_FACTOR * 60.0 == 600.0
    assert idle_limit(MPCConfig(timeout=2.5)) == 25.0 and idle_limit(MPCConfig(), 7) == 7.0
    for bad in (0, -1.0, "10", True):
        with pytest.raises(ConfigError, match="idle timeout must be a positive number of seconds"):
            idle_limit(MPCConfig(), bad)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_dealer_idle_limit_applies_by_default_in_threads():
    """The same ``run_dealer`` as ``mpc.run`` and ``mpc dealer``: without a limit given, 10 x the timeout."""
    start = time.monotonic()
    with pytest.raises(PeerTimeout) as err:
        run_threads(functools.partial(idle, seconds=6.0), 2, timeout=0.4, join_timeout=30)
    text = str(err.value)
    assert "the dealer waited 4s for a request from party 1" in text and "10 x the cluster's timeout" in text
    assert "--idle-timeout" in text and "(raised in the dealer)" in err.value.__notes__
    assert time.monotonic() - start < 20


@pytest.mark.timeout(120)
def test_launch_dealer_gives_up_after_its_default_idle_limit(party_logs, mpc_cmd, env, tmp_path):
    script = tmp_path / "idle.py"
    script.write_text("import time\nimport mpc\n\nctx = mpc.init()\ntime.sleep(60)\n")
    start = time.monotonic()
    proc = subprocess.run(
        [*mpc_cmd, "launch", "-n", "2", "--insecure", "--timeout", "2", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
    )
    elapsed = time.monotonic() - start
    party_logs.record("launch", proc.stdout + proc.stderr)
    assert proc.returncode == 1 and "mpc launch: dealer exited with code 1; stopping the others" in proc.stderr
    lines = _one_liners(proc.stdout, "[dealer] mpc dealer: dealer: PeerTimeout: ")
    assert len(lines) == 1 and "the dealer waited 20s for a request from party 1" in lines[0], proc.stdout
    assert "(20s = 10 x the cluster's timeout)" in lines[0] and "--idle-timeout" in lines[0]
    assert "Traceback" not in proc.stdout
    assert 20 <= elapsed < 50, elapsed


# ----- 5. bad arguments: MPCError subclasses that say what to change --------------------------------------------


@pytest.mark.timeout(30)
def test_bad_arguments_of_the_commands(run_cli, tmp_path):
    script = tmp_path / "s.py"
    script.write_text("")
    with pytest.raises(ConfigError, match="-n must be a number of parties of at least 2"):
        launch(1, str(script), [])
    with pytest.raises(ConfigError, match="missing.py not found: give the path of the Python file"):
        launch(2, str(tmp_path / "missing.py"), [])
    with pytest.raises(ConfigError, match="timeout must be a positive number"):
        launch(2, str(script), [], timeout=-1)
    code, err = run_cli("launch", "-n", "1", str(script))
    assert code == 2 and "mpc launch: -n must be" in err

    cluster = _cluster(tmp_path / "cluster.toml", 2)
    code, err = run_cli("party", "--cluster", str(cluster), "--id", "5", "--insecure", str(script))
    assert code == 1 and "ConfigError: unknown party id 5" in err and "pass one of them with --id" in err
    code, err = run_cli("party", "--cluster", str(cluster), "--id", "0", "--insecure", "nope.py")
    assert code == 1 and "ConfigError: script nope.py not found: give the path" in err
    code, err = run_cli("party", "--cluster", str(cluster), "--id", "0", str(script))
    assert code == 1 and "ConfigError: give this node's secret key with --key FILE" in err
    code, err = run_cli("party", "--cluster", str(cluster), "--id", "0", "--insecure", "--timeout", "-3", str(script))
    assert code == 1 and "ConfigError: timeout must be a positive number of seconds" in err
    code, err = run_cli("dealer", "--cluster", str(cluster), "--insecure", "--idle-timeout", "0")
    assert code == 1 and "ConfigError: the dealer's idle timeout must be a positive number" in err
    code, err = run_cli("dealer", "--cluster", str(cluster), "--insecure", "--nice", "25")
    assert code == 1 and "ConfigError: --nice takes a niceness increment in [1, 19], got 25" in err
    code, err = run_cli("dealer", "--cluster", str(cluster), "--insecure", "--threads", "0")
    assert code == 1 and "ConfigError: --threads takes a number of threads of at least 1, got 0" in err

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = run_cli("keygen", "--out", str(blocker / "keys"), "--id", "p0")
    assert code == 2 and "cannot write the key files p0.key and p0.key_secret" in err and "--out" in err
    binary = tmp_path / "bin.key_secret"
    binary.write_bytes(bytes(range(200, 240)))
    binary.chmod(0o600)
    code, err = run_cli("dealer", "--cluster", str(cluster), "--key", str(binary))
    assert code == 1 and "does not hold a z85 Curve25519 secret key" in err


@pytest.mark.timeout(30)
def test_bad_arguments_of_run_and_run_threads():
    with pytest.raises(ProtocolError, match=r"fn must be a function of the party context"):
        mpc.run(42, parties=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="run_timeout must be a positive number of seconds"):
        mpc.run(returns_secret, parties=2, run_timeout=-1)
    with pytest.raises(ConfigError, match="timeout must be a positive number of seconds"):
        mpc.run(returns_secret, parties=2, timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="parties must be an integer >= 2"):
        mpc.run(returns_secret, parties=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="parties must be an integer >= 2"):
        run_threads(returns_secret, 1)
    with pytest.raises(ProtocolError, match="fn must be a function"):
        run_threads("fn", 2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown simulator transport 'udp'; use 'memory' or 'inproc'"):
        run_threads(returns_secret, 2, transport="udp")


@pytest.mark.timeout(30)
def test_launcher_names_the_signal_that_killed_a_node():
    from parties.launch import _exited

    assert _exited(-signal.SIGKILL) == "was killed by SIGKILL (code -9)"
    assert _exited(1) == "exited with code 1"
