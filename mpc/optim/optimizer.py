"""``mpc.optim.Optimizer``: torch's optimizer protocol on secret parameters.

Parameters and their gradients are secret tensors; hyperparameters (lr,
momentum, betas, ...) are public.  ``step()`` concatenates every parameter of
a group into one flat secret vector, so each step costs a fixed number of
rounds whatever the number of tensors (each public scalar product is one
truncation round; the whole vector travels in it), then writes the new values
back into the same parameter objects (``mpc.nn.module.assign_``), outside
autograd.  A parameter whose ``grad`` is None is skipped, as in torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ProtocolError
from ..functional import cat
from ..nn.module import assign_, no_grad
from ..tensor import SecretTensor

__all__ = ["Optimizer", "flat", "split"]


def flat(tensors: list[SecretTensor]) -> SecretTensor:
    """One flat secret vector of several tensors (local)."""
    return cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)


def split(vector: SecretTensor, like: list[SecretTensor]) -> list[SecretTensor]:
    """The pieces of a flat vector in the shapes of ``like`` (local)."""
    out, at = [], 0
    for t in like:
        n = t.numel()
        out.append(vector[at : at + n].reshape(t.shape))
        at += n
    return out


def expand_public(values: list[float], like: list[SecretTensor]) -> torch.Tensor:
    """A public float64 vector with ``values[i]`` repeated over the elements of ``like[i]``."""
    return torch.cat([torch.full((t.numel(),), float(v), dtype=torch.float64) for v, t in zip(values, like)])


class Optimizer:
    """Base class: ``param_groups`` (list of dicts with ``params`` and hyperparameters), ``state``, ``zero_grad``."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[int, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ProtocolError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict[str, Any]) -> None:
        if not isinstance(group, dict) or "params" not in group:
            raise ProtocolError("a parameter group is a dict with a 'params' entry")
        params = group["params"]
        params = [params] if isinstance(params, SecretTensor) else list(params)
        for p in params:
            if not isinstance(p, SecretTensor):
                raise ProtocolError(
                    f"{type(self).__name__} optimizes secret tensors (mpc.nn parameters), got a {type(p).__name__}"
                )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ProtocolError("some parameters appear in more than one parameter group")
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}, "params": params}
        self._check(full)
        self.param_groups.append(full)

    def _check(self, group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters (subclasses)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every gradient (``set_to_none=False`` also sets None: a secret zero would cost a sharing)."""
        for g in self.param_groups:
            for p in g["params"]:
                if getattr(p, "grad", None) is not None:
                    p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``{"state": {i: {...}}, "param_groups": [{hyperparameters..., "params": [i, ...]}]}``.

        Parameters are numbered 0, 1, ... over the groups in order; ``state[i]``
        holds parameter i's secret buffers (``SecretTensor`` s: SGD's
        ``momentum_buffer``, Adam's ``m`` and ``v``) and public counters (Adam's
        ``step``).  The values are the optimizer's own objects, not copies.
        """
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[k]: dict(v) for k, v in self.state.items() if k in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the hyperparameters and state of ``state_dict`` (``state_dict()``'s layout) for these parameters.

        The groups must have as many parameters as this optimizer's; every
        secret buffer must have its parameter's shape and party context.
        """
        name = type(self).__name__
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            have = len(groups) if isinstance(groups, list) else "no"
            raise ProtocolError(f"{name}.load_state_dict: {have} parameter groups given, this optimizer has "
                                f"{len(self.param_groups)}")  # fmt: skip
        params: list[SecretTensor] = []
        for n, (mine, given) in enumerate(zip(self.param_groups, groups)):
            if len(given.get("params", ())) != len(mine["params"]):
                raise ProtocolError(f"{name}.load_state_dict: group {n} has {len(given.get('params', ()))} "
                                    f"parameters, this optimizer's has {len(mine['params'])}")  # fmt: skip
            params += mine["params"]
        new_groups = []
        for mine, given in zip(self.param_groups, groups):
            full = {**{k: v for k, v in given.items() if k != "params"}, "params": mine["params"]}
            self._check(full)
            new_groups.append(full)
        state: dict[int, dict[str, Any]] = {}
        for i, st in state_dict.get("state", {}).items():
            if not isinstance(i, int) or not 0 <= i < len(params):
                raise ProtocolError(f"{name}.load_state_dict: state of an unknown parameter {i!r}")
            p = params[i]
            for k, v in st.items():
                if isinstance(v, SecretTensor) and (tuple(v.shape) != tuple(p.shape) or v.ctx is not p.ctx):
                    raise ProtocolError(f"{name}.load_state_dict: state {k!r} of parameter {i} has shape "
                                        f"{tuple(v.shape)} (or another party context), the parameter "
                                        f"{tuple(p.shape)}")  # fmt: skip
            state[id(p)] = dict(st)
        self.param_groups = new_groups
        self.state = state

    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            raise ProtocolError(f"{type(self).__name__}.step: closures are not supported; call the loss first")
        with no_grad():
            for group in self.param_groups:
                live = [p for p in group["params"] if getattr(p, "grad", None) is not None]
                if live:
                    new = self._update(group, live)
                    for p, v in zip(live, split(new, live)):
                        assign_(p, v)
        return None

    def _update(self, group: dict[str, Any], params: list[SecretTensor]) -> SecretTensor:
        raise NotImplementedError


def _number(v: Any, name: str, what: str, low: float = 0.0, high: float | None = None) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or v < low or (high is not None and v > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ProtocolError(f"{what}: {name} must be a number in {rng}, got {v!r}")
    return float(v)
