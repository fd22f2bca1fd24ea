"""Pack a split head's per-level 1x1 output convolutions into one anchor-major matrix product per level
(an offline rewrite of a graph :mod:`agent.head_cut` just cut; needs ``onnx``).

In the demo architecture (training/net.py) every level ends in three 1x1 convolutions of one trunk output
(box distances through a Softplus, class logits, mask coefficients), each reshaped to ``[1, C, h*w]`` and
concatenated over the levels. In an int8 file ONNX Runtime runs the trunk in NHWC: each of the nine float
convolutions then costs a transpose back to NCHW and its own dequantization of the same tensor, and the
Softplus runs on every anchor. :func:`pack_head` replaces them, per level, by ``Transpose(NHWC) -> MatMul ->
Add -> Reshape [1, h*w, C]`` of the three weight matrices side by side, and the three outputs by one
``[1, N, 4 + nc + nm]`` Concat (columns: box, class logits, coefficients); the Softplus moves to the
decoder (box ``"softplus"``: on the candidates only). ONNX Runtime cancels the transpose against its own
layout, and one dequantization and one float GEMM per level are left.

Only that exact shape is packed: three outputs, each a Concat over the levels of a Reshape of a 1x1
convolution (boxes optionally through a Softplus), with each level's three convolutions reading one
tensor. Anything else (an Ultralytics export's separate box and class branches) is left as it is:
:func:`pack_head` returns ``None`` and changes nothing. The caller prunes the nodes left unused and checks
the result numerically against the original graph (:func:`agent.head_cut.cut_head`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.decoders_split import SplitHead

__all__ = ["PACKED_NAME", "pack_head"]

PACKED_NAME = "head"
"""The packed output's name (``[1, N, 4*reg_max + nc + nm]``)."""


@dataclass(frozen=True)
class _Level:
    source: str  # the tensor the level's 1x1 convolution reads, [1, C, h, w]
    weight_oc: NDArray[np.float32]
    bias_o: NDArray[np.float32]
    softplus: bool


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _conv_1x1(node: Any, const: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]] | None:
    """``(weight [O, C], bias [O])`` of a plain 1x1 convolution with constant weights, else ``None``."""
    if node is None or node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in const:
        return None
    weight = const[node.input[1]]
    plain = (
        weight.ndim == 4
        and weight.shape[2:] == (1, 1)
        and _attr(node, "group", 1) == 1
        and all(s == 1 for s in _attr(node, "strides", [1, 1]))
        and all(d == 1 for d in _attr(node, "dilations", [1, 1]))
        and not any(_attr(node, "pads", [0, 0, 0, 0]))
        and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID")
    )
    if not plain:
        return None
    bias_name = node.input[2] if len(node.input) > 2 else ""
    if bias_name and bias_name not in const:
        return None
    bias = const[bias_name] if bias_name else np.zeros(weight.shape[0], np.float32)
    return weight[:, :, 0, 0].astype(np.float32), bias.astype(np.float32)


def _levels(
    producer: dict[str, Any], output: str, levels: int, const: dict[str, NDArray[Any]], box: bool
) -> list[_Level] | None:
    concat = producer.get(output)
    if concat is None or concat.op_type != "Concat" or _attr(concat, "axis", 0) not in (2, -1):
        return None
    if len(concat.input) != levels:
        return None
    found = []
    for tensor in concat.input:
        reshape = producer.get(tensor)
        if reshape is None or reshape.op_type != "Reshape":
            return None
        node = producer.get(reshape.input[0])
        softplus = bool(box and node is not None and node.op_type == "Softplus")
        if softplus and node is not None:
            node = producer.get(node.input[0])
        conv = _conv_1x1(node, const)
        if node is None or conv is None:
            return None
        found.append(_Level(str(node.input[0]), conv[0], conv[1], softplus))
    return found


def _plan(graph: Any, head: SplitHead) -> list[list[_Level]] | None:
    """Per level, the box, class and coefficient convolutions, when the graph is exactly packable."""
    from onnx import numpy_helper

    const = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    levels = len(head.grids)
    parts = [_levels(producer, name, levels, const, box=i == 0) for i, name in enumerate(head.outputs[:3])]
    if any(p is None for p in parts):
        return None
    boxes, scores, coeffs = parts
    assert boxes is not None and scores is not None and coeffs is not None
    if len({lv.softplus for lv in boxes}) != 1 or (boxes[0].softplus and head.box != "ltrb"):
        return None
    per_level = [list(trio) for trio in zip(boxes, scores, coeffs, strict=True)]
    if any(len({lv.source for lv in trio}) != 1 for trio in per_level):
        return None  # separate branches (Ultralytics): nothing shared to pack
    return per_level


def pack_head(graph: Any, head: SplitHead) -> SplitHead | None:
    """Rewrite the cut ``GraphProto`` in place (module doc) and return its packed :class:`SplitHead`, or
    ``None`` (graph unchanged) when it is not exactly the packable shape or already packed."""
    from onnx import TensorProto, helper, numpy_helper

    if head.packed:
        return None
    taken = {t for node in graph.node for t in [*node.input, *node.output]} | {i.name for i in graph.initializer}
    if PACKED_NAME in taken:
        return None
    per_level = _plan(graph, head)
    if per_level is None:
        return None
    level_outputs = []
    for i, trio in enumerate(per_level):
        weight = np.concatenate([lv.weight_oc for lv in trio]).T.copy()  # [C, O]
        bias = np.concatenate([lv.bias_o for lv in trio])
        names = {k: f"/seg_agent_pack/level{i}/{k}" for k in ("nhwc", "mm", "y", "w", "b", "shape", "out")}
        graph.initializer.extend(
            [
                numpy_helper.from_array(weight, names["w"]),
                numpy_helper.from_array(bias, names["b"]),
                numpy_helper.from_array(np.array([1, -1, weight.shape[1]], np.int64), names["shape"]),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Transpose", [trio[0].source], [names["nhwc"]], perm=[0, 2, 3, 1]),
                helper.make_node("MatMul", [names["nhwc"], names["w"]], [names["mm"]]),
                helper.make_node("Add", [names["mm"], names["b"]], [names["y"]]),
                helper.make_node("Reshape", [names["y"], names["shape"]], [names["out"]]),
            ]
        )
        for k, node in enumerate(graph.node[-4:]):
            node.name = f"/seg_agent_pack/level{i}/{node.op_type}_{k}"
        level_outputs.append(names["out"])
    graph.node.append(helper.make_node("Concat", level_outputs, [PACKED_NAME], axis=1, name="/seg_agent_pack/Concat"))
    columns = sum(lv.weight_oc.shape[0] for lv in per_level[0])
    protos = next(o for o in graph.output if o.name == head.outputs[3])
    kept = type(protos)()
    kept.CopyFrom(protos)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PACKED_NAME, TensorProto.FLOAT, [1, head.anchors, columns]))
    graph.output.append(kept)
    box = "softplus" if per_level[0][0].softplus else head.box
    return replace(head, box=box, outputs=(PACKED_NAME, head.outputs[3]), packed=True)
