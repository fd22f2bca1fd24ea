"""A uint8 image input for the int8 files ``seg-agent quantize`` writes: the frame's bytes go straight in.

A QDQ int8 model's first node quantizes the float input: ``q = round(x / scale) + zero_point``. The agent's
float input is a uint8 pixel times 1/255, so when that QuantizeLinear's scale is exactly ``float32(1/255)``
and its zero point 0, ``q`` *is* the pixel: the agent's letterbox then writes the resized frame's bytes into a
uint8 tensor (no float conversion, a quarter of the memory traffic) and the graph starts at the
DequantizeLinear that followed the QuantizeLinear. The outputs are bit-identical to the float-input int8
model's (``tests/test_quantize_input.py``).

:func:`input_overrides` makes the calibration give the input that scale and zero point: the input is in 0..1
by construction (unless the format normalises it, as RF-DETR's ImageNet input: nothing is forced then), so
its full range is exactly 0..1, which percentile calibration would otherwise clip a little. :func:`to_uint8_input`
rewrites a quantized ``ModelProto`` and records it in its metadata (:data:`METADATA_KEY`); :func:`to_float_input`
undoes it (the same outputs for a float input: an A/B of the two, or a tool that feeds float). Only for uint8
activations (x86's default): with int8 activations (ARM) the zero point of 0..1 is -128 and the bytes would
need an offset, so those files keep their float input.

``onnx`` is needed here only (the quantize extra); this module imports it from the ``ModelProto`` it is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["INPUT_SCALE", "METADATA_KEY", "METADATA_VALUE", "input_overrides", "to_float_input", "to_uint8_input"]

INPUT_SCALE = np.float32(1.0 / 255.0)
"""The scale of a uint8 pixel in the agent's float input (:func:`agent.preprocess.letterbox`)."""
METADATA_KEY = "quantization_input"
METADATA_VALUE = "uint8 NCHW RGB 0..255 (the float input's quantization: scale 1/255, zero point 0)"

_UINT8 = 2  # onnx.TensorProto.UINT8
_FLOAT = 1  # onnx.TensorProto.FLOAT


def input_overrides(input_name: str, activations: str, *, unit_range: bool) -> dict[str, Any]:
    """``quantize_static`` extra options that quantize ``input_name`` with scale 1/255 and zero point 0:
    for uint8 activations and an input in 0..1 (``unit_range``: no mean/std normalisation, which RF-DETR's
    ImageNet input has); ``{}`` otherwise, the calibrated range as before."""
    if activations != "uint8" or not unit_range:
        return {}
    override = {"scale": np.array(INPUT_SCALE, dtype=np.float32), "zero_point": np.array(0, dtype=np.uint8)}
    return {"TensorQuantOverrides": {input_name: [override]}}


def _initializer(graph: Any, name: str) -> Any | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _is_pixel_quantization(graph: Any, node: Any) -> bool:
    """Whether a QuantizeLinear/DequantizeLinear ``node`` has scale float32(1/255) and uint8 zero point 0."""
    if len(node.input) < 3 or any(a.name == "axis" and a.i != 1 for a in node.attribute):
        return False
    scale, zero = _initializer(graph, node.input[1]), _initializer(graph, node.input[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return False
    return bool(
        scale.dtype == np.float32 and scale.reshape(()) == INPUT_SCALE and zero.dtype == np.uint8 and zero.item() == 0
    )


def _input_quantizer(graph: Any) -> tuple[Any, list[Any]] | None:
    """The input's QuantizeLinear and its DequantizeLinear consumers, when the rewrite is exact."""
    if len(graph.input) != 1 or graph.input[0].type.tensor_type.elem_type != _FLOAT:
        return None
    name = graph.input[0].name
    readers = [n for n in graph.node if name in n.input]
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or readers[0].input[0] != name:
        return None
    quant = readers[0]
    if not _is_pixel_quantization(graph, quant) or quant.output[0] in {o.name for o in graph.output}:
        return None
    dequants = [n for n in graph.node if quant.output[0] in n.input]
    if not dequants or any(n.op_type != "DequantizeLinear" or not _is_pixel_quantization(graph, n) for n in dequants):
        return None
    return quant, dequants


def to_uint8_input(model: Any) -> bool:
    """Rewrite a QDQ ``ModelProto`` in place so its one input is uint8 and feeds the DequantizeLinear nodes
    that read the input's QuantizeLinear, which is removed. Only when exact (the QuantizeLinear's and each
    DequantizeLinear's scale is float32(1/255), zero point uint8 0, the float input read by nothing else);
    returns whether it did. The metadata gets :data:`METADATA_KEY`."""
    graph = model.graph
    found = _input_quantizer(graph)
    if found is None:
        return False
    quant, dequants = found
    name = graph.input[0].name
    for node in dequants:
        node.input[0] = name
    graph.node.remove(quant)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name in quant.input[1:] and i.name not in used]:
        graph.initializer.remove(init)
    graph.input[0].type.tensor_type.elem_type = _UINT8
    for entry in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(entry)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, METADATA_VALUE
    return True


def to_float_input(model: Any) -> bool:
    """Undo :func:`to_uint8_input` in place: a float input quantized by a QuantizeLinear of scale
    float32(1/255), zero point uint8 0, feeding what read the uint8 input. Only for a file with
    :data:`METADATA_KEY` and a uint8 input; returns whether it did."""
    from onnx import helper, numpy_helper

    graph = model.graph
    keys = {p.key for p in model.metadata_props}
    if METADATA_KEY not in keys or len(graph.input) != 1 or graph.input[0].type.tensor_type.elem_type != _UINT8:
        return False
    name = graph.input[0].name
    taken = {t for n in graph.node for t in (*n.input, *n.output)} | {i.name for i in graph.initializer}
    quantized, scale, zero = (f"{name}_pixels{suffix}" for suffix in ("", "_scale", "_zero_point"))
    if taken & {quantized, scale, zero}:
        return False
    for node in graph.node:
        for i, tensor in enumerate(node.input):
            if tensor == name:
                node.input[i] = quantized
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(INPUT_SCALE, dtype=np.float32), scale),
            numpy_helper.from_array(np.array(0, dtype=np.uint8), zero),
        ]
    )
    graph.node.insert(0, helper.make_node("QuantizeLinear", [name, scale, zero], [quantized], name=quantized))
    graph.input[0].type.tensor_type.elem_type = _FLOAT
    for entry in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(entry)
    return True
