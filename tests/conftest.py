"""Shared helpers for the three test tiers (see STYLE.md, "Testing multi-party code").

* ``sim``: the thread tier, one thread per party over the in-memory transport,
  with a short receive timeout so that a broken protocol fails fast instead of
  hanging.
* ``party_logs``: the process tier registers each process's output here; when
  a test fails, every party's output is printed with the report.
* ``mpc_command``: how to start the ``mpc`` console script of this environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mpc.config import MPCConfig
from parties.simulator import run_threads

REPO = Path(__file__).resolve().parent.parent

# Receive timeout of the thread tier: long enough for a loaded 2-core machine,
# short enough that a lost message fails the test long before pytest-timeout.
SIM_TIMEOUT = 20.0


# ----- thread tier -----------------------------------------------------------------------

# The protocol families that every user-level test runs under (one test body, STYLE.md).  The
# secure family is checked at every party count and for its costs; ``plaintext`` (values in the
# clear, exact float64) is checked for the same results at fewer party counts.
FAMILIES = ("additive-dealer", "plaintext")
SECURE = "additive-dealer"
PLAINTEXT = "plaintext"


def families(*parties: int) -> list[Any]:
    """``(protocol, n)`` parameters: the secure family at every party count, the others at the first."""
    return [pytest.param(p, n, id=f"{p}-{n}") for p in FAMILIES for n in (parties if p == SECURE else parties[:1])]


@pytest.fixture(params=FAMILIES)
def protocol(request) -> str:
    """The protocol family of a test written once for every family (``sim(fn, n, protocol=protocol)``)."""
    return request.param


def simulate(fn: Callable[[Any], Any], parties: int = 2, *, received: dict | None = None, **options: Any) -> list[Any]:
    """``fn(ctx)`` in ``parties`` threads (plus the dealer thread); results in rank order."""
    options.setdefault("timeout", SIM_TIMEOUT)
    return run_threads(fn, parties, MPCConfig(**options), received=received, join_timeout=4 * options["timeout"])


@pytest.fixture
def sim() -> Callable[..., list[Any]]:
    return simulate


# ----- process tier -------------------------------------------------------------------


def mpc_command() -> list[str]:
    """The ``mpc`` console script next to this interpreter (else the module)."""
    exe = Path(sys.executable).parent / "mpc"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "parties.cli"]


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("MPC_RANK", None)
    env.pop("MPC_CLUSTER", None)
    return env


class Processes:
    """Processes started by one test: killed at the end, their output kept for the report."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.outputs: dict[str, str] = {}
        self._files: dict[str, Path] = {}

    def start(self, name: str, cmd: list[str], log_dir: Path, **kw: Any) -> subprocess.Popen:
        log = log_dir / f"{name.replace(' ', '_')}.log"
        fh = open(log, "wb")  # noqa: SIM115 - closed after the process is reaped
        p = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=kw.pop("env", child_env()), start_new_session=True, **kw
        )
        fh.close()
        self.procs[name], self._files[name] = p, log
        return p

    def record(self, name: str, output: str) -> None:
        self.outputs[name] = output

    def output(self, name: str) -> str:
        path = self._files.get(name)
        if path is not None and path.exists():
            self.outputs[name] = path.read_text("utf-8", "replace")
        return self.outputs.get(name, "")

    def wait_all(self, timeout: float) -> dict[str, tuple[int | None, float]]:
        """Wait until every process exits or ``timeout`` passes: {name: (exit code, wall-clock exit time)}.

        A process still running at the deadline gets ``None`` (and is killed at the end of the test).
        """
        deadline = time.monotonic() + timeout
        done: dict[str, tuple[int | None, float]] = {}
        while len(done) < len(self.procs) and time.monotonic() < deadline:
            for name, p in self.procs.items():
                if name not in done and p.poll() is not None:
                    done[name] = (p.returncode, time.time())
            time.sleep(0.02)
        for name in self.procs:
            done.setdefault(name, (None, time.time()))
        return done

    def wait_for_line(self, name: str, text: str, timeout: float) -> str | None:
        """The first line of ``name``'s output that contains ``text`` (None after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output(name).splitlines():
                if text in line:
                    return line
            if self.procs[name].poll() is not None and text not in self.output(name):
                return None
            time.sleep(0.02)
        return None

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def report(self) -> str:
        for name in self._files:
            self.output(name)
        return "\n".join(f"----- {name} -----\n{text}" for name, text in self.outputs.items())


@pytest.fixture
def party_logs():
    procs = Processes()
    yield procs
    procs.kill_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    procs = getattr(item, "funcargs", {}).get("party_logs")
    if report.failed and isinstance(procs, Processes):
        text = procs.report()
        if text:
            report.sections.append(("parties' output", text))
    return report


@pytest.fixture
def mpc_cmd() -> list[str]:
    return mpc_command()


@pytest.fixture
def env() -> dict[str, str]:
    return child_env()
