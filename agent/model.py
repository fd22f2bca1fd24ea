"""The local model: an Ultralytics YOLOv8 / YOLO11 ``-seg`` ONNX export run with ONNX Runtime.

``OnnxModel(path).detect(frame_bgr, confidence=0.4, overlap=0.3)`` letterboxes the frame, runs the session
and decodes the outputs with :mod:`agent.postprocess`. Loading checks the layout and fails with
:class:`ModelError`, whose message names the file and what was found in it.
"""

from __future__ import annotations

import ast
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from agent.postprocess import LETTERBOX_FILL, Detections, decode_yolov8_seg, letterbox

__all__ = ["DEFAULT_IMGSZ", "ModelError", "OnnxModel"]

log = logging.getLogger(__name__)

DEFAULT_IMGSZ = 640
"""Input side used when the input shape is dynamic and the metadata has no ``imgsz``."""

CLASS_NAME_FILES = ("classes.txt", "class_names.txt")
"""Files beside the model, one class name a line, read when the metadata has no ``names``."""

_NUMPY_DTYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


class ModelError(Exception):
    """The model file can't be used: missing, not ONNX, or a layout this agent doesn't decode."""


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
                lines = candidate.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelError(f"{candidate}: cannot read class names: {exc}") from exc
            names = [line.strip() for line in lines if line.strip()]
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


def _session_options(threads: int) -> ort.SessionOptions:
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = let ONNX Runtime choose), got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _available_providers(requested: Sequence[str]) -> list[str]:
    if isinstance(requested, str):
        requested = [requested]
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        log.warning("ONNX Runtime providers not available here, skipped: %s", ", ".join(missing))
    return chosen or ["CPUExecutionProvider"]


