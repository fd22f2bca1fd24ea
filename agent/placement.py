"""Where a frame went in the model input: model-input coordinates <-> frame pixels, for every resize.

One place for the maths every decoder shares. A :class:`Placement` says, per axis, ``input = (frame - offset)
* scale + pad`` (Ultralytics' letterbox, Roboflow's ``Stretch to`` / ``Fit ... in``, with or without a static
crop); :class:`LetterboxParams` is the letterbox's own, smaller record (``input = frame * scale + pad``) and
:func:`letterbox_placement` turns it into a placement.

Coordinates are continuous pixels: the pixel with index ``i`` covers ``[i, i + 1)`` and its centre is at
``i + 0.5`` (OpenCV's and PyTorch's ``align_corners=False`` convention). A map of ``grid`` cells over an input
axis of ``size`` pixels (prototypes, mask logits) has cell ``j``'s centre at input ``(j + 0.5) * size / grid``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LETTERBOX_FILL",
    "LetterboxParams",
    "Placement",
    "box_pixel_bounds",
    "boxes_to_frame",
    "centre_inside_range",
    "check_hw",
    "input_to_frame_xy",
    "letterbox_content_hw",
    "letterbox_params",
    "letterbox_placement",
    "pixel_bounds_xyxy",
    "sample_positions",
    "unletterbox_boxes_xyxy",
]

LETTERBOX_FILL = 114
"""Grey level of the letterbox padding, as Ultralytics pads."""


class LetterboxParams(NamedTuple):
    """How a frame was placed into the model input: ``input = frame * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: int
    pad_y: int


class Placement(NamedTuple):
    """Where the frame went in the model input, per axis: ``input = (frame - offset) * scale + pad``.

    ``offset`` is the static crop's top-left and ``crop_w x crop_h`` its size, in frame pixels; the image
    content covers ``[pad, pad + content)`` of the input on each axis, the rest is padding.
    """

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    offset_x: int
    offset_y: int
    crop_w: int
    crop_h: int
    content_w: int
    content_h: int


