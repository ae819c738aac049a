"""Loopback ports for local runs: bound by the parent, handed to the children, never guessed.

A local run (``mpc.run``, ``mpc launch``) needs one listening address per node
before any node starts, because every node connects to every other one.  The
old way (bind port 0, read the number, release it, let the child bind it again)
races: another process can take the port in between.  Three robust ways were
considered:

1. every node binds ``tcp://127.0.0.1:*`` and reports its port to the parent,
   which sends every node the full list: needs a second channel back into each
   node, and for ``mpc launch`` a per-party command that differs from the one
   used across hosts (the cluster file could not be written before the start);
2. retry on ``EADDRINUSE`` with fresh ports: every node of the run must restart
   with a new cluster file, and the race is only made rarer;
3. **the parent binds and listens** on port 0, writes those ports into the
   cluster, and hands each child its listening socket; the child's ZeroMQ PULL
   socket adopts it with ``ZMQ_USE_FD`` (libzmq >= 4.2) instead of binding.

We use 3: the port is held from the moment it is chosen until the node owns it,
so nothing can take it; the cluster file is complete before any child starts,
so ``mpc party`` runs exactly as across hosts (plus ``--listen-fd``); and the
hand-over is the operating system's own fd passing: ``subprocess``'s
``pass_fds`` for ``mpc launch``, and for ``mpc.run`` the socket object passed as
an argument to a ``spawn`` child (multiprocessing duplicates it into the child).
A connection that arrives before the child adopts the socket waits in the
kernel's accept queue.  The parent closes its copies once the children run.
"""

from __future__ import annotations

import socket

__all__ = ["Listeners", "adopt_listener"]

BACKLOG = 128


class Listeners:
    """``count`` TCP sockets bound to ``host`` on ports the OS chose, already listening.

    ``addresses[i]`` is ``tcp://host:port`` of socket ``i``.  ``socket(i)``
    passes one to a child process, ``fd(i)`` its descriptor (``pass_fds``),
    ``take(i)`` detaches it for a ``ZmqCommunicator`` in this process (which
    then owns it).  ``close()`` releases every socket not taken.
    """

    def __init__(self, count: int, host: str = "127.0.0.1") -> None:
        self._socks: list[socket.socket | None] = []
        try:
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._socks.append(s)
                s.bind((host, 0))
                s.listen(BACKLOG)
        except BaseException:
            self.close()
            raise
        self.addresses = [f"tcp://{host}:{s.getsockname()[1]}" for s in self._socks if s is not None]

    def socket(self, i: int) -> socket.socket:
        s = self._socks[i]
        if s is None:
            raise ValueError(f"listening socket {i} was already taken")
        return s

    def fd(self, i: int) -> int:
        return self.socket(i).fileno()

    def take(self, i: int) -> int:
        fd = self.socket(i).detach()
        self._socks[i] = None
        return fd

    def close(self) -> None:
        for i, s in enumerate(self._socks):
            if s is not None:
                s.close()
                self._socks[i] = None

    def __enter__(self) -> Listeners:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def adopt_listener(sock: socket.socket | None) -> int | None:
    """In a child: the descriptor of the listening socket it was handed (ownership passes to the caller)."""
    return None if sock is None else sock.detach()
