"""Small ONNX graphs in the Ultralytics YOLOv8-seg layout, built with the ``onnx`` helper API, for tests.

``build_yolov8_seg(path, imgsz=(256, 256), class_names=[...])`` writes a model whose outputs depend on the
image, so detections are plausible and change with the frame:

* A fixed 3x3 convolution turns the image into 4 feature maps (grey, red, blue, |Laplacian of grey|),
  average-pooled over ``stride x stride`` cells; ``per_cell`` anchors per cell, near-copies of each other
  (as neighbouring anchors of a real model predict the same object, so NMS has work to do):
  ``G = per_cell * H/stride * W/stride`` anchors.
* Boxes ``cx, cy, w, h`` (input pixels) = constant anchors (random sizes, 20-150 px, some reaching past the
  image edge) + image-dependent shifts and size factors from the pooled features.
* Class scores = sigmoid(constant per-anchor logits + per-anchor gains x a mix of the features - up to 8
  where the cell has no texture, as in the letterbox padding), spread widely across 0..1, so thresholds
  matter and overlapping boxes of the same and different classes occur.
* Prototypes ``[1, nm, H/4, W/4]``: 1, X, Y, X^2, Y^2 (X = x/100 in input pixels), the image's grey level
  minus 0.5 (pooled by 4), and low-frequency sinusoid patterns. Coefficients are computed in the graph from
  each box so that coeffs . protos is an ellipse inside the box (radii 0.45 of its size), grown or shrunk
  by the grey level under it, with wobbly edges from the sinusoids.

Other builders write the wrong layouts that ``OnnxModel`` must refuse.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
FEATURES = 4  # grey, red, blue, |Laplacian|
_ELLIPSE_SHARPNESS = 6.0
_ELLIPSE_RADIUS = 0.45  # of the box's width / height
_UNIT = 0.01  # prototype coordinates are input pixels / 100


class _Graph:
    """Accumulates nodes and constant initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value: NDArray[np.generic] | float, prefix: str = "c") -> str:
        array = np.asarray(value)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: object) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def ops(self, op_type: str, inputs: Sequence[str], outputs: int, **attrs: object) -> list[str]:
        outs = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs


def _metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value


def _save(graph: onnx.GraphProto, path: str | os.PathLike[str], metadata: Mapping[str, str]) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = IR_VERSION
    _metadata(model, metadata)
    onnx.checker.check_model(model)
    out = Path(path)
    onnx.save(model, str(out))
    return out


def _feature_conv_weights() -> NDArray[np.float32]:
    """[4, 3, 3, 3] (RGB input): grey, red, blue at the centre tap; Laplacian of grey."""
    weights = np.zeros((FEATURES, 3, 3, 3), dtype=np.float32)
    grey = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    weights[0, :, 1, 1] = grey
    weights[1, 0, 1, 1] = 1.0
    weights[2, 2, 1, 1] = 1.0
    laplacian = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32)
    weights[3] = grey[:, None, None] * laplacian[None]
    return weights


