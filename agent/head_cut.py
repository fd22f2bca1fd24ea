"""Take the box/class decode out of a YOLOv8-seg ONNX graph (an offline rewrite; needs ``onnx``).

The decode tail of an export costs the same in fp32 and int8 and stays float in an int8 file: in an
Ultralytics YOLOv8/YOLO11-seg export the ``/dfl/`` Reshape-Transpose-Softmax-Conv-Reshape over every
anchor, dist2bbox's Slice/Sub/Add/Div/Mul with the anchor and stride constants, the class Sigmoid and the
output Concat; in the demo architecture (training/net.py) the stride Mul, the anchor Sub/Add, the xywh
Slices and the Sigmoid, Transposes and Concat. :func:`cut_head` finds that tail exactly, removes it, and
makes the graph's outputs the raw per-anchor tensors it read (box distribution logits or distances, class
logits, mask coefficients; prototypes unchanged), recording in the metadata what the decoder
(:mod:`agent.decoders_split`) needs. The decode then runs in NumPy on the few candidates only.

Anything but the exact pattern is refused (:class:`HeadCutError`, saying what was found). The result is
then checked numerically: the original graph's ``output0`` on two input tensors against
:func:`agent.decoders_split.boxes_xywh` and the sigmoid of the cut graph's outputs, for every anchor.

Used by ``seg-agent optimize`` (:mod:`agent.optimize`) and ``seg-agent quantize``; never by the daemon.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.decoders_split import HEAD_KEY, SplitHead, boxes_xywh, split_outputs
from agent.head_pack import pack_head
from agent.masks import sigmoid

__all__ = ["HeadCut", "HeadCutError", "cut_file", "cut_head", "describe", "find_head"]

OUTPUT_NAMES = ("boxes", "scores", "coeffs")
BOX_TOLERANCE_PX = 1e-2
"""Largest box difference (input pixels) the numerical check accepts; float rounding is ~1e-4."""
SCORE_TOLERANCE = 1e-5
_DECODE_OPS = frozenset({"Concat", "Div", "Add", "Sub", "Slice", "Reshape", "Mul", "Transpose", "Softmax", "Conv"})


class HeadCutError(Exception):
    """The graph is not one whose decode this module knows exactly; the message says what was found."""


@dataclass(frozen=True)
class HeadCut:
    """What :func:`cut_head` did: the split head, the nodes removed, the numerical check's largest errors."""

    head: SplitHead
    architecture: str
    removed_nodes: int
    box_error_px: float
    score_error: float


@dataclass(frozen=True)
class _Found:
    architecture: str
    box: str  # "dfl" or "ltrb"
    reg_max: int
    tensors: tuple[str, str, str]  # boxes, scores, coeffs
    stride_per_anchor: NDArray[np.float32]


