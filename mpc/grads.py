"""The backward rules of the operation table, one per operation name (``Op.backward``).

A rule ``rule(node, g)`` gets the recorded call (``node.a``: the forward's
arguments by name, secret operands detached; ``node.out``: the forward's
result) and the gradient ``g`` of the result, and returns
``[(operand, gradient), ...]`` for each secret operand with ``node.needs``.
Rules are written with secret-tensor operations, which go through the table
(counted in ``ctx.stats``, entered into the transcript); ``mpc.autograd`` runs
them with grad mode off.

``g`` is a ``SecretTensor`` or, while it depends on public values alone, a
public float64 torch tensor (see ``mpc.autograd``).  Each docstring states the
cost for a secret ``g``; with a public ``g`` a Beaver product with ``g``
(2 rounds) becomes a product with a public tensor (1 truncation round, local
when ``g`` is constant and the other factor's scale is an integer).  Gradients
are summed back to an operand's shape where it was broadcast (local).

A forward may keep what its rule needs when the call is recorded
(``SecretTensor._saved``, then ``node.saved``): relu keeps its mask, so its
rule is one product.  Rules recompute what the forward did not keep (the
reciprocal of a divisor, the argmax of a max or of a pooling window):
their costs are stated below.  The rules' error is the fixed-point error of
their operations (``tests/test_autograd.py`` states the tolerance per rule).

Operations whose results carry no gradient are marked ``NONDIFF``
(comparisons, ``sign``, ``argmax``/``argmin``, ``detach``, ``reveal``), as in
torch; an operation with no rule (``max_pool2d_backward``, and any later one
without) raises ``ProtocolError`` naming it when backward reaches it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import arith, functional
from .autograd import NONDIFF, Node
from .errors import ProtocolError
from .ops import OPS, call
from .shapes import broadcast_shapes
from .tensor import SecretTensor

__all__ = ["rule", "nondifferentiable"]

Grad = Any  # a SecretTensor or a public torch tensor
Rule = Callable[[Node, Grad], list[tuple[SecretTensor, Grad]]]


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Decorator: the backward rule of the operations ``names``."""

    def deco(fn: Rule) -> Rule:
        for name in names:
            entry = OPS[name]
            if entry.backward is not None:
                raise ValueError(f"operation {name!r} already has a backward rule")
            entry.backward = fn
        return fn

    return deco


def nondifferentiable(*names: str) -> None:
    """Mark operations whose results do not require grad."""
    for name in names:
        OPS[name].backward = NONDIFF


nondifferentiable("lt", "gt", "le", "ge", "eq", "ne", "sign", "argmax", "argmin", "detach", "reveal")


# ----- helpers on gradients that are secret or public ------------------------------------------------------------


def _secret(v: Any) -> bool:
    return isinstance(v, SecretTensor)


def _sum_to(g: Grad, shape: Sequence[int]) -> Grad:
    """``g`` summed over the dimensions that broadcasting added to ``shape`` (local)."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1)
    if dims:
        g = g.sum(dims, keepdim=True)
    return g.reshape(shape)


def _uniform(t: torch.Tensor) -> bool:
    return t.numel() > 0 and bool((t == t.reshape(-1)[0]).all())


def _times(a: Grad, b: Any) -> Grad:
    """``a * b`` for secret or public factors: a Beaver product only when both are secret.

    A public factor whose elements are all equal multiplies as a scalar (local for an integer,
    one exact division otherwise), then broadcasts.
    """
    if not _secret(a) and not _secret(b):
        return torch.as_tensor(a, dtype=torch.float64) * b
    if not _secret(a):
        a, b = b, a
    if isinstance(b, torch.Tensor) and b.numel() > 1 and _uniform(b):
        out = call("mul", a, float(b.reshape(-1)[0]))
        shape = broadcast_shapes(tuple(a.shape), tuple(b.shape))
        return out if tuple(out.shape) == shape else out.expand(shape)
    return call("mul", a, b)


def _scale(g: Grad, c: float) -> Grad:
    """``g * c`` for a public scalar (local when ``c`` is an integer, else one round for a secret ``g``)."""
    if c == 1:
        return g
    return g * c if not _secret(g) else call("mul", g, c)


def _where(cond: Any, a: Grad, b: Grad) -> Grad:
    if _secret(cond) or _secret(a) or _secret(b):
        return call("where", cond, a, b)
    return torch.where(torch.as_tensor(cond, dtype=torch.bool), a, b)


def _scatter(g: Grad, shape: Sequence[int], index: torch.Tensor) -> Grad:
    """Zeros of ``shape`` with ``g``'s elements added at flat positions ``index`` (local)."""
    if _secret(g):
        return call("scatter_sum", g, tuple(shape), index)
    n = 1
    for d in shape:
        n *= int(d)
    flat = torch.zeros(n, dtype=torch.float64).index_add(0, index.reshape(-1), g.reshape(-1).to(torch.float64))
    return flat.reshape(tuple(shape))


