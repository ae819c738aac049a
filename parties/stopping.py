"""Stopping a run on a signal: SIGINT, SIGTERM or SIGHUP to the launcher or to any one node.

Three pieces, used by ``mpc launch`` and by the ``mpc party`` / ``mpc dealer``
commands it starts:

* ``StopSignals``: while active, the first SIGINT, SIGTERM or SIGHUP raises
  ``Stopped`` (a ``KeyboardInterrupt``) in the main thread, so the clean-up that
  Ctrl-C already gets runs for all three: a node aborts the run (its peers fail
  at once with ``PeerAborted`` naming it) and exits with ``128 + signal``; the
  launcher stops every process it started and deletes the run directory with
  its key files.  Signals that follow are ignored (``hold()`` also ignores the
  first one), so a clean-up in progress is never cut short; the launcher's
  ``SIGKILL`` after its grace period is the backstop.
* ``die_with_parent``: a node started by ``mpc launch`` stops (as if sent
  SIGTERM) when the launcher dies, even by ``SIGKILL``: the kernel's
  ``PR_SET_PDEATHSIG`` on Linux, else a watchdog thread that polls the parent
  pid.  A launcher that died before the request was made is noticed at once.
* ``signal_name``: the name of a signal behind an exit status, for messages.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from types import FrameType

__all__ = ["Stopped", "StopSignals", "die_with_parent", "signal_name", "STOP_SIGNALS"]

STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
PR_SET_PDEATHSIG = 1
WATCHDOG_PERIOD = 0.5


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; ``exit_code`` is the shell's convention, ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Turn the first stop signal into ``Stopped`` in the main thread; restore the old handlers on exit.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self._old: dict[int, object] = {}
        self._holding = False
        self.received: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None or self._holding:
            self.received = self.received or signum
            return
        self.received = signum
        raise Stopped(signum)

    def hold(self) -> None:
        """From now on, record stop signals without raising (a clean-up is running)."""
        self._holding = True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()


def _watchdog(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_PERIOD)
    os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent(parent: int) -> None:
    """Receive SIGTERM when process ``parent`` (this process's parent) dies."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        threading.Thread(target=_watchdog, args=(parent,), name="mpc-parent-watchdog", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the request: nobody will signal
        os.kill(os.getpid(), signal.SIGTERM)
