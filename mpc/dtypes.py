"""The one table of tensor dtypes the toolkit names by number (share metadata and the wire header)."""

from __future__ import annotations

import torch

__all__ = ["DTYPE_CODES", "CODE_DTYPES"]

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.int64: 1,
    torch.int32: 2,
    torch.int16: 3,
    torch.int8: 4,
    torch.uint8: 5,
    torch.bool: 6,
    torch.float64: 7,
    torch.float32: 8,
    torch.float16: 9,
    torch.bfloat16: 10,
}
CODE_DTYPES: dict[int, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}
