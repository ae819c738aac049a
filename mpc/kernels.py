"""Matrix products and convolutions in Z_2^64, exact, by the faster of two kernels on this machine.

torch's int64 ``matmul`` and ``conv2d`` wrap modulo 2^64, as shares need, but
run scalar code: no BLAS, and no vector instruction multiplies 64-bit integers
before AVX-512.  On a 2-core AMD EPYC (AVX2) a 512 x 512 x 512 int64 product
took 377-482 ms against 11.5 ms in float64.  The other kernel here uses
float64 BLAS exactly:

* split each operand into ``L`` signed limbs of ``w`` bits,
  ``x = sum_i x_i 2^(w i)`` modulo 2^64 with ``x_i`` in ``[-2^(w-1), 2^(w-1))``
  (the top limb: what is left, smaller);
* ``x @ y = sum_{i+j} (x_i @ y_j) 2^(w (i+j))`` modulo 2^64, where a term whose
  shift is 64 or more vanishes: 6 float64 products for ``L = 3``;
* each ``x_i @ y_j`` is a sum of ``K`` products (``K``: the inner dimension, or
  ``C/groups kh kw`` for a convolution) of at most ``2^(2w-2)`` each, so every
  partial sum, in any order and with or without fused multiply-adds, is an
  integer of at most ``K 2^(2w-2) <= 2^52`` in magnitude: exact in float64.
  ``w = (54 - ceil(log2 K)) // 2``: 22 bits (3 limbs) up to K = 2^10, 21 (4
  limbs, 10 products) up to 2^12.

Which kernel is faster depends on the machine (an AVX-512 CPU multiplies int64
in vectors) and on the shape (thin products pay the split), so the choice is
measured: the first call of each shape (operation, operand shapes, parameters)
with at least ``MIN_MACS`` multiply-adds runs both kernels, checks that they
agree bit for bit, and keeps the faster for that shape in this process
(``choices()`` lists them).  Both give the same integers, so parties that
chose differently still agree.  If the two ever disagree (a BLAS that is not
IEEE float64), the float64 kernel is switched off for the process with a
warning, and the int64 result is used.

``KERNEL`` forces one kernel: ``"auto"`` (the default), ``"int64"`` or
``"limbs"`` (the float64 one, for every shape it can take; tests and
benchmarks).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .ring import BITS, wrap_int

__all__ = ["KERNEL", "MIN_MACS", "choices", "conv2d", "limb_plan", "matmul", "weighted_rows"]

KERNEL = "auto"
# Below this many multiply-adds the split costs more than it saves (128 x 128 x 10: 0.37 ms int64, 0.53 limbs).
MIN_MACS = 1 << 18
# Exactness bound: every partial sum of limb products at most 2^EXACT_BITS (float64 holds integers to 2^53).
EXACT_BITS = 52
MAX_PRODUCTS = 10  # more limb products than this (inner dimensions over 2^12) and int64 is left alone
MAX_CHOICES = 4096  # shapes remembered per process

_choice: dict[tuple, str] = {}
_broken = False  # set if the float64 kernel ever disagreed with the int64 one


def limb_plan(k: int) -> tuple[int, int, list[tuple[int, int]]] | None:
    """``(w, L, pairs)`` for an inner dimension ``k``: limb width, limb count and the limb pairs whose product
    survives modulo 2^64; None where the float64 kernel would need more than ``MAX_PRODUCTS`` products."""
    lg = max(0, math.ceil(math.log2(max(k, 1))))
    w = (EXACT_BITS + 2 - lg) // 2
    if w < 8:
        return None
    n = math.ceil(BITS / w)
    pairs = [(i, j) for i in range(n) for j in range(n) if w * (i + j) < BITS]
    if len(pairs) > MAX_PRODUCTS:
        return None
    return w, n, pairs


def _limbs(x: torch.Tensor, w: int, n: int) -> list[torch.Tensor]:
    """``x`` as ``n`` signed limbs of ``w`` bits (the last one: the rest), float64; ``sum x_i 2^(w i) = x``
    modulo 2^64."""
    half, mask = 1 << (w - 1), (1 << w) - 1
    out = []
    for _ in range(n - 1):
        low = ((x + half) & mask) - half
        out.append(low.to(torch.float64))
        x = (x - low) >> w  # exact: the low w bits of x - low are 0; the shift is arithmetic
    out.append(x.to(torch.float64))
    return out


def _by_limbs(op: Callable, a: torch.Tensor, b: torch.Tensor, plan: tuple[int, int, list[tuple[int, int]]]):
    w, n, pairs = plan
    la, lb = _limbs(a, w, n), _limbs(b, w, n)
    acc = None
    for i, j in pairs:
        p = op(la[i], lb[j]).to(torch.int64)  # exact: |p| <= 2^52
        if i + j:
            p.mul_(wrap_int(1 << (w * (i + j))))  # wraps modulo 2^64
        acc = p if acc is None else acc.add_(p)
    return acc


def _check_kernel() -> None:
    if KERNEL not in ("auto", "int64", "limbs"):
        raise ValueError(f"mpc.kernels.KERNEL must be 'auto', 'int64' or 'limbs', not {KERNEL!r}")


def _run(key: tuple, op: Callable, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    global _broken
    _check_kernel()
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        return op(a, b)
    plan = limb_plan(k) if not _broken else None
    if KERNEL == "int64" or plan is None or k == 0:
        return op(a, b)
    if KERNEL == "limbs":
        return _by_limbs(op, a, b, plan)
    chosen = _choice.get(key)
    if chosen == "limbs":
        return _by_limbs(op, a, b, plan)
    if chosen is not None:
        return op(a, b)
    t0 = time.perf_counter()
    out = op(a, b)
    t_int = time.perf_counter() - t0
    if out.numel() * k < MIN_MACS:
        chosen = "int64"
    else:
        t0 = time.perf_counter()
        alt = _by_limbs(op, a, b, plan)
        t_limbs = time.perf_counter() - t0
        if not torch.equal(alt, out):
            _broken = True
            warnings.warn(
                "mpc.kernels: float64 products of limbs disagreed with torch's int64 kernel (a BLAS that is not "
                "IEEE float64?); this process uses the int64 kernel from now on",
                RuntimeWarning,
                stacklevel=3,
            )
            return out
        chosen = "limbs" if t_limbs < t_int else "int64"
    if len(_choice) < MAX_CHOICES:
        _choice[key] = chosen
    return out


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (``torch.matmul`` semantics) modulo 2^64 for int64 operands; other dtypes: plain ``a @ b``."""
    k = a.shape[-1] if a.dim() else 0
    return _run(("mm", a.shape, b.shape), torch.matmul, a, b, k)