def _prototype_constants(
    rng: np.random.Generator, num_masks: int, proto_hw: tuple[int, int], stride: float
) -> NDArray[np.float32]:
    proto_h, proto_w = proto_hw
    xs = (np.arange(proto_w, dtype=np.float64) + 0.5) * stride * _UNIT
    ys = (np.arange(proto_h, dtype=np.float64) + 0.5) * stride * _UNIT
    grid_x, grid_y = np.meshgrid(xs, ys)
    planes = [np.ones_like(grid_x), grid_x, grid_y, grid_x**2, grid_y**2, np.full_like(grid_x, -0.5)]
    for _ in range(num_masks - len(planes)):
        fx, fy = rng.uniform(-1.5, 1.5, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        planes.append(np.sin(2 * np.pi * (fx * grid_x + fy * grid_y) + phase))
    return np.stack(planes)[np.newaxis].astype(np.float32)


def _twins(
    rng: np.random.Generator, per_cell: NDArray[np.float64], copies: int, jitter: float, *, relative: bool = False
) -> NDArray[np.float64]:
    """``copies`` near-copies of per-cell values along the last axis, as neighbouring anchors predict alike."""
    noise = rng.normal(0.0, jitter, size=(*per_cell.shape[:-1], per_cell.shape[-1] * (copies - 1)))
    tiled = np.tile(per_cell, copies)
    if relative:
        noise = tiled[..., per_cell.shape[-1] :] * noise
    tiled[..., per_cell.shape[-1] :] += noise
    return tiled


def build_yolov8_seg(
    path: str | os.PathLike[str],
    *,
    imgsz: tuple[int, int] = (256, 256),
    class_names: Sequence[str] | None = ("circle", "rectangle", "triangle"),
    num_classes: int | None = None,
    num_masks: int = 32,
    stride: int = 32,
    per_cell: int = 2,
    seed: int = 0,
    dynamic_input: bool = False,
    anchors_first: bool = False,
    metadata: Mapping[str, str | None] | None = None,
) -> Path:
    """Write a YOLOv8-seg-layout model to ``path`` and return the path (``G`` anchors, see the module doc).

    ``class_names`` go into the metadata as Ultralytics writes them (``"{0: 'a', ...}"``); ``None`` leaves
    ``names`` out (then ``num_classes`` says how many, default 3). ``dynamic_input`` declares symbolic input
    and output shapes (the graph still needs ``imgsz``, which the metadata gives). ``anchors_first``
    transposes ``output0`` to ``[1, anchors, values]`` (the YOLOv5-seg / end-to-end shape). ``metadata``
    entries are added to (or replace) the default ``names``, ``imgsz``, ``stride``, ``task``; a ``None`` value
    removes the entry.
    """
    height, width = imgsz
    if height % stride or width % stride or height % 4 or width % 4:
        raise ValueError(f"imgsz {imgsz} must be a multiple of stride {stride} and of 4")
    if num_masks < 6:
        raise ValueError("num_masks must be >= 6 (5 ellipse planes + grey)")
    nc = len(class_names) if class_names is not None else (3 if num_classes is None else num_classes)
    rng = np.random.default_rng(seed)
    grid_h, grid_w = height // stride, width // stride
    cells = grid_h * grid_w
    anchors = cells * per_cell
    g = _Graph()

    # Features per anchor: [1, 4, G], centred and scaled to about -0.5..0.5; cells repeated for the twins.
    conv = g.op("Conv", "images", g.const(_feature_conv_weights(), "w_feat"), pads=[1, 1, 1, 1])
    pooled = g.op("AveragePool", g.op("Abs", conv), kernel_shape=[stride, stride], strides=[stride, stride])
    cell_features = g.op("Reshape", pooled, g.const(np.array([1, FEATURES, cells], dtype=np.int64)))
    features = g.op("Concat", *[cell_features] * per_cell, axis=2)
    centre = np.array([0.5, 0.5, 0.5, 0.0], dtype=np.float32).reshape(1, FEATURES, 1)
    spread = np.array([1.0, 1.0, 1.0, 20.0], dtype=np.float32).reshape(1, FEATURES, 1)
    feats = g.op("Mul", g.op("Sub", features, g.const(centre)), g.const(spread))

    # Boxes: constant anchors + feature-driven shifts and scales.
    gy, gx = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    anchor_cx = _twins(rng, (gx.reshape(-1) + 0.5) * stride + rng.uniform(-0.4, 0.4, cells) * stride, per_cell, 3)
    anchor_cy = _twins(rng, (gy.reshape(-1) + 0.5) * stride + rng.uniform(-0.4, 0.4, cells) * stride, per_cell, 3)
    base_w = _twins(rng, rng.uniform(20, 150, cells), per_cell, 0.08, relative=True)
    base_h = base_w * _twins(rng, rng.uniform(0.6, 1.6, cells), per_cell, 0.05, relative=True)
    offset = np.stack([anchor_cx, anchor_cy, base_w, base_h])[np.newaxis]
    gain = np.stack([np.full(anchors, 10.0), np.full(anchors, 10.0), base_w * 0.5, base_h * 0.5])[np.newaxis]
    mix_box = np.array([[0, 1, -1, 0.2], [1, 0, 0, -0.2], [0.8, 0, 0, 0.1], [0, 0.4, 0.4, 0.1]])
    box = g.op("Add", g.const(offset), g.op("Mul", g.const(gain), g.op("MatMul", g.const(mix_box), feats)))

    # Class scores.
    base_logit = _twins(rng, rng.normal(-1.0, 2.0, size=(1, nc, cells)), per_cell, 0.7)
    logit_gain = _twins(rng, rng.normal(0.0, 2.0, size=(1, nc, cells)), per_cell, 0.3)
    mix_score = rng.normal(0.0, 1.0, size=(nc, FEATURES))
    class_logits = g.op(
        "Add", g.const(base_logit), g.op("Mul", g.const(logit_gain), g.op("MatMul", g.const(mix_score), feats))
    )
    # Objectness from texture: flat cells (the letterbox padding) get -8, textured cells 0.
    _, texture = g.ops("Split", [feats, g.const(np.array([3, 1], dtype=np.int64))], 2, axis=1)
    flatness = g.op("Sub", g.op("Min", texture, g.const(np.float32(1.0))), g.const(np.float32(1.0)))
    scores = g.op("Sigmoid", g.op("Add", class_logits, g.op("Mul", flatness, g.const(np.float32(8.0)))))

    # Mask coefficients from each box: an ellipse k * (1 - ((X - cx) / a)^2 - ((Y - cy) / b)^2).
    cx, cy, bw, bh = g.ops("Split", [box, g.const(np.array([1, 1, 1, 1], dtype=np.int64))], 4, axis=1)
    k = _ELLIPSE_SHARPNESS
    cxn = g.op("Mul", cx, g.const(np.float32(_UNIT)))
    cyn = g.op("Mul", cy, g.const(np.float32(_UNIT)))
    radius_x = g.op("Mul", bw, g.const(np.float32(_ELLIPSE_RADIUS * _UNIT)))
    radius_y = g.op("Mul", bh, g.const(np.float32(_ELLIPSE_RADIUS * _UNIT)))
    c_xx = g.op("Div", g.const(np.float32(-k)), g.op("Mul", radius_x, radius_x))
    c_yy = g.op("Div", g.const(np.float32(-k)), g.op("Mul", radius_y, radius_y))
    c_x = g.op("Mul", g.op("Mul", cxn, c_xx), g.const(np.float32(-2.0)))
    c_y = g.op("Mul", g.op("Mul", cyn, c_yy), g.const(np.float32(-2.0)))
    c_1 = g.op(
        "Add",
        g.const(np.float32(k)),
        g.op("Add", g.op("Mul", g.op("Mul", cxn, cxn), c_xx), g.op("Mul", g.op("Mul", cyn, cyn), c_yy)),
    )
    c_grey = g.const(_twins(rng, rng.uniform(2.0, 5.0, size=(1, 1, cells)), per_cell, 0.2))
    c_waves = g.const(_twins(rng, rng.normal(0.0, 0.25, size=(1, num_masks - 6, cells)), per_cell, 0.05))
    coeffs = g.op("Concat", c_1, c_x, c_y, c_xx, c_yy, c_grey, c_waves, axis=1)
    output0 = g.op("Concat", box, scores, coeffs, axis=1, output=None if anchors_first else "output0")
    if anchors_first:
        output0 = g.op("Transpose", output0, perm=[0, 2, 1], output="output0")

    # Prototypes: constant planes + the image's grey level in plane 5.
    proto_h, proto_w = height // 4, width // 4
    grey_weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
    grey = g.op("AveragePool", g.op("Conv", "images", g.const(grey_weights)), kernel_shape=[4, 4], strides=[4, 4])
    plane_select = np.zeros((1, num_masks, 1, 1), dtype=np.float32)
    plane_select[0, 5] = 1.0
    planes = _prototype_constants(rng, num_masks, (proto_h, proto_w), 4.0)
    g.op("Add", g.const(planes), g.op("Mul", grey, g.const(plane_select)), output="output1")

    rows = 4 + nc + num_masks
    if dynamic_input:
        input_shape: list[int | str] = ["batch", 3, "height", "width"]
        out0_shape: list[int | str] = ["batch", "rows", "anchors"]
        out1_shape: list[int | str] = ["batch", "masks", "proto_h", "proto_w"]
    else:
        input_shape = [1, 3, height, width]
        out0_shape = [1, anchors, rows] if anchors_first else [1, rows, anchors]
        out1_shape = [1, num_masks, proto_h, proto_w]
    graph = helper.make_graph(
        g.nodes,
        "yolov8_seg_fixture",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape)],
        [
            helper.make_tensor_value_info("output0", TensorProto.FLOAT, out0_shape),
            helper.make_tensor_value_info("output1", TensorProto.FLOAT, out1_shape),
        ],
        initializer=g.initializers,
    )
    meta = {"imgsz": str([height, width]), "stride": str(stride), "task": "segment"}
    if class_names is not None:
        meta["names"] = str(dict(enumerate(class_names)))
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return _save(graph, path, meta)


def build_single_output(path: str | os.PathLike[str], *, imgsz: tuple[int, int] = (64, 64)) -> Path:
    """A model with the right input but one output (a detection-only / classification-like graph)."""
    g = _Graph()
    g.op("GlobalAveragePool", "images", output="output0")
    graph = helper.make_graph(
        g.nodes,
        "single_output",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 1, 1])],
    )
    return _save(graph, path, {})


def build_two_inputs(path: str | os.PathLike[str]) -> Path:
    """A model with two inputs (not an image model)."""
    g = _Graph()
    g.op("Add", "a", "b", output="sum")
    g.op("Identity", "sum", output="sum4")
    graph = helper.make_graph(
        g.nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("sum4", TensorProto.FLOAT, [1, 3, 8, 8]),
        ],
    )
    return _save(graph, path, {})
