"""Additive n-out-of-n sharing over Z_2^64: input, opening, reveal to one party.

* ``share_input``: the owner's value ``x`` becomes shares ``x_j`` with
  ``sum_j x_j = x``.  Party ``j != owner`` takes ``x_j`` from the AES-CTR stream
  it shares with the owner (seeded at setup over the authenticated link), so the
  owner sends no share at all: one round of public metadata (shape, dtype).
  Rounds 1, bytes per party: the owner sends (n-1) small headers.
* ``open_all``: every party sends its shares to every other party, batched into
  one message per peer.  Rounds 1, bytes per party: 8 (n-1) per element.
* ``open_to``: the others send their share to party ``k`` alone; nothing of the
  value reaches any other party.  Rounds 1, bytes: 8 per element from each
  party other than ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpc.context import Expect, PartyContext
from mpc.dtypes import CODE_DTYPES as _CODE_DTYPES
from mpc.dtypes import DTYPE_CODES
from mpc.errors import ProtocolError

__all__ = ["share_input", "input_tensor", "send_metadata", "recv_metadata", "open_all", "open_to", "DTYPE_CODES"]

MAX_NDIM = 16


def input_tensor(ctx: PartyContext, value: torch.Tensor | None, owner: int) -> torch.Tensor | None:
    """Every family's checks of an input: a valid owner, a tensor at the owner (returned), None elsewhere."""
    n = ctx.world_size
    if not isinstance(owner, int) or isinstance(owner, bool) or not 0 <= owner < n:
        raise ProtocolError(f"owner must be a party id in 0..{n - 1}, got {owner!r}")
    if ctx.rank != owner:
        if value is not None:
            raise ProtocolError(
                f"party {ctx.rank} is not the owner (owner={owner}) and must pass None; only the owner's tensor is shared"
            )
        return None
    if value is None:
        raise ProtocolError(f"party {owner} is the owner and must pass a tensor, got None")
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if t.dtype not in DTYPE_CODES:
        raise ProtocolError(f"cannot share a tensor of dtype {t.dtype}")
    if t.dim() > MAX_NDIM:
        raise ProtocolError(f"cannot share a tensor of more than {MAX_NDIM} dimensions")
    return t.detach().cpu()


def send_metadata(ctx: PartyContext, t: torch.Tensor, owner: int) -> None:
    """The owner's one message of public metadata (dtype code, ndim, shape) to every other party."""
    meta = torch.tensor([DTYPE_CODES[t.dtype], t.dim(), *t.shape], dtype=torch.int64)
    ctx.comm.exchange("share", {j: meta for j in range(ctx.world_size) if j != owner}, {})


def recv_metadata(ctx: PartyContext, owner: int) -> tuple[tuple[int, ...], torch.dtype]:
    """The shape and dtype the owner announced, checked."""
    meta = ctx.comm.exchange("share", {}, {owner: Expect(None)})[owner]
    if meta.dim() != 1 or meta.numel() < 2 or int(meta[0]) not in _CODE_DTYPES or int(meta[1]) != meta.numel() - 2:
        raise ProtocolError(f"malformed share metadata from party {owner}")
    shape = tuple(int(d) for d in meta[2:])
    if any(d < 0 for d in shape):
        raise ProtocolError(f"negative dimension in share metadata from party {owner}")
    extent = 1
    for d in shape:
        extent *= max(d, 1)
    limit = ctx.config.max_message_bytes
    if 8 * extent > limit:
        raise ProtocolError(
            f"party {owner} declared an input of shape {shape}, over this party's {limit}-byte message limit "
            "(max_message_bytes): nothing was allocated; raise the limit for every party if the input is meant"
        )
    return shape, _CODE_DTYPES[int(meta[0])]


def share_input(ctx: PartyContext, value: torch.Tensor | None, owner: int) -> tuple[torch.Tensor, torch.dtype]:
    """Share ``value`` held by ``owner``; returns this party's share and the public dtype."""
    t = input_tensor(ctx, value, owner)
    if t is not None:
        enc = ctx.encoder.encode(t, what=f"input of party {owner}")
        send_metadata(ctx, t, owner)
        mine = enc
        for j in range(ctx.world_size):
            if j != owner:
                mine = mine - ctx.pair_prgs[j].int64(enc.shape)
        return mine, t.dtype
    shape, dtype = recv_metadata(ctx, owner)
    return ctx.pair_prgs[owner].int64(shape), dtype


def open_all(ctx: PartyContext, shares: Sequence[torch.Tensor], op: str) -> list[torch.Tensor]:
    """Open several shared tensors to every party in one round."""
    # A single tensor travels with its own shape, so a peer that holds another shape of the same size
    # (say, the transpose) is refused with DesyncError instead of silently adding mismatched elements.
    flat = torch.cat([s.reshape(-1) for s in shares]) if len(shares) > 1 else shares[0]
    peers = [j for j in range(ctx.world_size) if j != ctx.rank]
    got = ctx.comm.exchange(op, {j: flat for j in peers}, {j: Expect(tuple(flat.shape)) for j in peers})
    # Sum into a received tensor (this party's own buffer), not into ``flat``: the link keeps a view of what
    # was sent until the peer acknowledges it, in case it must be sent again.
    total = got[peers[0]]
    for j in peers[1:]:
        total += got[j]
    total += flat
    if len(shares) == 1:
        return [total]
    out, start = [], 0
    for s in shares:
        n = s.numel()
        out.append(total[start : start + n].reshape(s.shape))
        start += n
    return out


def open_to(ctx: PartyContext, share: torch.Tensor, to: int, op: str = "reveal") -> torch.Tensor | None:
    """Open a shared tensor to party ``to`` only; the others get None.

    Party ``to`` sends every other party an empty frame in the same round (no
    payload): it carries the transcript digest, so parties that disagree on the
    recipient find out at once instead of all waiting for each other.
    """
    n = ctx.world_size
    if not isinstance(to, int) or isinstance(to, bool) or not 0 <= to < n:
        raise ProtocolError(f"reveal target must be a party id in 0..{n - 1}, got {to!r}")
    if ctx.rank != to:
        ctx.comm.exchange(op, {to: share.contiguous()}, {to: Expect((0,), torch.uint8)})
        return None
    peers = [j for j in range(n) if j != to]
    got = ctx.comm.exchange(op, {j: _EMPTY for j in peers}, {j: Expect(tuple(share.shape)) for j in peers})
    total = share.clone()
    for j in peers:
        total += got[j]
    return total


_EMPTY = torch.empty(0, dtype=torch.uint8)
