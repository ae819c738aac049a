"""Binary (XOR) sharing, bit packing, conversions and the dealer's binary kinds.

* pure tier: packing, bit-matrix transposes and the comparison's leaf layout
  (four elements to a word) against naive code; the dealer's XOR-aware
  generator, checked by recombining every party's part exactly as
  ``DealerSource`` draws it (so the last party's correction is what it must
  be), and its refusal of malformed comparison requests;
* thread tier (N = 2 and 3): XOR/NOT/shifts, AND and fan-out AND, a2b, b2a,
  bit extraction and exact shifts, against plain integer arithmetic, with
  their rounds and bytes.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

from mpc.errors import ProtocolError
from mpc.prg import Prg
from mpc.ring import wrap_int
from protocols import binary as B
from protocols import bitforms as bf
from protocols import conversions as V
from protocols.correlated import (
    CMP_B2A,
    CMP_LANES,
    CMP_MUL,
    CORRELATIONS,
    DealerGenerator,
    pack_correction,
    request_seed,
    unpack_correction,
)
from protocols.sharing import open_all

EDGES = torch.tensor([0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63), 12345, -65536], dtype=torch.int64)


def _words(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-(2**63), 2**63 - 1, (n,), generator=g, dtype=torch.int64)
    w[: len(EDGES)] = EDGES[: min(n, len(EDGES))]
    return w


# ----- pure tier -------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("count,positions", [(1, [0]), (13, [0, 5, 63]), (1000, list(range(64))), (7, [4, 1, 62])])
def test_pack_roundtrip(count, positions):
    w = _words(count, count)
    buf = B.pack_positions(w, positions)
    assert buf.dtype == torch.uint8 and buf.numel() == B.packed_size(count, positions)
    mask = sum(1 << p for p in positions)
    back = B.unpack_positions(buf, count, positions)
    want = w & (mask - (1 << 64) if mask >= 1 << 63 else mask)
    assert torch.equal(back, want)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_transpose_and_slices(n):
    w = _words(3 * n, n).reshape(3, n)
    tr = bf.transpose_bits(w)
    assert tr.shape == (3, 64, bf.sliced_words(n))
    for p in (0, 1, 31, 63):
        assert torch.equal(bf.unslice_bits(tr[:, p], n), (w >> p) & 1)
        assert torch.equal(bf.slice_bits(w, [p])[0], tr[:, p])
    assert torch.equal(bf.spread4(torch.tensor([1 | 1 << 60])), torch.tensor([wrap_int(15 | 15 << 60)]))


def _materialize(kind: str, params: tuple[int, ...], n: int) -> tuple[list, list, list[bool], list[bool]]:
    """Every party's (random, derived) parts as DealerSource draws them; the last gets the dealer's correction."""
    seeds = [os.urandom(32) for _ in range(n)]
    corr = CORRELATIONS[kind]
    rs, ds = corr.random_shapes(params), corr.derived_shapes(params)
    rx, dx = corr.part_kinds(params, len(rs), len(ds))
    flat = DealerGenerator(seeds).correction(kind, params)
    rand, der = [], []
    for i, s in enumerate(seeds):
        prg = Prg(request_seed(Prg(s).seed(), kind, params))  # the request's sub-stream, as DealerSource draws it
        rand.append([prg.int64(sh) for sh in rs])
        if i < n - 1:
            der.append([prg.narrow(sh, w) for sh, w in zip(ds, corr.widths(params, len(ds)), strict=True)])
    der.append(unpack_correction(flat, ds, corr.widths(params, len(ds))))

    def total(parts, xors):
        out = []
        for j, x in enumerate(xors):
            acc = parts[0][j].clone()
            for p in parts[1:]:
                acc = acc ^ p[j] if x else acc + p[j]
            out.append(acc)
        return out

    return total(rand, rx), total(der, dx), rx, dx


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [2, 3])
def test_dealer_binary_kinds_recombine(n):
    (a, b), (c,), rx, dx = _materialize("band", (2, 5, 3), n)
    assert rx == [True, True] and dx == [True]
    assert torch.equal(c, a.unsqueeze(0) & b)
    (t,), (ta,), _, _ = _materialize("b2a", (7,), n)
    assert torch.equal(ta, t & 1)
    (ra,), (rb,), _, _ = _materialize("edabit", (4, 2), n)
    assert torch.equal(ra, rb)
    (a,), (pw,), _, _ = _materialize("pow", (4, 6), n)
    assert torch.equal(pw, torch.stack([a * a, a * a * a, a * a * a * a]))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("f", [1, 8, 16, 40])
def test_truncation_msb_travels_narrow(n, f):
    """The dealer sends the msb part of a truncation pair in ceil(f / 8) bytes per element (only its value
    modulo 2^f counts: it is multiplied by 2^(64 - f)); the other parts whole."""
    (r,), (rq, rmsb), _, _ = _materialize("trunc", (f, 1000), n)
    width = -(-f // 8)
    assert CORRELATIONS["trunc"].widths((f, 1000), 2) == [8, width]
    assert DealerGenerator([os.urandom(32)] * n).correction("trunc", (f, 1000)).numel() == 1000 * (8 + width)
    assert torch.equal(rq, (r.view(torch.int64) >> f) & ((1 << (64 - f)) - 1))
    assert torch.equal((rmsb - ((r >> 63) & 1)) * (1 << (64 - f)), torch.zeros_like(r))  # equal modulo 2^f


@pytest.mark.parametrize("pooled", [False, True])
def test_parts_of_every_width_share_one_correction_at_any_offset(pooled):
    """Several parts in one correction, odd lengths so that later parts start at unaligned offsets: each comes
    back right modulo 2^(8 w); from a pool, a buffer used again holds the new correction, not the old one."""
    from mpc.buffers import BufferPool
    from protocols.correlated import pack_correction

    widths = [3, 8, 1, 2, 6, 4, 8, 5, 7, 2]
    shapes = [(333,), (7, 11), (1001,), (3, 5, 7), (999,), (17,), (2, 3), (41,), (5,), (1,)]
    pool = BufferPool(min_bytes=1) if pooled else None
    for rep in range(3):
        parts = [_words(int(np.prod(s)), 100 * rep + i).reshape(s) for i, s in enumerate(shapes)]
        buf = pack_correction(parts, widths, pool)
        assert buf.numel() == sum(int(np.prod(s)) * w for s, w in zip(shapes, widths, strict=True))
        back = unpack_correction(buf, shapes, widths)
        for got, want, w in zip(back, parts, widths, strict=True):
            assert torch.equal(got, want if w == 8 else want & ((1 << (8 * w)) - 1))
        del buf, back
    if pooled:
        assert pool.reused == 2


@pytest.mark.parametrize("width", range(1, 9))
def test_narrow_parts_travel_and_are_drawn_in_their_low_bytes(width):
    """A part that counts modulo 2^(8 w): packed in its low w bytes and read back right modulo 2^(8 w) (every
    width, fast casts for 1, 2, 4); drawn from w bytes of the stream (``Prg.narrow``), little-endian."""
    from mpc.prg import widen
    from protocols.correlated import pack_correction

    vals = _words(1000, width)
    mod = 1 << (8 * width)
    buf = pack_correction([vals], [width])
    assert buf.numel() == 1000 * width
    (back,) = unpack_correction(buf, [(1000,)], [width])
    if width == 8:
        assert torch.equal(back, vals)
    else:
        assert torch.equal(back, vals & (mod - 1))
    seed = os.urandom(32)
    drawn = Prg(seed).narrow((10, 100), width)
    raw = Prg(seed).bytes(1000 * width).tobytes()
    want = [int.from_bytes(raw[i * width : (i + 1) * width], "little", signed=width == 8) for i in range(1000)]
    assert drawn.reshape(-1).tolist() == want
    assert widen(np.frombuffer(raw, dtype=np.uint8).copy(), width).tolist() == want
    for n in (0, 1, 2, 7):  # short draws: the last element's word reads past the data (into the padding)
        part = np.frombuffer(raw[: n * width], dtype=np.uint8)
        assert widen(part, width).tolist() == want[:n]
    if width not in (1, 8):
        with pytest.raises(ValueError):
            widen(np.frombuffer(raw[: 3 * width + 1], dtype=np.uint8), width)


def test_narrow_parts_of_every_width_pack_at_any_offset():
    """Parts of widths 1-8 side by side in one correction (so most start at an offset that is not a multiple
    of their width), each read back right modulo 2^(8 w)."""
    widths = [3, 1, 6, 2, 5, 7, 4, 8, 3]
    parts = [_words(11 + i, 100 + i) for i in range(len(widths))]
    buf = pack_correction(parts, widths)
    assert buf.numel() == sum(p.numel() * w for p, w in zip(parts, widths, strict=True))
    back = unpack_correction(buf, [tuple(p.shape) for p in parts], widths)
    for p, b, w in zip(parts, back, widths, strict=True):
        assert torch.equal(b, p if w == 8 else p & ((1 << (8 * w)) - 1)), w
    raw = buf.numpy().tobytes()
    first = parts[0].tolist()
    assert [int.from_bytes(raw[3 * i : 3 * i + 3], "little") for i in range(11)] == [v & 0xFFFFFF for v in first]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("f", [1, 8, 16, 40])
def test_fused_product_truncation_material(n, f):
    """``ptrunc``: a b + r with r = rotl(s, f), the top f bits of s and msb(r) (both right modulo 2^f, sent in
    ceil(f / 8) bytes each); r is a bijection of the uniform s."""
    from protocols.correlated import OP_MUL, pack_shapes

    params = (f, OP_MUL, *pack_shapes((1000,), (1000,)))
    (a, b, s), (c, t, m), _, _ = _materialize("ptrunc", params, n)
    width = -(-f // 8)
    assert CORRELATIONS["ptrunc"].widths(params, 3) == [8, width, width]
    assert DealerGenerator([os.urandom(32)] * n).correction("ptrunc", params).numel() == 1000 * (8 + 2 * width)
    top = (s >> (64 - f)) & ((1 << f) - 1)
    r = (s << f) | top
    assert torch.equal(c - a * b, r)
    low = wrap_int(1 << (64 - f))
    assert torch.equal((t - top) * low, torch.zeros_like(s))
    assert torch.equal((m - ((r >> 63) & 1)) * low, torch.zeros_like(s))
    # r >> f (logical) = s - t 2^(64 - f): what the truncation's finish relies on
    assert torch.equal((r >> f) & ((1 << (64 - f)) - 1), s - t * low)


def _bits(words: torch.Tensor) -> torch.Tensor:
    """``(..., n)`` words -> ``(..., n, 64)`` 0/1: bit p of each word."""
    return (words.unsqueeze(-1) >> torch.arange(64)) & 1


def _word(bits: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_bits``: ``(..., 64)`` 0/1 -> ``(...)`` words."""
    out = torch.zeros(bits.shape[:-1], dtype=torch.int64)
    for p in range(64):
        out |= bits[..., p] << p
    return out


