"""Cryptographic pseudo-random streams: AES-256 in counter mode.

Every share, mask and correlated value in the toolkit comes from a ``Prg``.  A
``Prg`` is keyed by 32 bytes that come from ``os.urandom`` (directly, or
through a seed sent over an authenticated link), never from torch's or numpy's
generators.  Two parties holding the same seed draw the same stream, which is
what lets the dealer send one share per correlated value (seed compression).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .buffers import BufferPool

__all__ = ["Prg", "SEED_BYTES", "new_seed", "widen"]

SEED_BYTES = 32
# The keystream is AES-CTR over zeros, enciphered a chunk at a time from one shared zero buffer (no zeros as
# large as the request, no copy of the output).
_CHUNK = 1 << 20
_ZEROS = memoryview(np.zeros(_CHUNK, dtype=np.uint8))


_UNSIGNED = {1: np.dtype(np.uint8), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def widen(raw: np.ndarray, width: int) -> np.ndarray:
    """The little-endian ``width``-byte unsigned numbers in the uint8 array ``raw``, as int64 (1 <= width <= 8;
    width 8: the words themselves, two's complement)."""
    if width == 8:
        words = raw.view("<i8")
        return words.copy() if raw.ctypes.data % 8 else words
    if width in _UNSIGNED:
        return raw.view(_UNSIGNED[width]).astype(np.int64)
    # 3, 5, 6, 7 bytes: the 8 bytes from each element's first one, read as one little-endian word at a stride of
    # ``width`` (unaligned; 8 spare bytes at the end), masked to its low ``width`` bytes.  A per-element copy
    # into 8-byte rows took about 1 ms per 2 x 10^5 elements, this 0.13-0.19.
    n, extra = divmod(raw.size, width)
    if extra:
        raise ValueError(f"widen: {raw.size} bytes are not a whole number of {width}-byte elements")
    padded = np.empty(n * width + 8, dtype=np.uint8)
    padded[: n * width] = raw.reshape(-1)
    padded[n * width :] = 0
    words = np.ndarray((n,), dtype="<u8", buffer=padded, strides=(width,))
    return (words & np.uint64((1 << (8 * width)) - 1)).view(np.int64)


def new_seed() -> bytes:
    """A fresh 32-byte seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


class Prg:
    """A deterministic AES-256-CTR stream of random ring elements and bytes."""

    def __init__(self, seed: bytes, pool: BufferPool | None = None) -> None:
        """``pool``: large draws land in its buffers, used again once nothing refers to them (``mpc.buffers``:
        a fresh buffer's first touch costs more than the keystream)."""
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise ValueError(f"a Prg seed must be {SEED_BYTES} bytes")
        cipher = Cipher(algorithms.AES(bytes(seed)), modes.CTR(b"\x00" * 16))
        self._enc = cipher.encryptor()
        self._pool = pool

    def __repr__(self) -> str:  # never show the key
        return "Prg(<secret seed>)"

    def bytes(self, n: int) -> np.ndarray:
        """``n`` pseudo-random bytes as a uint8 array."""
        if n <= 0:
            return np.empty(0, dtype=np.uint8)
        # update_into wants 15 spare bytes after each piece
        out = np.empty(n + 15, dtype=np.uint8) if self._pool is None else self._pool.take(n + 15).numpy()
        view = memoryview(out)
        for start in range(0, n, _CHUNK):
            size = min(_CHUNK, n - start)
            self._enc.update_into(_ZEROS[:size], view[start : start + size + 15])
        return out[:n]

    def int64(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z_2^64 with the given shape."""
        shape = tuple(int(s) for s in shape)
        n = 1
        for s in shape:
            n *= s
        raw = self.bytes(8 * n)
        words = raw.view(np.int64)
        if raw.ctypes.data % 8:  # numpy's buffers are 16-byte aligned in practice; never view unaligned words
            words = words.copy()
        return torch.from_numpy(words).reshape(shape)

    def narrow(self, shape: tuple[int, ...] | torch.Size, width: int) -> torch.Tensor:
        """Uniform integers in [0, 2^(8 width)) with the given shape, as int64, from ``width`` bytes each (a
        share that counts only modulo 2^(8 width)); ``width`` 8 is ``int64``."""
        if width == 8:
            return self.int64(shape)
        shape = tuple(int(s) for s in shape)
        n = 1
        for s in shape:
            n *= s
        return torch.from_numpy(widen(self.bytes(width * n), width)).reshape(shape)

    def bits(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform 0/1 int64 values with the given shape."""
        shape = tuple(int(s) for s in shape)
        n = 1
        for s in shape:
            n *= s
        raw = self.bytes(n)
        return torch.from_numpy((raw & 1).astype(np.int64)).reshape(shape)

    def seed(self) -> bytes:
        """A new 32-byte seed drawn from this stream (to derive a sub-stream)."""
        return bytes(self.bytes(SEED_BYTES))