def _dims(dim: int | Sequence[int] | None, nd: int) -> list[int]:
    if dim is None:
        return list(range(nd))
    ds = [dim] if isinstance(dim, int) else list(dim)
    return sorted(d % builtins.max(nd, 1) for d in ds)


def _unreduce(g: Grad, shape: Sequence[int], dim, keepdim: bool) -> Grad:
    """The gradient of a reduction over ``dim`` broadcast back to ``shape`` (local)."""
    if dim is not None and not keepdim:
        for d in _dims(dim, len(shape)):
            g = g.unsqueeze(d)
    elif dim is None:
        g = g.reshape((1,) * len(shape))
    return g.expand(tuple(shape)) if tuple(g.shape) != tuple(shape) else g


def _pair(out: list, node: Node, v: Any, grad: Callable[[], Grad]) -> None:
    """Append ``(v, grad())`` when ``v`` needs a gradient (``grad`` runs only then)."""
    if node.needs(v):
        out.append((v, grad()))


# ----- addition and products ---------------------------------------------------------------------------------


@rule("add")
def _add(n: Node, g: Grad):
    """``x + alpha y``: ``g`` and ``alpha g``. Local (one round for a secret ``g`` and a non-integer alpha)."""
    x, y, alpha = n.a["input"], n.a["other"], n.a["alpha"]
    out: list = []
    _pair(out, n, x, lambda: _sum_to(g, x.shape))
    _pair(out, n, y, lambda: _sum_to(_scale(g, alpha), y.shape))
    return out


@rule("sub")
def _sub(n: Node, g: Grad):
    """``x - alpha y``: ``g`` and ``-alpha g``. Local (as add)."""
    x, y, alpha = n.a["input"], n.a["other"], n.a["alpha"]
    out: list = []
    _pair(out, n, x, lambda: _sum_to(g, x.shape))
    _pair(out, n, y, lambda: _sum_to(_scale(-g, alpha), y.shape))
    return out


@rule("neg")
def _neg(n: Node, g: Grad):
    """``-g``. Local."""
    return [(n.a["input"], -g)]


@rule("mul")
def _mul(n: Node, g: Grad):
    """``g y`` and ``g x``: one Beaver product per secret operand that needs it (2 rounds each)."""
    x, y = n.a["input"], n.a["other"]
    out: list = []
    _pair(out, n, x, lambda: _sum_to(_times(g, y), x.shape))
    _pair(out, n, y, lambda: _sum_to(_times(g, x), y.shape))
    return out


@rule("div")
def _div(n: Node, g: Grad):
    """``x / y``: ``g / y`` and ``-g out / y``.

    Public ``y``: a product with the public ``1 / y`` (1 round). Secret ``y``:
    the reciprocal again (21 rounds; the forward's is not kept), then 2 Beaver
    products for ``x``'s and 4 for ``y``'s gradient.
    """
    x, y = n.a["input"], n.a["other"]
    if not _secret(y):
        return [(x, _sum_to(_times(g, 1.0 / torch.as_tensor(y, dtype=torch.float64)), x.shape))]
    r = call("reciprocal", y)
    out: list = []
    _pair(out, n, x, lambda: _sum_to(_times(g, r), x.shape))
    _pair(out, n, y, lambda: _sum_to(-_times(_times(g, n.out), r), y.shape))
    return out


@rule("square")
def _square(n: Node, g: Grad):
    """``2 x g``: one Beaver product (2 rounds)."""
    x = n.a["input"]
    return [(x, _times(g, x * 2))]


