"""``SecretTensor``: a party's additive share of a tensor, used like a torch tensor.

Shapes and dtypes are public metadata; values are not.  Operations that need no
interaction (adding, multiplying by a public integer, reshaping) are local;
products of secrets and multiplications by public reals call the context's
protocol suite, which counts rounds and bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .context import PartyContext
from .errors import ProtocolError

__all__ = ["SecretTensor", "cat", "stack", "conv2d"]

Public = torch.Tensor | float | int | bool


def _result_dtype(a: torch.dtype, b: Any) -> torch.dtype:
    if isinstance(b, SecretTensor):
        bd = b.dtype
    elif isinstance(b, torch.Tensor):
        bd = b.dtype
    elif isinstance(b, bool):
        bd = torch.bool
    elif isinstance(b, int):
        bd = torch.int64
    else:
        bd = torch.float32
    if a == torch.bool and bd == torch.bool:
        return torch.int64
    return torch.promote_types(a, bd)


def _float_dtype(d: torch.dtype) -> torch.dtype:
    return d if d.is_floating_point else torch.float32


class SecretTensor:
    """One party's share of a secret tensor (int64 ring elements with f fractional bits)."""

    __slots__ = ("ctx", "share", "dtype")

    def __init__(self, ctx: PartyContext, share: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        if share.dtype != torch.int64:
            raise ProtocolError("a share must be an int64 tensor of ring elements")
        self.ctx = ctx
        self.share = share
        self.dtype = dtype

    # ----- metadata (public) -------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    def size(self, dim: int | None = None):
        return self.share.size() if dim is None else self.share.size(dim)

    def dim(self) -> int:
        return self.share.dim()

    ndim = property(dim)

    def numel(self) -> int:
        return self.share.numel()

    def __len__(self) -> int:
        return len(self.share)

    def __repr__(self) -> str:
        return f"SecretTensor(shape={tuple(self.shape)}, dtype={self.dtype}, party={self.ctx.rank})"

    def __bool__(self) -> bool:
        raise ProtocolError("the truth value of a SecretTensor is secret; reveal it or use a secret comparison")

    def _new(self, share: torch.Tensor, dtype: torch.dtype | None = None) -> SecretTensor:
        return SecretTensor(self.ctx, share, self.dtype if dtype is None else dtype)

    def _check_same_ctx(self, other: SecretTensor) -> None:
        if other.ctx is not self.ctx:
            raise ProtocolError("cannot combine secret tensors of different party contexts")

    def _encode(self, value: Public) -> torch.Tensor:
        return self.ctx.encoder.encode_public(value)

    # ----- addition ----------------------------------------------------------
    def _add_public(self, enc: torch.Tensor, dtype: torch.dtype) -> SecretTensor:
        if self.ctx.rank == 0:
            return self._new(self.share + enc, dtype)
        return self._new(self.share + torch.zeros_like(enc), dtype)

    def __add__(self, other: SecretTensor | Public) -> SecretTensor:
        dtype = _result_dtype(self.dtype, other)
        if isinstance(other, SecretTensor):
            self._check_same_ctx(other)
            return self._new(self.share + other.share, dtype)
        return self._add_public(self._encode(other), dtype)

    __radd__ = __add__

    def __neg__(self) -> SecretTensor:
        return self._new(-self.share)

    def __sub__(self, other: SecretTensor | Public) -> SecretTensor:
        dtype = _result_dtype(self.dtype, other)
        if isinstance(other, SecretTensor):
            self._check_same_ctx(other)
            return self._new(self.share - other.share, dtype)
        return self._add_public(-self._encode(other), dtype)

    def __rsub__(self, other: Public) -> SecretTensor:
        return (-self).__add__(other)

    # ----- multiplication ----------------------------------------------------
    def _mul_public(self, other: Public) -> SecretTensor:
        dtype = _result_dtype(self.dtype, other)
        if self.ctx.encoder.is_integral(other):
            factor = other if isinstance(other, torch.Tensor) else torch.tensor(int(other))
            return self._new(self.share * factor.to(torch.int64), dtype)
        prod = self.share * self._encode(other)
        return self._new(self.ctx.suite.truncate(self.ctx, prod, op="mul_public"), dtype)

    def __mul__(self, other: SecretTensor | Public) -> SecretTensor:
        if isinstance(other, SecretTensor):
            self._check_same_ctx(other)
            dtype = _result_dtype(self.dtype, other)
            return self._new(self.ctx.suite.mul(self.ctx, self.share, other.share), dtype)
        return self._mul_public(other)

    __rmul__ = __mul__

    def __truediv__(self, other: Public) -> SecretTensor:
        if isinstance(other, SecretTensor):
            raise ProtocolError("division by a secret tensor needs the nonlinear protocols (reciprocal)")
        if isinstance(other, torch.Tensor):
            return self._mul_public(1.0 / other.to(torch.float64))
        return self._mul_public(1.0 / float(other))

    def square(self) -> SecretTensor:
        return self._new(self.ctx.suite.square(self.ctx, self.share))

    def matmul(self, other: SecretTensor | torch.Tensor) -> SecretTensor:
        if isinstance(other, SecretTensor):
            self._check_same_ctx(other)
            dtype = _result_dtype(self.dtype, other)
            return self._new(self.ctx.suite.matmul(self.ctx, self.share, other.share), dtype)
        if not isinstance(other, torch.Tensor):
            raise ProtocolError(f"matmul needs a tensor operand, got {type(other).__name__}")
        dtype = _result_dtype(self.dtype, other)
        if not other.is_floating_point():
            return self._new(self.share @ other.to(torch.int64), dtype)
        prod = self.share @ self._encode(other)
        return self._new(self.ctx.suite.truncate(self.ctx, prod, op="matmul_public"), dtype)

    __matmul__ = matmul

    def __rmatmul__(self, other: torch.Tensor) -> SecretTensor:
        if not isinstance(other, torch.Tensor):
            raise ProtocolError(f"matmul needs a tensor operand, got {type(other).__name__}")
        dtype = _result_dtype(self.dtype, other)
        if not other.is_floating_point():
            return self._new(other.to(torch.int64) @ self.share, dtype)
        prod = self._encode(other) @ self.share
        return self._new(self.ctx.suite.truncate(self.ctx, prod, op="matmul_public"), dtype)

    # ----- reductions ----------------------------------------------------------
    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> SecretTensor:
        dtype = torch.int64 if self.dtype == torch.bool else self.dtype
        if dim is None:
            return self._new(self.share.sum(), dtype)
        return self._new(self.share.sum(dim=dim, keepdim=keepdim), dtype)

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> SecretTensor:
        total = self.sum(dim, keepdim)
        count = self.numel() // max(total.numel(), 1) if dim is not None else self.numel()
        if count == 0:
            raise ProtocolError("mean of an empty tensor")
        out = total._mul_public(1.0 / count)
        out.dtype = _float_dtype(self.dtype)
        return out

    # ----- shape operations (local, follow torch) ---------------------------------
    def reshape(self, *shape) -> SecretTensor:
        return self._new(self.share.reshape(*shape))

    def view(self, *shape) -> SecretTensor:
        return self._new(self.share.view(*shape))

    def transpose(self, d0: int, d1: int) -> SecretTensor:
        return self._new(self.share.transpose(d0, d1))

    def t(self) -> SecretTensor:
        return self._new(self.share.t())

    @property
    def T(self) -> SecretTensor:  # noqa: N802 (torch's name)
        return self._new(self.share.permute(*reversed(range(self.dim()))))

    @property
    def mT(self) -> SecretTensor:  # noqa: N802 (torch's name)
        return self._new(self.share.mT)

    def permute(self, *dims) -> SecretTensor:
        return self._new(self.share.permute(*dims))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> SecretTensor:
        return self._new(self.share.flatten(start_dim, end_dim))

    def squeeze(self, dim: int | None = None) -> SecretTensor:
        return self._new(self.share.squeeze() if dim is None else self.share.squeeze(dim))

    def unsqueeze(self, dim: int) -> SecretTensor:
        return self._new(self.share.unsqueeze(dim))

    def expand(self, *sizes) -> SecretTensor:
        return self._new(self.share.expand(*sizes))

    def expand_as(self, other: SecretTensor | torch.Tensor) -> SecretTensor:
        return self.expand(other.shape)

    def repeat(self, *sizes) -> SecretTensor:
        return self._new(self.share.repeat(*sizes))

    def contiguous(self) -> SecretTensor:
        return self._new(self.share.contiguous())

    def clone(self) -> SecretTensor:
        return self._new(self.share.clone())

    def __getitem__(self, index) -> SecretTensor:
        if isinstance(index, SecretTensor):
            raise ProtocolError("indexing by a secret tensor is not supported; use a secret one-hot and multiply")
        return self._new(self.share[index])

    # ----- opening ---------------------------------------------------------------
    def reveal(self, to: int | None = None) -> torch.Tensor | None:
        """Open the value: to every party (``to=None``), or to party ``to`` alone.

        Every party logs what was opened and to whom.  Parties other than ``to``
        get ``None`` and receive nothing from which the value follows.
        """
        ctx = self.ctx
        target = "all parties" if to is None else f"party {to}"
        ctx.log.info("revealing a %s tensor of shape %s to %s", self.dtype, tuple(self.shape), target)
        if to is None:
            (ring,) = ctx.suite.open_all(ctx, [self.share], "reveal")
            return ctx.encoder.decode(ring, self.dtype)
        ring = ctx.suite.open_to(ctx, self.share, to, "reveal")
        return None if ring is None else ctx.encoder.decode(ring, self.dtype)


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