class OnnxModel:
    """A loaded YOLOv8/YOLO11-seg ONNX model. ``detect`` may be called from several threads."""

    path: Path
    class_names: list[str]
    input_hw: tuple[int, int]
    providers: list[str]

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int = 0,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self.path = Path(path)
        options = _session_options(threads)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=_available_providers(providers)
            )
        except Exception as exc:  # onnxruntime raises its own untyped exceptions for bad files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: not a loadable ONNX model: {first_line}") from exc
        self.providers = list(self._session.get_providers())
        self._lock = threading.Lock()
        metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self._read_layout(metadata)

    # ------------------------------------------------------------------------------------------------
    # Loading

    def _layout_error(self, why: str) -> ModelError:
        return ModelError(
            f"{self.path}: unsupported model layout ({why}); expected a YOLOv8/YOLO11-seg export with input "
            "images [1, 3, H, W] and outputs [1, 4+classes+masks, anchors] and [1, masks, H/4, W/4]; found "
            f"inputs: {_describe(self._session.get_inputs())}; "
            f"outputs: {_describe(self._session.get_outputs())}"
        )

    def _read_layout(self, metadata: Mapping[str, str]) -> None:
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1:
            raise self._layout_error(f"{len(inputs)} inputs")
        image_input = inputs[0]
        if len(image_input.shape) != 4 or _static_dim(image_input.shape[1]) not in (None, 3):
            raise self._layout_error("the input is not [1, 3, H, W]")
        if image_input.type not in _NUMPY_DTYPES:
            raise self._layout_error(f"input type {image_input.type}")
        self._input_name: str = image_input.name
        self._input_dtype = _NUMPY_DTYPES[image_input.type]

        height, width = _static_dim(image_input.shape[2]), _static_dim(image_input.shape[3])
        dynamic_input = height is None or width is None
        if height is not None and width is not None:
            self.input_hw = (height, width)
        else:
            self.input_hw = _imgsz_from_metadata(metadata) or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)

        if len(outputs) != 2:
            raise self._layout_error(f"{len(outputs)} outputs, need 2")
        by_rank = {len(o.shape): o for o in outputs}
        if sorted(by_rank) != [3, 4]:
            raise self._layout_error("need one 3-D detection output and one 4-D prototype output")
        detect_out, proto_out = by_rank[3], by_rank[4]
        self._output_names: list[str] = [detect_out.name, proto_out.name]

        rows = _static_dim(detect_out.shape[1])
        anchors = _static_dim(detect_out.shape[2])
        num_masks = _static_dim(proto_out.shape[1])
        if dynamic_input or rows is None or num_masks is None:
            # Symbolic sizes: one run at the chosen input size gives them (and proves that size works).
            rows, anchors, num_masks = self._probe_shapes()

        names = _names_from_metadata(metadata) or _names_from_file(self.path)
        self._check_rows_are_values(rows, anchors, num_masks, names)
        num_classes = rows - 4 - num_masks
        if num_classes < 1:
            raise self._layout_error(f"output0 has {rows} rows, too few for 4 + classes + {num_masks} masks")

        if names is None:
            names = [f"class{i}" for i in range(num_classes)]
        elif len(names) != num_classes:
            log.warning(
                "%s: %d class names for %d classes in the output; using the output's count",
                self.path,
                len(names),
                num_classes,
            )
            names = (names + [f"class{i}" for i in range(len(names), num_classes)])[:num_classes]
        self.class_names = names

    def _check_rows_are_values(self, rows: int, anchors: int | None, num_masks: int, names: list[str] | None) -> None:
        """Refuse ``output0`` laid out ``[1, anchors, values]`` (YOLOv5-seg, end-to-end exports).

        YOLOv8 is certain when the rows are 4 + the known class count + masks, or when the anchors are the
        count of strides 8/16/32 over the input; otherwise more rows than anchors means the other layout.
        """
        if names is not None and rows == 4 + len(names) + num_masks:
            return
        height, width = self.input_hw
        if anchors is not None and anchors == (height // 8) * (width // 8) * 21 // 16:
            return
        if anchors is not None and rows > anchors:
            raise self._layout_error(
                "output0 looks like [1, anchors, values] (YOLOv5-seg or an end-to-end export), not "
                "[1, 4+classes+masks, anchors]"
            )

    def _probe_shapes(self) -> tuple[int, int, int]:
        """Output sizes from one run on a grey image at ``input_hw``."""
        dummy = np.full((1, 3, *self.input_hw), LETTERBOX_FILL / 255.0, dtype=self._input_dtype)
        try:
            output0, protos = self._session.run(self._output_names, {self._input_name: dummy})
        except Exception as exc:
            raise self._layout_error(f"a test run at input size {self.input_hw} failed: {exc}") from exc
        if np.ndim(output0) != 3 or np.ndim(protos) != 4:
            raise self._layout_error(f"a test run gave shapes {np.shape(output0)} and {np.shape(protos)}")
        return int(output0.shape[1]), int(output0.shape[2]), int(protos.shape[1])

    # ------------------------------------------------------------------------------------------------
    # Inference

    def run(self, tensor_nchw: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The bare session: ``(output0, protos)`` for an already letterboxed ``(1, 3, H, W)`` tensor."""
        feed = {self._input_name: tensor_nchw.astype(self._input_dtype, copy=False)}
        with self._lock:
            output0, protos = self._session.run(self._output_names, feed)
        return (
            np.asarray(output0, dtype=np.float32),
            np.asarray(protos, dtype=np.float32),
        )

    def detect(
        self,
        image_bgr: NDArray[Any],
        *,
        confidence: float,
        overlap: float,
        max_detections: int = 300,
    ) -> Detections:
        """Instances in an HxWx3 uint8 BGR frame (anything else: ``ValueError``), in the frame's pixels.

        ``confidence`` and ``overlap`` are on the 0..1 scale: a detection needs a score strictly above
        ``confidence``; a box is suppressed by a higher-scoring one of the same class when their IoU is
        strictly above ``overlap``. At most ``max_detections`` are returned, highest confidence first.
        """
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in 0..1, got {confidence}")
        if not 0.0 <= overlap <= 1.0:
            raise ValueError(f"overlap must be in 0..1, got {overlap}")
        if max_detections < 0:
            raise ValueError(f"max_detections must be >= 0, got {max_detections}")
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8 or image_bgr.size == 0:
            raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
        tensor, params = letterbox(image_bgr, self.input_hw)
        output0, protos = self.run(tensor)
        return decode_yolov8_seg(
            output0,
            protos,
            params=params,
            input_hw=self.input_hw,
            frame_hw=(int(image_bgr.shape[0]), int(image_bgr.shape[1])),
            confidence=confidence,
            overlap=overlap,
            max_detections=max_detections,
        )

    def __repr__(self) -> str:
        return (
            f"OnnxModel({str(self.path)!r}, input_hw={self.input_hw}, classes={len(self.class_names)}, "
            f"providers={self.providers})"
        )
