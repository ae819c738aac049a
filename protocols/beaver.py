"""Secret x secret products with Beaver triples (Beaver, CRYPTO 1991).

For any bilinear ``op`` (elementwise ``*``, ``@``, ``conv2d``) and a dealer
triple ``(a, b, c = a op b)``:

1. Ask the dealer for the triple (the last party's request goes out first, so
   the dealer's answer travels while the parties open).
2. Open ``e = x - a`` and ``f = y - b`` to all in one batched round; ``a`` and
   ``b`` are uniform, so ``e`` and ``f`` say nothing about ``x`` and ``y``.
3. Locally ``z = c + e op b + a op f + e op f`` (the public ``e op f`` is added
   by party 0 only); ``z`` is a sharing of ``x op y`` with 2f fractional bits.
4. Truncate (``protocols.truncation``): one more round.

Rounds 2 (1 for the untruncated product); bytes per party
8 (n-1) (|x| + |y|) for the openings, plus 8 (n-1) |z| for the truncation.  The
dealer sends |c| ring elements to the last party (and 2 |z| for truncation).

Squaring uses a pair ``(a, a^2)``: open ``e = x - a``; ``x^2 = a^2 + 2 e a + e^2``.
"""

from __future__ import annotations

import torch

from mpc.context import PartyContext

from .correlated import OP_CONV2D, OP_MATMUL, OP_MUL, _bilinear, pack_shapes
from .sharing import open_all
from .truncation import truncate

__all__ = ["beaver_product", "mul", "matmul", "conv2d", "square"]


def beaver_product(
    ctx: PartyContext, op: int, x: torch.Tensor, y: torch.Tensor, extra: tuple[int, ...] = (), name: str = "mul"
) -> torch.Tensor:
    """Shares of ``x op y`` without truncation (2f fractional bits)."""
    handle = ctx.correlations.request("triple", (op, *pack_shapes(x.shape, y.shape), *extra))
    a, b = handle.randoms
    e, f = open_all(ctx, [x - a, y - b], name)
    (c,) = handle.derived()
    z = c + _bilinear(op, e, b, extra) + _bilinear(op, a, f, extra)
    if ctx.rank == 0:
        z += _bilinear(op, e, f, extra)
    return z


def mul(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return truncate(ctx, beaver_product(ctx, OP_MUL, x, y, name="mul"), op="mul:trunc")


def matmul(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return truncate(ctx, beaver_product(ctx, OP_MATMUL, x, y, name="matmul"), op="matmul:trunc")


def conv2d(
    ctx: PartyContext,
    x: torch.Tensor,
    w: torch.Tensor,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    extra = (*stride, *padding, *dilation, groups)
    return truncate(ctx, beaver_product(ctx, OP_CONV2D, x, w, extra, name="conv2d"), op="conv2d:trunc")


def square(ctx: PartyContext, x: torch.Tensor) -> torch.Tensor:
    handle = ctx.correlations.request("square", tuple(x.shape))
    (a,) = handle.randoms
    (e,) = open_all(ctx, [x - a], "square")
    (a2,) = handle.derived()
    z = a2 + 2 * e * a
    if ctx.rank == 0:
        z += e * e
    return truncate(ctx, z, op="square:trunc")