@rule("pow")
def _pow(n: Node, g: Grad):
    """``k x^(k-1) g``: the power again (see pow's cost, for k - 1), and one product."""
    x, k = n.a["input"], int(n.a["exponent"])
    if k == 0:
        return [(x, torch.zeros(tuple(x.shape), dtype=torch.float64))]
    if k == 1:
        return [(x, g)]
    p = x if k == 2 else call("pow", x, k - 1)
    return [(x, _times(g, p * k))]


@rule("matmul")
def _matmul(n: Node, g: Grad):
    """``g @ y^T`` and ``x^T @ g`` (torch's 1-d and batch rules): both in one batch of Beaver matmuls
    (2 rounds for the two, ``matmuls``), or one truncation with a public operand."""
    x, y = n.a["input"], n.a["other"]
    gx, gy = _matmul_grads(g, x, y, n.needs(x), n.needs(y))
    out: list = []
    if gx is not None:
        out.append((x, gx))
    if gy is not None:
        out.append((y, gy))
    return out


def _matmul_grads(g: Grad, x: Any, y: Any, need_x: bool, need_y: bool) -> tuple[Grad | None, Grad | None]:
    xs, ys = tuple(x.shape), tuple(y.shape)
    x2 = x.unsqueeze(0) if len(xs) == 1 else x
    y2 = y.unsqueeze(-1) if len(ys) == 1 else y
    g2 = g.unsqueeze(-1) if len(ys) == 1 else g
    g2 = g2.unsqueeze(-2) if len(xs) == 1 else g2
    gx = gy = None
    if y2.dim() == 2 and x2.dim() > 2:  # one matmul over the flattened batch instead of a batched one
        k, m = x2.shape[-1], g2.shape[-1]
        a, b = x2.reshape(-1, k).mT, g2.reshape(-1, m)
    else:
        a, b = x2.mT, g2
    if need_x and need_y and all(_secret(v) for v in (g2, y2, a)):
        px, py = call("matmuls", [g2, a], [y2.mT, b])  # independent: opened and truncated together
        return _sum_to(px, x2.shape).reshape(xs), _sum_to(py, y2.shape).reshape(ys)
    if need_x:
        gx = _sum_to(call("matmul", g2, y2.mT) if _secret(g2) or _secret(y2) else g2 @ y2.mT, x2.shape).reshape(xs)
    if need_y:
        gy = _sum_to(call("matmul", a, b) if _secret(a) or _secret(b) else a @ b, y2.shape).reshape(ys)
    return gx, gy


@rule("linear")
def _linear(n: Node, g: Grad):
    """``input @ weight^T + bias``: as matmul's, and the bias's ``g`` summed over the batch (local)."""
    x, w, b = n.a["input"], n.a["weight"], n.a["bias"]
    wt = w.transpose(0, 1) if w.dim() == 2 else w
    gx, gwt = _matmul_grads(g, x, wt, n.needs(x), n.needs(w))
    out: list = []
    if gx is not None:
        out.append((x, gx))
    if gwt is not None:
        out.append((w, gwt.transpose(0, 1) if w.dim() == 2 else gwt))
    _pair(out, n, b, lambda: _sum_to(g, b.shape))
    return out


# ----- reductions and shapes (local) -----------------------------------------------------------------------------


@rule("sum")
def _sum(n: Node, g: Grad):
    """``g`` broadcast back over the summed dimensions. Local."""
    x = n.a["input"]
    return [(x, _unreduce(g, x.shape, n.a["dim"], n.a["keepdim"]))]


@rule("mean")
def _mean(n: Node, g: Grad):
    """``g / count`` broadcast back: one exact division (1 round; free for a public ``g``)."""
    x, dim, keepdim = n.a["input"], n.a["dim"], n.a["keepdim"]
    count = x.numel() // builtins.max(n.out.numel(), 1) if dim is not None else x.numel()
    return [(x, _unreduce(_scale(g, 1.0 / count), x.shape, dim, keepdim))]


@rule("reshape", "view", "flatten", "squeeze", "unsqueeze", "contiguous", "clone")
def _reshape(n: Node, g: Grad):
    """``g`` in the input's shape. Local."""
    x = n.a["input"]
    return [(x, g.reshape(tuple(x.shape)))]


def _shape_args(n: Node) -> list:
    return [*n.a["args"], *n.a["kwargs"].values()]


@rule("transpose")
def _transpose(n: Node, g: Grad):
    """``g`` transposed back. Local."""
    d0, d1 = _shape_args(n)
    return [(n.a["input"], g.transpose(d0, d1))]


