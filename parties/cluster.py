"""The cluster file: every party's and the dealer's address and public key.

::

    [options]                  # optional; every party must use the same
    frac_bits = 16
    timeout = 60.0             # seconds a receive waits before naming the peer

    [dealer]
    address = "tcp://10.0.0.9:7000"
    public_key = "z85 text"    # from `mpc keygen`; omitted only for --insecure runs

    [[parties]]
    id = 0
    address = "tcp://10.0.0.1:7000"
    public_key = "..."

Loaded once at the CLI edge into a frozen ``Cluster`` and passed down.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from mpc.config import MPCConfig
from mpc.errors import ConfigError

__all__ = ["Node", "Cluster", "load_cluster", "write_cluster", "free_tcp_addresses"]

_SCHEMES = ("tcp://", "ipc://", "inproc://")
_OPTION_KEYS = {"frac_bits", "timeout", "max_message_bytes", "suite"}


@dataclass(frozen=True)
class Node:
    id: int | str
    address: str
    public_key: str | None = None


@dataclass(frozen=True)
class Cluster:
    parties: tuple[Node, ...]
    dealer: Node
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def world_size(self) -> int:
        return len(self.parties)

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.parties] + [self.dealer.address]

    def node(self, node_id: int) -> Node:
        return self.dealer if node_id == self.world_size else self.parties[node_id]

    def public_keys(self) -> list[str | None]:
        return [p.public_key for p in self.parties] + [self.dealer.public_key]

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
    if key is not None and (not isinstance(key, str) or len(key) != 40):
        raise ConfigError(f"{source}: {where} public_key must be the 40-character z85 text from `mpc keygen`")
    return Node(node_id, addr, key)


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
    if "dealer" not in data:
        raise ConfigError(f"{source}: needs a [dealer] section with its address")
    dealer = _node(data["dealer"], "[dealer]", source, "dealer")
    nodes = [parties[i] for i in range(len(parties))] + [dealer]
    seen: dict[str, str] = {}
    for nd in nodes:
        who = "the dealer" if nd.id == "dealer" else f"party {nd.id}"
        if nd.address in seen:
            raise ConfigError(f"{source}: {who} claims the address {nd.address} of {seen[nd.address]}")
        seen[nd.address] = who
    keys = [nd.public_key for nd in nodes if nd.public_key is not None]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{source}: two nodes list the same public key; every party and the dealer need their own")
    options = data.get("options", {})
    if not isinstance(options, dict) or set(options) - _OPTION_KEYS:
        raise ConfigError(f"{source}: [options] may only set {sorted(_OPTION_KEYS)}")
    cluster = Cluster(tuple(nodes[:-1]), dealer, dict(options), source)
    cluster.config()  # validate the options now
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
    for title, nd in [("[dealer]", cluster.dealer)] + [("[[parties]]", p) for p in cluster.parties]:
        lines.append(title)
        if title == "[[parties]]":
            lines.append(f"id = {nd.id}")
        lines.append(f"address = {_toml_value(nd.address)}")
        if nd.public_key:
            lines.append(f"public_key = {_toml_value(nd.public_key)}")
        lines.append("")
    Path(path).write_text("\n".join(lines))


def free_tcp_addresses(count: int, host: str = "127.0.0.1") -> list[str]:
    """Addresses on ports the OS just reported free.

    A port is free when checked; another process could take it before the party
    binds, which then fails with a clear "address already in use".  Local runs
    only: across hosts, the cluster file names the ports.
    """
    socks, out = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            out.append(f"tcp://{host}:{s.getsockname()[1]}")
    finally:
        for s in socks:
            s.close()
    return out
