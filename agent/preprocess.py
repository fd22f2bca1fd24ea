"""Pure preprocessing: a camera frame to a model input tensor, and where the frame went in it.

Each format's hosted twin prepares images its own way, and the local model must do the same or its outputs
drift from the hosted ones. :class:`Preprocessing` says how; :func:`prepare` does it, in Roboflow's order
(``inference.core.utils.preprocess.prepare``, then the resize):

1. ``static-crop``: keep ``[x_min, x_max) x [y_min, y_max)`` percent of the frame (``int(pct / 100 * size)``);
2. ``contrast``: ``Contrast Stretching`` (percentiles 2-98 to 0-255), ``Histogram Equalization`` or
   ``Adaptive Equalization`` (both on the grey image, which then replaces the colours);
3. ``grayscale``: BGR -> grey -> BGR;
4. resize: ``letterbox`` (Ultralytics: aspect kept, centred, ``round()`` sizes, grey 114), ``stretch``
   (Roboflow ``Stretch to``: both axes scaled to the input) or ``fit`` (Roboflow ``Fit (black|white|grey
   edges) in``: aspect kept with ``int()`` sizes, centred, padded with ``fill``);
5. BGR -> RGB, HWC -> CHW, 0..1, then ``(x - mean) / std`` when the format normalises (RF-DETR: ImageNet).

``auto-orient`` rotates by a JPEG's EXIF orientation; frames from a camera carry none (and the agent's own
uploads carry none), so it never changes a frame and is only recorded.

The returned :class:`~agent.placement.Placement` maps model-input pixels back to frame pixels, per axis:
``input = (frame - offset) * scale + pad``. :func:`letterbox` is the Ultralytics path's own step: the same
letterbox as :func:`prepare` with the default :class:`Preprocessing`, written straight into the tensor;
:func:`letterbox_uint8` is the same for a model with a uint8 input (the frame's bytes, no float conversion).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.placement import LETTERBOX_FILL, LetterboxParams, Placement, check_hw, letterbox_params, letterbox_placement

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ROBOFLOW_RESIZE_FORMATS",
    "ContrastKind",
    "Placement",
    "Preprocessing",
    "ResizeMode",
    "StaticCrop",
    "apply_contrast",
    "crop_bounds",
    "fit",
    "letterbox",
    "letterbox_uint8",
    "letterbox_ultralytics",
    "parse_roboflow_preprocessing",
    "prepare",
    "stretch",
    "to_grayscale",
    "to_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizeMode = Literal["letterbox", "stretch", "fit"]
ContrastKind = Literal["Contrast Stretching", "Histogram Equalization", "Adaptive Equalization"]
_CONTRAST_KINDS: tuple[ContrastKind, ...] = ("Contrast Stretching", "Histogram Equalization", "Adaptive Equalization")

ROBOFLOW_RESIZE_FORMATS: dict[str, tuple[ResizeMode, int]] = {
    "Stretch to": ("stretch", 0),
    "Fit (black edges) in": ("fit", 0),
    "Fit (white edges) in": ("fit", 255),
    "Fit (grey edges) in": ("fit", LETTERBOX_FILL),
}
"""Roboflow's ``PREPROCESSING.resize.format`` values: resize mode and fill level."""


@dataclass(frozen=True, slots=True)
class StaticCrop:
    """The kept part of the frame, in percent of its width and height (Roboflow's ``static-crop``)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """How a frame becomes the model input. The default is Ultralytics' (YOLO exports)."""

    resize: ResizeMode = "letterbox"
    fill: int = LETTERBOX_FILL
    static_crop: StaticCrop | None = None
    contrast: ContrastKind | None = None
    grayscale: bool = False
    auto_orient: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_hw: tuple[int, int] | None = None  # ``resize`` width/height from a package, for dynamic inputs

    def describe(self) -> str:
        parts = [self.resize if self.resize != "fit" else f"fit (fill {self.fill})"]
        if self.static_crop is not None:
            c = self.static_crop
            parts.append(f"static crop x {c.x_min:g}-{c.x_max:g}% y {c.y_min:g}-{c.y_max:g}%")
        if self.contrast is not None:
            parts.append(self.contrast.lower())
        if self.grayscale:
            parts.append("grayscale")
        if self.mean is not None:
            parts.append("mean/std normalised")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------
