"""XOR-shared bit polynomials over dealer randomness ("forms"), and the carry tree's layout.

Pure functions with no runtime: both the dealer (``protocols.correlated``) and
the parties (``protocols.comparison``) import them, so the two sides agree on
every monomial and every bit position by construction.

A *form* is a polynomial over GF(2) whose variables are secret random bits
that the dealer knows (mask bits, or the bits of the comparison mask ``r``)
and whose coefficients are public words::

    form = XOR over I of  coef_I AND m_I,      m_I = AND of the variables in I

stored as ``{frozenset(I): coef}``.  Products of forms multiply out
symbolically (variables are bits, so ``v AND v = v``).  A party turns a form
into its XOR share of the value with ``evaluate``: the constant term is taken
by party 0 alone, a single variable is the party's own share of that random
bit, and a product of two or more variables is a *monomial* whose XOR shares
the dealer supplied.  So a whole layer of AND gates whose inputs are public
values XOR secret random bits costs no interaction at all (this is the
"multi-fan-in AND from masked openings" idea: one round to open ``x XOR a`` for
every input, then any product of inputs is local given the dealer's shares of
the products of the masks).

All words are int64 tensors that hold many bit lanes at once (bit slicing): a
*base mask* says which bit positions are live; every other bit is garbage and
is ignored.

Coefficients are int64 tensors or the Python ints ``ONE`` (all ones) and 0;
``SYM`` is a marker used to list monomials without tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

from mpc.ring import wrap_int

__all__ = [
    "ONE",
    "SYM",
    "Form",
    "f_const",
    "f_var",
    "f_xor",
    "f_and",
    "combine4",
    "monomials",
    "evaluate",
    "E4",
    "LEAF_MONOS",
    "L1_MONOS",
    "L2_MONOS",
    "L1_VARS",
    "L2_VARS",
    "T_INDEX",
    "LANES",
    "leaf_var",
    "tree_forms",
    "monomial_words",
    "lane_width",
    "lane_split",
    "lane_bits",
    "leaf_singles",
    "join_lanes",
    "sliced_words",
    "slice_bits",
    "transpose_bits",
    "spread4",
    "unslice_bits",
]

ONE = -1  # the all-ones coefficient


class _Sym:
    """A coefficient that is never zero: listing monomials must not let them cancel."""

    def __repr__(self) -> str:
        return "SYM"


SYM = _Sym()

Coef = torch.Tensor | int | _Sym
Form = dict[frozenset, Coef]


def _cand(a: Coef, b: Coef) -> Coef:
    if isinstance(a, _Sym) or isinstance(b, _Sym):
        return SYM
    if isinstance(a, int) and a == 0 or isinstance(b, int) and b == 0:
        return 0
    if isinstance(a, int) and a == ONE:
        return b
    if isinstance(b, int) and b == ONE:
        return a
    return a & b


def _cxor(a: Coef, b: Coef) -> Coef:
    if isinstance(a, _Sym) or isinstance(b, _Sym):
        return SYM
    if isinstance(a, int) and a == 0:
        return b
    if isinstance(b, int) and b == 0:
        return a
    return a ^ b


def f_const(c: Coef) -> Form:
    return {frozenset(): c}


def f_var(v: Hashable, coef: Coef = ONE) -> Form:
    return {frozenset([v]): coef}


def f_xor(a: Form, b: Form) -> Form:
    out = dict(a)
    for k, c in b.items():
        out[k] = _cxor(out[k], c) if k in out else c
    return out


def f_and(a: Form, b: Form) -> Form:
    out: Form = {}
    for ka, ca in a.items():
        for kb, cb in b.items():
            c = _cand(ca, cb)
            if isinstance(c, int) and c == 0:
                continue
            k = ka | kb
            out[k] = _cxor(out[k], c) if k in out else c
    return out


def combine4(g: Sequence[Form], p: Sequence[Form], need_p: bool) -> tuple[Form, Form | None]:
    """Generate/propagate of four adjacent nodes (index 0 lowest) merged into one.

    ``G = G3 ^ P3 (G2 ^ P2 (G1 ^ P1 G0))`` and ``P = P3 P2 P1 P0``; the terms of
    ``G`` are mutually exclusive, so XOR is OR here.
    """
    acc = f_xor(g[1], f_and(p[1], g[0]))
    acc = f_xor(g[2], f_and(p[2], acc))
    gout = f_xor(g[3], f_and(p[3], acc))
    pout = f_and(f_and(p[3], p[2]), f_and(p[1], p[0])) if need_p else None
    return gout, pout


def monomials(forms: Sequence[Form]) -> list[frozenset]:
    """The products of two or more variables that ``forms`` need, in a canonical order."""
    keys = {k for f in forms for k in f if len(k) >= 2}
    return sorted(keys, key=lambda k: (len(k), sorted(k)))


def evaluate(
    form: Form, single: Callable[[Hashable], torch.Tensor], mono: dict[frozenset, torch.Tensor], party0: bool
) -> torch.Tensor | int:
    """This party's XOR share of ``form``: constants at party 0, variables and monomials from the shares."""
    out: torch.Tensor | int = 0
    for k, c in form.items():
        if isinstance(c, int) and c == 0:
            continue
        if not k:
            if party0:
                out = _cxor(out, c)  # type: ignore[assignment]
            continue
        share = single(next(iter(k))) if len(k) == 1 else mono[k]
        out = _cxor(out, _cand(c, share))  # type: ignore[assignment]
    return out


