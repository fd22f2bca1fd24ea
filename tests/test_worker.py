"""agent.worker.CameraWorker: delivery in capture order, and with several frames in flight, at once."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np

from agent.frames import Frame
from agent.router import Outcome
from agent.worker import CameraWorker, FrameIds


class _Store:
    def __init__(self) -> None:
        self.meta: dict[str, str] = {}

    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.meta[key] = value


class _SlowSource:
    """A camera whose frames come far apart: the first at once, each next one only when the test says."""

    ended = False

    def __init__(self, frames: int) -> None:
        self._left = frames
        self._seq = 0
        self.next_frame = threading.Event()
        self.next_frame.set()
        self.waiting = threading.Event()  # the worker is waiting for a frame that has not come

    def status(self) -> Any:
        return SimpleNamespace(name="cam0")

    def read(self, timeout: float) -> Frame | None:
        # Ignores timeout on purpose: a long frame interval. Bounded so a failing test ends.
        if not self.next_frame.is_set():
            self.waiting.set()
        if self._left == 0 or not self.next_frame.wait(60):
            self.ended = True
            return None
        self.next_frame.clear()
        self._left -= 1
        self._seq += 1
        return Frame("cam0", self._seq, float(self._seq), np.zeros((4, 4, 3), np.uint8), self._seq, (4, 4))


def test_a_frame_in_flight_is_delivered_without_waiting_for_the_next_frame() -> None:
    """in_flight > 1 (hosted calls, frames_in_flight): a finished frame must not wait for the camera's next
    frame (up to a frame interval: 0.5 s at 2 fps) to be delivered. The next frame comes only after the first
    result was delivered, so this ends only if delivery does not wait for it."""
    camera = _SlowSource(frames=3)
    delivered: list[int] = []
    stopping = threading.Event()

    def infer(frame: Frame) -> Outcome:
        camera.waiting.wait(60)  # finish only once the worker waits for the next frame
        camera.waiting.clear()
        return Outcome({"predictions": []}, "local", 1.0, None)

    def deliver(frame: Frame, frame_id: int, outcome: Outcome) -> None:
        delivered.append(frame_id)
        if len(delivered) == 3:
            stopping.set()
        camera.next_frame.set()

    worker = CameraWorker(
        camera,  # type: ignore[arg-type]
        FrameIds("cam0", _Store()),
        in_flight=2,
        admit=lambda frame: True,
        infer=infer,
        deliver=deliver,
        deliver_failure=lambda frame, frame_id, exc: None,
        stopping=stopping,
    )
    worker.start()
    assert worker.done.wait(120), "the worker never finished"
    worker.stop(5)
    assert delivered == [1, 2, 3] and not worker.crashed
