"""This party's checks of its own checkpoint file, after the format's (``fileformat``) and before any exchange.

``check`` refuses, naming the file: a header that does not describe this
format; another party's file; a file of another number of parties, protocol
family or fixed-point precision; another lineage or step than asked for;
object descriptions whose fingerprints or entries do not match (a crafted or
damaged header under a valid checksum); and, given the live objects, another
model or optimizer (``entries.difference`` says where).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..context import PartyContext
from ..errors import CheckpointError
from .entries import Layout, difference, object_fingerprint
from .fileformat import CheckpointFile, Entry

__all__ = ["check", "clean", "FORMAT_NAME", "HEX_ID"]

FORMAT_NAME = "mpc-torch checkpoint"
TEXT_LIMIT = 600
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def clean(text: Any, limit: int = TEXT_LIMIT) -> str:
    """A peer's text made safe to print: control characters escaped, length bounded."""
    text = str(text)
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out if len(text) <= limit else out + "..."


def _field(f: CheckpointFile, key: str, kind: type | tuple[type, ...]) -> Any:
    v = f.header.get(key)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise CheckpointError(f"{f.path} is malformed: its header has no valid {key!r}")
    return v


def check(
    ctx: PartyContext,
    f: CheckpointFile,
    live: Layout | None,
    *,
    step: int | None = None,
    lineage: str | None = None,
) -> None:
    """This party's checks of its own file (local; ``CheckpointError`` naming the file and the problem)."""
    p = f.path
    if f.header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{p} is malformed: its header does not name the {FORMAT_NAME} format")
    party, world = _field(f, "party", int), _field(f, "world_size", int)
    protocol, frac = _field(f, "protocol", str), _field(f, "frac_bits", int)
    lin, tag, at = _field(f, "lineage", str), _field(f, "tag", str), _field(f, "step", int)
    objects = _field(f, "objects", list)
    if party != ctx.rank:
        raise CheckpointError(
            f"{p} is party {party}'s file, not party {ctx.rank}'s: each party loads only its own shares "
            f"(its own directory, e.g. .../party{ctx.rank}/)"
        )
    if world != ctx.world_size:
        raise CheckpointError(f"{p} was written in a run of {world} parties, this run has {ctx.world_size}")
    if protocol != ctx.config.protocol:
        raise CheckpointError(f"{p} was written under the protocol family {clean(protocol, 40)}, this run uses "
                              f"{ctx.config.protocol}")  # fmt: skip
    if frac != ctx.config.frac_bits:
        raise CheckpointError(f"{p} was written with {frac} fractional bits, this run uses {ctx.config.frac_bits}")
    if not HEX_ID.match(lin) or not HEX_ID.match(tag) or at < 0:
        raise CheckpointError(f"{p} is malformed: invalid lineage, tag or step")
    if lineage is not None and lin != lineage:
        raise CheckpointError(f"{p} belongs to another training (lineage {lin}), not to {lineage}")
    if step is not None and at != step:
        raise CheckpointError(f"{p} holds step {at}, not step {step}")
    _check_objects(ctx, f, objects)
    if live is not None:
        saved = {o["name"]: o for o in objects}
        here = {o["name"]: o for o in live.objects}
        if sorted(saved) != sorted(here):
            raise CheckpointError(f"{p} holds the objects {sorted(saved)}, this program loads {sorted(here)}")
        for name, o in here.items():
            if saved[name]["fingerprint"] != o["fingerprint"]:
                raise CheckpointError(f"{p} holds another model: {difference(saved[name], o)}")


def _check_objects(ctx: PartyContext, f: CheckpointFile, objects: list[Any]) -> None:
    """The header's object descriptions are well formed and its entries are exactly theirs."""
    p = f.path
    secure_kinds = {"plain"} if ctx.config.protocol == "plaintext" else {"additive", "binary"}
    by_name = {e.name: e for e in f.entries}
    if len(by_name) != len(f.entries):
        raise CheckpointError(f"{p} is malformed: two entries have the same name")
    claimed: set[str] = set()
    for o in objects:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or o.get("type") not in (
            "tensor", "module", "optimizer"
        ):  # fmt: skip
            raise CheckpointError(f"{p} is malformed: an object description is invalid")
        try:
            if object_fingerprint(o) != o.get("fingerprint"):
                raise ValueError
            expected = _expected_entries(o, by_name)
        except (TypeError, ValueError, KeyError, AttributeError):
            raise CheckpointError(f"{p} is malformed: the description of {o['name'] or 'its object'!r} is "
                                  "inconsistent") from None  # fmt: skip
        for name, (secret, shape, dtype) in expected.items():
            e = by_name.get(name)
            kinds = secure_kinds if secret == "secret" else {"public"}
            if e is None or list(e.shape) != list(shape) or e.dtype != dtype or e.kind not in kinds:
                raise CheckpointError(f"{p} is malformed: entry {name!r} does not match its description")
        claimed |= set(expected)
    if claimed != set(by_name):
        raise CheckpointError(f"{p} is malformed: it holds entries that no object describes")


def _expected_entries(o: dict[str, Any], by_name: Mapping[str, Entry]) -> dict[str, tuple[str, list[int], str]]:
    """Entry name -> (secret|public, shape, dtype) that an object's description calls for."""
    prefix = f"{o['name']}." if o["name"] else ""
    if o["type"] == "tensor":
        return {o["name"] or "value": ("secret", o["shape"], o["dtype"])}
    if o["type"] == "module":
        return {prefix + k: (s, shape, dtype) for k, s, shape, dtype in o["state"]}
    params = [q for g in o["groups"] for q in g["params"]]
    out: dict[str, tuple[str, list[int], str]] = {}
    for name, e in by_name.items():
        if name.startswith(prefix + "state."):
            i = _state_index(name[len(prefix) :], len(params))
            # a secret buffer has its parameter's shape (not always its dtype: Adam's averages are float64)
            out[name] = ("public", list(e.shape), e.dtype) if e.kind == "public" else ("secret", params[i][0], e.dtype)
    for key, value in o["scalars"].items():
        _state_index(key, len(params))
        if not isinstance(value, int | float):
            raise ValueError(key)
    return out


def _state_index(key: str, count: int) -> int:
    """The parameter index of an optimizer state key ``state.<i>.<name>``; ValueError for anything else."""
    parts = key.split(".", 2)
    if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or not parts[2] or int(parts[1]) >= count:
        raise ValueError(key)
    return int(parts[1])
