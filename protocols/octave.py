"""The octave thermometer from the bits of ``x``: ``[x >= +-2^j]`` for many ``j`` at the cost of one a2b.

The octave tables of ``protocols.approx`` (log, reciprocal, sqrt, rsqrt) need
``b_k = [x >= T_k]`` for thresholds ``+-2^j``, one for each octave and sign:
42 for the reciprocal.  As a comparison batch each threshold costs its own
carry tree; here all of them come from one bit decomposition:

1. ``w = a2b(x)`` (XOR shares of the 64 bits; 7 rounds).
2. ``s`` = bit 63 (the sign); ``z = w XOR sext(s)`` is local (every party
   XORs its share with its own share's sign extension): ``z = x`` for
   ``x >= 0`` and ``z = -x - 1 = |x| - 2^-f`` for ``x < 0``.
3. Suffix OR over the bit positions of ``z`` from ``f + jlo`` up
   (``y |= y >> 1``, ``>> 2``, ... ``>> 32``: one AND of whole words per level,
   6 rounds): bit ``f + j`` of ``y`` is ``[z >= 2^j]``.
4. ``y AND sext(s)`` (one AND round) splits the thermometer by sign:
   ``n_j = s [z >= 2^j]``, ``p_j = (1 - s) [z >= 2^j]``.
5. ``b2a`` of the ``p_j``, ``n_j`` and ``s`` (one round, one opened bit each),
   laid out in one word in the order of the thresholds' values (the negative
   window bit-reversed, a local permutation of XOR shares), so that the
   conversion writes its rows in place in the dealer's (``b2a_positions``).

Then, exactly: ``[x >= 2^j] = p_j``, ``[x >= 0] = 1 - s`` and
``[x >= -2^j] = 1 - n_j`` (for ``x < 0``: ``x >= -2^j`` iff ``|x| <= 2^j`` iff
``z < 2^j``).  Rounds 15, against the 4 of a
comparison batch, but what grows with the thresholds is only the conversion
(one opened bit and 8 dealer bytes per threshold, against a carry tree of
local work, 4.4 opened bytes and 21 dealer bytes): the bits are word
operations on one word per element, all converted from one mask word.
Bytes per element, per party and per other party: a2b 144, suffix OR 16 a
level, split 16, conversion 1/8 per bit.  The reciprocal of 10^5 elements
(2 parties): 1.49 s -> 0.62 s; with the conversion in place and the tables
selected in one product (``approx.select_many``) about 0.30 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpc.context import PartyContext
from mpc.errors import ProtocolError
from mpc.ring import logical_rshift
from mpc.shares import Share

__all__ = ["octave_bits", "MIN_THRESHOLDS"]

# Octave tables with at least this many thresholds (log, reciprocal, sqrt, rsqrt: 33 to 47) take their
# thermometer from the bits; fewer (softmax's 1 / sum: 2 + ceil(log2 C)) keep a comparison batch, in fewer
# rounds.
MIN_THRESHOLDS = 20


def octave_bits(ctx: PartyContext, x: Share, thresholds: Sequence[int], op: str) -> Share:
    """Arithmetic ``[x >= T_k]`` (shape ``(K, *x.shape)``) for ring thresholds ``T_k`` that are each 0 or
    ``+-2^p`` (``p`` in 0..62), from one bit decomposition (see the module docstring)."""
    fam = ctx.family
    pos: list[int] = []
    for t in thresholds:
        if t != 0 and (abs(t) & (abs(t) - 1) or abs(t) >= 1 << 63):
            raise ProtocolError(f"{op}: octave thresholds must be 0 or +-2^p, got {t}")
        if t:
            pos.append(abs(t).bit_length() - 1)
    lo = min(pos) if pos else 62
    width = (max(pos) if pos else lo) - lo + 1
    negative = any(t < 0 for t in thresholds)
    if width * (1 + negative) + any(t == 0 for t in thresholds) > 64:
        raise ProtocolError(f"{op}: octave thresholds from 2^{lo} to 2^{lo + width - 1} do not fit one word")
    shape = tuple(x.shape)
    w = fam.a2b(ctx, x.reshape(-1), f"{op}:a2b")
    sext = w._map(lambda t: t >> 63)  # each share's sign, spread over the word: XOR of them is sext(s)
    y = (w ^ sext).and_public(((1 << 63) - 1) & ~((1 << lo) - 1))  # |x| (less one unit if x < 0), bits >= lo
    shift = 1
    while shift < 63 - lo:  # bits above the top threshold count too (they make x >= 2^top)
        y = _or(ctx, y, y >> shift, f"{op}:or{shift}")
        shift *= 2
    # Split by sign (always: a positive threshold must read 0 for every negative x, whose z is |x|).
    neg = fam.and_(ctx, y, sext, f"{op}:split")
    posw = y ^ neg
    # One word holds every bit to convert, in the order of the thresholds' values: the window of negative
    # octaves reversed (n_j for -2^j, j descending), the sign bit, the window of positive octaves; disjoint
    # bits, so XOR places them (local; reversing the bits of XOR shares is too).  Ascending thresholds thus
    # take ascending positions, which b2a_positions converts in place.
    window = (1 << width) - 1
    zero = any(t == 0 for t in thresholds)
    base, word = 0, None
    if negative:
        word = (neg >> lo).and_public(window)._map(lambda t: _reverse_low(t, width))
        base = width
    zbase = base
    if zero:
        sign = sext.and_public(1) << base
        word = sign if word is None else word ^ sign
        base += 1
    pos_bits = (posw >> lo).and_public(window) << base
    word = pos_bits if word is None else word ^ pos_bits

    def at(t: int) -> int:
        j = abs(t).bit_length() - 1 - lo
        return zbase if t == 0 else (width - 1 - j if t < 0 else base + j)

    # [x >= 2^j] = p_j, [x >= 0] = 1 - s, [x >= -2^j] = 1 - n_j.
    bits = fam.b2a_positions(ctx, word, [at(t) for t in thresholds], [t <= 0 for t in thresholds], f"{op}:b2a")
    return bits.reshape((len(thresholds), *shape))


# The swap network that reverses the 64 bits of a word: (shift, mask of the lower bit of each swapped pair).
_SWAPS = [(1, 0x5555555555555555), (2, 0x3333333333333333), (4, 0x0F0F0F0F0F0F0F0F), (8, 0x00FF00FF00FF00FF),
          (16, 0x0000FFFF0000FFFF), (32, 0x00000000FFFFFFFF)]  # fmt: skip


def _reverse_low(t: torch.Tensor, width: int) -> torch.Tensor:
    """The low ``width`` bits of every int64 in ``t`` (the rest zero) in reverse order, the rest zero."""
    for shift, mask in _SWAPS:
        t = ((t >> shift) & mask) | ((t & mask) << shift)
    return logical_rshift(t, 64 - width)


def _or(ctx: PartyContext, a: Share, b: Share, op: str) -> Share:
    """``a OR b = a XOR b XOR (a AND b)`` on XOR-shared words: one AND round."""
    return a ^ b ^ ctx.family.and_(ctx, a, b, op)
