"""Losses with torch's names and ``reduction`` ('mean', 'sum', 'none'); targets may be secret or public.

* ``MSELoss``: ``(x - y)^2``; one Beaver square (2 rounds).
* ``BCEWithLogitsLoss``: the stable form
  ``max(x, 0) - x y + log(1 + exp(-|x|))`` with ``max(x, 0) = (x + |x|) / 2``:
  one secret ``abs`` (4 rounds), a clamp to [-12, 0] (4), ``exp`` (4 rounds) and
  ``log`` on ``[1, 2]`` (9 rounds), one product with the target.  Error per
  element: at most about 3e-3 (log's 2e-3 plus exp's 1e-3 + 2^-14 carried
  through ``d log(1 + e)/de <= 1``); below that in practice (the tests bound
  it by 3e-3), for logits of any size in the fixed-point range.  ``weight``
  and ``pos_weight`` (public or secret) as in torch.
* ``CrossEntropyLoss``: ``-sum(t * log_softmax(x, 1))`` per sample, for class
  indices (public: a local one-hot; secret: one-hot by ``n_classes`` secret
  equalities, 4 rounds) or class probabilities / one-hot targets of the
  input's shape; ``weight`` (public, with public targets), ``label_smoothing``.
  Accuracy: log_softmax's abs 2e-3 per element on logits in [-30, 30].
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ProtocolError
from ..functional import log_softmax
from ..tensor import SecretTensor
from .module import Module

__all__ = ["MSELoss", "BCEWithLogitsLoss", "CrossEntropyLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: SecretTensor, reduction: str) -> SecretTensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ProtocolError(f"{type(self).__name__}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def _check_same_shape(what: str, x: Any, y: Any) -> None:
    if tuple(x.shape) != tuple(y.shape):
        raise ProtocolError(f"{what}: the input {tuple(x.shape)} and the target {tuple(y.shape)} must have one shape")


class MSELoss(_Loss):
    """``torch.nn.MSELoss(reduction='mean')``."""

    def forward(self, input: SecretTensor, target: SecretTensor | torch.Tensor) -> SecretTensor:
        _check_same_shape("MSELoss", input, target)
        return _reduce((input - target).square(), self.reduction)


class BCEWithLogitsLoss(_Loss):
    """``torch.nn.BCEWithLogitsLoss(weight=None, reduction='mean', pos_weight=None)``."""

    def __init__(self, weight: Any = None, reduction: str = "mean", pos_weight: Any = None) -> None:
        super().__init__(reduction)
        self.weight, self.pos_weight = weight, pos_weight

    def forward(self, input: SecretTensor, target: SecretTensor | torch.Tensor) -> SecretTensor:
        _check_same_shape("BCEWithLogitsLoss", input, target)
        x, y = input, target
        a = x.abs()
        # log(1 + exp(-|x|)), exp's argument kept in its domain [-12, 0] (exp(-12) ~ 6e-6 stands for less)
        softplus_neg_abs = ((-a).clamp(min=-12.0).exp() + 1.0).log()
        if self.pos_weight is None:
            # max(x, 0) - x y + log(1 + exp(-|x|)), with max(x, 0) = (x + |x|) / 2
            loss = (x + a) * 0.5 - x * y + softplus_neg_abs
        else:
            # torch: (1 - y) x + (1 + (pw - 1) y) (log(1 + exp(-|x|)) + max(-x, 0))
            lw = (y * (self.pos_weight - 1)) + 1
            loss = x - x * y + lw * (softplus_neg_abs + (a - x) * 0.5)
        if self.weight is not None:
            loss = loss * self.weight
        return _reduce(loss, self.reduction)


class CrossEntropyLoss(_Loss):
    """``torch.nn.CrossEntropyLoss(weight=None, reduction='mean', label_smoothing=0.0)``.

    The input is (N, C) or (N, C, d1, ...); the target holds class indices
    ((N,) or (N, d1, ...), integer, public or secret) or class probabilities
    of the input's shape (float, public or secret: one-hot targets go here).
    ``ignore_index`` is not supported (it would need a secret count).
    """

    def __init__(self, weight: torch.Tensor | None = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> None:  # fmt: skip
        super().__init__(reduction)
        if size_average is not None or reduce is not None:
            raise ProtocolError("CrossEntropyLoss: size_average and reduce are deprecated in torch; use reduction")
        if weight is not None and (not isinstance(weight, torch.Tensor) or weight.dim() != 1):
            raise ProtocolError("CrossEntropyLoss: weight must be a public 1-d torch tensor of class weights")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ProtocolError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.weight, self.ignore_index, self.label_smoothing = weight, ignore_index, float(label_smoothing)

    def forward(self, input: SecretTensor, target: SecretTensor | torch.Tensor) -> SecretTensor:
        if not isinstance(input, SecretTensor) or input.dim() < 1:
            raise ProtocolError("CrossEntropyLoss: the input must be a secret tensor of shape (N, C) or (N, C, ...)")
        x = input if input.dim() > 1 else input.unsqueeze(0)
        if not isinstance(target, SecretTensor) and not isinstance(target, torch.Tensor):
            raise ProtocolError(f"CrossEntropyLoss: the target must be a tensor, got {type(target).__name__}")
        t = target if input.dim() > 1 else target.unsqueeze(0)
        c = x.shape[1]
        indices = not t.dtype.is_floating_point
        if self.weight is not None and self.weight.numel() != c:
            raise ProtocolError(f"CrossEntropyLoss: weight has {self.weight.numel()} entries for {c} classes")
        if indices:
            want = (x.shape[0], *x.shape[2:])
            if tuple(t.shape) != want:
                raise ProtocolError(f"CrossEntropyLoss: class indices of shape {want} expected, got {tuple(t.shape)}")
            probs = self._one_hot(t, c, x.dim())
        else:
            _check_same_shape("CrossEntropyLoss", x, t)
            probs = t
        if self.label_smoothing:
            probs = probs * (1.0 - self.label_smoothing) + self.label_smoothing / c
        wshape = [1] * x.dim()
        wshape[1] = c
        logp = log_softmax(x, 1)
        per_class = probs * logp
        if self.weight is not None:
            if isinstance(target, SecretTensor) and indices:
                raise ProtocolError(
                    "CrossEntropyLoss: class weights with secret class indices would need a secret division; "
                    "give public indices or one-hot targets"
                )
            per_class = per_class * self.weight.to(torch.float64).reshape(wshape)
        loss = -per_class.sum(1)
        if self.reduction == "mean" and indices and self.weight is not None:
            # torch: sum_i w[y_i] l_i / sum_i w[y_i] (public: the indices are public here)
            denom = float(self.weight.to(torch.float64)[t.reshape(-1).long()].sum())
            return loss.sum() * (1.0 / denom)
        return _reduce(loss, self.reduction)

    def _one_hot(self, t: SecretTensor | torch.Tensor, c: int, ndim: int) -> SecretTensor | torch.Tensor:
        """One-hot along dimension 1: public indices locally, secret ones by c secret equalities (4 rounds)."""
        if isinstance(t, torch.Tensor):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
                raise ProtocolError(f"CrossEntropyLoss: class indices must be in 0..{c - 1}")
            return torch.nn.functional.one_hot(t.long(), c).movedim(-1, 1).to(torch.float64)
        classes = torch.arange(c, dtype=torch.float64).reshape(1, c, *([1] * (ndim - 2)))
        rep = t.unsqueeze(1).expand(t.shape[0], c, *t.shape[1:])
        return rep == classes.expand(tuple(rep.shape))