@rule("t")
def _t(n: Node, g: Grad):
    """``g^T``. Local."""
    return [(n.a["input"], g.t() if g.dim() == 2 else g)]


@rule("permute")
def _permute(n: Node, g: Grad):
    """``g`` under the inverse permutation. Local."""
    dims = _shape_args(n)
    if len(dims) == 1 and isinstance(dims[0], Sequence):
        dims = list(dims[0])
    nd = len(dims)
    inverse = [0] * nd
    for i, d in enumerate(dims):
        inverse[d % nd] = i
    return [(n.a["input"], g.permute(*inverse))]


@rule("movedim")
def _movedim(n: Node, g: Grad):
    """``g`` with the dimensions moved back. Local."""
    args, kw = list(n.a["args"]), n.a["kwargs"]
    src = args[0] if args else kw["source"]
    dst = args[1] if len(args) > 1 else kw["destination"]
    return [(n.a["input"], g.movedim(dst, src))]


@rule("expand")
def _expand(n: Node, g: Grad):
    """``g`` summed over the expanded dimensions. Local."""
    x = n.a["input"]
    return [(x, _sum_to(g, x.shape))]


@rule("repeat")
def _repeat(n: Node, g: Grad):
    """``g`` summed over the repetitions. Local."""
    x = n.a["input"]
    reps = _shape_args(n)
    if len(reps) == 1 and isinstance(reps[0], Sequence):
        reps = list(reps[0])
    xs = (1,) * (len(reps) - x.dim()) + tuple(x.shape)
    split = [v for r, s in zip(reps, xs) for v in (r, s)]
    g = g.reshape(tuple(split)).sum(tuple(range(0, 2 * len(reps), 2)))
    return [(x, g.reshape(tuple(x.shape)))]


@rule("getitem")
def _getitem(n: Node, g: Grad):
    """``g`` scattered into zeros at the indexed positions (repeats add up). Local."""
    x = n.a["input"]
    index = torch.arange(x.numel(), dtype=torch.int64).reshape(tuple(x.shape))[n.a["index"]]
    return [(x, _scatter(g, x.shape, index))]


@rule("scatter_sum")
def _scatter_sum(n: Node, g: Grad):
    """The gather at the same positions. Local."""
    x, index = n.a["input"], torch.as_tensor(n.a["index"])
    return [(x, g.reshape(-1)[index.reshape(-1)].reshape(tuple(x.shape)))]


@rule("cat")
def _cat(n: Node, g: Grad):
    """Slices of ``g``. Local."""
    ts, dim = n.a["tensors"], n.a["dim"]
    d = dim % ts[0].dim()
    out, start = [], 0
    for t in ts:
        size = t.shape[d]
        if n.needs(t):
            out.append((t, g[(slice(None),) * d + (slice(start, start + size),)]))
        start += size
    return out


@rule("stack")
def _stack(n: Node, g: Grad):
    """Slices of ``g``. Local."""
    ts, dim = n.a["tensors"], n.a["dim"]
    d = dim % (ts[0].dim() + 1)
    return [(t, g[(slice(None),) * d + (i,)]) for i, t in enumerate(ts) if n.needs(t)]


# ----- comparisons and selection ---------------------------------------------------------------------------------


@rule("relu")
def _relu(n: Node, g: Grad):
    """``g [x > 0]`` with the mask the forward kept (an integer 0/1 share, ``family.relu_mask``): one
    product by it (1 round, exact; local for a public ``g``).  Without it, the comparison again (4 rounds)
    and a selection (2 rounds)."""
    x, mask = n.a["input"], n.saved
    if mask is None:
        return [(x, _where(call("gt", x, 0), g, 0.0))]
    ctx, fam = x.ctx, x.ctx.family
    if _secret(g):
        return [(x, x._new(fam.mask_mul(ctx, mask, g.share)))]
    gp = torch.as_tensor(g, dtype=torch.float64).expand(tuple(x.shape))
    return [(x, x._new(mask.mul_public(fam.encode_public(ctx, gp))))]


@rule("abs")
def _abs(n: Node, g: Grad):
    """``g sign(x)``: sign (4 rounds) and one product (2 rounds)."""
    x = n.a["input"]
    return [(x, _times(g, call("sign", x)))]


