"""The ``plaintext`` family: the same program with every value in the clear, in float64. NOT SECURE.

For debugging a program before a secure run, and as the tests' reference.
Every party holds every value (``PlainShare``); inputs travel in the clear to
every party; nothing is secret; no dealer runs.  Results equal the secure
families' up to fixed-point error.

What it adds is a report of everything fixed point would break, each a
``FixedPointWarning`` naming the operation, the offending value and the call
site in the user's script (once per call site and kind):

* an intermediate value outside the fixed-point range ``|v| < 2^(62 - 2f)``
  (the range every value must keep for products and truncation to be exact);
* a nonlinear function called outside its documented domain
  (``protocols.nonlinear``'s table: the secure result would be the documented
  saturation value, not the true one);
* a public constant that fixed point rounds by more than 1% (or to zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mpc.callsite import lossy_constants, user_call_site, warn_at_user
from mpc.context import Expect, PartyContext
from mpc.errors import FixedPointWarning, ProtocolError
from mpc.shares import BinaryShare, PlainShare, Share

from .correlated import OP_CONV2D, OP_MATMUL, OP_MUL, _bilinear
from .family import ProtocolFamily
from .sharing import input_tensor, recv_metadata, send_metadata

__all__ = ["PlaintextFamily", "DOMAINS", "NOT_SECURE"]

_EMPTY = torch.empty(0, dtype=torch.uint8)

NOT_SECURE = (
    "the plaintext protocol family is NOT SECURE: every party holds every value in the clear; "
    "use it to dry-run a program, then run it with protocol='additive-dealer'"
)

# Documented domains of the nonlinear functions (protocols.nonlinear's table): (low, high, on |x|).
DOMAINS: dict[str, tuple[float, float, bool]] = {
    "exp": (-12.0, 10.0, False),
    "exp_nonpositive": (float("-inf"), 2.0**-16, False),
    "log": (1e-3, 1e4, False),
    "reciprocal": (1e-2, 1e4, True),
    "sqrt": (1e-3, 1e4, False),
    "rsqrt": (1e-3, 1e4, False),
    "sqrt_wide": (2.0**-16, 2.0**30, False),
    "softmax": (-30.0, 30.0, False),
    "log_softmax": (-30.0, 30.0, False),
}


class PlaintextFamily(ProtocolFamily):
    """Values in the clear at every party (float64), exact arithmetic, fixed-point problems reported."""

    name = "plaintext"
    min_parties = 2
    needs_dealer = False
    secure = False
    lowest = float("-inf")

    def __init__(self) -> None:
        self._reported: set[tuple[str, int, str, str]] = set()

    # ----- reporting ----------------------------------------------------------------------------------
    def report(self, op: str, kind: str, message: str) -> None:
        """One ``FixedPointWarning`` per call site, operation and kind of problem."""
        filename, line, _ = user_call_site()
        key = (filename, line, op, kind)
        if key in self._reported:
            return
        self._reported.add(key)
        warn_at_user(f"plaintext dry run: {op}: {message}", FixedPointWarning)

    def check_range(self, ctx: PartyContext, op: str, value: torch.Tensor) -> torch.Tensor:
        bound = ctx.encoder.bound
        if value.numel():
            big = float(value.abs().max())
            if not math.isfinite(big) or big >= bound:
                self.report(
                    op, "range", f"a value of magnitude {big:.4g} is outside the fixed-point range |v| < {bound:.4g} "
                    f"(frac_bits={ctx.config.frac_bits}): a secure run would return garbage; rescale the data"
                )  # fmt: skip
        return value

    def check_domain(self, op: str, value: torch.Tensor) -> bool:
        """Report a call outside ``op``'s documented domain; whether there was one."""
        lo, hi, on_abs = DOMAINS[op]
        if not value.numel():
            return False
        v = value.abs() if on_abs else value
        bad = (v < lo) | (v > hi)
        if bool(bad.any()):
            worst = float(value[bad].reshape(-1)[0])
            where = f"|x| in [{lo:g}, {hi:g}]" if on_abs else f"[{lo:g}, {hi:g}]"
            self.report(
                op, "domain", f"called with {worst:.6g}, outside its documented domain {where}: the secure "
                "result there is the documented saturation value (see protocols.nonlinear)"
            )  # fmt: skip
            return True
        return False

    def _out(self, ctx: PartyContext, op: str, value: torch.Tensor) -> PlainShare:
        return PlainShare(self.check_range(ctx, op, value))

    # ----- encoding -------------------------------------------------------------------------------------
    def encode_public(self, ctx: PartyContext, value: Any, what: str = "public operand") -> torch.Tensor:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        ctx.encoder.encode(t, what=what)  # the same refusals as a secure run: NaN, inf, out of range
        lost = lossy_constants(t, ctx.encoder.scale)
        if lost is not None:
            scale = ctx.encoder.scale
            self.report(
                what, "rounding", f"the public constant {lost:.6g} becomes {round(lost * scale) / scale:.6g} "
                f"in fixed point with {ctx.config.frac_bits} fractional bits (off by more than 1%)"
            )  # fmt: skip
        return t.detach().to(torch.float64)

    def decode(self, ctx: PartyContext, opened: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if dtype == torch.bool:
            return opened > 0.5
        if dtype.is_floating_point:
            return opened.to(dtype)
        return torch.round(opened).to(dtype)

    def is_exact_multiplier(self, value: Any) -> bool:
        return True

    def scale_int(self, ctx: PartyContext, x: Share) -> Share:
        return x

    # ----- sharing and opening -----------------------------------------------------------------------------
    def share_input(self, ctx: PartyContext, value: Any, owner: int) -> tuple[Share, torch.dtype]:
        """The owner sends its value in the clear (after the metadata every family sends): NOT secret."""
        t = input_tensor(ctx, value, owner)
        peers = [j for j in range(ctx.world_size) if j != owner]
        if t is not None:
            ctx.encoder.encode(t, what=f"input of party {owner}")  # the same refusals as secure runs
            v = t.to(torch.float64).contiguous()
            send_metadata(ctx, t, owner)
            ctx.comm.exchange("share:clear", {j: v for j in peers}, {})
            return PlainShare(v), t.dtype
        shape, dtype = recv_metadata(ctx, owner)
        v = ctx.comm.exchange("share:clear", {}, {owner: Expect(shape, torch.float64)})[owner]
        return PlainShare(v), dtype

    def _sync(self, ctx: PartyContext, op: str) -> None:
        """An empty exchange with every peer: nothing to open, but the transcript digests are compared."""
        peers = [j for j in range(ctx.world_size) if j != ctx.rank]
        ctx.comm.exchange(op, {j: _EMPTY for j in peers}, {j: Expect((0,), torch.uint8) for j in peers})

    def open_all(self, ctx: PartyContext, shares: Sequence[Share], op: str) -> list[torch.Tensor]:
        self._sync(ctx, op)
        return [s.value.clone() for s in shares]  # type: ignore[attr-defined]

    def open_to(self, ctx: PartyContext, share: Share, to: int, op: str) -> torch.Tensor | None:
        n = ctx.world_size
        if not isinstance(to, int) or isinstance(to, bool) or not 0 <= to < n:
            raise ProtocolError(f"reveal target must be a party id in 0..{n - 1}, got {to!r}")
        self._sync(ctx, op)
        return share.value.clone() if ctx.rank == to else None  # type: ignore[attr-defined]

    # ----- products: exact ------------------------------------------------------------------------------
    def product(self, ctx, kind, x, y, extra=(), op="mul"):
        return self._out(ctx, op, _bilinear(kind, x.value, y.value, extra))

    def square_raw(self, ctx, x, op="square"):
        return self._out(ctx, op, x.value * x.value)

    def divide_many(self, ctx, items, op):
        return [PlainShare(s.value / d) for s, d in items]

    def truncate_many(self, ctx, items, op):
        # Real numbers carry no scale: dividing by 2^bits is a ring family's bookkeeping, not a value change.
        return [s for s, _ in items]

    def exact_rshift(self, ctx, x, bits, op):
        return x

    def mul(self, ctx, x, y, op="mul"):
        return self.product(ctx, OP_MUL, x, y, op=op)

    def matmul(self, ctx, x, y, op="matmul"):
        return self.product(ctx, OP_MATMUL, x, y, op=op)

    def matmul_many(self, ctx, pairs, op="matmul"):
        return [self.matmul(ctx, x, y, op) for x, y in pairs]

    def conv2d(self, ctx, x, w, stride, padding, dilation, groups):
        return self.product(ctx, OP_CONV2D, x, w, (*stride, *padding, *dilation, groups), op="conv2d")

    def square(self, ctx, x):
        return self.square_raw(ctx, x)

    def truncate(self, ctx, x, bits=None, op="trunc"):
        return x

    def mul_public(self, ctx, x, value, op="mul_public"):
        # A scalar multiplier is exact in the secure families (RingFamily.scale_public): nothing to report.
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            return self._out(ctx, op, x.value * self.encode_public(ctx, value, what=op))
        c = float(value)
        ctx.encoder.encode(c, what="public operand")  # the secure family's refusals: NaN, inf, out of range
        return self._out(ctx, op, x.value * c)

    def matmul_public(self, ctx, x, m, left=False):
        return self._out(ctx, "matmul", x.matmul_public(self.encode_public(ctx, m, what="matmul"), left).value)

    def conv2d_public(self, ctx, x, w, kernel_secret, **kw):
        return self._out(
            ctx,
            "conv2d",
            x.conv2d_public(self.encode_public(ctx, w, what="conv2d"), kernel_secret=kernel_secret, **kw).value,
        )

    # ----- binary shares are a ring notion -------------------------------------------------------------------
    def _no_words(self, what: str):
        raise ProtocolError(f"{what}: XOR-shared words exist only in ring families; the plaintext family holds values")

    def and_(self, ctx, x: BinaryShare, y: BinaryShare, op="and") -> BinaryShare:
        self._no_words("and")

    def open_words(self, ctx, words, op):
        self._no_words("open_words")

    def b2a(self, ctx, bits, op="b2a"):
        self._no_words("b2a")

    def b2a_positions(self, ctx, words, positions, flip, op="b2a"):
        self._no_words("b2a")

    def a2b(self, ctx, x, op="a2b"):
        self._no_words("a2b")

    # ----- composites, exact ------------------------------------------------------------------------------
    def less_than(self, ctx, z, negate=False, op="lt"):
        b = z.value < 0
        return PlainShare((~b if negate else b).to(torch.float64))

    def equal(self, ctx, z, negate=False, op="eq"):
        b = z.value == 0
        return PlainShare((~b if negate else b).to(torch.float64))

    def sign(self, ctx, x):
        return PlainShare(torch.sign(x.value))

    def abs(self, ctx, x):
        return PlainShare(x.value.abs())

    def relu(self, ctx, x, op="relu"):
        return PlainShare(torch.relu(x.value))

    def relu_mask(self, ctx, x, op="relu"):
        return PlainShare(torch.relu(x.value)), PlainShare((x.value > 0).to(x.value.dtype))

    def mask_mul(self, ctx, mask, g, op="relu:grad"):
        return PlainShare(mask.value * g.value)

    def clamp_public(self, ctx, x, lo, hi):
        return PlainShare(torch.clamp(x.value, lo, hi))

    def clamp_secret(self, ctx, x, lo, hi):
        v = x.value
        if lo is not None:
            v = torch.maximum(v, lo.value)
        if hi is not None:
            v = torch.minimum(v, hi.value)
        return PlainShare(v)

    def maximum(self, ctx, a, b, op="maximum"):
        return PlainShare(torch.maximum(a.value, b.value))

    def where(self, ctx, cond, a, b):
        return PlainShare(torch.where(cond.value > 0.5, a.value, b.value))

    def where_public(self, ctx, cond, a, b):
        return PlainShare(torch.where(cond.value > 0.5, a, b))

    def max_reduce(self, ctx, x, index=False, one_hot=False, op="max"):
        if x.shape[-1] == 0:
            raise ProtocolError("max: the reduced dimension is empty")
        vals, idx = x.value.max(-1)
        oh = F.one_hot(idx, x.shape[-1]).to(torch.float64) if one_hot else None
        return (
            PlainShare(vals),
            (PlainShare(idx.to(torch.float64)) if index else None),
            (PlainShare(oh) if one_hot else None),
        )

    def _fn(self, ctx, name, x, fn):
        if name in DOMAINS and self.check_domain(name, x.value):
            return PlainShare(fn(x.value))  # reported once, as a domain problem (its NaN/inf is no range problem)
        return self._out(ctx, name, fn(x.value))

    def exp(self, ctx, x):
        return self._fn(ctx, "exp", x, torch.exp)

    def exp_nonpositive(self, ctx, x):
        return self._fn(ctx, "exp_nonpositive", x, torch.exp)

    def log(self, ctx, x):
        return self._fn(ctx, "log", x, torch.log)

    def reciprocal(self, ctx, x):
        return self._fn(ctx, "reciprocal", x, torch.reciprocal)

    def sqrt(self, ctx, x):
        return self._fn(ctx, "sqrt", x, torch.sqrt)

    def rsqrt(self, ctx, x):
        return self._fn(ctx, "rsqrt", x, torch.rsqrt)

    def sqrt_wide(self, ctx, x):
        return self._fn(ctx, "sqrt_wide", x, torch.sqrt)

    def sigmoid(self, ctx, x):
        return self._fn(ctx, "sigmoid", x, torch.sigmoid)

    def tanh(self, ctx, x):
        return self._fn(ctx, "tanh", x, torch.tanh)

    def softmax(self, ctx, x):
        return self._fn(ctx, "softmax", x, lambda v: torch.softmax(v, -1))

    def log_softmax(self, ctx, x):
        return self._fn(ctx, "log_softmax", x, lambda v: torch.log_softmax(v, -1))

    def log_softmax_keep(self, ctx, x):
        out = self.log_softmax(ctx, x)
        e = torch.exp(x.value - x.value.amax(-1, keepdim=True))
        return out, (PlainShare(e), PlainShare(1.0 / e.sum(-1, keepdim=True)))

    def pow_int(self, ctx, x, k):
        if k < 0:
            self.check_domain("reciprocal", x.value)
        return self._out(ctx, "pow", x.value**k)
