"""Calibration frames for :mod:`agent.quantize`: read from a folder or a video, split, and prepared exactly
as :meth:`agent.model.OnnxModel.detect` prepares a frame (the same function, size and preprocessing).

Malformed sources raise ``ValueError`` naming the path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from agent.model import OnnxModel

__all__ = ["IMAGE_SUFFIXES", "CalibrationReader", "Sample", "load_samples", "model_tensor", "split_holdout"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One frame of the calibration source: its name (a file name, or ``frame_N`` of a video) and pixels."""

    name: str
    image_bgr: NDArray[np.uint8]


# ---------------------------------------------------------------------------------------------- sources


def _evenly(count: int, limit: int | None) -> list[int]:
    if limit is None or limit >= count:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit)})


def _video_samples(path: Path, frames: int | None) -> list[Sample]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: not a readable video file")
    try:
        decoded: list[NDArray[np.uint8]] = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            decoded.append(np.asarray(frame, dtype=np.uint8))
    finally:
        capture.release()
    if not decoded:
        raise ValueError(f"{path}: no frames could be decoded")
    return [Sample(f"frame_{i:06d}", decoded[i]) for i in _evenly(len(decoded), frames)]


def load_samples(source: str | Path, frames: int | None = None) -> list[Sample]:
    """Frames of a directory of images (sorted by name) or a video file, at most ``frames`` of them,
    spread evenly over the source."""
    path = Path(source)
    if path.is_file():
        return _video_samples(path, frames)
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory or video file")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    samples: list[Sample] = []
    for i in _evenly(len(files), frames):
        read = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if read is not None:
            samples.append(Sample(files[i].name, np.asarray(read, dtype=np.uint8)))
    if not samples:
        raise ValueError(f"{path}: no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return samples


def split_holdout(samples: Sequence[Sample], holdout: float) -> tuple[list[Sample], list[Sample]]:
    """(calibration, held out): every k-th sample held out, k = round(1 / holdout); none when 0."""
    if holdout <= 0:
        return list(samples), []
    k = max(2, round(1 / holdout))
    held = [s for i, s in enumerate(samples) if i % k == k - 1]
    return [s for i, s in enumerate(samples) if i % k != k - 1], held


def model_tensor(model: OnnxModel, image_bgr: NDArray[np.uint8]) -> NDArray[Any]:
    """The input tensor ``model.detect`` makes of a frame (same function, same size, same preprocessing;
    uint8 for a uint8-input model)."""
    from agent.preprocess import Preprocessing, letterbox, letterbox_uint8, prepare

    if model.layout.kind == "yolov8" and model.preprocessing == Preprocessing():  # detect's Ultralytics path
        box = letterbox_uint8 if model.input_dtype is np.uint8 else letterbox
        return box(image_bgr, model.input_hw)[0]
    return prepare(image_bgr, model.preprocessing, model.input_hw)[0]


class CalibrationReader:
    """``CalibrationDataReader``: one prepared tensor per call, then ``None``. ``len`` and ``set_range`` let
    ONNX Runtime's strided calibration (``CalibStridedMinMax``) take the frames a chunk at a time."""

    def __init__(self, model: OnnxModel, input_name: str, samples: Sequence[Sample]) -> None:
        self._model, self._name = model, input_name
        self._samples = list(samples)
        self._iter: Iterator[Sample] = iter(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        """From now on, the samples ``[start_index, end_index)`` only."""
        self._iter = iter(self._samples[start_index:end_index])

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        sample = next(self._iter, None)
        return None if sample is None else {self._name: model_tensor(self._model, sample.image_bgr)}

    def __iter__(self) -> CalibrationReader:
        return self

    def __next__(self) -> dict[str, NDArray[np.float32]]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item
