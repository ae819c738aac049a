"""Layers with torch's names, arguments and defaults, on secret tensors.

Every forward is made of the operation table's entries (``mpc.ops``), so the
costs are theirs and autograd records them: ``Linear`` and ``Conv2d`` are one
Beaver product with a secret weight (2 rounds; 1 with a public input),
activations and pools cost what ``F.relu``, ``F.max_pool2d`` ... cost
(README, "Costs"), ``Flatten``, ``AvgPool2d``'s sums and ``Identity`` are local.

Each layer knows its torch counterpart (``to_torch_skeleton``, used by
``Module.reveal``) and its hyperparameters (``hparams``, used by
``mpc.nn.from_torch``'s architecture description).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..context import PartyContext
from ..errors import ProtocolError
from ..functional import avg_pool2d, conv2d, linear, log_softmax, max_pool2d, softmax
from ..tensor import SecretTensor
from .module import Module, context, make_parameter

__all__ = [
    "Linear",
    "Conv2d",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "LogSoftmax",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "Flatten",
]


def _int(v: Any, name: str, what: str, low: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ProtocolError(f"{what}: {name} must be an integer >= {low}, got {v!r}")
    return v


def _pair(v: Any, name: str, what: str, low: int = 0) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if not isinstance(v, tuple | list) or len(v) != 2:
        raise ProtocolError(f"{what}: {name} must be an int or a pair of ints, got {v!r}")
    return (_int(v[0], name, what, low), _int(v[1], name, what, low))


class _Layer(Module):
    """A layer whose torch counterpart is ``torch_class(**hparams())``."""

    torch_class: type[torch.nn.Module]

    def hparams(self) -> dict[str, Any]:
        return {}

    def to_torch_skeleton(self) -> torch.nn.Module:
        return self.torch_class(**self.hparams())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())


class Linear(_Layer):
    """``torch.nn.Linear(in_features, out_features, bias=True)``: ``y = x W^T + b``.

    ``owner`` / ``ctx``: who initialises (module docstring of ``mpc.nn.module``).
    """

    torch_class = torch.nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        owner: int | None = 0,
        ctx: PartyContext | None = None,
        _values: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.in_features = _int(in_features, "in_features", "Linear", 1)
        self.out_features = _int(out_features, "out_features", "Linear", 1)
        ctx = context(ctx)
        bound = 1.0 / math.sqrt(in_features)
        self.weight = make_parameter(ctx, "weight", (out_features, in_features), owner, _values, bound=bound)
        self.bias = make_parameter(ctx, "bias", (out_features,), owner, _values, bound=bound) if bias else None
        if not bias:
            self.register_parameter("bias", None)

    def hparams(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def forward(self, input: SecretTensor | torch.Tensor) -> SecretTensor:
        return linear(input, self.weight, self.bias)


class Conv2d(_Layer):
    """``torch.nn.Conv2d(in, out, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True)``.

    Only ``padding_mode='zeros'`` and integer paddings; a secret x secret
    convolution is one Beaver product (2 rounds).
    """

    torch_class = torch.nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        owner: int | None = 0,
        ctx: PartyContext | None = None,
        _values: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        what = "Conv2d"
        if padding_mode != "zeros":
            raise ProtocolError(f"Conv2d: padding_mode={padding_mode!r} is not supported; use 'zeros'")
        if isinstance(padding, str):
            raise ProtocolError(f"Conv2d: padding={padding!r} is not supported; give the padding as integers")
        self.in_channels = _int(in_channels, "in_channels", what, 1)
        self.out_channels = _int(out_channels, "out_channels", what, 1)
        self.kernel_size = _pair(kernel_size, "kernel_size", what, 1)
        self.stride = _pair(stride, "stride", what, 1)
        self.padding = _pair(padding, "padding", what, 0)
        self.dilation = _pair(dilation, "dilation", what, 1)
        self.groups = _int(groups, "groups", what, 1)
        if in_channels % groups or out_channels % groups:
            raise ProtocolError("Conv2d: in_channels and out_channels must be divisible by groups")
        ctx = context(ctx)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = make_parameter(ctx, "weight", shape, owner, _values, bound=bound)
        if bias:
            self.bias = make_parameter(ctx, "bias", (out_channels,), owner, _values, bound=bound)
        else:
            self.register_parameter("bias", None)

    def hparams(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
            "bias": self.bias is not None,
        }

    def forward(self, input: SecretTensor | torch.Tensor) -> SecretTensor:
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ReLU(_Layer):
    """``torch.nn.ReLU`` (``inplace`` is accepted and ignored: secret tensors are never modified)."""

    torch_class = torch.nn.ReLU

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()

    def forward(self, input: SecretTensor) -> SecretTensor:
        return F.relu(input)


class Sigmoid(_Layer):
    """``torch.nn.Sigmoid`` (abs error 1e-3 on [-30, 30], README)."""

    torch_class = torch.nn.Sigmoid

    def forward(self, input: SecretTensor) -> SecretTensor:
        return torch.sigmoid(input)


class Tanh(_Layer):
    """``torch.nn.Tanh`` (abs error 1e-3 on [-30, 30], README)."""

    torch_class = torch.nn.Tanh

    def forward(self, input: SecretTensor) -> SecretTensor:
        return torch.tanh(input)


class Softmax(_Layer):
    """``torch.nn.Softmax(dim)``; logits in [-30, 30], abs error 1e-3."""

    torch_class = torch.nn.Softmax

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        if dim is None:
            raise ProtocolError("Softmax: give dim (torch's implicit choice of dimension is deprecated)")
        self.dim = _int(dim, "dim", "Softmax", -64)

    def hparams(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def forward(self, input: SecretTensor) -> SecretTensor:
        return softmax(input, self.dim)


class LogSoftmax(Softmax):
    """``torch.nn.LogSoftmax(dim)``; logits in [-30, 30], abs error 2e-3."""

    torch_class = torch.nn.LogSoftmax

    def forward(self, input: SecretTensor) -> SecretTensor:
        return log_softmax(input, self.dim)


class MaxPool2d(_Layer):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1)``, exact (no indices, no ceil_mode)."""

    torch_class = torch.nn.MaxPool2d

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False) -> None:
        super().__init__()
        if return_indices or ceil_mode:
            raise ProtocolError("MaxPool2d: return_indices and ceil_mode are not supported")
        self.kernel_size = _pair(kernel_size, "kernel_size", "MaxPool2d", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", "MaxPool2d", 1)
        self.padding = _pair(padding, "padding", "MaxPool2d")
        self.dilation = _pair(dilation, "dilation", "MaxPool2d", 1)

    def hparams(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation}  # fmt: skip

    def forward(self, input: SecretTensor) -> SecretTensor:
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation)


