"""Functions on secret tensors with ``torch`` / ``torch.nn.functional`` names, registered in the operation table.

``cat``, ``stack`` and ``avg_pool2d`` are local; ``conv2d`` and ``linear``
with a public operand cost one truncation round (a public real kernel) and with
two secrets a Beaver product; ``max_pool2d`` is a tournament of comparisons.
``maximum``, ``minimum``, ``where``, ``softmax`` and ``log_softmax`` are the
table's entries of ``mpc.arith`` under their torch names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .arith import add, getitem, log_softmax, matmul, maximum, minimum, mul, scatter_sum, softmax, where
from .context import PartyContext
from .errors import ProtocolError
from .ops import register
from .tensor import SecretTensor, _result_dtype

__all__ = [
    "cat",
    "stack",
    "conv2d",
    "linear",
    "where",
    "maximum",
    "minimum",
    "softmax",
    "log_softmax",
    "max_pool2d",
    "avg_pool2d",
]


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


@register("cat", cost="local", torch=(torch.cat, torch.concat, torch.concatenate))
def cat(tensors: Sequence[SecretTensor], dim: int = 0) -> SecretTensor:
    _, dtype = _common(tensors, "cat")
    return tensors[0]._new(type(tensors[0].share).cat([t.share for t in tensors], dim), dtype)


@register("stack", cost="local", torch=(torch.stack,))
def stack(tensors: Sequence[SecretTensor], dim: int = 0) -> SecretTensor:
    _, dtype = _common(tensors, "stack")
    return tensors[0]._new(type(tensors[0].share).stack([t.share for t in tensors], dim), dtype)


def _pair(v: int | tuple[int, int], name: str, what: str = "conv2d") -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, tuple | list) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    raise ProtocolError(f"{what}: {name} must be an int or a pair of ints, got {v!r}")


def _check_conv2d(input, weight, stride, padding, dilation, groups) -> None:
    """Refuse shapes that do not fit, in the words of the user's conv2d."""
    si, sw = tuple(input.shape), tuple(weight.shape)
    if len(si) != 4 or len(sw) != 4:
        raise ProtocolError(f"conv2d: needs a 4-d input (N, C, H, W) and a 4-d weight, got shapes {si} and {sw}")
    if not isinstance(groups, int) or groups < 1 or si[1] != sw[1] * groups or sw[0] % groups:
        raise ProtocolError(
            f"conv2d: input {si} has {si[1]} channels but weight {sw} expects {sw[1]} x groups={groups}"
        )
    if min(*stride, *dilation) < 1 or min(padding) < 0:
        raise ProtocolError("conv2d: stride and dilation must be positive and padding not negative")
    for k, (n, kk) in enumerate(zip(si[2:], sw[2:])):
        if n + 2 * padding[k] < dilation[k] * (kk - 1) + 1:
            raise ProtocolError(f"conv2d: kernel {sw[2:]} is larger than the padded input {si[2:]} (padding {padding})")


@register("conv2d", cost="secret x secret: 2 rounds, an operand opened by an earlier product not opened again; "
          "public kernel or input: 1 round", torch=(F.conv2d,))  # fmt: skip
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
    _check_conv2d(input, weight, st, pd, dl, groups)
    if isinstance(input, SecretTensor) and isinstance(weight, SecretTensor):
        if weight.ctx is not input.ctx:
            raise ProtocolError("cannot combine secret tensors of different party contexts")
        out = input._new(input.ctx.family.conv2d(input.ctx, input.share, weight.share, st, pd, dl, groups))
    elif isinstance(input, SecretTensor) or isinstance(weight, SecretTensor):
        secret = input if isinstance(input, SecretTensor) else weight
        public = weight if secret is input else input
        if not isinstance(public, torch.Tensor):
            raise ProtocolError(f"conv2d needs tensor operands, got {type(public).__name__}")
        assert isinstance(secret, SecretTensor)
        ctx = secret.ctx
        kw = dict(stride=st, padding=pd, dilation=dl, groups=groups)
        out = secret._new(ctx.family.conv2d_public(ctx, secret.share, public, kernel_secret=secret is weight, **kw))
    else:
        raise ProtocolError("conv2d: at least one of input and weight must be a SecretTensor")
    if bias is not None:
        out = add(out, bias.reshape(1, -1, 1, 1) if isinstance(bias, SecretTensor | torch.Tensor) else bias)
    return out


@register("linear", cost="as matmul", torch=(F.linear,))
def linear(
    input: SecretTensor | torch.Tensor,
    weight: SecretTensor | torch.Tensor,
    bias: SecretTensor | torch.Tensor | None = None,
) -> SecretTensor:
    """``torch.nn.functional.linear``: ``input @ weight.T + bias``."""
    wt = weight.transpose(0, 1) if weight.dim() == 2 else weight
    out = matmul(input, wt)
    return out if bias is None else add(out, bias)


