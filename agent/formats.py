"""Which supported format an ONNX graph is, from its input, outputs, metadata and a package's ``model_type``.

Pure: works on names and concrete shapes (``agent.model`` probes symbolic ones with one run first).
:func:`recognise` returns a :class:`Layout` or raises :class:`FormatError` saying why; the caller adds the
file name and what was found. The rules, first match wins:

* outputs named ``dets``, ``labels``, ``masks`` (RF-DETR's exporter), or three outputs shaped
  ``[1, Q, 4]``, ``[1, Q, C]``, ``[1, Q, h, w]``: RF-DETR segmentation;
* two outputs, ``[1, A, B]`` and prototypes ``[1, nm, h, w]``: a YOLO; which one is said by the package's
  ``model_type`` (``yolov5*``, ``yolov8*`` / ``yolov11*``, ``yolo26*``), else by the metadata ``end2end``
  (Ultralytics writes it), else by the shapes: ``A = 3 x`` the anchor count of strides 8/16/32 is YOLOv5;
  ``B =`` that count, ``A = 4 + classes + nm``, or ``A < B`` is YOLOv8 (values x anchors); otherwise the
  rows are anchors: ``B = 6 + nm`` is end-to-end, ``B = 5 + classes + nm`` is YOLOv5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["FORMAT_NAMES", "SUPPORTED", "FormatError", "Kind", "Layout", "Port", "anchor_count", "recognise"]

Kind = Literal["yolov8", "yolov5", "end2end", "rfdetr"]

FORMAT_NAMES: dict[Kind, str] = {
    "yolov8": "Ultralytics YOLOv8/YOLO11/YOLO26-seg",
    "yolov5": "YOLOv5-seg",
    "end2end": "YOLO26-seg end-to-end (NMS-free)",
    "rfdetr": "RF-DETR segmentation",
}

SUPPORTED = (
    "supported: YOLOv8/YOLO11/YOLO26-seg (input images [1, 3, H, W]; outputs [1, 4+classes+32, N] and "
    "[1, 32, H/4, W/4]), YOLOv5-seg ([1, N, 5+classes+32] and [1, 32, H/4, W/4]), YOLO26-seg end-to-end "
    "([1, 300, 6+32] and [1, 32, H/4, W/4]), RF-DETR-seg (input [1, 3, H, W]; dets [1, Q, 4], "
    "labels [1, Q, classes], masks [1, Q, H/4, W/4]), each as a .onnx file or in a Roboflow package directory"
)


class FormatError(Exception):
    """The graph is none of the supported formats; the message says what does not fit."""


@dataclass(frozen=True, slots=True)
class Port:
    """One graph input or output with concrete sizes."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """A recognised format: output names in decoder order, class slots and mask prototypes in the outputs."""

    kind: Kind
    outputs: tuple[str, ...]
    num_classes: int
    num_masks: int


def anchor_count(input_hw: tuple[int, int]) -> int:
    """Grid cells of strides 8, 16, 32 over the input: YOLOv8's anchor count (YOLOv5 has 3 per cell)."""
    height, width = input_hw
    return sum(-(-height // s) * -(-width // s) for s in (8, 16, 32))


def _hint(model_type: str | None) -> str | None:
    if not model_type:
        return None
    mt = model_type.lower()
    if mt.startswith("rfdetr"):
        return "rfdetr"
    if mt.startswith("yolov5"):
        return "yolov5"
    if mt.startswith(("yolo26", "yolov26")):
        return "yolo26"
    if mt.startswith(("yolov8", "yolov11", "yolo11")):
        return "yolov8"
    return None


def _rfdetr(dets: Port, labels: Port, masks: Port) -> Layout:
    ok = (
        len(dets.shape) == 3
        and len(labels.shape) == 3
        and len(masks.shape) == 4
        and dets.shape[2] == 4
        and dets.shape[1] == labels.shape[1] == masks.shape[1]
        and labels.shape[2] >= 1
    )
    if not ok:
        raise FormatError(
            f"RF-DETR outputs must be dets [1, Q, 4], labels [1, Q, classes], masks [1, Q, h, w] with one Q; "
            f"got {list(dets.shape)}, {list(labels.shape)}, {list(masks.shape)}"
        )
    return Layout("rfdetr", (dets.name, labels.name, masks.name), labels.shape[2], 0)


def _rfdetr_by_shape(outputs: Sequence[Port]) -> Layout | None:
    if sorted(len(o.shape) for o in outputs) != [3, 3, 4]:
        return None
    masks = next(o for o in outputs if len(o.shape) == 4)
    flat = [o for o in outputs if len(o.shape) == 3]
    boxes = [o for o in flat if o.shape[2] == 4]
    if len(boxes) == 1:
        dets = boxes[0]
        labels = next(o for o in flat if o is not dets)
    else:  # four classes: both end in 4; RF-DETR's exporter writes dets first
        dets, labels = flat
    return _rfdetr(dets, labels, masks)


def _yolo(
    det: Port,
    protos: Port,
    *,
    hint: str | None,
    end2end: bool,
    names_count: int | None,
    input_hw: tuple[int, int],
) -> Layout:
    _, rows, cols = det.shape
    nm = protos.shape[1]
    outputs = (det.name, protos.name)
    cells = anchor_count(input_hw)

    def yolov8() -> Layout:
        if rows - 4 - nm < 1:
            raise FormatError(f"{det.name} has {rows} rows, too few for 4 + classes + {nm} masks")
        return Layout("yolov8", outputs, rows - 4 - nm, nm)

    def yolov5() -> Layout:
        if cols - 5 - nm < 1:
            raise FormatError(f"{det.name} rows have {cols} values, too few for 5 + classes + {nm} masks")
        return Layout("yolov5", outputs, cols - 5 - nm, nm)

    def e2e() -> Layout:
        if cols != 6 + nm:
            raise FormatError(f"an end-to-end export's {det.name} is [1, K, 6+{nm}]; its rows have {cols} values")
        return Layout("end2end", outputs, 0, nm)

    if hint == "rfdetr":
        raise FormatError("model_type says RF-DETR, but the outputs are a YOLO's (detections and prototypes)")
    if hint == "yolov5":
        return yolov5()
    if hint == "yolov8":
        return yolov8()
    if hint == "yolo26":
        return e2e() if cols == 6 + nm and rows > cols else yolov8()
    if end2end:
        return e2e()
    if rows == 3 * cells and cols >= 6 + nm:
        return yolov5()
    if cols == cells or (names_count is not None and rows == 4 + names_count + nm) or rows < cols:
        return yolov8()
    if cols == 6 + nm:
        return e2e()
    if names_count is None or cols == 5 + names_count + nm:
        return yolov5()
    raise FormatError(
        f"{det.name} looks like [1, anchors, values] but its {cols} values fit neither YOLOv5-seg "
        f"(5 + {names_count} classes + {nm} = {5 + names_count + nm}) nor an end-to-end export (6 + {nm} = {6 + nm})"
    )


def recognise(
    outputs: Sequence[Port],
    *,
    input_hw: tuple[int, int],
    metadata: Mapping[str, str],
    names_count: int | None = None,
    model_type: str | None = None,
) -> Layout:
    """The format of a graph with one ``[1, 3, H, W]`` input (checked by the caller) and these outputs."""
    hint = _hint(model_type)
    by_name = {o.name: o for o in outputs}
    if "dets" in by_name and "labels" in by_name:
        if "masks" not in by_name:
            raise FormatError("an RF-DETR detection model (dets, labels, no masks); the agent needs segmentation")
        return _rfdetr(by_name["dets"], by_name["labels"], by_name["masks"])
    if len(outputs) == 3:
        layout = _rfdetr_by_shape(outputs)
        if layout is not None:
            return layout
        raise FormatError("3 outputs, but not RF-DETR's [1, Q, 4], [1, Q, classes], [1, Q, h, w]")
    if hint == "rfdetr":
        raise FormatError(f"model_type says RF-DETR, which has 3 outputs (dets, labels, masks); found {len(outputs)}")
    if len(outputs) != 2:
        raise FormatError(f"{len(outputs)} outputs, need 2 (a YOLO-seg) or 3 (RF-DETR-seg)")
    by_rank = {len(o.shape): o for o in outputs}
    if sorted(by_rank) != [3, 4]:
        raise FormatError("need one 3-D detection output and one 4-D prototype output")
    end2end = metadata.get("end2end", "").strip().lower() == "true"
    return _yolo(by_rank[3], by_rank[4], hint=hint, end2end=end2end, names_count=names_count, input_hw=input_hw)
