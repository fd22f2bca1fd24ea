"""One camera's worker: sampled frames in, results out, in frame order.

A :class:`CameraWorker` takes each sampled frame from its camera, asks whether to admit it (the change gate,
caps), gives it the next :class:`FrameIds` id, infers it (itself when one frame at a time is in flight, as
with a local model; on a small pool for concurrent hosted calls) and hands every result, or the failure of a
frame that got none, to the sink in the order the frames were captured. It knows nothing of the router,
the outbox or the daemon: it gets narrow callables.

Importing this module has no side effects; a worker starts its thread in :meth:`CameraWorker.start`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol

from agent.capture import Camera, Frame
from agent.measures import Rate
from agent.router import FrameFailed, Outcome

__all__ = ["CameraWorker", "FrameIds", "Heartbeat"]

log = logging.getLogger("agent.daemon")

_POLL_S = 0.5
_FRAME_ID_BLOCK = 1000


class _MetaStore(Protocol):
    """Small persistent values (the outbox offers them)."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


class FrameIds:
    """One camera's ``frame_id``: one more per processed frame, surviving restarts without a disk write per
    frame. Ids are reserved in blocks of ``block``; :meth:`save` stores the exact value on a clean stop; after
    a crash the next run starts past the reserved block (a gap that marks the restart, never an id used twice).
    """

    def __init__(self, camera: str, store: _MetaStore, *, block: int = _FRAME_ID_BLOCK) -> None:
        self._key = f"frame_id/{camera}"
        self._store = store
        self._block = block
        stored = store.get_meta(self._key)
        self.last = int(stored) if stored and stored.isdigit() else 0
        self._reserved = self.last

    def next(self) -> int:
        self.last += 1
        if self.last > self._reserved:
            self._reserved = self.last + self._block
            self._store.set_meta(self._key, str(self._reserved))
        return self.last

    def save(self) -> None:
        """Store the exact last id (a clean stop: the next run goes on from it)."""
        self._store.set_meta(self._key, str(self.last))


class Heartbeat:
    """When a stage loop last went round: the watchdog's evidence that the stage is not stuck."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.at


Deliver = Callable[[Frame, int, Outcome], None]
DeliverFailure = Callable[[Frame, int, FrameFailed], None]


class CameraWorker:
    """Takes sampled frames from one camera, infers with up to ``in_flight`` at once, delivers in order.

    Finished results wait for the frames captured before them, so delivery is in capture order; how many
    wait is bounded by time (frames arriving during one hosted call), not by a queue of calls."""

    def __init__(
        self,
        camera: Camera,
        frame_ids: FrameIds,
        *,
        in_flight: int,
        admit: Callable[[Frame], bool],
        infer: Callable[[Frame], Outcome],
        deliver: Deliver,
        deliver_failure: DeliverFailure,
        stopping: threading.Event,
        on_frame: Callable[[], None] = lambda: None,
    ) -> None:
        """``stopping``: set when the daemon stops (the worker then finishes what is in flight).
        ``on_frame``: called for every frame read (the daemon's "first frame captured")."""
        self.camera = camera
        self.name = camera.status().name
        self._ids = frame_ids
        self._in_flight = in_flight
        self._max_in_flight = in_flight  # set_in_flight() may lower it (a mode change), never raise it past this
        self._admit = admit
        self._infer_one = infer
        self._deliver = deliver
        self._deliver_failure = deliver_failure
        self._stopping = stopping
        self._on_frame = on_frame
        # One in flight (local inference): the worker infers itself, no hand-off to another thread per frame.
        self._pool: ThreadPoolExecutor | None = None
        if in_flight > 1:
            self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=f"infer-{self.name}")
        self._pending: deque[tuple[Frame, int, Future[Outcome]]] = deque()
        self.processed = Rate(window_s=10.0)
        self.crashed = False  # the loop died of a bug (logged); the daemon's other cameras go on
        self._detect = True  # set_detect(False): frames are read and dropped, none is inferred
        self.frames_paused = 0  # frames read and dropped while detection was off
        self.heartbeat = Heartbeat()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"worker-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set_in_flight(self, n: int) -> None:
        """At most ``n`` frames under way from now on (1 up to what the worker was built with)."""
        self._in_flight = max(1, min(n, self._max_in_flight))

    @property
    def detecting(self) -> bool:
        return self._detect

    def set_detect(self, on: bool) -> None:
        """Detection on or off. Off: frames are still read (the camera stays live, the watchdog fed) but none
        is admitted, so no result follows once the frames already under way are delivered."""
        if on != self._detect:
            log.info("camera %s: detection %s", self.name, "on" if on else "off")
        self._detect = on

    def stop(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the loop to finish its in-flight frames once ``stopping`` is set."""
        self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.heartbeat.beat()
                self._complete(block=False)
                if self._under_way() >= self._in_flight:
                    # Never more than in_flight frames under way: wait for one to finish, however long it
                    # takes (the camera keeps only its newest frame meanwhile). Giving up and reading another
                    # frame would queue frames behind slow calls.
                    self._wait_any()
                    continue
                frame = self.camera.read(timeout=_POLL_S)
                if frame is None:
                    if self.camera.ended and not self._pending:
                        log.info("camera %s: source ended", self.name)
                        break
                    continue
                self._on_frame()
                if not self._detect:
                    self.frames_paused += 1
                    continue
                if not self._admit(frame):
                    continue
                frame_id = self._ids.next()
                self._pending.append((frame, frame_id, self._start_inference(frame)))
            # Stopping (or the source ended): finish what is in flight, in order.
            while self._pending:
                self.heartbeat.beat()
                self._complete(block=True)
            self._ids.save()
        except Exception:  # a bug, not a state: say it loudly, keep the daemon's other cameras going
            log.exception("camera %s: worker failed", self.name)
            self.crashed = True
        finally:
            self.done.set()

    def _under_way(self) -> int:
        return sum(1 for _, _, future in self._pending if not future.done())

    def _wait_any(self) -> None:
        """Until some frame under way finishes, or :data:`_POLL_S` passes (the loop looks at ``stopping``)."""
        wait([f for _, _, f in self._pending if not f.done()], timeout=_POLL_S, return_when=FIRST_COMPLETED)

    def _start_inference(self, frame: Frame) -> Future[Outcome]:
        if self._pool is not None:
            return self._pool.submit(self._infer_one, frame)
        future: Future[Outcome] = Future()
        try:
            future.set_result(self._infer_one(frame))
        except Exception as exc:  # handed to _complete exactly as the pool would hand it
            future.set_exception(exc)
        return future

    def _complete(self, *, block: bool) -> None:
        """Deliver every finished head-of-line result; wait for the head if ``block``."""
        while self._pending:
            frame, frame_id, future = self._pending[0]
            if not future.done():
                if not block:
                    return
                try:
                    future.exception(timeout=_POLL_S)
                except TimeoutError:
                    return
            self._pending.popleft()
            block = False
            try:
                outcome = future.result()
            except FrameFailed as exc:  # serverless mode without a local model, or the local model broke
                self._deliver_failure(frame, frame_id, exc)
            else:
                self._deliver(frame, frame_id, outcome)
            self.processed.mark()
