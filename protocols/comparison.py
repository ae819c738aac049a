"""Comparison: the sign bit of a shared ring element, in 4 rounds and about 12 bytes.

Which protocol, and why
-----------------------
Every comparison reduces to ``msb(z)`` for ``z = x - y`` in Z_2^64, read as a
signed number: ``[x < y] = msb(x - y)``, exact whenever ``|x - y| < 2^63``
(far beyond the fixed-point range).  We use a *dealer-masked opening
followed by a constant-depth carry tree* in the style of the "edaBits"/
"Rabbit" family (Escudero et al., CRYPTO 2020; Makri et al., 2021), with two
dealer-side shortcuts that keep it to four rounds:

* the mask ``r`` is uniform in Z_2^64 and comes both additively shared and as
  a XOR sharing of its 64 bits, so after opening ``c = z + r`` everything left
  is a comparison between a *public* word ``c`` and a *secret* word ``r``
  whose bits the dealer knows;
* within a 4-bit block, ``[c_blk < r_blk]`` and ``[c_blk == r_blk]`` are
  polynomials in the block's bits of ``r`` with public coefficients; the
  dealer supplies shares of the 11 products of those bits, so all 16 leaves
  are *local* (``protocols.bitforms``);
* the 16 leaves are merged four at a time (two levels) with *multi-input* AND
  gates: each input is opened once, masked by a fresh dealer bit, and the
  dealer supplies shares of the products of the masks that the merge formula
  needs (22 at level 1, 15 at level 2), so each level is one round and costs
  only one opened bit per input.

Comparators that open the masked value once and then run a binary circuit
(Damgard et al. TCC 2006 bit decomposition; the Kogge-Stone circuits of
CrypTen/ABY) need ~7 rounds of 64-bit ANDs (over 100 bytes per element);
function secret sharing (Boyle et al. 2021) needs one round but only for two
parties and with keys of kilobytes.  This design works for any number of
parties and meets both the round and the byte goals of ReLU.

The local work is bit-sliced so that it touches few words.  The leaves, the
heaviest part (a few dozen word operations per leaf word), put four
*elements* in the four bit lanes of every 4-bit block: lane ``o`` of leaf word
``i`` is element ``o m + i``, ``m = ceil(n / 4)`` (``bitforms.lane_split``), one
word per threshold, so a batch of ``K`` thresholds does ``K n / 4`` leaf words,
the least possible (filling the lanes with the thresholds instead wastes three
of the four lanes of a single-threshold comparison: ReLU, sign, max).  The
dealer's leaf monomials come in the same layout, every bit live (11 words per
four elements).  The tree levels work element-sliced (one bit of 64 consecutive
elements per word); after the 64 x 64 bit transpose of the leaf words, each
lane's run of ``m`` elements is shifted to its place in element order
(``bitforms.join_lanes``), so what is opened, and the dealer's tree material,
do not depend on the layout of the leaves.

Protocol (``compare``; ``K`` thresholds ``T_k`` share one opening)
------------------------------------------------------------------
1. Open ``c = x + r`` (and, for products with another secret ``y``, its
   Beaver opening ``y - a``): one round, 8 bytes per element.  ``c`` is uniform.
2. For each threshold, ``c_k = c - T_k`` is public and
   ``msb(x - T_k) = c_k[63] ^ r[63] ^ [c_k mod 2^63 < r mod 2^63]``.
   Leaves: per 4-bit block, G = [c < r], P = [c == r], locally, four
   elements to a word; then transposed to element-sliced words in order.
3. Level 1 (one round): open P ^ a for the 16 blocks and G ^ a for the 12
   blocks that are not the top of their group, packed: 28 bits.  Merge
   ``G = G3 ^ P3 G2 ^ P3 P2 G1 ^ P3 P2 P1 G0`` and ``P = P3 P2 P1 P0`` per group.
4. Level 2 (one round): the same over the 4 groups, G only: 6 bits.
5. Conversion to arithmetic (one round): open ``e = bit ^ t`` (1 bit) for a
   dealer bit ``t`` with arithmetic shares; ``bit = e + (1 - 2e) t``.  In the
   same round, the product with the input costs nothing more:
   ``x bit = e x + (1 - 2e) (c t - [r t])`` with dealer shares of ``r t`` (no
   truncation: the bit is an integer), and with another secret ``y`` opened as
   ``d = y - a`` in round 1: ``y bit = e y + (1 - 2e) (d t + [a t])``.

Cost, per element and per threshold, for each party and each other party:
rounds 4 (3 for a XOR-shared result); bytes 8 (once per element) + 35/8 per
threshold (+ 8 per extra multiplicand).  Dealer, to the last party only: 30
bytes per element (``r`` 8, the 11 leaf monomials 11 x 8 / 4) and 21 per
threshold (level-1 monomials 11, level-2 15/8, ``t`` 8), +8 for products with
the input, +8 per extra multiplicand; the element-sliced parts round ``n`` up
to a multiple of 64, the leaf monomials up to a multiple of 4.  ReLU of 10^6 elements with 2 parties:
4 rounds, 12.375 MB per party, 58.875 MB from the dealer.

Every opened value is a uniformly random word or bit, whatever the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mpc.context import PartyContext
from mpc.errors import ProtocolError
from mpc.ring import wrap_int
from mpc.shares import holds_public

from . import bitforms as bf
from .correlated import CMP_B2A, CMP_LANES, CMP_MUL
from .rounds import ADD, XOR, Steps, drive_one

__all__ = ["CmpResult", "compare", "compare_rounds", "compare_steps", "ltz", "relu", "sign_bits"]


@dataclass
class CmpResult:
    """The results of one batch of comparisons; each has the thresholds as leading dimension.

    bits: arithmetic shares of the 0/1 result (an integer, not scaled by 2^f).
    binary: XOR shares of the result (bit 0 of an int64 word).
    xbits: shares of ``x * bit`` (scale of ``x``).
    ybits: shares of ``extra * bit`` (``(K, *shape, m)``).
    """

    bits: torch.Tensor | None = None
    binary: torch.Tensor | None = None
    xbits: torch.Tensor | None = None
    ybits: torch.Tensor | None = None


def _live(i: int, width: int) -> int:
    mask = 0
    for j in range(16):
        if 4 * j + i < width:
            mask |= 1 << (4 * j)
    return wrap_int(mask)


def _leaf_forms(lanes: torch.Tensor, width: int) -> tuple[bf.Form, bf.Form]:
    """G = [c_low < r_low] and P = [c_low == r_low] per 4-bit block, over the low ``width`` bits.

    ``lanes`` is ``(4, K, m)``: the public words of four elements share each leaf word, lane ``o``
    in bit ``4j + o`` of block ``j`` (``bitforms.lane_split``); one word per threshold.
    """
    k = bf.lane_bits(~lanes)  # row i: bit i of every block of every lane
    g: list[bf.Form] = []
    p: list[bf.Form] = []
    for i in range(4):
        live = _live(i, width)
        ki = k[i] & bf.spread4(live)
        dead = bf.spread4(wrap_int(~live & ((1 << 64) - 1)))
        g.append(bf.f_var(bf.leaf_var(i), ki))
        p.append({frozenset(): ki | dead, frozenset([bf.leaf_var(i)]): bf.spread4(live)})
    gout, pout = bf.combine4(g, p, True)
    assert pout is not None
    return gout, pout


def compare(
    ctx: PartyContext,
    x: torch.Tensor,
    thresholds: Sequence[int] = (0,),
    *,
    negate: bool = False,
    arithmetic: bool = True,
    mul_input: bool = False,
    extra: torch.Tensor | None = None,
    bit: int = 63,
    op: str = "cmp",
) -> CmpResult:
    """``[x < T_k]`` (``msb(x - T_k)``) for every public ring value ``T_k``, or its negation ``[x >= T_k]``.

    ``bit < 63`` extracts bit ``bit`` of ``x - T_k`` instead of the sign bit.
    ``extra`` (shape ``(K, *x.shape, m)``) is multiplied by each result.
    Returns tensors of shape ``(K, *x.shape)``.
    """
    return drive_one(
        ctx,
        compare_steps(
            ctx, x, thresholds, negate=negate, arithmetic=arithmetic, mul_input=mul_input, extra=extra, bit=bit, op=op
        ),
    )


def compare_steps(
    ctx: PartyContext,
    x: torch.Tensor,
    thresholds: Sequence[int] = (0,),
    *,
    negate: bool = False,
    arithmetic: bool = True,
    mul_input: bool = False,
    extra: torch.Tensor | None = None,
    bit: int = 63,
    op: str = "cmp",
) -> Steps:
    """``compare`` as a step generator (``protocols.rounds``): its four rounds can share exchanges with
    another protocol's (``drive``)."""
    if not 1 <= bit <= 63:
        raise ProtocolError(f"compare: bit must be in 1..63, got {bit}")
    shape = tuple(x.shape)
    kk = len(thresholds)
    n = x.numel()
    m = 0 if extra is None else int(extra.shape[-1])
    if extra is not None and tuple(extra.shape) != (kk, *shape, m):
        raise ProtocolError(f"compare: extra must have shape {(kk, *shape, m)}, got {tuple(extra.shape)}")
    if (mul_input or extra is not None) and not arithmetic:
        raise ProtocolError("compare: products with the result need its arithmetic form")
    if n == 0 or kk == 0:
        empty = torch.zeros((kk, *shape), dtype=torch.int64)
        return CmpResult(
            bits=empty if arithmetic else None,
            binary=None if arithmetic else empty,
            xbits=empty.clone() if mul_input else None,
            ybits=torch.zeros((kk, *shape, m), dtype=torch.int64) if extra is not None else None,
        )
    flags = CMP_LANES | (CMP_B2A if arithmetic else 0) | (CMP_MUL if mul_input else 0)
    handle = ctx.correlations.request("cmp", (n, kk, flags, m))
    r_a, a1, a2 = handle.randoms[:3]
    xf = x.reshape(-1)
    # Round 1: open c = x + r (and d = y - a for the extra multiplicand).
    if extra is None:
        (c,) = yield f"{op}:open", [(xf + r_a, ADD)]
        d = None
    else:
        ay = handle.randoms[3]
        c, d = yield f"{op}:open", [(xf + r_a, ADD), (extra.reshape(kk, n, m) - ay, ADD)]
    derived = handle.derived()
    r_b, leaf_p, l1_p, l2_p = derived[:4]
    rest = derived[4:]
    done = yield from compare_rounds(
        ctx, c, thresholds, (r_b, leaf_p, l1_p, l2_p, a1, a2), rest[0] if arithmetic else None, negate, bit, op
    )
    if not arithmetic:
        return CmpResult(binary=done.reshape(kk, *shape))
    e, s, bits = done
    t_a = rest[0]
    res = CmpResult(bits=bits.reshape(kk, *shape))
    i = 1
    if mul_input:
        rt = rest[i]
        i += 1
        xb = e * xf.unsqueeze(0) + s * (c.unsqueeze(0) * t_a - rt)
        res.xbits = xb.reshape(kk, *shape)
    if extra is not None:
        assert d is not None
        ayt = rest[i]
        yb = e.unsqueeze(-1) * extra.reshape(kk, n, m) + s.unsqueeze(-1) * (d * t_a.unsqueeze(-1) + ayt)
        res.ybits = yb.reshape(kk, *shape, m)
    return res