@rule("clamp")
def _clamp(n: Node, g: Grad):
    """``g`` where ``min <= x <= max``; to a secret bound, ``g`` where it was taken. One comparison per
    bound (4 rounds each) and one product per gradient (2 rounds)."""
    x, lo, hi = n.a["input"], n.a["min"], n.a["max"]
    below = None if lo is None else call("lt", x, lo)
    above = None if hi is None else call("gt", x, hi)
    keep = 1 - below if above is None else 1 - above if below is None else 1 - below - above
    out: list = []
    _pair(out, n, x, lambda: _times(g, keep))
    _pair(out, n, lo, lambda: _sum_to(_times(g, below), lo.shape))
    _pair(out, n, hi, lambda: _sum_to(_times(g, above), hi.shape))
    return out


def _extremum(n: Node, g: Grad, larger: bool):
    a, b = n.a["input"], n.a["other"]
    s = call("sign", call("sub", a, b))  # 4 rounds
    half = call("mul", (s + 1) if larger else (1 - s), 0.5)  # exact: 0, 1/2 or 1 (1 round)
    ga = _times(g, half)  # ties split evenly, as torch
    out: list = []
    _pair(out, n, a, lambda: _sum_to(ga, a.shape))
    _pair(out, n, b, lambda: _sum_to(g - ga, b.shape))
    return out


@rule("maximum")
def _maximum(n: Node, g: Grad):
    """``g`` to the larger operand, halves on ties: sign (4 rounds), a halving (1), one product (2)."""
    return _extremum(n, g, True)


@rule("minimum")
def _minimum(n: Node, g: Grad):
    """As maximum, to the smaller operand."""
    return _extremum(n, g, False)


@rule("where")
def _where_rule(n: Node, g: Grad):
    """``g`` where the condition holds, to ``input``; the rest to ``other``: one selection (2 rounds for
    a secret condition, 1 with a public ``g``; local for a public condition)."""
    cond, x, y = n.a["condition"], n.a["input"], n.a["other"]
    gx = _where(cond, g, 0.0)
    out: list = []
    _pair(out, n, x, lambda: _sum_to(gx, x.shape))
    _pair(out, n, y, lambda: _sum_to(g - gx, y.shape))
    return out


def _extreme_values(n: Node, g: Grad, arg: str):
    x, dim, keepdim = n.a["input"], n.a["dim"], n.a["keepdim"]
    onehot = call(arg, x, dim, False, True)  # x's shape; the tournament again
    if dim is not None and not keepdim:
        g = g.unsqueeze(dim)
    return [(x, _times(onehot, g))]


@rule("max")
def _max(n: Node, g: Grad):
    """``g`` to the (first) maximum: the one-hot argmax again (4 ceil(log2 n) rounds) and one product."""
    return _extreme_values(n, g, "argmax")


@rule("min")
def _min(n: Node, g: Grad):
    """As max, to the (first) minimum."""
    return _extreme_values(n, g, "argmin")


# ----- nonlinear functions ----------------------------------------------------------------------------------------


@rule("exp", "exp_nonpositive")
def _exp(n: Node, g: Grad):
    """``g e^x``, reusing the output: one product (2 rounds)."""
    return [(n.a["input"], _times(g, n.out))]


@rule("log")
def _log(n: Node, g: Grad):
    """``g / x``: the reciprocal (21 rounds; x in log's domain [1e-3, 1e4] but 1/x's is |x| >= 1e-2) and
    one product."""
    x = n.a["input"]
    return [(x, _times(g, call("reciprocal", x)))]


@rule("reciprocal")
def _reciprocal(n: Node, g: Grad):
    """``-g / x^2 = -g out^2``, reusing the output: a square and one product (4 rounds)."""
    return [(n.a["input"], -_times(g, call("square", n.out)))]


@rule("sqrt")
def _sqrt(n: Node, g: Grad):
    """``g / (2 sqrt x)``: rsqrt of the input (21 rounds) and one product."""
    x = n.a["input"]
    return [(x, _times(_scale(g, 0.5), call("rsqrt", x)))]


@rule("rsqrt")
def _rsqrt(n: Node, g: Grad):
    """``-g x^(-3/2) / 2 = -g out^3 / 2``, reusing the output: a cube (4 rounds) and one product."""
    return [(n.a["input"], _times(_scale(g, -0.5), call("pow", n.out, 3)))]