def check_hw(name: str, hw: tuple[int, int]) -> tuple[int, int]:
    """``hw`` as two ints; ``ValueError`` naming ``name`` unless both are positive."""
    h, w = int(hw[0]), int(hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive (height, width), got {hw!r}")
    return h, w


def _resized_hw(src_hw: tuple[int, int], dst_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    # Python's round(), as Ultralytics' LetterBox uses; never 0 and never past the destination.
    new_h = min(dst_hw[0], max(1, round(src_hw[0] * scale)))
    new_w = min(dst_hw[1], max(1, round(src_hw[1] * scale)))
    return new_h, new_w


def letterbox_params(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> LetterboxParams:
    """Scale and padding that fit ``src_hw`` into ``dst_hw`` keeping the aspect ratio, centred.

    Same numbers as Ultralytics' ``LetterBox(auto=False, scaleup=True)``: the padding before the image is
    the smaller half when the total padding is odd.
    """
    src_hw = check_hw("src_hw", src_hw)
    dst_hw = check_hw("dst_hw", dst_hw)
    scale = min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    new_h, new_w = _resized_hw(src_hw, dst_hw, scale)
    return LetterboxParams(scale=scale, pad_x=(dst_hw[1] - new_w) // 2, pad_y=(dst_hw[0] - new_h) // 2)


def letterbox_content_hw(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
    """The size ``(h, w)`` a ``src_hw`` frame is resized to inside a ``dst_hw`` letterbox."""
    src_hw = check_hw("src_hw", src_hw)
    dst_hw = check_hw("dst_hw", dst_hw)
    return _resized_hw(src_hw, dst_hw, min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]))


def letterbox_placement(params: LetterboxParams, frame_hw: tuple[int, int], input_hw: tuple[int, int]) -> Placement:
    """The placement of a ``frame_hw`` frame letterboxed into ``input_hw`` by ``params`` (no crop)."""
    frame_h, frame_w = check_hw("frame_hw", frame_hw)
    content_h, content_w = _resized_hw((frame_h, frame_w), check_hw("input_hw", input_hw), params.scale)
    s = params.scale
    return Placement(s, s, params.pad_x, params.pad_y, 0, 0, frame_w, frame_h, content_w, content_h)


def input_to_frame_xy(
    xs: NDArray[np.floating[Any]], ys: NDArray[np.floating[Any]], placement: Placement
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Model-input coordinates back to frame coordinates (no clipping)."""
    p = placement
    fx = (np.asarray(xs, dtype=np.float64) - p.pad_x) / p.scale_x + p.offset_x
    fy = (np.asarray(ys, dtype=np.float64) - p.pad_y) / p.scale_y + p.offset_y
    return fx, fy


def boxes_to_frame(
    boxes_in_xyxy: NDArray[np.floating[Any]], placement: Placement, frame_hw: tuple[int, int]
) -> NDArray[np.float32]:
    """Boxes in model-input pixels back to frame pixels, clipped to the used (static-crop) part of the frame."""
    boxes = np.asarray(boxes_in_xyxy, dtype=np.float64).reshape(-1, 4)
    out = np.empty(boxes.shape, dtype=np.float64)
    out[:, 0::2], out[:, 1::2] = input_to_frame_xy(boxes[:, 0::2], boxes[:, 1::2], placement)
    p = placement
    x_hi, y_hi = min(p.offset_x + p.crop_w, frame_hw[1]), min(p.offset_y + p.crop_h, frame_hw[0])
    np.clip(out[:, 0::2], p.offset_x, x_hi, out=out[:, 0::2])
    np.clip(out[:, 1::2], p.offset_y, y_hi, out=out[:, 1::2])
    return out.astype(np.float32)


def unletterbox_boxes_xyxy(
    boxes_xyxy: NDArray[np.floating], params: LetterboxParams, frame_hw: tuple[int, int]
) -> NDArray[np.float32]:
    """Boxes from model-input pixels back to frame pixels, clipped to ``[0, W] x [0, H]``."""
    frame_h, frame_w = check_hw("frame_hw", frame_hw)
    s = params.scale
    # The content size plays no part in mapping boxes; the whole frame is the used part.
    placement = Placement(s, s, params.pad_x, params.pad_y, 0, 0, frame_w, frame_h, 0, 0)
    return boxes_to_frame(boxes_xyxy, placement, (frame_h, frame_w))


def pixel_bounds_xyxy(boxes_xyxy: NDArray[np.floating[Any]], frame_hw: tuple[int, int]) -> NDArray[np.int64]:
    """``(n, 4)`` ``x0, y0, x1, y1``, end exclusive: per box, the frame pixels whose centres lie in it (edges
    included). Empty (``x1 <= x0`` or ``y1 <= y0``) for a box of zero width or height, one outside the frame
    or one with a non-finite corner (then all four are 0)."""
    frame_h, frame_w = frame_hw
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    finite: NDArray[np.bool_] = np.asarray(np.isfinite(boxes).all(axis=1))
    boxes = np.where(finite[:, None], boxes, 0.0)
    x0 = np.minimum(np.maximum(np.ceil(boxes[:, 0] - 0.5), 0), frame_w)
    y0 = np.minimum(np.maximum(np.ceil(boxes[:, 1] - 0.5), 0), frame_h)
    x1 = np.minimum(np.maximum(np.floor(boxes[:, 2] - 0.5) + 1, x0), frame_w)
    y1 = np.minimum(np.maximum(np.floor(boxes[:, 3] - 0.5) + 1, y0), frame_h)
    return np.where(finite[:, None], np.stack([x0, y0, x1, y1], axis=1), 0.0).astype(np.int64)


def box_pixel_bounds(box_xyxy: NDArray[np.floating], frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, end exclusive: the frame pixels whose centres lie in the box (edges included).

    Empty (``x1 <= x0`` or ``y1 <= y0``) for a box of zero width or height, or one outside the frame.
    """
    frame_hw = check_hw("frame_hw", frame_hw)
    x0, y0, x1, y1 = pixel_bounds_xyxy(np.asarray(box_xyxy).reshape(1, 4), frame_hw)[0].tolist()
    return x0, y0, x1, y1


def centre_inside_range(scale: float, content: int) -> tuple[int, int]:
    """``(lo, hi)``: the frame pixels ``lo..hi`` of an uncropped axis whose centres map inside the content.

    Pixel ``v``'s centre maps to input ``(v + 0.5) * scale + pad``; the content's outermost pixel centres are
    at ``pad + 0.5`` and ``pad + content - 0.5``. Empty (``lo > hi``) when no centre maps between them.
    """
    lo = math.ceil(0.5 / scale - 0.5 - 1e-9)
    hi = math.floor((content - 0.5) / scale - 0.5 + 1e-9)
    return lo, hi


def sample_positions(
    start: int, stop: int, axis: Literal["x", "y"], placement: Placement, grid: int, size: int
) -> NDArray[np.float32]:
    """Where the centres of frame pixels ``start..stop-1`` fall on a ``grid``-cell map over an input axis.

    A map of ``grid`` cells covers the model input's ``size`` pixels (prototypes at 1/4, mask logits at 1/4).
    Centres are clamped to the content's outermost pixel centres, so pixels at the frame's edge take the
    nearest content value and never read the padding. Cell ``i``'s centre is at ``i``. Each pixel's position
    depends on its index only: a slice of a longer run of pixels gives the same numbers.
    """
    p = placement
    if axis == "x":
        scale, pad, offset, content = p.scale_x, p.pad_x, p.offset_x, p.content_w
    else:
        scale, pad, offset, content = p.scale_y, p.pad_y, p.offset_y, p.content_h
    centres = (np.arange(start, stop, dtype=np.float64) + 0.5 - offset) * scale + pad
    lo, hi = pad + 0.5, pad + content - 0.5
    np.clip(centres, lo, max(lo, hi), out=centres)
    return (centres * (grid / size) - 0.5).astype(np.float32)