# Roboflow's environment.json


def _enabled(section: object) -> bool:
    return isinstance(section, Mapping) and bool(section.get("enabled", True))


def parse_roboflow_preprocessing(value: object) -> tuple[Preprocessing, list[str]]:
    """``environment.json``'s ``PREPROCESSING`` (a mapping, or that mapping as a JSON string).

    Returns the preprocessing and notes for the log (unknown resize format, unknown contrast type).
    ``ValueError`` names what is wrong when the value is not a mapping or a step is malformed. As in
    Roboflow's server, no ``resize`` (or an unknown format) means ``Stretch to``.
    """
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"PREPROCESSING is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"PREPROCESSING must be a mapping, got {type(value).__name__}")
    notes: list[str] = []
    resize, fill, input_hw = _parse_resize(value.get("resize"), notes)
    return (
        Preprocessing(
            resize=resize,
            fill=fill,
            static_crop=_parse_static_crop(value.get("static-crop")),
            contrast=_parse_contrast(value.get("contrast"), notes),
            grayscale=_enabled(value.get("grayscale")),
            auto_orient=_enabled(value.get("auto-orient")),
            input_hw=input_hw,
        ),
        notes,
    )


def _parse_resize(section: object, notes: list[str]) -> tuple[ResizeMode, int, tuple[int, int] | None]:
    """``resize``: (mode, fill, input (height, width) when both are given and positive)."""
    if not _enabled(section):
        return "stretch", 0, None
    assert isinstance(section, Mapping)
    fmt = str(section.get("format", "Stretch to"))
    if fmt not in ROBOFLOW_RESIZE_FORMATS:
        notes.append(f"resize format {fmt!r} unknown; using 'Stretch to' as Roboflow's server does")
        fmt = "Stretch to"
    resize, fill = ROBOFLOW_RESIZE_FORMATS[fmt]
    try:
        width, height = int(section["width"]), int(section["height"])
    except (KeyError, TypeError, ValueError):
        width = height = 0
    return resize, fill, ((height, width) if width > 0 and height > 0 else None)


