"""CURVE key files: generation, loading with permission checks, matching the cluster file.

``mpc keygen --out DIR --id NAME`` writes ``DIR/NAME.key`` (the public key,
z85 text, safe to share and to paste into the cluster file) and
``DIR/NAME.key_secret`` (the secret key, z85 text, mode 0600).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq

from mpc.errors import ConfigError, SecurityError

from .cluster import Cluster
from .zmq_comm import CurveKeys

__all__ = ["keygen", "save_key_pair", "load_secret_key", "curve_for_node", "ephemeral_keys"]


def keygen(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    public, secret = zmq.curve_keypair()
    return save_key_pair(out_dir, name, public, secret)


def save_key_pair(out_dir: str | Path, name: str, public: bytes, secret: bytes) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` (mode 0600, never overwritten)."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pub_path, sec_path = out / f"{name}.key", out / f"{name}.key_secret"
    if sec_path.exists():
        raise ConfigError(f"{sec_path} already exists; move it away first to rotate the key")
    fd = os.open(sec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.decode("ascii") + "\n")
    pub_path.write_text(public.decode("ascii") + "\n")
    return pub_path, sec_path


def load_secret_key(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"secret key file {p} not found: create one with `mpc keygen --out DIR --id NAME`")
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError(
            f"secret key file {p} is readable by other users (mode {stat.filemode(mode)}); "
            f"run `chmod 600 {p}` and, since it may have leaked, consider rotating the key"
        )
    text = p.read_text().strip().encode("ascii", "replace")
    if len(text) != 40:
        raise ConfigError(f"{p} does not hold a z85 CURVE secret key (40 characters)")
    try:
        zmq.curve_public(text)
    except (zmq.ZMQError, ValueError):
        raise ConfigError(f"{p} does not hold a valid CURVE secret key") from None
    return text


def curve_for_node(cluster: Cluster, node_id: int, secret: bytes) -> CurveKeys:
    """Check that the secret key matches the cluster's public key for ``node_id``."""
    keys = cluster.public_keys()

    def who_is(i: int) -> str:
        return "the dealer" if cluster.dealer is not None and i == cluster.world_size else f"party {i}"

    who = who_is(node_id)
    missing = [who_is(i) for i, k in enumerate(keys) if not k]
    if missing:
        raise ConfigError(
            f"{cluster.source} lists no public_key for {', '.join(missing)}: add the keys from `mpc keygen` "
            "or run with --insecure (unencrypted, unauthenticated)"
        )
    public = zmq.curve_public(secret)
    if public.decode("ascii") != keys[node_id]:
        raise SecurityError(
            f"the secret key given to {who} does not match the public key that {cluster.source} lists for {who}: "
            "wrong key file, wrong --id, or an outdated cluster file"
        )
    return CurveKeys(public, secret, tuple(k.encode("ascii") for k in keys))  # type: ignore[union-attr]


def ephemeral_keys(count: int) -> list[tuple[bytes, bytes]]:
    """Fresh key pairs for a local run (kept in memory or in a private temp dir)."""
    return [zmq.curve_keypair() for _ in range(count)]
