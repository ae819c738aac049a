"""``BatchNorm1d`` and ``BatchNorm2d`` with torch's arguments, defaults and running statistics.

Training (or ``track_running_stats=False``): the batch mean and the biased
batch variance are secret (local sums, one truncation each for the public
``1/count``, one Beaver square), and ``y = (x - mean) * rsqrt(var + eps)``
(rsqrt: 21 rounds, relative error 1e-3 on [1e-3, 1e4], exact to that on
[2^-16, 2^16); a variance below 2^-16 saturates at 256, so keep inputs of a
channel from being all but constant).  The running mean and the unbiased
running variance are updated with the public ``momentum`` (or the cumulative
average for ``momentum=None``), outside autograd.  Evaluation uses the
running statistics (still secret; one rsqrt per call).  ``eps`` is rounded to
the fixed-point grid (1e-5 becomes 2^-16 at f = 16; it is dropped if it rounds
to 0).  ``num_batches_tracked`` is a public count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..context import PartyContext
from ..errors import ProtocolError
from ..tensor import SecretTensor
from .module import Module, assign_, context, detach, make_parameter, no_grad

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    torch_class: type[torch.nn.Module]
    dims: tuple[int, ...]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        owner: int | None = 0,
        ctx: PartyContext | None = None,
        _values: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ProtocolError(f"{name}: num_features must be a positive integer, got {num_features!r}")
        if not isinstance(eps, int | float) or not eps >= 0:
            raise ProtocolError(f"{name}: eps must be a non-negative number, got {eps!r}")
        if momentum is not None and not (isinstance(momentum, int | float) and 0 <= momentum <= 1):
            raise ProtocolError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        ctx = context(ctx)
        c = (num_features,)
        if affine:
            self.weight = make_parameter(ctx, "weight", c, owner, _values, fill=1.0)
            self.bias = make_parameter(ctx, "bias", c, owner, _values, fill=0.0)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", make_parameter(ctx, "running_mean", c, owner, _values, fill=0.0,
                                                                requires_grad=False))  # fmt: skip
            self.register_buffer("running_var", make_parameter(ctx, "running_var", c, owner, _values, fill=1.0,
                                                               requires_grad=False))  # fmt: skip
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))  # public count
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        f = int(ctx.config.frac_bits)
        self._eps_grid = round(self.eps * 2.0**f) / 2.0**f

    def hparams(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats}  # fmt: skip

    def to_torch_skeleton(self) -> torch.nn.Module:
        return self.torch_class(**self.hparams())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())

    def _check(self, x: SecretTensor) -> None:
        name = type(self).__name__
        if not isinstance(x, SecretTensor):
            raise ProtocolError(f"{name}: the input must be a SecretTensor")
        if x.dim() not in self.dims or x.shape[1] != self.num_features:
            raise ProtocolError(
                f"{name}: expected an input of {' or '.join(str(d) for d in self.dims)} dimensions with "
                f"{self.num_features} channels in dimension 1, got shape {tuple(x.shape)}"
            )

    def _plus_eps(self, v: SecretTensor) -> SecretTensor:
        return v + self._eps_grid if self._eps_grid else v

    def forward(self, input: SecretTensor) -> SecretTensor:
        self._check(input)
        x = input
        red = tuple(d for d in range(x.dim()) if d != 1)
        bshape = [1] * x.dim()
        bshape[1] = self.num_features
        count = x.numel() // self.num_features
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        if self.training or not self.track_running_stats:
            if count < 2 and self.training:
                raise ProtocolError(f"{type(self).__name__}: expected more than 1 value per channel when training")
            mean = x.mean(red, keepdim=True)
            xc = x - mean
            var = xc.square().mean(red, keepdim=True)
            y = xc * self._plus_eps(var).rsqrt()
            if self.training and self.track_running_stats:
                if self.momentum is None:
                    m = 1.0 / float(self.num_batches_tracked)
                else:
                    m = float(self.momentum)
                self._update(detach(mean).reshape(-1), detach(var).reshape(-1), m, count)
        else:
            rm = self.running_mean.reshape(bshape)
            rv = self.running_var.reshape(bshape)
            y = (x - rm) * self._plus_eps(rv).rsqrt()
        if self.affine:
            y = y * self.weight.reshape(bshape) + self.bias.reshape(bshape)
        return y

    def _update(self, mean: SecretTensor, var: SecretTensor, m: float, count: int) -> None:
        """running <- (1 - m) running + m batch, with the unbiased variance (torch's rule); 2 truncation rounds."""
        with no_grad():
            rm, rv = self.running_mean, self.running_var
            unbiased = var * (count / (count - 1)) if count > 1 else var
            assign_(rm, rm + (mean - rm) * m)
            assign_(rv, rv + (unbiased - rv) * m)


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)``."""

    torch_class = torch.nn.BatchNorm1d
    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)``."""

    torch_class = torch.nn.BatchNorm2d
    dims = (4,)
