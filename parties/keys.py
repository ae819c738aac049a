"""Key files: generation, loading with permission checks, matching the cluster file.

``mpc keygen --out DIR --id NAME`` writes ``DIR/NAME.key`` (the public key,
z85 text, safe to share and to paste into the cluster file) and
``DIR/NAME.key_secret`` (the secret key, z85 text, mode 0600): a Curve25519
key pair (X25519, ``parties.seal``), in the z85 format of ZeroMQ's CURVE keys.

A node is given its *secret* key file.  Passing the public one by mistake is
recognised (a ``NAME.key`` beside its ``NAME.key_secret``, a ``.key`` file that
others may read, or a key that the cluster file lists as a public key) and
refused with a message naming the file to pass instead.

A secret key file is opened without following a symbolic link (``O_NOFOLLOW``)
and checked on the opened descriptor (``fstat``): it must be a regular file,
owned by the user running the node, readable by nobody else.  ``keygen``
creates both files with ``O_CREAT | O_EXCL | O_NOFOLLOW`` inside an output
directory that is not itself a link: a planted link or file is refused, never
followed or overwritten.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mpc.errors import ConfigError, SecurityError

from .cluster import Cluster
from .seal import NodeKeys, keypair, public_of

__all__ = ["keygen", "save_key_pair", "load_secret_key", "keys_for_node", "ephemeral_keys"]


PUBLIC_SUFFIX = ".key"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
SECRET_SUFFIX = ".key_secret"


def keygen(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    public, secret = keypair()
    try:
        return save_key_pair(out_dir, name, public, secret)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the key files {name}{PUBLIC_SUFFIX} and {name}{SECRET_SUFFIX} in {out_dir}: "
            f"{exc.strerror or exc}; choose a directory you can write to with --out"
        ) from None


def _refuse_existing(dfd: int, out: Path, name: str) -> None:
    """Why ``out/name`` cannot be created: it exists (possibly as a planted symbolic link)."""
    try:
        link = stat.S_ISLNK(os.lstat(name, dir_fd=dfd).st_mode)
    except OSError:
        link = False
    if link:
        raise SecurityError(
            f"{out / name} is a symbolic link: `mpc keygen` never writes through one (it could point at a file "
            "another user chose); remove the link, or pick another --out directory or --id"
        )
    raise ConfigError(f"{out / name} already exists; move it away first to rotate the key, or pick another --id")


def _create(dfd: int, out: Path, name: str, mode: int, text: str) -> None:
    """Create ``out/name`` afresh (never through a link, never over an existing file) with ``text``."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode, dir_fd=dfd)
    except FileExistsError:
        _refuse_existing(dfd, out, name)
        raise
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def save_key_pair(out_dir: str | Path, name: str, public: bytes, secret: bytes) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` (mode 0600): both new files, never through a link.

    ``DIR`` itself may not be a symbolic link (its entry is opened with
    ``O_NOFOLLOW``); both files are created with ``O_CREAT | O_EXCL |
    O_NOFOLLOW`` relative to that opened directory, so a link or file planted
    under either name is refused, never followed or overwritten.
    """
    if not name or any(c in name for c in "/\\") or name.startswith(".") or not name.isprintable():
        raise ConfigError(f"key name {name!r} must be a plain file name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP or out.is_symlink():
            raise SecurityError(
                f"the key directory {out} is a symbolic link: `mpc keygen` does not write through one; "
                "pass the real directory with --out"
            ) from None
        raise
    pub_name, sec_name = f"{name}{PUBLIC_SUFFIX}", f"{name}{SECRET_SUFFIX}"
    try:
        for existing in (sec_name, pub_name):  # refuse before writing anything
            try:
                os.lstat(existing, dir_fd=dfd)
            except FileNotFoundError:
                continue
            _refuse_existing(dfd, out, existing)
        _create(dfd, out, sec_name, 0o600, secret.decode("ascii") + "\n")
        try:
            _create(dfd, out, pub_name, 0o644, public.decode("ascii") + "\n")
        except BaseException:
            os.unlink(sec_name, dir_fd=dfd)  # no secret key without its public half
            raise
    finally:
        os.close(dfd)
    return out / pub_name, out / sec_name


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


def _open_secret(p: Path) -> int:
    """``p`` opened for reading without following a link (``O_NOFOLLOW``) and without blocking on a FIFO."""
    try:
        return os.open(p, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"secret key file {p} not found: create one with `mpc keygen --out DIR --id NAME`") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecurityError(
                f"secret key file {p} is a symbolic link: a node reads its secret key only from a real file "
                f"(a planted link could make it use another key); pass the file itself with --key {p.resolve()}"
            ) from None
        raise ConfigError(f"cannot read the secret key file {p}: {exc.strerror or exc}") from None


def _check_secret_file(p: Path, st: os.stat_result) -> None:
    """The checks on the opened file (``fstat`` of its descriptor: no race with a separate ``stat``)."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"secret key file {p} is not a regular file: pass a NAME{SECRET_SUFFIX} file from `mpc keygen`"
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SecurityError(
            f"secret key file {p} belongs to user id {st.st_uid}, not to the user running this node "
            f"(id {os.getuid()}): another user could have planted it or read it; use a key file of your own "
            "(`mpc keygen`) and rotate this one"
        )
    exposed = bool(st.st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    public = _public_instead(p, exposed)
    if public is not None:
        raise ConfigError(f"--key needs this node's secret key, not its public key: {public}")
    if exposed:
        raise SecurityError(
            f"secret key file {p} is readable by other users (mode {stat.filemode(st.st_mode)}); "
            f"run `chmod 600 {p}` and, since it may have leaked, consider rotating the key"
        )


def load_secret_key(path: str | Path) -> bytes:
    """The z85 secret key in ``path``: a regular file of this user, not a link, not readable by others."""
    p = Path(path)
    fd = _open_secret(p)
    try:
        _check_secret_file(p, os.fstat(fd))
        try:
            raw = os.read(fd, 4096)
        except OSError as exc:
            raise ConfigError(f"cannot read the secret key file {p}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    text = raw.strip()
    if len(text) != 40 or not text.isascii():
        raise ConfigError(
            f"{p} does not hold a z85 Curve25519 secret key (40 characters): pass a NAME{SECRET_SUFFIX} "
            "file from `mpc keygen`"
        )
    try:
        public_of(text)
    except ConfigError:
        raise ConfigError(f"{p} does not hold a valid Curve25519 secret key") from None
    return text


def keys_for_node(cluster: Cluster, node_id: int, secret: bytes) -> NodeKeys:
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
    public = public_of(secret)
    if public.decode("ascii") != keys[node_id]:
        raise SecurityError(
            f"the secret key given to {who} does not match the public key that {cluster.source} lists for {who}: "
            "wrong key file, wrong --id, or an outdated cluster file"
        )
    return NodeKeys(public, secret, tuple(k.encode("ascii") for k in keys))  # type: ignore[union-attr]


def ephemeral_keys(count: int) -> list[tuple[bytes, bytes]]:
    """Fresh key pairs for a local run (kept in memory or in a private temp dir)."""
    return [keypair() for _ in range(count)]
