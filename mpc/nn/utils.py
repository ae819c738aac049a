"""``mpc.nn.utils.clip_grad_value_``: clamp every gradient to ``[-clip_value, clip_value]`` (exact, 4 rounds).

Useful before ``Adam`` (``mpc.optim``), whose secret rsqrt is accurate for
gradients of RMS up to ``4`` at the default ``grad_scale``, and to keep
every product in the fixed-point range.  All gradients are clamped in one
batched comparison.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ProtocolError
from ..functional import cat
from ..tensor import SecretTensor
from .module import no_grad

__all__ = ["clip_grad_value_"]


def clip_grad_value_(parameters: SecretTensor | Iterable[SecretTensor], clip_value: float) -> None:
    """torch's ``clip_grad_value_`` on secret gradients, in place (parameters without a gradient are skipped)."""
    if not isinstance(clip_value, int | float) or isinstance(clip_value, bool) or not clip_value > 0:
        raise ProtocolError(f"clip_grad_value_: clip_value must be a positive number, got {clip_value!r}")
    params = [parameters] if isinstance(parameters, SecretTensor) else list(parameters)
    grads = [(p, p.grad) for p in params if getattr(p, "grad", None) is not None]
    if not grads:
        return
    with no_grad():
        flat = cat([g.reshape(-1) for _, g in grads]) if len(grads) > 1 else grads[0][1].reshape(-1)
        clipped = flat.clamp(-float(clip_value), float(clip_value))
        at = 0
        for p, g in grads:
            n = g.numel()
            p.grad = clipped[at : at + n].reshape(g.shape)
            at += n
