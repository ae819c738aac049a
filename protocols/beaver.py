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
dealer sends |c| ring elements to the last party for an untruncated product.

A truncated product (``product_truncated``) takes the triple and the
truncation mask from one fused request (``ptrunc``): the dealer's derived part
is ``c + r`` instead of ``c``, so step 3 yields the masked value the truncation
opens, and the mask ``r = rotl(s, f)`` is a rotation of a seeded ``s``, so
``r >> f`` needs no correction of its own: the dealer sends 8 + 2 ceil(f / 8)
bytes per output element (12 at f = 16) where a triple and a truncation pair
take 16 + ceil(f / 8) (``truncation.finish_rotated`` has the algebra).

Squaring uses a pair ``(a, a^2)``: open ``e = x - a``; ``x^2 = a^2 + 2 e a + e^2``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mpc.context import PartyContext
from mpc.errors import ProtocolError
from mpc.ring import wrap_int
from mpc.shares import holds_public

from .correlated import FRESH, OP_CONV2D, OP_MATMUL, OP_MUL, REUSE_WINDOW, _bilinear, pack_shapes
from .sharing import open_all
from .truncation import OFFSET_BITS, finish_rotated, truncate, truncate_many

__all__ = [
    "beaver_product",
    "product_truncated",
    "product_truncated_many",
    "mul_blocks",
    "mul",
    "matmul",
    "conv2d",
    "square",
    "square_raw",
    "powers",
]


def beaver_product(
    ctx: PartyContext, op: int, x: torch.Tensor, y: torch.Tensor, extra: tuple[int, ...] = (), name: str = "mul"
) -> torch.Tensor:
    """Shares of ``x op y`` without truncation (2f fractional bits)."""
    handle = ctx.correlations.request("triple", (op, *pack_shapes(x.shape, y.shape), *extra))
    a, b = handle.randoms
    e, f = open_all(ctx, [x - a, y - b], name)
    (c,) = handle.derived()
    return finish_product(ctx, op, c, a, b, e, f, extra)


def finish_product(ctx: PartyContext, op: int, c, a, b, e, f, extra=()) -> torch.Tensor:
    """``c + e op b + a op f`` (+ ``e op f`` at party 0, as ``e op (b + f)``: two bilinear maps, not three)."""
    if holds_public(ctx.rank):
        return c + _bilinear(op, e, b + f, extra) + _bilinear(op, a, f, extra)
    return c + _bilinear(op, e, b, extra) + _bilinear(op, a, f, extra)


def beaver_products(
    ctx: PartyContext, items: list[tuple[int, torch.Tensor, torch.Tensor, tuple[int, ...]]], name: str = "mul"
) -> list[torch.Tensor]:
    """``beaver_product`` of every ``(op, x, y, extra)`` with one opening for all: 1 round, the same bytes."""
    handles = [
        ctx.correlations.request("triple", (op, *pack_shapes(x.shape, y.shape), *extra)) for op, x, y, extra in items
    ]
    masked = []
    for (_, x, y, _), h in zip(items, handles, strict=True):
        a, b = h.randoms
        masked += [x - a, y - b]
    opened = open_all(ctx, masked, name)
    out = []
    for i, ((op, _, _, extra), h) in enumerate(zip(items, handles, strict=True)):
        a, b = h.randoms
        (c,) = h.derived()
        out.append(finish_product(ctx, op, c, a, b, opened[2 * i], opened[2 * i + 1], extra))
    return out


def _ptrunc_request(ctx: PartyContext, op: int, xs, ys, f: int, extra: tuple[int, ...] = ()):
    return ctx.correlations.request("ptrunc", (f, op, *pack_shapes(xs, ys), *extra))


def _masked_product(ctx: PartyContext, op: int, a, b, h, e, g, extra=()) -> torch.Tensor:
    """``x op y + r`` (+ ``K`` at party 0) from the masks ``a``, ``b``, the opened ``e``, ``g`` and a ``ptrunc``
    handle: the value the truncation opens, straight out of the Beaver finish."""
    cr, _, _ = h.derived()
    z = finish_product(ctx, op, cr, a, b, e, g, extra)
    if holds_public(ctx.rank):
        z += wrap_int(1 << OFFSET_BITS)
    return z


