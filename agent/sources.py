"""Video sources for the capture: open, grab (read one frame, cheaply) and retrieve (decode it).

:class:`VideoSource` is one opening of a camera's source through OpenCV. OpenCV's FFmpeg backend decodes
inside ``grab()`` itself (``retrieve()`` only converts the colours), so MJPEG sources read through FFmpeg
(MJPG files, MJPEG-over-HTTP cameras) are opened in raw-packet mode (``CAP_PROP_FORMAT = -1``): ``grab()``
then only reads the compressed frame and ``retrieve()`` hands the packet to the camera's
:class:`PacketDecoder`; a skipped frame costs a packet read, not a decode. Sources in other codecs (H.264
needs every frame decoded anyway) and V4L2 cameras (whose ``grab()`` does not decode) are read as usual, and
so is an MJPEG source whose packets ``cv2.imdecode`` can't read: the decoder remembers that, and the next
opening decodes with FFmpeg.

The decoder decodes packets at the largest JPEG reduction that covers what the consumer needs; the picture
keeps the frame's true size. It may hand a packet on undecoded (its JPEG only) when the consumer says it
will not look at the pixels; the first packet of each opening is always decoded, which is what shows that
the source's packets are standalone JPEGs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.config import CameraSettings
from agent.frames import DecodePolicy
from agent.jpeg import as_bgr, decode_jpeg, jpeg_header, reduction_factor

__all__ = ["PacketDecoder", "Picture", "Source", "SourceFactory", "VideoSource"]

log = logging.getLogger("agent.capture")

_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_JPEG_FOURCCS = frozenset({"MJPG", "JPEG"})  # FFmpeg codecs whose packets are whole JPEG images (upper-cased)
_RTSP_TCP = "rtsp_transport;tcp"
_env_lock = threading.Lock()

HW = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Picture:
    """One retrieved frame: its pixels (None when left as its JPEG), its true ``(height, width)`` (larger
    than the image's when decoded at a reduced size) and, when kept, the JPEG it came as (without Exif)."""

    image: NDArray[np.uint8] | None
    frame_hw: HW
    jpeg: bytes | None = None


class Source(Protocol):
    """One opening of a source. ``open`` may block up to the open timeout; every call may block in C++."""

    def open(self) -> bool: ...

    def grab(self) -> bool: ...

    def retrieve(self) -> Picture | None: ...

    def file_fps(self) -> float: ...

    def rewind(self) -> bool: ...

    def release(self) -> None: ...


class PacketDecoder:
    """A camera's way of decoding its JPEG packets (its :class:`DecodePolicy`); lives across openings."""

    def __init__(self, name: str, policy: DecodePolicy) -> None:
        self.name = name
        self.policy = policy
        self.raw_packets = True  # False once a source's packets proved not to be standalone JPEGs
        self._reduction: tuple[HW, int] = ((0, 0), 1)  # last frame size seen and its factor

    def decode(self, packet: NDArray[Any] | None, *, proven: bool) -> Picture | None:
        """The picture of one raw packet. ``proven``: a packet of this opening was decoded on its own already
        (until then every packet is decoded). Raises when packets can't be decoded on their own."""
        full_hw: HW | None = None
        keep = False
        if packet is not None:
            full_hw, exif = jpeg_header(packet)  # size and Exif in one walk of the header
            keep = self.policy.keep_jpeg and not exif
        if packet is not None and proven and keep and full_hw is not None and not self.policy.decode_ahead(full_hw):
            return Picture(None, full_hw, packet.tobytes())
        decoded = None
        if packet is not None:
            factor = self._factor_for(full_hw) if full_hw is not None else 1
            decoded = decode_jpeg(packet, factor)
            if factor == 1:
                full_hw = None  # the image is the whole frame
        if decoded is None:
            # Packets that are not standalone JPEG images (some cameras leave out the Huffman tables):
            # this source is decoded by FFmpeg from the next opening on.
            self.raw_packets = False
            raise RuntimeError("MJPEG packets cannot be decoded on their own; reopening with FFmpeg decoding")
        image = as_bgr(decoded)
        if image is None:
            return None
        jpeg = packet.tobytes() if keep and packet is not None else None
        return Picture(image, full_hw or (int(image.shape[0]), int(image.shape[1])), jpeg)

    def _factor_for(self, full_hw: HW) -> int:
        """The decode reduction for frames of this size: worked out (and logged) when the size changes."""
        known_hw, factor = self._reduction
        if full_hw == known_hw:
            return factor
        factor = reduction_factor(full_hw, self.policy.decode_hw(full_hw))
        self._reduction = (full_hw, factor)
        if factor > 1:
            h, w = full_hw
            log.info(
                "camera %s: %dx%d JPEG frames decoded at 1/%d (%dx%d): all that inference needs",
                self.name,
                w,
                h,
                factor,
                -(-w // factor),
                -(-h // factor),
            )
        return factor


SourceFactory = Callable[[CameraSettings, PacketDecoder], Source]


class VideoSource:
    """One opening of a camera's source through OpenCV (see the module docstring)."""

    def __init__(self, settings: CameraSettings, decoder: PacketDecoder) -> None:
        self.settings = settings
        self.decoder = decoder
        self.cap: cv2.VideoCapture | None = None
        self._proven = False  # a packet of this opening decoded on its own

    def open(self) -> bool:
        self.cap = self._open()
        return self.cap is not None and bool(self.cap.isOpened())

    def grab(self) -> bool:
        assert self.cap is not None
        return bool(self.cap.grab())

    def retrieve(self) -> Picture | None:
        """Decode the last grabbed frame (the only place frames are decoded on the capture thread)."""
        cap = self.cap
        assert cap is not None
        ok, img = cap.retrieve()
        if not ok:
            return None
        if cap.get(cv2.CAP_PROP_FORMAT) != -1 or cap.getBackendName() != "FFMPEG":  # decoded by the backend
            image = as_bgr(img)
            return None if image is None else Picture(image, (int(image.shape[0]), int(image.shape[1])))
        packet = img if isinstance(img, np.ndarray) and img.size else None
        picture = self.decoder.decode(packet, proven=self._proven)
        if picture is not None and picture.image is not None:
            self._proven = True
        return picture

    def file_fps(self) -> float:
        assert self.cap is not None
        return float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def rewind(self) -> bool:
        assert self.cap is not None
        return bool(self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def release(self) -> None:
        if self.cap is not None:
            with contextlib.suppress(Exception):
                self.cap.release()

    def _open(self) -> cv2.VideoCapture:
        s = self.settings
        src = s.source
        if isinstance(src, int):
            cap = cv2.VideoCapture(src, cv2.CAP_V4L2)
            if not cap.isOpened() and not sys.platform.startswith("linux"):
                cap = cv2.VideoCapture(src, cv2.CAP_ANY)
            if cap.isOpened() and (s.width or s.height):
                # many UVC cameras reach 720p/1080p at 30 fps only in MJPG: set it before the size
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
                if s.width:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.width)
                if s.height:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.height)
            return cap
        if s.is_file:
            cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG)
            if not cap.isOpened() and os.path.exists(src):
                cap = cv2.VideoCapture(src, cv2.CAP_ANY)
            return self._packets_if_mjpeg(cap)
        if src.split("://", 1)[0].lower() in ("rtsp", "rtsps"):
            _ensure_rtsp_tcp()
        if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
            return cv2.VideoCapture(src, cv2.CAP_ANY)  # no timeouts: the supervisor still catches hangs
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(1, round(s.open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, round(s.stall_timeout_s * 1000)),
        ]
        return self._packets_if_mjpeg(cv2.VideoCapture(src, cv2.CAP_FFMPEG, params))

    def _packets_if_mjpeg(self, cap: cv2.VideoCapture) -> cv2.VideoCapture:
        """Raw-packet mode for an MJPEG source read by FFmpeg, so that skipped frames are never decoded."""
        if not self.decoder.raw_packets or not cap.isOpened() or cap.getBackendName() != "FFMPEG":
            return cap
        code = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
        fourcc = code.to_bytes(4, "little").decode("latin-1").upper()
        if fourcc in _JPEG_FOURCCS and cap.set(cv2.CAP_PROP_FORMAT, -1):
            log.debug("camera %s: MJPEG source, reading raw packets", self.decoder.name)
        return cap


def _ensure_rtsp_tcp() -> None:
    """RTSP over TCP unless the user set ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (read at open time)."""
    with _env_lock:
        if _FFMPEG_OPTIONS_ENV not in os.environ:
            os.environ[_FFMPEG_OPTIONS_ENV] = _RTSP_TCP
            log.info("%s not set: using %r for RTSP", _FFMPEG_OPTIONS_ENV, _RTSP_TCP)
