"""Correlated randomness from a dealer, seed-compressed.

Every party ``i`` shares a 32-byte seed with the dealer and expands it with
AES-CTR (``mpc.prg.Prg``).  A correlation has *random* parts (uniform, drawn by
every party from its own stream, e.g. the Beaver masks ``a`` and ``b``) and
*derived* parts (a function of the random totals, e.g. ``c = a * b``).
Parties ``0..n-2`` draw their derived shares from their streams as well; only
party ``n-1`` receives its derived shares from the dealer, computed as
``derived(total) - sum(other shares)``.  So the dealer sends one ring element
per derived element, to one party, and never receives anything but the public
request (kind and shapes) from party ``n-1``.

Parts are additive (shares sum to the value in Z_2^64) unless a kind's
``xor_parts`` marks them binary: then the parties' shares XOR to the value (a
word of 64 independent bits), the dealer XORs the parties' random draws and
sends ``value XOR (XOR of the other shares)`` as the correction.  A kind can
thus hand out one random word both as an XOR sharing and as an additive one
(the comparison's mask ``r``), or random bits with their arithmetic shares (the
conversion from binary to arithmetic).

Every request draws a fresh 32-byte seed from each stream and expands the
correlation from a sub-seed keyed with the request (``request_seed``: keyed
BLAKE2b of its kind and parameters), so the dealer can draw the seeds of the
next request before it knows what the request is: ``Speculator`` learns the
pattern of the requests (a training loop or batched inference repeats the same
sequence) and the dealer produces the next correlation while the parties
compute and open, instead of after they ask.  The last party runs the same
speculator and asks the dealer to push the guessed material as soon as it has
answered the request before (``PUSH_HEAD``), so it travels while the parties
compute too.  A wrong guess costs time, never correctness or secrecy: the
request is served afresh, and the material of the wrong guess was expanded
from sub-streams that no party uses, so the pushed copy tells the last party
nothing.

The same generator code runs in the dealer process and in the in-process
simulator (``DealerGenerator``), so what is tested is what is deployed.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

import mpc.kernels as kernels
from mpc.buffers import BufferPool
from mpc.context import Communicator, CorrelationSource, Expect, Handle
from mpc.errors import ProtocolError
from mpc.prg import SEED_BYTES, Prg, widen
from mpc.ring import logical_rshift, msb
from mpc.shapes import broadcast_shapes

from . import bitforms as bf

__all__ = [
    "Correlation",
    "CORRELATIONS",
    "DealerSource",
    "DealerGenerator",
    "Speculator",
    "pack_shapes",
    "unpack_shapes",
    "REUSE_WINDOW",
    "FRESH",
    "OP_MUL",
    "OP_MATMUL",
    "OP_CONV2D",
    "CMP_B2A",
    "CMP_MUL",
    "CMP_LANES",
    "LUT_EXP",
    "LUT_TABLE",
]

OP_MUL, OP_MATMUL, OP_CONV2D = 0, 1, 2
MAX_PARAMS = 64


def pack_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    out: list[int] = []
    for s in shapes:
        out.append(len(s))
        out.extend(int(d) for d in s)
    return tuple(out)


def unpack_shapes(params: Sequence[int], count: int) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    shapes, i = [], 0
    for _ in range(count):
        n = int(params[i])
        shapes.append(tuple(int(d) for d in params[i + 1 : i + 1 + n]))
        i += 1 + n
    return shapes, tuple(int(p) for p in params[i:])


# A matrix-vector product of int64 of at most this many matrix elements runs as a product and a row sum:
# torch's int64 ``mm`` has no fast matrix-vector path (4096 x 64 by 64 x 1: 0.59 ms, its transpose 1.23 ms,
# against 0.18 ms for either as ``(a * b^T).sum(1)``, one thread); the temporary is one matrix's size.
MV_ELEMENTS = 1 << 22


def matmul_ring(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` modulo 2^64 (int64 wraps), a matrix times a column as a product and a row sum."""
    if a.dim() == 2 and b.dim() == 2 and b.shape[1] == 1 and a.numel() <= MV_ELEMENTS:
        return (a * b.reshape(1, -1)).sum(1, keepdim=True)
    return kernels.matmul(a, b)