@rule("sigmoid")
def _sigmoid(n: Node, g: Grad):
    """``g s (1 - s)``, reusing the output: a square and one product (4 rounds)."""
    s = n.out
    return [(n.a["input"], _times(g, s - call("square", s)))]


@rule("tanh")
def _tanh(n: Node, g: Grad):
    """``g (1 - t^2)``, reusing the output: a square and one product (4 rounds)."""
    t = n.out
    return [(n.a["input"], _times(g, 1 - call("square", t)))]


@rule("softmax")
def _softmax(n: Node, g: Grad):
    """``s (g - sum(g s))``, reusing the output: two products (4 rounds; 3 for a public ``g``)."""
    s, dim = n.out, n.a["dim"]
    gs = _times(g, s)
    return [(n.a["input"], gs - _times(s, gs.sum(dim, keepdim=True)))]


@rule("log_softmax")
def _log_softmax(n: Node, g: Grad):
    """``g - softmax(x) sum(g)``: softmax as the product of what the forward kept, ``exp(x - max)`` and
    ``1 / sum`` (2 rounds; relative error 3.5e-4), and one product (2; 1 for a public ``g``).  Without them,
    ``exp`` of the output, which is never positive (4 rounds)."""
    x, dim = n.a["input"], n.a["dim"]
    if n.saved is not None:  # softmax = e r from the forward's exp(x - max) and 1 / sum (one product, 2 rounds)
        e, r = n.saved
        p = call("mul", x._new(e), x._new(r))
    else:
        p = call("exp_nonpositive", n.out)
    return [(x, g - _times(p, g.sum(dim, keepdim=True)))]


@rule("norm")
def _norm(n: Node, g: Grad):
    """2-norm: ``g x / out`` (the reciprocal of the output, 21 rounds, and 2 products); 1-norm:
    ``g sign(x)`` (4 + 2 rounds); inf-norm: ``g sign(x)`` at the largest ``|x|`` (abs, argmax, 2 products)."""
    x, p, dim, keepdim = n.a["input"], n.a["p"], n.a["dim"], n.a["keepdim"]
    if p in (2, "fro"):
        factor = _times(g, call("reciprocal", n.out))
        return [(x, _times(x, _unreduce(factor, x.shape, dim, keepdim)))]
    if p == 1:
        return [(x, _times(call("sign", x), _unreduce(g, x.shape, dim, keepdim)))]
    onehot = call("argmax", call("abs", x), dim, False, True)
    gg = g.unsqueeze(dim) if dim is not None and not keepdim else g
    return [(x, _times(_times(onehot, call("sign", x)), gg))]


# ----- convolution and pooling ----------------------------------------------------------------------------------


