"""Fixed-point encoding of real tensors into Z_2^64.

A real ``v`` is stored as ``round(v * 2^f)`` in int64 (``f`` fractional bits,
16 by default).  Ranges, for ``f`` fractional bits:

* **documented range** ``|v| < 2^(62 - 2f)`` (2^30 ~ 1.07e9 for f = 16).  Inputs
  are refused outside it, and every intermediate value, including every product
  of two secret values, must stay inside it: that is what the truncation
  protocol needs to be exact (see ``protocols.truncation``).
* resolution ``2^-f`` (1.5e-5 for f = 16).

Integer and boolean tensors are encoded the same way (as reals with no
fractional part) and decoded back to their dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import EncodingError

__all__ = ["FixedPoint"]


@dataclass(frozen=True)
class FixedPoint:
    """Encoder for ``frac_bits`` fractional bits in Z_2^64."""

    frac_bits: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits <= 28:
            raise EncodingError(f"frac_bits must be an integer in [0, 28], got {self.frac_bits!r}")

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    @property
    def bound(self) -> float:
        """Largest magnitude accepted for an input (exclusive): 2^(62 - 2f)."""
        return float(2 ** (62 - 2 * self.frac_bits))

    def encode(self, value: torch.Tensor | float | int, what: str = "value") -> torch.Tensor:
        """Encode a real, integer or boolean tensor; refuse NaN, inf and out-of-range values."""
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if t.is_complex():
            raise EncodingError(f"{what}: complex tensors cannot be encoded")
        if t.dtype == torch.bool or not t.is_floating_point():
            t64 = t.to(torch.int64)
            if t64.numel():
                if int(t64.abs().max()) >= self.bound:
                    raise EncodingError(self._range_message(what))
            return t64 * self.scale
        t64 = t.to(torch.float64)
        if t64.numel():
            if not bool(torch.isfinite(t64).all()):
                raise EncodingError(f"{what}: contains NaN or infinity, which cannot be encoded")
            if float(t64.abs().max()) >= self.bound:
                raise EncodingError(self._range_message(what))
        return torch.round(t64 * self.scale).to(torch.int64)

    def _range_message(self, what: str) -> str:
        # Names the allowed range, never the offending value (error texts must not leak data).
        return (
            f"{what}: has values outside the fixed-point range |v| < 2^{62 - 2 * self.frac_bits} "
            f"= {self.bound:.4g} (frac_bits={self.frac_bits}); rescale the data or lower frac_bits"
        )

    def decode(self, ring: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decode ring elements to ``dtype`` (floats keep fractions, ints round, bools threshold)."""
        real = ring.to(torch.float64) / self.scale
        if dtype == torch.bool:
            return real > 0.5
        if dtype.is_floating_point:
            return real.to(dtype)
        return torch.round(real).to(dtype)

    def encode_public(self, value: torch.Tensor | float | int) -> torch.Tensor:
        """Encode a public constant (same checks: a public operand must fit too)."""
        return self.encode(value, what="public operand")

    @staticmethod
    def is_integral(value: torch.Tensor | float | int) -> bool:
        """Whether a public multiplier needs no truncation (integer or boolean dtype)."""
        if isinstance(value, bool | int):
            return True
        if isinstance(value, float):
            return False
        return not value.is_floating_point()

    def ulp(self) -> float:
        return math.ldexp(1.0, -self.frac_bits)
