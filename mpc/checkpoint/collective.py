"""``mpc.save`` and ``mpc.load``: each party writes and reads its own file; the parties agree before any share is used.

Both are collective: every party calls them at the same point of its program
(they enter the transcript like any operation), each with its own path.

``save`` (one round, 16 random bytes and a few public numbers per peer): the
parties exchange the step, the lineage, the fingerprint of what they save and
a fresh nonce each; different steps, lineages or objects are refused at every
party.  The hash of the nonces is the save's ``tag``, the same in every
party's file of this save; a save without a ``lineage`` starts one (the tag).
Then each party writes its own file atomically (``fileformat``).

``load`` (one round of public metadata): each party reads and checks its own
file first (``checks.check``: format, checksum, version, that it is this party's file,
for this number of parties, protocol family and fixed-point precision, and,
with ``into``, of the same model: module structure, parameter names, shapes
and dtypes, optimizer class and hyperparameters).  Then the parties exchange
what they found (a problem, or the file's lineage, step, tag and fingerprint)
and every party refuses, naming the party and the reason, unless every file
is fine and all come from the same save of the same training.  Only then are
shares rebuilt.

The header (the file's public metadata, JSON): ``format``, ``version``,
``party``, ``world_size``, ``protocol``, ``secure`` (false for the plaintext
family, whose "shares" are the values), ``frac_bits``, ``lineage`` (the
training's id, 32 hex digits), ``tag`` (the save's id), ``step``,
``fingerprint`` (of all saved objects), ``objects`` (each one's public
description, ``mpc.checkpoint.entries``) and ``entries`` (the stored tensors).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..api import current_context
from ..context import Expect, PartyContext
from ..errors import CheckpointError, ProtocolError
from ..ops import record
from .checks import FORMAT_NAME, HEX_ID, check, clean
from .entries import Layout, Saveable, context_of, layout, objects_of, rebuild, share_entry
from .entries import restore as restore_objects
from .fileformat import FORMAT_VERSION, CheckpointFile, read_file, write_atomic

__all__ = ["save", "load", "read_header", "gather", "agree", "refuse_problems", "new_id", "open_checked", "restore"]

NONCE_BYTES = 16
MAX_MESSAGE = 1 << 20


def new_id(nonces: list[str], person: bytes) -> str:
    """A 16-byte id (hex) that no party chose alone: the hash of every party's nonce, in rank order."""
    h = hashlib.blake2b(digest_size=16, person=person)
    for n in nonces:
        h.update(str(n).encode("ascii", "replace"))
    return h.hexdigest()


