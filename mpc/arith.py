"""The forward functions of the element-wise, product, reduction, shape, comparison and nonlinear operations.

Each is registered once in the operation table (``mpc.ops``) with its cost and
its torch aliases.  They work on share objects and reach protocols only through
``ctx.family``: no function here touches a ring tensor, a fixed-point scale or
a party's rank (``tests/test_layering.py`` checks it).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

import torch

from .autograd import is_grad_enabled, will_record
from .errors import ProtocolError
from .ops import register
from .shapes import broadcast_shapes
from .tensor import MaxResult, Public, SecretTensor, _float_dtype, _result_dtype

__all__: list[str] = []


def _same(a: SecretTensor, b: SecretTensor) -> None:
    if b.ctx is not a.ctx:
        raise ProtocolError("cannot combine secret tensors of different party contexts")


def _enc(x: SecretTensor, value: Public) -> torch.Tensor:
    return x.ctx.family.encode_public(x.ctx, value)


def _public_tensor(v: Public) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(v)


def _shape_of(v) -> tuple[int, ...]:
    return tuple(v.shape) if isinstance(v, SecretTensor | torch.Tensor) else ()


def _check_broadcast(text: str, a, b) -> None:
    """Refuse operands that do not broadcast, in the words of the user's operation."""
    sa, sb = _shape_of(a), _shape_of(b)
    try:
        broadcast_shapes(sa, sb)
    except RuntimeError:
        raise ProtocolError(f"{text}: shapes {sa} and {sb} do not broadcast") from None


def _check_matmul(a, b) -> None:
    sa, sb = _shape_of(a), _shape_of(b)
    if not sa or not sb:
        raise ProtocolError(f"x @ y: both operands need at least one dimension, got shapes {sa} and {sb}")
    inner_a = sa[-1]
    inner_b = sb[0] if len(sb) == 1 else sb[-2]
    if inner_a != inner_b:
        raise ProtocolError(f"x @ y: shapes {sa} and {sb} do not match ({inner_a} columns against {inner_b} rows)")
    try:
        broadcast_shapes(sa[:-2], sb[:-2])
    except RuntimeError:
        raise ProtocolError(f"x @ y: the batch dimensions of shapes {sa} and {sb} do not broadcast") from None


# ----- addition --------------------------------------------------------------------------------------


@register("add", cost="local", torch=(torch.add,))
def add(input: SecretTensor | Public, other: SecretTensor | Public, *, alpha: float = 1) -> SecretTensor:
    if not isinstance(input, SecretTensor):
        input, other = other, input  # type: ignore[assignment]
        if alpha != 1:
            return add(mul(input, alpha), other)  # type: ignore[arg-type]
    x: SecretTensor = input  # type: ignore[assignment]
    if alpha != 1:
        other = mul(other, alpha) if isinstance(other, SecretTensor) else _public_tensor(other) * alpha
    dtype = _result_dtype(x.dtype, other)
    _check_broadcast("x + y", x, other)
    if isinstance(other, SecretTensor):
        _same(x, other)
        return x._new(x.share + other.share, dtype)
    return x._new(x.share.add_public(_enc(x, other)), dtype)


@register("sub", cost="local", torch=(torch.sub, torch.subtract))
def sub(input: SecretTensor | Public, other: SecretTensor | Public, *, alpha: float = 1) -> SecretTensor:
    if not isinstance(input, SecretTensor):
        return add(neg(other), input) if alpha == 1 else add(neg(mul(other, alpha)), input)  # type: ignore[arg-type]
    return add(input, neg(other) if isinstance(other, SecretTensor) else -_public_tensor(other), alpha=alpha)


@register("neg", cost="local", torch=(torch.neg, torch.negative))
def neg(input: SecretTensor) -> SecretTensor:
    return input._new(-input.share)


# ----- products ------------------------------------------------------------------------------------


@register("mul", cost="secret x secret: 2 rounds, 8(|x|+|y|)+8|z| B; public real: 1 round; integer: local",
          torch=(torch.mul, torch.multiply))  # fmt: skip
