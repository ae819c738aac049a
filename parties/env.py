"""The environment of a launched party: the one set of variable names, its writer and its reader.

``mpc party`` (which ``mpc launch`` starts) writes these for the script it runs
and for any process the script starts; ``mpc.init()`` reads them, once, at the
edge.  Both go through this module, so the names cannot drift apart.

=================  ======================================================
``MPC_CLUSTER``    absolute path of the cluster file
``MPC_RANK``       this party's id in it
``MPC_WORLD_SIZE`` number of parties (informational: the file is the truth)
``MPC_KEY``        path of this party's secret key file (absent: none)
``MPC_INSECURE``   ``1`` for a run without encryption or authentication
``MPC_RESUME``     checkpoint directory to resume from (absent: a fresh start);
                   ``mpc.init()`` puts it in the config (``resume_dir``)
=================  ======================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mpc.errors import ConfigError

__all__ = [
    "ENV_CLUSTER",
    "ENV_RANK",
    "ENV_WORLD_SIZE",
    "ENV_KEY",
    "ENV_INSECURE",
    "ENV_RESUME",
    "ENV_NAMES",
    "PartyEnv",
]

ENV_CLUSTER = "MPC_CLUSTER"
ENV_RANK = "MPC_RANK"
ENV_WORLD_SIZE = "MPC_WORLD_SIZE"
ENV_KEY = "MPC_KEY"
ENV_INSECURE = "MPC_INSECURE"
ENV_RESUME = "MPC_RESUME"
ENV_NAMES = (ENV_CLUSTER, ENV_RANK, ENV_WORLD_SIZE, ENV_KEY, ENV_INSECURE, ENV_RESUME)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class PartyEnv:
    """What a launched party's environment says: where the cluster file is, who this party is, what it resumes."""

    cluster: str
    rank: int
    world_size: int | None = None
    key: str | None = None
    insecure: bool = False
    resume: str | None = None

    def variables(self) -> dict[str, str]:
        """The variables to set (``MPC_KEY``, ``MPC_WORLD_SIZE`` and ``MPC_RESUME`` only when known)."""
        out = {
            ENV_CLUSTER: str(Path(self.cluster).resolve()),
            ENV_RANK: str(self.rank),
            ENV_INSECURE: "1" if self.insecure else "0",
        }
        if self.world_size is not None:
            out[ENV_WORLD_SIZE] = str(self.world_size)
        if self.key is not None:
            out[ENV_KEY] = str(Path(self.key).resolve())
        if self.resume is not None:
            out[ENV_RESUME] = str(Path(self.resume).resolve())
        return out

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> PartyEnv | None:
        """The party environment in ``environ``; ``None`` when it names no cluster and rank."""
        cluster, rank = environ.get(ENV_CLUSTER), environ.get(ENV_RANK)
        if not cluster or rank is None:
            return None
        if not rank.isdigit():
            raise ConfigError(f"{ENV_RANK} must be a party id (0, 1, ...), got {rank!r}")
        size = environ.get(ENV_WORLD_SIZE)
        if size is not None and not size.isdigit():
            raise ConfigError(f"{ENV_WORLD_SIZE} must be a number of parties, got {size!r}")
        return cls(
            cluster,
            int(rank),
            int(size) if size is not None else None,
            environ.get(ENV_KEY) or None,
            _flag(environ.get(ENV_INSECURE)),
            environ.get(ENV_RESUME) or None,
        )
