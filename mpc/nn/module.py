"""``mpc.nn.Module``: torch's module protocol on secret parameters.

A module holds its parameters and buffers as ``SecretTensor`` s (a buffer may
also be a public torch tensor: BatchNorm's ``num_batches_tracked`` is a public
count) and its sub-modules by name, as ``torch.nn.Module`` does, so
``named_parameters()``, ``state_dict()`` keys and module paths match torch's.

Where parameter values come from
--------------------------------
Every parameter is the output of ``mpc.share`` from some party: nothing is
created from a value that no party input.  A layer takes ``owner=k`` (default
0): party k draws torch's default initialisation (``U(-1/sqrt(fan_in),
1/sqrt(fan_in))`` for Linear and Conv2d weights and biases; ones and zeros for
BatchNorm) from its own AES-CTR stream (``ctx.local_prg``, a CSPRNG, never
torch's generator) and shares it; the other parties pass nothing.  Party k
therefore knows the initial weights.  That is acceptable in the semi-honest
model (initial weights depend on no party's data; trained weights stay
secret), with one caveat: if the trained model is later revealed to party k,
k also learns the total update (trained minus initial weights), a sum of
gradients.  ``owner=None`` avoids it: the weights are then drawn jointly
(``mpc.nn.dropout.joint_uniform``: each party shares a uniform value, the sum
is reduced mod 1 with secret comparisons), so no party knows them, at the cost
of n sharings and n - 1 comparisons (4 rounds) per weight.
``mpc.nn.from_torch`` shares given weights from their owner instead.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from ..api import current_context, share
from ..api import no_grad as _api_no_grad
from ..context import PartyContext
from ..errors import ProtocolError
from ..functional import cat
from ..prg import Prg
from ..tensor import SecretTensor
from .random import joint_uniform

__all__ = ["Module", "Parameter", "Sequential", "Identity", "IncompatibleKeys", "no_grad", "assign_", "detach"]


# ----- autograd (mpc.autograd) -------------------------------------------------------------------------


def no_grad(ctx: PartyContext | None = None) -> _api_no_grad:
    """``mpc.no_grad(ctx)``: operations in the block are not recorded."""
    return _api_no_grad(ctx)


def detach(t: SecretTensor) -> SecretTensor:
    return t.detach()


def assign_(p: SecretTensor, value: SecretTensor) -> None:
    """Overwrite ``p``'s value with ``value``'s in place (torch's ``p.copy_(value)`` under no_grad).

    Optimizers and ``load_state_dict`` use it, so every holder of ``p`` (the
    module, the optimizer) sees the new value.  Only the share object changes:
    ``p`` stays the same leaf, with its ``grad`` and ``requires_grad``.
    """
    if not isinstance(value, SecretTensor):
        raise ProtocolError(f"a secret parameter takes a SecretTensor's value, got {type(value).__name__}")
    if tuple(value.shape) != tuple(p.shape):
        raise ProtocolError(
            f"cannot assign a value of shape {tuple(value.shape)} to a tensor of shape {tuple(p.shape)}"
        )
    if value.ctx is not p.ctx:
        raise ProtocolError("cannot assign a secret tensor of another party context")
    p.share = value.share


def uniform(prg: Prg, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    """``U(-bound, bound)`` float32 samples drawn from a CSPRNG stream (53 random bits each)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    u = (prg.bytes(8 * n).view(np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return torch.from_numpy((u * 2.0 - 1.0) * bound).to(torch.float32).reshape(shape)


class Parameter(SecretTensor):
    """A secret tensor that a module registers as a parameter (``requires_grad`` set where autograd exists).

    ``Parameter(t)`` wraps the secret tensor ``t`` (same share, not a copy).
    """

    __slots__ = ()

    def __init__(self, data: SecretTensor | PartyContext, requires_grad: Any = True, dtype: Any = None) -> None:
        if isinstance(data, PartyContext):
            # SecretTensor's own signature (ctx, share, dtype): mpc.autograd copies operands with type(v)(...);
            # such a copy is a plain tensor that does not require grad.
            super().__init__(data, requires_grad, dtype)
            return
        if not isinstance(data, SecretTensor):
            raise ProtocolError(
                f"mpc.nn.Parameter takes a SecretTensor, got {type(data).__name__}: share it first with "
                "mpc.share(value, owner=k)"
            )
        super().__init__(data.ctx, data.share, data.dtype)
        if requires_grad:
            self.requires_grad_(True)


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of secret modules, with torch's names: subclass it and define ``forward``."""

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    # ----- attributes -------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise ProtocolError(f"call Module.__init__() in {type(self).__name__}.__init__ before assigning attributes")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            self._forget(name)
            params[name] = value
        elif isinstance(value, Module):
            self._forget(name)
            modules[name] = value
        elif name in params:
            if value is not None and not isinstance(value, SecretTensor):
                raise ProtocolError(f"parameter {name!r} must be a secret tensor (mpc.nn.Parameter) or None")
            params[name] = value if value is None or isinstance(value, Parameter) else Parameter(value)
        elif name in buffers:
            buffers[name] = value
        elif name in modules:
            if value is not None:
                raise ProtocolError(f"sub-module {name!r} must be an mpc.nn.Module or None")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        for d in (self.__dict__, self._parameters, self._buffers, self._modules):
            d.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if name in self._parameters or name in self._buffers or name in self._modules:
            self._forget(name)
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name: str, param: SecretTensor | None) -> None:
        self._forget(name)
        self._parameters[name] = param if param is None or isinstance(param, Parameter) else Parameter(param)

    def register_buffer(self, name: str, tensor: SecretTensor | torch.Tensor | None) -> None:
        self._forget(name)
        self._buffers[name] = tensor

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise ProtocolError(f"{name!r}: an mpc.nn.Module is expected, got {type(module).__name__}")
        self._forget(name)
        self._modules[name] = module

    register_module = add_module

    # ----- traversal --------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop(0)
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            subs = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items() if c is not None]
            stack = subs + stack
        return

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for k, m in self._modules.items():
            if m is not None:
                yield k, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named(self, store: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Any]]:
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mname, m in mods:
            for k, v in getattr(m, store).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mname}.{k}" if mname else k), v

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        yield from self._named("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        yield from self._named("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Any]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> Module:
        m: Module = self
        for seg in target.split(".") if target else []:
            nxt = m._modules.get(seg)
            if nxt is None:
                raise AttributeError(f"{type(m).__name__} has no sub-module {seg!r} (in {target!r})")
            m = nxt
        return m

    # ----- modes and gradients ---------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        if not isinstance(mode, bool):
            raise ProtocolError("train(mode): mode must be a bool")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient (torch's default ``set_to_none=True``; False also sets None)."""
        for p in self.parameters():
            if getattr(p, "grad", None) is not None:
                p.grad = None

    # ----- state ----------------------------------------------------------------------------------
    def state_dict(self, prefix: str = "", keep_vars: bool = False) -> OrderedDict[str, Any]:
        """Parameters and buffers by torch's keys; values are the secret tensors (public counts stay public)."""
        out: OrderedDict[str, Any] = OrderedDict()
        for mname, m in self.named_modules(prefix.rstrip(".")):
            pre = f"{mname}." if mname else ""
            for k, v in m._parameters.items():
                if v is not None:
                    out[pre + k] = v
            for k, v in m._buffers.items():
                if v is not None:
                    out[pre + k] = v
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values into this module's tensors (in place); secret entries must be SecretTensors.

        A plaintext torch tensor for a secret entry is refused: share it first
        (``mpc.share(v, owner=k)``) or build the model with ``mpc.nn.from_torch``.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise ProtocolError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for k, v in state_dict.items():
            if k not in own:
                continue
            cur = own[k]
            if isinstance(cur, SecretTensor):
                if not isinstance(v, SecretTensor):
                    raise ProtocolError(
                        f"load_state_dict: {k!r} is secret; give a SecretTensor (mpc.share(value, owner=k)), "
                        f"not a {type(v).__name__}"
                    )
                assign_(cur, v)
            else:
                if isinstance(v, SecretTensor) or not isinstance(v, torch.Tensor) or v.shape != cur.shape:
                    raise ProtocolError(f"load_state_dict: {k!r} is a public tensor of shape {tuple(cur.shape)}")
                cur.copy_(v)
        return IncompatibleKeys(missing, unexpected)

    # ----- calling --------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ----- back to torch ----------------------------------------------------------------------------
    def to_torch_skeleton(self) -> torch.nn.Module:
        """A plaintext torch module of the same structure (weights not set); layers override it."""
        raise ProtocolError(
            f"{type(self).__name__} has no torch counterpart to reveal into: reveal its state_dict() "
            "tensors instead, or build the model with mpc.nn.from_torch"
        )

    def reveal(self, to: int | None = None) -> torch.nn.Module | None:
        """A plaintext torch module with this module's current weights, for party ``to`` (every party if None).

        All secret tensors are opened in one round (concatenated); the other
        parties get None.  Every party logs the opening.
        """
        state = self.state_dict()
        secret = [(k, v) for k, v in state.items() if isinstance(v, SecretTensor)]
        ctx = _context_of(self)
        skeleton = None
        if to is None or ctx.rank == to:
            template = self.__dict__.get("_torch_template")
            skeleton = copy.deepcopy(template) if template is not None else self.to_torch_skeleton()
        values: dict[str, torch.Tensor] = {}
        if secret:
            flat = cat([v.reshape(-1) for _, v in secret]) if len(secret) > 1 else secret[0][1].reshape(-1)
            opened = flat.reveal(to=to)
            if opened is not None:
                at = 0
                for k, v in secret:
                    n = v.numel()
                    values[k] = opened[at : at + n].reshape(v.shape)
                    at += n
        if skeleton is None:
            return None
        for k, v in state.items():
            if not isinstance(v, SecretTensor):
                values[k] = v.clone()
        tstate = skeleton.state_dict()
        for k in values:
            if k not in tstate:
                raise ProtocolError(f"reveal: the torch module has no entry {k!r}")
        with torch.no_grad():
            for k, v in values.items():
                tstate[k].copy_(v.to(tstate[k].dtype))
        return skeleton

    # ----- printing --------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({k}): " + repr(m).replace("\n", "\n  ") for k, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


def _context_of(module: Module) -> PartyContext:
    for v in module.state_dict().values():
        if isinstance(v, SecretTensor):
            return v.ctx
    return current_context()


class Sequential(Module):
    """``torch.nn.Sequential``: modules called in order."""

    def __init__(self, *args: Module) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for k, m in args[0].items():
                self.add_module(k, m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)

    def forward(self, input: Any) -> Any:
        for m in self._modules.values():
            input = m(input)
        return input

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, idx: int | slice) -> Any:
        mods = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(mods[idx]))
        return mods[idx][1]

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self

    def to_torch_skeleton(self) -> torch.nn.Module:
        return torch.nn.Sequential(OrderedDict((k, m.to_torch_skeleton()) for k, m in self._modules.items()))


