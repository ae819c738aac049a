"""Functions on secret tensors with ``torch`` / ``torch.nn.functional`` names.

``cat``, ``stack`` and ``conv2d`` with a public operand are local (a public
real kernel costs one truncation round); ``conv2d`` of two secrets is a Beaver
product; ``maximum``, ``minimum``, ``softmax``, ``log_softmax`` and
``max_pool2d`` call the comparison and nonlinear protocols (costs in their
docstrings and in the README's table).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .context import PartyContext
from .errors import ProtocolError
from .tensor import Public, SecretTensor, _result_dtype, where

__all__ = ["cat", "stack", "conv2d", "where", "maximum", "minimum", "softmax", "log_softmax", "max_pool2d"]


def _common(tensors: Sequence[SecretTensor], what: str) -> tuple[PartyContext, torch.dtype]:
    if not tensors:
        raise ProtocolError(f"{what} needs at least one tensor")
    if not all(isinstance(t, SecretTensor) for t in tensors):
        raise ProtocolError(f"{what} takes secret tensors; share public values first")
    ctx = tensors[0].ctx
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t.ctx is not ctx:
            raise ProtocolError(f"{what}: tensors belong to different party contexts")
        dtype = _result_dtype(dtype, t)
    return ctx, dtype


def cat(tensors: Sequence[SecretTensor], dim: int = 0) -> SecretTensor:
    ctx, dtype = _common(tensors, "cat")
    return SecretTensor(ctx, torch.cat([t.share for t in tensors], dim), dtype)


def stack(tensors: Sequence[SecretTensor], dim: int = 0) -> SecretTensor:
    ctx, dtype = _common(tensors, "stack")
    return SecretTensor(ctx, torch.stack([t.share for t in tensors], dim), dtype)


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, tuple | list) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    raise ProtocolError(f"conv2d: {name} must be an int or a pair of ints, got {v!r}")


def conv2d(
    input: SecretTensor | torch.Tensor,
    weight: SecretTensor | torch.Tensor,
    bias: SecretTensor | torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> SecretTensor:
    """``torch.nn.functional.conv2d`` where the input, the kernel or both are secret."""
    st, pd, dl = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if isinstance(input, SecretTensor) and isinstance(weight, SecretTensor):
        input._check_same_ctx(weight)
        out = input._new(input.ctx.suite.conv2d(input.ctx, input.share, weight.share, st, pd, dl, groups))
    elif isinstance(input, SecretTensor) or isinstance(weight, SecretTensor):
        secret = input if isinstance(input, SecretTensor) else weight
        assert isinstance(secret, SecretTensor)
        ctx = secret.ctx
        x = input.share if isinstance(input, SecretTensor) else ctx.encoder.encode_public(input)
        w = weight.share if isinstance(weight, SecretTensor) else ctx.encoder.encode_public(weight)
        prod = F.conv2d(x, w, stride=st, padding=pd, dilation=dl, groups=groups)
        out = secret._new(ctx.suite.truncate(ctx, prod, op="conv2d_public"))
    else:
        raise ProtocolError("conv2d: at least one of input and weight must be a SecretTensor")
    if bias is not None:
        out = out + (bias.reshape(1, -1, 1, 1) if isinstance(bias, SecretTensor | torch.Tensor) else bias)
    return out


def maximum(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    """``torch.maximum``: elementwise, broadcasting, exact (4 rounds)."""
    return input.maximum(other)


def minimum(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    """``torch.minimum``: elementwise, broadcasting, exact (4 rounds)."""
    return input.minimum(other)


def softmax(input: SecretTensor, dim: int) -> SecretTensor:
    """``torch.softmax`` along ``dim`` (see ``protocols.nonlinear``)."""
    return input.softmax(dim)


def log_softmax(input: SecretTensor, dim: int) -> SecretTensor:
    """``torch.log_softmax`` along ``dim`` (see ``protocols.nonlinear``)."""
    return input.log_softmax(dim)


def max_pool2d(
    input: SecretTensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> SecretTensor:
    """``torch.nn.functional.max_pool2d`` on a secret (N, C, H, W) or (C, H, W) input, exact.

    The windows are gathered locally; their maximum is a tournament of
    comparisons (4 rounds per halving of the window: 8 for 2x2, 16 for 3x3).
    Padding counts as minus infinity, as in torch.
    """
    if not isinstance(input, SecretTensor):
        raise ProtocolError("max_pool2d: the input must be a SecretTensor")
    if ceil_mode or return_indices:
        raise ProtocolError("max_pool2d: ceil_mode and return_indices are not supported")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride") if stride is not None else (kh, kw)
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(kh, kw, sh, sw, dh, dw) < 1 or ph < 0 or pw < 0 or ph > kh // 2 or pw > kw // 2:
        raise ProtocolError("max_pool2d: sizes must be positive and padding at most half the kernel")
    x = input.share
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ProtocolError(f"max_pool2d: expected a 3-d or 4-d input, got shape {tuple(input.shape)}")
    ctx = input.ctx
    if ph or pw:
        # a value far below the fixed-point range, held by party 0: never the maximum of a window
        low = -(1 << 61) if ctx.rank == 0 else 0
        x = F.pad(x, (pw, pw, ph, ph), value=low)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if x.shape[2] < eh or x.shape[3] < ew:
        raise ProtocolError(f"max_pool2d: kernel {(kh, kw)} is larger than the padded input")
    win = x.unfold(2, eh, sh).unfold(3, ew, sw)[..., ::dh, ::dw]  # (N, C, OH, OW, kh, kw)
    vals, _, _ = ctx.suite.max_reduce(ctx, win.reshape(*win.shape[:4], kh * kw), op="maxpool")
    return input._new(vals.squeeze(0) if squeeze else vals)
