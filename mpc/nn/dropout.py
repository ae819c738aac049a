"""``Dropout(p)``: a mask that no party knows, drawn jointly (``mpc.nn.random.joint_bernoulli``).

In training, ``y = x * m`` with ``m = where(keep, 1 / (1 - p), 0)`` and
``keep`` the joint secret Bernoulli mask (every party contributes CSPRNG bits,
so no coalition short of all the parties knows which elements are dropped).
Cost, per call: n sharings of the contributions (metadata only, n rounds), one
batch of 2n - 1 comparisons (4 rounds, 12.4 (2n - 1) bytes per element and
peer for 2 parties), one round for the selection and one Beaver product
(2 rounds): 7 + n rounds.  P(keep) is ``1 - ceil(p 2^f) / 2^f`` (exactly
``1 - p`` when p is a multiple of 2^-f) and the scale ``1 / (1 - p)`` is a
public constant on the grid (error <= 2^-17).  In evaluation (and for p = 0)
it is the identity; for p = 1 the output is zero, as in torch.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ProtocolError
from ..functional import where
from ..tensor import SecretTensor
from .layers import _Layer
from .random import joint_bernoulli

__all__ = ["Dropout", "dropout"]


def dropout(input: SecretTensor, p: float = 0.5, training: bool = True) -> SecretTensor:
    """``torch.nn.functional.dropout`` on a secret tensor, with a jointly drawn secret mask."""
    if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ProtocolError(f"dropout probability has to be between 0 and 1, but got {p!r}")
    if not isinstance(input, SecretTensor):
        raise ProtocolError("dropout: the input must be a SecretTensor")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0
    keep = joint_bernoulli(input.ctx, tuple(input.shape), float(p))
    return input * where(keep, 1.0 / (1.0 - p), 0.0)


class Dropout(_Layer):
    """``torch.nn.Dropout(p=0.5)`` (``inplace`` accepted and ignored)."""

    torch_class = torch.nn.Dropout

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ProtocolError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        self.p = float(p)

    def hparams(self) -> dict[str, Any]:
        return {"p": self.p}

    def forward(self, input: SecretTensor) -> SecretTensor:
        return dropout(input, self.p, self.training)
