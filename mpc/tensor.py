"""``SecretTensor``: a party's share of a tensor, used like a torch tensor.

A ``SecretTensor`` holds a share object (``mpc.shares``: additive, or the
plaintext family's value), its public dtype and its party context.  Shapes and
dtypes are public metadata; values are not.  Every method goes through the
operation table (``mpc.ops``), as do ``mpc.functional`` and torch's own
functions (``torch.add(x, y)``, ``F.relu(x)``) via ``__torch_function__``; the
table's forward functions (``mpc.arith``, ``mpc.functional``) reach protocols
only through the context's protocol family.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from . import autograd
from .context import PartyContext
from .errors import ProtocolError
from .ops import call, describe, record, torch_dispatch
from .shares import Share

__all__ = ["SecretTensor", "MaxResult", "Public"]

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


def _secret_value(what: str):
    def refuse(self, *args, **kwargs):
        raise ProtocolError(
            f"{what} of a SecretTensor would need its value, which is secret; call .reveal() (to every party) "
            "or .reveal(to=k) first, if the value may be made public"
        )

    return refuse


class _Autograd:
    """Autograd's interface of ``SecretTensor`` (``mpc.autograd``; rules in ``mpc.grads``).

    Graph metadata and the backward pass: nothing here computes on shares
    except ``detach`` (an entry of the table) and the rules that ``backward``
    runs (each an entry of the table), so these members sit in a base class
    apart from the computing methods.
    """

    __slots__ = ()
    ctx: PartyContext
    share: Share
    dtype: torch.dtype
    _requires_grad: bool
    grad_fn: autograd.Node | None
    _grad: SecretTensor | None
    shape: torch.Size

    @property
    def requires_grad(self) -> bool:
        """Whether gradients flow to this tensor: a leaf marked by ``requires_grad_()``, or a recorded result."""
        return self._requires_grad or self.grad_fn is not None

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        self.requires_grad_(flag)

    def requires_grad_(self, requires_grad: bool = True) -> SecretTensor:
        """Mark this leaf as one whose gradient ``backward()`` computes (into ``.grad``); returns it."""
        if self.grad_fn is not None:
            if not requires_grad:
                raise ProtocolError(
                    "requires_grad can be switched off only on a leaf; this tensor is the result of recorded "
                    "operations: use .detach()"
                )
            return self
        if requires_grad and not self.dtype.is_floating_point:
            raise ProtocolError(f"only secret tensors of a floating-point dtype can require grad, not {self.dtype}")
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def grad(self) -> SecretTensor | None:
        """The gradient accumulated by ``backward()`` (a ``SecretTensor``), or None; assign None to zero it."""
        return self._grad

    @grad.setter
    def grad(self, value: SecretTensor | None) -> None:
        if value is not None:
            if not isinstance(value, SecretTensor) or value.ctx is not self.ctx:
                raise ProtocolError("a secret tensor's .grad is a SecretTensor of the same party context, or None")
            if tuple(value.shape) != tuple(self.shape):
                raise ProtocolError(f".grad must have the tensor's shape {tuple(self.shape)}, got {tuple(value.shape)}")
        self._grad = value

    def detach(self) -> SecretTensor:
        """The same secret value, outside the graph (does not require grad)."""
        return call("detach", self)

    def backward(self, gradient=None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
        """Accumulate the gradient of this tensor into ``.grad`` of every leaf that requires grad.

        ``gradient`` (public tensor or ``SecretTensor`` of this shape) defaults to 1
        for a one-element tensor.  The rules' operations are counted and
        transcribed like any other; see ``mpc.grads`` for what each costs.
        """
        extra = {} if gradient is None else {"gradient": gradient}
        record(self.ctx, "backward", describe("backward", (self,), extra))
        autograd.backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph)


class SecretTensor(_Autograd):
    """One party's share of a secret tensor.

    Autograd (``mpc.autograd``): a leaf that ``requires_grad`` gets its
    gradient, itself a ``SecretTensor``, in ``.grad`` after ``y.backward()``;
    a result of recorded operations has a ``grad_fn``.
    """

    # ``_saved``: what a forward computed on the way and its backward rule reuses (relu's mask), set by the
    # forward only when the call will be recorded; ``mpc.autograd.attach`` moves it into the node.
    __slots__ = ("ctx", "share", "dtype", "_requires_grad", "grad_fn", "_grad", "_saved")

    def __init__(self, ctx: PartyContext, share: Share, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(share, Share):
            raise ProtocolError(f"a SecretTensor holds a share object (mpc.shares), got {type(share).__name__}")
        self.ctx = ctx
        self.share = share
        self.dtype = dtype
        self._requires_grad = False
        self.grad_fn: autograd.Node | None = None
        self._grad: SecretTensor | None = None
        self._saved: Any = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return torch_dispatch(func, args, kwargs)

    # ----- metadata (public) -------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    def size(self, dim: int | None = None):
        return self.share.size(dim)

    def dim(self) -> int:
        return self.share.dim()

    ndim = property(dim)

    def numel(self) -> int:
        return self.share.numel()

    def __len__(self) -> int:
        if self.dim() == 0:
            raise TypeError("len() of a 0-d secret tensor")
        return self.shape[0]

    @property
    def protocol(self) -> str:
        return self.ctx.family.name

    def __repr__(self) -> str:
        grad = (
            f", grad_fn={self.grad_fn!r}"
            if self.grad_fn is not None
            else ", requires_grad=True"
            if self._requires_grad
            else ""
        )
        return f"SecretTensor(shape={tuple(self.shape)}, dtype={self.dtype}, party={self.ctx.rank}{grad})"

    def __bool__(self) -> bool:
        raise ProtocolError("the truth value of a SecretTensor is secret; reveal it or use a secret comparison")

    item = _secret_value(".item()")
    tolist = _secret_value(".tolist()")
    numpy = _secret_value(".numpy()")
    __float__ = _secret_value("float()")
    __int__ = _secret_value("int()")
    __index__ = _secret_value("using as an index")
    __array__ = _secret_value("converting to an array")

    def _new(self, share: Share, dtype: torch.dtype | None = None) -> SecretTensor:
        return SecretTensor(self.ctx, share, self.dtype if dtype is None else dtype)

    # ----- arithmetic ----------------------------------------------------------
    def __add__(self, other):
        return call("add", self, other)

    def __radd__(self, other):
        return call("add", self, other)

    def add(self, other, *, alpha=1):
        return call("add", self, other, alpha=alpha)

    def __sub__(self, other):
        return call("sub", self, other)

    def __rsub__(self, other):
        return call("sub", other, self)

    def sub(self, other, *, alpha=1):
        return call("sub", self, other, alpha=alpha)

    def __neg__(self):
        return call("neg", self)

    neg = __neg__

    def __mul__(self, other):
        return call("mul", self, other)

    def __rmul__(self, other):
        return call("mul", self, other)

    mul = __mul__

    def __truediv__(self, other):
        return call("div", self, other)

    def __rtruediv__(self, other):
        """``c / x`` for a public ``c``: the reciprocal times ``c``."""
        return call("div", other, self)

    div = __truediv__

    def square(self):
        return call("square", self)

    def matmul(self, other):
        return call("matmul", self, other)

    __matmul__ = matmul

    def __rmatmul__(self, other):
        return call("matmul", other, self)

    def pow(self, exponent: int):
        """``x ** k`` for a public integer ``k`` (negative: of the reciprocal)."""
        return call("pow", self, exponent)

    __pow__ = pow

    # ----- reductions ----------------------------------------------------------
    def sum(self, dim=None, keepdim: bool = False):
        return call("sum", self, dim, keepdim)

    def mean(self, dim=None, keepdim: bool = False):
        return call("mean", self, dim, keepdim)

    # ----- shape operations (local, follow torch) --------------------------------
    def reshape(self, *shape):
        return call("reshape", self, *shape)

    def view(self, *shape):
        return call("view", self, *shape)

    def transpose(self, d0: int, d1: int):
        return call("transpose", self, d0, d1)

    def t(self):
        return call("t", self)

    @property
    def T(self):  # noqa: N802 (torch's name)
        return call("permute", self, *reversed(range(self.dim())))

    @property
    def mT(self):  # noqa: N802 (torch's name)
        return call("transpose", self, -2, -1)

    def permute(self, *dims):
        return call("permute", self, *dims)

    def movedim(self, source, destination):
        return call("movedim", self, source, destination)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        return call("flatten", self, start_dim, end_dim)

    def squeeze(self, dim: int | None = None):
        return call("squeeze", self, dim)

    def unsqueeze(self, dim: int):
        return call("unsqueeze", self, dim)

    def expand(self, *sizes):
        return call("expand", self, *sizes)

    def expand_as(self, other):
        return call("expand", self, other.shape)

    def repeat(self, *sizes):
        return call("repeat", self, *sizes)

    def contiguous(self):
        return call("contiguous", self)

    def clone(self):
        return call("clone", self)

    def __getitem__(self, index):
        return call("getitem", self, index)

    # ----- comparisons (secret 0/1 results of dtype bool) ----------------------------
    def __lt__(self, other):
        """``self < other`` (exact; 4 rounds)."""
        return call("lt", self, other)

    def __gt__(self, other):
        return call("gt", self, other)

    def __le__(self, other):
        return call("le", self, other)

    def __ge__(self, other):
        return call("ge", self, other)

    def __eq__(self, other):  # type: ignore[override]
        return call("eq", self, other)

    def __ne__(self, other):  # type: ignore[override]
        return call("ne", self, other)

    def __hash__(self) -> int:  # __eq__ is a secret comparison; hashing stays by identity
        return id(self)

    lt, gt, le, ge, eq, ne = __lt__, __gt__, __le__, __ge__, __eq__, __ne__

    def sign(self):
        return call("sign", self)

    def abs(self):
        return call("abs", self)

    __abs__ = abs

    def relu(self):
        return call("relu", self)

    def clamp(self, min=None, max=None):
        """torch.clamp with public or secret bounds (exact; 4 rounds)."""
        return call("clamp", self, min, max)

    clip = clamp

    def where(self, condition, other):
        """``torch.Tensor.where``: ``where(condition, self, other)``."""
        return call("where", condition, self, other)

    def maximum(self, other):
        return call("maximum", self, other)

    def minimum(self, other):
        return call("minimum", self, other)

    def max(self, dim: int | None = None, keepdim: bool = False):
        """The maximum; with ``dim``, ``(values, indices)`` as torch (first index on ties)."""
        return call("max", self, dim, keepdim)

    def min(self, dim: int | None = None, keepdim: bool = False):
        return call("min", self, dim, keepdim)

    def argmax(self, dim: int | None = None, keepdim: bool = False, one_hot: bool = False):
        """Index of the first maximum (int64), or with ``one_hot`` its one-hot vector along ``dim``."""
        return call("argmax", self, dim, keepdim, one_hot)

    def argmin(self, dim: int | None = None, keepdim: bool = False, one_hot: bool = False):
        return call("argmin", self, dim, keepdim, one_hot)

    # ----- nonlinear functions (see protocols.nonlinear for domains and errors) --------------
    def exp(self):
        """``e^x``; domain [-12, 10] (exact to 12). Rounds 8."""
        return call("exp", self)

    def log(self):
        """Natural log; domain [1e-3, 1e4]. Rounds 21."""
        return call("log", self)

    def reciprocal(self):
        """``1 / x``; domain 1e-2 <= |x| <= 1e4. Rounds 21."""
        return call("reciprocal", self)

    def sqrt(self):
        """Square root; domain [1e-3, 1e4]. Rounds 21."""
        return call("sqrt", self)

    def rsqrt(self):
        """``1 / sqrt(x)``; domain [1e-3, 1e4]. Rounds 21."""
        return call("rsqrt", self)

    def sigmoid(self):
        """Logistic sigmoid on all reals. Rounds 8."""
        return call("sigmoid", self)

    def tanh(self):
        """Hyperbolic tangent on all reals. Rounds 8."""
        return call("tanh", self)

    def softmax(self, dim: int):
        """Softmax along ``dim``; logits in [-30, 30]. Rounds 15 + 4 ceil(log2 n)."""
        return call("softmax", self, dim)

    def log_softmax(self, dim: int):
        """Log-softmax along ``dim``. Rounds 13 + 4 ceil(log2 n)."""
        return call("log_softmax", self, dim)

    def norm(self, p=2, dim: int | None = None, keepdim: bool = False):
        return call("norm", self, p, dim, keepdim)

    # ----- opening -----------------------------------------------------------------
    def reveal(self, to: int | None = None) -> torch.Tensor | None:
        """Open the value: to every party (``to=None``), or to party ``to`` alone.

        Every party logs what was opened and to whom.  Parties other than ``to``
        get ``None`` and receive nothing from which the value follows.
        """
        return call("reveal", self, to)