def _bilinear(op: int, a: torch.Tensor, b: torch.Tensor, extra: tuple[int, ...]) -> torch.Tensor:
    if op == OP_MUL:
        return a * b
    if op == OP_MATMUL:
        return matmul_ring(a, b)
    if op == OP_CONV2D:
        sh, sw, ph, pw, dh, dw, groups = extra
        return kernels.conv2d(a, b, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    raise ProtocolError(f"unknown bilinear operation code {op}")


def _bilinear_shape(op: int, sa: tuple[int, ...], sb: tuple[int, ...], extra: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of ``a op b``, computed without running it (errors say why)."""
    if op == OP_MUL:
        return broadcast_shapes(sa, sb)
    if op == OP_MATMUL:
        if not sa or not sb:
            raise ValueError("matmul needs tensors of at least one dimension")
        a2 = sa if len(sa) > 1 else (1, *sa)
        b2 = sb if len(sb) > 1 else (*sb, 1)
        if a2[-1] != b2[-2]:
            raise ValueError(f"matmul shapes {sa} and {sb} do not match")
        batch = broadcast_shapes(a2[:-2], b2[:-2])
        out = (*batch, a2[-2], b2[-1])
        if len(sa) == 1:
            out = out[:-2] + out[-1:]
        if len(sb) == 1:
            out = out[:-1]
        return out
    if op == OP_CONV2D:
        if len(sa) != 4 or len(sb) != 4 or len(extra) != 7:
            raise ValueError("conv2d needs a 4-d input (N, C, H, W) and a 4-d kernel")
        sh, sw, ph, pw, dh, dw, groups = extra
        n, c, h, w = sa
        o, cg, kh, kw = sb
        if groups < 1 or c != cg * groups or o % groups or min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
            raise ValueError(f"conv2d input {sa}, kernel {sb} and groups {groups} do not match")
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"conv2d kernel {sb} is larger than the padded input {sa}")
        return (n, o, oh, ow)
    raise ValueError(f"unknown bilinear operation code {op}")


def _triple_shapes(params):
    (sa, sb), _ = unpack_shapes(params[1:], 2)
    return [sa, sb]


def _triple_out(params):
    (sa, sb), extra = unpack_shapes(params[1:], 2)
    return [_bilinear_shape(int(params[0]), sa, sb, extra)]


def _triple_derive(r, params):
    _, extra = unpack_shapes(params[1:], 2)
    return [_bilinear(int(params[0]), r[0], r[1], extra)]


def _trunc_shapes(p):
    if len(p) < 1 or not 1 <= int(p[0]) <= 62:
        raise ValueError(f"trunc takes a shift in [1, 62] and a shape, got {tuple(p[:1])}")
    return [tuple(p[1:])]


def _trunc_derive(r, params):
    f = int(params[0])
    return [logical_rshift(r[0], f), msb(r[0])]


def _ptr_split(p):
    """``(f, triple params)`` of a ``ptrunc`` request."""
    if len(p) < 2 or not 1 <= int(p[0]) <= 62:
        raise ValueError(f"ptrunc takes a shift in [1, 62] and a triple's parameters, got {tuple(p[:1])}")
    return int(p[0]), tuple(p[1:])


def _ptr_random(p):
    _, tp = _ptr_split(p)
    return [*_triple_shapes(tp), *_triple_out(tp)]


def _ptr_derived(p):
    _, tp = _ptr_split(p)
    return _triple_out(tp) * 3


def _ptr_widths(p):
    f, _ = _ptr_split(p)
    return [8, -(-f // 8), -(-f // 8)]


def _ptr_derive(r, p):
    """``(a op b + r, t, msb(r))`` with ``r = rotl(s, f)``: see ``truncation.finish_rotated``."""
    f, tp = _ptr_split(p)
    return _ptr_material(r, f, tp)


# A product may reuse the Beaver mask opened for an unchanged operand (``beaver``, a share's ``Memo``) while the
# request that drew the mask is one of the last REUSE_WINDOW requests: the dealer keeps those requests' sub-seeds
# (32 bytes per party each: about 3 MB for 3 parties) and draws the mask again from them.  A mask older than that
# is opened afresh, once per window: a data matrix used in every step of a loop of 1000 requests a step is
# opened once every 16 steps.
REUSE_WINDOW = 1 << 14
# How many requests the Speculator looks back for a period (and so the most the dealer draws ahead).
SPECULATION_WINDOW = 4096
# The dealer's copies of masks drawn again, for the next reuses of the same mask (a data matrix in every step).
MASK_CACHE_BYTES = 64 << 20
FRESH = -1


def _ptrr_split(p):
    """``(f, ((serial, offset, flip) of x's mask, of y's), triple params)`` of a ``ptruncr`` request."""
    if len(p) < 9 or not 1 <= int(p[0]) <= 62:
        raise ValueError(
            "ptruncr takes a shift in [1, 62], two mask references (serial, offset, flip) and a triple's parameters"
        )
    refs = tuple((int(p[i]), int(p[i + 1]), int(p[i + 2])) for i in (2, 5))
    for serial, offset, flip in refs:
        if serial < FRESH or offset < 0 or flip not in (0, 1) or (serial == FRESH and (offset or flip)):
            raise ValueError(f"a mask reference is (serial >= 0, offset >= 0, flip 0 or 1) or (-1, 0, 0), got "
                             f"{(serial, offset, flip)}")  # fmt: skip
    if refs[0][0] == FRESH and refs[1][0] == FRESH:
        raise ValueError("ptruncr reuses at least one operand's mask (ask for ptrunc otherwise)")
    return int(p[0]), refs, (int(p[1]), *(int(v) for v in p[8:]))


def _swap_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) < 2:
        raise ValueError(f"a transposed mask needs two dimensions, got shape {shape}")
    return (*shape[:-2], shape[-1], shape[-2])


def _ptrr_reused(p):
    """The reused masks: ``(position among the random parts, serial, offset, flip, shape as drawn)``."""
    _, refs, tp = _ptrr_split(p)
    shapes = _triple_shapes(tp)
    out = []
    for pos, ((serial, offset, flip), shape) in enumerate(zip(refs, shapes, strict=True)):
        if serial != FRESH:
            out.append((pos, serial, offset, flip, _swap_last(shape) if flip else shape))
    return out


def _ptrr_random(p):
    _, refs, tp = _ptrr_split(p)
    fresh = [shape for (serial, _, _), shape in zip(refs, _triple_shapes(tp), strict=True) if serial == FRESH]
    return [*fresh, *_triple_out(tp)]


def _ptrr_derived(p):
    _, _, tp = _ptrr_split(p)
    return _triple_out(tp) * 3


def _ptrr_widths(p):
    f, _, _ = _ptrr_split(p)
    return [8, -(-f // 8), -(-f // 8)]


def _ptrr_derive(r, p):
    f, _, tp = _ptrr_split(p)
    return _ptr_material(r, f, tp)


def _ptrr_refs(p) -> list[int]:
    """The positions of ``p`` that hold a serial (what the Speculator shifts from one iteration to the next)."""
    return [i for i in (2, 5) if len(p) > i and int(p[i]) != FRESH]


def _ptr_material(r, f, tp):
    a, b, s = r
    (c,) = _triple_derive([a, b], tp)
    t = logical_rshift(s, 64 - f)  # the top f bits of s, which the rotation brings to the bottom of r
    c += (s << f) | t
    return [c, t, (s >> (63 - f)) & 1]


MAX_DIVISOR = 1 << 62


def _div_check(p):
    if len(p) < 1 or not 2 <= int(p[0]) <= MAX_DIVISOR:
        raise ValueError(f"div takes a divisor in [2, 2^62] and a shape, got {tuple(p[:1])}")
    return int(p[0])


def _div_shapes(p):
    _div_check(p)
    return [tuple(p[1:])]


def udiv(r: torch.Tensor, d: int) -> torch.Tensor:
    """``floor(r / d)`` reading the int64 ``r`` as unsigned (the quotient fits in int64 for d >= 2)."""
    q = r.contiguous().reshape(-1).numpy().view(np.uint64) // np.uint64(d)
    return torch.from_numpy(q.view(np.int64)).reshape(r.shape)


def _div_derive(r, params):
    d = _div_check(params)
    return [udiv(r[0], d), msb(r[0])]


# ----- binary and mixed kinds (comparison, conversions, polynomials) ---------------------------------

# Flags of the "cmp" kind.  CMP_LANES names the leaf layout (four elements to a word, ``bitforms.lane_split``)
# and is required: a party built for the earlier layout (one element to a word) is refused, not served
# material it would misread.
CMP_B2A, CMP_MUL, CMP_LANES = 1, 2, 4
CMP_FLAGS = CMP_B2A | CMP_MUL | CMP_LANES


def _band_shapes(p):
    m, shape = int(p[0]), tuple(p[1:])
    return [shape, (m, *shape)]


def _band_derive(r, p):
    return [r[0].unsqueeze(0) & r[1]]


def _cmp_check(p):
    if len(p) != 4 or min(p) < 0:
        raise ValueError("cmp takes (elements, thresholds, flags, extra width), none negative")
    n, k, flags, m = (int(v) for v in p)
    if flags & ~CMP_FLAGS:
        raise ValueError(f"cmp flags are CMP_B2A | CMP_MUL | CMP_LANES ({CMP_FLAGS}) at most, got {flags}")
    if not flags & CMP_LANES:
        raise ValueError(
            "cmp requests must set CMP_LANES (the leaf layout with four elements to a word); "
            "update the party to the dealer's version"
        )
    if (flags & CMP_MUL or m) and not flags & CMP_B2A:
        raise ValueError("products with the comparison bit need its arithmetic form (flag CMP_B2A)")
    return n, k, flags, m


def _cmp_random(p):
    n, k, _, m = _cmp_check(p)
    w = bf.sliced_words(n)
    return [(n,), (k, len(bf.L1_VARS), 4, w), (k, len(bf.L2_VARS) + 1, w)] + ([(k, n, m)] if m else [])


def _cmp_derived(p):
    n, k, flags, m = _cmp_check(p)
    w = bf.sliced_words(n)
    out = [(n,), (len(bf.LEAF_MONOS), bf.lane_width(n)), (k, len(bf.L1_MONOS), 4, w), (k, len(bf.L2_MONOS), w)]
    if flags & CMP_B2A:
        out.append((k, n))
    if flags & CMP_MUL:
        out.append((k, n))
    if m:
        out.append((k, n, m))
    return out


def _cmp_xor(p):
    _, _, flags, m = _cmp_check(p)
    rnd = [False, True, True] + ([False] if m else [])
    der = [True, True, True, True] + [False] * (bool(flags & CMP_B2A) + bool(flags & CMP_MUL) + bool(m))
    return rnd, der


def _cmp_derive(r, p):
    """The comparison's dealer material (see ``protocols.comparison``).

    ``r`` is one uniform word per element given additively shared (random
    part: the parties open ``x + r`` without waiting for the dealer) and
    XOR-shared (derived); the leaf monomials are products of bits of ``r``
    inside each 4-bit block, in the leaf layout of four elements to a word
    (``bitforms.leaf_singles``: lane ``o`` of word ``i`` is element ``o m + i``),
    all 64 bits live, so ``ceil(n / 4)`` words per monomial; the tree monomials
    are products of the level-1 and level-2 mask bits (element-sliced words);
    ``t`` comes with its arithmetic shares, and with ``r t`` and ``a t`` for the
    products.
    """
    n, _, flags, m = _cmp_check(p)
    rw, a1, a2 = r[0], r[1], r[2]
    singles = bf.leaf_singles(rw, n)
    leaf = bf.monomial_words(bf.LEAF_MONOS, lambda v: singles[v[1]])
    l1 = bf.monomial_words(bf.L1_MONOS, lambda v: a1[:, bf.L1_VARS.index(v)])
    l2 = bf.monomial_words(bf.L2_MONOS, lambda v: a2[:, bf.L2_VARS.index(v)])
    out = [rw.clone(), torch.stack(leaf), torch.stack(l1, 1), torch.stack(l2, 1)]
    t = bf.unslice_bits(a2[:, bf.T_INDEX], n)
    if flags & CMP_B2A:
        out.append(t)
    if flags & CMP_MUL:
        out.append(rw.unsqueeze(0) * t)
    if m:
        out.append(r[3] * t.unsqueeze(-1))
    return out


def _pow_shapes(p):
    return [tuple(p[1:])]


def _pow_derived(p):
    d = int(p[0])
    if not 2 <= d <= 8:
        raise ValueError("pow correlations give powers 2..d of the mask with 2 <= d <= 8")
    return [(d - 1, *p[1:])]


def _pow_derive(r, p):
    a = r[0]
    powers, cur = [], a
    for _ in range(int(p[0]) - 1):
        cur = cur * a
        powers.append(cur)
    return [torch.stack(powers)]


def _b2aw_positions(p) -> list[int]:
    if len(p) < 1 or int(p[0]) == 0:
        raise ValueError("b2aw takes a nonzero mask of bit positions and a shape")
    mask = int(p[0]) & ((1 << 64) - 1)
    return [i for i in range(64) if mask >> i & 1]


def _b2aw_derived(p):
    return [(len(_b2aw_positions(p)), *p[1:])]


def _b2aw_correct(r, others, p):
    """``bits - others``, a row at a time (no stack of shifted copies)."""
    (out,) = others
    out.neg_()
    for k, pos in enumerate(_b2aw_positions(p)):
        out[k] += (r[0] >> pos) & 1
    return [out]


def _b2aw_derive(r, p):
    pos = torch.tensor(_b2aw_positions(p), dtype=torch.int64).reshape(-1, *([1] * r[0].dim()))
    return [(r[0].unsqueeze(0) >> pos) & 1]


MAX_ONEHOT = 256


def _hot_positions(idx: torch.Tensor, size: int) -> torch.Tensor:
    """The flat position of each element's 1 in an ``(n, size)`` one-hot of ``idx mod size``."""
    idx = (idx & (size - 1)).reshape(-1)
    return torch.arange(idx.numel(), dtype=torch.int64).mul_(size).add_(idx)


def _scaled_onehot(idx: torch.Tensor, size: int, value: torch.Tensor | None) -> torch.Tensor:
    """The ``(n, size)`` one-hot of ``idx mod size`` (n = idx.numel()), each 1 times ``value`` where given."""
    out = torch.zeros(idx.numel() * size, dtype=torch.int64)
    pos = _hot_positions(idx, size)
    out[pos] = 1 if value is None else value.reshape(-1)
    return out.reshape(-1, size)


def _scaled_onehot_correct(idx: torch.Tensor, size: int, value: torch.Tensor | None, others: torch.Tensor):
    """``_scaled_onehot(...) - others`` in place of ``others``: negated, then each element's one entry added."""
    others.neg_()
    pos = _hot_positions(idx, size)
    add = torch.ones(pos.numel(), dtype=torch.int64) if value is None else value.reshape(-1)
    return others.view(-1).index_add_(0, pos, add).view(others.shape)


LUT_EXP, LUT_TABLE = 0, 1


def _lut_check(p):
    """``(mode, n, K, mult, idx_shift, table, low_bits, v_shift, v_bits, degree, poly_shift, out_shift)`` of a
    ``cmplut`` request (``protocols.lookup``): mode LUT_EXP (``A P``, then a truncation by ``out_shift``) or
    LUT_TABLE (coefficient rows; ``low_bits`` and ``out_shift`` 0)."""
    if len(p) != 12:
        raise ValueError(
            "cmplut takes (mode, elements, thresholds, multiplier, index shift, table size, low bits, v shift, "
            "v bits, degree, polynomial shift, output shift)"
        )
    mode, n, k, mult, ish, table, w, vsh, vbits, degree, tb, ts = (int(v) for v in p)
    if mode not in (LUT_EXP, LUT_TABLE):
        raise ValueError(f"cmplut: mode {LUT_EXP} (exp) or {LUT_TABLE} (table), got {mode}")
    if n < 1 or k < 1 or not mult & 1 or mult < 1:
        raise ValueError("cmplut: elements and thresholds at least 1, and an odd positive multiplier")
    if not 2 <= table <= MAX_ONEHOT or table & (table - 1):
        raise ValueError(f"cmplut: the table size is a power of two in [2, {MAX_ONEHOT}]")
    if not (0 <= w <= 4 and (w > 0) == (mode == LUT_EXP)):
        raise ValueError("cmplut: low bits in [1, 4] for exp, 0 for a table")
    top = ish + w + table.bit_length() - 1
    if not (1 <= ish and top <= 62 and 0 <= vsh and vsh + vbits == ish and 1 <= vbits <= 16 and 2 <= degree <= 8):
        raise ValueError("cmplut: shifts in [0, 62], v bits in [1, 16] just below the index, degree in [2, 8]")
    if not 1 <= tb <= 62 or not (1 <= ts <= 62 if mode == LUT_EXP else ts == 0):
        raise ValueError("cmplut: truncation shifts in [1, 62] (the output shift 0 for a table)")
    return mode, n, k, mult, ish, table, w, vsh, vbits, degree, tb, ts


def _lut_cmp(n, k):
    return (n, k, CMP_LANES | CMP_B2A, 0)


def _lut_random(p):
    mode, n, k, *_, degree, _, _ = _lut_check(p)
    extra = [(n,), (n,), (n,)] if mode == LUT_EXP else [(degree, n), (n,)]
    return _cmp_random(_lut_cmp(n, k)) + extra


def _lut_derived(p):
    mode, n, k, _, _, table, _, _, _, degree, _, _ = _lut_check(p)
    head = _cmp_derived(_lut_cmp(n, k)) + [(n, table), (degree, n)]
    if mode == LUT_EXP:  # r2 >> tb, msb(r2), a (r2 >> tb), a msb(r2); r3 >> ts, msb(r3), and both times t
        return head + [(n,)] * 6 + [(k, n)] * 2
    return head + [(degree, n), (n,), (n,), (k, n), (k, n)]


def _lut_xor(p):
    mode = _lut_check(p)[0]
    nr, nd = (3, 10) if mode == LUT_EXP else (2, 7)
    return [False, True, True] + [False] * nr, [True] * 4 + [False] * (1 + nd)


def _lut_widths(p):
    mode, *_, tb, ts = _lut_check(p)
    wb, ws = -(-tb // 8), -(-ts // 8)
    if mode == LUT_EXP:
        return [8] * 8 + [wb, 8, wb, 8, ws, 8, ws]
    return [8] * 8 + [8, wb, 8, wb]


def _lut_hot(big: torch.Tensor, p) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one-hot's index (bits ``[idx_shift + low_bits, ...)`` of ``R = mult r``, low bits of the result) and
    each 1's value: ``2^(2^w - 1 - low)`` for the ``w`` low bits at ``idx_shift`` (exp), or 1 (a table)."""
    _, _, _, _, ish, _, w, *_ = _lut_check(p)
    if not w:
        return logical_rshift(big, ish), None
    low = logical_rshift(big, ish).bitwise_and_((1 << w) - 1)
    return logical_rshift(big, ish + w), torch.ones_like(low).bitwise_left_shift_(((1 << w) - 1) - low)


def _lut_parts(r, p, onehot: bool) -> list:
    """The ``cmplut`` material (see ``protocols.lookup``); without ``onehot`` the one-hot's place holds its
    ``(index, value)`` (``_lut_hot``), for a sparse correction."""
    mode, n, k, mult, _, table, _, vsh, vbits, degree, tb, ts = _lut_check(p)
    out: list = list(_cmp_derive(r[:3], _lut_cmp(n, k)))
    t = out[4]
    big = r[0] * mult  # the split's mask (uniform: the multiplier is odd)
    hot = _lut_hot(big, p)
    out.append(_scaled_onehot(hot[0], table, hot[1]) if onehot else hot)
    a = logical_rshift(big, vsh).bitwise_and_((1 << vbits) - 1).neg_()  # -delta: v = public - delta
    powers = [a]
    for _ in range(degree - 1):
        powers.append(powers[-1] * a)
    out.append(torch.stack(powers))
    if mode == LUT_EXP:
        a_big, r2, r3 = r[3], r[4], r[5]
        r2q, r2m, r3q, r3m = logical_rshift(r2, tb), msb(r2), logical_rshift(r3, ts), msb(r3)
        return out + [r2q, r2m, a_big * r2q, a_big * r2m, r3q, r3m, r3q * t, r3m * t]
    coef_masks, r2 = r[3], r[4]
    ad = coef_masks * torch.stack(powers)  # a_j (-delta)^j, j = 1..degree
    r2q, r2m = logical_rshift(r2, tb), msb(r2)
    return out + [ad, r2q, r2m, r2q * t, r2m * t]


def _lut_derive(r, p):
    return _lut_parts(r, p, True)


def _lut_correct(r, others, p):
    """Every part against the other parties' shares, the one-hot sparsely (``_scaled_onehot_correct``)."""
    table = _lut_check(p)[5]
    _, dxor = _lut_xor(p)
    out = []
    for w, o, x in zip(_lut_parts(r, p, False), others, dxor, strict=True):
        if isinstance(w, tuple):
            out.append(_scaled_onehot_correct(w[0], table, w[1], o))
        else:
            out.append(w.bitwise_xor_(o) if x else w.sub_(o))
    return out


@dataclass(frozen=True)
class Correlation:
    """A kind of correlated randomness: its random parts and how derived parts follow."""

    name: str
    random_shapes: Callable[[tuple[int, ...]], list[tuple[int, ...]]]
    derived_shape_fn: Callable[[tuple[int, ...]], list[tuple[int, ...]]]
    derive: Callable[[list[torch.Tensor], tuple[int, ...]], list[torch.Tensor]]
    # (random part is XOR-shared?, derived part is XOR-shared?) per part; None: all additive.
    xor_parts: Callable[[tuple[int, ...]], tuple[Sequence[bool], Sequence[bool]]] | None = None
    # Bytes per element of each derived part in the dealer's correction: a part whose shares matter only modulo
    # 2^(8 w) (truncation's msb, used times 2^(64 - f)) travels in its low w bytes; None: 8 for every part.
    derived_widths: Callable[[tuple[int, ...]], Sequence[int]] | None = None
    # The correction straight from the random totals and the other parties' derived shares (XOR-combined
    # where a part is XOR-shared), for kinds whose derived parts are sparse: cheaper than deriving them densely
    # and subtracting.
    correct: Callable[[list[torch.Tensor], list[torch.Tensor], tuple[int, ...]], list[torch.Tensor]] | None = None
    # Random parts that reuse the mask of an earlier request instead of being drawn: ``(position among the
    # random parts, serial, offset, flip, shape as drawn)``; the dealer draws them again from that request's
    # sub-seeds.  ``refs``: the parameter positions that hold those serials.
    reused: Callable[[tuple[int, ...]], list[tuple[int, int, int, int, tuple[int, ...]]]] | None = None
    refs: Callable[[tuple[int, ...]], list[int]] | None = None

    def widths(self, params: tuple[int, ...], n_derived: int) -> list[int]:
        return [8] * n_derived if self.derived_widths is None else [int(w) for w in self.derived_widths(params)]

    def part_kinds(self, params: tuple[int, ...], n_random: int, n_derived: int) -> tuple[list[bool], list[bool]]:
        if self.xor_parts is None:
            return [False] * n_random, [False] * n_derived
        rx, dx = self.xor_parts(params)
        return list(rx), list(dx)

    def derived_shapes(self, params: tuple[int, ...]) -> list[tuple[int, ...]]:
        try:
            return [tuple(s) for s in self.derived_shape_fn(params)]
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ProtocolError(f"bad parameters for correlation {self.name!r}: {exc}") from None


CORRELATIONS: dict[str, Correlation] = {
    # (a, b, c = a op b): op is elementwise mul, matmul or conv2d (params[0]).
    "triple": Correlation("triple", _triple_shapes, _triple_out, _triple_derive),
    # (a, a*a) for squaring.
    "square": Correlation("square", lambda p: [tuple(p)], lambda p: [tuple(p)], lambda r, p: [r[0] * r[0]]),
    # (r, r >> f, msb(r)) for exact truncation; params = (f, *shape).  msb(r) only counts modulo 2^f
    # (``truncation.divide_many`` multiplies it by 2^(64 - f)): its correction travels in ceil(f / 8) bytes.
    "trunc": Correlation(
        "trunc", _trunc_shapes, lambda p: _trunc_shapes(p) * 2, _trunc_derive, None, lambda p: [8, -(-int(p[0]) // 8)]
    ),
    # A triple fused with a truncation mask, for a product truncated by f bits (``beaver.product_truncated``):
    # random a, b and s; derived a op b + r with r = rotl(s, f) (uniform), and the top f bits t of s and
    # msb(r), both counting only modulo 2^f: the dealer sends 8 + 2 ceil(f / 8) bytes per output element
    # where a triple and a truncation pair take 16 + ceil(f / 8); params = (f, *triple's params).
    "ptrunc": Correlation("ptrunc", _ptr_random, _ptr_derived, _ptr_derive, None, _ptr_widths),
    # The same with one or both operands' masks those of an earlier request (an operand opened before and not
    # changed since): params = (f, op, serial, offset, flip of x's mask, the same of y's, shapes, extra), serial
    # -1 for a fresh mask, offset its first element in that request's stream, flip 1 where the operand is the
    # drawn mask's transpose.  The parties draw only the fresh masks; the dealer draws the reused ones again.
    "ptruncr": Correlation(
        "ptruncr", _ptrr_random, _ptrr_derived, _ptrr_derive, None, _ptrr_widths, reused=_ptrr_reused, refs=_ptrr_refs
    ),
    # (r, floor(r / d), msb(r)) for exact division by a public integer d (unsigned r); params = (d, *shape).
    "div": Correlation("div", _div_shapes, lambda p: _div_shapes(p) * 2, _div_derive),
    # XOR-shared (a, b_1..b_m, a & b_i): AND gates, one input fanned out to m others; params = (m, *shape).
    "band": Correlation(
        "band", _band_shapes, lambda p: [(int(p[0]), *p[1:])], _band_derive, lambda p: ([True, True], [True])
    ),
    # A random bit t (bit 0 of an XOR-shared word) with its arithmetic shares: binary to arithmetic.
    "b2a": Correlation(
        "b2a", lambda p: [tuple(p)], lambda p: [tuple(p)], lambda r, p: [r[0] & 1], lambda p: ([True], [False])
    ),
    # A random word given additively (random part) and as XOR shares of its bits (derived): an edaBit.
    "edabit": Correlation(
        "edabit", lambda p: [tuple(p)], lambda p: [tuple(p)], lambda r, p: [r[0].clone()], lambda p: ([False], [True])
    ),
    # Everything one batch of comparisons needs; params = (elements, thresholds, flags, extra width);
    # flags: CMP_LANES (required) | CMP_B2A (arithmetic result) | CMP_MUL (its product with the input).
    "cmp": Correlation("cmp", _cmp_random, _cmp_derived, _cmp_derive, _cmp_xor),
    # A random XOR-shared word and the arithmetic shares of its bits at the positions of a mask: binary to
    # arithmetic of several bits of one word at once; params = (mask, *shape).
    "b2aw": Correlation(
        "b2aw", lambda p: [tuple(p[1:])], _b2aw_derived, _b2aw_derive, lambda p: ([True], [False]), None, _b2aw_correct
    ),
    # (a, a^2, ..., a^d): all powers of a secret from one opening; params = (d, *shape).
    "pow": Correlation("pow", _pow_shapes, _pow_derived, _pow_derive),
    # A comparison batch whose mask r also serves a table lookup (``protocols.lookup``: exp, sigmoid, tanh):
    # the comparison's parts (with its arithmetic bit t), then, for R = mult r, the one-hot of the bits
    # [idx_shift + low_bits, +log2 table) of R (exp: its 1 is 2^(2^low_bits - 1 - the low bits at idx_shift))
    # and the powers 1..degree of -delta for delta = the v_bits of R below idx_shift;
    # then, LUT_EXP: masks a, r2, r3 (random) with r2 >> poly_shift, msb(r2), a (r2 >> poly_shift), a msb(r2),
    # r3 >> out_shift, msb(r3), and the last two times t; LUT_TABLE: masks a_1..a_degree and r2 (random) with
    # a_j (-delta)^j (1 <= j <= degree), r2 >> poly_shift, msb(r2), and the last two times t.  params = (mode,
    # elements, thresholds, mult, idx_shift, table, low_bits, v_shift, v_bits, degree, poly_shift, out_shift).
    "cmplut": Correlation(
        "cmplut", _lut_random, _lut_derived, _lut_derive, _lut_xor, _lut_widths, correct=_lut_correct
    ),
}


# Draws from the correlated-randomness streams of at least STREAM_MIN_BYTES land in reused buffers, up to
# STREAM_KEEP of them: a request's parts come in many sizes (an exp of 10^5 draws about 15, 0.8 to 6.4 MB),
# and a fresh buffer's first touch costs more than its keystream (2.7 us a 4 KiB page here, about 0.7 ms a
# MB: an exp of 10^5 faulted 21 MB into party 0 per call).
STREAM_MIN_BYTES = 256 << 10
STREAM_KEEP = 48


# The last party's requests ask the dealer to push its guess of the next request's material as soon as it has
# answered this one (op ``corr:<kind>`` + PUSH_SUFFIX), so the next correlation travels while the parties compute
# instead of after the next request.  Both run the same ``Speculator`` on the same request stream, so they agree
# on the guess without a word: the dealer sends PUSH_HEAD (the guess's digest and whether material follows: none
# where it cannot make the guess) and then PUSH_BODY, the material.  A right guess is the answer (the dealer
# sends nothing more for that request); after a wrong one the dealer answers the request as usual.  The party
# asks only for a guess of at most PUSH_BYTES and a quarter of what it holds for a peer (``max_buffered_bytes``).
PUSH_SUFFIX = "+"
PUSH_HEAD, PUSH_BODY = "corr:push", "corr:pushed"
PUSH_DIGEST_BYTES = 16
PUSH_HEAD_BYTES = PUSH_DIGEST_BYTES + 1
PUSH_BYTES = 64 << 20


def request_seed(seed: bytes, kind: str, params: Sequence[int]) -> bytes:
    """A request's sub-seed: keyed BLAKE2b (a PRF) of its kind and parameters under the stream's next seed.

    The dealer draws each request's stream seeds before it knows the request (``DealerGenerator.next_seeds``);
    keying the sub-seed with the request itself makes what it derives from a wrong guess independent of what
    the real request gets: material pushed from a wrong guess (``PUSH_HEAD``) masks its values with shares no
    party ever uses, so it tells the last party nothing."""
    return hashlib.blake2b(_request_bytes(kind, params), key=seed, digest_size=SEED_BYTES).digest()


def _request_bytes(kind: str, params: Sequence[int]) -> bytes:
    return kind.encode() + b"\0" + np.asarray([int(p) for p in params], dtype="<i8").tobytes()


def guess_digest(guess: tuple[str, tuple[int, ...]] | None) -> bytes:
    """A short digest of a guessed request (its kind and parameters; None: no guess)."""
    data = b"" if guess is None else _request_bytes(*guess)
    return hashlib.blake2b(data, digest_size=PUSH_DIGEST_BYTES, person=b"mpc-push-guess").digest()


def stream_pool() -> BufferPool:
    """The buffers of one node's stream draws (``Prg`` with a pool; see ``mpc.buffers``)."""
    return BufferPool(keep=STREAM_KEEP, min_bytes=STREAM_MIN_BYTES)


def _lookup(kind: str) -> Correlation:
    try:
        return CORRELATIONS[kind]
    except KeyError:
        raise ProtocolError(f"unknown correlation kind {kind!r}") from None


class DealerSource(CorrelationSource):
    """A party's view of the dealer: expand from the seed, or (last party) ask for corrections."""

    def __init__(self, comm: Communicator, seed: bytes, rank: int, world_size: int) -> None:
        self._comm = comm
        self._prg = Prg(seed)
        self._rank = rank
        self._last = rank == world_size - 1
        self.served = 0  # requests made so far: the next one's serial
        self._buffers = stream_pool()  # the buffers of this party's draws, used again
        # The last party runs the dealer's speculator on its own requests (the same stream, so the same guesses)
        # and asks the dealer to push the guessed next correlation right after answering (``PUSH_SUFFIX``).
        self._spec = Speculator() if self._last else None
        self._guess: tuple[str, tuple[int, ...]] | None = None  # the guess of the next request
        self._pushed = False  # whether the dealer pushes material for the next request
        self._push_cap = min(PUSH_BYTES, int(getattr(comm, "max_buffered_bytes", 0)) // 4)

    def request(self, kind: str, params: tuple[int, ...]) -> Handle:
        corr = _lookup(kind)
        if len(params) > MAX_PARAMS:
            raise ProtocolError(f"too many parameters for correlation {kind!r}")
        serial = self.served
        self.served += 1
        # This request's sub-stream (the dealer draws the same one).
        sub = Prg(request_seed(self._prg.seed(), kind, params), self._buffers)
        randoms = [sub.int64(s) for s in corr.random_shapes(params)]
        shapes = corr.derived_shapes(params)
        widths = corr.widths(params, len(shapes))
        if not self._last:
            # Drawn when the protocol asks for them (after it has sent the opening the random parts mask): the
            # request's own sub-stream, so nothing else draws in between.
            return Handle(randoms, lambda: [sub.narrow(s, w) for s, w in zip(shapes, widths, strict=True)], serial)
        dealer = self._comm.dealer_id
        params = tuple(int(p) for p in params)  # as the dealer reads them (the speculators must agree)
        guess, pushed = self._guess, self._pushed
        spec = self._spec
        assert spec is not None
        spec.observe(kind, params, guess)
        nxt = spec.guess(0)
        self._guess = nxt
        self._pushed = nxt is not None and correction_bytes(_lookup(nxt[0]), nxt[1]) <= self._push_cap
        op = f"corr:{kind}" + (PUSH_SUFFIX if self._pushed else "")
        self._comm.send(dealer, op, torch.tensor(params, dtype=torch.int64))
        size = correction_bytes(corr, params)

        def fetch() -> list[torch.Tensor]:
            if pushed:  # the dealer pushed its guess of this request after answering the one before
                assert guess is not None
                head = self._comm.recv(dealer, PUSH_HEAD, Expect((PUSH_HEAD_BYTES,), torch.uint8))
                head_b = bytes(head.numpy().tobytes())
                if head_b[:-1] != guess_digest(guess):
                    raise ProtocolError(
                        f"the dealer pushed material for another guess of request {serial} than party "
                        f"{self._rank} made: the dealer and the party disagree on the request stream"
                    )
                if head_b[-1]:
                    got = self._comm.recv(
                        dealer, PUSH_BODY, Expect((correction_bytes(_lookup(guess[0]), guess[1]),), torch.uint8)
                    )
                    if guess == (kind, params):  # right: the dealer sends nothing more for this request
                        self._comm.stats.dealer_pushed += 1
                        return unpack_correction(got, shapes, widths)
                    self._comm.stats.dealer_pushed_wrong += 1
                    del got  # wrong: the dealer answers the request itself
            buf = self._comm.recv(dealer, f"corr:{kind}", Expect((size,), torch.uint8))
            return unpack_correction(buf, shapes, widths)

        return Handle(randoms, fetch, serial)


def pack_correction(
    parts: Sequence[torch.Tensor], widths: Sequence[int], pool: BufferPool | None = None
) -> torch.Tensor:
    """The dealer's correction on the wire: each part's elements in their low ``width`` bytes, little-endian,
    written straight into one buffer (from ``pool`` when given: a large one is used again once sent)."""
    if len(parts) == 1 and widths[0] == 8:  # one whole-word part: its bytes as they are, no copy
        return torch.from_numpy(parts[0].reshape(-1).contiguous().numpy().astype("<i8", copy=False).view(np.uint8))
    sizes = [part.numel() * int(w) for part, w in zip(parts, widths, strict=True)]
    total = sum(sizes)
    out = pool.take(total) if pool is not None else torch.empty(total, dtype=torch.uint8)
    buf = out.numpy()
    at = 0
    for part, w, size in zip(parts, widths, sizes, strict=True):
        words = part.reshape(-1).contiguous().numpy().astype("<i8", copy=False)
        dst = buf[at : at + size]
        at += size
        if w == 8:
            dst[:] = words.view(np.uint8)
        elif w in (1, 2, 4) and dst.ctypes.data % w == 0:
            dst.view(f"<u{w}")[:] = words  # the low w bytes: the cast wraps modulo 2^(8 w)
        else:
            _put_narrow(dst, words, w)
    return out


def _put_narrow(dst: np.ndarray, words: np.ndarray, w: int) -> None:
    """The low ``w`` bytes of each of ``words``, little-endian, one element after another in ``dst``: pieces of
    4, 2 and 1 bytes written at a stride of ``w`` (each piece's cast wraps to the word's bytes at its offset;
    the pieces never overlap).  A copy of 8-byte rows cut to ``w`` took about five times as long."""
    u = words.view("<u8")  # the words' byte order, as ``words`` (little-endian int64) holds them
    off = 0
    for piece in (4, 2, 1):
        if w - off >= piece:
            view = np.ndarray((words.size,), dtype=f"<u{piece}", buffer=dst, offset=off, strides=(w,))
            view[:] = u >> np.uint64(8 * off) if off else u
            off += piece


def unpack_correction(
    buf: torch.Tensor, shapes: Sequence[tuple[int, ...]], widths: Sequence[int]
) -> list[torch.Tensor]:
    """``pack_correction``'s parts back as int64 (a narrow part's values in [0, 2^(8 w)): right modulo that)."""
    raw = buf.numpy()
    parts, at = [], 0
    for shape, w in zip(shapes, widths, strict=True):
        n = _numel(shape)
        chunk = raw[at : at + n * w]
        at += n * w
        parts.append(torch.from_numpy(widen(chunk, w).astype(np.int64, copy=False)).reshape(shape))
    return parts


def correction_bytes(corr: Correlation, params: tuple[int, ...]) -> int:
    shapes = corr.derived_shapes(params)
    return sum(_numel(s) * w for s, w in zip(shapes, corr.widths(params, len(shapes)), strict=True))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _combine(a: torch.Tensor, b: torch.Tensor, xor: bool) -> torch.Tensor:
    """``a ^ b`` or ``a + b``, into ``a`` (a sum the dealer owns) where the shapes allow."""
    if a.shape != b.shape:
        return a ^ b if xor else a + b
    return a.bitwise_xor_(b) if xor else a.add_(b)


class DealerGenerator:
    """The dealer's side: all parties' streams, and the last party's corrections."""

    def __init__(self, seeds: Sequence[bytes]) -> None:
        self._prgs = [Prg(s) for s in seeds]
        # The sub-seeds of the last requests, for masks that later requests reuse (the window the parties use,
        # plus what the dealer may have drawn ahead of them).
        # Each: ``[seeds, (kind, params)]``, the request's content once it was served (``served``).
        self._past: deque[list] = deque(maxlen=REUSE_WINDOW + SPECULATION_WINDOW)
        self.drawn = 0  # requests whose sub-seeds were drawn
        self._masks: dict[tuple, torch.Tensor] = {}  # masks drawn again, oldest first (MASK_CACHE_BYTES)
        self._mask_bytes = 0
        self._buffers = BufferPool()  # large corrections' buffers, used again once sent (mpc.buffers)
        self._stream_buffers = stream_pool()  # the buffers of the parties' streams' draws, used again

    def next_seeds(self) -> list[bytes]:
        """The sub-seeds of the next request, one per party (drawn whatever the request will be)."""
        seeds = [prg.seed() for prg in self._prgs]
        self._past.append([seeds, None])
        self.drawn += 1
        return seeds

    def served(self, serial: int, kind: str, params: tuple[int, ...]) -> None:
        """Request ``serial`` was ``(kind, params)``: its masks can be drawn again (``mask``) from now on."""
        first = self.drawn - len(self._past)
        if first <= serial < self.drawn:
            self._past[serial - first][1] = (kind, tuple(params))

    def mask(self, serial: int, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The total of the random part drawn at ``offset`` elements into request ``serial``'s streams (a mask
        that a later request reuses), drawn again from its sub-seeds; not to be changed in place."""
        first = self.drawn - len(self._past)
        if not first <= serial < self.drawn:
            raise ProtocolError(
                f"a request reuses the mask of request {serial}, which the dealer does not hold (it holds the "
                f"sub-seeds of requests {first} to {self.drawn - 1}): the party and the dealer disagree"
            )
        key = (serial, offset, tuple(shape))
        got = self._masks.pop(key, None)
        if got is None:
            seeds, req = self._past[serial - first]
            if req is None:
                raise ProtocolError(
                    f"a request reuses the mask of request {serial}, which the dealer has not served yet"
                )
            for s in seeds:
                prg = Prg(request_seed(s, *req))
                if offset:
                    prg.bytes(8 * offset)
                part = prg.int64(shape)
                got = part if got is None else got.add_(part)
            if got is None:
                raise ProtocolError("no parties")
            self._mask_bytes += 8 * got.numel()
        self._masks[key] = got  # the most recently used last
        while self._mask_bytes > MASK_CACHE_BYTES and len(self._masks) > 1:
            old = self._masks.pop(next(iter(self._masks)))
            self._mask_bytes -= 8 * old.numel()
        return got

    def correction(self, kind: str, params: tuple[int, ...], seeds: list[bytes] | None = None) -> torch.Tensor:
        """The last party's derived parts of the next request (``seeds``: its sub-seeds, if drawn already), packed
        for the wire (``pack_correction``: uint8)."""
        corr = _lookup(kind)
        if len(params) > MAX_PARAMS:
            raise ProtocolError(f"too many parameters for correlation {kind!r}")
        if seeds is None:
            seeds = self.next_seeds()
            self.served(self.drawn - 1, kind, params)
        subs = [Prg(request_seed(s, kind, params), self._stream_buffers) for s in seeds]
        rshapes = corr.random_shapes(params)
        dshapes = corr.derived_shapes(params)
        rxor, dxor = corr.part_kinds(params, len(rshapes), len(dshapes))
        widths = corr.widths(params, len(dshapes))
        n = len(self._prgs)
        totals: list[torch.Tensor] | None = None
        derived_sum: list[torch.Tensor] | None = None
        for i, prg in enumerate(subs):
            rs = [prg.int64(s) for s in rshapes]
            totals = rs if totals is None else [_combine(t, r, x) for t, r, x in zip(totals, rs, rxor, strict=True)]
            if i < n - 1:
                ds = [prg.narrow(s, w) for s, w in zip(dshapes, widths, strict=True)]
                derived_sum = (
                    ds
                    if derived_sum is None
                    else [_combine(t, d, x) for t, d, x in zip(derived_sum, ds, dxor, strict=True)]
                )
        assert totals is not None
        if corr.reused is not None:
            for pos, serial, offset, flip, shape in corr.reused(params):
                m = self.mask(serial, offset, shape)
                totals.insert(pos, m.transpose(-2, -1) if flip else m)
        if corr.correct is not None and derived_sum is not None:
            return pack_correction(corr.correct(totals, derived_sum, params), widths, self._buffers)
        wanted = corr.derive(totals, params)
        if derived_sum is not None:  # in place where the derivation made a fresh tensor (no extra copy)
            wanted = [
                (w.bitwise_xor_(d) if x else w.sub_(d))
                if w.is_contiguous() and w.shape == d.shape
                else (w ^ d if x else w - d)
                for w, d, x in zip(wanted, derived_sum, dxor, strict=True)
            ]
        return pack_correction(wanted, widths, self._buffers)


def _ref_positions(kind: str, params: tuple[int, ...]) -> list[int]:
    corr = CORRELATIONS.get(kind)
    return [] if corr is None or corr.refs is None else corr.refs(params)


class Speculator:
    """Guesses the dealer's next request from the ones before (a period in the request stream).

    Training loops and batched inference ask for the same sequence of
    correlations every iteration.  After each request the speculator looks
    for a period ``p`` (up to ``window``, among the distances to the last
    request's recent occurrences) with which the last ``confirm`` requests
    repeat, and guesses the request ``p`` back from the next one.  It guesses
    only while its guesses come true (after a miss the pattern must be seen
    again), so a program without repetition costs the dealer nothing but this
    bookkeeping: a few dictionary operations per request.

    A request that reuses an earlier request's mask (``ptruncr``) names that
    request by its serial.  Two requests a period apart repeat when their
    references are equal (a mask drawn before the loop: a data matrix used in
    every step) or a period apart (a mask drawn in the same iteration: a
    weight opened in the forward pass, reused in the backward one); a guess
    shifts the references of the second kind and keeps those of the first.
    """

    def __init__(self, window: int = SPECULATION_WINDOW, confirm: int = 4) -> None:
        self.window = window
        self.confirm = confirm
        self._hist: deque[tuple[str, tuple[int, ...]]] = deque(maxlen=window + confirm + 1)
        self._seen: dict[tuple[str, tuple[int, ...]], deque[int]] = {}
        self._n = 0  # requests observed
        self._period = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(req: tuple[str, tuple[int, ...]]) -> tuple[str, tuple[int, ...]]:
        """The request without its references (what a request one period later has in common with it)."""
        kind, params = req
        pos = _ref_positions(kind, params)
        if not pos:
            return req
        return kind, tuple(-2 if i in pos else v for i, v in enumerate(params))

    def _repeats(self, back: int, p: int) -> bool:
        """Whether the request ``back`` places from the last one repeats the one ``p`` before it."""
        h = self._hist
        new, old = h[-1 - back], h[-1 - back - p]
        if new == old and not _ref_positions(*old):
            return True
        if self._key(new) != self._key(old):
            return False
        n_old = self._n - 1 - back - p
        for i in _ref_positions(*old):
            r_old, r_new = old[1][i], new[1][i]
            if not (r_new == r_old if n_old - r_old >= p else r_new == r_old + p):
                return False
        return True

    def observe(self, kind: str, params: tuple[int, ...], guessed: tuple[str, tuple[int, ...]] | None) -> None:
        req = (kind, params)
        if guessed is not None:
            if guessed == req:
                self.hits += 1
            else:
                self.misses += 1
                self._period = 0
        h = self._hist
        h.append(req)
        p = self._period
        if p and (len(h) <= p or not self._repeats(0, p)):
            self._period = 0
        if not self._period:
            self._period = self._find_period(req)
        key = self._key(req)
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) > 4 * self.window:  # forget: a stream of ever new requests has no period
                self._seen.clear()
            seen = self._seen[key] = deque(maxlen=8)
        seen.append(self._n)
        self._n += 1

    def _find_period(self, req: tuple[str, tuple[int, ...]]) -> int:
        h, c = self._hist, self.confirm
        for j in reversed(self._seen.get(self._key(req), ())):
            p = self._n - j
            if p > self.window or len(h) < p + c:
                break
            if all(self._repeats(i, p) for i in range(c)):
                return p
        return 0

    @property
    def period(self) -> int:
        """The period of the request stream found so far (0: none)."""
        return self._period

    def guess(self, ahead: int = 0) -> tuple[str, tuple[int, ...]] | None:
        """The likely request ``ahead`` requests after the next one (0: the next), or None."""
        p = self._period
        if not p:
            return None
        back = p - ahead % p
        kind, params = self._hist[-back]
        pos = _ref_positions(kind, params)
        if not pos:
            return kind, params
        n_src = self._n - back
        shift = self._n + ahead - n_src
        out = list(params)
        for i in pos:
            if n_src - params[i] < p:  # a mask of the same iteration: the one a period (or more) later
                out[i] = params[i] + shift
        return kind, tuple(out)
