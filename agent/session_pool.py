"""Sessions of one local model that run frames side by side, and the threads that own them.

:class:`SessionPool` hands each frame's ``session.run`` to a free session while the frame's preparation and
decoding go on outside it (:meth:`agent.model.OnnxModel._detect_on`). With ``own_threads`` every session is
run by a thread of its own that takes the queued runs one after the other, for accelerators: a run queued
behind another starts as soon as that one returns, instead of after the waiting frame's thread is woken and
gets the interpreter back (~1 ms of a 4 ms accelerator run on a busy 2-core machine, README "Speed").
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from agent.detections import Detections

if TYPE_CHECKING:
    from agent.model import OnnxModel

__all__ = ["SessionPool"]

_Outputs = tuple[NDArray[np.float32], ...]
_Reply = queue.SimpleQueue[_Outputs | BaseException]


class SessionPool:
    """Several :class:`~agent.model.OnnxModel` sessions of one model that run frames side by side.

    On a small CPU a model makes poor use of intra-op threads: two sessions of one thread each, two frames in
    flight, gave 1.14x (YOLOv8n-seg) to 1.27x (the demo model) the frames/s of one session of two threads on
    2 cores, at less CPU per frame, and 1.5-1.7x the time of a lone frame (``benchmarks/sessions.py``).
    ``detect`` prepares and decodes the frame itself and takes a free session only for its ``session.run``
    (waiting for one when all are busy), so with more frames in flight than sessions a frame's CPU work goes
    on beside the sessions' runs (``inference.local.frames_in_flight``: an accelerator's case); everything
    else is the first session's.

    ``own_threads``: each session's runs are made by a thread of its own (started at the first run, stopped
    by :meth:`close`), taking runs from one queue in arrival order; for more frames in flight than sessions.
    """

    def __init__(self, models: Sequence[OnnxModel], *, own_threads: bool = False) -> None:
        if not models:
            raise ValueError("a session pool needs at least one model")
        self.models = list(models)
        self._free: queue.SimpleQueue[OnnxModel] = queue.SimpleQueue()
        for m in self.models:
            self._free.put(m)
        self.own_threads = own_threads
        self._runs: queue.SimpleQueue[tuple[NDArray[np.float32], _Reply] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._closed = False

    @property
    def size(self) -> int:
        return len(self.models)

    @property
    def class_names(self) -> list[str]:
        return self.models[0].class_names

    @class_names.setter
    def class_names(self, names: list[str]) -> None:
        for m in self.models:
            m.class_names = list(names)

    def needed_hw(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return self.models[0].needed_hw(frame_hw)

    def detect(
        self,
        image_bgr: NDArray[Any],
        *,
        confidence: float,
        overlap: float,
        max_detections: int = 300,
        frame_hw: tuple[int, int] | None = None,
    ) -> Detections:
        return self.models[0]._detect_on(self.run, image_bgr, confidence, overlap, max_detections, frame_hw)

    def run(self, tensor_nchw: NDArray[np.float32]) -> _Outputs:
        """:meth:`OnnxModel.run` on a free session (waiting for one when all are busy)."""
        if self.own_threads:
            return self._run_queued(tensor_nchw)
        model = self._free.get()
        try:
            return model.run(tensor_nchw)
        finally:
            self._free.put(model)

    def close(self) -> None:
        """Stop the sessions' own threads (runs queued before are made first); later runs raise RuntimeError."""
        with self._start_lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            self._runs.put(None)
        for thread in threads:
            thread.join(timeout=5.0)

    def _run_queued(self, tensor_nchw: NDArray[np.float32]) -> _Outputs:
        with self._start_lock:
            if self._closed:
                raise RuntimeError("the session pool is closed")
            if not self._threads:
                for i, model in enumerate(self.models):
                    thread = threading.Thread(target=self._serve, args=(model,), name=f"session-{i}", daemon=True)
                    thread.start()
                    self._threads.append(thread)
            reply: _Reply = queue.SimpleQueue()
            self._runs.put((tensor_nchw, reply))  # under the lock: never behind close()'s stop marks
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def _serve(self, model: OnnxModel) -> None:
        """One session's thread: the queued runs, one after the other, until :meth:`close`'s ``None``."""
        while (item := self._runs.get()) is not None:
            tensor, reply = item
            try:
                reply.put(model.run(tensor))
            except BaseException as exc:  # handed to the frame's own thread, which raises it there
                reply.put(exc)

    def __repr__(self) -> str:
        return f"SessionPool({len(self.models)} x {self.models[0]!r})"
