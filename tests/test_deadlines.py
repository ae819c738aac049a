"""Every wait in parties/ has a finite deadline (issue 11, item 4).

* A static check: no ``.join()`` or ``.wait()`` without a timeout anywhere in
  ``parties/`` (a planted one proves the check can fail).
* pyzmq's ``ThreadAuthenticator.stop()`` joins its thread without a timeout;
  the communicator's own stop gives up after ``AUTH_STOP`` seconds and then
  does not terminate the context (which would wait for the thread's sockets).
"""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import pytest

from parties import zmq_comm

PARTIES = Path(__file__).resolve().parent.parent / "parties"
BLOCKING = {"join", "wait"}


def _unbounded_waits(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in BLOCKING
            and not node.args
            and not node.keywords
        ):
            found.append(f"{where}:{node.lineno}: .{node.func.attr}() without a timeout")
    return found


@pytest.mark.timeout(30)
def test_no_wait_without_a_timeout_in_parties():
    found = []
    for path in sorted(PARTIES.glob("*.py")):
        found += _unbounded_waits(path.read_text(), path.name)
    assert found == []
    # Control: the check sees a planted one.
    assert _unbounded_waits("t.join()\np.wait(5)\n','.join(x)\nev.wait()\n", "planted.py") == [
        "planted.py:1: .join() without a timeout",
        "planted.py:4: .wait() without a timeout",
    ]


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, flags: int = 0) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


class _StuckAuth:
    """An authenticator whose thread ignores TERMINATE."""

    def __init__(self, release: threading.Event) -> None:
        self.pipe = _Pipe()
        self.thread = threading.Thread(target=release.wait, args=(30,), daemon=True)
        self.thread.start()


@pytest.mark.timeout(30)
def test_a_stuck_authenticator_does_not_hang_the_close(monkeypatch):
    monkeypatch.setattr(zmq_comm, "AUTH_STOP", 0.3)
    release = threading.Event()
    auth = _StuckAuth(release)
    start = time.monotonic()
    try:
        assert zmq_comm._stop_authenticator(auth) is False  # type: ignore[arg-type]
        assert time.monotonic() - start < 2.0 and auth.pipe.sent == [b"TERMINATE"]
    finally:
        release.set()
        auth.thread.join(5)
