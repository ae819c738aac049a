"""Share types: what one party holds of a secret tensor, and the operations on it that need no messages.

::

    Share                   base: public shape, and local operations derived from two hooks
    ├── AdditiveShare       n-out-of-n additive over Z_2^64 (int64); party 0 holds the public part
    ├── BinaryShare         XOR-shared 64-bit words (int64); party 0 holds the public part
    └── PlainShare          the value itself, float64, at every party (the ``plaintext`` family: not secret)

Every local operation is derived from two hooks: ``_map(fn)`` applies a function
that is linear in the share to each of its component tensors, and
``_zip(other, fn)`` combines two shares of the same type component by component.
A replicated share (two ring tensors per party) only needs those two hooks and
its own ``add_public`` to get every reshape, index, cat and sum below.

The rule "who adds a public constant" lives here, once per share type
(``add_public``, ``xor_public``, ``pad_public``, ``public``): nothing above this
module tests a party's rank to decide it.

Shares are values: no method changes a share in place, and callers never write
into a share's tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from . import kernels
from .shapes import broadcast_shapes

__all__ = ["Share", "Memo", "AdditiveShare", "BinaryShare", "PlainShare", "PUBLIC_HOLDER", "holds_public"]

# The party whose share carries public constants in the additive and binary families.
PUBLIC_HOLDER = 0

S = TypeVar("S", bound="Share")


def holds_public(rank: int) -> bool:
    """Whether party ``rank`` adds public constants into its additive or XOR share (one rule, here)."""
    return rank == PUBLIC_HOLDER


class Share:
    """Base of the share types: shape metadata and the local operations, built on ``_map`` and ``_zip``."""

    __slots__ = ()

    # ----- hooks ---------------------------------------------------------------------------------
    def _map(self: S, fn: Callable[[torch.Tensor], torch.Tensor]) -> S:
        raise NotImplementedError

    def _zip(self: S, other: S, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> S:
        raise NotImplementedError

    @property
    def _first(self) -> torch.Tensor:
        raise NotImplementedError

    def _check_same(self, other: Any) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot combine a {type(self).__name__} with a {type(other).__name__}")

    # ----- public metadata ---------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self._first.shape

    def dim(self) -> int:
        return self._first.dim()

    def numel(self) -> int:
        return self._first.numel()

    def size(self, dim: int | None = None):
        return self._first.size() if dim is None else self._first.size(dim)

    # ----- shape operations (local for every share type) ----------------------------------------------
    def reshape(self: S, *shape) -> S:
        return self._map(lambda t: t.reshape(*shape))

    def view(self: S, *shape) -> S:
        return self._map(lambda t: t.view(*shape))

    def transpose(self: S, d0: int, d1: int) -> S:
        return self._map(lambda t: t.transpose(d0, d1))

    def permute(self: S, *dims) -> S:
        return self._map(lambda t: t.permute(*dims))

    def movedim(self: S, src, dst) -> S:
        return self._map(lambda t: t.movedim(src, dst))

    def flatten(self: S, start_dim: int = 0, end_dim: int = -1) -> S:
        return self._map(lambda t: t.flatten(start_dim, end_dim))

    def squeeze(self: S, dim: int | None = None) -> S:
        return self._map(lambda t: t.squeeze() if dim is None else t.squeeze(dim))

    def unsqueeze(self: S, dim: int) -> S:
        return self._map(lambda t: t.unsqueeze(dim))

    def expand(self: S, *sizes) -> S:
        return self._map(lambda t: t.expand(*sizes))

    def broadcast_to(self: S, shape) -> S:
        return self._map(lambda t: torch.broadcast_to(t, shape))

    def repeat(self: S, *sizes) -> S:
        return self._map(lambda t: t.repeat(*sizes))

    def contiguous(self: S) -> S:
        return self._map(lambda t: t.contiguous())

    def clone(self: S) -> S:
        return self._map(lambda t: t.clone())

    def unfold(self: S, dim: int, size: int, step: int) -> S:
        return self._map(lambda t: t.unfold(dim, size, step))

    def __getitem__(self: S, index) -> S:
        return self._map(lambda t: t[index])

    def scatter_sum(self: S, shape, index: torch.Tensor) -> S:
        """The adjoint of a gather: zeros of ``shape`` with each element of ``self`` added at its flat position
        ``index`` (an int64 tensor of ``self``'s shape; positions may repeat)."""
        n = 1
        for d in shape:
            n *= int(d)
        flat = index.reshape(-1).to(torch.int64)
        return self._map(lambda t: t.new_zeros(n).index_add(0, flat, t.reshape(-1)).reshape(tuple(shape)))

    def sum(self: S, dim=None, keepdim: bool = False) -> S:
        return self._map(lambda t: t.sum() if dim is None else t.sum(dim=dim, keepdim=keepdim))

    @classmethod
    def cat(cls: type[S], shares: Sequence[S], dim: int = 0) -> S:
        return cls._combine(shares, lambda ts: torch.cat(ts, dim))

    @classmethod
    def stack(cls: type[S], shares: Sequence[S], dim: int = 0) -> S:
        return cls._combine(shares, lambda ts: torch.stack(ts, dim))

    @classmethod
    def _combine(cls: type[S], shares: Sequence[S], fn: Callable[[list[torch.Tensor]], torch.Tensor]) -> S:
        raise NotImplementedError

    def select_public(self: S, cond: torch.Tensor, other: S) -> S:
        """``torch.where(cond, self, other)`` for a public condition (local)."""
        self._check_same(other)
        return self._zip(other, lambda a, b: torch.where(cond, a, b))

    # ----- linear operations ---------------------------------------------------------------------
    def __add__(self: S, other: S) -> S:
        self._check_same(other)
        return self._zip(other, lambda a, b: a + b)

    def __sub__(self: S, other: S) -> S:
        self._check_same(other)
        return self._zip(other, lambda a, b: a - b)

    def __neg__(self: S) -> S:
        return self._map(lambda t: -t)

    def mul_public(self: S, k: torch.Tensor | int) -> S:
        """Times a public value in the share's own number system (a ring integer, or a float for plaintext)."""
        return self._map(lambda t: t * k)

    def weighted_sum(self: S, weights: Sequence[int]) -> S:
        """``sum_j w_j self[j]`` over the first dimension, for public integer weights in the share's number
        system: one scaled accumulation per row (an int64 row-vector times matrix product has no fast path in
        torch: 45 rows of 10^5 elements, 8.4 ms against 4.9)."""
        if len(weights) != self.shape[0] or not len(weights):
            raise ValueError(f"weighted_sum needs one weight per row: {len(weights)} for {self.shape[0]} rows")

        def fn(t: torch.Tensor) -> torch.Tensor:
            acc = t[0] * int(weights[0])
            for j in range(1, t.shape[0]):
                acc.add_(t[j], alpha=int(weights[j]))
            return acc

        return self._map(fn)

    def weighted_sums(self: S, weights: torch.Tensor) -> S:
        """``weighted_sum`` for every row of the public integer matrix ``weights`` (M, K), stacked: (M, ...).

        One product ``weights @ rows`` modulo 2^64 (``kernels.weighted_rows``: a matrix product or scaled
        additions of rows, whichever is faster on this machine for the shape)."""
        if weights.dim() != 2 or weights.shape[1] != self.shape[0] or not weights.shape[1]:
            raise ValueError(
                f"weighted_sums needs a matrix of one weight per row, got {tuple(weights.shape)} for {self.shape[0]} rows"
            )

        def fn(t: torch.Tensor) -> torch.Tensor:
            w = weights.to(t.dtype)
            return kernels.weighted_rows(w, t.reshape(t.shape[0], -1)).reshape(w.shape[0], *t.shape[1:])

        return self._map(fn)

    def matmul_public(self: S, m: torch.Tensor, left: bool = False) -> S:
        """``self @ m`` (or ``m @ self`` with ``left``) for an encoded public ``m``."""
        return self._map(lambda t: kernels.matmul(m, t) if left else kernels.matmul(t, m))

    def conv2d_public(self: S, w: torch.Tensor, *, kernel_secret: bool, **kw) -> S:
        """conv2d with a public operand: ``conv2d(self, w)``, or ``conv2d(w, self)`` when the kernel is secret."""
        return self._map(lambda t: kernels.conv2d(w, t, **kw) if kernel_secret else kernels.conv2d(t, w, **kw))

    # ----- the public-part rule (per share type) ------------------------------------------------
    def add_public(self: S, c: torch.Tensor | int | float) -> S:
        raise NotImplementedError

    def pad_public(self: S, pads: tuple[int, ...], value: int | float) -> S:
        """``F.pad`` whose padding holds the public ``value``."""
        raise NotImplementedError

    @classmethod
    def public(cls: type[S], value: torch.Tensor, rank: int) -> S:
        """The share that party ``rank`` holds of a public (already encoded) value."""
        raise NotImplementedError


class Memo:
    """What a protocol remembers about one shared value, kept with the value and its transposes.

    The additive family keeps here the Beaver mask it opened for the value (its
    public difference and this party's share of the mask), so that a later
    product with the same value opens nothing for it (``protocols.beaver``).
    Shares are values (never changed in place), so a memo stays true for as
    long as the share lives; a share made by any other operation starts
    without one.  The decision to use a memo must come out the same at every
    party, so no share method returns ``self`` at some parties and a new
    share at others.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None


class _RingShare(Share):
    """One int64 tensor per party (additive or XOR); party ``PUBLIC_HOLDER`` holds public parts.

    ``memo()`` gives the value's ``Memo`` and whether this share is its transpose
    (the last two dimensions swapped): ``transpose`` and ``permute`` that swap
    the last two dimensions share the memo, so a weight opened as ``W^T`` in a
    forward pass is known as ``W`` in the backward one.
    """

    __slots__ = ("data", "holder", "_memo", "_flip")

    def __init__(self, data: torch.Tensor, holder: bool, memo: Memo | None = None, flip: bool = False) -> None:
        self.data = data
        self.holder = holder
        self._memo = memo
        self._flip = flip

    def memo(self) -> tuple[Memo, bool]:
        """This value's memo (made on first use) and whether this share holds it transposed."""
        if self._memo is None:
            self._memo = Memo()
        return self._memo, self._flip

    def _swaps_last_two(self, dims: Sequence[int]) -> bool:
        nd = self.data.dim()
        return nd >= 2 and tuple(d % nd for d in dims) == (*range(nd - 2), nd - 1, nd - 2)

    def transpose(self, d0: int, d1: int):
        nd = self.data.dim()
        if nd >= 2 and {d0 % nd, d1 % nd} == {nd - 2, nd - 1}:
            memo, flip = self.memo()
            return type(self)(self.data.transpose(d0, d1), self.holder, memo, not flip)
        return super().transpose(d0, d1)

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], tuple | list):
            dims = tuple(dims[0])
        if self._swaps_last_two(dims):
            return self.transpose(-2, -1)
        return super().permute(*dims)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.data.shape)})"

    @property
    def _first(self) -> torch.Tensor:
        return self.data

    def _map(self, fn):
        return type(self)(fn(self.data), self.holder)

    def _zip(self, other, fn):
        return type(self)(fn(self.data, other.data), self.holder)

    @classmethod
    def _combine(cls, shares, fn):
        if not shares:
            raise ValueError("need at least one share")
        return cls(fn([s.data for s in shares]), shares[0].holder)

    @classmethod
    def public(cls, value: torch.Tensor, rank: int):
        value = value.to(torch.int64)
        return cls(value.clone() if holds_public(rank) else torch.zeros_like(value), holds_public(rank))

    @classmethod
    def zeros(cls, shape, rank: int):
        return cls(torch.zeros(shape, dtype=torch.int64), holds_public(rank))

    def pad_public(self, pads, value):
        return type(self)(F.pad(self.data, pads, value=value if self.holder else 0), self.holder)


