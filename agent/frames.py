"""Frames as a camera hands them out, and the policy that says how much of each to decode, and where.

A :class:`Frame` carries its true size and, when its camera sent it as a standalone JPEG and the consumer
may upload it, that JPEG. Its pixels are decoded lazily, at the size asked (:meth:`Frame.pixels`): the
largest JPEG reduction that covers it (see :func:`agent.jpeg.reduction_factor`), once, on whichever thread
asks first, and kept. Results stay in true-frame pixels: whoever gets a reduced image also gets ``frame_hw``.

A :class:`DecodePolicy` is made by the daemon from the router's parts (the local model's need, the hosted
API's upload size, the change gate, the router's current mode) and given to each camera. Per frame size it
says what size the capture decodes to, whether frames keep their JPEG, and whether the capture thread decodes
them ahead (so that the decode overlaps the worker's inference of the previous frame) or leaves them as their
JPEG, which an upload sends as it is and which is decoded only if the frame goes to the local model after all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from agent.jpeg import decode_jpeg, jpeg_hw, reduction_factor

__all__ = ["DecodePolicy", "Frame"]

HW = tuple[int, int]


def _never() -> bool:
    return False


class Frame:
    """One sampled frame. ``image`` is the frame's pixels (BGR, HxWx3), possibly smaller than ``frame_hw``
    when decoded at a reduced size, or None when the frame comes as its ``jpeg`` only."""

    __slots__ = ("_image", "_lock", "camera", "frame_hw", "jpeg", "seq", "source_pos", "timestamp", "track_time")

    def __init__(
        self,
        camera: str,
        seq: int,
        timestamp: float,
        image: NDArray[np.uint8] | None,
        source_pos: int,
        frame_hw: HW = (0, 0),
        jpeg: bytes | None = None,
        track_time: float | None = None,
    ) -> None:
        self.camera = camera  # camera name
        self.seq = seq  # 1, 2, ... per Camera object: sampled frames handed out (not the published frame_id)
        self.timestamp = timestamp  # capture time, epoch seconds (time.time() when grabbed)
        # the time tracking and events go by, epoch seconds: the capture time, but for a file read with
        # realtime: false its own timeline (frame index across loops / file fps) from when its first frame
        # was read, as if it played at its pace (see Camera.read)
        self.track_time = timestamp if track_time is None else track_time
        self.source_pos = source_pos  # files: 0-based frame index in the file; streams: frames read since open
        self.jpeg = jpeg  # the camera's own JPEG of this frame, when kept (see DecodePolicy), without Exif
        if image is None and jpeg is None:
            raise ValueError("a frame needs its pixels or its JPEG")
        if frame_hw == (0, 0):  # the true (height, width); (0, 0): the image's own, else the JPEG's
            known = (int(image.shape[0]), int(image.shape[1])) if image is not None else None
            if known is None and jpeg is not None:
                known = jpeg_hw(jpeg)
            if known is None:
                raise ValueError("a frame without pixels needs its size or a readable JPEG")
            frame_hw = known
        self.frame_hw: HW = (int(frame_hw[0]), int(frame_hw[1]))
        self._image = image
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        shape = None if self._image is None else self._image.shape
        kept = self.jpeg is not None
        return f"Frame({self.camera!r}, seq={self.seq}, frame_hw={self.frame_hw}, image={shape}, jpeg={kept})"

    @property
    def decoded(self) -> NDArray[np.uint8] | None:
        """The pixels decoded so far (by the capture or an earlier :meth:`pixels`), without decoding."""
        return self._image

    @property
    def image(self) -> NDArray[np.uint8]:
        """``pixels()``: the pixels as decoded so far, else the whole frame."""
        return self.pixels()

    def pixels(self, needed_hw: HW | None = None) -> NDArray[np.uint8]:
        """The frame's pixels, covering ``needed_hw`` where the JPEG allows: the decode so far if it is large
        enough, else the JPEG decoded at the largest reduction that covers ``needed_hw`` (kept if it is larger
        than the one before). Without a JPEG, the image as it is. ``None``: the pixels decoded so far, else the
        whole frame. Thread-safe; raises ``ValueError`` when the JPEG cannot be decoded."""
        with self._lock:
            image = self._image
            if image is not None and (self.jpeg is None or needed_hw is None or self._covers(image, needed_hw)):
                return image
            assert self.jpeg is not None
            factor = 1 if needed_hw is None else reduction_factor(self.frame_hw, needed_hw)
            decoded = decode_jpeg(np.frombuffer(self.jpeg, dtype=np.uint8), factor)
            if decoded is None:
                raise ValueError("the frame's JPEG could not be decoded")
            if image is None or decoded.shape[0] > image.shape[0]:
                self._image = decoded
            return decoded

    def _covers(self, image: NDArray[np.uint8], needed_hw: HW) -> bool:
        """Whether ``image`` has ``needed_hw`` (or, when more is asked than the frame has, all of it)."""
        h, w = self.frame_hw
        return bool(image.shape[0] >= min(needed_hw[0], h) and image.shape[1] >= min(needed_hw[1], w))


@dataclass(frozen=True, slots=True)
class DecodePolicy:
    """How a camera decodes frames that come as JPEGs. The default: whole frames, no JPEG kept."""

    model_hw: Callable[[HW], HW] | None = None  # the local model's need of a frame; None: no local model
    upload_hw: Callable[[HW], HW] | None = None  # the hosted API's upload size; None: the API is not used
    change_gate: bool = False  # the change gate looks at every frame's pixels
    hosted: Callable[[], bool] = _never  # whether frames go to the hosted API right now (the router's mode)

    @property
    def keep_jpeg(self) -> bool:
        """Frames keep the camera's JPEG (when it has no Exif), so that an upload can send it as it is."""
        return self.upload_hw is not None

    def decode_hw(self, frame_hw: HW) -> HW:
        """The smallest image of a ``frame_hw`` frame that every way the frame may take can use: the local
        model's letterbox content, the upload size; each axis its own maximum."""
        needs = [need(frame_hw) for need in (self.model_hw, self.upload_hw) if need is not None]
        if not needs:
            return frame_hw
        return max(n[0] for n in needs), max(n[1] for n in needs)

    def decode_ahead(self, frame_hw: HW) -> bool:
        """Whether the capture thread decodes a ``frame_hw`` frame that came as a JPEG.

        False only while frames go to the hosted API as the camera's own JPEG (no change gate, no resizing for
        the upload): their pixels are then never looked at, unless the frame goes local after all (a failed
        call, a switch to local), and then the router asks the frame for them.
        """
        if self.change_gate or self.upload_hw is None:
            return True
        return not self.hosted() or tuple(self.upload_hw(frame_hw)) != tuple(frame_hw)
