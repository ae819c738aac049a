"""The operation table: every secret operation, registered once.

An entry names the operation, its forward function (on secret tensors and
public operands), its cost (rounds and bytes per element for the additive
dealer family, as documented) and the torch callables that dispatch to it.
Its ``backward`` slot holds autograd's rule (``mpc.grads``; ``mpc.autograd``
records the graph from ``_run`` and walks it).  ``SecretTensor``'s
methods, ``mpc.functional`` and ``SecretTensor.__torch_function__`` all go
through this table, so a new operation is one ``@register`` in
``mpc.arith`` or ``mpc.functional`` and is reachable from all three at once.

A torch function that has no entry raises ``MPCError`` naming it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .autograd import attach
from .callsite import user_call_site
from .errors import MPCError

__all__ = ["Op", "OPS", "TORCH_OPS", "register", "call", "torch_dispatch", "NotSupportedError"]


class NotSupportedError(MPCError, TypeError):
    """A torch function or method that secret tensors do not support."""


@dataclass
class Op:
    """One secret operation: name, forward, room for a backward rule, cost, torch aliases."""

    name: str
    forward: Callable[..., Any]
    cost: str = ""
    backward: Callable[..., Any] | None = None
    torch: tuple[Callable[..., Any], ...] = field(default_factory=tuple)


OPS: dict[str, Op] = {}
TORCH_OPS: dict[Any, Op] = {}


def register(name: str, *, cost: str = "", torch: tuple[Callable[..., Any], ...] = ()) -> Callable:
    """Decorator: enter ``fn`` in the table as the forward of ``name``, reachable from ``torch`` callables.

    The decorated name becomes a function that calls through the table (``_run``), so that
    ``mpc.conv2d(...)``, ``mpc.functional.cat(...)`` and the forwards' calls of one another are all
    table calls: a user-level one is transcribed and recorded for autograd, a nested one just runs.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in OPS:
            raise ValueError(f"operation {name!r} is registered twice")
        entry = Op(name, fn, cost, None, tuple(torch))
        OPS[name] = entry
        for t in torch:
            TORCH_OPS[t] = entry

        @functools.wraps(fn)
        def through_table(*args: Any, **kwargs: Any) -> Any:
            return _run(entry, args, kwargs)

        return through_table

    return deco


def call(name: str, *args: Any, **kwargs: Any) -> Any:
    return _run(OPS[name], args, kwargs)


def _run(entry: Op, args: tuple, kwargs: dict) -> Any:
    """Run an entry's forward; a user-level call (not one inside another operation) goes into the transcript
    and, when its operands require grad, into the autograd graph (``mpc.autograd.attach``)."""
    ctx = _context_of(args, kwargs)
    t = getattr(ctx, "transcript", None)
    if t is None or t.depth:
        return entry.forward(*args, **kwargs)
    record(ctx, entry.name, describe(entry.name, args, kwargs))
    t.depth += 1
    try:
        out = entry.forward(*args, **kwargs)
    finally:
        t.depth -= 1
    return attach(entry, args, kwargs, out)


def record(ctx: Any, name: str, text: str) -> None:
    """Enter one user-level operation into the party's transcript (``mpc.transcript``)."""
    filename, line, func = user_call_site()
    ctx.transcript.record(name, text, f"{os.path.basename(filename)}:{line} in {func}")


def _is_secret(a: Any) -> bool:
    return hasattr(a, "share") and hasattr(a, "ctx")


def _context_of(args: tuple, kwargs: dict) -> Any:
    for a in (*args, *kwargs.values()):
        if _is_secret(a):
            return a.ctx
        if isinstance(a, list | tuple):
            for b in a:
                if _is_secret(b):
                    return b.ctx
    return None


def describe_value(a: Any) -> str:
    """The public description of an operand: a secret's shape and dtype, a public value's encoding."""
    if _is_secret(a):
        return f"secret{tuple(a.shape)}:{str(a.dtype).removeprefix('torch.')}"
    if isinstance(a, torch.Tensor):
        data = a.detach().cpu().contiguous()
        digest = hashlib.blake2b(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.float().numpy().tobytes(),
                                 digest_size=4).hexdigest()  # fmt: skip
        return f"public{tuple(a.shape)}:{str(a.dtype).removeprefix('torch.')}#{digest}"
    if isinstance(a, list | tuple):
        inner = ", ".join(describe_value(b) for b in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner})"
    if a is None or isinstance(a, bool | int | float | str | slice | type(Ellipsis)):
        return repr(a)  # a float's repr is its exact value
    return type(a).__name__


def describe(name: str, args: tuple, kwargs: dict) -> str:
    parts = [describe_value(a) for a in args] + [f"{k}={describe_value(v)}" for k, v in sorted(kwargs.items())]
    return f"{name}({', '.join(parts)})"


def _torch_name(func: Any) -> str:
    """The name a user typed: ``torch.sin``, ``torch.nn.functional.gelu``, ``torch.Tensor.cumsum``, ``torch.fft.fft``."""
    name = getattr(func, "__name__", None) or repr(func)
    spaces = (
        ("torch", torch),
        ("torch.nn.functional", F),
        ("torch.Tensor", torch.Tensor),
        ("torch.fft", torch.fft),
        ("torch.linalg", torch.linalg),
        ("torch.special", torch.special),
    )
    for prefix, space in spaces:
        if getattr(space, name, None) is func:
            return f"{prefix}.{name}"
    for prefix, space in spaces:  # under another name (torch.fft.fft is fft_fft)
        for attr in dir(space):
            if getattr(space, attr, None) is func:
                return f"{prefix}.{attr}"
    mod = getattr(func, "__module__", None) or "torch"
    return f"{mod}.{name}"


def torch_dispatch(func: Any, args: tuple, kwargs: dict | None) -> Any:
    """What ``SecretTensor.__torch_function__`` does: the table's forward, or a clear refusal."""
    entry = TORCH_OPS.get(func)
    if entry is None:
        raise NotSupportedError(
            f"{_torch_name(func)} is not supported on secret tensors; the supported operations are listed in "
            "mpc.ops.OPS (reveal() first only if the value may be made public)"
        )
    return _run(entry, args, kwargs or {})
