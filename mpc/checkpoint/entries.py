"""What a checkpoint holds of secret tensors, modules and optimizers: named tensors and public descriptions.

A saved object is flattened into named entries and a public description:

* a ``SecretTensor``: one entry (this party's share) and its shape and dtype;
* an ``mpc.nn.Module``: its ``state_dict()`` (parameters and buffers, in the
  module's own order, torch's keys), and its structure: every sub-module's path
  and class, every entry's key, secrecy, shape and dtype;
* an ``mpc.optim.Optimizer``: its ``state_dict()``'s secret state (momentum
  buffers, Adam's averages) as entries ``state.<i>.<key>``, its public
  counters (Adam's step) as numbers in the description, and its class,
  hyperparameters and parameter shapes.

The fingerprint of an object is a BLAKE2b hash of its description without
the parts that change as it trains (values, counters): a file of another model
or optimizer (another layer, shape or learning rate) has another fingerprint,
and ``difference`` says where the two differ.

Share objects are read and rebuilt here alone (``share_entry``, ``rebuild``):
a ring share stores its int64 tensor, whose public-part rule is the party's
(``mpc.shares.holds_public``), so a share is rebuilt only at the party that
wrote it; the plaintext family stores its float64 value.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..api import current_context
from ..context import PartyContext
from ..errors import ProtocolError
from ..nn.module import Module, assign_
from ..optim.optimizer import Optimizer
from ..shares import AdditiveShare, BinaryShare, PlainShare, holds_public
from ..tensor import SecretTensor
from .fileformat import DTYPE_NAMES, DTYPES, Entry

__all__ = [
    "Saveable",
    "Layout",
    "objects_of",
    "context_of",
    "layout",
    "object_fingerprint",
    "share_entry",
    "rebuild",
    "restore",
    "difference",
]

Saveable = SecretTensor | Module | Optimizer
Value = SecretTensor | torch.Tensor


def objects_of(obj: Any) -> dict[str, Saveable]:
    """The named objects to save: ``{"": obj}`` for one object, the mapping's items for a mapping of them."""
    if isinstance(obj, SecretTensor | Module | Optimizer):
        return {"": obj}
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Saveable] = {}
        for k, v in obj.items():
            if not isinstance(k, str) or not k or "." in k:
                raise ProtocolError(f"checkpoint: object names must be non-empty strings without '.', got {k!r}")
            if not isinstance(v, SecretTensor | Module | Optimizer):
                raise ProtocolError(
                    f"checkpoint: {k!r} is a {type(v).__name__}; a checkpoint holds secret tensors, "
                    "mpc.nn modules and mpc.optim optimizers"
                )
            out[k] = v
        return out
    raise ProtocolError(
        f"checkpoint: cannot save a {type(obj).__name__}: give a SecretTensor, an mpc.nn.Module, an "
        "mpc.optim.Optimizer, or a dict of them (e.g. {'model': model, 'optimizer': opt})"
    )


def context_of(objs: Mapping[str, Saveable]) -> PartyContext:
    """The party context of the first secret tensor among ``objs`` (else the current one)."""
    for obj in objs.values():
        if isinstance(obj, SecretTensor):
            return obj.ctx
        if isinstance(obj, Module):
            tensors = obj.state_dict().values()
        else:
            tensors = (p for g in obj.param_groups for p in g["params"])
        for t in tensors:
            if isinstance(t, SecretTensor):
                return t.ctx
    return current_context()


def _join(name: str, key: str) -> str:
    return ".".join(p for p in (name, key) if p) or "value"