class _Graph:
    """Producers and constants of an ONNX GraphProto."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.const: dict[str, NDArray[Any]] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.const[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def node(self, tensor: str, op: str, what: str) -> Any:
        node = self.producer.get(tensor)
        if node is None or node.op_type != op:
            found = "a graph input or constant" if node is None else f"{node.op_type} {node.name!r}"
            raise HeadCutError(f"{what}: expected {op}, found {found} producing {tensor!r}")
        return node

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def transpose(self, tensor: str, perm: list[int], what: str) -> str:
        node = self.node(tensor, "Transpose", what)
        if list(self.attr(node, "perm", [])) != perm:
            raise HeadCutError(f"{what}: Transpose {node.name!r} has perm {list(self.attr(node, 'perm', []))}")
        return str(node.input[0])

    def split_const(self, node: Any, what: str) -> tuple[NDArray[Any], str]:
        """``(constant, other input)`` of a binary node with exactly one constant input."""
        consts = [i for i in node.input if i in self.const]
        others = [i for i in node.input if i not in self.const]
        if len(consts) != 1 or len(others) != 1:
            raise HeadCutError(f"{what}: {node.op_type} {node.name!r} needs one constant and one tensor input")
        return self.const[consts[0]], others[0]

    def walk_back(self, starts: Iterable[str], stop: Any, what: str, limit: int = 40) -> set[str]:
        """Names of the decode nodes from ``starts`` back to the tensors ``stop(tensor)`` accepts; every
        node on the way must be a decode op with constant side inputs (else :class:`HeadCutError`)."""
        seen: set[str] = set()
        stack = list(starts)
        while stack:
            tensor = stack.pop()
            if tensor in self.const or stop(tensor):
                continue
            node = self.producer.get(tensor)
            if node is None or node.op_type not in _DECODE_OPS:
                found = "a graph input" if node is None else f"{node.op_type} {node.name!r}"
                raise HeadCutError(f"{what}: {found} where only the box decode's ops are expected")
            if node.name in seen:
                continue
            seen.add(node.name)
            if len(seen) > limit:
                raise HeadCutError(f"{what}: more than {limit} nodes: not the box decode")
            stack.extend(i for i in node.input if i)
        return seen


def _dfl_input(g: _Graph, softmax: Any) -> tuple[str, int]:
    """The ``[1, 4*reg_max, N]`` tensor the ``/dfl/`` block reads, and ``reg_max``, checked exactly."""
    if g.attr(softmax, "axis", -1) != 1:
        raise HeadCutError(f"DFL: Softmax {softmax.name!r} is not over axis 1")
    reshape = g.node(g.transpose(str(softmax.input[0]), [0, 2, 1, 3], "DFL"), "Reshape", "DFL")
    shape = g.const.get(str(reshape.input[1]))
    if shape is None or shape.size != 4 or int(shape[1]) != 4 or int(shape[2]) < 2:
        raise HeadCutError(f"DFL: Reshape {reshape.name!r} is not to [1, 4, reg_max, N]")
    reg_max = int(shape[2])
    convs = [n for n in g.graph.node if n.op_type == "Conv" and softmax.output[0] in n.input]
    if len(convs) != 1:
        raise HeadCutError(f"DFL: {len(convs)} convolutions read the Softmax")
    weight = g.const.get(str(convs[0].input[1]))
    bias = g.const.get(str(convs[0].input[2])) if len(convs[0].input) > 2 and convs[0].input[2] else None
    expected = np.arange(reg_max, dtype=np.float32).reshape(1, reg_max, 1, 1)
    if weight is None or weight.shape != expected.shape or not np.array_equal(weight, expected):
        raise HeadCutError(f"DFL: Conv {convs[0].name!r} is not the fixed expectation over 0..{reg_max - 1}")
    if bias is not None and np.any(bias != 0):
        raise HeadCutError(f"DFL: Conv {convs[0].name!r} has a bias")
    return str(reshape.input[0]), reg_max


def _ultralytics(g: _Graph, det: str) -> _Found:
    """Ultralytics ``Segment``: ``Concat(dbox * strides, sigmoid(cls), mc)`` on axis 1."""
    final = g.node(det, "Concat", "Ultralytics head")
    if len(final.input) != 3 or g.attr(final, "axis") not in (1, -2):
        raise HeadCutError(f"Ultralytics head: {final.name!r} is not a 3-input Concat on axis 1")
    box_in, cls_in, coeffs = (str(i) for i in final.input)
    scores = str(g.node(cls_in, "Sigmoid", "class scores").input[0])
    strides, dbox = g.split_const(g.node(box_in, "Mul", "box x strides"), "box x strides")
    softmaxes: list[Any] = []

    def at_softmax(tensor: str) -> bool:
        node = g.producer.get(tensor)
        if node is not None and node.op_type == "Softmax":
            softmaxes.append(node)
            return True
        return False

    g.walk_back([dbox], at_softmax, "dist2bbox")
    if len({s.name for s in softmaxes}) != 1:
        raise HeadCutError(f"dist2bbox: {len({s.name for s in softmaxes})} Softmax nodes, expected the DFL's one")
    boxes, reg_max = _dfl_input(g, softmaxes[0])
    return _Found("ultralytics-yolov8-seg", "dfl", reg_max, (boxes, scores, coeffs), strides.ravel())


def _demo(g: _Graph, det: str) -> _Found:
    """training/net.py's ExportWrapper: ``Concat(cxcy, wh, sigmoid(logits)^T, coeffs^T)^T``."""
    final = g.node(g.transpose(det, [0, 2, 1], "demo head"), "Concat", "demo head")
    if len(final.input) != 4 or g.attr(final, "axis") not in (2, -1):
        raise HeadCutError(f"demo head: {final.name!r} is not a 4-input Concat on the last axis")
    cxcy, wh, sig, coeffs_t = (str(i) for i in final.input)
    scores = g.transpose(str(g.node(sig, "Sigmoid", "class scores").input[0]), [0, 2, 1], "class scores")
    coeffs = g.transpose(coeffs_t, [0, 2, 1], "mask coefficients")
    muls: list[Any] = []

    def at_stride_mul(tensor: str) -> bool:
        node = g.producer.get(tensor)
        if node is not None and node.op_type == "Mul" and sum(i in g.const for i in node.input) == 1:
            muls.append(node)
            return True
        return False

    g.walk_back([cxcy, wh], at_stride_mul, "box decode")
    if len({m.name for m in muls}) != 1:
        raise HeadCutError(f"box decode: {len({m.name for m in muls})} stride multiplications, expected one")
    strides, dist_t = g.split_const(muls[0], "distances x strides")
    boxes = g.transpose(dist_t, [0, 2, 1], "box distances")
    return _Found("seg-agent-demo", "ltrb", 1, (boxes, scores, coeffs), strides.ravel())


