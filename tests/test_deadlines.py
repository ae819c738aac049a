"""Every wait in parties/ has a finite deadline (issue 11, item 4).

* A static check: no ``.join()`` or ``.wait()`` without a timeout anywhere in
  ``parties/`` (a planted one proves the check can fail).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
