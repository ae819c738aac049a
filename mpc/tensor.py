"""``SecretTensor``: a party's additive share of a tensor, used like a torch tensor.

Shapes and dtypes are public metadata; values are not.  Operations that need no
interaction (adding, multiplying by a public integer, reshaping) are local;
products of secrets and multiplications by public reals call the context's
protocol suite, which counts rounds and bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .context import PartyContext
from .errors import ProtocolError

__all__ = ["SecretTensor", "MaxResult", "where"]

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


class MaxResult(NamedTuple):
    """``(values, indices)`` of ``max``/``min`` along a dimension, as torch returns them."""

    values: SecretTensor
    indices: SecretTensor


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

    def __truediv__(self, other: SecretTensor | Public) -> SecretTensor:
        if isinstance(other, SecretTensor):
            # x / y = x * (1 / y): the reciprocal's domain and accuracy apply to y.
            self._check_same_ctx(other)
            return self * other.reciprocal()
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

    # ----- comparisons (results are secret 0/1 tensors of dtype bool) ---------------------------
    #
    # A bool SecretTensor holds its bit in fixed point, like every other value (bit * 2^f), so that
    # reveal, +, * and sum work unchanged.  Protocols that need the bit as an integer (where, relu)
    # get it from the comparison directly, or convert it exactly (protocols.conversions.exact_rshift).

    def _diff(self, other: SecretTensor | Public) -> torch.Tensor:
        return (self - other).share

    def _rdiff(self, other: SecretTensor | Public) -> torch.Tensor:
        return (-(self - other)).share

    def _bits(self, z: torch.Tensor, thresholds=(0,), negate: bool = False, op: str = "cmp") -> torch.Tensor:
        res = self.ctx.suite.compare(self.ctx, z, thresholds, negate=negate, op=op)
        return res.bits

    def _bool(self, bits: torch.Tensor) -> SecretTensor:
        return self._new(bits << self.ctx.config.frac_bits, torch.bool)

    def __lt__(self, other: SecretTensor | Public) -> SecretTensor:
        """``self < other`` (exact; 4 rounds)."""
        return self._bool(self._bits(self._diff(other), op="lt")[0])

    def __gt__(self, other: SecretTensor | Public) -> SecretTensor:
        return self._bool(self._bits(self._rdiff(other), op="gt")[0])

    def __le__(self, other: SecretTensor | Public) -> SecretTensor:
        return self._bool(self._bits(self._rdiff(other), negate=True, op="le")[0])

    def __ge__(self, other: SecretTensor | Public) -> SecretTensor:
        return self._bool(self._bits(self._diff(other), negate=True, op="ge")[0])

    def __eq__(self, other: object) -> SecretTensor:  # type: ignore[override]
        """``self == other``: ``[z < 1 ulp] - [z < 0]`` for ``z = self - other``, one batch (4 rounds)."""
        b = self._bits(self._diff(other), (0, 1), op="eq")  # type: ignore[arg-type]
        return self._bool(b[1] - b[0])

    def __ne__(self, other: object) -> SecretTensor:  # type: ignore[override]
        b = self._bits(self._diff(other), (0, 1), op="ne")  # type: ignore[arg-type]
        one = 1 if self.ctx.rank == 0 else 0
        return self._bool(one - b[1] + b[0])

    def __hash__(self) -> int:  # __eq__ is a secret comparison; hashing stays by identity
        return id(self)

    lt, gt, le, ge, eq, ne = __lt__, __gt__, __le__, __ge__, __eq__, __ne__

    def sign(self) -> SecretTensor:
        """-1, 0 or 1 (exact; 4 rounds)."""
        b = self._bits(self.share, (0, 1), op="sign")  # [x < 0], [x < 1 ulp]
        one = 1 if self.ctx.rank == 0 else 0
        return self._new((one - b[1] - b[0]) << self.ctx.config.frac_bits)

    def abs(self) -> SecretTensor:
        """``|x| = x - 2 x [x < 0]`` (exact; 4 rounds)."""
        res = self.ctx.suite.compare(self.ctx, self.share, (0,), mul_input=True, op="abs")
        return self._new(self.share - 2 * res.xbits[0])

    __abs__ = abs

    def relu(self) -> SecretTensor:
        """``max(x, 0)`` (exact; 4 rounds, 8 + 35/8 bytes per element and peer)."""
        return self._new(self.ctx.suite.relu(self.ctx, self.share))

    def clamp(self, min: SecretTensor | Public | None = None, max: SecretTensor | Public | None = None) -> SecretTensor:
        """torch.clamp with public or secret bounds (exact; 4 rounds)."""
        ctx = self.ctx
        if min is None and max is None:
            raise ProtocolError("clamp: give at least one of min and max")
        if isinstance(min, SecretTensor) or isinstance(max, SecretTensor):
            lo = self._operand_share(min)
            hi = self._operand_share(max)
            out = ctx.suite.clamp_secret(ctx, self.share, lo, hi)
            return self._new(out)
        if isinstance(min, torch.Tensor) and min.numel() != 1 or isinstance(max, torch.Tensor) and max.numel() != 1:
            lo = None if min is None else self._operand_share(min)
            hi = None if max is None else self._operand_share(max)
            return self._new(ctx.suite.clamp_secret(ctx, self.share, lo, hi))
        lo_r = None if min is None else int(self._encode(float(min)))
        hi_r = None if max is None else int(self._encode(float(max)))
        return self._new(ctx.suite.clamp_public(ctx, self.share, lo_r, hi_r))

    clip = clamp

    def _operand_share(self, v: SecretTensor | Public | None) -> torch.Tensor | None:
        """Shares of a secret operand, or of a public one (held by party 0)."""
        if v is None:
            return None
        if isinstance(v, SecretTensor):
            self._check_same_ctx(v)
            return v.share
        enc = self._encode(v)
        return enc if self.ctx.rank == 0 else torch.zeros_like(enc)

    def where(self, condition: SecretTensor | torch.Tensor, other: SecretTensor | Public) -> SecretTensor:
        """``torch.Tensor.where``: ``where(condition, self, other)``."""
        return where(condition, self, other)

    def maximum(self, other: SecretTensor | Public) -> SecretTensor:
        """Elementwise maximum, broadcasting (exact; 4 rounds)."""
        o = self._operand_share(other)
        return self._new(self.ctx.suite.maximum(self.ctx, self.share, o), _result_dtype(self.dtype, other))

    def minimum(self, other: SecretTensor | Public) -> SecretTensor:
        o = self._operand_share(other)
        return self._new(-self.ctx.suite.maximum(self.ctx, -self.share, -o), _result_dtype(self.dtype, other))

    # ----- reductions by comparison ----------------------------------------------------------------

    def _reduce_max(self, dim: int | None, keepdim: bool, index: bool, one_hot: bool, negate: bool):
        x = -self.share if negate else self.share
        if dim is None:
            x = x.reshape(-1)
            d = 0
        else:
            d = dim % max(self.dim(), 1)
            x = x.movedim(d, -1)
        vals, idx, oh = self.ctx.suite.max_reduce(self.ctx, x, index=index, one_hot=one_hot)
        if negate:
            vals = -vals
        if dim is not None and keepdim:
            vals = vals.unsqueeze(d)
            idx = idx.unsqueeze(d) if idx is not None else None
        if oh is not None and dim is not None:
            oh = oh.movedim(-1, d)
        return vals, idx, oh

    def max(self, dim: int | None = None, keepdim: bool = False):
        """The maximum; with ``dim``, ``(values, indices)`` as torch (first index on ties). Rounds 4 ceil(log2 n)."""
        vals, idx, _ = self._reduce_max(dim, keepdim, dim is not None, False, False)
        if dim is None:
            return self._new(vals)
        f = self.ctx.config.frac_bits
        return MaxResult(self._new(vals), self._new(idx << f, torch.int64))

    def min(self, dim: int | None = None, keepdim: bool = False):
        vals, idx, _ = self._reduce_max(dim, keepdim, dim is not None, False, True)
        if dim is None:
            return self._new(vals)
        f = self.ctx.config.frac_bits
        return MaxResult(self._new(vals), self._new(idx << f, torch.int64))

    def argmax(self, dim: int | None = None, keepdim: bool = False, one_hot: bool = False) -> SecretTensor:
        """Index of the first maximum (int64), or with ``one_hot`` its one-hot vector along ``dim``."""
        return self._arg(dim, keepdim, one_hot, False)

    def argmin(self, dim: int | None = None, keepdim: bool = False, one_hot: bool = False) -> SecretTensor:
        return self._arg(dim, keepdim, one_hot, True)

    def _arg(self, dim, keepdim, one_hot, negate) -> SecretTensor:
        f = self.ctx.config.frac_bits
        _, idx, oh = self._reduce_max(dim, keepdim, not one_hot, one_hot, negate)
        if one_hot:
            if dim is None:
                oh = oh.reshape(self.shape)
            return self._new(oh << f, torch.int64)
        return self._new(idx << f, torch.int64)

    # ----- nonlinear functions (see protocols.nonlinear for domains and errors) ------------------------

    def _float(self, share: torch.Tensor) -> SecretTensor:
        return self._new(share, _float_dtype(self.dtype))

    def exp(self) -> SecretTensor:
        """``e^x``; domain [-12, 10] (exact to 12). Rounds 8."""
        return self._float(self.ctx.suite.exp(self.ctx, self.share))

    def log(self) -> SecretTensor:
        """Natural log; domain [1e-3, 1e4]. Rounds 9."""
        return self._float(self.ctx.suite.log(self.ctx, self.share))

    def reciprocal(self) -> SecretTensor:
        """``1 / x``; domain 1e-2 <= |x| <= 1e4. Rounds 9."""
        return self._float(self.ctx.suite.reciprocal(self.ctx, self.share))

    def sqrt(self) -> SecretTensor:
        """Square root; domain [1e-3, 1e4]. Rounds 9."""
        return self._float(self.ctx.suite.sqrt(self.ctx, self.share))

    def rsqrt(self) -> SecretTensor:
        """``1 / sqrt(x)``; domain [1e-3, 1e4]. Rounds 9."""
        return self._float(self.ctx.suite.rsqrt(self.ctx, self.share))

    def sigmoid(self) -> SecretTensor:
        """Logistic sigmoid on all reals. Rounds 8."""
        return self._float(self.ctx.suite.sigmoid(self.ctx, self.share))

    def tanh(self) -> SecretTensor:
        """Hyperbolic tangent on all reals. Rounds 8."""
        return self._float(self.ctx.suite.tanh(self.ctx, self.share))

    def _along(self, dim: int, fn) -> SecretTensor:
        d = dim % max(self.dim(), 1)
        out = fn(self.ctx, self.share.movedim(d, -1)).movedim(-1, d)
        return self._float(out)

    def softmax(self, dim: int) -> SecretTensor:
        """Softmax along ``dim``; logits in [-30, 30]. Rounds 19 + 4 ceil(log2 n)."""
        return self._along(dim, self.ctx.suite.softmax)

    def log_softmax(self, dim: int) -> SecretTensor:
        """Log-softmax along ``dim``. Rounds 17 + 4 ceil(log2 n)."""
        return self._along(dim, self.ctx.suite.log_softmax)

    def pow(self, exponent: int) -> SecretTensor:
        """``x ** k`` for a public integer ``k`` (negative: of the reciprocal)."""
        if isinstance(exponent, float) and exponent.is_integer():
            exponent = int(exponent)
        if not isinstance(exponent, int) or isinstance(exponent, bool):
            raise ProtocolError(f"pow takes a public integer exponent, got {exponent!r}; use sqrt() or rsqrt()")
        return self._float(self.ctx.suite.pow_int(self.ctx, self.share, exponent))

    __pow__ = pow

    def __rtruediv__(self, other: Public) -> SecretTensor:
        """``c / x`` for a public ``c``: the reciprocal times ``c``."""
        return self.reciprocal() * other

    def norm(self, p: float | str = 2, dim: int | None = None, keepdim: bool = False) -> SecretTensor:
        """The 1-, 2- (Frobenius) or inf-norm; the 2-norm needs the sum of squares below 2^30."""
        if p in (2, "fro"):
            sq = self.square().sum(dim, keepdim) if dim is not None else self.square().sum()
            return self._float(self.ctx.suite.sqrt_wide(self.ctx, sq.share))
        if p == 1:
            a = self.abs()
            return a.sum(dim, keepdim) if dim is not None else a.sum()
        if p == float("inf"):
            a = self.abs()
            return a.max() if dim is None else a.max(dim, keepdim).values
        raise ProtocolError(f"norm: p must be 1, 2, 'fro' or inf, got {p!r}")

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


# ----- selection, comparison-based reductions and pooling -----------------------------------------


def _as_share(ctx: PartyContext, v: SecretTensor | Public) -> tuple[torch.Tensor, bool]:
    """(shares, is_public) of an operand; a public one is held by party 0."""
    if isinstance(v, SecretTensor):
        if v.ctx is not ctx:
            raise ProtocolError("cannot combine secret tensors of different party contexts")
        return v.share, False
    enc = ctx.encoder.encode_public(v)
    return (enc if ctx.rank == 0 else torch.zeros_like(enc)), True


def where(
    condition: SecretTensor | torch.Tensor, input: SecretTensor | Public, other: SecretTensor | Public
) -> SecretTensor:
    """``torch.where(condition, input, other)`` with a secret or public condition, exact.

    A secret condition costs 2 rounds (1 when both branches are public): its
    bit is made an integer exactly, then multiplied by ``input - other``.
    """
    secrets = [t for t in (condition, input, other) if isinstance(t, SecretTensor)]
    if not secrets:
        raise ProtocolError("where: at least one of condition, input and other must be a SecretTensor")
    ctx = secrets[0].ctx
    a, a_pub = _as_share(ctx, input)
    b, b_pub = _as_share(ctx, other)
    dtype = _result_dtype(
        input.dtype if isinstance(input, SecretTensor) else _result_dtype(torch.bool, input),
        other,
    )
    if not isinstance(condition, SecretTensor):
        cond = torch.as_tensor(condition, dtype=torch.bool)
        return SecretTensor(ctx, torch.where(cond, a, b), dtype)
    if condition.ctx is not ctx:
        raise ProtocolError("cannot combine secret tensors of different party contexts")
    if a_pub and b_pub:
        bit = ctx.suite.exact_rshift(ctx, condition.share, ctx.config.frac_bits, "where:bit")
        da = ctx.encoder.encode_public(input) - ctx.encoder.encode_public(other)
        return SecretTensor(ctx, b + bit * da, dtype)
    return SecretTensor(ctx, ctx.suite.where(ctx, condition.share, a, b), dtype)
