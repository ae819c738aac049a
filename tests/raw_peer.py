"""A peer that speaks the sealed wire by hand, with a node's real keys: for tests of what a node refuses.

It listens where the cluster says that node listens (so the node under test
sends it its hello), sends its own hello, and then seals whatever frames a test
gives it (``send``) or sends bytes as they are (``send_raw``: forged, replayed,
reordered frames).  Used in this process (``test_security.py``) and in a
spawned one (``test_memory_bounds.py``).
"""

from __future__ import annotations

import os
import time

import zmq

from parties.seal import NodeKeys, Sealer


class RawPeer:
    """Node ``rank`` (its real keys from ``keys``), listening at ``address`` (or on ``listen_fd``), linked to
    ``target`` at ``target_address``."""

    def __init__(
        self,
        rank: int,
        keys: list[tuple[bytes, bytes]],
        address: str,
        target: int,
        target_address: str,
        listen_fd: int | None = None,
    ) -> None:
        self.target = target
        self.sealer = Sealer(rank, NodeKeys(*keys[rank], tuple(k[0] for k in keys)), [target])
        self.zctx = zmq.Context()
        self.pull = self.zctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        if listen_fd is not None:
            os.set_blocking(listen_fd, False)
            self.pull.setsockopt(zmq.USE_FD, listen_fd)
        self.pull.bind(address)
        self.address = self.pull.last_endpoint.decode()
        self.push = self.zctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(target_address)

    def handshake(self, timeout: float = 10.0) -> None:
        """Send this peer's hello and take the target's (its first frame here)."""
        self.push.send_multipart([self.sealer.hello(self.target), b""])
        deadline = time.monotonic() + timeout
        while not self.sealer.ready(self.target):
            if not self.pull.poll(100):
                assert time.monotonic() < deadline, "no hello from the node under test"
                continue
            head, body = self.pull.recv_multipart()
            self.sealer.open(head, body)

    def seal(self, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        head, body = self.sealer.seal(self.target, header, payload)
        return head, bytes(body)

    def send(self, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        """Seal and send ``[header, payload]``; returns the sealed parts (to replay them)."""
        frame = self.seal(header, payload)
        self.send_raw(*frame)
        return frame

    def send_raw(self, head: bytes, body: bytes) -> None:
        self.push.send_multipart([head, body], copy=len(body) < (1 << 16))

    def close(self) -> None:
        self.push.close(0)
        self.pull.close(0)
        self.zctx.term()


__all__ = ["RawPeer"]
