"""The checkpoint file: a fixed preamble, a JSON header of public metadata, raw little-endian buffers, a checksum.

Layout (integers little-endian)::

    offset      bytes  field
    0           8      magic          b"MPCCKPT\\n"
    8           4      version        u32: FORMAT_VERSION
    12          4      header_bytes   u32: H, the length of the header
    16          8      file_bytes     u64: the length of the whole file, checksum included
    24          H      header         a UTF-8 JSON object of public metadata (``mpc.checkpoint.collective``)
    24 + H      pad    zeros to a multiple of 8
    buffers     ...    each entry's raw little-endian bytes, in the header's order, each padded to 8
    end - 32    32     checksum       BLAKE2b-256 (person ``mpc-checkpoint``) of every byte before it

The preamble and the trailing checksum are the same in every version.  The
header's ``entries`` list each stored tensor: ``name``, ``kind`` (``additive``
or ``binary``: this party's int64 ring share; ``plain``: the plaintext family's
float64 value; ``public``: a public tensor such as BatchNorm's batch count),
``dtype`` (the tensor's public dtype), ``shape``, and ``offset`` and ``nbytes``
in the buffers region.

Nothing is unpickled or evaluated.  Reading checks, in this order and before
anything else is trusted: the magic; the length against ``file_bytes``
(truncated or extended); the checksum (corrupted); the version (written by an
unknown version); the JSON; then that every entry has a known kind and dtype,
a shape whose size matches ``nbytes``, and lies, in order, inside the buffers.
Writing goes to a temporary file in the same directory (mode 0600), which is
flushed, fsynced and renamed over the target (``os.replace``), so a reader sees
the old file or the new one, never a part.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "Entry",
    "CheckpointFile",
    "read_file",
    "write_atomic",
    "is_temporary",
    "DTYPES",
]

MAGIC = b"MPCCKPT\n"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIIQ")
CHECKSUM_BYTES = 32
_PERSON = b"mpc-checkpoint"
MAX_HEADER_BYTES = 16 << 20
MAX_NDIM = 16
ALIGN = 8
TEMP_MARK = ".tmp-"

# Public dtype name -> (torch dtype, numpy little-endian storage).
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "int64": (torch.int64, "<i8"),
    "int32": (torch.int32, "<i4"),
    "int16": (torch.int16, "<i2"),
    "int8": (torch.int8, "i1"),
    "uint8": (torch.uint8, "u1"),
    "bool": (torch.bool, "?"),
    "float64": (torch.float64, "<f8"),
    "float32": (torch.float32, "<f4"),
    "float16": (torch.float16, "<f2"),
}
DTYPE_NAMES = {t: name for name, (t, _) in DTYPES.items()}
# What each kind of entry stores: a share's ring elements, the plaintext family's value, or a public tensor.
KIND_STORAGE = {"additive": "int64", "binary": "int64", "plain": "float64", "public": None}


def _pad(n: int) -> int:
    return -n % ALIGN


@dataclass(frozen=True)
class Entry:
    """One stored tensor, as the header describes it."""

    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def storage(self) -> str:
        return KIND_STORAGE[self.kind] or self.dtype


@dataclass(frozen=True)
class CheckpointFile:
    """A checked file: its header, its entries, and the buffers region (read-only)."""

    path: Path
    header: dict[str, Any]
    entries: tuple[Entry, ...]
    buffers: memoryview

    def tensor(self, entry: Entry) -> torch.Tensor:
        """The stored tensor of ``entry`` (a fresh copy, in native byte order)."""
        torch_dtype, np_dtype = DTYPES[entry.storage]
        count = int(np.prod(entry.shape, dtype=np.int64)) if entry.shape else 1
        arr = np.frombuffer(self.buffers, dtype=np.dtype(np_dtype), count=count, offset=entry.offset)
        return torch.from_numpy(arr.astype(np.dtype(np_dtype).newbyteorder("="))).reshape(entry.shape)


# ----- writing -------------------------------------------------------------------------------------------------


def _storage_array(t: torch.Tensor, storage: str) -> np.ndarray:
    torch_dtype, np_dtype = DTYPES[storage]
    if t.dtype != torch_dtype:
        raise CheckpointError(f"internal: a {storage} entry holds a {t.dtype} tensor")
    return t.detach().cpu().contiguous().numpy().reshape(-1).astype(np_dtype, copy=False)


def write_atomic(
    path: Path, header: dict[str, Any], entries: Sequence[dict[str, Any]], tensors: Sequence[torch.Tensor]
) -> int:
    """Write ``header`` (with ``entries`` laid out) and ``tensors`` to ``path`` atomically; the file's size.

    ``entries[i]`` gives ``name``, ``kind``, ``dtype`` and ``shape`` of
    ``tensors[i]``; this function adds ``offset`` and ``nbytes``.
    """
    arrays, laid, at = [], [], 0
    for e, t in zip(entries, tensors, strict=True):
        arr = _storage_array(t, KIND_STORAGE[e["kind"]] or e["dtype"])
        laid.append({**e, "shape": [int(s) for s in e["shape"]], "offset": at, "nbytes": arr.nbytes})
        arrays.append(arr)
        at += arr.nbytes + _pad(arr.nbytes)
    text = json.dumps({**header, "entries": laid}, allow_nan=False, sort_keys=True, separators=(",", ":"))
    head = text.encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise CheckpointError(f"the checkpoint's header would take {len(head)} bytes, over {MAX_HEADER_BYTES}")
    size = _PREAMBLE.size + len(head) + _pad(_PREAMBLE.size + len(head)) + at + CHECKSUM_BYTES
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # shares are secret: this user only
    try:
        with os.fdopen(fd, "wb") as f:
            h = hashlib.blake2b(digest_size=CHECKSUM_BYTES, person=_PERSON)

            def put(b: bytes | memoryview) -> None:
                h.update(b)
                f.write(b)

            put(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(head), size))
            put(head)
            put(bytes(_pad(_PREAMBLE.size + len(head))))
            for arr in arrays:
                put(memoryview(arr).cast("B"))
                put(bytes(_pad(arr.nbytes)))
            f.write(h.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return size


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of ``write_atomic``'s temporaries (left behind by a killed writer)."""
    return name.startswith(".") and TEMP_MARK in name


