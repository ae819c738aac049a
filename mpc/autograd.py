"""Reverse-mode automatic differentiation of secret tensors: the graph, grad mode, the backward pass.

Recording happens in the operation table (``mpc.ops._run``): after a
user-level operation (never one nested inside another) whose entry has a
backward rule, while grad mode is on and some secret operand requires grad,
``attach`` hangs a ``Node`` on the output.  The node keeps the rule
(``Op.backward``, registered per operation name in ``mpc.grads``), the
operation's arguments by name with every secret operand *detached* (the same
share, no graph: a later change of an operand's share cannot change the saved
value), the detached output (rules reuse it: sigmoid, tanh, exp, softmax...),
and one edge per secret operand that requires grad.

``backward(root, gradient)`` visits the nodes reachable from ``root`` in
topological order (Kahn's algorithm over the edge counts), calls each rule
once with the sum of the gradients that reached its output, and adds what
reaches a leaf into the leaf's ``.grad`` (a ``SecretTensor``).  Rules run
with grad mode off; their operations go through the table, so they are
counted in ``ctx.stats`` and entered into the transcript like any other.

Gradients that depend on public values alone (the implicit seed 1 of a scalar
loss, a public ``gradient=``, their images under public operations) stay
public torch tensors until they meet a secret value: a rule then multiplies a
secret by a public tensor (local for integers, one truncation otherwise)
instead of running a Beaver product.  A public gradient that reaches a leaf is
turned into a share of a public value (local).

Grad mode belongs to the party context (``ctx.grad_enabled``; ``mpc.no_grad``
switches it off for a block); torch's own thread-local ``torch.no_grad()`` is
honoured too, so ``with torch.no_grad():`` around an optimizer step works.

An operation with no rule (``Op.backward is None``) still gets a node when its
inputs require grad; ``backward`` raises ``ProtocolError`` naming the
operation when it reaches that node, rather than return a wrong gradient.
Operations whose result carries no gradient (comparisons, ``sign``,
``argmax``, ``detach``, ``reveal``) are marked ``NONDIFF``: their results do
not require grad, as in torch.

This module works on secret tensors by their interface (``ctx``, ``share``,
``dtype``, ``_new``, ``requires_grad``, ``grad_fn``, ``grad``): saved operands
and gradients are plain ``SecretTensor`` objects (``_new``) even when an
operand is a subclass (``mpc.nn.Parameter``).  It imports neither
``mpc.tensor`` nor ``mpc.ops``, both of which import it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from .errors import ProtocolError

__all__ = ["NONDIFF", "Node", "attach", "backward", "is_grad_enabled", "will_record"]


def _nondiff(node: Node, grad: Any) -> list:  # pragma: no cover - never called: marks an entry
    raise AssertionError("a non-differentiable operation has no node")


# ``Op.backward = NONDIFF``: the operation's result does not require grad (comparisons, argmax, ...).
NONDIFF: Callable[..., Any] = _nondiff


def _is_secret(a: Any) -> bool:
    return hasattr(a, "share") and hasattr(a, "ctx")


def will_record(x: Any) -> bool:
    """Whether a user-level operation on ``x`` now gets a node: a forward keeps what its rule reuses only then."""
    t = getattr(x.ctx, "transcript", None)
    return x.requires_grad and is_grad_enabled(x.ctx) and (t is None or t.depth <= 1)


def is_grad_enabled(ctx: Any) -> bool:
    """Whether operations on ``ctx``'s secret tensors are recorded (its grad mode and torch's)."""
    return bool(getattr(ctx, "grad_enabled", True)) and torch.is_grad_enabled()


class Node:
    """One recorded operation: its rule, its arguments by name (secrets detached), its output, its edges.

    A rule is called as ``rule(node, grad)`` and returns ``[(operand, gradient), ...]`` for every
    secret operand ``v`` of ``node.a`` with ``node.needs(v)``; the gradient has the operand's shape
    and is a ``SecretTensor`` or a public torch tensor.
    """

    __slots__ = ("op", "rule", "a", "out", "saved", "edges", "_need", "freed")

    def __init__(
        self,
        op: str,
        rule: Callable | None,
        a: dict[str, Any],
        out: Any,
        edges: list[tuple[Any, Any]],
        saved: Any = None,
    ):
        self.op = op
        self.rule = rule
        self.a = a
        self.out = out
        self.saved = saved  # what the forward kept for the rule (``SecretTensor._saved``), or None
        self.edges = edges  # (detached operand in ``a``, the original tensor that requires grad)
        self._need = {id(d) for d, _ in edges}
        self.freed = False

    @property
    def name(self) -> str:
        return f"{self.op}Backward"

    def needs(self, v: Any) -> bool:
        """Whether the saved operand ``v`` (an object of ``node.a``) needs a gradient."""
        return id(v) in self._need

    def free(self) -> None:
        self.a, self.out, self.saved, self.freed = {}, None, None, True

    def __repr__(self) -> str:
        return f"<{self.name}>"


@functools.cache
def _signature(fn: Callable) -> inspect.Signature:
    return inspect.signature(fn)


def _detach(v: Any, edges: list) -> Any:
    """``v`` with every secret tensor replaced by a detached one (edges recorded for those requiring grad)."""
    if _is_secret(v):
        d = v._new(v.share)
        if v.requires_grad:
            edges.append((d, v))
        return d
    if isinstance(v, list | tuple) and any(_is_secret(b) for b in v):
        items = [_detach(b, edges) for b in v]
        return items if isinstance(v, list) else tuple(items)
    return v


def _needs_grad(args: tuple, kwargs: dict) -> bool:
    for a in (*args, *kwargs.values()):
        if _is_secret(a):
            if a.requires_grad:
                return True
        elif isinstance(a, list | tuple) and any(_is_secret(b) and b.requires_grad for b in a):
            return True
    return False


def attach(entry: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """Record ``entry``'s call on ``out`` when it should be (see the module docstring); returns the output."""
    target = out if _is_secret(out) else out[0] if isinstance(out, tuple) and out and _is_secret(out[0]) else None
    kept = None
    if target is not None:
        kept, target._saved = target._saved, None  # into the node, or dropped: never left on a result
    if entry.backward is NONDIFF or not _needs_grad(args, kwargs):
        return out
    if target is None or not target.dtype.is_floating_point or not is_grad_enabled(target.ctx):
        return out
    if any(target is a for a in (*args, *kwargs.values())):  # an operation that returned an operand
        fresh = target._new(target.share)
        out = fresh if out is target else type(out)(fresh, *out[1:])  # type: ignore[arg-type]
        target = fresh
    bound = _signature(entry.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    edges: list[tuple[Any, Any]] = []
    saved = {k: _detach(v, edges) for k, v in bound.arguments.items()}
    node = Node(entry.name, entry.backward, saved, target._new(target.share), edges, kept)
    target.grad_fn = node
    return out


# ----- the backward pass ---------------------------------------------------------------------------------------


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if isinstance(a, torch.Tensor) and not _is_secret(b):
        return a + b
    return b + a if isinstance(a, torch.Tensor) else a + b


def _as_secret(like: Any, g: Any) -> Any:
    """The gradient ``g`` for the leaf ``like``: a secret tensor of the leaf's dtype (a public ``g`` shared locally)."""
    ctx = like.ctx
    if _is_secret(g):
        return like._new(g.share.contiguous(), like.dtype)
    enc = ctx.family.encode_public(ctx, g.to(torch.float64), what="gradient")
    return like._new(type(like.share).public(enc, ctx.rank), like.dtype)


def _seed(root: Any, gradient: Any) -> Any:
    if gradient is None:
        if root.numel() != 1:
            raise ProtocolError(
                f"backward: a gradient can be implied only for a tensor of one element, this one has shape "
                f"{tuple(root.shape)}; pass gradient= (a tensor of that shape), or reduce it first (.sum())"
            )
        return torch.ones(root.shape, dtype=torch.float64)
    if _is_secret(gradient):
        if gradient.ctx is not root.ctx:
            raise ProtocolError("backward: the gradient belongs to another party context")
    else:
        try:
            gradient = torch.as_tensor(gradient, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ProtocolError(
                f"backward: gradient= must be a tensor or a SecretTensor, got {type(gradient).__name__}"
            ) from None
    if tuple(gradient.shape) != tuple(root.shape):
        raise ProtocolError(
            f"backward: gradient has shape {tuple(gradient.shape)}, the tensor has shape {tuple(root.shape)}"
        )
    return gradient


def backward(root: Any, gradient: Any = None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
    """Add d root / d leaf (times ``gradient``) into ``.grad`` of every leaf that requires grad.

    ``gradient`` defaults to 1 for a one-element ``root``; it may be public or
    secret.  The graph's saved values are freed afterwards unless
    ``retain_graph``; a second pass through a freed graph is refused, as in torch.
    """
    if create_graph:
        raise ProtocolError("backward: create_graph=True (gradients of gradients) is not supported on secret tensors")
    if not root.requires_grad:
        raise ProtocolError(
            "backward: this secret tensor does not require grad and has no grad_fn; call requires_grad_() on the "
            "leaves (or share them with requires_grad=True) before computing it, outside mpc.no_grad()"
        )
    seed = _seed(root, gradient)
    ctx = root.ctx
    previous = ctx.grad_enabled
    ctx.grad_enabled = False  # rules run their operations without recording
    try:
        _run(root, seed, bool(retain_graph))
    finally:
        ctx.grad_enabled = previous


def _run(root: Any, seed: Any, retain: bool) -> None:
    leaves: dict[int, tuple[Any, Any]] = {}
    if root.grad_fn is None:
        leaves[id(root)] = (root, seed)
    else:
        # The reachable nodes and the number of edges into each.
        deps: dict[int, int] = {}
        stack, seen = [root.grad_fn], {id(root.grad_fn)}
        while stack:
            n = stack.pop()
            if n.freed:
                raise ProtocolError(
                    f"backward: the graph through {n.op!r} was already used by a backward pass and its saved values "
                    "freed; pass retain_graph=True to the first backward() to go through it again"
                )
            for _, orig in n.edges:
                m = orig.grad_fn
                if m is not None:
                    deps[id(m)] = deps.get(id(m), 0) + 1
                    if id(m) not in seen:
                        seen.add(id(m))
                        stack.append(m)
        pending: dict[int, Any] = {id(root.grad_fn): seed}
        ready = [root.grad_fn]
        while ready:
            n = ready.pop()
            g = pending.pop(id(n))
            for orig, gi in _apply(n, g):
                m = orig.grad_fn
                if m is None:
                    prev = leaves.get(id(orig), (orig, None))[1]
                    leaves[id(orig)] = (orig, _add(prev, gi))
                    continue
                pending[id(m)] = _add(pending.get(id(m)), gi)
                deps[id(m)] -= 1
                if deps[id(m)] == 0:
                    ready.append(m)
            if not retain:
                n.free()
    for leaf, g in leaves.values():
        g = _as_secret(leaf, g)
        leaf.grad = g if leaf.grad is None else _as_secret(leaf, leaf.grad + g)


def _apply(n: Node, g: Any) -> list[tuple[Any, Any]]:
    """The rule of ``n`` on ``g``: (original input, gradient) for each edge, checked."""
    if n.rule is None:
        raise ProtocolError(
            f"backward: the operation {n.op!r} has no backward rule, so no gradient can flow through it; compute it "
            "on detached inputs (x.detach()) or under mpc.no_grad() if no gradient is needed there"
        )
    got: dict[int, Any] = {}
    for v, gv in n.rule(n, g):
        if n.needs(v):
            got[id(v)] = _add(got.get(id(v)), gv)
    out = []
    for d, orig in n.edges:
        if id(d) not in got:
            raise ProtocolError(f"backward: the rule of {n.op!r} gave no gradient for an operand that requires grad")
        gv = got[id(d)]
        if tuple(gv.shape) != tuple(orig.shape):
            raise ProtocolError(
                f"backward: the rule of {n.op!r} gave a gradient of shape {tuple(gv.shape)} for an operand of shape "
                f"{tuple(orig.shape)}"
            )
        out.append((orig, gv))
    return out
