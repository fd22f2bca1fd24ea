"""ONNX graphs in every supported format's exact input/output names and layouts, built with the ``onnx`` helper
API, and Roboflow package directories around them, for tests.

* :func:`build_red_finder` writes a YOLOv8-layout model that *really* finds the red object in the picture:
  the box is the bounding box of the pixels where red exceeds green and blue by 0.3 (input pixels, edges), the
  mask prototype is those pixels' coverage per 4x4 cell, class ``object_class`` scores 0.9 when something red
  is there; 299 other anchors are fixed low-score boxes. A frame with a red rectangle at known frame pixels
  must come back at those pixels whatever the resize, which is what the preprocessing tests check.
* :func:`convert` rewrites a YOLOv8-layout model (the finder, or ``tests.onnx_models.build_yolov8_seg``'s
  image-dependent one) into another format by appending ONNX nodes to its graph:

  - ``yolov5``: ``output0 [1, N, 5+nc+nm]`` = ``cx, cy, w, h``, objectness = sqrt(best class score), the
    class scores, the coefficients; ``output1`` prototypes. Metadata as YOLOv5's exporter writes it
    (``stride``, ``names``).
  - ``end2end``: ``output0 [1, K, 6+nm]`` = ``x1, y1, x2, y2``, score, class index, coefficients, the ``K``
    best anchors by score (``TopK``); ``output1`` prototypes; metadata ``end2end: True`` (Ultralytics 8.4).
  - ``rfdetr``: input ``input [1, 3, H, W]`` ImageNet-normalised (the graph undoes it first); ``dets
    [1, N, 4]`` normalised ``cx, cy, w, h``; ``labels [1, N, nc+1]`` logits (the last slot a never-firing
    no-object slot, as RF-DETR's class head has); ``masks [1, N, H/4, W/4]`` = coefficients . prototypes as
    logits. No metadata (RF-DETR's exporter writes none but optional notes).
  - ``rfdetr-detect``: the same without ``masks`` (an RF-DETR detection model, which must be refused).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.onnx_models import _Graph, _save

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FINDER_ANCHORS = 300


class _Prefixed(_Graph):
    """A :class:`_Graph` whose names can't collide with those of the graph it is appended to."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def name(self, prefix: str) -> str:
        return super().name(f"{self._prefix}{prefix}")


