"""``mpc.optim.SGD``: torch's SGD (momentum, dampening, Nesterov, weight decay, maximize) on secret parameters.

Per step, for all parameters of a group at once: weight decay one truncation
round, momentum two, the learning rate one (public scalars are exact to one
unit in the last place).  The arithmetic is torch's, step for step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ProtocolError
from ..tensor import SecretTensor
from .optimizer import Optimizer, _number, expand_public, flat, split

__all__ = ["SGD"]


class SGD(Optimizer):
    """``torch.optim.SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False)``."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False) -> None:  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)  # fmt: skip
        super().__init__(params, defaults)

    def _check(self, g: dict[str, Any]) -> None:
        _number(g["lr"], "lr", "SGD")
        _number(g["momentum"], "momentum", "SGD")
        _number(g["dampening"], "dampening", "SGD")
        _number(g["weight_decay"], "weight_decay", "SGD")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ProtocolError("SGD: Nesterov momentum requires a momentum and zero dampening")

    def _update(self, group: dict[str, Any], params: list[SecretTensor]) -> SecretTensor:
        p = flat(params)
        d = flat([q.grad for q in params])
        if group["maximize"]:
            d = -d
        if group["weight_decay"]:
            d = d + p * float(group["weight_decay"])
        mom = float(group["momentum"])
        if mom:
            bufs = [self.state.setdefault(id(q), {}).get("momentum_buffer") for q in params]
            if all(b is None for b in bufs):
                buf = d  # torch's first step: the buffer is the direction itself
            else:
                # buffers that do not exist yet start from zero with the full direction (torch's clone)
                damp = 1.0 - float(group["dampening"])
                pieces = split(d, params)
                old = flat([pieces[i] * 0 if b is None else b for i, b in enumerate(bufs)])
                coef = expand_public([1.0 if b is None else damp for b in bufs], params)
                buf = old * mom + (d * coef if any(b is None for b in bufs) else d * damp)
            for q, b in zip(params, split(buf, params)):
                self.state[id(q)]["momentum_buffer"] = b
            d = d + buf * mom if group["nesterov"] else buf
        return p - d * float(group["lr"])