def _lanes_naive(words: torch.Tensor, n: int) -> torch.Tensor:
    """Element ``o m + i`` of ``(..., n)`` at ``[o, ..., i]``, zeros past ``n``: the leaf layout, by indexing."""
    m = (n + 3) // 4
    out = torch.zeros((4, *words.shape[:-1], m), dtype=torch.int64)
    for e in range(n):
        out[e // m, ..., e % m] = words[..., e]
    return out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 63, 64, 65, 255, 257, 1000])
def test_leaf_lane_layout(n):
    m = bf.lane_width(n)
    assert m == -(-n // 4)
    w = _words(2 * n, n).reshape(2, n)
    lanes = bf.lane_split(w, n)
    assert torch.equal(lanes, _lanes_naive(w, n))
    # lane_bits: row i, bit 4j + o = bit 4j + i of lane o (a 4 x 4 transpose in every block)
    lb = _bits(bf.lane_bits(lanes)).reshape(4, 2, m, 16, 4)  # (row i, ., word, block j, lane o)
    want = _bits(lanes).reshape(4, 2, m, 16, 4).permute(4, 1, 2, 3, 0)  # (bit i, ., word, block j, lane o)
    assert torch.equal(lb, want)
    r = w[0]
    assert torch.equal(bf.leaf_singles(r, n), bf.lane_bits(_lanes_naive(r, n)))
    # join_lanes: the lanes' element-sliced bits, put back in element order
    sliced = bf.transpose_bits(lanes)  # (4, 2, 64, ceil(m / 64)): lane o's elements o m .. o m + m - 1
    joined = bf.join_lanes(sliced.movedim(0, -2), m, n)  # (2, 64, W)
    assert joined.shape == (2, 64, bf.sliced_words(n))
    for p in (0, 5, 63):
        got = bf.unslice_bits(joined[:, p], 64 * bf.sliced_words(n))
        lane_bits = torch.cat([bf.unslice_bits(sliced[o, :, p], m) for o in range(4)], -1)  # (2, 4 m)
        assert torch.equal(got[:, : 4 * m], lane_bits)
        assert not got[:, 4 * m :].any()
        assert torch.equal(got[:, :n], (w >> p) & 1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("elems", [1, 3, 70])
def test_dealer_comparison_material_recombines(n, elems):
    k, m = 3, 2
    rand, der, _, _ = _materialize("cmp", (elems, k, CMP_LANES | CMP_B2A | CMP_MUL, m), n)
    r_a, a1, a2, ay = rand
    r_b, leaf, l1, l2, t_a, rt, ayt = der
    assert torch.equal(r_a, r_b)
    # leaf monomials in the leaf layout: lane o of word i, bit 4j + o, is element o m + i's product of bits 4j + v
    lw = bf.lane_width(elems)
    assert leaf.shape == (len(bf.LEAF_MONOS), lw)
    rbits = _bits(_lanes_naive(r_b, elems)).reshape(4, lw, 16, 4)  # (lane o, word, block j, bit i)
    for mo, word in zip(bf.LEAF_MONOS, leaf):
        prod = torch.ones((4, lw, 16), dtype=torch.int64)
        for v in mo:
            prod &= rbits[..., v[1]]
        assert torch.equal(word, _word(prod.permute(1, 2, 0).reshape(lw, 64))), mo
    for i, mo in enumerate(bf.L1_MONOS):
        want = torch.full_like(a1[:, 0], -1)
        for v in mo:
            want &= a1[:, bf.L1_VARS.index(v)]
        assert torch.equal(l1[:, i], want)
    t = bf.unslice_bits(a2[:, bf.T_INDEX], elems)
    assert torch.equal(t_a, t) and torch.equal(rt, r_a.unsqueeze(0) * t) and torch.equal(ayt, ay * t.unsqueeze(-1))
    assert l2.shape == (k, len(bf.L2_MONOS), bf.sliced_words(elems))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "params,match",
    [
        ((5, 1, CMP_B2A | CMP_MUL, 0), "CMP_LANES"),  # the layout of one element to a leaf word
        ((5, 1, 8 | CMP_LANES, 0), "at most"),
        ((5, 1, CMP_LANES | CMP_MUL, 0), "arithmetic"),
        ((5, 1, CMP_LANES, 2), "arithmetic"),
        ((5, -1, CMP_LANES, 0), "negative"),
        ((5, 1, CMP_LANES), "takes"),
    ],
)
def test_dealer_refuses_malformed_comparison_requests(params, match):
    """The shape functions that the dealer runs on every request (``parties.dealer``) refuse these."""
    corr = CORRELATIONS["cmp"]
    with pytest.raises(ValueError, match=match):
        corr.random_shapes(params)
    with pytest.raises(ProtocolError, match=match):
        corr.derived_shapes(params)
    good = (5, 1, CMP_LANES | CMP_B2A | CMP_MUL, 2)
    assert corr.derived_shapes(good)[1] == (len(bf.LEAF_MONOS), 2)


# ----- thread tier -----------------------------------------------------------------------------------


def xshare(ctx, value: torch.Tensor) -> torch.Tensor:
    """A XOR sharing of a public test value: pairwise-random shares that XOR to it."""
    out = value.clone() if ctx.rank == 0 else torch.zeros_like(value)
    for j in range(ctx.world_size):
        if j != ctx.rank and (ctx.rank == 0 or j == 0):
            out ^= ctx.pair_prgs[j].int64(value.shape)
    return out


def ashare(ctx, value: torch.Tensor) -> torch.Tensor:
    """An additive sharing of a public test ring value."""
    out = value.clone() if ctx.rank == 0 else torch.zeros_like(value)
    for j in range(ctx.world_size):
        if j != ctx.rank and (ctx.rank == 0 or j == 0):
            r = ctx.pair_prgs[j].int64(value.shape)
            out = out - r if ctx.rank == 0 else out + r
    return out


def _cost(ctx, before):
    after = ctx.stats.snapshot()
    return after["rounds"] - before["rounds"], after["bytes_sent"] - before["bytes_sent"]


def _binary_ops(ctx, x, y):
    xs, ys = xshare(ctx, x), xshare(ctx, y)
    local = [xs ^ ys, B.not_(ctx, xs), B.rshift(xs, 7), B.lshift(xs, 3), B.xor_public(ctx, xs, y), xs & y]
    before = ctx.stats.snapshot()
    z = B.and_(ctx, xs, ys)
    and_cost = _cost(ctx, before)
    before = ctx.stats.snapshot()
    zz = B.and_fanout(ctx, xs, torch.stack([ys, B.not_(ctx, ys), ys >> 1]))
    fan_cost = _cost(ctx, before)
    before = ctx.stats.snapshot()
    zp = B.and_(ctx, xs, ys, positions=[0, 9, 63])
    pos_cost = _cost(ctx, before)
    opened = B.open_words(ctx, [*local, z, zz, zp], "rv")
    return opened, and_cost, fan_cost, pos_cost


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_xor_not_shift_and(sim, n):
    x, y = _words(100, 1), _words(100, 2)
    res = sim(functools.partial(_binary_ops, x=x, y=y), n)
    for opened, and_cost, fan_cost, pos_cost in res:
        xor, nt, rs, ls, xp, ap, z, zz, zp = opened
        assert torch.equal(xor, x ^ y) and torch.equal(nt, ~x) and torch.equal(xp, x ^ y) and torch.equal(ap, x & y)
        assert torch.equal(rs, (x >> 7) & ((1 << 57) - 1)) and torch.equal(ls, x << 3)
        assert torch.equal(z, x & y)
        assert torch.equal(zz, torch.stack([x & y, x & ~y, x & (y >> 1)]))
        mask = 1 | 1 << 9 | -(2**63)
        assert torch.equal(zp & mask, x & y & mask)
        # one round each; bytes per peer: 2 words per AND, 1 + 3 words for the fan-out, 2 x 3 bits packed
        assert and_cost == (1, (n - 1) * 16 * 100)
        assert fan_cost == (1, (n - 1) * 32 * 100)
        assert pos_cost == (1, (n - 1) * ((2 * 100 * 3 + 7) // 8))


def _conversions(ctx, v):
    xs = ashare(ctx, v)
    before = ctx.stats.snapshot()
    xb = V.a2b(ctx, xs)
    a2b_cost = _cost(ctx, before)
    before = ctx.stats.snapshot()
    back = V.b2a(ctx, xb >> 5)  # bit 5 of x, arithmetic
    b2a_cost = _cost(ctx, before)
    bits = [V.bit_extract(ctx, xs, i) for i in (1, 16, 40, 62, 63)]
    bbin = V.bit_extract(ctx, xs, 7, arithmetic=False)
    (ob,) = B.open_words(ctx, [xb], "rv")
    (obin,) = B.open_words(ctx, [bbin & 1], "rv")
    opened = open_all(ctx, [back, *bits], "rv")
    return ob, obin, opened, a2b_cost, b2a_cost


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_a2b_b2a_bits(sim, n):
    v = _words(300, 3)
    for ob, obin, opened, a2b_cost, b2a_cost in sim(functools.partial(_conversions, v=v), n):
        assert torch.equal(ob, v)
        assert torch.equal(obin, (v >> 7) & 1)
        back, *bits = opened
        assert torch.equal(back, (v >> 5) & 1)
        for i, b in zip((1, 16, 40, 62, 63), bits):
            assert torch.equal(b, (v >> i) & 1), i
        assert a2b_cost == (7, (n - 1) * 300 * (8 + 5 * 24 + 16))
        assert b2a_cost == (1, (n - 1) * 8 * bf.sliced_words(300))


def _unscale(ctx, v, f):
    return open_all(ctx, [V.exact_rshift(ctx, ashare(ctx, v), f)], "rv")[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_exact_rshift_of_multiples(sim, n):
    g = torch.Generator().manual_seed(4)
    q = torch.randint(0, 2**46, (500,), generator=g)
    q[:3] = torch.tensor([0, 1, 2**46])
    for got in sim(functools.partial(_unscale, v=q << 16, f=16), n):
        assert torch.equal(got, q)


def _empty(ctx):
    e = torch.zeros((0, 3), dtype=torch.int64)
    return V.b2a(ctx, e).shape, V.a2b(ctx, e).shape, V.bit_extract(ctx, e, 3).shape, ctx.stats.rounds


@pytest.mark.timeout(30)
def test_empty_tensors_cost_nothing(sim):
    for b2a_shape, a2b_shape, bit_shape, rounds in sim(_empty, 2):
        assert b2a_shape == a2b_shape == bit_shape == (0, 3)
        assert rounds == 0
