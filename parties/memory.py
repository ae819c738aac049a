"""In-process transport: one queue per node, for the thread simulator and tests."""

from __future__ import annotations

import queue

from .comm_base import BufferedCommunicator, Frames, Recorder

__all__ = ["MemoryHub", "MemoryCommunicator"]


class MemoryHub:
    """The shared mailboxes of one simulated run (parties 0..n-1 and, unless ``dealer=False``, the dealer n)."""

    def __init__(self, world_size: int, dealer: bool = True) -> None:
        self.world_size = world_size
        self.dealer = dealer
        self.boxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(world_size + int(dealer))]


class MemoryCommunicator(BufferedCommunicator):
    def __init__(
        self,
        hub: MemoryHub,
        rank: int,
        timeout: float,
        max_message_bytes: int,
        recorder: Recorder | None = None,
        **limits: float,
    ) -> None:
        super().__init__(rank, hub.world_size, timeout, max_message_bytes, recorder, dealer=hub.dealer, **limits)
        self._hub = hub

    def _post(self, peer: int, header: bytes, payload, final: bool = False) -> None:
        # The memory transport authenticates by construction: it knows the sender.
        self._hub.boxes[peer].put((header, bytes(payload), self.rank))

    def _poll(self, timeout: float) -> Frames | None:
        try:
            return self._hub.boxes[self.rank].get(timeout=timeout)
        except queue.Empty:
            return None

    def _close_transport(self) -> None:
        pass