class AdditiveShare(_RingShare):
    """An additive share over Z_2^64: the value is the sum of every party's ``data`` modulo 2^64."""

    __slots__ = ()

    def add_public(self, c):
        if self.holder:
            return AdditiveShare(self.data + c, True)
        if isinstance(c, torch.Tensor) and c.shape != self.data.shape:
            return AdditiveShare(self.data.expand(broadcast_shapes(self.data.shape, c.shape)).clone(), False)
        return AdditiveShare(self.data, False)  # a new value at every party (``Memo``), the same tensor here

    def __lshift__(self, k: int) -> AdditiveShare:
        return AdditiveShare(self.data << k, self.holder)


class BinaryShare(_RingShare):
    """A XOR share of 64-bit words: the value is the XOR of every party's ``data``."""

    __slots__ = ()

    def __xor__(self, other: BinaryShare) -> BinaryShare:
        self._check_same(other)
        return BinaryShare(self.data ^ other.data, self.holder)

    def xor_public(self, c: torch.Tensor | int) -> BinaryShare:
        if self.holder:
            return BinaryShare(self.data ^ c, True)
        if isinstance(c, torch.Tensor) and c.shape != self.data.shape:
            return BinaryShare(self.data.expand(broadcast_shapes(self.data.shape, c.shape)).clone(), False)
        return BinaryShare(self.data, False)

    add_public = xor_public

    def and_public(self, c: torch.Tensor | int) -> BinaryShare:
        return BinaryShare(self.data & c, self.holder)

    def invert(self) -> BinaryShare:
        return self.xor_public(-1)

    def __lshift__(self, k: int) -> BinaryShare:
        return BinaryShare(self.data << k, self.holder)

    def __rshift__(self, k: int) -> BinaryShare:
        """Logical right shift (the XOR of shifted shares is the shifted value)."""
        if k == 0:
            return self
        return BinaryShare((self.data >> k) & ((1 << (64 - k)) - 1), self.holder)

    def __add__(self, other):  # pragma: no cover - guard
        raise TypeError("binary shares combine with ^ (XOR), not +")

    __sub__ = __add__


class PlainShare(Share):
    """The plaintext family's "share": the value itself, float64, identical at every party. Not secret."""

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"PlainShare(shape={tuple(self.value.shape)})"

    @property
    def _first(self) -> torch.Tensor:
        return self.value

    def _map(self, fn):
        return PlainShare(fn(self.value))

    def _zip(self, other, fn):
        return PlainShare(fn(self.value, other.value))

    @classmethod
    def _combine(cls, shares, fn):
        if not shares:
            raise ValueError("need at least one share")
        return cls(fn([s.value for s in shares]))

    @classmethod
    def public(cls, value: torch.Tensor, rank: int):
        return cls(value.to(torch.float64).clone())

    def add_public(self, c):
        return PlainShare(self.value + c)

    def pad_public(self, pads, value):
        return PlainShare(F.pad(self.value, pads, value=float(value)))
