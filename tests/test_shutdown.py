"""Clean shutdown with real signals and real processes (issue 11, item 1).

``mpc launch -n 2`` runs a loop of secret multiplications; the test sends
SIGTERM, SIGHUP or SIGINT to the launcher or to party 1 and checks, by pid,
that every process of the run (launcher, parties, dealer) is gone within
5 seconds, that no process has the run directory on its command line, that the
run directory and its key files are deleted, and that a run started right
after succeeds.  SIGKILL to the launcher (which cannot clean up) still takes
every node down (``parties.stopping.die_with_parent``).

Each launch gets its own ``TMPDIR``, so that its run directory
(``$TMPDIR/mpc-run-*``) is told apart from those of other runs on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

STOP_WITHIN = 5.0

LOOP = r"""
import os, sys, time

import torch

import mpc

ctx = mpc.init()
print(f"PID {os.getpid()}", flush=True)
x = mpc.share(torch.tensor([1.0, -2.0, 0.5]) if ctx.rank == 0 else None, owner=0)
if sys.argv[1] == "ok":
    print("RESULT", (x * x).reveal().tolist(), flush=True)
    sys.exit(0)
print("READY", flush=True)
for _ in range(1200):  # about two minutes: only a signal ends it within the test's bounds
    (x * x).reveal()
    time.sleep(0.1)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _with_on_command_line(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class Run:
    """One ``mpc launch -n 2`` of the loop script, with its own TMPDIR and output file."""

    def __init__(self, mpc_cmd: list[str], env: dict[str, str], tmp_path: Path, name: str) -> None:
        self.tmpdir = tmp_path / f"tmp-{name}"
        self.tmpdir.mkdir()
        self.marker = f"{self.tmpdir}/mpc-run-"
        self.out = tmp_path / f"{name}.out"
        script = tmp_path / "loop.py"
        script.write_text(LOOP)
        self.cmd = [*mpc_cmd, "launch", "-n", "2", "--timeout", "20", str(script)]
        self.env = dict(env, TMPDIR=str(self.tmpdir))

    def start(self) -> subprocess.Popen:
        with self.out.open("wb") as sink:
            self.launcher = subprocess.Popen(
                [*self.cmd, "loop"], stdout=sink, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        return self.launcher

    def text(self) -> str:
        return self.out.read_text("utf-8", "replace")

    def wait_ready(self, timeout: float = 90.0) -> list[int]:
        """Every process of the run once both parties loop: the launcher, the parties, the dealer."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.launcher.poll() is None, self.text()
            nodes = _with_on_command_line(self.marker)
            if self.text().count("READY") >= 2 and len(nodes) >= 3:
                return [self.launcher.pid, *nodes]
            assert time.monotonic() < deadline, f"the run did not start: {self.text()}"
            time.sleep(0.1)

    def party_pid(self, rank: int) -> int:
        return int(re.search(rf"^\[party {rank}\] PID (\d+)$", self.text(), re.M).group(1))

    def run_dirs(self) -> list[Path]:
        return list(self.tmpdir.glob("mpc-run-*"))

    def kill(self) -> None:
        for pid in [self.launcher.pid, *_with_on_command_line(self.marker)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.launcher.wait(5)


def _gone_within(pids: list[int], seconds: float) -> tuple[float, list[int]]:
    """Seconds until every pid is gone (or ``seconds``) and the pids still alive then."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return time.monotonic() - start, []
        time.sleep(0.02)
    return time.monotonic() - start, [p for p in pids if _alive(p)]


def _check_clean(run: Run, pids: list[int], sent_at: float) -> None:
    _, alive = _gone_within(pids, STOP_WITHIN - (time.monotonic() - sent_at))
    assert not alive, f"processes {alive} of the run still alive {STOP_WITHIN}s after the signal:\n{run.text()}"
    assert _with_on_command_line(run.marker) == []
    assert run.run_dirs() == [], "the run directory (with its key files) was left behind"
    assert list(run.tmpdir.rglob("*.key_secret")) == []


def _second_run_works(run: Run) -> None:
    ok = subprocess.run([*run.cmd, "ok"], capture_output=True, text=True, env=run.env, timeout=90)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("RESULT [1.0, 4.0, 0.25]") == 2, ok.stdout
    assert run.run_dirs() == []


SIGNALS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_to_the_launcher_stops_the_whole_run(party_logs, mpc_cmd, env, tmp_path, sig):
    run = Run(mpc_cmd, env, tmp_path, "first")
    run.start()
    try:
        pids = run.wait_ready()
        sent_at = time.monotonic()
        os.kill(run.launcher.pid, sig)
        code = run.launcher.wait(STOP_WITHIN)
        party_logs.record("launch", run.text())
        _check_clean(run, pids, sent_at)
    finally:
        if run.launcher.poll() is None or _with_on_command_line(run.marker):
            run.kill()
    assert code == 128 + sig
    name = signal.Signals(sig).name
    assert ("interrupted" if sig == signal.SIGINT else f"stopped by {name}") in run.text()
    _second_run_works(run)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_to_one_party_stops_the_whole_run(party_logs, mpc_cmd, env, tmp_path, sig):
    run = Run(mpc_cmd, env, tmp_path, "first")
    run.start()
    try:
        pids = run.wait_ready()
        sent_at = time.monotonic()
        os.kill(run.party_pid(1), sig)
        code = run.launcher.wait(STOP_WITHIN)
        party_logs.record("launch", run.text())
        _check_clean(run, pids, sent_at)
    finally:
        if run.launcher.poll() is None or _with_on_command_line(run.marker):
            run.kill()
    name = signal.Signals(sig).name
    assert code != 0
    assert f"mpc launch: party 1 exited with code {128 + sig} (stopped by {name})" in run.text()
    _second_run_works(run)


@pytest.mark.timeout(240)
def test_nodes_die_with_a_killed_launcher(party_logs, mpc_cmd, env, tmp_path):
    run = Run(mpc_cmd, env, tmp_path, "first")
    run.start()
    try:
        pids = run.wait_ready()
        os.kill(run.launcher.pid, signal.SIGKILL)  # no clean-up possible: the nodes must notice by themselves
        run.launcher.wait(5)
        _, alive = _gone_within(pids, STOP_WITHIN)
        party_logs.record("launch", run.text())
        assert not alive, f"nodes {alive} outlived the killed launcher"
        assert _with_on_command_line(run.marker) == []
    finally:
        if _with_on_command_line(run.marker):
            run.kill()
        for d in run.run_dirs():  # nobody was left to delete it
            shutil.rmtree(d, ignore_errors=True)