def mul(input: SecretTensor | Public, other: SecretTensor | Public) -> SecretTensor:
    if not isinstance(input, SecretTensor):
        input, other = other, input  # type: ignore[assignment]
    x: SecretTensor = input  # type: ignore[assignment]
    fam = x.ctx.family
    dtype = _result_dtype(x.dtype, other)
    _check_broadcast("x * y", x, other)
    if isinstance(other, SecretTensor):
        _same(x, other)
        return x._new(fam.mul(x.ctx, x.share, other.share), dtype)
    return x._new(fam.mul_public(x.ctx, x.share, other), dtype)


@register("div", cost="public: as mul by a public real; secret: reciprocal (21 rounds) and mul",
          torch=(torch.div, torch.true_divide, torch.divide))  # fmt: skip
def div(input: SecretTensor | Public, other: SecretTensor | Public) -> SecretTensor:
    if not isinstance(input, SecretTensor):
        return mul(reciprocal(other), input)  # type: ignore[arg-type]
    if isinstance(other, SecretTensor):
        # x / y = x * (1 / y): the reciprocal's domain and accuracy apply to y.
        _same(input, other)
        return mul(input, reciprocal(other))
    if isinstance(other, torch.Tensor):
        return mul(input, 1.0 / other.to(torch.float64))
    return mul(input, 1.0 / float(other))


@register("square", cost="2 rounds", torch=(torch.square,))
def square(input: SecretTensor) -> SecretTensor:
    return input._new(input.ctx.family.square(input.ctx, input.share))


@register("matmul", cost="secret x secret: 2 rounds, an operand opened by an earlier product not opened again; "
          "public real: 1 round", torch=(torch.matmul, torch.mm, torch.bmm))  # fmt: skip
def matmul(input: SecretTensor | torch.Tensor, other: SecretTensor | torch.Tensor) -> SecretTensor:
    for v in (input, other):
        if not isinstance(v, SecretTensor | torch.Tensor):
            raise ProtocolError(f"matmul needs a tensor operand, got {type(v).__name__}")
    _check_matmul(input, other)
    if isinstance(input, SecretTensor) and isinstance(other, SecretTensor):
        _same(input, other)
        return input._new(
            input.ctx.family.matmul(input.ctx, input.share, other.share), _result_dtype(input.dtype, other)
        )
    secret, public, left = (input, other, False) if isinstance(input, SecretTensor) else (other, input, True)
    if not isinstance(public, torch.Tensor):
        raise ProtocolError(f"matmul needs a tensor operand, got {type(public).__name__}")
    assert isinstance(secret, SecretTensor)
    out = secret.ctx.family.matmul_public(secret.ctx, secret.share, public, left)
    return secret._new(out, _result_dtype(secret.dtype, public))


@register("matmuls", cost="2 rounds for all the pairs together")
def matmuls(inputs: Sequence[SecretTensor], others: Sequence[SecretTensor]) -> list[SecretTensor]:
    """``[a @ b for a, b in zip(inputs, others)]``, every operand secret, in one opening and one truncation
    round: independent products of one layer (a linear layer's two gradients) in the rounds of one.
    It records no graph (backward rules use it with grad mode off): operands that require grad are refused."""
    if len(inputs) != len(others) or not inputs:
        raise ProtocolError(f"matmuls needs as many right operands as left ones, got {len(inputs)} and {len(others)}")
    for a, b in zip(inputs, others, strict=True):
        if not isinstance(a, SecretTensor) or not isinstance(b, SecretTensor):
            raise ProtocolError("matmuls takes secret operands only")
        _check_matmul(a, b)
        _same(inputs[0], a)
        _same(a, b)
        if (a.requires_grad or b.requires_grad) and is_grad_enabled(a.ctx):
            raise ProtocolError("matmuls records no gradients: use matmul (@) on operands that require grad")
    ctx = inputs[0].ctx
    outs = ctx.family.matmul_many(ctx, [(a.share, b.share) for a, b in zip(inputs, others, strict=True)])
    return [a._new(z, _result_dtype(a.dtype, b)) for a, b, z in zip(inputs, others, outs, strict=True)]


@register("pow", cost="2 floor(log2 |k|) rounds (+2, +9 for k < 0)", torch=(torch.pow,))
def pow(input: SecretTensor, exponent: int) -> SecretTensor:
    if isinstance(exponent, float) and exponent.is_integer():
        exponent = int(exponent)
    if not isinstance(exponent, int) or isinstance(exponent, bool):
        raise ProtocolError(f"pow takes a public integer exponent, got {exponent!r}; use sqrt() or rsqrt()")
    return input._new(input.ctx.family.pow_int(input.ctx, input.share, exponent), _float_dtype(input.dtype))