def _f(value: float) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def build_red_finder(
    path: str | os.PathLike[str],
    *,
    imgsz: tuple[int, int] = (320, 320),
    class_names: Sequence[str] = ("circle", "rectangle", "triangle"),
    object_class: int = 1,
    num_masks: int = 32,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """A YOLOv8-layout model that finds the red object (see the module doc)."""
    height, width = imgsz
    nc, nm, n = len(class_names), num_masks, FINDER_ANCHORS
    g = _Graph()
    red, green, blue = g.ops("Split", ["images", g.const(np.array([1, 1, 1], dtype=np.int64))], 3, axis=1)
    redness = g.op("Sub", red, g.op("Max", green, blue))
    mask = g.op("Cast", g.op("Greater", redness, g.const(_f(0.3))), to=TensorProto.FLOAT)  # [1, 1, H, W]
    cols = g.op("ReduceMax", mask, axes=[2], keepdims=0)  # [1, 1, W]
    rows = g.op("ReduceMax", mask, axes=[3], keepdims=0)  # [1, 1, H]
    present = g.op("ReduceMax", cols, axes=[2], keepdims=1)  # [1, 1, 1]

    def first_last(line: str) -> tuple[str, str]:
        first = g.op("Cast", g.op("ArgMax", line, axis=2, keepdims=1), to=TensorProto.FLOAT)
        last = g.op("Cast", g.op("ArgMax", line, axis=2, keepdims=1, select_last_index=1), to=TensorProto.FLOAT)
        return first, g.op("Add", last, g.const(_f(1.0)))  # pixel edges: [first, last + 1)

    x1, x2 = first_last(cols)
    y1, y2 = first_last(rows)
    half = g.const(_f(0.5))
    box0 = g.op(
        "Concat",
        g.op("Mul", g.op("Add", x1, x2), half),
        g.op("Mul", g.op("Add", y1, y2), half),
        g.op("Sub", x2, x1),
        g.op("Sub", y2, y1),
        axis=1,
    )  # [1, 4, 1]
    rng = np.random.default_rng(3)
    junk = np.stack(
        [
            rng.uniform(0, width, n - 1),
            rng.uniform(0, height, n - 1),
            rng.uniform(8, 60, n - 1),
            rng.uniform(8, 60, n - 1),
        ]
    )[np.newaxis]
    boxes = g.op("Concat", box0, g.const(junk), axis=2)
    onehot = np.full((1, nc, 1), 0.001, dtype=np.float32)
    onehot[0, object_class, 0] = 0.9
    score0 = g.op("Mul", present, g.const(onehot))
    scores = g.op("Concat", score0, g.const(np.full((1, nc, n - 1), 0.02, dtype=np.float32)), axis=2)
    coeffs = np.zeros((1, nm, n), dtype=np.float32)
    coeffs[0, 0, 0] = 1.0
    g.op("Concat", boxes, scores, g.const(coeffs), axis=1, output="output0")
    coverage = g.op("AveragePool", mask, kernel_shape=[4, 4], strides=[4, 4])
    plane = g.op("Mul", g.op("Sub", coverage, half), g.const(_f(20.0)))
    zeros = g.const(np.zeros((1, nm - 1, height // 4, width // 4), dtype=np.float32))
    g.op("Concat", plane, zeros, axis=1, output="output1")
    graph = helper.make_graph(
        g.nodes,
        "red_finder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [
            helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + nc + nm, n]),
            helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, nm, height // 4, width // 4]),
        ],
        initializer=g.initializers,
    )
    meta = {"names": str(dict(enumerate(class_names))), "imgsz": str([height, width]), "stride": "32"}
    meta["task"] = "segment"
    meta.update(metadata or {})
    return _save(graph, path, meta)


Kind = Literal["yolov5", "end2end", "rfdetr", "rfdetr-detect"]


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    kind: Kind,
    *,
    top_k: int = 300,
    metadata: Mapping[str, str | None] | None = None,
) -> Path:
    """Rewrite a YOLOv8-layout model (``images`` -> ``output0``, ``output1``, static shapes) as ``kind``."""
    model = onnx.load(str(src))
    old = model.graph
    _, _, height, width = _dims(old.input[0])
    _, rows, anchors = _dims(old.output[0])
    _, nm, proto_h, proto_w = _dims(old.output[1])
    nc = rows - 4 - nm
    renames = {"output0": "y8_output0", "output1": "y8_protos"}
    if kind.startswith("rfdetr"):
        renames["images"] = "y8_images"
    nodes = []
    for node in old.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
        nodes.append(node)
    g = _Prefixed("conv_")
    pre: list[onnx.NodeProto] = []
    box, cls, coef = g.ops(
        "Split", ["y8_output0", g.const(np.array([4, nc, nm], dtype=np.int64))], 3, axis=1
    )  # [1,4,N] [1,nc,N] [1,nm,N]
    out_meta: dict[str, str | None] = {p.key: p.value for p in model.metadata_props}
    image_input = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])
    if kind == "yolov5":
        objectness = g.op("Sqrt", g.op("ReduceMax", cls, axes=[1], keepdims=1))
        values = g.op("Concat", box, objectness, cls, coef, axis=1)
        g.op("Transpose", values, perm=[0, 2, 1], output="output0")
        g.op("Identity", "y8_protos", output="output1")
        outputs = [
            helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, anchors, 5 + nc + nm]),
            helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, nm, proto_h, proto_w]),
        ]
        out_meta = {"stride": out_meta.get("stride", "32"), "names": out_meta.get("names")}
    elif kind == "end2end":
        k = min(top_k, anchors)
        cx, cy, bw, bh = g.ops("Split", [box, g.const(np.array([1, 1, 1, 1], dtype=np.int64))], 4, axis=1)
        half_w, half_h = g.op("Mul", bw, g.const(_f(0.5))), g.op("Mul", bh, g.const(_f(0.5)))
        xyxy = [g.op("Sub", cx, half_w), g.op("Sub", cy, half_h), g.op("Add", cx, half_w), g.op("Add", cy, half_h)]
        score = g.op("ReduceMax", cls, axes=[1], keepdims=1)  # [1, 1, N]
        label = g.op("Cast", g.op("ArgMax", cls, axis=1, keepdims=1), to=TensorProto.FLOAT)
        values = g.op("Concat", *xyxy, score, label, coef, axis=1)  # [1, 6+nm, N]
        flat_score = g.op("Reshape", score, g.const(np.array([1, anchors], dtype=np.int64)))
        _, best = g.ops("TopK", [flat_score, g.const(np.array([k], dtype=np.int64))], 2, axis=1)
        picked = g.op("Gather", values, g.op("Reshape", best, g.const(np.array([k], dtype=np.int64))), axis=2)
        g.op("Transpose", picked, perm=[0, 2, 1], output="output0")
        g.op("Identity", "y8_protos", output="output1")
        outputs = [
            helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, k, 6 + nm]),
            helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, nm, proto_h, proto_w]),
        ]
        out_meta["end2end"] = "True"
    else:
        std = g.const(np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1))
        mean = g.const(np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1))
        pre.append(helper.make_node("Mul", ["input", std], ["conv_unscaled"]))
        pre.append(helper.make_node("Add", ["conv_unscaled", mean], ["y8_images"]))
        image_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])
        size = np.array([width, height, width, height], dtype=np.float32).reshape(1, 4, 1)
        g.op("Transpose", g.op("Div", box, g.const(size)), perm=[0, 2, 1], output="dets")
        prob = g.op("Clip", cls, g.const(_f(1e-6)), g.const(_f(1 - 1e-6)))
        logit = g.op("Log", g.op("Div", prob, g.op("Sub", g.const(_f(1.0)), prob)))
        no_object = g.const(np.full((1, 1, anchors), -12.0, dtype=np.float32))
        g.op("Transpose", g.op("Concat", logit, no_object, axis=1), perm=[0, 2, 1], output="labels")
        outputs = [
            helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, anchors, 4]),
            helper.make_tensor_value_info("labels", TensorProto.FLOAT, [1, anchors, nc + 1]),
        ]
        if kind == "rfdetr":
            coef_t = g.op("Transpose", coef, perm=[0, 2, 1])  # [1, N, nm]
            protos_flat = g.op("Reshape", "y8_protos", g.const(np.array([1, nm, proto_h * proto_w], dtype=np.int64)))
            logits = g.op("MatMul", coef_t, protos_flat)
            shape = g.const(np.array([1, anchors, proto_h, proto_w], dtype=np.int64))
            g.op("Reshape", logits, shape, output="masks")
            outputs.append(helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, anchors, proto_h, proto_w]))
        out_meta = {}
    for key, value in (metadata or {}).items():
        out_meta[key] = value
    graph = helper.make_graph(
        pre + nodes + g.nodes,
        f"{kind}_fixture",
        [image_input],
        outputs,
        initializer=list(old.initializer) + g.initializers,
    )
    return _save(graph, dst, {k: v for k, v in out_meta.items() if v is not None})


def write_package(
    directory: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    *,
    model_type: str,
    class_names: Sequence[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    preprocessing_as_string: bool = True,
    class_map: Mapping[str, str] | None = None,
    weights_name: str = "weights.onnx",
    task: str = "instance-segmentation",
) -> Path:
    """A Roboflow package directory as Roboflow's server caches one (see ``agent.package``)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / weights_name).write_bytes(Path(weights).read_bytes())
    environment: dict[str, Any] = {}
    if preprocessing is not None:
        environment["PREPROCESSING"] = json.dumps(preprocessing) if preprocessing_as_string else dict(preprocessing)
    if class_map is not None:
        environment["CLASS_MAP"] = dict(class_map)
    (out / "environment.json").write_text(json.dumps(environment))
    if class_names is not None:
        (out / "class_names.txt").write_text("".join(f"{n}\n" for n in class_names))
    (out / "model_type.json").write_text(json.dumps({"project_task_type": task, "model_type": model_type}))
    return out
