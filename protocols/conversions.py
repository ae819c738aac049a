"""Conversions between arithmetic (Z_2^64) and binary (XOR) sharing, bit extraction.

* ``b2a``: XOR-shared bits (bit 0 of a word) to arithmetic 0/1.  The dealer
  gives a random bit ``t`` as XOR shares and as arithmetic shares; open
  ``e = b ^ t`` (uniform, 1 bit per element, packed); then
  ``b = e + (1 - 2e) t``.  Rounds 1; bytes per party per peer 1/8 per element;
  dealer 8 bytes per element.
* ``a2b``: arithmetic to a XOR-shared 64-bit word.  The dealer gives a random
  ``r`` additively and bitwise (an "edaBit", Escudero et al. CRYPTO 2020); open
  ``c = x + r`` (uniform); then ``x = c - r`` is a subtraction of a secret word
  from a public one, computed with a Kogge-Stone borrow prefix over XOR shares
  (levels 1, 2, 4, ..., 32; each level ANDs P with the shifted G and P in one
  round, opening P once).  Rounds 7; bytes 8 + 5 x 24 + 16 = 144 per element;
  dealer 8 + 6 x 16 per element.
* ``bit_extract``: bit ``i`` of ``x`` (arithmetic or binary result) with the
  comparison's carry tree (``protocols.comparison``): bit ``i`` of ``c - r`` is
  ``c_i ^ r_i ^ [c mod 2^i < r mod 2^i]``.  Rounds 4 (3 for a binary result);
  bytes 8 + 35/8 per element.
* ``exact_rshift``: ``x / 2^f`` for an ``x`` known to be a multiple of 2^f in
  [0, 2^63) (a 0/1 bit held in fixed point, say), exact, with the truncation
  pair of ``protocols.truncation``: open ``c = x + r``; the low f bits of ``c``
  are those of ``r``, so there is no borrow and
  ``x / 2^f = (c >> f) - (r >> f) + w 2^(64-f)``, ``w = msb(r) (1 - msb(c))``.
  Rounds 1; bytes 8 per element.
"""

from __future__ import annotations

import torch

from mpc.context import PartyContext
from mpc.ring import wrap_int
from mpc.shares import holds_public

from . import bitforms as bf
from .binary import and_fanout, open_words
from .comparison import compare
from .sharing import open_all
from .truncation import exact_rshift

__all__ = ["b2a", "b2a_positions", "a2b", "bit_extract", "exact_rshift"]


def b2a(ctx: PartyContext, bits: torch.Tensor, op: str = "b2a") -> torch.Tensor:
    """Arithmetic shares of the bits (bit 0 of each XOR-shared word). Rounds 1."""
    shape = tuple(bits.shape)
    n = bits.numel()
    if n == 0:
        return torch.zeros(shape, dtype=torch.int64)
    handle = ctx.correlations.request("b2a", (n,))
    (t,) = handle.randoms
    sl = bf.slice_bits((bits.reshape(-1) ^ t) & 1, [0])[0]
    (e,) = open_words(ctx, [sl], op)
    e = bf.unslice_bits(e, n)
    (t_a,) = handle.derived()
    out = (1 - 2 * e) * t_a
    if holds_public(ctx.rank):
        out += e
    return out.reshape(shape)


def b2a_positions(
    ctx: PartyContext, words: torch.Tensor, positions: list[int], flip: list[bool], op: str = "b2a"
) -> torch.Tensor:
    """Arithmetic shares of bit ``positions[k]`` of each XOR-shared word (negated where ``flip[k]``):
    ``(K, *shape)``.  One random word per element masks them all (dealer ``b2aw``): open only the ``K``
    live bits of ``w ^ t`` (packed), then ``bit = e + (1 - 2 e) t_k``. Rounds 1; bytes ``K / 8`` per
    element; dealer 8 K per element."""
    shape = tuple(words.shape)
    kk = len(positions)
    if words.numel() == 0:
        return torch.zeros((kk, *shape), dtype=torch.int64)
    order = sorted(range(kk), key=lambda k: positions[k])
    mask = 0
    for p in positions:
        mask |= 1 << p
    handle = ctx.correlations.request("b2aw", (wrap_int(mask), *shape))
    (t,) = handle.randoms
    live = sorted(set(positions))
    (e,) = open_words(ctx, [words ^ t], op, positions=live)
    (t_a,) = handle.derived()  # (len(live), *shape), ascending positions
    row = {p: i for i, p in enumerate(live)}
    party0 = holds_public(ctx.rank)
    # Positions in ascending order, each once (what octave_bits asks for): the rows are t_a's, written in place
    # (this request's own tensor), not into a fresh (K, n) tensor whose first touch costs more than the work.
    out = t_a if positions == live else torch.empty((kk, *shape), dtype=torch.int64)
    for k in order:
        ek = (e >> positions[k]).bitwise_and_(1)
        if flip[k]:
            ek ^= 1
        # t (1 - 2 e) as (t XOR -e) + e (two's complement: ~t + 1 = -t), and party 0 adds e once more: word
        # operations on the row (torch.where(e, -t, t, out=...) took 0.35 ms a row of 10^5, this 0.1).
        m = ek.neg_()
        torch.bitwise_xor(t_a[row[positions[k]]], m, out=out[k])
        out[k].sub_(m, alpha=2 if party0 else 1)
    return out


def a2b(ctx: PartyContext, x: torch.Tensor, op: str = "a2b") -> torch.Tensor:
    """XOR shares of the 64 bits of the arithmetically shared ``x``. Rounds 7."""
    shape = tuple(x.shape)
    if x.numel() == 0:
        return torch.zeros(shape, dtype=torch.int64)
    handle = ctx.correlations.request("edabit", shape)
    (r_a,) = handle.randoms
    (c,) = open_all(ctx, [x + r_a], f"{op}:open")
    (r_b,) = handle.derived()
    nc = ~c
    g = r_b & nc  # borrow generated: c_i = 0, r_i = 1
    p = r_b ^ nc if holds_public(ctx.rank) else r_b.clone()  # propagate: c_i == r_i
    s = 1
    while s < 64:
        if 2 * s < 64:
            gp = and_fanout(ctx, p, torch.stack([g << s, p << s]), f"{op}:ks{s}")
            g, p = g ^ gp[0], gp[1]
        else:
            g = g ^ and_fanout(ctx, p, (g << s).unsqueeze(0), f"{op}:ks{s}")[0]
        s *= 2
    out = r_b ^ (g << 1)
    if holds_public(ctx.rank):
        out ^= c
    return out


def bit_extract(ctx: PartyContext, x: torch.Tensor, i: int, arithmetic: bool = True, op: str = "bit") -> torch.Tensor:
    """Bit ``i`` (1..63) of the arithmetically shared ``x``: arithmetic 0/1, or XOR shares in bit 0."""
    res = compare(ctx, x, (0,), arithmetic=arithmetic, bit=i, op=op)
    out = res.bits if arithmetic else res.binary
    assert out is not None
    return out[0]