def _hash(desc: Any) -> str:
    text = json.dumps(desc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.blake2b(text.encode(), digest_size=16, person=b"mpc-ckpt-model").hexdigest()


def object_fingerprint(desc: Mapping[str, Any]) -> str:
    """The fingerprint of an object's description: all of it but its name and its counters."""
    return _hash({k: v for k, v in desc.items() if k not in ("name", "fingerprint", "scalars")})


def _meta(v: Value) -> list[Any]:
    """``[secret|public, shape, dtype]`` of one value."""
    if isinstance(v, SecretTensor):
        return ["secret", list(v.shape), DTYPE_NAMES.get(v.dtype, str(v.dtype))]
    if isinstance(v, torch.Tensor):
        return ["public", list(v.shape), DTYPE_NAMES.get(v.dtype, str(v.dtype))]
    raise ProtocolError(f"checkpoint: cannot store a {type(v).__name__} (secret or public tensors only)")


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ProtocolError(f"checkpoint: {where} is {value}, which a checkpoint cannot hold")
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    raise ProtocolError(f"checkpoint: {where} is a {type(value).__name__}; only numbers, strings and lists are kept")


@dataclass(frozen=True)
class Layout:
    """The public descriptions of the saved objects, and the tensors to store, by entry name."""

    objects: list[dict[str, Any]]
    names: list[str]
    values: list[Value]

    @property
    def fingerprint(self) -> str:
        return _hash([[o["name"], o["fingerprint"]] for o in self.objects])


def _module(name: str, m: Module) -> tuple[dict[str, Any], list[tuple[str, Value]]]:
    items = list(m.state_dict().items())
    desc = {
        "type": "module",
        "class": type(m).__name__,
        "modules": [[path, type(sub).__name__] for path, sub in m.named_modules()],
        "state": [[k, *_meta(v)] for k, v in items],
    }
    return {"name": name, **desc, "fingerprint": object_fingerprint(desc)}, items


def _optimizer(name: str, opt: Optimizer) -> tuple[dict[str, Any], list[tuple[str, Value]]]:
    sd = opt.state_dict()
    params = [p for g in opt.param_groups for p in g["params"]]
    groups = []
    for g in sd["param_groups"]:
        hyper = {k: _jsonable(v, f"{type(opt).__name__}'s {k}") for k, v in sorted(g.items()) if k != "params"}
        groups.append({"hyper": hyper, "params": [_meta(params[i])[1:] for i in g["params"]]})
    items: list[tuple[str, Value]] = []
    scalars: dict[str, Any] = {}
    for i, st in sorted(sd["state"].items()):
        for k, v in sorted(st.items()):
            key = f"state.{i}.{k}"
            if isinstance(v, SecretTensor | torch.Tensor):
                items.append((key, v))
            else:
                scalars[key] = _jsonable(v, f"{type(opt).__name__}'s {key}")
    desc = {"type": "optimizer", "class": type(opt).__name__, "groups": groups}
    return {"name": name, **desc, "fingerprint": object_fingerprint(desc), "scalars": scalars}, items


def _tensor(name: str, t: SecretTensor) -> tuple[dict[str, Any], list[tuple[str, Value]]]:
    _, shape, dtype = _meta(t)
    desc = {"type": "tensor", "shape": shape, "dtype": dtype}
    return {"name": name, **desc, "fingerprint": object_fingerprint(desc)}, [("", t)]


def describe(name: str, obj: Saveable) -> tuple[dict[str, Any], list[tuple[str, Value]]]:
    """An object's public description (with its fingerprint) and its values by key."""
    if isinstance(obj, SecretTensor):
        return _tensor(name, obj)
    if isinstance(obj, Module):
        return _module(name, obj)
    return _optimizer(name, obj)


def layout(objs: Mapping[str, Saveable]) -> Layout:
    objects, names, values = [], [], []
    for name, obj in objs.items():
        desc, items = describe(name, obj)
        objects.append(desc)
        for key, v in items:
            names.append(_join(name, key))
            values.append(v)
    return Layout(objects, names, values)


# ----- shares <-> stored tensors --------------------------------------------------------------------------------


def share_entry(v: Value) -> tuple[str, str, torch.Tensor]:
    """``(kind, public dtype, tensor to store)`` of one value: this party's share, or a public tensor."""
    if isinstance(v, torch.Tensor):
        if v.dtype not in DTYPE_NAMES:
            raise ProtocolError(f"checkpoint: cannot store a public tensor of dtype {v.dtype}")
        return "public", DTYPE_NAMES[v.dtype], v.detach()
    if v.dtype not in DTYPE_NAMES:
        raise ProtocolError(f"checkpoint: cannot store a secret tensor of dtype {v.dtype}")
    sh = v.share
    if isinstance(sh, AdditiveShare):
        return "additive", DTYPE_NAMES[v.dtype], sh.data
    if isinstance(sh, BinaryShare):
        return "binary", DTYPE_NAMES[v.dtype], sh.data
    if isinstance(sh, PlainShare):
        return "plain", DTYPE_NAMES[v.dtype], sh.value.to(torch.float64)
    raise ProtocolError(f"checkpoint: cannot store a share of type {type(sh).__name__}")


def rebuild(ctx: PartyContext, entry: Entry, stored: torch.Tensor) -> Value:
    """The value of an entry at the party that wrote it: a ``SecretTensor`` of its share, or a public tensor."""
    dtype = DTYPES[entry.dtype][0]
    if entry.kind == "public":
        return stored
    if entry.kind == "plain":
        return SecretTensor(ctx, PlainShare(stored), dtype)
    cls = AdditiveShare if entry.kind == "additive" else BinaryShare
    return SecretTensor(ctx, cls(stored, holds_public(ctx.rank)), dtype)


# ----- restoring -----------------------------------------------------------------------------------------------


def restore(objects: list[dict[str, Any]], values: Mapping[str, Value], into: Mapping[str, Saveable] | None) -> Any:
    """Put the loaded values into ``into``'s objects (in place; returns them), or return them as state.

    Without ``into``: one saved tensor comes back as a ``SecretTensor``; a
    module as its state dict; an optimizer as its ``state_dict()``; several
    objects as a dict of those by name.
    """
    out: dict[str, Any] = {}
    for desc in objects:
        name = desc["name"]
        target = None if into is None else into[name]
        prefix = f"{name}." if name else ""
        mine = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
        if desc["type"] == "tensor":
            value = values[_join(name, "")]
            if target is not None:
                assign_(target, value)
            out[name] = target if target is not None else value
        elif desc["type"] == "module":
            state = OrderedDict((k, mine[k]) for k, *_ in desc["state"])
            if target is not None:
                target.load_state_dict(state)
            out[name] = target if target is not None else state
        else:
            out[name] = _restore_optimizer(desc, mine, target)
    if into is None and list(out) == [""]:
        return out[""]
    if into is not None and list(into) == [""]:
        return into[""]
    return out if into is None else dict(into)


def _restore_optimizer(desc: dict[str, Any], values: Mapping[str, Value], target: Optimizer | None) -> Any:
    state: dict[int, dict[str, Any]] = {}
    for key, v in [*values.items(), *desc["scalars"].items()]:
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v
    groups, at = [], 0
    for g in desc["groups"]:
        groups.append({**g["hyper"], "params": list(range(at, at + len(g["params"])))})
        at += len(g["params"])
    if target is None:
        return {"state": state, "param_groups": groups}
    # the hyperparameters are the optimizer's own (the fingerprint check found them equal to the file's)
    target.load_state_dict({"state": state, "param_groups": target.state_dict()["param_groups"]})
    return target


# ----- explaining a mismatch -----------------------------------------------------------------------------------


def difference(saved: dict[str, Any], live: dict[str, Any]) -> str:
    """Where the description of a saved object differs from the live one's (public structure only)."""
    what = f"{saved['name']!r}" if saved["name"] else "the object"
    if saved.get("type") != live["type"]:
        return f"{what} is a {saved.get('type')} in the file, a {live['type']} here"
    if saved.get("class", live.get("class")) != live.get("class"):
        return f"{what} is a {saved.get('class')} in the file, a {live.get('class')} here"
    if live["type"] == "tensor":
        return f"{what} has shape {saved.get('shape')} and dtype {saved.get('dtype')} in the file, " + (
            f"{live['shape']} and {live['dtype']} here"
        )
    if live["type"] == "module":
        return (
            _first_difference(what, saved.get("modules", []), live["modules"], "sub-module")
            or _first_difference(what, saved.get("state", []), live["state"], "entry")
            or f"{what} has another structure"
        )
    sg, lg = saved.get("groups", []), live["groups"]
    if len(sg) != len(lg):
        return f"{what} has {len(sg)} parameter groups in the file, {len(lg)} here"
    for n, (a, b) in enumerate(zip(sg, lg)):
        for k in sorted(set(a.get("hyper", {})) | set(b["hyper"])):
            if a.get("hyper", {}).get(k) != b["hyper"].get(k):
                return (
                    f"{what}: {k} is {a.get('hyper', {}).get(k)!r} in the file, {b['hyper'].get(k)!r} here (group {n})"
                )
        if a.get("params") != b["params"]:
            return f"{what}: group {n} has parameters of shapes {a.get('params')} in the file, {b['params']} here"
    return f"{what} has another structure"


def _first_difference(what: str, saved: list, live: list, noun: str) -> str | None:
    """The first differing item of two lists of ``[key, fields...]`` (sub-modules, or state entries)."""

    def fields(item: list) -> str:
        return " ".join(str(f) for f in item[1:])

    for i in range(max(len(saved), len(live))):
        a = saved[i] if i < len(saved) else None
        b = live[i] if i < len(live) else None
        if a == b:
            continue
        if a is None:
            return f"{what}: {noun} {b[0]!r} ({fields(b)}) is not in the file"
        if b is None:
            return f"{what}: the file has a {noun} {a[0]!r} ({fields(a)}) that is not here"
        if a[0] != b[0]:
            return f"{what}: {noun} {i} is {a[0]!r} in the file, {b[0]!r} here"
        return f"{what}: {noun} {a[0]!r} is {fields(a)} in the file, {fields(b)} here"
    return None