# ----- reductions ----------------------------------------------------------------------------------


@register("sum", cost="local", torch=(torch.sum,))
def sum(input: SecretTensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> SecretTensor:
    dtype = torch.int64 if input.dtype == torch.bool else input.dtype
    return input._new(input.share.sum(dim, keepdim), dtype)


@register("mean", cost="as mul by the public 1/count", torch=(torch.mean,))
def mean(input: SecretTensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> SecretTensor:
    total = sum(input, dim, keepdim)
    count = input.numel() // builtins.max(total.numel(), 1) if dim is not None else input.numel()
    if count == 0:
        raise ProtocolError("mean of an empty tensor")
    out = mul(total, 1.0 / count)
    return out._new(out.share, _float_dtype(input.dtype))


# ----- shape operations (local) ------------------------------------------------------------------------


def _shape_op(name: str, fn, aliases=()):
    def forward(input: SecretTensor, *args, **kwargs) -> SecretTensor:
        return input._new(fn(input.share, *args, **kwargs))

    forward.__name__ = name
    return register(name, cost="local", torch=aliases)(forward)


reshape = _shape_op("reshape", lambda s, *shape: s.reshape(*shape), (torch.reshape,))
view = _shape_op("view", lambda s, *shape: s.view(*shape))
transpose = _shape_op("transpose", lambda s, d0, d1: s.transpose(d0, d1), (torch.transpose, torch.swapaxes))
t = _shape_op("t", lambda s: s.transpose(0, 1) if s.dim() == 2 else s, (torch.t,))
permute = _shape_op("permute", lambda s, *dims: s.permute(*dims), (torch.permute,))
movedim = _shape_op("movedim", lambda s, src, dst: s.movedim(src, dst), (torch.movedim,))
flatten = _shape_op("flatten", lambda s, start_dim=0, end_dim=-1: s.flatten(start_dim, end_dim), (torch.flatten,))
squeeze = _shape_op("squeeze", lambda s, dim=None: s.squeeze(dim), (torch.squeeze,))
unsqueeze = _shape_op("unsqueeze", lambda s, dim: s.unsqueeze(dim), (torch.unsqueeze,))
expand = _shape_op("expand", lambda s, *sizes: s.expand(*sizes))
repeat = _shape_op("repeat", lambda s, *sizes: s.repeat(*sizes))
contiguous = _shape_op("contiguous", lambda s: s.contiguous())
clone = _shape_op("clone", lambda s: s.clone(), (torch.clone,))


@register("getitem", cost="local")
def getitem(input: SecretTensor, index) -> SecretTensor:
    if isinstance(index, SecretTensor):
        raise ProtocolError("indexing by a secret tensor is not supported; use a secret one-hot and multiply")
    return input._new(input.share[index])


@register("scatter_sum", cost="local")
def scatter_sum(input: SecretTensor, shape: Sequence[int], index: torch.Tensor) -> SecretTensor:
    """Zeros of ``shape`` with each element of ``input`` added at its flat position ``index`` (public, int64,
    ``input``'s shape; repeats add up): the adjoint of gathering by ``index`` (autograd's indexing, pooling)."""
    index = torch.as_tensor(index)
    if tuple(index.shape) != tuple(input.shape):
        raise ProtocolError(f"scatter_sum: index has shape {tuple(index.shape)}, the input {tuple(input.shape)}")
    return input._new(input.share.scatter_sum(tuple(shape), index))


@register("detach", cost="local", torch=(torch.detach,))
def detach(input: SecretTensor) -> SecretTensor:
    """The same share outside the autograd graph."""
    return input._new(input.share)


# ----- comparisons (results are secret 0/1 tensors of dtype bool, held in fixed point) --------------------------


def _diff(a: SecretTensor, b: SecretTensor | Public) -> SecretTensor:
    return sub(a, b)


def _bool(x: SecretTensor, share) -> SecretTensor:
    return x._new(share, torch.bool)


@register("lt", cost="4 rounds", torch=(torch.lt, torch.less))
def lt(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    return _bool(input, input.ctx.family.less_than(input.ctx, _diff(input, other).share, op="lt"))


@register("gt", cost="4 rounds", torch=(torch.gt, torch.greater))
def gt(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    return _bool(input, input.ctx.family.less_than(input.ctx, neg(_diff(input, other)).share, op="gt"))


@register("le", cost="4 rounds", torch=(torch.le, torch.less_equal))
def le(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    return _bool(input, input.ctx.family.less_than(input.ctx, neg(_diff(input, other)).share, negate=True, op="le"))


@register("ge", cost="4 rounds", torch=(torch.ge, torch.greater_equal))
def ge(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    return _bool(input, input.ctx.family.less_than(input.ctx, _diff(input, other).share, negate=True, op="ge"))


@register("eq", cost="4 rounds", torch=(torch.eq,))
def eq(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    return _bool(input, input.ctx.family.equal(input.ctx, _diff(input, other).share, op="eq"))


@register("ne", cost="4 rounds", torch=(torch.ne, torch.not_equal))
def ne(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    return _bool(input, input.ctx.family.equal(input.ctx, _diff(input, other).share, negate=True, op="ne"))


@register("sign", cost="4 rounds", torch=(torch.sign,))
def sign(input: SecretTensor) -> SecretTensor:
    return input._new(input.ctx.family.sign(input.ctx, input.share))


@register("abs", cost="4 rounds", torch=(torch.abs, torch.absolute))
def abs(input: SecretTensor) -> SecretTensor:
    return input._new(input.ctx.family.abs(input.ctx, input.share))


@register(
    "relu",
    cost="4 rounds, 8 + 35/8 B per element and peer; backward 1 round (the mask is kept)",
    torch=(torch.relu, torch.nn.functional.relu),
)
def relu(input: SecretTensor, inplace: bool = False) -> SecretTensor:
    if inplace:
        raise ProtocolError("relu(inplace=True) is not supported on secret tensors; use the result")
    ctx = input.ctx
    if will_record(input):  # keep the mask [x > 0] for backward (it comes with the comparison, at no cost)
        share, mask = ctx.family.relu_mask(ctx, input.share)
        out = input._new(share)
        out._saved = mask
        return out
    return input._new(ctx.family.relu(ctx, input.share))


def _operand(x: SecretTensor, v: SecretTensor | Public):
    """The share of a secret operand, or of a public one."""
    if isinstance(v, SecretTensor):
        _same(x, v)
        return v.share
    return type(x.share).public(_enc(x, v), x.ctx.rank)


@register("clamp", cost="4 rounds", torch=(torch.clamp, torch.clip))
def clamp(input: SecretTensor, min: SecretTensor | Public | None = None, max: SecretTensor | Public | None = None):
    ctx, fam = input.ctx, input.ctx.family
    if min is None and max is None:
        raise ProtocolError("clamp: give at least one of min and max")
    secret_bounds = isinstance(min, SecretTensor) or isinstance(max, SecretTensor)
    tensor_bounds = any(isinstance(b, torch.Tensor) and b.numel() != 1 for b in (min, max))
    if secret_bounds or tensor_bounds:
        lo = None if min is None else _operand(input, min)
        hi = None if max is None else _operand(input, max)
        return input._new(fam.clamp_secret(ctx, input.share, lo, hi))
    lo_v = None if min is None else float(min)
    hi_v = None if max is None else float(max)
    return input._new(fam.clamp_public(ctx, input.share, lo_v, hi_v))


@register("maximum", cost="4 rounds", torch=(torch.maximum,))
def maximum(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    if not isinstance(input, SecretTensor):
        input, other = other, input  # type: ignore[assignment]
    out = input.ctx.family.maximum(input.ctx, input.share, _operand(input, other))
    return input._new(out, _result_dtype(input.dtype, other))


@register("minimum", cost="4 rounds", torch=(torch.minimum,))
def minimum(input: SecretTensor, other: SecretTensor | Public) -> SecretTensor:
    if not isinstance(input, SecretTensor):
        input, other = other, input  # type: ignore[assignment]
    out = input.ctx.family.maximum(input.ctx, -input.share, -_operand(input, other))
    return input._new(-out, _result_dtype(input.dtype, other))


@register("where", cost="secret condition: 2 rounds (1 with public branches); public condition: local",
          torch=(torch.where,))  # fmt: skip
def where(
    condition: SecretTensor | torch.Tensor, input: SecretTensor | Public, other: SecretTensor | Public
) -> SecretTensor:
    """``torch.where(condition, input, other)`` with a secret or public condition, exact."""
    secrets = [v for v in (condition, input, other) if isinstance(v, SecretTensor)]
    if not secrets:
        raise ProtocolError("where: at least one of condition, input and other must be a SecretTensor")
    ref = secrets[0]
    ctx, fam = ref.ctx, ref.ctx.family
    dtype = _result_dtype(
        input.dtype if isinstance(input, SecretTensor) else _result_dtype(torch.bool, input),
        other,
    )
    if (
        isinstance(condition, SecretTensor)
        and not isinstance(input, SecretTensor)
        and not isinstance(other, SecretTensor)
    ):
        _same(ref, condition)
        return ref._new(fam.where_public(ctx, condition.share, _enc(ref, input), _enc(ref, other)), dtype)
    a, b = _operand(ref, input), _operand(ref, other)
    if not isinstance(condition, SecretTensor):
        cond = torch.as_tensor(condition, dtype=torch.bool)
        shape = broadcast_shapes(cond.shape, a.shape, b.shape)
        return ref._new(a.broadcast_to(shape).select_public(cond, b.broadcast_to(shape)), dtype)
    _same(ref, condition)
    return ref._new(fam.where(ctx, condition.share, a, b), dtype)


def _reduce_max(x: SecretTensor, dim, keepdim, index, one_hot, negate):
    sh = -x.share if negate else x.share
    if dim is None:
        sh = sh.reshape(-1)
        d = 0
    else:
        d = dim % builtins.max(x.dim(), 1)
        sh = sh.movedim(d, -1)
    vals, idx, oh = x.ctx.family.max_reduce(x.ctx, sh, index=index, one_hot=one_hot)
    if negate:
        vals = -vals
    if dim is not None and keepdim:
        vals = vals.unsqueeze(d)
        idx = idx.unsqueeze(d) if idx is not None else None
    if oh is not None and dim is not None:
        oh = oh.movedim(-1, d)
    return vals, idx, oh


@register("max", cost="4 ceil(log2 n) rounds", torch=(torch.max, torch.amax))
def max(input: SecretTensor, dim: int | None = None, keepdim: bool = False):
    vals, idx, _ = _reduce_max(input, dim, keepdim, dim is not None, False, False)
    if dim is None:
        return input._new(vals)
    return MaxResult(input._new(vals), input._new(idx, torch.int64))


@register("min", cost="4 ceil(log2 n) rounds", torch=(torch.min, torch.amin))
def min(input: SecretTensor, dim: int | None = None, keepdim: bool = False):
    vals, idx, _ = _reduce_max(input, dim, keepdim, dim is not None, False, True)
    if dim is None:
        return input._new(vals)
    return MaxResult(input._new(vals), input._new(idx, torch.int64))


def _arg(x: SecretTensor, dim, keepdim, one_hot, negate) -> SecretTensor:
    _, idx, oh = _reduce_max(x, dim, keepdim, not one_hot, one_hot, negate)
    if one_hot:
        if dim is None:
            oh = oh.reshape(x.shape)
        return x._new(oh, torch.int64)
    return x._new(idx, torch.int64)


@register("argmax", cost="4 ceil(log2 n) rounds", torch=(torch.argmax,))
def argmax(input: SecretTensor, dim: int | None = None, keepdim: bool = False, one_hot: bool = False) -> SecretTensor:
    return _arg(input, dim, keepdim, one_hot, False)


@register("argmin", cost="4 ceil(log2 n) rounds", torch=(torch.argmin,))
def argmin(input: SecretTensor, dim: int | None = None, keepdim: bool = False, one_hot: bool = False) -> SecretTensor:
    return _arg(input, dim, keepdim, one_hot, True)


# ----- nonlinear functions (see protocols.nonlinear for domains and errors) --------------------------------------


def _unary(name: str, method: str, cost: str, aliases=()):
    def forward(input: SecretTensor) -> SecretTensor:
        return input._new(getattr(input.ctx.family, method)(input.ctx, input.share), _float_dtype(input.dtype))

    forward.__name__ = name
    return register(name, cost=cost, torch=aliases)(forward)


exp = _unary("exp", "exp", "4 rounds; domain [-12, 10]", (torch.exp,))
exp_nonpositive = _unary("exp_nonpositive", "exp_nonpositive", "4 rounds; x <= 0 (0 below -11)")
log = _unary("log", "log", "21 rounds; domain [1e-3, 1e4]", (torch.log,))
reciprocal = _unary("reciprocal", "reciprocal", "21 rounds; domain 1e-2 <= |x| <= 1e4", (torch.reciprocal,))
sqrt = _unary("sqrt", "sqrt", "21 rounds; domain [1e-3, 1e4]", (torch.sqrt,))
rsqrt = _unary("rsqrt", "rsqrt", "21 rounds; domain [1e-3, 1e4]", (torch.rsqrt,))
sigmoid = _unary("sigmoid", "sigmoid", "4 rounds; all reals", (torch.sigmoid, torch.nn.functional.sigmoid))
tanh = _unary("tanh", "tanh", "4 rounds; all reals", (torch.tanh, torch.nn.functional.tanh))


def _along(x: SecretTensor, dim: int, method: str) -> SecretTensor:
    d = dim % builtins.max(x.dim(), 1)
    out = getattr(x.ctx.family, method)(x.ctx, x.share.movedim(d, -1)).movedim(-1, d)
    return x._new(out, _float_dtype(x.dtype))


def _softmax_dim(x: SecretTensor, dim, what: str) -> int:
    if dim is None:
        raise ProtocolError(f"{what}: give dim (torch's implicit choice of dimension is deprecated)")
    return dim


@register("softmax", cost="15 + 4 ceil(log2 n) rounds; logits in [-30, 30]",
          torch=(torch.softmax, torch.nn.functional.softmax))  # fmt: skip
def softmax(input: SecretTensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> SecretTensor:
    return _along(input, _softmax_dim(input, dim, "softmax"), "softmax")


@register("log_softmax", cost="13 + 4 ceil(log2 n) rounds",
          torch=(torch.log_softmax, torch.nn.functional.log_softmax))  # fmt: skip
def log_softmax(input: SecretTensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> SecretTensor:
    dim = _softmax_dim(input, dim, "log_softmax")
    if not will_record(input):
        return _along(input, dim, "log_softmax")
    # Keep exp(x - max) and 1 / sum for backward (softmax = their product), in the input's layout.
    d = dim % builtins.max(input.dim(), 1)
    out, (e, r) = input.ctx.family.log_softmax_keep(input.ctx, input.share.movedim(d, -1))
    res = input._new(out.movedim(-1, d), _float_dtype(input.dtype))
    res._saved = (e.movedim(-1, d), r.movedim(-1, d))
    return res


@register("norm", cost="2-norm: 2 + 21 rounds; 1-norm: 4; inf-norm: 4 + 4 ceil(log2 n)", torch=(torch.norm,))
def norm(input: SecretTensor, p: float | str = 2, dim: int | None = None, keepdim: bool = False) -> SecretTensor:
    """The 1-, 2- (Frobenius) or inf-norm; the 2-norm needs the sum of squares below 2^30."""
    if p in (2, "fro"):
        sq = sum(square(input), dim, keepdim)
        return input._new(input.ctx.family.sqrt_wide(input.ctx, sq.share), _float_dtype(input.dtype))
    if p == 1:
        return sum(abs(input), dim, keepdim)
    if p == float("inf"):
        a = abs(input)
        return max(a) if dim is None else max(a, dim, keepdim).values
    raise ProtocolError(f"norm: p must be 1, 2, 'fro' or inf, got {p!r}")


# ----- opening -------------------------------------------------------------------------------------


@register("reveal", cost="1 round; 8 (n-1) B per element (to one party: 8 B from each other party)")
def reveal(input: SecretTensor, to: int | None = None) -> torch.Tensor | None:
    """Open the value: to every party (``to=None``), or to party ``to`` alone."""
    ctx, fam = input.ctx, input.ctx.family
    target = "all parties" if to is None else f"party {to}"
    ctx.log.info("revealing a %s tensor of shape %s to %s", input.dtype, tuple(input.shape), target)
    if to is None:
        (opened,) = fam.open_all(ctx, [input.share], "reveal")
        return fam.decode(ctx, opened, input.dtype)
    opened = fam.open_to(ctx, input.share, to, "reveal")
    return None if opened is None else fam.decode(ctx, opened, input.dtype)