class AvgPool2d(_Layer):
    """``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0)``: local sums, one truncation (public 1/k)."""

    torch_class = torch.nn.AvgPool2d

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None) -> None:  # fmt: skip
        super().__init__()
        if ceil_mode or not count_include_pad:
            raise ProtocolError("AvgPool2d: ceil_mode and count_include_pad=False are not supported")
        self.kernel_size = _pair(kernel_size, "kernel_size", "AvgPool2d", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", "AvgPool2d", 1)
        self.padding = _pair(padding, "padding", "AvgPool2d")
        if divisor_override is not None:
            _int(divisor_override, "divisor_override", "AvgPool2d", 1)
        self.divisor_override = divisor_override

    def hparams(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "divisor_override": self.divisor_override}  # fmt: skip

    def forward(self, input: SecretTensor) -> SecretTensor:
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, divisor_override=self.divisor_override)


class AdaptiveAvgPool2d(_Layer):
    """``torch.nn.AdaptiveAvgPool2d(output_size)`` where each input size is a multiple of the output size.

    Then torch's adaptive windows are equal and disjoint, and the layer is
    ``AvgPool2d(kernel_size=stride=input // output)``; other sizes are refused.
    """

    torch_class = torch.nn.AdaptiveAvgPool2d

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        if isinstance(output_size, int) and not isinstance(output_size, bool):
            output_size = (output_size, output_size)
        if not isinstance(output_size, tuple | list) or len(output_size) != 2:
            raise ProtocolError(f"AdaptiveAvgPool2d: output_size must be an int or a pair, got {output_size!r}")
        self.output_size = tuple(None if o is None else _int(o, "output_size", "AdaptiveAvgPool2d", 1)
                                 for o in output_size)  # fmt: skip

    def hparams(self) -> dict[str, Any]:
        return {"output_size": self.output_size}

    def forward(self, input: SecretTensor) -> SecretTensor:
        if input.dim() not in (3, 4):
            raise ProtocolError(f"AdaptiveAvgPool2d: expected a 3-d or 4-d input, got shape {tuple(input.shape)}")
        h, w = input.shape[-2:]
        oh, ow = (h if self.output_size[0] is None else self.output_size[0],
                  w if self.output_size[1] is None else self.output_size[1])  # fmt: skip
        if h % oh or w % ow:
            raise ProtocolError(
                f"AdaptiveAvgPool2d: input size {(h, w)} is not a multiple of output_size {(oh, ow)}; secret "
                "adaptive pooling supports equal windows only (resize the input, or use AvgPool2d)"
            )
        k = (h // oh, w // ow)
        return input if k == (1, 1) else avg_pool2d(input, k, k)


class Flatten(_Layer):
    """``torch.nn.Flatten(start_dim=1, end_dim=-1)`` (local)."""

    torch_class = torch.nn.Flatten

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = _int(start_dim, "start_dim", "Flatten", -64)
        self.end_dim = _int(end_dim, "end_dim", "Flatten", -64)

    def hparams(self) -> dict[str, Any]:
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}

    def forward(self, input: SecretTensor) -> SecretTensor:
        return input.flatten(self.start_dim, self.end_dim)