def _pool_args(what, kernel_size, stride, padding, dilation=1):
    kh, kw = _pair(kernel_size, "kernel_size", what)
    sh, sw = _pair(stride, "stride", what) if stride is not None else (kh, kw)
    ph, pw = _pair(padding, "padding", what)
    dh, dw = _pair(dilation, "dilation", what)
    if min(kh, kw, sh, sw, dh, dw) < 1 or ph < 0 or pw < 0 or ph > kh // 2 or pw > kw // 2:
        raise ProtocolError(f"{what}: sizes must be positive and padding at most half the kernel")
    return kh, kw, sh, sw, ph, pw, dh, dw


def _windows(input: SecretTensor, what: str, kh, kw, sh, sw, ph, pw, dh, dw, pad_value):
    if not isinstance(input, SecretTensor):
        raise ProtocolError(f"{what}: the input must be a SecretTensor")
    x = input.share
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ProtocolError(f"{what}: expected a 3-d or 4-d input, got shape {tuple(input.shape)}")
    if ph or pw:
        x = x.pad_public((pw, pw, ph, ph), pad_value)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if x.shape[2] < eh or x.shape[3] < ew:
        raise ProtocolError(f"{what}: kernel {(kh, kw)} is larger than the padded input")
    win = x.unfold(2, eh, sh).unfold(3, ew, sw)[..., ::dh, ::dw]  # (N, C, OH, OW, kh, kw)
    return win.reshape(*win.shape[:4], kh * kw), squeeze


def window_index(shape, kh, kw, sh, sw, ph, pw, dh, dw) -> tuple[tuple[int, ...], torch.Tensor]:
    """The padded shape of a 4-d input and, for each (N, C, OH, OW) window, the flat positions of its kh*kw
    elements in the padded input: what ``_windows`` gathers (the folding of a window gradient scatters back)."""
    n, c, h, w = shape
    padded = (n, c, h + 2 * ph, w + 2 * pw)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    pos = torch.arange(n * c * padded[2] * padded[3], dtype=torch.int64).reshape(padded)
    win = pos.unfold(2, eh, sh).unfold(3, ew, sw)[..., ::dh, ::dw]
    return padded, win.reshape(*win.shape[:4], kh * kw)


@register("max_pool2d", cost="4 rounds per halving of the window (8 for 2x2, 16 for 3x3)",
          torch=(F.max_pool2d, getattr(F, "_max_pool2d", F.max_pool2d)))  # fmt: skip
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
    comparisons.  Padding counts as minus infinity, as in torch.
    """
    if ceil_mode or return_indices:
        raise ProtocolError("max_pool2d: ceil_mode and return_indices are not supported")
    args = _pool_args("max_pool2d", kernel_size, stride, padding, dilation)
    fam = input.ctx.family if isinstance(input, SecretTensor) else None
    win, squeeze = _windows(input, "max_pool2d", *args, pad_value=getattr(fam, "lowest", 0))
    vals, _, _ = input.ctx.family.max_reduce(input.ctx, win, op="maxpool")
    return input._new(vals.squeeze(0) if squeeze else vals)


@register("max_pool2d_backward",
          cost="max_pool2d's tournament again, with its one-hot (8 rounds for 2x2), and one product (1-2 rounds)")  # fmt: skip
def max_pool2d_backward(
    grad: SecretTensor | torch.Tensor,
    input: SecretTensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> SecretTensor:
    """The gradient of ``max_pool2d`` for its input: ``grad`` routed to the first maximum of each window
    (torch's choice on ties), summed where windows overlap; ``grad`` is secret or public."""
    args = _pool_args("max_pool2d", kernel_size, stride, padding, dilation)
    win, squeeze = _windows(input, "max_pool2d", *args, pad_value=input.ctx.family.lowest)
    _, _, oh = input.ctx.family.max_reduce(input.ctx, win, one_hot=True, op="maxpool")
    g = grad.unsqueeze(0) if squeeze else grad
    routed = mul(input._new(oh), g.unsqueeze(-1))  # (N, C, OH, OW, kh*kw)
    shape = (1, *input.shape) if squeeze else tuple(input.shape)
    padded, index = window_index(shape, *args)
    full = scatter_sum(routed, padded, index)
    ph, pw = args[4], args[5]
    out = getitem(full, (slice(None), slice(None), slice(ph, ph + shape[2]), slice(pw, pw + shape[3])))
    return out._new(out.share.squeeze(0)) if squeeze else out


@register("avg_pool2d", cost="local, and one truncation round (a public 1/k)", torch=(F.avg_pool2d,))
def avg_pool2d(
    input: SecretTensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> SecretTensor:
    """``torch.nn.functional.avg_pool2d`` (padding counts as zero; ``count_include_pad`` as torch's default)."""
    if ceil_mode or not count_include_pad:
        raise ProtocolError("avg_pool2d: ceil_mode and count_include_pad=False are not supported")
    kh, kw, sh, sw, ph, pw, dh, dw = _pool_args("avg_pool2d", kernel_size, stride, padding)
    win, squeeze = _windows(input, "avg_pool2d", kh, kw, sh, sw, ph, pw, dh, dw, pad_value=0)
    total = input._new(win.sum(-1))
    out = mul(total, 1.0 / (divisor_override or kh * kw))
    return out.squeeze(0) if squeeze else out