def gather(ctx: PartyContext, op: str, mine: dict[str, Any]) -> list[dict[str, Any]]:
    """One round: every party's public JSON message, in rank order (``mine`` at this party's place)."""
    raw = json.dumps(mine, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) > MAX_MESSAGE:
        raise CheckpointError(f"party {ctx.rank}'s checkpoint message would take {len(raw)} bytes, over {MAX_MESSAGE}")
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()
    peers = [j for j in range(ctx.world_size) if j != ctx.rank]
    got = ctx.comm.exchange(op, {j: t for j in peers}, {j: Expect(None, torch.uint8) for j in peers})
    out: list[dict[str, Any]] = []
    for j in range(ctx.world_size):
        if j == ctx.rank:
            out.append(mine)
            continue
        msg = got[j]
        try:
            if msg.dim() != 1 or msg.numel() > MAX_MESSAGE:
                raise ValueError
            value = json.loads(bytes(msg.numpy().tobytes()).decode("utf-8"))
            if not isinstance(value, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise CheckpointError(f"party {j} sent a malformed checkpoint message (for {op})") from None
        out.append(value)
    return out


def _differ(table: list[dict[str, Any]], key: str) -> bool:
    return len({json.dumps(m.get(key), sort_keys=True) for m in table}) > 1


def _each(table: list[dict[str, Any]], fmt: Any) -> str:
    return ", ".join(f"party {j} {fmt(m)}" for j, m in enumerate(table))


# ----- save ----------------------------------------------------------------------------------------------------


def save(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    step: int = 0,
    lineage: str | None = None,
    ctx: PartyContext | None = None,
) -> Path:
    """Write this party's shares of ``obj`` and public metadata to ``path`` (collective: every party calls it).

    ``obj``: a ``SecretTensor``, an ``mpc.nn.Module``, an ``mpc.optim.Optimizer``
    or a dict of them (``{"model": model, "optimizer": opt}``).  ``step``: a
    public count stored in the header.  ``lineage``: the training this save
    belongs to (``mpc.Checkpointer`` keeps one); None starts a new one.  The
    file holds this party's shares only (never another party's, nor any
    input), is written atomically with mode 0600, and ends with a checksum.
    Returns the path.  Refused at every party (``CheckpointError``) when the
    parties save different steps, lineages or objects.
    """
    objs = objects_of(obj)
    lay = layout(objs)
    ctx = context_of(objs) if ctx is None else ctx
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ProtocolError(f"checkpoint: step must be a non-negative integer, got {step!r}")
    if lineage is not None and (not isinstance(lineage, str) or not HEX_ID.match(lineage)):
        raise ProtocolError(f"checkpoint: lineage must be 32 lowercase hex digits or None, got {lineage!r}")
    record(ctx, "checkpoint.save", f"save({', '.join(o['type'] for o in lay.objects)})")
    nonce = os.urandom(NONCE_BYTES).hex()
    table = gather(ctx, "checkpoint:save", {"step": step, "lineage": lineage, "fingerprint": lay.fingerprint,
                                            "nonce": nonce})  # fmt: skip
    if _differ(table, "step"):
        raise CheckpointError(f"the parties save different steps ({_each(table, lambda m: clean(m.get('step'), 20))}): "
                              "every party must save the same step")  # fmt: skip
    if _differ(table, "lineage"):
        raise CheckpointError(
            f"the parties save into different trainings ({_each(table, lambda m: clean(m.get('lineage'), 40))}): "
            "every party must continue the same training"
        )
    if _differ(table, "fingerprint"):
        raise CheckpointError("the parties save different models or optimizers (their structures, shapes or "
                              "hyperparameters differ): every party must save the same objects")  # fmt: skip
    tag = new_id([m.get("nonce") for m in table], b"mpc-ckpt-tag")
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "party": ctx.rank,
        "world_size": ctx.world_size,
        "protocol": ctx.config.protocol,
        "secure": bool(getattr(ctx.family, "secure", True)),
        "frac_bits": ctx.config.frac_bits,
        "lineage": lineage or tag,
        "tag": tag,
        "step": step,
        "fingerprint": lay.fingerprint,
        "objects": lay.objects,
    }
    entries, tensors = [], []
    for name, v in zip(lay.names, lay.values):
        kind, dtype, stored = share_entry(v)
        entries.append({"name": name, "kind": kind, "dtype": dtype, "shape": list(stored.shape)})
        tensors.append(stored)
    target = Path(path)
    try:
        write_atomic(target, header, entries, tensors)
    except OSError as exc:
        raise CheckpointError(f"party {ctx.rank} cannot write the checkpoint {target}: {exc.strerror or exc}") from None
    return target


