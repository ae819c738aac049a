"""Naming the first operation at which two parties' programs diverge (the transcript check's second half).

Every frame carries its sender's operation count and transcript digest
(``parties.wire``, ``mpc.transcript``).  When a receiver's own transcript
differs, it sends the peer its records since the last operation on which they
agreed (a ``KIND_DESYNC`` frame of text lines), the peer answers with its own,
and both raise ``DesyncError`` naming the first operation that differs, with
each side's description and call site.  Peer text is sanitised (control
characters escaped, length bounded) before it reaches a message.
"""

from __future__ import annotations

import torch

from mpc.transcript import Record, first_difference

__all__ = ["encode_records", "decode_records", "explain", "clean", "DESYNC_BYTES"]

DESYNC_BYTES = 16_384
MAX_RECORDS = 64


def clean(text: str, limit: int = 300) -> str:
    """Peer-controlled text made safe to print: control characters escaped, length bounded."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out if len(text) <= limit else out + "..."


def encode_records(records: list[Record]) -> torch.Tensor:
    lines = [r.line() for r in records[-MAX_RECORDS:]]
    data = "\n".join(lines).encode("utf-8", "replace")
    while len(data) > DESYNC_BYTES and lines:
        lines = lines[1:]
        data = "\n".join(lines).encode("utf-8", "replace")
    return torch.frombuffer(bytearray(data or b"-"), dtype=torch.uint8)


def decode_records(payload: bytes) -> list[Record]:
    text = bytes(payload[:DESYNC_BYTES]).decode("utf-8", "replace")
    out = []
    for line in text.split("\n")[:MAX_RECORDS]:
        r = Record.parse(line)
        if r is not None:
            out.append(Record(r.index, clean(r.name, 64), clean(r.text), clean(r.site, 200)))
    return out


def explain(me: str, peer: str, count: int, mine: list[Record], theirs: list[Record] | None) -> str:
    """The DesyncError text: where the programs of ``me`` and ``peer`` part, as both sides describe it."""
    head = f"the programs of {me} and {peer} diverge"
    if theirs is None:
        last = mine[-1].describe() if mine else f"#{count} (no operation recorded)"
        return (
            f"{head} at or before operation {last}: their public transcripts differ, and {peer} did not describe "
            "its operations in time; run the same script with the same public values at every party"
        )
    a, b = first_difference(mine, theirs)
    if a is None and b is None:
        return f"{head} before the records both still keep (more than {MAX_RECORDS} operations back)"
    index = (a or b).index  # type: ignore[union-attr]
    here = f"ran {a.text} at {a.site}" if a else "had no such operation (its program ended or took another path)"
    there = f"ran {b.text} at {b.site}" if b else "had no such operation (its program ended or took another path)"
    return f"{head} at operation #{index} ({(a or b).name}): {me} {here}; {peer} {there}"  # type: ignore[union-attr]
