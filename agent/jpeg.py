"""JPEG without a full decode: the header walk (size, Exif) and decodes at a reduced size.

MJPEG cameras and files hand out each frame as a standalone JPEG. Reading its frame header gives the true
size without decoding; libjpeg's DCT scaling decodes it at 1/2, 1/4 or 1/8 for several times less work than
a full decode, which is all a model whose input is smaller than the frame needs (:func:`reduction_factor`).
Decodes here ignore the Exif orientation, as FFmpeg's decoder does, so both ways give the same picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["as_bgr", "decode_jpeg", "jpeg_has_exif", "jpeg_header", "jpeg_hw", "reduction_factor"]

_IMDECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # as FFmpeg decodes: no EXIF rotation
_REDUCED_FLAGS = {  # decode at 1/f by DCT scaling (JPEG), same colour and orientation handling
    1: _IMDECODE_FLAGS,
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}


def _jpeg_segments(data: NDArray[Any] | bytes) -> Iterator[tuple[int, memoryview]]:
    """``(marker, payload)`` of a JPEG's segments before its first scan; stops early at anything malformed."""
    raw: Any = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1) if isinstance(data, np.ndarray) else data
    mv = memoryview(raw).cast("B")
    n = len(mv)
    if n < 4 or mv[0] != 0xFF or mv[1] != 0xD8:
        return
    i = 2
    while i + 4 <= n:
        if mv[i] != 0xFF:
            return
        marker = mv[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the first scan
            return
        length = (mv[i + 2] << 8) | mv[i + 3]
        if length < 2:
            return
        yield marker, mv[i + 4 : min(n, i + 2 + length)]
        i += 2 + length


def jpeg_header(data: NDArray[Any] | bytes) -> tuple[tuple[int, int] | None, bool]:
    """``(jpeg_hw(data), jpeg_has_exif(data))`` in one walk of the segments before the first scan."""
    hw: tuple[int, int] | None = None
    exif = sof_seen = False
    for marker, payload in _jpeg_segments(data):
        if marker == 0xE1 and bytes(payload[:6]) == b"Exif\x00\x00":
            exif = True
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and not sof_seen:  # SOF0..SOF15
            sof_seen = True
            if len(payload) >= 5:
                h, w = (payload[1] << 8) | payload[2], (payload[3] << 8) | payload[4]
                hw = (h, w) if h and w else None
    return hw, exif


def jpeg_hw(data: NDArray[Any] | bytes) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG's frame header (SOFn), without decoding; None if not a JPEG."""
    return jpeg_header(data)[0]


def jpeg_has_exif(data: NDArray[Any] | bytes) -> bool:
    """Whether a JPEG carries an Exif block (which may rotate the picture for whoever honours it)."""
    return jpeg_header(data)[1]


def decode_jpeg(data: NDArray[Any], factor: int = 1) -> NDArray[np.uint8] | None:
    """A JPEG (an encoded uint8 array) decoded at ``1/factor`` (1, 2, 4, 8) as the capture decodes it: BGR,
    Exif orientation ignored (as FFmpeg decodes). None when it can't be decoded."""
    image = cv2.imdecode(data, _REDUCED_FLAGS[factor])
    return None if image is None else np.asarray(image, dtype=np.uint8)


def reduction_factor(frame_hw: tuple[int, int], needed_hw: tuple[int, int]) -> int:
    """The largest JPEG scale-down (8, 4, 2, else 1) whose image still covers ``needed_hw`` on both axes.

    libjpeg's DCT scaling gives ``ceil(size / f)`` pixels.
    """
    h, w = frame_hw
    need_h, need_w = needed_hw
    for f in (8, 4, 2):
        if -(-h // f) >= need_h and -(-w // f) >= need_w:
            return f
    return 1


def as_bgr(img: object) -> NDArray[np.uint8] | None:
    """An HxWx3 uint8 BGR array, converting gray or BGRA; None for anything else."""
    if not isinstance(img, np.ndarray) or img.size == 0 or img.dtype != np.uint8:
        return None
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return np.asarray(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.asarray(cv2.cvtColor(img, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        return np.asarray(img, dtype=np.uint8)
    return None