class Identity(Module):
    """``torch.nn.Identity``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Any) -> Any:
        return input

    def to_torch_skeleton(self) -> torch.nn.Module:
        return torch.nn.Identity()


# ----- making parameters -------------------------------------------------------------------------------


def context(ctx: PartyContext | None) -> PartyContext:
    return current_context() if ctx is None else ctx


def make_parameter(
    ctx: PartyContext,
    name: str,
    shape: tuple[int, ...],
    owner: int | None,
    values: Mapping[str, torch.Tensor] | None,
    bound: float | None = None,
    fill: float | None = None,
    requires_grad: bool = True,
) -> SecretTensor:
    """One secret tensor of ``shape``: the owner's explicit value, its default init, or a joint draw.

    ``values`` (at the owner only) gives explicit plaintext values; otherwise
    the owner draws ``U(-bound, bound)`` from its CSPRNG, or uses the constant
    ``fill`` (public: BatchNorm's ones and zeros).  ``owner=None`` with a
    ``bound`` draws the weights jointly, so that no party knows them.
    """
    shape = tuple(int(s) for s in shape)
    if owner is None:
        if fill is not None:
            owner = 0  # a public constant: whoever shares it learns nothing
        else:
            from_joint = _joint(ctx, shape, bound)
            return Parameter(from_joint, requires_grad) if requires_grad else from_joint
    value = None
    if ctx.rank == owner:
        if values is not None:
            if name not in values:
                raise ProtocolError(f"party {owner} gave no value for the parameter {name!r}")
            value = values[name].detach().to("cpu")
            if tuple(value.shape) != shape:
                raise ProtocolError(f"the value for {name!r} has shape {tuple(value.shape)}, the layer needs {shape}")
            if not value.dtype.is_floating_point:
                raise ProtocolError(f"the value for {name!r} must be a floating-point tensor, got {value.dtype}")
            # a weight is held on the fixed-point grid: round it here, so that trained weights below the
            # resolution do not raise the "values become 0" warning meant for the user's data
            scale = float(ctx.encoder.scale)
            value = (torch.round(value.double() * scale) / scale).to(value.dtype)
        elif fill is not None:
            value = torch.full(shape, float(fill), dtype=torch.float32)
        else:
            assert bound is not None
            # drawn on the fixed-point grid: a default weight is what the secret model holds, and no draw
            # below the resolution triggers the "values become 0" warning meant for the user's own data
            scale = float(ctx.encoder.scale)
            value = (torch.round(uniform(ctx.local_prg, shape, bound).double() * scale) / scale).float()
    t = share(value, owner=owner, ctx=ctx)
    return Parameter(t, requires_grad) if requires_grad else t


def _joint(ctx: PartyContext, shape: tuple[int, ...], bound: float | None) -> SecretTensor:
    if bound is None:
        raise ProtocolError("owner=None draws weights jointly and needs a uniform initialisation")
    u = joint_uniform(ctx, shape)  # U[0, 1) on the grid, known to no party
    return u.mul(2.0 * bound).sub(bound)
