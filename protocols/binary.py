"""Binary (XOR) sharing over 64-bit words: local XOR/NOT/shifts, AND from dealer triples, bit packing.

A binary share is an int64 tensor; the value is the XOR of all parties'
tensors, 64 independent bit lanes per word.  Linear operations are local:

* XOR of two shared words: XOR the shares.  XOR with a public word: party 0 alone.
* NOT: XOR with all ones (party 0).  AND with a public word, shifts and
  rotations by public amounts: apply to every share.

AND of two shared words uses a dealer triple ``(a, b, c = a & b)``, XOR-shared
(Beaver's trick over GF(2)):

1. Open ``d = x ^ a`` and ``e = y ^ b`` to all (one round).
2. ``x & y = c ^ (d & b) ^ (e & a) ^ (d & e)``, the last term at party 0.

``and_fanout`` ANDs one word with m others and opens ``x ^ a`` only once.
Rounds 1; bytes per party per peer: (1 + m) words, or only the live bits when
``positions`` names them (they are packed, 8 per byte, before they go on the
wire: a bit that carries nothing is never sent).

Bit packing: ``pack_positions`` gathers the named bit positions of every word
(element-major) into a dense byte string; ``open_xor`` opens such a string in
one round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mpc.context import Expect, PartyContext
from mpc.shares import holds_public

__all__ = [
    "xor_public",
    "not_",
    "lshift",
    "rshift",
    "and_",
    "and_fanout",
    "open_xor",
    "open_words",
    "pack_positions",
    "unpack_positions",
    "packed_size",
]


def xor_public(ctx: PartyContext, x: torch.Tensor, c: torch.Tensor | int) -> torch.Tensor:
    """XOR a public word into a shared one (party 0 applies it)."""
    if holds_public(ctx.rank):
        return x ^ c
    return x.clone() if isinstance(c, int) else x ^ torch.zeros_like(c)


def not_(ctx: PartyContext, x: torch.Tensor) -> torch.Tensor:
    return xor_public(ctx, x, -1)


def lshift(x: torch.Tensor, k: int) -> torch.Tensor:
    return x << k


def rshift(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of every share (the XOR of shifted shares is the shifted value)."""
    if k == 0:
        return x.clone()
    return (x >> k) & ((1 << (64 - k)) - 1)


# ----- packing -------------------------------------------------------------------------------------


def packed_size(count: int, positions: Sequence[int]) -> int:
    return (count * len(positions) + 7) // 8


def pack_positions(words: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """The bits at ``positions`` of every word, element-major, 8 to a byte (uint8, little-endian bits)."""
    flat = words.reshape(-1)
    bits = torch.empty((flat.numel(), len(positions)), dtype=torch.uint8)
    for j, p in enumerate(positions):
        bits[:, j] = ((flat >> p) & 1).to(torch.uint8)
    return torch.from_numpy(np.packbits(bits.numpy().reshape(-1), bitorder="little"))


def unpack_positions(buf: torch.Tensor, count: int, positions: Sequence[int]) -> torch.Tensor:
    """Inverse of ``pack_positions``: ``count`` words with the bits back at ``positions`` (others 0)."""
    k = len(positions)
    bits = np.unpackbits(buf.numpy(), count=count * k, bitorder="little").reshape(count, k)
    out = torch.zeros(count, dtype=torch.int64)
    tb = torch.from_numpy(bits)
    for j, p in enumerate(positions):
        out |= tb[:, j].to(torch.int64) << p
    return out


# ----- opening -------------------------------------------------------------------------------------


def open_xor(ctx: PartyContext, buf: torch.Tensor, op: str) -> torch.Tensor:
    """Open a XOR-shared byte string to every party in one round."""
    peers = [j for j in range(ctx.world_size) if j != ctx.rank]
    got = ctx.comm.exchange(op, {j: buf for j in peers}, {j: Expect(tuple(buf.shape), torch.uint8) for j in peers})
    total = buf.clone()
    for j in peers:
        total ^= got[j]
    return total


def open_words(
    ctx: PartyContext, words: Sequence[torch.Tensor], op: str, positions: Sequence[int] | None = None
) -> list[torch.Tensor]:
    """Open XOR-shared words in one round: whole words, or only the bits at ``positions`` (packed)."""
    if positions is None:
        flat = torch.cat([w.reshape(-1) for w in words])
        total = open_xor(ctx, flat.view(torch.uint8), op).view(torch.int64)
    else:
        flat = torch.cat([w.reshape(-1) for w in words])
        total = unpack_positions(open_xor(ctx, pack_positions(flat, positions), op), flat.numel(), positions)
    out, start = [], 0
    for w in words:
        out.append(total[start : start + w.numel()].reshape(w.shape))
        start += w.numel()
    return out


# ----- AND ---------------------------------------------------------------------------------------


def and_fanout(
    ctx: PartyContext, x: torch.Tensor, ys: torch.Tensor, op: str = "and", positions: Sequence[int] | None = None
) -> torch.Tensor:
    """``x & ys[i]`` for every i (``ys`` has one more leading dimension), opening ``x ^ a`` once."""
    m = ys.shape[0]
    handle = ctx.correlations.request("band", (m, *x.shape))
    a, b = handle.randoms
    d, e = open_words(ctx, [x ^ a, ys ^ b], op, positions)
    (c,) = handle.derived()
    z = c ^ (d.unsqueeze(0) & b) ^ (e & a.unsqueeze(0))
    if holds_public(ctx.rank):
        z ^= d.unsqueeze(0) & e
    return z


def and_(
    ctx: PartyContext, x: torch.Tensor, y: torch.Tensor, op: str = "and", positions: Sequence[int] | None = None
) -> torch.Tensor:
    """XOR shares of ``x & y`` from XOR shares of ``x`` and ``y`` (one round)."""
    x, y = torch.broadcast_tensors(x, y)
    return and_fanout(ctx, x.contiguous(), y.unsqueeze(0).contiguous(), op, positions)[0]
