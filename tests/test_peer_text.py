"""Peer-controlled text (abort reasons, operation names) reaches logs and terminals only escaped and bounded.

A hostile but authenticated peer sends an abort notice with a terminal escape
(``\\x1b[2J``), a carriage return, a fake ``[party 0] all good`` line and 10 kB
of text, or an operation name with control characters.  The receiving party's
error is one printable line of bounded length; through ``mpc launch`` the
launcher's output holds no raw control character and no line that a node did
not print under its own prefix.
"""

from __future__ import annotations

import io
import subprocess

import pytest
import torch

from mpc.context import Expect
from mpc.errors import PeerAborted, WireError
from parties import wire
from parties.comm_base import abort_reason
from parties.launch import LINE_LIMIT, _pump, printable_line
from parties.memory import MemoryCommunicator, MemoryHub

NASTY = "\x1b[2J\r\n[party 0] all good\n" + "A" * 10_000
HEADER = wire._FMT  # the raw layout, to write what encode_header refuses


def _printable(text: str) -> bool:
    return all(c.isprintable() for c in text)


def _party0() -> tuple[MemoryHub, MemoryCommunicator]:
    hub = MemoryHub(2, dealer=False)
    return hub, MemoryCommunicator(hub, 0, 5.0, 1 << 20)


@pytest.mark.timeout(30)
def test_abort_reason_from_a_peer_is_escaped_and_bounded():
    hub, c0 = _party0()
    payload = NASTY.encode()
    header = wire.encode_header(wire.KIND_ABORT, 1, 0, "abort", torch.uint8, (len(payload),), len(payload))
    hub.boxes[0].put((header, payload, 1))  # the memory transport authenticates party 1
    with pytest.raises(PeerAborted) as info:
        c0.exchange("mul", {}, {1: Expect((2,), torch.int64)})
    text = str(info.value)
    assert _printable(text) and "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "\\x1b[2J\\r\\n[party 0] all good\\n" in text  # shown, escaped
    assert len(text) < 2 * wire.OP_BYTES + 4 * 400, len(text)
    forwarded = abort_reason(info.value, "party 0")  # what party 0 passes on to the others
    assert _printable(forwarded) and len(forwarded) <= len(text)
    # Control: the raw text would have broken the line.
    assert not _printable(NASTY)


@pytest.mark.timeout(30)
def test_operation_name_with_control_characters_is_refused():
    hub, c0 = _party0()
    fields = list(HEADER.unpack(wire.encode_header(wire.KIND_DATA, 1, 0, "mul", torch.int64, (2,), 16)))
    fields[8] = b"ok\r\x1b[2J\n[party 0] all good"[: wire.OP_BYTES]
    hub.boxes[0].put((HEADER.pack(*fields), bytes(16), 1))
    with pytest.raises(WireError) as info:
        c0.exchange("mul", {}, {1: Expect((2,), torch.int64)})
    text = str(info.value)
    assert "control characters" in text and _printable(text), text
    # Our own side refuses to send such a name, too.
    with pytest.raises(Exception, match="control characters"):
        wire.encode_header(wire.KIND_DATA, 0, 0, "a\nb", torch.int64, (2,), 16)


def test_launcher_lines_are_escaped_and_bounded():
    assert printable_line("a\rb\x1b[2Jc\td") == "a\\rb\\x1b[2Jc\td"
    assert printable_line("x" * 50, limit=10) == "x" * 10 + "... (40 more characters)"
    out = io.StringIO()
    _pump(io.BytesIO(b"fine\r\n\x1b[2J\r[party 0] all good\n" + b"B" * (3 * LINE_LIMIT) + b"\n"), "[party 1] ", out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[party 1] fine"
    # a carriage return redraws the line (progress bars): the line shows what it ends as, always after the
    # node's prefix, so it cannot pass for another node's line
    assert lines[1] == "[party 1] [party 0] all good"
    out = io.StringIO()
    _pump(io.BytesIO(b"epoch 1:  10%\repoch 1:  50%\repoch 1: 100%\x1b[2J\n"), "[party 0] ", out)
    assert out.getvalue() == "[party 0] epoch 1: 100%\\x1b[2J\n"
    assert all(ln.startswith("[party 1] ") and len(ln) <= LINE_LIMIT + 20 for ln in lines)
    assert _printable(out.getvalue().replace("\n", ""))


ABORTER = r"""
import time

import torch

import mpc
from parties import wire

ctx = mpc.init()
x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
if ctx.rank == 1:
    nasty = ("\x1b[2J\r\n[party 0] all good\n" + "A" * 10_000).encode()
    ctx.comm._send(0, wire.KIND_ABORT, "abort", torch.frombuffer(bytearray(nasty), dtype=torch.uint8))
    time.sleep(60)  # party 0 reports the abort; the launcher then stops this party
print("PRODUCT", (x * x).reveal().tolist(), flush=True)
"""


@pytest.mark.timeout(120)
def test_hostile_abort_through_mpc_launch(party_logs, mpc_cmd, env, tmp_path):
    script = tmp_path / "aborter.py"
    script.write_text(ABORTER)
    run = subprocess.run(
        [*mpc_cmd, "launch", "-n", "2", "--timeout", "20", str(script)],
        capture_output=True,
        env=env,
        timeout=100,
    )
    stdout, stderr = run.stdout.decode(), run.stderr.decode()
    party_logs.record("launch", stdout + stderr)
    assert run.returncode != 0
    assert "PeerAborted: party 1 failed and stopped the run: \\x1b[2J\\r\\n[party 0] all good\\n" in stdout
    for text in (stdout, stderr):
        assert _printable(text.replace("\n", "")), "a raw control character reached the launcher's output"
        assert all(len(ln) < 4000 for ln in text.splitlines())
    for ln in stdout.splitlines():
        assert ln.startswith(("[party 0] ", "[party 1] ", "[dealer] ")), ln
        assert not ln.startswith("[party 0] all good")
    assert all(ln.startswith("mpc launch: ") for ln in stderr.splitlines()), stderr