# ----- the layout of the comparison's carry tree ---------------------------------------------
#
# Leaves work on words of four lanes: 16 blocks of 4 bits, lane o of block j at bit 4j + o.  The lanes
# hold four different elements (``lane_split``: element o m + i in lane o of word i, m = ceil(n / 4)), so
# one word does the leaf work of four elements, whatever the number of thresholds (one word per threshold).
# Levels 1 and 2 work *element-sliced*: a word holds one bit of 64 consecutive elements, so the
# AND-heavy merges touch 1/64 of the data, the dealer's masks and monomials are dense, and the
# opened bits go on the wire as they are (``join_lanes`` puts the lanes' elements back in order).

E4 = wrap_int(0x1111111111111111)  # bits 4j
LANES = 4  # elements per leaf word

# Level 1 (per group g of 4 blocks, lanes (g, element)): P of blocks 0..3 and G of blocks 0..2.
L1_VARS: list[tuple[str, int]] = [("P", i) for i in range(4)] + [("G", i) for i in range(3)]
# Level 2 (the 4 groups, lanes = elements): P of groups 1..3, G of groups 0..2; then the bit t.
L2_VARS: list[tuple[str, int]] = [("P", g) for g in range(1, 4)] + [("G", g) for g in range(3)]
T_INDEX = len(L2_VARS)  # index of t among the level-2 random words


def leaf_var(i: int) -> tuple[str, int]:
    """Bit ``i`` (0..3) of every block of the mask ``r``, in the leaf layout (row ``i`` of ``leaf_singles``)."""
    return ("r", i)


def _symbolic_leaf() -> list[Form]:
    g = [f_var(leaf_var(i), SYM) for i in range(4)]
    p = [f_xor(f_const(SYM), f_var(leaf_var(i), SYM)) for i in range(4)]
    gout, pout = combine4(g, p, True)
    return [gout, pout]  # type: ignore[list-item]


def tree_forms(opened: Callable[[tuple[str, int]], Coef], need_p: bool) -> tuple[Form, Form | None]:
    """Merge of four nodes whose inputs were opened as ``opened(v) = value ^ mask_v``.

    The top node's G enters linearly and is added by the caller (it is never opened).
    """
    g: list[Form] = [f_xor(f_const(opened(("G", i))), f_var(("G", i))) for i in range(3)] + [{}]
    p: list[Form] = [
        {} if i == 0 and not need_p else f_xor(f_const(opened(("P", i))), f_var(("P", i))) for i in range(4)
    ]
    return combine4(g, p, need_p)


LEAF_MONOS: list[frozenset] = monomials(_symbolic_leaf())  # 11 products of r bits within a block
L1_MONOS: list[frozenset] = monomials([f for f in tree_forms(lambda v: SYM, True) if f is not None])  # 22
L2_MONOS: list[frozenset] = monomials([f for f in tree_forms(lambda v: SYM, False) if f is not None])  # 15


def monomial_words(monos: Sequence[frozenset], source: Callable[[Hashable], torch.Tensor]) -> list[torch.Tensor]:
    """The dealer's side: each monomial as a word, AND of its variables."""
    out = []
    for m in monos:
        w = None
        for v in sorted(m):
            s = source(v)
            w = s if w is None else w & s
        assert w is not None
        out.append(w)
    return out


def lane_width(n: int) -> int:
    """Leaf words that hold ``n`` elements, four to a word: ``m = ceil(n / 4)``."""
    return (n + LANES - 1) // LANES


def lane_split(words: torch.Tensor, n: int) -> torch.Tensor:
    """``(..., n)`` words -> ``(4, ..., m)``: lane ``o`` holds elements ``o m .. o m + m - 1`` (zeros past ``n``)."""
    m = lane_width(n)
    lead = tuple(words.shape[:-1])
    x = torch.zeros((*lead, LANES * m), dtype=torch.int64)
    x[..., :n] = words
    return x.reshape(*lead, LANES, m).movedim(-2, 0)


_NIBBLE_SWAPS = (
    (2, wrap_int(0x3333333333333333), ((0, 2), (1, 3))),
    (1, wrap_int(0x5555555555555555), ((0, 1), (2, 3))),
)