def conv2d(a: torch.Tensor, w: torch.Tensor, **kw) -> torch.Tensor:
    """``F.conv2d(a, w, **kw)`` modulo 2^64 for int64 operands; other dtypes: plain ``F.conv2d``."""

    def op(x, y):
        return F.conv2d(x, y, **kw)

    k = w.shape[1] * w.shape[2] * w.shape[3] if w.dim() == 4 else 0
    key = ("conv2d", a.shape, w.shape, *sorted((name, str(v)) for name, v in kw.items()))
    return _run(key, op, a, w, k)


def _scaled_adds(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = torch.empty(w.shape[0], t.shape[1], dtype=torch.int64)
    for i, row in enumerate(w.tolist()):
        acc = out[i]
        torch.mul(t[0], row[0], out=acc)
        for j in range(1, len(row)):
            if row[j]:
                acc.add_(t[j], alpha=row[j])
    return out


def weighted_rows(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``w @ t`` modulo 2^64 for a public int64 matrix ``w`` (M, K) of few rows and ``t`` (K, N): by ``matmul``
    or by ``M K`` in-place scaled additions of rows, whichever this process measured faster for the shape
    (seven tables over 45 rows of 10^5 elements: 151 ms against 58 on the AMD EPYC of the README's table, 9.9
    against 23.5 on an earlier machine)."""
    _check_kernel()
    if w.dtype != torch.int64 or t.dtype != torch.int64 or w.dim() != 2 or t.dim() != 2 or KERNEL != "auto":
        return matmul(w, t)
    key = ("rows", w.shape, t.shape)
    chosen = _choice.get(key)
    if chosen == "adds":
        return _scaled_adds(w, t)
    if chosen is not None:
        return matmul(w, t)
    t0 = time.perf_counter()
    out = matmul(w, t)
    t_mm = time.perf_counter() - t0
    if w.numel() * t.shape[1] < MIN_MACS:
        chosen = "matmul"
    else:
        t0 = time.perf_counter()
        alt = _scaled_adds(w, t)
        t_adds = time.perf_counter() - t0
        if not torch.equal(alt, out):  # both are int64 arithmetic: a disagreement is a bug here
            raise AssertionError("mpc.kernels.weighted_rows: the two kernels disagree")
        chosen = "adds" if t_adds < t_mm else "matmul"
    if len(_choice) < MAX_CHOICES:
        _choice[key] = chosen
    return out


def choices() -> dict[tuple, str]:
    """The kernel chosen for each shape measured so far in this process (a copy)."""
    return dict(_choice)