def _grids(
    stride_per_anchor: NDArray[Any], input_hw: tuple[int, int]
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Strides and (h, w) grids of the anchors' stride constant (runs of one stride, cells ceil(H/s) x ceil(W/s))."""
    values = np.asarray(stride_per_anchor, dtype=np.float64)
    if values.size == 0:
        raise HeadCutError("the stride constant is empty")
    cuts = np.flatnonzero(np.diff(values)) + 1
    strides: list[int] = []
    grids: list[tuple[int, int]] = []
    for run in np.split(values, cuts):
        s = float(run[0])
        if s != int(s) or s < 1 or int(s) in strides:
            raise HeadCutError(f"the stride constant has runs {[float(r[0]) for r in np.split(values, cuts)]}")
        h, w = math.ceil(input_hw[0] / s), math.ceil(input_hw[1] / s)
        if h * w != run.size:
            raise HeadCutError(f"stride {s:g}: {run.size} anchors, but a {input_hw} input has {h}x{w} cells")
        strides.append(int(s))
        grids.append((h, w))
    return tuple(strides), tuple(grids)


def _input_dims(graph: Any) -> list[int]:
    return [int(d.dim_value) for d in graph.input[0].type.tensor_type.shape.dim]


def find_head(model: Any) -> tuple[SplitHead, _Found]:
    """The split head an ONNX ``ModelProto`` would get, and what was matched; :class:`HeadCutError` if none."""
    graph = model.graph
    if any(p.key == HEAD_KEY for p in model.metadata_props):
        raise HeadCutError("the decode is already out of this graph (metadata seg_agent_head)")
    if len(graph.input) != 1 or len(graph.output) != 2:
        raise HeadCutError(f"{len(graph.input)} inputs and {len(graph.output)} outputs; a YOLO-seg has 1 and 2")
    dims = _input_dims(graph)
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise HeadCutError(f"input shape {dims}: the cut needs a fixed input size (export with a fixed imgsz)")
    if graph.input[0].type.tensor_type.elem_type != 1:  # TensorProto.FLOAT
        raise HeadCutError("the input is not float32 (a half-precision export): not cut")
    ranks = {len(o.type.tensor_type.shape.dim): o.name for o in graph.output}
    if sorted(ranks) != [3, 4]:
        raise HeadCutError("outputs are not one 3-D detection output and one 4-D prototype output")
    g = _Graph(graph)
    errors = []
    for matcher in (_ultralytics, _demo):
        try:
            found = matcher(g, ranks[3])
            break
        except HeadCutError as exc:
            errors.append(str(exc))
    else:
        raise HeadCutError("no known decode head: " + "; ".join(errors))
    strides, grids = _grids(found.stride_per_anchor, (dims[2], dims[3]))
    head = SplitHead(found.box, found.reg_max, strides, grids, (*OUTPUT_NAMES, ranks[4]))  # type: ignore[arg-type]
    return head, found


def _rename(graph: Any, renames: dict[str, str]) -> None:
    taken = {t for node in graph.node for t in [*node.input, *node.output]} | {i.name for i in graph.initializer}
    clash = [new for old, new in renames.items() if new in taken and new != old]
    if clash:
        raise HeadCutError(f"the graph already has tensors named {clash}")
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)


def _prune(graph: Any) -> int:
    """Drop the nodes, initializers and value_info no graph output needs; the number of nodes dropped."""
    producer = {out: node for node in graph.node for out in node.output}
    needed: set[str] = set()
    live: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:
        tensor = stack.pop()
        if tensor in needed:
            continue
        needed.add(tensor)
        node = producer.get(tensor)
        if node is not None and id(node) not in live:
            live.add(id(node))
            stack.extend(i for i in node.input if i)
    kept = [n for n in graph.node if id(n) in live]
    removed = len(graph.node) - len(kept)
    for field, keep in (
        (graph.node, kept),
        (graph.initializer, [i for i in graph.initializer if i.name in needed]),
        (graph.value_info, [v for v in graph.value_info if v.name in needed]),
    ):
        copies = [type(x)() for x in keep]
        for copy, x in zip(copies, keep, strict=True):
            copy.CopyFrom(x)
        del field[:]
        field.extend(copies)
    return removed