def lane_bits(lanes: torch.Tensor) -> torch.Tensor:
    """``(4, ..., m)`` words -> ``(4, ..., m)``: row ``i``, bit ``4j + o`` is bit ``4j + i`` of lane ``o``.

    The 4 x 4 bit matrix (lane, bit within the block) of every block, transposed by two stages of
    masked block swaps (as ``transpose_bits``); a bit permutation, so it maps XOR shares to XOR shares.
    """
    x = list(lanes.unbind(0))
    for j, mask, pairs in _NIBBLE_SWAPS:
        for a, b in pairs:
            t = ((x[a] >> j) ^ x[b]) & mask
            x[a] = x[a] ^ (t << j)
            x[b] = x[b] ^ t
    return torch.stack(x)


def leaf_singles(r: torch.Tensor, n: int) -> torch.Tensor:
    """Bits ``4j + i`` of the ``n`` words ``r`` in the leaf layout, for i = 0..3: ``(4, m)`` words.

    Row ``i``, bit ``4j + o`` of word ``w`` is bit ``4j + i`` of ``r`` of element ``o m + w``: the
    variable ``leaf_var(i)`` of every lane.  Linear over GF(2), so it maps XOR shares to XOR shares;
    the dealer forms the leaf monomials from the same words.
    """
    return lane_bits(lane_split(r, n))


def join_lanes(t: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Sliced words of the four lanes, ``(..., 4, V)``, -> sliced words of the ``n`` elements in order, ``(..., W)``.

    Lane ``o`` holds elements ``o m ..``: its bit string goes to bit offset ``o m``, a funnel shift
    across word boundaries.  Bits of a lane past ``m`` must be zero (``transpose_bits`` pads with
    zero words); bits past ``n`` (padding elements) are whatever the lanes held.
    """
    v = t.shape[-1]
    w = sliced_words(n)
    out = torch.zeros((*t.shape[:-2], w + 2), dtype=torch.int64)  # 4 m <= 64 w: the lanes end within w + 2
    for o in range(LANES):
        q, b = divmod(o * m, 64)
        lane = t[..., o, :]
        out[..., q : q + v] ^= lane << b
        if b:
            out[..., q + 1 : q + 1 + v] ^= (lane >> (64 - b)) & ((1 << b) - 1)
    return out[..., :w]


# ----- element slicing -------------------------------------------------------------------------


def sliced_words(n: int) -> int:
    """Words that hold one bit of each of ``n`` elements."""
    return (n + 63) // 64


def slice_bits(words: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """Bit ``p`` of each of the ``n`` words (last dim), for each ``p``: ``(len(positions), ..., W)`` words."""
    n = words.shape[-1]
    w = sliced_words(n)
    lead = tuple(words.shape[:-1])
    bits = torch.zeros((len(positions), *lead, 64 * w), dtype=torch.uint8)
    for j, p in enumerate(positions):
        bits[j, ..., :n] = ((words >> p) & 1).to(torch.uint8)
    packed = np.packbits(bits.numpy(), axis=-1, bitorder="little")
    return torch.from_numpy(np.ascontiguousarray(packed)).view(torch.int64)


_TRANSPOSE_MASKS = {
    32: wrap_int(0x00000000FFFFFFFF),
    16: wrap_int(0x0000FFFF0000FFFF),
    8: wrap_int(0x00FF00FF00FF00FF),
    4: wrap_int(0x0F0F0F0F0F0F0F0F),
    2: wrap_int(0x3333333333333333),
    1: wrap_int(0x5555555555555555),
}


def transpose_bits(words: torch.Tensor) -> torch.Tensor:
    """All 64 bit positions of ``n`` words (last dim), sliced: ``(..., n)`` -> ``(..., 64, W)`` words.

    Word ``w`` of position ``p`` holds bit ``p`` of elements ``64 w .. 64 w + 63``.
    A 64 x 64 bit-matrix transpose per block of 64 elements, by the recursive
    block swap (Warren, Hacker's Delight, 7-3): six masked shift/XOR stages
    over whole tensors.
    """
    n = words.shape[-1]
    w = sliced_words(n)
    lead = tuple(words.shape[:-1])
    x = torch.zeros((*lead, 64 * w), dtype=torch.int64)
    x[..., :n] = words
    j = 32
    while j:
        v = x.reshape(*lead, w, 64 // (2 * j), 2, j)
        a, b = v[..., 0, :], v[..., 1, :]
        t = ((a >> j) ^ b) & _TRANSPOSE_MASKS[j]
        a ^= t << j
        b ^= t
        j //= 2
    return x.reshape(*lead, w, 64).transpose(-1, -2).contiguous()


def spread4(x: torch.Tensor | int) -> torch.Tensor | int:
    """Copy the bit at 4j of each block to bits 4j..4j+3 (the same bit in all four lanes)."""
    return (x & E4) * 15


def unslice_bits(sliced: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``slice_bits`` for one position: ``(..., W)`` words -> ``(..., n)`` 0/1 int64."""
    raw = sliced.contiguous().view(torch.uint8).numpy()
    bits = np.unpackbits(raw, axis=-1, bitorder="little")[..., :n]
    return torch.from_numpy(np.ascontiguousarray(bits)).to(torch.int64)