def compare_rounds(
    ctx: PartyContext,
    c: torch.Tensor,
    thresholds: Sequence[int],
    parts: tuple[torch.Tensor, ...],
    t_a: torch.Tensor | None,
    negate: bool,
    bit: int,
    op: str,
) -> Steps:
    """Rounds 2-4 of a comparison batch from the opened ``c = x + r`` (flat) and the dealer's parts
    ``(r_b, leaf, l1, l2, a1, a2)``: the XOR shares of the bits (``t_a`` None: 2 rounds), or, with the
    arithmetic shares ``t_a`` of the conversion bit, ``(e, s, bits)``: the opened ``e = bit ^ t``, the public
    sign ``s = 1 - 2 e`` and the arithmetic bits, all ``(K, n)`` (3 rounds).  A product ``y bit`` is then
    ``e y + s (y t)``: ``compare_steps``' products, and a lookup's saturation (``protocols.lookup``)."""
    r_b, leaf_p, l1_p, l2_p, a1, a2 = parts
    kk, n = len(thresholds), c.numel()
    party0 = holds_public(ctx.rank)
    tvals = torch.tensor([wrap_int(int(t)) for t in thresholds], dtype=torch.int64)
    cpub = c.unsqueeze(0) - tvals.unsqueeze(1)  # (K, n) public
    # Leaves (local): G and P of the 16 blocks, four elements to a word (lanes), one word per threshold.
    lw = bf.lane_width(n)
    singles = bf.leaf_singles(r_b, n)
    leaf = dict(zip(bf.LEAF_MONOS, leaf_p, strict=True))
    gf, pf = _leaf_forms(bf.lane_split(cpub, n), bit)
    gl = bf.evaluate(gf, lambda v: singles[v[1]], leaf, party0)
    pl = bf.evaluate(pf, lambda v: singles[v[1]], leaf, party0)
    # Level 1 (one round, 28 bits): element-sliced, words (threshold, group of 4 blocks, 64 elements).
    tr = bf.transpose_bits(torch.stack([pl, gl]))  # (P/G, K, 64 = 16 blocks x 4 lanes, ceil(m / 64))
    sl = bf.join_lanes(tr.reshape(2, kk, 16, bf.LANES, -1), lw, n)  # (P/G, K, 16 blocks, W), elements in order

    def blocks(kind: int, i: int) -> torch.Tensor:
        return sl[kind, :, i::4]  # (K, 4 groups, W): blocks 4g + i

    x1 = torch.stack([blocks(0, i) for i in range(4)] + [blocks(1, i) for i in range(3)], 1)
    (m1,) = yield f"{op}:l1", [(x1 ^ a1, XOR)]
    v1 = {v: i for i, v in enumerate(bf.L1_VARS)}
    gout, pout = bf.tree_forms(lambda v: m1[:, v1[v]], True)
    mono1 = {mo: l1_p[:, i] for i, mo in enumerate(bf.L1_MONOS)}
    g1 = bf.evaluate(gout, lambda v: a1[:, v1[v]], mono1, party0) ^ blocks(1, 3)
    p1 = bf.evaluate(pout, lambda v: a1[:, v1[v]], mono1, party0)  # type: ignore[arg-type]
    # Level 2 (one round, 6 bits): lanes = elements.
    x2 = torch.stack([p1[:, g] for g in (1, 2, 3)] + [g1[:, g] for g in (0, 1, 2)], 1)
    (m2,) = yield f"{op}:l2", [(x2 ^ a2[:, : bf.T_INDEX], XOR)]
    v2 = {v: i for i, v in enumerate(bf.L2_VARS)}
    gout, _ = bf.tree_forms(lambda v: m2[:, v2[v]], False)
    mono2 = {mo: l2_p[:, i] for i, mo in enumerate(bf.L2_MONOS)}
    borrow = bf.evaluate(gout, lambda v: a2[:, v2[v]], mono2, party0) ^ g1[:, 3]
    out = borrow ^ bf.slice_bits(r_b, [bit])[0]
    if party0:
        out ^= bf.slice_bits(cpub, [bit])[0]
        if negate:
            out ^= -1
    if t_a is None:
        return bf.unslice_bits(out, n)
    # Conversion to arithmetic (one round, 1 bit).
    (e,) = yield f"{op}:b2a", [(out ^ a2[:, bf.T_INDEX], XOR)]
    e = bf.unslice_bits(e, n)
    s = 1 - 2 * e  # (K, n) public +-1
    bits = s * t_a
    if party0:
        bits += e
    return e, s, bits


def ltz(ctx: PartyContext, x: torch.Tensor, op: str = "ltz") -> torch.Tensor:
    """Arithmetic shares of ``[x < 0]`` (an integer 0/1). Rounds 4."""
    res = compare(ctx, x, (0,), op=op)
    assert res.bits is not None
    return res.bits[0]


def relu(ctx: PartyContext, x: torch.Tensor, op: str = "relu") -> torch.Tensor:
    """``max(x, 0)``, exact. Rounds 4; bytes 8 + 35/8 per element (one bit per element in the last round)."""
    res = compare(ctx, x, (0,), negate=True, mul_input=True, op=op)
    assert res.xbits is not None
    return res.xbits[0]


def sign_bits(ctx: PartyContext, x: torch.Tensor, op: str = "sign") -> tuple[torch.Tensor, torch.Tensor]:
    """``([x < 0], x [x < 0])``: what sign and abs need. Rounds 4."""
    res = compare(ctx, x, (0,), mul_input=True, op=op)
    assert res.bits is not None and res.xbits is not None
    return res.bits[0], res.xbits[0]