def _run(model: Any, feeds: list[NDArray[np.float32]], names: list[str]) -> list[list[NDArray[np.float32]]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return [[np.asarray(o, dtype=np.float32) for o in session.run(names, {input_name: x})] for x in feeds]


def _check(original: Any, cut: Any, head: SplitHead, found: _Found, det: str) -> tuple[float, float]:
    """The largest box (px) and score difference between the original's ``output0`` and the cut graph's
    outputs decoded here, over every anchor of two inputs (grey, and uniform noise)."""
    dims = _input_dims(original.graph)
    feeds = [np.full(dims, 0.5, np.float32), np.random.default_rng(0).random(dims, dtype=np.float32)]
    before = _run(original, feeds, [det])
    after = _run(cut, feeds, list(head.outputs))
    box_err = score_err = 0.0
    rows = np.arange(head.anchors)
    for (output0,), outputs in zip(before, after, strict=True):
        pred = output0[0]
        try:
            boxes, scores, coeffs, _ = split_outputs(head, outputs)
        except ValueError as exc:
            raise HeadCutError(f"the cut outputs do not fit the head: {exc}") from None
        nc = scores.shape[0]
        if pred.shape != (4 + nc + coeffs.shape[0], head.anchors):
            raise HeadCutError(f"output0 {pred.shape} does not fit the cut outputs")
        box_err = max(box_err, float(np.abs(boxes_xywh(head, boxes, rows).T - pred[:4]).max()))
        score_err = max(score_err, float(np.abs(sigmoid(scores) - pred[4 : 4 + nc]).max()))
        score_err = max(score_err, float(np.abs(coeffs - pred[4 + nc :]).max()))
    if not (box_err <= BOX_TOLERANCE_PX and score_err <= SCORE_TOLERANCE):
        raise HeadCutError(
            f"{found.architecture} head found, but the decode does not reproduce output0 (boxes off by "
            f"{box_err:.3g} px, scores by {score_err:.3g}): not cut"
        )
    return box_err, score_err


def cut_head(model: Any, *, pack: bool = True) -> tuple[Any, HeadCut]:
    """A copy of the ONNX ``ModelProto`` without its box/class decode (module doc), and what was done;
    ``pack``: the output convolutions packed where they share their input (:mod:`agent.head_pack`).
    :class:`HeadCutError` when the head is not exactly a known one or the check fails."""
    from onnx import TensorProto, helper

    head, found = find_head(model)
    det = next(o.name for o in model.graph.output if len(o.type.tensor_type.shape.dim) == 3)
    protos = next(o for o in model.graph.output if len(o.type.tensor_type.shape.dim) == 4)
    cut = type(model)()
    cut.CopyFrom(model)
    graph = cut.graph
    _rename(graph, dict(zip(found.tensors, OUTPUT_NAMES, strict=True)))
    kept_protos = type(protos)()
    kept_protos.CopyFrom(protos)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in OUTPUT_NAMES])
    graph.output.append(kept_protos)
    removed = _prune(graph)
    packed = pack_head(graph, head) if pack else None  # sets its output's shape
    if packed is not None:
        head = packed
        _prune(graph)  # the replaced convolutions and their shape arithmetic
    else:
        shapes = [o.shape for o in _run(cut, [np.zeros(_input_dims(graph), np.float32)], list(OUTPUT_NAMES))[0]]
        for i, shape in enumerate(shapes):
            graph.output[i].CopyFrom(helper.make_tensor_value_info(OUTPUT_NAMES[i], TensorProto.FLOAT, list(shape)))
    entry = cut.metadata_props.add()
    entry.key, entry.value = HEAD_KEY, head.to_json()
    box_err, score_err = _check(model, cut, head, found, det)
    return cut, HeadCut(head, found.architecture, removed, box_err, score_err)


def cut_file(source: str | Path, out: str | Path) -> HeadCut:
    """:func:`cut_head` of the ONNX file ``source``, written to ``out``."""
    import onnx

    model = onnx.load(str(source))
    cut, done = cut_head(model)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(cut, str(out))
    return done


def describe(done: HeadCut) -> str:
    """One line for the commands: what was cut and how exactly the cut graph reproduces the original."""
    head = done.head
    box = {"dfl": f"DFL logits [1, {head.box_rows}, {head.anchors}]", "ltrb": "distances [1, 4, N]"}.get(
        head.box, "distances before the Softplus"
    )
    layout = "packed anchor-major [1, N, box + classes + coefficients], " if head.packed else ""
    return (
        f"{done.architecture}: {done.removed_nodes} decode nodes removed; outputs {', '.join(head.outputs)} "
        f"({layout}box {box}, class logits); strides {list(head.strides)}; checked on every anchor of 2 inputs: boxes "
        f"within {done.box_error_px:.1e} px, scores within {done.score_error:.1e}"
    )
