"""Randomness that no party knows: a joint uniform draw and a joint Bernoulli mask.

Protocol (``joint_uniform``), for n parties and f fractional bits:

1. each party i draws ``r_i``, uniform on the grid ``{0, 2^-f, ..., 1 - 2^-f}``,
   from its own AES-CTR stream (``ctx.local_prg``) and shares it with
   ``mpc.share(r_i, owner=i)`` (the shares come from pairwise seeds: one
   metadata message per party, n rounds in all);
2. ``s = r_0 + ... + r_{n-1}`` locally (exact: every value is on the grid);
3. ``u = s - sum_{j=1}^{n-1} [s >= j]``, i.e. ``s mod 1``, with the n - 1
   comparisons of every element in one batched comparison (4 rounds,
   12.4 (n - 1) bytes per element to each peer, 2 parties).

``u`` is uniform on the grid whenever at least one ``r_i`` is, and is
independent of what any coalition of up to n - 1 parties sees: their own
``r_i``, uniform shares, and the comparison's masked openings.

``joint_bernoulli(ctx, shape, p)`` returns the secret 0/1 mask ``[u >= p]``
without computing ``u``: ``sum_{j=0}^{n-1} [s >= j + p] - sum_{j=1}^{n-1} [s >= j]``,
2n - 1 comparisons per element in one batch (4 rounds).  P(1) is
``1 - ceil(p 2^f) / 2^f``: exactly ``1 - p`` when p is a multiple of 2^-f.
"""

from __future__ import annotations

import numpy as np
import torch

from ..api import share
from ..context import PartyContext
from ..errors import ProtocolError
from ..tensor import SecretTensor

__all__ = ["joint_uniform", "joint_bernoulli", "contribution"]


def _bits(ctx: PartyContext) -> int:
    return max(1, min(int(ctx.config.frac_bits), 30))


def contribution(ctx: PartyContext, shape: tuple[int, ...]) -> torch.Tensor:
    """This party's uniform contribution on the grid, from its CSPRNG (float64)."""
    f = _bits(ctx)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    raw = ctx.local_prg.bytes(4 * n).view(np.uint32) >> np.uint32(32 - f)
    return torch.from_numpy(raw.astype(np.float64) * 2.0**-f).reshape(shape)


def _joint_sum(ctx: PartyContext, shape: tuple[int, ...]) -> tuple[SecretTensor, torch.Tensor]:
    mine = contribution(ctx, shape)
    total = None
    for i in range(ctx.world_size):
        t = share(mine if i == ctx.rank else None, owner=i, ctx=ctx)
        total = t if total is None else total + t
    assert total is not None
    return total, mine


def _at_least(s: SecretTensor, thresholds: list[float]) -> SecretTensor:
    """``[s >= t_j]`` stacked along a new first dimension, for public thresholds: one batched comparison."""
    k = len(thresholds)
    shape = tuple(s.shape)
    rep = s.unsqueeze(0).expand(k, *shape)
    thr = torch.tensor(thresholds, dtype=torch.float64).reshape(k, *([1] * len(shape))).expand(k, *shape)
    return rep - thr >= 0


def joint_uniform(ctx: PartyContext, shape: tuple[int, ...], *, _with_contribution: bool = False):
    """A secret tensor uniform on ``[0, 1)`` (on the fixed-point grid) that no party knows."""
    shape = tuple(int(d) for d in shape)
    s, mine = _joint_sum(ctx, shape)
    n = ctx.world_size
    u = s - _at_least(s, [float(j) for j in range(1, n)]).sum(0) if n > 1 else s
    return (u, mine) if _with_contribution else u


def joint_bernoulli(ctx: PartyContext, shape: tuple[int, ...], p: float, *, _with_contribution: bool = False):
    """A secret 0/1 tensor, 0 with probability ``p`` (on the grid), that no party knows."""
    if not 0.0 <= p <= 1.0:
        raise ProtocolError(f"the probability must lie in [0, 1], got {p}")
    shape = tuple(int(d) for d in shape)
    n = ctx.world_size
    s, mine = _joint_sum(ctx, shape)
    cmp = _at_least(s, [j + p for j in range(n)] + [float(j) for j in range(1, n)])
    mask = cmp[:n].sum(0) - cmp[n:].sum(0) if n > 1 else cmp[0]
    return (mask, mine) if _with_contribution else mask
