"""Snapshots: an annotated JPEG of each camera's latest result (masks, boxes, labels), retained on
``{topic_prefix}/{device_id}/{camera}/snapshot`` as raw JPEG bytes, for Home Assistant's ``image`` entity and
anyone who wants to look.

Drawn here from the API-format result (box centre and size, ``points`` polygons, in true-frame pixels), the
same whether the hosted API or the local model made it, on the frame's own pixels. A frame that went up as
its camera's JPEG is decoded only when its snapshot is due, at the smallest JPEG reduction that covers the
snapshot's height.

Cost to the worker: :meth:`Snapshots.deliver` (a :class:`agent.pipeline.Sink` tap) compares one clock reading
per result and, at most every ``interval_s`` per camera, puts the frame in that camera's one slot (a newer
frame replaces one not yet drawn). Decoding, drawing and encoding happen on this module's one thread. When
snapshots are off the tap does not exist.

Snapshots are state, not results: they go straight to the broker through
:meth:`agent.publisher.Publisher.publish_retained` (the newest wins), never through the disk outbox, and one
due while the broker is away is simply not sent. An image that can't be brought under ``max_bytes`` (quality
down to :data:`MIN_QUALITY`, then the height down to :data:`MIN_HEIGHT`) is skipped and counted.

Importing this module has no side effects; the thread starts in :meth:`Snapshots.start`.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.config import SnapshotSettings
from agent.frames import Frame
from agent.logs import Throttle
from agent.measures import LatencyWindow
from agent.router import Outcome

__all__ = ["MIN_HEIGHT", "MIN_QUALITY", "Snapshots", "draw_predictions", "encode_under", "snapshot_topic"]

log = logging.getLogger("agent.snapshots")

MIN_QUALITY = 40  # below this JPEG artefacts hide the masks' edges: make the image smaller instead
MIN_HEIGHT = 120
_QUALITY_STEP = 15
_HEIGHT_STEP = 0.75
_MASK_ALPHA = 0.4
_STOP_WAIT_S = 0.5

Publish = Callable[[str, bytes], None]


def snapshot_topic(topic_base: str, camera: str) -> str:
    """``{topic_prefix}/{device_id}/{camera}/snapshot`` (``topic_base`` is ``Settings.topic_base``)."""
    return f"{topic_base}/{camera}/snapshot"


def class_color(name: str) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per class name (the same in every run and on every device)."""
    hue = zlib.crc32(name.encode()) % 180
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _number(p: Mapping[str, Any], key: str) -> float | None:
    value = p.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        return None
    return float(value)


def _polygon_xy(points: object, scale: float) -> NDArray[np.int32] | None:
    """The ``points`` of one prediction as an (N, 2) int32 array in snapshot pixels; None below 3 points."""
    if not isinstance(points, Sequence) or len(points) < 3:
        return None
    xy = [(_number(q, "x"), _number(q, "y")) for q in points if isinstance(q, Mapping)]
    kept = [(x, y) for x, y in xy if x is not None and y is not None]
    if len(kept) < 3:
        return None
    return np.round(np.asarray(kept, dtype=np.float64) * scale).astype(np.int32)


def _box_xyxy(p: Mapping[str, Any], scale: float) -> tuple[int, int, int, int] | None:
    """A prediction's box (centre x, y and width, height) as corners in snapshot pixels; None if unusable."""
    x, y, w, h = (_number(p, k) for k in ("x", "y", "width", "height"))
    if x is None or y is None or w is None or h is None or w <= 0 or h <= 0:
        return None
    return (
        round((x - w / 2) * scale),
        round((y - h / 2) * scale),
        round((x + w / 2) * scale),
        round((y + h / 2) * scale),
    )


def draw_predictions(image_hw3: NDArray[np.uint8], predictions: Sequence[Any], scale: float) -> NDArray[np.uint8]:
    """``image_hw3`` (BGR) with each prediction's mask filled (translucent), box and label drawn; the
    predictions' coordinates times ``scale`` are the image's pixels. Predictions without a usable box or
    polygon are drawn with what they have; anything else in the list is ignored. Returns a new image."""
    out = image_hw3.copy()
    usable = [p for p in predictions if isinstance(p, Mapping)]
    polygons = [(_polygon_xy(p.get("points"), scale), class_color(str(p.get("class", "")))) for p in usable]
    if any(poly is not None for poly, _ in polygons):
        overlay = out.copy()
        for poly, color in polygons:
            if poly is not None:
                cv2.fillPoly(overlay, [poly], color)
        cv2.addWeighted(overlay, _MASK_ALPHA, out, 1.0 - _MASK_ALPHA, 0.0, dst=out)
        for poly, color in polygons:
            if poly is not None:
                cv2.polylines(out, [poly], True, color, 1, cv2.LINE_AA)
    thickness = max(1, round(out.shape[0] / 360))
    font_scale = max(0.35, out.shape[0] / 1000)
    for p in usable:
        box = _box_xyxy(p, scale)
        if box is None:
            continue
        name = str(p.get("class", ""))
        color = class_color(name)
        x1, y1, x2, y2 = box
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        confidence = _number(p, "confidence")
        label = name if confidence is None else f"{name} {confidence:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - base - 2 if y1 - th - base - 2 >= 0 else y1 + th + 2  # above the box, inside at the top edge
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base), color, cv2.FILLED)
        cv2.putText(out, label, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def encode_under(image_hw3: NDArray[np.uint8], quality: int, max_bytes: int) -> bytes | None:
    """``image_hw3`` as a JPEG of at most ``max_bytes``: at ``quality``, then lower qualities down to
    :data:`MIN_QUALITY`, then the image made smaller in steps down to :data:`MIN_HEIGHT` (at that lowest
    quality). None if even that does not fit."""
    qualities = list(range(quality, MIN_QUALITY - 1, -_QUALITY_STEP)) or [quality]
    if qualities[-1] > MIN_QUALITY and quality > MIN_QUALITY:
        qualities.append(MIN_QUALITY)
    image = image_hw3
    while True:
        for q in qualities:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(q)])
            if ok and buf.size <= max_bytes:
                return buf.tobytes()
        h, w = image.shape[:2]
        if h <= MIN_HEIGHT:
            return None
        new_h = max(MIN_HEIGHT, int(h * _HEIGHT_STEP))
        image = np.asarray(
            cv2.resize(image, (max(1, round(w * new_h / h)), new_h), interpolation=cv2.INTER_AREA), np.uint8
        )
        qualities = qualities[-1:]


