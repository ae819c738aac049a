"""The running digest of a party's public transcript: programs checked to match across parties.

Every user-level operation (an entry of the operation table, ``mpc.share``,
a reveal) is recorded before it runs: its name, its public description (the
shapes and dtypes of its secret operands, the encodings of its public
constants, owners, the recipients of a reveal) and the call site in the user's
script.  The digest is a chained BLAKE2b of the records (8 bytes); every
message carries the sender's operation count and digest in its header
(``parties.wire``), so a receiver whose own transcript differs knows at once
that the programs diverged, and the two parties exchange their records since
the last point they agreed on to name the first operation that differs
(``parties.comm_base``).

Nothing secret is recorded: shapes, dtypes, owners and public constants are
public by the security model.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass

__all__ = ["Transcript", "Record", "DIGEST_BYTES", "first_difference"]

DIGEST_BYTES = 8
KEEP = 512  # records kept for the explanation of a divergence
TEXT_LIMIT = 300


@dataclass(frozen=True)
class Record:
    index: int
    name: str
    text: str
    site: str

    def line(self) -> str:
        return f"{self.index}\t{self.name}\t{self.text}\t{self.site}"

    @staticmethod
    def parse(line: str) -> Record | None:
        parts = line.split("\t")
        if len(parts) != 4 or not parts[0].isdigit():
            return None
        return Record(int(parts[0]), parts[1][:64], parts[2][:TEXT_LIMIT], parts[3][:200])

    def describe(self) -> str:
        return f"#{self.index} {self.text} at {self.site}"


class Transcript:
    """A party's count of operations, the digest over them, and the latest records."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = bytes(DIGEST_BYTES)
        self.depth = 0  # > 0 while an operation runs: its inner operations are part of it
        self._log: deque[Record] = deque(maxlen=KEEP)

    def record(self, name: str, text: str, site: str) -> None:
        text = text.replace("\t", " ").replace("\n", " ")[:TEXT_LIMIT]
        self.count += 1
        h = hashlib.blake2b(self.digest, digest_size=DIGEST_BYTES)
        h.update(text.encode("utf-8", "replace"))
        self.digest = h.digest()
        self._log.append(Record(self.count, name, text, site.replace("\t", " ")))

    def since(self, index: int) -> list[Record]:
        """The kept records after operation ``index``."""
        return [r for r in self._log if r.index > index]


def first_difference(mine: list[Record], theirs: list[Record]) -> tuple[Record | None, Record | None]:
    """The first pair of records (by index) that differ; a side with no record there gives None."""
    a = {r.index: r for r in mine}
    b = {r.index: r for r in theirs}
    # Each side sent its records since the last point it knew both agreed on: compare where both have records.
    low = max(min(a, default=0), min(b, default=0))
    for i in sorted(i for i in set(a) | set(b) if i >= low):
        ra, rb = a.get(i), b.get(i)
        if ra is None or rb is None or ra.text != rb.text:
            return ra, rb
    return None, None