class OpenedMask:
    """A Beaver mask opened for a value, kept in the value's ``Memo`` (``mpc.shares``) for later products.

    serial, offset: the request that drew the mask and the mask's first element in its stream (what the
    dealer needs to draw it again); flip: whether the memo holds the value transposed against the mask as
    drawn; a: this party's share of the mask; e: the opened ``value - mask`` (None until the opening);
    version: the share tensor's version counter then (a share changed in place since is refused).
    """

    __slots__ = ("serial", "offset", "flip", "a", "e", "version")

    def __init__(self, serial: int, offset: int, flip: bool, a: torch.Tensor, version: int) -> None:
        self.serial, self.offset, self.flip, self.a, self.version = serial, offset, flip, a, version
        self.e: torch.Tensor | None = None


Memos = tuple[Any, Any]  # per item: (x's, y's) ``(Memo, flip)`` from ``_RingShare.memo()``, or None


def _version(t: torch.Tensor) -> int:
    """``t``'s in-place version counter; -1 for a tensor made under ``torch.inference_mode``, which keeps none
    (the check it serves is then skipped; whether a mask is reused never depends on it)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def _reusable(memo, x: torch.Tensor, serial: int, pending: dict[int, OpenedMask]) -> tuple | None:
    """``(record, t)`` when ``x``'s opened mask can serve this product (``t``: use it transposed), else None.
    Every test here reads public facts only (serials, shapes, what the parties computed alike), so every
    party decides the same."""
    if memo is None:
        return None
    box, flip = memo
    rec = box.value
    if not isinstance(rec, OpenedMask) or (rec.e is None and id(rec) not in pending):
        return None
    if serial - rec.serial >= REUSE_WINDOW:
        return None
    t = bool(flip) != rec.flip
    if tuple(rec.a.shape) != (tuple(x.shape[:-2]) + (x.shape[-1], x.shape[-2]) if t else tuple(x.shape)):
        return None
    if _version(x) != rec.version:
        raise ProtocolError(
            "a secret tensor's share was changed in place after a product opened it: shares are values (an "
            "operation makes a new share); the product would use its old value"
        )
    return rec, t


def product_truncated_many(
    ctx: PartyContext,
    items: list[tuple[int, torch.Tensor, torch.Tensor, tuple[int, ...]]],
    f: int,
    name: str = "mul",
    memos: list[Memos] | None = None,
) -> list[torch.Tensor]:
    """``(x op y) / 2^f`` for every ``(op, x, y, extra)``: 2 rounds for all, the Beaver triple and the
    truncation mask from one dealer request each (``ptrunc``: the dealer sends 8 + 2 ceil(f / 8) bytes per
    output element, not 16 + ceil(f / 8)); the product's shares plus the mask come out of the Beaver finish,
    so the truncation opens them as they are.  Bytes per party as a product and a truncation.

    With ``memos`` (the operands' ``Memo``), an operand whose value was opened by an earlier product (or by
    an earlier item of this call) is not opened again: the product takes that mask with a fresh mask for
    the other operand (``ptruncr``; the dealer draws the old mask again from its request's sub-seeds), and
    the opened difference is the one opened then.  Opening ``x - a`` once says nothing more than it did, so
    a data matrix used in every step, or a weight used in the forward and the backward pass, costs its
    opening once.  An operand opened afresh leaves its mask in its memo.
    """
    src = ctx.correlations
    counts = isinstance(getattr(src, "served", None), int)
    hs, masks, diffs, masked = [], [], [], []
    pending: dict[int, OpenedMask] = {}
    fresh_recs: list[OpenedMask | None] = []
    for i, (op, x, y, extra) in enumerate(items):
        pair = memos[i] if memos is not None and counts else (None, None)
        serial = src.served if counts else -1
        plan = []  # per operand: (record, t) to reuse, or None
        for operand, memo in ((x, pair[0]), (y, pair[1])):
            plan.append(_reusable(memo, operand, serial, pending) if memo is not None else None)
            if plan[-1] is None and memo is not None:  # opened afresh: its record, pending until the opening
                rec = OpenedMask(serial, 0, bool(memo[1]), operand, _version(operand))
                pending[id(rec)] = rec
                memo[0].value = rec
                plan[-1] = ("new", rec)
        if not any(p is not None and p[0] != "new" for p in plan):
            h = _ptrunc_request(ctx, op, x.shape, y.shape, f, extra)
        else:
            refs: list[int] = []
            for p in plan:
                refs += [FRESH, 0, 0] if p is None or p[0] == "new" else [p[0].serial, p[0].offset, int(p[1])]
            h = ctx.correlations.request("ptruncr", (f, op, *refs, *pack_shapes(x.shape, y.shape), *extra))
        if counts and h.serial != serial:
            raise ProtocolError(f"the correlation source numbered request {h.serial}, expected {serial}")
        hs.append(h)
        drawn = iter(h.randoms)
        pair_masks, pair_diffs, offset = [], [], 0
        for operand, p in zip((x, y), plan, strict=True):
            if p is None or p[0] == "new":
                a = next(drawn)
                if p is not None:  # the record keeps the mask as drawn, and where it was drawn
                    p[1].a, p[1].offset = a, offset
                offset += a.numel()
                pair_masks.append(a)
                pair_diffs.append(len(masked))
                masked.append(operand - a)
                fresh_recs.append(p[1] if p is not None else None)
            else:
                rec, t = p
                pair_masks.append(rec.a.transpose(-2, -1) if t else rec.a)
                pair_diffs.append((rec, t))
        masks.append(pair_masks)
        diffs.append(pair_diffs)
    opened = open_all(ctx, masked, name) if masked else []
    for rec, e in zip(fresh_recs, opened, strict=True):
        if rec is not None:
            rec.e = e

    def diff(d):
        if isinstance(d, int):
            return opened[d]
        rec, t = d
        return rec.e.transpose(-2, -1) if t else rec.e

    zs = [
        _masked_product(ctx, op, *masks[i], h, diff(diffs[i][0]), diff(diffs[i][1]), extra)
        for i, ((op, _, _, extra), h) in enumerate(zip(items, hs, strict=True))
    ]
    cs = open_all(ctx, zs, f"{name}:trunc")
    out = []
    for h, c in zip(hs, cs, strict=True):
        _, t, m = h.derived()
        out.append(finish_rotated(ctx, c, h.randoms[-1], t, m, f))
    return out


def product_truncated(
    ctx: PartyContext, op: int, x: torch.Tensor, y: torch.Tensor, f: int, extra: tuple[int, ...] = (), name="mul"
) -> torch.Tensor:
    """``(x op y) / 2^f``: ``product_truncated_many`` of one."""
    return product_truncated_many(ctx, [(op, x, y, extra)], f, name)[0]


def mul_blocks(
    ctx: PartyContext, x: torch.Tensor, y: torch.Tensor, f: int, block: int, name: str = "mul"
) -> torch.Tensor:
    """``x * y`` truncated by ``f`` bits, block by block with bounded memory, pipelined.

    Round ``k`` opens block ``k``'s Beaver differences together with block
    ``k - 1``'s masked product (independent values), so ``B`` blocks cost
    ``B + 1`` rounds (not ``2 B``) and at most two blocks' working sets are alive
    at once; only the result grows with the size.  Each block's triple and
    truncation mask are one ``ptrunc`` request.  Bytes as ``mul``'s.
    """
    n = x.numel()
    xf, yf = x.reshape(-1), y.reshape(-1)
    out = torch.empty(n, dtype=torch.int64)
    party0 = holds_public(ctx.rank)
    starts = list(range(0, n, block))
    prev = None  # (start, stop, the previous block's masked product, and its s, t, m for the truncation)
    for k in range(len(starts) + 1):
        cur = None
        m = 0
        if k < len(starts):
            s0, s1 = starts[k], min(n, starts[k] + block)
            m = s1 - s0
            h = _ptrunc_request(ctx, OP_MUL, (m,), (m,), f)
            a, b, _ = h.randoms
            cur = (s0, s1, h, a, b)
        tail = prev[2].numel() if prev is not None else 0
        # Everything this round opens, written straight into one buffer (no per-part copies to concatenate).
        flat = torch.empty(2 * m + tail, dtype=torch.int64)
        if cur is not None:
            torch.sub(xf[s0:s1], a, out=flat[:m])
            torch.sub(yf[s0:s1], b, out=flat[m : 2 * m])
        if prev is not None:
            flat[2 * m :] = prev[2]
        (total,) = open_all(ctx, [flat], name if cur is not None else f"{name}:trunc")
        del flat
        if prev is not None:
            out[prev[0] : prev[1]] = finish_rotated(ctx, total[2 * m :], *prev[3:], f)
            prev = None
        if cur is not None:
            s0, s1, h, a, b = cur
            e, g = total[:m], total[m : 2 * m]
            cr, t, mm = h.derived()
            # z + r = c' + e b + a g (+ e g + K at party 0), in place: b, a, c' and the opened e are this party's
            z = cr.add_(b.mul_(e)).add_(a.mul_(g))
            if party0:
                z += e.mul_(g)
                z += wrap_int(1 << OFFSET_BITS)
            prev = (s0, s1, z, h.randoms[2], t, mm)
            del e, g, a, b, cr, cur, h
        del total
    return out.reshape(x.shape)


def mul(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return product_truncated(ctx, OP_MUL, x, y, ctx.config.frac_bits, name="mul")


def matmul(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return product_truncated(ctx, OP_MATMUL, x, y, ctx.config.frac_bits, name="matmul")


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
    return product_truncated(ctx, OP_CONV2D, x, w, ctx.config.frac_bits, extra, name="conv2d")


def square_raw(ctx: PartyContext, x: torch.Tensor, op: str = "square") -> torch.Tensor:
    """Shares of ``x^2`` without truncation, from a pair ``(a, a^2)``: one opening."""
    handle = ctx.correlations.request("square", tuple(x.shape))
    (a,) = handle.randoms
    (e,) = open_all(ctx, [x - a], op)
    (a2,) = handle.derived()
    z = a2 + 2 * e * a
    if holds_public(ctx.rank):
        z += e * e
    return z


def square(ctx: PartyContext, x: torch.Tensor) -> torch.Tensor:
    return truncate(ctx, square_raw(ctx, x), op="square:trunc")


def raw_powers(ctx: PartyContext, e: torch.Tensor, a: torch.Tensor, ap, degree: int) -> list[torch.Tensor]:
    """Shares of ``v^1 .. v^degree`` at full scale (``k f`` bits) from the opened ``e = v - a`` and the dealer's
    ``a`` and ``ap = (a^2, ..., a^degree)``: ``v^k = sum_m C(k, m) e^(k-m) a^m``, the public ``e^k`` at party 0.
    The first is ``v`` itself (``e + a``, ``e`` at party 0)."""
    party0 = holds_public(ctx.rank)
    apow = [None, a, *ap]
    epow = [None, e]
    for _ in range(2, degree + 1):
        epow.append(epow[-1] * e)  # wraps modulo 2^64, as it must
    out = [a + e if party0 else a.clone()]
    for k in range(2, degree + 1):
        acc = k * epow[k - 1] * a
        for m in range(2, k + 1):
            acc += math.comb(k, m) * (epow[k - m] * apow[m] if m < k else apow[m])
        if party0:
            acc += epow[k]
        out.append(acc)
    return out


def powers(ctx: PartyContext, v: torch.Tensor, degree: int, f: int, op: str) -> list[torch.Tensor]:
    """``[v, v^2, ..., v^degree]`` with f fractional bits each: one opening, one batched truncation.

    The dealer gives ``a, a^2, ..., a^d`` for a uniform ``a``; open ``e = v - a``
    once; ``v^k = sum_m C(k, m) e^(k-m) a^m`` is local (the public ``e^k`` at the
    holder of public parts); then truncate ``v^k`` by ``(k - 1) f`` bits.  Needs
    ``|v| < 2^(62/degree - f)`` in real terms (1/2 for degree 4 and f = 16).
    Rounds 2; bytes 8 + 8 (d - 1) per element.
    """
    if degree == 1:
        return [v]
    handle = ctx.correlations.request("pow", (degree, *v.shape))
    (a,) = handle.randoms
    (e,) = open_all(ctx, [v - a], f"{op}:pow")
    (ap,) = handle.derived()
    raw = [(vk, (k - 1) * f) for k, vk in enumerate(raw_powers(ctx, e, a, ap, degree)[1:], start=2)]
    return [v, *truncate_many(ctx, raw, f"{op}:powtr")]