def render(frame: Frame, api: Mapping[str, Any], settings: SnapshotSettings) -> bytes | None:
    """The snapshot of one frame's result as JPEG bytes under ``settings.max_bytes``; None if it can't fit.
    Raises ``ValueError`` when the frame's JPEG can't be decoded."""
    fh, fw = frame.frame_hw
    out_h = min(settings.height, fh) if settings.height > 0 else fh
    out_w = max(1, round(fw * out_h / fh))
    pixels = frame.pixels((out_h, out_w))
    if pixels.shape[0] != out_h or pixels.shape[1] != out_w:
        pixels = np.asarray(cv2.resize(pixels, (out_w, out_h), interpolation=cv2.INTER_AREA), dtype=np.uint8)
    predictions = api.get("predictions")
    drawn = draw_predictions(pixels, predictions if isinstance(predictions, list) else [], out_h / fh)
    return encode_under(drawn, settings.quality, settings.max_bytes)


class Snapshots:
    """Per camera at most one snapshot every ``interval_s``, drawn and published on one thread of its own."""

    def __init__(
        self,
        settings: SnapshotSettings,
        publish: Publish,
        topic_base: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``publish(topic, payload)``: a retained publish (``Publisher.publish_retained``)."""
        self._s = settings
        self._publish = publish
        self._topic_base = topic_base
        self._clock = clock
        self._due: dict[str, float] = {}  # camera -> clock time its next snapshot is due; the worker's alone
        self._slots: dict[str, tuple[Frame, Mapping[str, Any]]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._counts: dict[str, dict[str, int]] = {}
        self._bytes: dict[str, int] = {}
        self.render_ms = LatencyWindow(64)
        self._warn = Throttle(log)  # one line a minute per camera and kind
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)

    def deliver(self, frame: Frame, frame_id: int, outcome: Outcome) -> None:
        """The :class:`agent.pipeline.Sink` tap, on the camera's worker thread: hand the frame over if due."""
        now = self._clock()
        camera = frame.camera
        if now < self._due.get(camera, now):
            return
        self._due[camera] = now + self._s.interval_s
        with self._cond:
            if camera in self._slots:
                self._count(camera, "replaced")
            self._slots[camera] = (frame, outcome.api)
            self._cond.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; a snapshot not yet drawn is dropped."""
        with self._cond:
            self._stopping = True
            self._slots.clear()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        """Per camera: ``published``, ``too_large``, ``failed``, ``replaced`` counts and the last size."""
        with self._cond:
            cameras = {c: {**counts, "bytes": self._bytes.get(c, 0)} for c, counts in self._counts.items()}
        return {"cameras": cameras, "render": self.render_ms.summary()}

    def _count(self, camera: str, what: str) -> None:  # under _cond
        counts = self._counts.setdefault(camera, {"published": 0, "too_large": 0, "failed": 0, "replaced": 0})
        counts[what] += 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._slots and not self._stopping:
                    self._cond.wait(_STOP_WAIT_S)
                if self._stopping:
                    return
                camera = next(iter(self._slots))
                frame, api = self._slots.pop(camera)
            self._one(camera, frame, api)

    def _one(self, camera: str, frame: Frame, api: Mapping[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            jpeg = render(frame, api, self._s)
        except Exception as exc:  # a bad JPEG or a drawing bug must not end snapshots for every camera
            self._warn.log(logging.WARNING, f"{camera}/failed", "camera %s: snapshot failed: %s", camera, exc)
            with self._cond:
                self._count(camera, "failed")
            return
        self.render_ms.add((time.perf_counter() - t0) * 1000.0)
        if jpeg is None:
            self._warn.log(
                logging.WARNING,
                f"{camera}/too_large",
                "camera %s: snapshot skipped: over snapshots.max_bytes (%d) even at %d px, quality %d",
                camera,
                self._s.max_bytes,
                MIN_HEIGHT,
                MIN_QUALITY,
            )
            with self._cond:
                self._count(camera, "too_large")
            return
        self._publish(snapshot_topic(self._topic_base, camera), jpeg)
        with self._cond:
            self._count(camera, "published")
            self._bytes[camera] = len(jpeg)
