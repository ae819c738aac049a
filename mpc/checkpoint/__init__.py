"""Checkpoint and resume: each party saves and loads only its own shares, plus public metadata.

* ``mpc.save(obj, path, step=...)`` and ``mpc.load(path, into=...)``
  (``collective``): collective calls for secret tensors, ``mpc.nn`` modules
  and ``mpc.optim`` optimizers; the parties agree, before any share is used,
  that every file is sound and all come from the same save of one training.
* ``mpc.Checkpointer`` (``checkpointer``): a training loop's checkpoints every
  K steps in ``DIR/party<rank>/``, and ``resume()``, which continues from the
  newest step that every party holds (``mpc launch --resume DIR``).
* The file (``fileformat``): magic, version, a JSON header of public metadata,
  raw little-endian buffers and a BLAKE2b checksum; no pickle, nothing
  evaluated; written atomically.  What it holds of each object is described in
  ``entries``.

A checkpoint file of the secure family holds this party's shares only:
another party's share, or an input, never reaches it.  Shares are random on
their own, but together the files of every party open every saved value, so
they are kept with mode 0600 in directories of mode 0700, as keys are.
"""

from __future__ import annotations

from .checkpointer import Checkpointer
from .collective import load, read_header, save
from .fileformat import FORMAT_VERSION

__all__ = ["save", "load", "read_header", "Checkpointer", "FORMAT_VERSION"]
