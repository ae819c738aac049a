"""The cluster file: every party's and the dealer's address and public key.

::

    [options]                  # optional; every party must use the same
    frac_bits = 16
    timeout = 60.0             # seconds a receive waits before naming the peer
    protocol = "additive-dealer"   # the protocol family (mpc.config.PROTOCOLS)
    link_delay = 0.0           # seconds each frame is held where it arrives: emulated latency, for benchmarks

    [dealer]                   # only for a family that needs a dealer (additive-dealer);
    address = "tcp://10.0.0.9:7000"
    public_key = "z85 text"    # from `mpc keygen`; omitted only for --insecure runs

    [[parties]]
    id = 0
    address = "tcp://10.0.0.1:7000"
    public_key = "..."

Which nodes a cluster has is the protocol family's to say: node ids are the
parties ``0..n-1`` and, only when ``family.needs_dealer``, the dealer ``n``.  A
[dealer] section under a family without one is refused, as is its absence under
a family that needs one.

Public keys are checked to be z85 text of 32 bytes when the file is read, and
two nodes may not share an address: ``tcp://`` host names are resolved to
compare them (``localhost`` and ``127.0.0.1`` on one port clash), falling back to
the text when a name does not resolve.

Loaded once at the CLI edge into a frozen ``Cluster`` and passed down.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from zmq.utils import z85

from mpc.config import MPCConfig
from mpc.errors import ConfigError
from protocols.families import get_family

__all__ = ["Node", "Cluster", "parse_cluster", "load_cluster", "write_cluster"]

_SCHEMES = ("tcp://", "ipc://", "inproc://")
_OPTION_KEYS = {
    "frac_bits", "timeout", "max_message_bytes", "protocol", "chunk_bytes", "max_buffered_bytes", "link_delay"
}  # fmt: skip


@dataclass(frozen=True)
class Node:
    id: int | str
    address: str
    public_key: str | None = None


@dataclass(frozen=True)
class Cluster:
    """The nodes of a run: parties ``0..n-1`` and the dealer ``n`` iff the family needs one (checked here)."""

    parties: tuple[Node, ...]
    dealer: Node | None
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.config()  # validate the options (the protocol's name among them) first
        family = self.family
        if family.needs_dealer and self.dealer is None:
            raise ConfigError(
                f"{self.source}: the {family.name} protocol family needs a dealer: add a [dealer] section "
                'with its address (or set protocol = "plaintext" in [options] for an insecure debug run)'
            )
        if not family.needs_dealer and self.dealer is not None:
            raise ConfigError(
                f"{self.source}: the {family.name} protocol family needs no dealer: remove the [dealer] "
                'section (or set protocol = "additive-dealer" in [options] to run with one)'
            )
        problem = family.check_parties(len(self.parties))
        if problem is not None:
            raise ConfigError(f"{self.source}: {problem}")

    @property
    def family(self) -> Any:
        """The protocol family named by ``[options] protocol`` (default: ``MPCConfig``'s)."""
        return get_family(self.options.get("protocol", MPCConfig.protocol))

    @property
    def world_size(self) -> int:
        return len(self.parties)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node in id order: the parties, then the dealer if there is one."""
        return self.parties + ((self.dealer,) if self.dealer is not None else ())

    @property
    def addresses(self) -> list[str]:
        return [nd.address for nd in self.nodes]

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def public_keys(self) -> list[str | None]:
        return [nd.public_key for nd in self.nodes]

    def config(self, **overrides: Any) -> MPCConfig:
        opts = dict(self.options)
        opts.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return MPCConfig(**opts)
        except TypeError as exc:
            raise ConfigError(f"{self.source}: bad [options]: {exc}") from None


def _node(raw: Any, where: str, source: str, node_id: int | str) -> Node:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a table")
    unknown = set(raw) - {"id", "address", "public_key"}
    if unknown:
        raise ConfigError(f"{source}: {where} has unknown keys {sorted(unknown)}")
    addr = raw.get("address")
    if not isinstance(addr, str) or not addr.startswith(_SCHEMES):
        raise ConfigError(f'{source}: {where} needs address = "tcp://HOST:PORT" (or ipc://, inproc://), got {addr!r}')
    if addr.startswith("tcp://"):
        host, _, port = addr[6:].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{source}: {where} address {addr!r} needs a host and a port in 1..65535")
    key = raw.get("public_key")
    if key is not None and not _is_curve_key(key):
        raise ConfigError(
            f"{source}: {where} public_key {key!r} is not a Curve25519 public key: it must be the 40-character z85 "
            "text (32 bytes) of the NAME.key file that `mpc keygen` wrote for that node; copy it again"
        )
    return Node(node_id, addr, key)


def _is_curve_key(key: Any) -> bool:
    """Whether ``key`` is z85 text of a 32-byte Curve25519 key."""
    if not isinstance(key, str) or len(key) != 40 or not key.isascii():
        return False
    try:
        return len(z85.decode(key.encode("ascii"))) == 32
    except (KeyError, ValueError, TypeError):  # z85.decode raises KeyError on a character outside its alphabet
        return False


def _endpoints(address: str) -> set:
    """What ``address`` listens on: the resolved (ip, port) pairs of a tcp:// address, else (or when it
    does not resolve) the text itself, so that ``localhost`` and ``127.0.0.1`` on one port are one address."""
    if not address.startswith("tcp://"):
        return {address}
    host, _, port = address[6:].rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return {address}
    return {(info[4][0], info[4][1]) for info in infos} or {address}


def _port(address: str) -> str | None:
    return address.rpartition(":")[2] if address.startswith("tcp://") else None


def _check_addresses(nodes: list[Node], source: str) -> None:
    """Refuse two nodes with one address, comparing resolved host names (only names that share a port are
    resolved, so a cluster across hosts on distinct ports never waits for the name service)."""
    resolved: dict[str, set] = {}

    def endpoints(address: str) -> set:
        if address not in resolved:
            resolved[address] = _endpoints(address)
        return resolved[address]

    seen: list[tuple[Node, str]] = []
    for nd in nodes:
        who = "the dealer" if nd.id == "dealer" else f"party {nd.id}"
        for other, other_who in seen:
            same = nd.address == other.address
            if not same and _port(nd.address) is not None and _port(nd.address) == _port(other.address):
                common = endpoints(nd.address) & endpoints(other.address)
                same = bool(common)
            if same:
                how = "" if nd.address == other.address else f" ({nd.address} and {other.address} are the same address)"
                raise ConfigError(
                    f"{source}: {who} claims the address {nd.address} of {other_who}{how}: give every party and "
                    "the dealer its own host:port"
                )
        seen.append((nd, who))


def parse_cluster(data: dict[str, Any], source: str = "<memory>") -> Cluster:
    unknown = set(data) - {"options", "dealer", "parties"}
    if unknown:
        raise ConfigError(f"{source}: unknown sections {sorted(unknown)}; expected [options], [dealer], [[parties]]")
    plist = data.get("parties")
    if not isinstance(plist, list) or len(plist) < 2:
        raise ConfigError(f"{source}: needs at least two [[parties]] entries")
    parties: dict[int, Node] = {}
    for k, raw in enumerate(plist):
        pid = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise ConfigError(f"{source}: [[parties]] entry {k} needs an integer id")
        if pid in parties:
            raise ConfigError(f"{source}: party id {pid} appears twice")
        parties[pid] = _node(raw, f"party {pid}", source, pid)
    if sorted(parties) != list(range(len(parties))):
        raise ConfigError(f"{source}: party ids must be 0..{len(parties) - 1}, got {sorted(parties)}")
    dealer = _node(data["dealer"], "[dealer]", source, "dealer") if "dealer" in data else None
    nodes = [parties[i] for i in range(len(parties))] + ([dealer] if dealer is not None else [])
    _check_addresses(nodes, source)
    keys = [nd.public_key for nd in nodes if nd.public_key is not None]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{source}: two nodes list the same public key; every party and the dealer need their own")
    options = data.get("options", {})
    if not isinstance(options, dict) or set(options) - _OPTION_KEYS:
        raise ConfigError(f"{source}: [options] may only set {sorted(_OPTION_KEYS)}")
    cluster = Cluster(tuple(parties[i] for i in range(len(parties))), dealer, dict(options), source)
    return cluster


def load_cluster(path: str | Path) -> Cluster:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cluster file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cluster file {p} is not valid TOML: {exc}") from None
    return parse_cluster(data, str(p))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_cluster(cluster: Cluster, path: str | Path) -> None:
    lines = []
    if cluster.options:
        lines.append("[options]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(cluster.options.items())]
        lines.append("")
    dealer = [("[dealer]", cluster.dealer)] if cluster.dealer is not None else []
    for title, nd in dealer + [("[[parties]]", p) for p in cluster.parties]:
        lines.append(title)
        if title == "[[parties]]":
            lines.append(f"id = {nd.id}")
        lines.append(f"address = {_toml_value(nd.address)}")
        if nd.public_key:
            lines.append(f"public_key = {_toml_value(nd.public_key)}")
        lines.append("")
    Path(path).write_text("\n".join(lines))
