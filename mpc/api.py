"""The user-facing functions: share a tensor, find the party context.

The party context is passed explicitly wherever it can be: every
``SecretTensor`` carries its own.  Only ``share`` needs one from outside; it
takes ``ctx=`` or else the context that the entry point (``mpc.run``,
``mpc.init``, the thread simulator) made current for this thread.  That
current context is a ``contextvars.ContextVar``, so each party thread of the
in-process simulator sees its own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

import torch

from . import autograd
from .context import PartyContext
from .errors import ProtocolError
from .ops import record
from .tensor import SecretTensor

__all__ = ["share", "current_context", "use_context", "no_grad", "is_grad_enabled"]

_current: contextvars.ContextVar[PartyContext | None] = contextvars.ContextVar("mpc_party_context", default=None)


def current_context() -> PartyContext:
    ctx = _current.get()
    if ctx is None:
        raise ProtocolError(
            "no party context here: call ctx = mpc.init() in a launched script, run the function "
            "through mpc.run(fn, parties=N), or pass ctx= explicitly"
        )
    return ctx


@contextlib.contextmanager
def use_context(ctx: PartyContext) -> Iterator[PartyContext]:
    """Make ``ctx`` the current context of this thread inside the block."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def set_context(ctx: PartyContext | None) -> None:
    """Set the current context for the rest of this thread (used by ``mpc.init``)."""
    _current.set(ctx)


def _as_tensor(value: object) -> torch.Tensor:
    """The value to share as a tensor, or an error that names its type and says what to use instead."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, torch.nn.Module):
        raise ProtocolError(
            f"mpc.share cannot share a {type(value).__name__} (a torch.nn.Module): share its tensors one by one "
            "(for p in module.parameters(): mpc.share(p.detach(), owner=...))"
        )
    if isinstance(value, Mapping):
        raise ProtocolError(
            f"mpc.share cannot share a {type(value).__name__} (a state dict or mapping): share each tensor, e.g. "
            "{k: mpc.share(v, owner=...) for k, v in state.items()}"
        )
    if isinstance(value, bool | int | float | list | tuple) or hasattr(value, "__array__"):
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ProtocolError(f"mpc.share cannot make a tensor of this {type(value).__name__}: {exc}") from None
    raise ProtocolError(
        f"mpc.share takes a torch tensor (or a number, list or numpy array), not a {type(value).__name__}"
    )


def share(
    value: torch.Tensor | float | int | None,
    owner: int,
    ctx: PartyContext | None = None,
    *,
    requires_grad: bool = False,
) -> SecretTensor:
    """Secret-share ``value`` held by party ``owner``; every other party passes ``None``.

    The shape and dtype travel as public metadata; the value is refused at the
    owner, before anything is sent, if it is NaN, infinite or outside the
    fixed-point range.  With ``requires_grad`` the result is a leaf whose
    gradient ``backward()`` computes (a floating-point dtype is required).
    """
    ctx = current_context() if ctx is None else ctx
    if value is not None:
        value = _as_tensor(value)
    n = ctx.world_size
    if not isinstance(owner, int) or isinstance(owner, bool) or not 0 <= owner < n:
        raise ProtocolError(f"owner must be a party id in 0..{n - 1}, got {owner!r}")
    record(ctx, "share", f"share(owner={owner})")
    sh, dtype = ctx.family.share_input(ctx, value, owner)
    out = SecretTensor(ctx, sh, dtype)
    return out.requires_grad_() if requires_grad else out


class no_grad(contextlib.ContextDecorator):  # noqa: N801 (torch's name)
    """``with mpc.no_grad():`` (or ``@mpc.no_grad()``): operations in the block are not recorded for autograd.

    Grad mode is the party context's (``ctx.grad_enabled``): ``ctx=`` or the
    current context of this thread.  Results of operations in the block do not
    require grad; leaves keep their ``requires_grad``.
    """

    def __init__(self, ctx: PartyContext | None = None) -> None:
        self._ctx = ctx
        self._saved: list[tuple[PartyContext, bool]] = []

    def _recreate_cm(self) -> no_grad:  # a decorated function may run in several party threads at once
        return type(self)(self._ctx)

    def __enter__(self) -> None:
        ctx = current_context() if self._ctx is None else self._ctx
        self._saved.append((ctx, ctx.grad_enabled))
        ctx.grad_enabled = False

    def __exit__(self, *exc: object) -> bool:
        ctx, previous = self._saved.pop()
        ctx.grad_enabled = previous
        return False


def is_grad_enabled(ctx: PartyContext | None = None) -> bool:
    """Whether operations on ``ctx``'s (or the current context's) secret tensors are recorded for autograd."""
    return autograd.is_grad_enabled(current_context() if ctx is None else ctx)
