"""Where in the user's program an operation was called: the first frame outside the toolkit and torch."""

from __future__ import annotations

import os
import sys
import warnings

import torch

__all__ = ["user_call_site", "warn_at_user", "OncePerSite", "lossy_constants"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = tuple(os.path.join(_ROOT, d) + os.sep for d in ("mpc", "protocols", "parties"))
_SKIP = ("torch" + os.sep, "contextlib.py", "runpy.py", "threading.py")


def _internal(filename: str) -> bool:
    return filename.startswith(_INTERNAL) or any(s in filename for s in _SKIP)


def user_call_site() -> tuple[str, int, str]:
    """``(file, line, function)`` of the innermost frame that is not the toolkit's or torch's own."""
    f = sys._getframe(1)
    last = None
    while f is not None:
        last = f
        if not _internal(os.path.abspath(f.f_code.co_filename)):
            return f.f_code.co_filename, f.f_lineno, f.f_code.co_name
        f = f.f_back
    assert last is not None
    return last.f_code.co_filename, last.f_lineno, last.f_code.co_name


def warn_at_user(message: str, category: type[Warning]) -> tuple[str, int, str]:
    """Issue a warning attributed to the user's call site; returns that site."""
    filename, lineno, func = user_call_site()
    warnings.warn_explicit(
        f"{message} (at {os.path.basename(filename)}:{lineno} in {func})", category, filename, lineno
    )
    return filename, lineno, func


class OncePerSite:
    """Warnings issued once per user call site and kind (one per party context)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int, str]] = set()

    def warn(self, kind: str, message: str, category: type[Warning]) -> None:
        filename, line, _ = user_call_site()
        key = (filename, line, kind)
        if key in self._seen:
            return
        self._seen.add(key)
        warn_at_user(message, category)


def lossy_constants(value, scale: int):
    """The first element of a public constant that fixed point with ``scale`` rounds by more than 1%, or None."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if not t.is_floating_point() or not t.numel():
        return None
    t = t.detach().to(torch.float64)
    lost = (torch.round(t * scale) / scale - t).abs() > 0.01 * t.abs()
    if not bool(lost.any()):
        return None
    return float(t[lost].reshape(-1)[0])