# ----- load ----------------------------------------------------------------------------------------------------


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The public metadata of a checkpoint file, after its format and checksum are checked (local: no messages)."""
    f = read_file(path)
    return {k: v for k, v in f.header.items() if k != "entries"}


def refuse_problems(table: list[dict[str, Any]], rank: int) -> None:
    """Raise, at every party, the problems that parties found with their own files (this party's own in full)."""
    problems = {j: m.get("problem") for j, m in enumerate(table) if m.get("problem")}
    if not problems:
        return
    others = sorted(j for j in problems if j != rank)
    if rank in problems:
        tail = f" (parties {others} refused their own files too)" if others else ""
        raise CheckpointError(f"checkpoint refused at party {rank}: {problems[rank]}{tail}")
    raise CheckpointError("checkpoint refused at " + "; ".join(f"party {j}: {clean(problems[j])}" for j in others))


def agree(table: list[dict[str, Any]], rank: int) -> None:
    """Refuse, at every party alike, unless every party's file is fine and all come from one save."""
    refuse_problems(table, rank)
    files = _each(table, lambda m: f"({clean(m.get('file'), 200)})")
    if _differ(table, "lineage"):
        raise CheckpointError(
            "the parties' files belong to different trainings, a file of another run: "
            + _each(table, lambda m: f"lineage {clean(m.get('lineage'), 40)} ({clean(m.get('file'), 200)})")
            + "; give every party its own file of the same training"
        )
    if _differ(table, "step"):
        raise CheckpointError(
            "the parties would resume from different steps: "
            + _each(table, lambda m: f"from step {clean(m.get('step'), 20)} ({clean(m.get('file'), 200)})")
            + "; give every party its file of the same step"
        )
    if _differ(table, "tag"):
        raise CheckpointError(
            f"the parties' files of step {clean(table[rank].get('step'), 20)} were written by different saves {files}: "
            "one is left over from an earlier attempt of this training; give every party its file of one save"
        )
    if _differ(table, "fingerprint"):
        raise CheckpointError(f"the parties' files hold different models or optimizers {files}")


def open_checked(
    ctx: PartyContext, path: Path, live: Layout | None, step: int | None, lineage: str | None
) -> tuple[CheckpointFile | None, dict[str, Any]]:
    """This party's file, checked, and the message it sends to the others (its problem or its identity)."""
    try:
        f = read_file(path)
        check(ctx, f, live, step=step, lineage=lineage)
    except CheckpointError as exc:
        return None, {"problem": str(exc), "file": str(path)}
    h = f.header
    return f, {"lineage": h["lineage"], "step": h["step"], "tag": h["tag"], "fingerprint": h["fingerprint"],
               "file": str(path)}  # fmt: skip


def load(
    path: str | os.PathLike[str],
    into: Any = None,
    *,
    step: int | None = None,
    lineage: str | None = None,
    ctx: PartyContext | None = None,
) -> Any:
    """Read this party's shares back from ``path`` (collective: every party calls it with its own file).

    ``into``: the objects to restore in place, as they were saved (a
    ``SecretTensor``, a module, an optimizer, or a dict of them); they must
    have the saved structure (``CheckpointError`` says what differs).  Returns
    ``into``; without it, a saved tensor as a ``SecretTensor``, a module as its
    state dict, an optimizer as its ``state_dict()``, a dict as a dict of those.
    ``step`` and ``lineage`` (optional) are what the file must hold.

    Refused at every party, before any share is used, when any party's file is
    missing, truncated, corrupted, of an unknown format version, another
    party's, of another number of parties, protocol or precision, of another
    model, or when the files are of different trainings, steps or saves.
    """
    objs = objects_of(into) if into is not None else None
    live = layout(objs) if objs is not None else None
    if ctx is None:
        ctx = context_of(objs) if objs is not None else current_context()
    record(ctx, "checkpoint.load", "load()")
    f, mine = open_checked(ctx, Path(path), live, step, lineage)
    agree(gather(ctx, "checkpoint:load", mine), ctx.rank)
    assert f is not None  # agree() refuses when any party, this one included, found a problem
    return restore(ctx, f, objs)


def restore(ctx: PartyContext, f: CheckpointFile, objs: dict[str, Saveable] | None) -> Any:
    """Rebuild the shares of a checked file (after the parties agreed) and restore them."""
    values = {e.name: rebuild(ctx, e, f.tensor(e)) for e in f.entries}
    return restore_objects(f.header["objects"], values, objs)
