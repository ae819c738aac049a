"""Where in the user's program an operation was called: the first frame outside the toolkit and torch."""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["user_call_site", "warn_at_user"]

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
    warnings.warn_explicit(f"{message} (at {os.path.basename(filename)}:{lineno} in {func})", category, filename, lineno)
    return filename, lineno, func