def _parse_static_crop(section: object) -> StaticCrop | None:
    if not _enabled(section):
        return None
    assert isinstance(section, Mapping)
    try:
        crop = StaticCrop(*(float(section[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"PREPROCESSING.static-crop needs numeric x_min, y_min, x_max, y_max: {exc}") from None
    if not (0 <= crop.x_min < crop.x_max <= 100 and 0 <= crop.y_min < crop.y_max <= 100):
        raise ValueError(f"PREPROCESSING.static-crop is not a region within 0-100 %: {crop}")
    return crop


def _parse_contrast(section: object, notes: list[str]) -> ContrastKind | None:
    if not _enabled(section):
        return None
    assert isinstance(section, Mapping)
    kind = section.get("type")
    if kind in _CONTRAST_KINDS:
        return kind  # type: ignore[no-any-return]
    notes.append(f"contrast type {kind!r} unknown; not applied")
    return None


# --------------------------------------------------------------------------------------------------------
# Steps


def crop_bounds(frame_hw: tuple[int, int], crop: StaticCrop | None) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, end exclusive, of the static crop in a frame; the whole frame without one.

    ``int(percent / 100 * size)`` as Roboflow's ``take_static_crop``; never empty (at least one pixel).
    """
    height, width = frame_hw
    if crop is None:
        return 0, 0, width, height
    x0 = min(int(crop.x_min / 100 * width), width - 1)
    y0 = min(int(crop.y_min / 100 * height), height - 1)
    x1 = max(int(crop.x_max / 100 * width), x0 + 1)
    y1 = max(int(crop.y_max / 100 * height), y0 + 1)
    return x0, y0, x1, y1


def to_grayscale(image_bgr: NDArray[np.uint8]) -> NDArray[np.uint8]:
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    return np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), dtype=np.uint8)


def apply_contrast(image_bgr: NDArray[np.uint8], kind: ContrastKind) -> NDArray[np.uint8]:
    """Roboflow's three contrast adjustments, with its parameters (CLAHE: clip limit 0.03, 8x8 tiles)."""
    if kind == "Contrast Stretching":
        low, high = (float(v) for v in np.percentile(image_bgr, (2, 98)))
        if high <= low:
            return image_bgr
        scaled = (np.clip(image_bgr.astype(np.float32), low, high) - low) * np.float32(255.0 / (high - low))
        return scaled.astype(np.uint8)  # truncated, as skimage's rescale_intensity casts
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    if kind == "Histogram Equalization":
        grey = cv2.equalizeHist(grey)
    else:
        grey = cv2.createCLAHE(clipLimit=0.03, tileGridSize=(8, 8)).apply(grey)
    return np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), dtype=np.uint8)


def _resize(image: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)


def stretch(image_bgr: NDArray[np.uint8], dst_hw: tuple[int, int]) -> tuple[NDArray[np.uint8], Placement]:
    """Roboflow's ``Stretch to``: both axes resized to the input (linear)."""
    src_h, src_w = image_bgr.shape[:2]
    dst_h, dst_w = dst_hw
    resized = _resize(image_bgr, dst_w, dst_h)
    return resized, Placement(dst_w / src_w, dst_h / src_h, 0, 0, 0, 0, src_w, src_h, dst_w, dst_h)


def fit(image_bgr: NDArray[np.uint8], dst_hw: tuple[int, int], fill: int) -> tuple[NDArray[np.uint8], Placement]:
    """Roboflow's ``Fit (... edges) in``: aspect kept (the short side ``int()``-truncated), centred, padded.

    As ``letterbox_image``: the padding before the image is ``(dst - new) // 2``.
    """
    src_h, src_w = image_bgr.shape[:2]
    dst_h, dst_w = dst_hw
    if src_w / src_h >= dst_w / dst_h:
        new_w, new_h = dst_w, max(1, int(dst_w / (src_w / src_h)))
    else:
        new_w, new_h = max(1, int(dst_h * (src_w / src_h))), dst_h
    resized = _resize(image_bgr, new_w, new_h)
    top, left = (dst_h - new_h) // 2, (dst_w - new_w) // 2
    canvas = np.full((dst_h, dst_w, 3), fill, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Placement(new_w / src_w, new_h / src_h, left, top, 0, 0, src_w, src_h, new_w, new_h)


def _letterbox_resized(
    image_bgr: NDArray[Any], dst_hw: tuple[int, int], frame_hw: tuple[int, int] | None
) -> tuple[NDArray[np.uint8], LetterboxParams, tuple[int, int]]:
    """The letterbox's resized frame, its params and the model input's size (see :func:`letterbox`)."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
    image_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
    src_hw = image_hw if frame_hw is None else check_hw("frame_hw", frame_hw)
    dst_hw = check_hw("dst_hw", dst_hw)
    params = letterbox_params(src_hw, dst_hw)
    placement = letterbox_placement(params, src_hw, dst_hw)
    new_h, new_w = placement.content_h, placement.content_w
    if (new_h, new_w) == image_hw:
        resized = image_bgr
    else:
        resized = np.asarray(cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
    return resized, params, dst_hw


def _fill_padding(planes: NDArray[Any], params: LetterboxParams, content_hw: tuple[int, int], fill: Any) -> None:
    top, left = params.pad_y, params.pad_x
    bottom, right = top + content_hw[0], left + content_hw[1]
    planes[:, :top] = fill
    planes[:, bottom:] = fill
    planes[:, top:bottom, :left] = fill
    planes[:, top:bottom, right:] = fill


def letterbox(
    image_bgr: NDArray[Any], dst_hw: tuple[int, int], *, frame_hw: tuple[int, int] | None = None
) -> tuple[NDArray[np.float32], LetterboxParams]:
    """The model input for a BGR frame: ``(1, 3, H, W)`` float32 RGB in 0..1, letterboxed with grey 114.

    One ``cv2.resize`` (linear), skipped when the frame already has the right size. Anything but an HxWx3
    uint8 array raises ``ValueError``.

    ``frame_hw``: the frame's true size when ``image_bgr`` is a reduced decode of it (a JPEG decoded at 1/2,
    1/4 or 1/8). The params are then the true frame's, so everything mapped back lands in its pixels, and
    the image is resized into the same content rectangle.
    """
    resized, params, dst_hw = _letterbox_resized(image_bgr, dst_hw, frame_hw)
    # Written straight into the tensor: the padding as its constant, then each colour plane (split from BGR
    # by OpenCV, RGB order) converted and scaled in one pass: no uint8 canvas, no strided HWC -> CHW copy.
    scale = np.float32(1.0 / 255.0)
    tensor = np.empty((1, 3, dst_hw[0], dst_hw[1]), dtype=np.float32)
    planes = tensor[0]
    new_h, new_w = resized.shape[:2]
    _fill_padding(planes, params, (new_h, new_w), np.float32(LETTERBOX_FILL) * scale)  # a uint8 114, to the bit
    top, left = params.pad_y, params.pad_x
    for channel, plane in enumerate(reversed(cv2.split(resized))):
        np.multiply(plane, scale, out=planes[channel, top : top + new_h, left : left + new_w])
    return tensor, params


def letterbox_uint8(
    image_bgr: NDArray[Any], dst_hw: tuple[int, int], *, frame_hw: tuple[int, int] | None = None
) -> tuple[NDArray[np.uint8], LetterboxParams]:
    """:func:`letterbox` for a uint8-input model (:mod:`agent.quantize_input`): ``(1, 3, H, W)`` uint8 RGB
    0..255, equal to ``round(letterbox(...)[0] * 255)`` to the bit: the resized frame's bytes, grey 114."""
    resized, params, dst_hw = _letterbox_resized(image_bgr, dst_hw, frame_hw)
    tensor = np.empty((1, 3, dst_hw[0], dst_hw[1]), dtype=np.uint8)
    planes = tensor[0]
    new_h, new_w = resized.shape[:2]
    _fill_padding(planes, params, (new_h, new_w), LETTERBOX_FILL)
    top, left = params.pad_y, params.pad_x
    for channel, plane in enumerate(reversed(cv2.split(resized))):
        planes[channel, top : top + new_h, left : left + new_w] = plane
    return tensor, params


def letterbox_ultralytics(
    image_bgr: NDArray[np.uint8], dst_hw: tuple[int, int], fill: int = LETTERBOX_FILL
) -> tuple[NDArray[np.uint8], Placement]:
    """Ultralytics' letterbox (``round()`` sizes, centred): the canvas and its placement.

    The same numbers as :func:`letterbox` (which writes the tensor straight away); the placement's scale is
    the one ratio Ultralytics scales boxes back with.
    """
    src_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
    placement = letterbox_placement(letterbox_params(src_hw, dst_hw), src_hw, dst_hw)
    new_w, new_h, left, top = placement.content_w, placement.content_h, placement.pad_x, placement.pad_y
    resized = _resize(image_bgr, new_w, new_h)
    canvas = np.full((dst_hw[0], dst_hw[1], 3), fill, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, placement


def to_tensor(
    image_bgr: NDArray[np.uint8],
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> NDArray[np.float32]:
    """``(1, 3, H, W)`` float32 RGB in 0..1, then ``(x - mean) / std`` per channel when given."""
    tensor = np.ascontiguousarray(image_bgr.transpose(2, 0, 1)[::-1], dtype=np.float32)
    tensor *= np.float32(1.0 / 255.0)
    if mean is not None and std is not None:
        tensor -= np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        tensor /= np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return tensor[np.newaxis]


def prepare(
    image_bgr: NDArray[Any], spec: Preprocessing, input_hw: tuple[int, int]
) -> tuple[NDArray[np.float32], Placement]:
    """The model input for an HxWx3 uint8 BGR frame and where the frame went in it (see the module doc)."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8 or image_bgr.size == 0:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
    frame_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
    x0, y0, x1, y1 = crop_bounds(frame_hw, spec.static_crop)
    image: NDArray[np.uint8] = image_bgr[y0:y1, x0:x1]
    if spec.contrast is not None:
        image = apply_contrast(image, spec.contrast)
    if spec.grayscale:
        image = to_grayscale(image)
    if spec.resize == "stretch":
        canvas, placement = stretch(image, input_hw)
    elif spec.resize == "fit":
        canvas, placement = fit(image, input_hw, spec.fill)
    else:
        canvas, placement = letterbox_ultralytics(image, input_hw, spec.fill)
    return to_tensor(canvas, spec.mean, spec.std), placement._replace(offset_x=x0, offset_y=y0)
