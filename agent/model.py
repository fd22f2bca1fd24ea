"""The local model: an instance-segmentation ONNX model run with ONNX Runtime.

``OnnxModel(path).detect(frame_bgr, confidence=0.4, overlap=0.3)`` prepares the frame as the model's format
wants (:mod:`agent.preprocess`), runs the session and decodes the outputs (:mod:`agent.decoders`, whose
``decode_yolov8_seg`` is the Ultralytics letterbox path). ``path`` is a ``.onnx`` file or a Roboflow
package directory (:mod:`agent.package`); the format is recognised from the files and the graph
(:mod:`agent.formats`), or, for a model whose box decode ``seg-agent optimize`` / ``quantize`` took out of
the graph, from its metadata (:mod:`agent.decoders_split`); the session is opened by :mod:`agent.runtime`.
Loading fails with :class:`ModelError`, whose message names the file and what was found in it.
"""

from __future__ import annotations

import ast
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.decoders import (
    decode_end2end_seg,
    decode_rfdetr_seg,
    decode_yolov5_seg,
    decode_yolov8_placed,
    decode_yolov8_seg,
)
from agent.decoders_split import SplitHead, decode_yolov8_split, split_head_from_metadata, split_layout
from agent.detections import Detections
from agent.formats import FORMAT_NAMES, SUPPORTED, FormatError, Layout, Port, recognise
from agent.package import ROBOFLOW_BACKGROUND_CLASS, PackageError, RoboflowPackage, read_names_file, read_package
from agent.placement import letterbox_content_hw, letterbox_placement
from agent.polygons import EXACT, PolygonOptions
from agent.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, letterbox, letterbox_uint8, prepare
from agent.runtime import (
    DEFAULT_PROVIDERS,
    PROVIDER_NAMES,
    ModelError,
    first_line,
    limit_helper_threads,
    onnx_providers,
    open_session,
    session_options,
)
from agent.session_pool import SessionPool

__all__ = [
    "DEFAULT_IMGSZ",
    "PROVIDER_NAMES",
    "ModelError",
    "OnnxModel",
    "SessionPool",
    "limit_helper_threads",
    "onnx_providers",
]

log = logging.getLogger(__name__)

DEFAULT_IMGSZ = 640
"""Input side used when the input shape is dynamic and the metadata has no ``imgsz``."""

CLASS_NAME_FILES = ("classes.txt", "class_names.txt")
"""Files beside the model, one class name a line, read when the metadata has no ``names``."""

Runner = Callable[[NDArray[Any]], tuple[NDArray[np.float32], ...]]
"""Runs a session on a prepared ``(1, 3, H, W)`` tensor (:meth:`OnnxModel.run`)."""

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,  # an int8 file of seg-agent quantize: the pixels' bytes (agent.quantize_input)
}


def _describe(args: Sequence[Any]) -> str:
    return ", ".join(f"{a.name} {list(a.shape)} {a.type}" for a in args) or "none"


def _static_dim(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _parse_literal(text: str | None) -> object:
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _names_from_metadata(metadata: Mapping[str, str]) -> list[str] | None:
    """``names`` as Ultralytics writes it (``"{0: 'a', 1: 'b'}"``), or a list literal."""
    value = _parse_literal(metadata.get("names"))
    if isinstance(value, dict) and value:
        try:
            indexed = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            return None
        if min(indexed) < 0:
            return None
        return [indexed.get(i, f"class{i}") for i in range(max(indexed) + 1)]
    if isinstance(value, list | tuple) and value:
        return [str(v) for v in value]
    return None


def _names_from_file(model_path: Path) -> list[str] | None:
    for file_name in CLASS_NAME_FILES:
        candidate = model_path.with_name(file_name)
        if candidate.is_file():
            try:
                names = read_names_file(candidate)
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelError(f"{candidate}: cannot read class names: {exc}") from exc
            if names:
                return names
    return None


def _imgsz_from_metadata(metadata: Mapping[str, str]) -> tuple[int, int] | None:
    value = _parse_literal(metadata.get("imgsz"))
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    return None


def _check_detect_args(image_bgr: NDArray[Any], confidence: float, overlap: float, max_detections: int) -> None:
    """``ValueError`` for what :meth:`OnnxModel.detect` refuses (a threshold off 0..1, not an HxWx3 uint8 frame)."""
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence must be in 0..1, got {confidence}")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in 0..1, got {overlap}")
    if max_detections < 0:
        raise ValueError(f"max_detections must be >= 0, got {max_detections}")
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8 or image_bgr.size == 0:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")


