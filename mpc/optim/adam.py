"""``mpc.optim.Adam``: torch's Adam on secret parameters, with the bias correction folded into the averages.

torch keeps ``m`` and ``v`` and divides by ``1 - beta^t`` at each step; in
fixed point that division (up to 1000 x at t = 1 for beta2 = 0.999) would
magnify the rounding of the small ``(1 - beta2) g^2``.  Here the corrected
averages are kept directly, which is the same arithmetic:

    m_hat_t = m_hat_{t-1} + (1 - b1_t) (g - m_hat_{t-1}),  b1_t = (beta1 - beta1^t) / (1 - beta1^t)
    v_hat_t = v_hat_{t-1} + (1 - b2_t) (g^2 - v_hat_{t-1}), b2_t likewise (b_1 = 0: the first step is exact)
    p <- p - lr m_hat_t / sqrt(v_hat_t + eps^2)

with public ``b1_t``, ``b2_t``.  ``eps`` enters as ``sqrt(v + eps^2)`` instead of
torch's ``sqrt(v) + eps`` (the same up to a factor in [1, sqrt 2], and only
where ``sqrt(v)`` is near ``eps``; ``eps^2`` is rounded to the grid and drops
out at torch's default 1e-8).  Gradients are scaled by the public power of two
``grad_scale`` (S, default 64) before squaring, which is exact and cancels in
``m_hat / sqrt(v_hat)``: the secret ``rsqrt`` (21 rounds, relative error 1e-3,
exact to that on [2^-16, 2^16)) then sees ``S^2 v_hat``, accurate for gradient
RMS in [2^-8 / S, 2^8 / S] = [6e-5, 4] at S = 64.  Below, rsqrt saturates at 256
and the step shrinks smoothly (|step| <= lr); above, the step grows like
``lr |g| / 4``.  Known limit: a gradient that is zero in exact arithmetic
(a dead unit) comes out as a few units in the last place, and Adam's
scale-free step turns that noise into a step of up to about lr per step (torch
takes none); clip gradients (``mpc.nn.utils.clip_grad_value_``) if they can
exceed that.  Rounds per step (all parameters at once): 2 (square) + 1 (both
averages in one truncation) + 9 (rsqrt) + 2 (product) + 1 (lr), + 1 with
weight decay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ProtocolError
from ..functional import cat
from ..tensor import SecretTensor
from .optimizer import Optimizer, _number, expand_public, flat, split

__all__ = ["Adam"]


class Adam(Optimizer):
    """``torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, maximize=False)``."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False,
                 grad_scale: int = 64) -> None:  # fmt: skip
        if amsgrad:
            raise ProtocolError("Adam: amsgrad=True is not supported (it needs a secret running maximum)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        grad_scale=grad_scale)  # fmt: skip
        super().__init__(params, defaults)

    def _check(self, g: dict[str, Any]) -> None:
        _number(g["lr"], "lr", "Adam")
        _number(g["eps"], "eps", "Adam")
        _number(g["weight_decay"], "weight_decay", "Adam")
        b = g["betas"]
        if not isinstance(b, tuple | list) or len(b) != 2:
            raise ProtocolError(f"Adam: betas must be a pair, got {b!r}")
        _number(b[0], "betas[0]", "Adam", 0.0, 1.0 - 1e-12)
        _number(b[1], "betas[1]", "Adam", 0.0, 1.0 - 1e-12)
        s = g["grad_scale"]
        if not isinstance(s, int) or isinstance(s, bool) or s < 1 or s & (s - 1):
            raise ProtocolError(f"Adam: grad_scale must be a power of two (an exact scale), got {s!r}")

    def _update(self, group: dict[str, Any], params: list[SecretTensor]) -> SecretTensor:
        b1, b2 = (float(b) for b in group["betas"])
        scale = int(group["grad_scale"])
        p = flat(params)
        g = flat([q.grad for q in params])
        if group["maximize"]:
            g = -g
        if group["weight_decay"]:
            g = g + p * float(group["weight_decay"])
        gs = g * scale  # exact: a public integer
        states = [self.state.setdefault(id(q), {"step": 0}) for q in params]
        for st in states:
            st["step"] += 1
        first = all(st["step"] == 1 for st in states)
        sq = gs.square()
        if first:
            m, v = gs, sq  # b1_1 = b2_1 = 0
        else:
            pieces_g, pieces_sq = split(gs, params), split(sq, params)
            old_m = flat([st.get("m", pieces_g[i]) for i, st in enumerate(states)])
            old_v = flat([st.get("v", pieces_sq[i]) for i, st in enumerate(states)])
            c1 = expand_public([1.0 - _corrected(b1, st["step"]) for st in states], params)
            c2 = expand_public([1.0 - _corrected(b2, st["step"]) for st in states], params)
            both = cat([gs - old_m, sq - old_v]) * torch.cat([c1, c2])  # one truncation round for both
            n = p.numel()
            m, v = old_m + both[:n], old_v + both[n:]
        for st, mi, vi in zip(states, split(m, params), split(v, params)):
            st["m"], st["v"] = mi, vi
        eps2 = _on_grid((float(group["eps"]) * scale) ** 2, p)
        r = (v + eps2 if eps2 else v).rsqrt()
        return p - (m * r) * float(group["lr"])


def _corrected(beta: float, t: int) -> float:
    """``b_t = (beta - beta^t) / (1 - beta^t)``: the weight of the old corrected average at step t."""
    return (beta - beta**t) / (1.0 - beta**t)


def _on_grid(value: float, like: SecretTensor) -> float:
    f = int(like.ctx.config.frac_bits)
    return round(value * 2.0**f) / 2.0**f