# ----- reading -------------------------------------------------------------------------------------------------


def read_file(path: str | Path) -> CheckpointFile:
    """Read and check a checkpoint file; ``CheckpointError`` naming the file and the problem otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint file {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint file {path}: {exc.strerror or exc}") from None
    view = memoryview(data)
    if len(data) < _PREAMBLE.size or data[:8] != MAGIC:
        raise CheckpointError(
            f"{path} is not a checkpoint file of mpc-torch (no {MAGIC[:7].decode()} magic at its start)"
        )
    _, version, hlen, size = _PREAMBLE.unpack_from(data)
    if len(data) < size:
        raise CheckpointError(
            f"{path} is truncated: {len(data)} bytes of the {size} it was written with (an interrupted copy?); "
            "restore it, or delete it to resume from an earlier step"
        )
    if len(data) > size:
        raise CheckpointError(f"{path} has {len(data) - size} bytes more than the {size} it was written with")
    if size < _PREAMBLE.size + CHECKSUM_BYTES:
        raise CheckpointError(f"{path} is corrupted: its preamble declares an impossible size {size}")
    h = hashlib.blake2b(view[: size - CHECKSUM_BYTES], digest_size=CHECKSUM_BYTES, person=_PERSON)
    if h.digest() != data[size - CHECKSUM_BYTES :]:
        raise CheckpointError(
            f"{path} is corrupted: its checksum does not match its contents; restore it, or delete it to "
            "resume from an earlier step"
        )
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this mpc-torch reads version {FORMAT_VERSION} "
            "only (a file written by another release: use that release, or restart the training)"
        )
    start = _PREAMBLE.size + hlen + _pad(_PREAMBLE.size + hlen)
    if hlen > MAX_HEADER_BYTES or start > size - CHECKSUM_BYTES:
        raise CheckpointError(f"{path} is malformed: a header of {hlen} bytes does not fit in the file")
    try:
        header = json.loads(bytes(view[_PREAMBLE.size : _PREAMBLE.size + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path} is malformed: its header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is malformed: its header is not a JSON object")
    buffers = view[start : size - CHECKSUM_BYTES]
    entries = _entries(path, header.get("entries"), len(buffers))
    return CheckpointFile(path, header, entries, buffers.toreadonly())


def _entries(path: Path, raw: Any, room: int) -> tuple[Entry, ...]:
    if not isinstance(raw, list):
        raise CheckpointError(f"{path} is malformed: its header lists no entries")
    out, at = [], 0
    for i, e in enumerate(raw):
        bad = f"{path} is malformed: entry {i}"
        if not isinstance(e, dict):
            raise CheckpointError(f"{bad} is not an object")
        name, kind, dtype, shape = e.get("name"), e.get("kind"), e.get("dtype"), e.get("shape")
        offset, nbytes = e.get("offset"), e.get("nbytes")
        if not isinstance(name, str) or len(name) > 1024:
            raise CheckpointError(f"{bad} has no valid name")
        if kind not in KIND_STORAGE or dtype not in DTYPES:
            raise CheckpointError(f"{bad} ({name!r}) has an unknown kind {kind!r} or dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise CheckpointError(f"{bad} ({name!r}) has an invalid shape")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, nbytes)):
            raise CheckpointError(f"{bad} ({name!r}) has no valid offset and size")
        entry = Entry(name, kind, dtype, tuple(shape), offset, nbytes)
        count = 1
        for s in shape:
            count *= s
        if nbytes != count * np.dtype(DTYPES[entry.storage][1]).itemsize or offset != at or offset + nbytes > room:
            raise CheckpointError(f"{bad} ({name!r}) does not lie where its shape says, inside the file")
        at = offset + nbytes + _pad(nbytes)
        out.append(entry)
    return tuple(out)