class OnnxModel:
    """A loaded instance-segmentation model, any format in :data:`agent.formats.FORMAT_NAMES`, from a ``.onnx``
    file or a Roboflow package directory. ``detect`` may be called from several threads."""

    path: Path
    weights: Path
    class_names: list[str]
    input_hw: tuple[int, int]
    providers: list[str]
    layout: Layout
    preprocessing: Preprocessing
    package: RoboflowPackage | None
    split_head: SplitHead | None  # the box decode is out of the graph (seg-agent optimize / quantize)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int = 0,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        trt_cache_dir: str | os.PathLike[str] | None = None,
        polygons: PolygonOptions = EXACT,
        spin: bool = True,
        spin_us: int = 0,
    ) -> None:
        self.path = Path(path)
        self.polygons = polygons  # what detect() writes of each mask: tolerance, every part and hole
        options = session_options(threads, spin=spin, spin_us=spin_us)  # spin: runtime.spins()
        self.package = None
        if self.path.is_dir():
            try:
                self.package = read_package(self.path)
            except PackageError as exc:
                raise ModelError(str(exc)) from None
            self.weights = self.package.weights
            for note in self.package.notes:
                log.warning("%s: %s", self.path, note)
        elif self.path.is_file():
            self.weights = self.path
        else:
            raise ModelError(f"{self.path}: no such model file")
        cache = Path(trt_cache_dir) if trt_cache_dir is not None else None
        self._session = open_session(self.weights, options, providers, cache)
        self.providers = list(self._session.get_providers())
        self._lock = threading.Lock()
        metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self._read_layout(metadata)
        log.info(
            "%s: %s, %d classes, input %dx%d, preprocessing: %s",
            self.path,
            FORMAT_NAMES[self.layout.kind],
            len(self.class_names),
            self.input_hw[1],
            self.input_hw[0],
            self.preprocessing.describe(),
        )

    # ------------------------------------------------------------------------------------------------
    # Loading

    def _layout_error(self, why: str) -> ModelError:
        return ModelError(
            f"{self.path}: unsupported model layout ({why}); {SUPPORTED}; found "
            f"inputs: {_describe(self._session.get_inputs())}; "
            f"outputs: {_describe(self._session.get_outputs())}"
        )

    def _read_input(self) -> Any:
        """The model's one image input ``[1, 3, H, W]``; sets its name and NumPy type."""
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise self._layout_error(f"{len(inputs)} inputs")
        image_input = inputs[0]
        if len(image_input.shape) != 4 or _static_dim(image_input.shape[1]) not in (None, 3):
            raise self._layout_error("the input is not [1, 3, H, W]")
        if image_input.type not in _NUMPY_DTYPES:
            raise self._layout_error(f"input type {image_input.type}")
        self._input_name: str = image_input.name
        self._input_dtype = _NUMPY_DTYPES[image_input.type]
        return image_input

    def _read_layout(self, metadata: Mapping[str, str]) -> None:
        image_input = self._read_input()
        package = self.package
        package_pre = package.preprocessing if package is not None else None

        height, width = _static_dim(image_input.shape[2]), _static_dim(image_input.shape[3])
        if height is not None and width is not None:
            self.input_hw = (height, width)
        else:
            from_package = package_pre.input_hw if package_pre is not None else None
            self.input_hw = _imgsz_from_metadata(metadata) or from_package or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)

        outputs = self._session.get_outputs()
        shapes = [tuple(_static_dim(d) for d in o.shape) for o in outputs]
        if height is None or width is None or any(None in s for s in shapes):
            # Symbolic sizes: one run at the chosen input size gives them (and proves that size works).
            concrete = self._probe_shapes([o.name for o in outputs])
        else:
            concrete = [tuple(int(d) for d in s if d is not None) for s in shapes]
        ports = [Port(o.name, s) for o, s in zip(outputs, concrete, strict=True)]

        names = (
            (package.class_names if package is not None else None)
            or _names_from_metadata(metadata)
            or _names_from_file(self.weights)
        )
        try:
            self.split_head = split_head_from_metadata(metadata)  # decode out of the graph
            if self.split_head is not None:
                self.layout = split_layout(self.split_head, ports)
            else:
                self.layout = recognise(
                    ports,
                    input_hw=self.input_hw,
                    metadata=metadata,
                    names_count=len(names) if names else None,
                    model_type=package.model_type if package is not None else None,
                )
        except (FormatError, ValueError) as exc:
            raise self._layout_error(str(exc)) from None
        self._output_names: list[str] = list(self.layout.outputs)
        kind = self.layout.kind
        if kind == "rfdetr":  # stretched, ImageNet-normalised, unless the package says how to resize
            base = package_pre or Preprocessing(resize="stretch", fill=0)
            self.preprocessing = replace(base, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        else:
            self.preprocessing = package_pre or Preprocessing()
        # Ultralytics' YOLOv8 path (letterbox + decoders.decode_yolov8_seg) when nothing else is asked for.
        self._ultralytics_path = kind == "yolov8" and self.preprocessing == Preprocessing()
        # Roboflow's server scores YOLOv5-seg by objectness alone; Ultralytics multiplies by the class score.
        self._yolov5_score: Literal["product", "objectness"] = "objectness" if package is not None else "product"
        self._background_slot: int | None = None
        self.class_names = self._reconcile_names(names)

    def _reconcile_names(self, names: list[str] | None) -> list[str]:
        """Class names for the output's class slots (padded or trimmed, with a warning, when they disagree)."""
        kind, slots = self.layout.kind, self.layout.num_classes
        if kind == "rfdetr" and names is not None and ROBOFLOW_BACKGROUND_CLASS in names:
            self._background_slot = names.index(ROBOFLOW_BACKGROUND_CLASS)
            names = [n for i, n in enumerate(names) if i != self._background_slot]
            slots -= 1
        if kind == "end2end":  # the class count is not in the shapes
            if not names:
                log.warning("%s: no class names in the metadata or beside the model: classes go by number", self.path)
            return list(names or [])
        if names is None:
            return [f"class{i}" for i in range(slots)]
        if kind == "rfdetr" and len(names) < slots:
            # RF-DETR has a no-object slot past the classes; Roboflow's server drops ids past the names.
            log.info(
                "%s: %d class names for %d label slots: slots past the names are not reported",
                self.path,
                len(names),
                slots,
            )
            return names
        if len(names) != slots:
            log.warning(
                "%s: %d class names for %d classes in the output; using the output's count",
                self.path,
                len(names),
                slots,
            )
            names = (names + [f"class{i}" for i in range(len(names), slots)])[:slots]
        return names

    def _probe_shapes(self, names: list[str]) -> list[tuple[int, ...]]:
        """Output sizes from one run on a grey image at ``input_hw``."""
        dummy = np.full((1, 3, *self.input_hw), 0.5, dtype=self._input_dtype)
        try:
            outputs = self._session.run(names, {self._input_name: dummy})
        except Exception as exc:
            raise self._layout_error(f"a test run at input size {self.input_hw} failed: {first_line(exc)}") from exc
        return [tuple(int(d) for d in np.shape(o)) for o in outputs]

    # ------------------------------------------------------------------------------------------------
    # Inference

    def run(self, tensor_nchw: NDArray[Any]) -> tuple[NDArray[np.float32], ...]:
        """The bare session for a prepared ``(1, 3, H, W)`` tensor: the outputs in the layout's order,
        ``(output0, protos)`` for a YOLO, ``(dets, labels, masks)`` for RF-DETR. A uint8-input model takes
        a float 0..1 tensor too (:meth:`input_tensor`)."""
        feed = {self._input_name: self.input_tensor(tensor_nchw)}
        with self._lock:
            outputs = self._session.run(self._output_names, feed)
        return tuple(np.asarray(o, dtype=np.float32) for o in outputs)

    def input_tensor(self, tensor_nchw: NDArray[Any]) -> NDArray[Any]:
        """A prepared tensor as this model's input type; a float 0..1 tensor for a uint8 input becomes
        ``round(x * 255)``, the bytes :func:`~agent.preprocess.letterbox_uint8` writes (benchmarks convert once)."""
        if self._input_dtype is np.uint8 and tensor_nchw.dtype != np.uint8:
            return np.rint(np.clip(tensor_nchw * np.float32(255), 0, 255)).astype(np.uint8)
        return tensor_nchw.astype(self._input_dtype, copy=False)

    @property
    def input_dtype(self) -> type[np.generic]:
        """The input tensor's NumPy type: float32 for most files, uint8 for an int8 file whose input is the
        pixels' bytes (:mod:`agent.quantize_input`)."""
        return self._input_dtype

    def needed_hw(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """The smallest image size of a ``frame_hw`` frame that this model loses nothing from.

        For the letterboxed YOLO path that is the letterbox's content rectangle: a capture may decode a
        JPEG at a reduced size down to this (``detect(..., frame_hw=)``) and the model sees the same frame.
        Other formats (crops, contrast, stretch) ask for the full frame.
        """
        if not self._ultralytics_path:
            return frame_hw
        content_h, content_w = letterbox_content_hw(frame_hw, self.input_hw)
        return min(content_h, frame_hw[0]), min(content_w, frame_hw[1])  # a frame smaller than the input: all of it

    def detect(
        self,
        image_bgr: NDArray[Any],
        *,
        confidence: float,
        overlap: float,
        max_detections: int = 300,
        frame_hw: tuple[int, int] | None = None,
    ) -> Detections:
        """Instances in an HxWx3 uint8 BGR frame (anything else: ``ValueError``), in the frame's pixels.

        ``frame_hw``: the frame's true size when ``image_bgr`` was decoded at a reduced size (see
        :meth:`needed_hw`); detections are then in the true frame's pixels.

        ``confidence`` and ``overlap`` are on the 0..1 scale: a detection needs a score strictly above
        ``confidence``; a box is suppressed by a higher-scoring one of the same class when their IoU is
        strictly above ``overlap`` (NMS-free formats, YOLO26 end-to-end and RF-DETR, have none to do). At
        most ``max_detections`` are returned, highest confidence first. Polygons as :attr:`polygons` asks
        (:class:`~agent.polygons.PolygonOptions`: a simplification tolerance, every part and hole).
        """
        return self._detect_on(self.run, image_bgr, confidence, overlap, max_detections, frame_hw)

    def _detect_on(
        self,
        run: Runner,
        image_bgr: NDArray[Any],
        confidence: float,
        overlap: float,
        max_detections: int,
        frame_hw: tuple[int, int] | None,
    ) -> Detections:
        """:meth:`detect` with the session run by ``run`` (:meth:`run`, or a :class:`SessionPool`'s free session):
        the frame's preparation and decoding hold no session, so another frame's run goes on beside them."""
        _check_detect_args(image_bgr, confidence, overlap, max_detections)
        image_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
        if frame_hw is None:
            frame_hw = image_hw
        limits: dict[str, Any] = {"confidence": confidence, "max_detections": max_detections, "polygons": self.polygons}
        if self._ultralytics_path:
            box = letterbox_uint8 if self._input_dtype is np.uint8 else letterbox
            tensor, params = box(image_bgr, self.input_hw, frame_hw=frame_hw)
            if self.split_head is not None:
                placed = letterbox_placement(params, frame_hw, self.input_hw)
                return decode_yolov8_split(
                    run(tensor),
                    head=self.split_head,
                    placement=placed,
                    input_hw=self.input_hw,
                    frame_hw=frame_hw,
                    overlap=overlap,
                    fast_letterbox=True,
                    **limits,
                )
            output0, protos = run(tensor)
            return decode_yolov8_seg(
                output0, protos, params=params, input_hw=self.input_hw, frame_hw=frame_hw, overlap=overlap, **limits
            )
        if image_hw != frame_hw:  # needed_hw() asks these formats for full frames; be correct regardless
            image_bgr = np.asarray(cv2.resize(image_bgr, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_LINEAR))
        tensor, placement = prepare(image_bgr, self.preprocessing, self.input_hw)
        outputs = run(tensor)
        where: dict[str, Any] = {"placement": placement, "input_hw": self.input_hw, "frame_hw": frame_hw}
        return self._decode_placed(outputs, overlap, {**where, **limits})

    def _decode_placed(
        self, outputs: tuple[NDArray[np.float32], ...], overlap: float, common: dict[str, Any]
    ) -> Detections:
        """The outputs of a frame prepared by :func:`~agent.preprocess.prepare`, decoded by the layout's decoder;
        ``common``: the ``placement``, ``input_hw``, ``frame_hw``, ``confidence`` and ``max_detections``."""
        kind = self.layout.kind
        if self.split_head is not None:
            return decode_yolov8_split(outputs, head=self.split_head, overlap=overlap, **common)
        if kind == "yolov8":
            return decode_yolov8_placed(*outputs, overlap=overlap, **common)
        if kind == "yolov5":
            return decode_yolov5_seg(*outputs, overlap=overlap, score=self._yolov5_score, **common)
        if kind == "end2end":
            return decode_end2end_seg(*outputs, **common)
        return decode_rfdetr_seg(
            *outputs, num_classes=len(self.class_names), background_slot=self._background_slot, **common
        )

    def __repr__(self) -> str:
        return (
            f"OnnxModel({str(self.path)!r}, format={self.layout.kind}, input_hw={self.input_hw}, "
            f"classes={len(self.class_names)}, providers={self.providers})"
        )
