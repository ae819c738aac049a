"""The wire format: one fixed-size header frame, then the raw tensor buffer.

Header (little-endian, 224 bytes)::

    magic   4s   b"MPCW"
    version u8   3
    kind    u8   1 data, 2 abort, 3 bye, 4 desync (the sender's transcript records, text),
                 5 hello (the first frame on a new link: names the sender's connection),
                 6 ack (``ack`` alone), 7 nack (resend from message ``seq``, chunk ``part``)
    dtype   u8   code from DTYPES
    ndim    u8   0..16
    sender  u32  party id of the sender (the dealer is id n)
    seq     u64  per-link sequence number
    nbytes  u64  payload length, must equal prod(shape) * itemsize
    op      32s  operation name, printable ASCII, NUL-padded
    shape   16 x i64
    opidx   u64  the sender's count of user-level operations (``mpc.transcript``)
    digest  8s   the sender's transcript digest after them
    run     8s   the run id the nodes agreed on at setup (zeros during setup)
    part    u32  index of this frame's chunk of the payload (0 for the first)
    ack     u64  cumulative acknowledgement: the sender holds every message of the
                 reverse link numbered below ``ack`` (``parties.comm_base``)

A payload larger than the sender's chunk size travels as several frames, each
``[header, chunk]`` with the same header but for ``part``; the receiver checks
the first header (shape against its limits, and against what the current
operation expects) before it allocates anything, and every later header
against the first (``parties.comm_base``).

Data, abort, bye and desync frames are sequenced by ``(seq, part)`` on their
link: a lost frame is sent again, a duplicate dropped.  Hello, ack and nack
frames stand outside the sequence (``seq`` of an ack is 0; a nack's
``(seq, part)`` is the position the receiver asks to be sent from).

Nothing from the wire is ever unpickled or evaluated: a payload becomes an
array only after its header passed every check, and only with the declared,
checked size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import numpy as np
import torch

from mpc.dtypes import CODE_DTYPES
from mpc.errors import ProtocolError, WireError

from .desync import clean

__all__ = [
    "Header",
    "DTYPES",
    "HEADER_SIZE",
    "KIND_DATA",
    "KIND_ABORT",
    "KIND_BYE",
    "KIND_DESYNC",
    "KIND_HELLO",
    "KIND_ACK",
    "KIND_NACK",
    "encode_header",
    "with_ack",
    "decode_header",
    "decode_payload",
]

MAGIC = b"MPCW"
# 4: the dealer's sub-seeds keyed with the request and its pushed guesses (protocols.correlated): a node of
# version 3 would draw other correlations than a dealer of 4, so the two are refused together.
VERSION = 4
KIND_DATA, KIND_ABORT, KIND_BYE, KIND_DESYNC, KIND_HELLO, KIND_ACK, KIND_NACK = 1, 2, 3, 4, 5, 6, 7
KINDS = (KIND_DATA, KIND_ABORT, KIND_BYE, KIND_DESYNC, KIND_HELLO, KIND_ACK, KIND_NACK)
# Kinds outside the link's sequence: never retained, never acknowledged, never sent again.
UNSEQUENCED = frozenset((KIND_HELLO, KIND_ACK, KIND_NACK))
DIGEST_BYTES = 8
RUN_ID_BYTES = 8
MAX_NDIM = 16
OP_BYTES = 32
_FMT = struct.Struct("<4sBBBBIQQ32s16qQ8s8sIQ")
HEADER_SIZE = _FMT.size
_ACK = struct.Struct("<Q")
ACK_OFFSET = HEADER_SIZE - _ACK.size

_NP = {
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
    torch.float64: np.float64,
    torch.float32: np.float32,
}
# The codes of mpc.dtypes (one table for the toolkit), for the dtypes a payload may have.
DTYPES: dict[int, torch.dtype] = {c: d for c, d in CODE_DTYPES.items() if d in _NP}
_CODES = {v: k for k, v in DTYPES.items()}
_ITEMSIZE = {d: np.dtype(_NP[d]).itemsize for d in DTYPES.values()}


@dataclass(frozen=True)
class Header:
    kind: int
    sender: int
    seq: int
    op: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    opidx: int = 0
    digest: bytes = bytes(DIGEST_BYTES)
    run: bytes = bytes(RUN_ID_BYTES)
    part: int = 0
    ack: int = 0

    def same_message(self, other: Header) -> bool:
        """Whether ``other`` is a chunk of the same message (every field equal but ``part`` and ``ack``)."""
        return replace(other, part=self.part, ack=self.ack) == self


def _who(peer: int | None) -> str:
    return "an unidentified peer" if peer is None else f"party {peer}"


def encode_header(
    kind: int,
    sender: int,
    seq: int,
    op: str,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    nbytes: int,
    opidx: int = 0,
    digest: bytes = bytes(DIGEST_BYTES),
    run: bytes = bytes(RUN_ID_BYTES),
    part: int = 0,
    ack: int = 0,
) -> bytes:
    if not op.isprintable():
        raise ProtocolError(f"operation name {op!r} has control characters")
    opb = op.encode("ascii")
    if len(opb) > OP_BYTES:
        raise ProtocolError(f"operation name {op!r} is longer than {OP_BYTES} bytes")
    if len(shape) > MAX_NDIM:
        raise ProtocolError(f"tensors of more than {MAX_NDIM} dimensions cannot be sent")
    if dtype not in _CODES:
        raise ProtocolError(f"dtype {dtype} cannot be sent")
    dims = list(shape) + [0] * (MAX_NDIM - len(shape))
    return _FMT.pack(
        MAGIC, VERSION, kind, _CODES[dtype], len(shape), sender, seq, nbytes, opb, *dims, opidx, digest, run, part, ack
    )


def with_ack(header: bytes, ack: int) -> bytes:
    """``header`` (an encoded one) with its ``ack`` field replaced: a frame sent again carries the current one."""
    out = bytearray(header)
    _ACK.pack_into(out, ACK_OFFSET, ack)
    return bytes(out)


def decode_header(buf: bytes | memoryview, max_bytes: int, peer: int | None = None) -> Header:
    """Parse and check a header frame; every failure is a ``WireError`` naming the peer."""
    who = _who(peer)
    if len(buf) != HEADER_SIZE:
        raise WireError(f"{who} sent a header of {len(buf)} bytes, expected {HEADER_SIZE}", peer)
    magic, version, kind, code, ndim, sender, seq, nbytes, opb, *rest = _FMT.unpack(buf)
    dims, (opidx, digest, run, part, ack) = rest[:MAX_NDIM], rest[MAX_NDIM:]
    if magic != MAGIC:
        raise WireError(f"{who} sent a frame with a wrong magic number {magic!r}: not an mpc peer", peer)
    if version != VERSION:
        raise WireError(f"{who} speaks wire version {version}, this party speaks {VERSION}: upgrade both", peer)
    if kind not in KINDS:
        raise WireError(f"{who} sent an unknown message kind {kind}", peer)
    if code not in DTYPES:
        raise WireError(f"{who} sent a payload of forbidden dtype code {code}", peer)
    if ndim > MAX_NDIM:
        raise WireError(f"{who} sent a {ndim}-dimensional shape (at most {MAX_NDIM})", peer)
    try:
        op = opb.rstrip(b"\x00").decode("ascii")
    except UnicodeDecodeError:
        raise WireError(f"{who} sent an operation name that is not ASCII", peer) from None
    if not op.isprintable():  # names reach logs and terminals: no control characters
        raise WireError(f"{who} sent an operation name with control characters: '{clean(op, OP_BYTES)}'", peer)
    shape = tuple(dims[:ndim])
    if any(d < 0 for d in shape) or any(dims[ndim:]):
        raise WireError(f"{who} sent a malformed shape {tuple(dims[:ndim])}", peer)
    dtype = DTYPES[code]
    itemsize = _ITEMSIZE[dtype]
    numel, extent = 1, 1
    for d in shape:
        numel *= d
        extent *= max(d, 1)  # a zero dimension must not hide an absurd one
        if extent * itemsize > max_bytes:
            raise WireError(
                f"{who} declared a tensor of shape {shape} ({dtype}), over the {max_bytes}-byte message limit", peer
            )
    if nbytes != numel * itemsize:
        raise WireError(f"{who} declared {nbytes} payload bytes for shape {shape} of {dtype}", peer)
    return Header(kind, sender, seq, op, dtype, shape, nbytes, opidx, digest, run, part, ack)


def decode_payload(
    h: Header, buf: bytes | memoryview | np.ndarray | torch.Tensor, peer: int | None = None
) -> torch.Tensor:
    """The payload as a tensor of the header's dtype and shape.

    ``buf`` is a frame's bytes (copied out of the transport's buffer), a uint8
    array that this process owns (a sealed frame decrypted into it,
    ``parties.seal``: used in place) or, for a message that came in chunks,
    the uint8 tensor it was assembled into (used in place).
    """
    n = buf.numel() if isinstance(buf, torch.Tensor) else len(buf)
    if n != h.nbytes:
        raise WireError(f"{_who(peer)} sent {n} payload bytes for '{h.op}', its header declared {h.nbytes}", peer)
    if isinstance(buf, np.ndarray):
        buf = torch.from_numpy(buf) if n else torch.empty(0, dtype=torch.uint8)  # (numpy gives an empty one stride 0)
    if isinstance(buf, torch.Tensor):
        return buf.view(h.dtype).reshape(h.shape)
    arr = np.frombuffer(buf, dtype=_NP[h.dtype]).copy()
    return torch.from_numpy(arr).reshape(h.shape)


def payload_of(t: torch.Tensor) -> memoryview:
    """The raw bytes of a CPU tensor (no copy when it is already contiguous)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)  # flat: memoryview cannot cast a view with a zero in its shape
    return memoryview(t.numpy()).cast("B")