def _conv_input_grad(g: Grad, w: Any, x_shape, stride, padding, dilation, groups) -> Grad:
    """conv_transpose2d(g, w) as conv2d: ``g`` spread by the stride and padded (local), then convolved with the
    flipped kernel whose in/out channels are swapped within each group."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    nb, co, oh, ow = g.shape
    cout, cin_g, kh, kw = w.shape
    h, wd = x_shape[2], x_shape[3]
    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    bottom = h - ((oh - 1) * sh + 1) + ph
    right = wd - ((ow - 1) * sw + 1) + pw
    pt, pb, pl, pr = (builtins.max(v, 0) for v in (top, bottom, left, right))
    hu, wu = (oh - 1) * sh + 1 + pt + pb, (ow - 1) * sw + 1 + pl + pr
    if (sh, sw) != (1, 1) or pt or pb or pl or pr:
        rows = pt + torch.arange(oh) * sh
        cols = pl + torch.arange(ow) * sw
        base = torch.arange(nb * co).reshape(nb, co, 1, 1) * (hu * wu)
        index = base + rows.reshape(1, 1, oh, 1) * wu + cols.reshape(1, 1, 1, ow)
        g = _scatter(g, (nb, co, hu, wu), index)
    if min(top, bottom, left, right) < 0:  # padding beyond the kernel's reach: those rows feed no input
        g = g[:, :, -min(top, 0) : hu - (-min(bottom, 0)), -min(left, 0) : wu - (-min(right, 0))]
    kernel = (
        w.reshape(groups, cout // groups, cin_g, kh, kw).transpose(1, 2).reshape(cin_g * groups, cout // groups, kh, kw)
    )
    rev_h, rev_w = list(range(kh - 1, -1, -1)), list(range(kw - 1, -1, -1))
    kernel = kernel[:, :, rev_h][:, :, :, rev_w]
    if _secret(g) or _secret(kernel):
        return call("conv2d", g, kernel, None, 1, 0, (dh, dw), groups)
    return torch.nn.functional.conv2d(g, kernel, None, 1, 0, (dh, dw), groups)


def _conv_weight_grad(g: Grad, x: Any, w_shape, stride, padding, dilation, groups) -> Grad:
    """sum over the batch of input windows times ``g``: conv2d of the input (batch as channels) with ``g``
    as kernel, stride and dilation exchanged, one per group."""
    cout, cin_g, kh, kw = w_shape
    og = cout // groups
    parts = []
    for k in range(groups):
        xk = x[:, k * cin_g : (k + 1) * cin_g] if groups > 1 else x
        gk = g[:, k * og : (k + 1) * og] if groups > 1 else g
        xt, gt = xk.transpose(0, 1), gk.transpose(0, 1)
        if _secret(xt) or _secret(gt):
            r = call("conv2d", xt, gt, None, dilation, padding, stride, 1)
        else:
            r = torch.nn.functional.conv2d(xt, gt, None, dilation, padding, stride, 1)
        parts.append(r[:, :, :kh, :kw].transpose(0, 1))
    if len(parts) == 1:
        return parts[0]
    return call("cat", parts, 0) if any(_secret(p) for p in parts) else torch.cat(parts, 0)


@rule("conv2d")
def _conv2d(n: Node, g: Grad):
    """Input: conv_transpose2d of ``g`` with the kernel, as one conv2d (2 rounds; 1 with a public kernel or
    ``g``). Kernel: conv2d of the input with ``g`` (2 rounds per group; 1 with a public input or ``g``).
    Bias: ``g`` summed (local)."""
    x, w, b = n.a["input"], n.a["weight"], n.a["bias"]
    st, pd, dl = (functional._pair(n.a[k], k) for k in ("stride", "padding", "dilation"))
    groups = n.a["groups"]
    out: list = []
    _pair(out, n, x, lambda: _conv_input_grad(g, w, x.shape, st, pd, dl, groups))
    _pair(out, n, w, lambda: _conv_weight_grad(g, x, w.shape, st, pd, dl, groups))
    _pair(out, n, b, lambda: _sum_to(g.sum((0, 2, 3)), b.shape))
    return out


def _fold(routed: Grad, shape, args) -> Grad:
    """Window gradients (N, C, OH, OW, kh*kw) summed back into the (unpadded) input of ``shape``. Local."""
    padded, index = functional.window_index(shape, *args)
    full = _scatter(routed, padded, index)
    ph, pw = args[4], args[5]
    return full[:, :, ph : ph + shape[2], pw : pw + shape[3]]


@rule("avg_pool2d")
def _avg_pool2d(n: Node, g: Grad):
    """``g / k`` spread over each window: one exact division (1 round; free for a public ``g``), local otherwise."""
    x = n.a["input"]
    if n.a["ceil_mode"] or not n.a["count_include_pad"]:
        raise ProtocolError("avg_pool2d backward: ceil_mode and count_include_pad=False are not supported")
    kh, kw, sh, sw, ph, pw, dh, dw = functional._pool_args(
        "avg_pool2d", n.a["kernel_size"], n.a["stride"], n.a["padding"]
    )
    squeeze = x.dim() == 3
    shape = (1, *x.shape) if squeeze else tuple(x.shape)
    gg = _scale(g, 1.0 / (n.a["divisor_override"] or kh * kw))
    gg = gg.reshape(tuple(shape[:2]) + tuple(g.shape[-2:])).unsqueeze(-1)
    routed = gg.expand(*gg.shape[:4], kh * kw)
    out = _fold(routed, shape, (kh, kw, sh, sw, ph, pw, dh, dw))
    return [(x, out.reshape(tuple(x.shape)))]


@rule("max_pool2d")
def _max_pool2d(n: Node, g: Grad):
    """``g`` to the (first) maximum of each window: ``max_pool2d_backward`` (the tournament again with its
    one-hot, 8 rounds for 2x2, and one product)."""
    x = n.a["input"]
    a = n.a
    return [(x, call("max_pool2d_backward", g, x, a["kernel_size"], a["stride"], a["padding"], a["dilation"]))]


_ = arith  # the forwards are registered before their rules
