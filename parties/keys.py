"""CURVE key files: generation, loading with permission checks, matching the cluster file.

``mpc keygen --out DIR --id NAME`` writes ``DIR/NAME.key`` (the public key,
z85 text, safe to share and to paste into the cluster file) and
``DIR/NAME.key_secret`` (the secret key, z85 text, mode 0600).

A node is given its *secret* key file.  Passing the public one by mistake is
recognised (a ``NAME.key`` beside its ``NAME.key_secret``, a ``.key`` file that
others may read, or a key that the cluster file lists as a public key) and
refused with a message naming the file to pass instead.
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


PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


def keygen(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    public, secret = zmq.curve_keypair()
    try:
        return save_key_pair(out_dir, name, public, secret)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the key files {name}{PUBLIC_SUFFIX} and {name}{SECRET_SUFFIX} in {out_dir}: "
            f"{exc.strerror or exc}; choose a directory you can write to with --out"
        ) from None


def save_key_pair(out_dir: str | Path, name: str, public: bytes, secret: bytes) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` (mode 0600, never overwritten)."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pub_path, sec_path = out / f"{name}{PUBLIC_SUFFIX}", out / f"{name}{SECRET_SUFFIX}"
    if sec_path.exists():
        raise ConfigError(f"{sec_path} already exists; move it away first to rotate the key")
    fd = os.open(sec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.decode("ascii") + "\n")
    pub_path.write_text(public.decode("ascii") + "\n")
    return pub_path, sec_path


def _public_instead(p: Path, exposed: bool) -> str | None:
    """Why ``p`` looks like a public key file (``None`` when it does not)."""
    if p.name.endswith(PUBLIC_SUFFIX):
        sibling = p.with_name(p.name[: -len(PUBLIC_SUFFIX)] + SECRET_SUFFIX)
        if sibling.is_file():
            return f"{p} is the public key of the pair {p.name} / {sibling.name}: pass --key {sibling}"
        if exposed:
            return (
                f"{p} looks like a public key file (`mpc keygen` writes NAME{PUBLIC_SUFFIX}, public and readable "
                f"by all, and NAME{SECRET_SUFFIX}, secret, mode 0600): pass the NAME{SECRET_SUFFIX} file from the "
                f"same keygen (if {p.name} really is a secret key, run `chmod 600 {p}` and consider rotating it)"
            )
    return None


def load_secret_key(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"secret key file {p} not found: create one with `mpc keygen --out DIR --id NAME`")
    mode = p.stat().st_mode
    exposed = bool(mode & (stat.S_IRWXG | stat.S_IRWXO))
    public = _public_instead(p, exposed)
    if public is not None:
        raise ConfigError(f"--key needs this node's secret key, not its public key: {public}")
    if exposed:
        raise SecurityError(
            f"secret key file {p} is readable by other users (mode {stat.filemode(mode)}); "
            f"run `chmod 600 {p}` and, since it may have leaked, consider rotating the key"
        )
    try:
        text = p.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret key file {p}: {exc.strerror or exc}") from None
    if len(text) != 40 or not text.isascii():
        raise ConfigError(
            f"{p} does not hold a z85 CURVE secret key (40 characters): pass a NAME{SECRET_SUFFIX} "
            "file from `mpc keygen`"
        )
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
    text = secret.decode("ascii")
    if text in keys:
        owner = who_is(keys.index(text))
        raise ConfigError(
            f"the key given to {who} is a public key ({cluster.source} lists it as {owner}'s public_key): "
            f"pass {who}'s secret key file (NAME{SECRET_SUFFIX} from `mpc keygen`) with --key, not NAME{PUBLIC_SUFFIX}"
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
