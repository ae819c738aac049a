"""The protocol-family interface: the primitives a family implements, and the composites written on them.

A *protocol family* is one share type plus one object implementing
``ProtocolFamily``.  The user layer (``mpc.tensor``, ``mpc.ops``) reaches every
protocol through ``ctx.family`` and never through a module of one family.

``ProtocolFamily`` holds the *primitives*, which every family must implement:

==================  ==================================================================
setup               ``needs_dealer`` (which extra node the family needs),
                    ``min_parties``, ``correlation_source`` (what the party setup
                    builds from the dealer's seed), ``encode_public``/``decode``
sharing, opening    ``share_input``, ``open_all``, ``open_to``
bilinear products   ``product`` (untruncated: ``mul``, ``matmul``, ``conv2d`` codes),
                    ``square_raw``, and ``divide_many`` (exact division by public
                    integers: the one truncation, ``truncate_many``, is ``d = 2^f``)
binary shares       ``and_``, ``open_words``
conversions         ``b2a``, ``a2b``, ``exact_rshift`` (exact division of multiples)
==================  ==================================================================

The *composites* (``RingComposites`` below: comparison, relu, where, clamp,
max/argmax and pooling, piecewise approximations and every nonlinear function)
are written once against those primitives, in ``protocols.ordering``,
``protocols.approx``, ``protocols.nonlinear`` and ``protocols.compare_generic``,
for every family whose shares live in Z_2^64 with the toolkit's fixed-point
encoding.  A family may override one with a faster variant: the additive
dealer family replaces the generic comparison (7 rounds of 64-bit ANDs) with its
4-round dealer-assisted one and the generic powers with one opening.  The
``plaintext`` family holds values in the clear and overrides every composite
with exact float64 arithmetic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mpc.context import Communicator, CorrelationSource, PartyContext
from mpc.shares import BinaryShare, Share

from .correlated import OP_CONV2D, OP_MATMUL, OP_MUL

__all__ = ["ProtocolFamily", "CmpResult", "OP_MUL", "OP_MATMUL", "OP_CONV2D"]


@dataclass
class CmpResult:
    """The results of one batch of comparisons; each has the thresholds as leading dimension.

    bits: arithmetic shares of the 0/1 result (an integer, not scaled by 2^f).
    binary: XOR shares of the result (bit 0 of a word).
    xbits: shares of ``x * bit`` (scale of ``x``).
    ybits: shares of ``extra * bit`` (``(K, *shape, m)``).
    """

    bits: Any = None
    binary: Any = None
    xbits: Any = None
    ybits: Any = None


class ProtocolFamily(ABC):
    """A protocol family: its share type, the nodes it needs, and its primitives."""

    name: str = ""
    min_parties: int = 2
    needs_dealer: bool = False
    secure: bool = True
    # The encoding of a value below every value of the fixed-point range (max pooling's padding).
    lowest: Any = None

    # ----- setup -------------------------------------------------------------------------------
    def correlation_source(
        self, comm: Communicator, seed: bytes | None, rank: int, world_size: int
    ) -> CorrelationSource | None:
        """The party's source of correlated randomness (``seed`` from the dealer when ``needs_dealer``)."""
        return None

    def check_parties(self, n: int) -> str | None:
        """Why ``n`` parties cannot run this family (None: they can)."""
        if n < self.min_parties:
            return f"the {self.name} family needs at least {self.min_parties} parties, got {n}"
        return None

    # ----- encoding ------------------------------------------------------------------------------
    @abstractmethod
    def encode_public(self, ctx: PartyContext, value: Any, what: str = "public operand") -> torch.Tensor:
        """A public constant in the family's number system (a ring integer, or float64 for plaintext)."""

    @abstractmethod
    def decode(self, ctx: PartyContext, opened: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """An opened value back to a torch tensor of ``dtype``."""

    @abstractmethod
    def is_exact_multiplier(self, value: Any) -> bool:
        """Whether multiplying by this public value needs no truncation (integers in ring families)."""

    # ----- sharing and opening -------------------------------------------------------------------
    @abstractmethod
    def share_input(self, ctx: PartyContext, value: torch.Tensor | None, owner: int) -> tuple[Share, torch.dtype]:
        """Share ``value`` held by ``owner``; returns this party's share and the public dtype."""

    @abstractmethod
    def open_all(self, ctx: PartyContext, shares: Sequence[Share], op: str) -> list[torch.Tensor]:
        """Open several shares to every party in one round (encoded values)."""

    @abstractmethod
    def open_to(self, ctx: PartyContext, share: Share, to: int, op: str) -> torch.Tensor | None:
        """Open a share to party ``to`` only; the others get None."""

    # ----- products and truncation ----------------------------------------------------------------
    @abstractmethod
    def product(
        self, ctx: PartyContext, kind: int, x: Share, y: Share, extra: tuple[int, ...] = (), op: str = "mul"
    ) -> Share:
        """``x kind y`` for a bilinear ``kind`` (``OP_MUL``, ``OP_MATMUL``, ``OP_CONV2D``), not truncated."""

    def product_many(
        self, ctx: PartyContext, items: Sequence[tuple[int, Share, Share, tuple[int, ...]]], op: str = "mul"
    ) -> list[Share]:
        """``x kind y`` for each ``(kind, x, y, extra)``, not truncated; a family that can opens them all in
        one round (this default runs ``product`` on each in turn)."""
        return [self.product(ctx, kind, x, y, extra, op) for kind, x, y, extra in items]

    @abstractmethod
    def square_raw(self, ctx: PartyContext, x: Share, op: str = "square") -> Share:
        """``x * x``, not truncated."""

    @abstractmethod
    def divide_many(self, ctx: PartyContext, items: Sequence[tuple[Share, int]], op: str) -> list[Share]:
        """Divide each share by its public integer ``d``, all in one round; unbiased, under 1 unit."""

    @abstractmethod
    def truncate_many(self, ctx: PartyContext, items: Sequence[tuple[Share, int]], op: str) -> list[Share]:
        """Divide each share by ``2^bits`` (its own ``bits``), all in one round (ring families: ``divide_many``)."""

    @abstractmethod
    def exact_rshift(self, ctx: PartyContext, x: Share, bits: int, op: str) -> Share:
        """``x / 2^bits`` exactly, for ``x`` a multiple of ``2^bits`` in [0, 2^63)."""

    # ----- binary shares and conversions ----------------------------------------------------------
    @abstractmethod
    def and_(self, ctx: PartyContext, x: BinaryShare, y: BinaryShare, op: str = "and") -> BinaryShare:
        """XOR shares of ``x & y``."""

    @abstractmethod
    def open_words(self, ctx: PartyContext, words: Sequence[BinaryShare], op: str) -> list[torch.Tensor]:
        """Open XOR-shared words to every party in one round."""

    @abstractmethod
    def b2a(self, ctx: PartyContext, bits: BinaryShare, op: str = "b2a") -> Share:
        """Arithmetic 0/1 shares of bit 0 of each XOR-shared word."""

    def b2a_positions(
        self, ctx: PartyContext, words: BinaryShare, positions: Sequence[int], flip: Sequence[bool], op: str = "b2a"
    ) -> Share:
        """Arithmetic 0/1 shares of bit ``positions[k]`` of each word, negated where ``flip[k]``: ``(K, *shape)``
        (a family with a dedicated conversion converts them all from one mask word)."""
        rows = []
        for p, fl in zip(positions, flip, strict=True):
            row = (words >> p).and_public(1)
            rows.append(row.xor_public(1) if fl else row)
        return self.b2a(ctx, type(words).stack(rows), op)

    @abstractmethod
    def a2b(self, ctx: PartyContext, x: Share, op: str = "a2b") -> BinaryShare:
        """XOR shares of the 64 bits of an arithmetically shared word."""
