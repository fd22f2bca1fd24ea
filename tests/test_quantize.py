"""agent.quantize, agent.quantize_graph, agent.calibration (`seg-agent quantize`): the demo model in int8.

The end-to-end cases quantize models/demo-seg.onnx on a few ``agent.synth`` frames (seconds each), load the
int8 file with ``OnnxModel`` and detect with it; the graph walk, the CPU choice, the gate and the split are
tables on small inputs.
"""

from __future__ import annotations

import contextlib
import io
import platform
import re
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent import synth
from agent.calibration import Sample, load_samples, split_holdout
from agent.decoders_split import HEAD_KEY
from agent.quantize import (
    QuantizeError,
    _cut_head,
    _import_onnx,
    activation_bytes,
    calibration_chunk,
    gate,
    main_quantize,
)
from agent.quantize_check import median_run_ms
from agent.quantize_graph import cpu_flags, float_head_nodes, is_x86, pick_activations

onnx = pytest.importorskip("onnx")
pytest.importorskip("sympy")
pytest.importorskip("pycocotools")
from onnx import TensorProto, helper  # noqa: E402

from tests.onnx_models import build_yolov8_seg  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "demo-seg.onnx"
VIDEO = ROOT / "models" / "sample.avi"


def _quantize(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main_quantize([str(MODEL), "--speed-runs", "2", *args])
    return rc, out.getvalue(), err.getvalue()


def _mask_ap(text: str) -> tuple[float, float]:
    found = re.search(r"mask AP@\[\.5:\.95\]\s+([0-9.]+)\s+([0-9.]+)", text)
    assert found, text
    return float(found.group(1)), float(found.group(2))


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("quantize_synth")
    ann = synth.write_coco_dataset(out, 24, seed=5151)
    return out / "images", ann


@pytest.fixture(scope="module")
def quantized(synth_set: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    images, ann = synth_set
    out = tmp_path_factory.mktemp("quantize_out") / "demo-int8.onnx"
    rc, text, err = _quantize("--images", str(images), "--annotations", str(ann), "--out", str(out))
    return rc, text + err, out


# ------------------------------------------------------------------------------------------ end to end


def test_quantize_writes_an_int8_model_that_loads_and_detects(
    quantized: tuple[int, str, Path], synth_set: tuple[Path, Path]
) -> None:
    from agent.model import OnnxModel

    rc, text, out = quantized
    assert rc == 0, text
    assert out.is_file() and "wrote" in text and "speed" in text and "mask AP@0.5" in text
    assert re.search(r"1-thread CPU time fp32 [0-9.]+ ms, int8 [0-9.]+ ms: [0-9.]+x", text)  # the steady ratio
    assert re.search(r"cpu\s+\S+:", text)  # the flags the activation type was chosen from
    fp32_ap, int8_ap = _mask_ap(text)
    assert fp32_ap - int8_ap <= 0.01  # the gate let it through, so within --max-drop 1 point
    graph = onnx.load(str(out))
    ops = {n.op_type for n in graph.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["names"] == "{0: 'circle', 1: 'rectangle', 2: 'triangle'}" and "int8" in meta["quantization"]

    fp32, int8 = OnnxModel(MODEL), OnnxModel(out)
    assert int8.class_names == fp32.class_names and int8.input_hw == fp32.input_hw
    frame = cv2.imread(str(sorted(synth_set[0].iterdir())[0]))
    a = fp32.detect(frame, confidence=0.4, overlap=0.5)
    b = int8.detect(frame, confidence=0.4, overlap=0.5)
    assert len(a) > 0 and len(b) > 0
    assert abs(len(a) - len(b)) <= 1 and int(a.class_id[0]) == int(b.class_id[0])
    x1 = np.maximum(a.boxes_xyxy[0, :2], b.boxes_xyxy[0, :2])
    x2 = np.minimum(a.boxes_xyxy[0, 2:], b.boxes_xyxy[0, 2:])
    inter = float(np.prod(np.clip(x2 - x1, 0, None)))
    area = [float(np.prod(d.boxes_xyxy[0, 2:] - d.boxes_xyxy[0, :2])) for d in (a, b)]
    assert inter / (sum(area) - inter) > 0.85


def test_the_box_decode_is_cut_before_calibration(quantized: tuple[int, str, Path]) -> None:
    rc, text, out = quantized
    assert rc == 0, text
    assert "head cut     seg-agent-demo" in text
    model = onnx.load(str(out))
    assert HEAD_KEY in {p.key for p in model.metadata_props}  # the agent decodes it as agent.decoders_split says
    assert [o.name for o in model.graph.output] == ["head", "output1"]  # the demo's output convolutions packed
    weights = {i.name for i in model.graph.initializer}
    packed = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and n.name.startswith("/seg_agent_pack/")]
    assert len(packed) == 3 and all(n.input[1] in weights for n in packed)  # float weights: the head stays float
    if platform.machine() in ("x86_64", "AMD64"):  # uint8 activations: the file takes the frame's bytes
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    head = float_head_nodes(model.graph, ("Conv", "MatMul", "Gemm"))
    assert not {n.op_type for n in model.graph.node if n.name in head} & {
        "Sigmoid",
        "Transpose",
    }


def test_keep_head_and_float_input_quantize_the_graph_as_it_is(synth_set: tuple[Path, Path], tmp_path: Path) -> None:
    images, ann = synth_set
    out = tmp_path / "kept.onnx"
    args = ("--images", str(images), "--annotations", str(ann), "--out", str(out), "--keep-head", "--float-input")
    rc, text, err = _quantize(*args)
    assert rc == 0, text + err
    assert "head cut" not in text
    model = onnx.load(str(out))
    assert HEAD_KEY not in {p.key for p in model.metadata_props} and len(model.graph.output) == 2
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # not the frame's bytes
    assert "quantization_input" not in {p.key for p in model.metadata_props}
    _assert_decode_head_in_float(model.graph)


def test_a_head_that_cannot_be_cut_is_kept_and_said(tmp_path: Path) -> None:
    model = build_yolov8_seg(tmp_path / "other.onnx", imgsz=(64, 64))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        source = _cut_head(model, tmp_path / "cut.onnx")
    assert source == model and not (tmp_path / "cut.onnx").exists()  # quantized as it is
    assert "head         kept in the graph (no known decode head" in text.getvalue()


def _assert_decode_head_in_float(graph: Any) -> None:
    head = float_head_nodes(graph, ("Conv", "MatMul", "Gemm"))  # walked back from the outputs of the int8 file
    nodes = [n for n in graph.node if n.name in head]
    ops = {n.op_type for n in nodes}
    assert {"Conv", "Sigmoid", "Concat"} <= ops  # the class scores' sigmoid, the final concat, the last convs
    assert not {op for op in ops if op in ("QuantizeLinear", "DequantizeLinear") or op.startswith("QLinear")}
    initializers = {i.name for i in graph.initializer}
    last_convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(last_convs) >= 2 and all(n.input[1] in initializers for n in last_convs)  # float weights
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 20  # the backbone is int8


def _head_convs(graph: Any) -> list[Any]:
    """The last Conv (or Gemm/MatMul: the demo's packed output convolutions) before each output of a (QDQ)
    graph: walked back from the outputs through float ops and DequantizeLinear nodes."""
    producer = {out: node for node in graph.node for out in node.output}
    found, stack, seen = [], [o.name for o in graph.output], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen or node.op_type in ("Shape", "Size"):
            continue
        seen.add(node.name)
        if node.op_type in ("Conv", "Gemm", "MatMul") and "/dfl/" not in node.name:
            found.append(node)
        else:
            stack.extend(i for i in node.input if i)
    return found


def test_head_convs_int8_quantizes_the_last_convolutions(
    quantized: tuple[int, str, Path], synth_set: tuple[Path, Path], tmp_path: Path
) -> None:
    images, ann = synth_set
    out = tmp_path / "head-int8.onnx"
    rc, text, err = _quantize(
        "--images", str(images), "--annotations", str(ann), "--out", str(out), "--head-convs", "int8"
    )
    assert rc == 0, text + err
    assert "last convolutions in int8" in text
    by_output = {o: n for n in onnx.load(str(out)).graph.node for o in n.output}
    convs = _head_convs(onnx.load(str(out)).graph)
    assert len(convs) >= 2
    for conv in convs:  # input and weights arrive through DequantizeLinear: a QLinearConv once fused
        assert by_output[conv.input[0]].op_type == "DequantizeLinear"
        assert by_output[conv.input[1]].op_type == "DequantizeLinear"
    default = onnx.load(str(quantized[2])).graph
    initializers = {i.name for i in default.initializer}
    assert all(c.input[1] in initializers for c in _head_convs(default))  # the default: float weights


def _with_split_in_the_trunk(path: Path) -> str:
    """The demo model with a Split into two channel halves and a Concat back after the stem's SiLU, as a
    YOLOv8 C2f block splits (the same outputs): a Split between two convolutions. Returns the Split's name."""
    model = onnx.load(str(MODEL))
    graph = model.graph
    stem = next(n for n in graph.node if n.op_type in ("Mul", "Relu"))  # the first convolution's activation
    tensor = stem.output[0]
    for node in graph.node:
        node.input[:] = [f"{tensor}_cat" if i == tensor else i for i in node.input]
    halves = helper.make_tensor("split_halves", TensorProto.INT64, [2], [8, 8])  # the stem has 16 channels
    graph.initializer.append(halves)
    at = list(graph.node).index(stem) + 1
    split = helper.make_node("Split", [tensor, "split_halves"], ["half_a", "half_b"], name="trunk_split", axis=1)
    concat = helper.make_node("Concat", ["half_a", "half_b"], [f"{tensor}_cat"], name="trunk_concat", axis=1)
    graph.node.insert(at, concat)
    graph.node.insert(at, split)
    onnx.save(model, str(path))
    return "trunk_split"


def test_a_split_between_convolutions_runs_in_uint8(synth_set: tuple[Path, Path], tmp_path: Path) -> None:
    from agent.runtime import open_session, session_options

    images, ann = synth_set
    model = tmp_path / "split.onnx"
    name = _with_split_in_the_trunk(model)
    out = tmp_path / "split-int8.onnx"
    for ops, quantized in ((None, True), ("Conv,MatMul,Gemm,Sigmoid,Mul,Add,Concat,Resize,MaxPool,Relu", False)):
        argv = [str(model), "--images", str(images), "--annotations", str(ann), "--out", str(out)]
        argv += ["--speed-runs", "1", "--max-drop", "100", *(["--ops", ops] if ops else [])]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main_quantize(argv) == 0
        options = session_options(1)
        options.optimized_model_filepath = str(tmp_path / "split.opt.onnx")
        open_session(out, options, "cpu", None)
        graph = onnx.load(options.optimized_model_filepath).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        split = next(n for n in graph.node if n.op_type == "Split" and n.input[0].startswith("/net/stem"))
        assert (producer.get(split.input[0]) != "DequantizeLinear") is quantized, (ops, name)


def _with_relu(path: Path) -> int:
    """The demo model with every SiLU (x * sigmoid(x)) replaced by a ReLU, if it has any: a network of Conv +
    ReLU layers. Returns how many ReLUs it has."""
    model = onnx.load(str(MODEL))
    graph = model.graph
    sigmoid_of = {n.output[0]: n for n in graph.node if n.op_type == "Sigmoid"}
    nodes = []
    for node in graph.node:
        pair = [i for i in node.input if i in sigmoid_of] if node.op_type == "Mul" else []
        if pair and sigmoid_of[pair[0]].input[0] in node.input:
            x = sigmoid_of[pair[0]].input[0]
            nodes.append(helper.make_node("Relu", [x], [node.output[0]], name=f"{node.name}_relu"))
        else:
            nodes.append(node)
    used = {i for n in nodes for i in n.input}
    del graph.node[:]
    graph.node.extend(n for n in nodes if not (n.op_type == "Sigmoid" and n.output[0] not in used))
    onnx.save(model, str(path))
    return sum(n.op_type == "Relu" for n in graph.node)


def test_relu_folds_into_the_int8_convolutions(synth_set: tuple[Path, Path], tmp_path: Path) -> None:
    """ReLU is in the default ops: the quantizer drops it into the convolution's output range, so no float
    Relu or DequantizeLinear/QuantizeLinear pair is left around it (with only the arithmetic quantized,
    every Relu stays, wrapped)."""
    images, ann = synth_set
    model = tmp_path / "relu.onnx"
    assert _with_relu(model) == 27
    out = tmp_path / "relu-int8.onnx"
    for ops, relus in ((None, 0), ("Conv,MatMul,Gemm,Sigmoid,Mul,Add,Concat,Resize,MaxPool,Split", 27)):
        argv = [str(model), "--images", str(images), "--annotations", str(ann), "--out", str(out)]
        argv += ["--speed-runs", "1", "--max-drop", "100", *(["--ops", ops] if ops else [])]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main_quantize(argv) == 0
        assert sum(n.op_type == "Relu" for n in onnx.load(str(out)).graph.node) == relus, ops


def test_the_gate_refuses_a_badly_calibrated_model(synth_set: tuple[Path, Path], tmp_path: Path) -> None:
    # Calibrated on flat grey frames, the activation ranges are far too narrow for real frames.
    grey = tmp_path / "grey"
    grey.mkdir()
    for i, level in enumerate((100, 114, 128, 140)):
        cv2.imwrite(str(grey / f"{i}.png"), np.full((240, 320, 3), level, np.uint8))
    images, ann = synth_set
    out = tmp_path / "bad.onnx"
    args = ["--images", str(grey), "--eval-images", str(images), "--annotations", str(ann), "--out", str(out)]
    rc, text, err = _quantize(*args)
    assert rc == 1, text + err
    assert "not written" in err and "--max-drop" in err and not out.exists()
    fp32_ap, int8_ap = _mask_ap(text)
    assert fp32_ap - int8_ap > 0.01
    rc, text, err = _quantize(*args, "--force")
    assert rc == 0 and out.is_file() and "forced" in text


def test_a_video_without_annotations_is_scored_against_fp32(tmp_path: Path) -> None:
    out = tmp_path / "video-int8.onnx"
    rc, text, err = _quantize("--images", str(VIDEO), "--frames", "16", "--max-drop", "100", "--out", str(out))
    assert rc == 0, text + err
    assert "calibrating  on 12 frames" in text and "fp32 detections" in text
    fp32_ap, _ = _mask_ap(text)
    assert fp32_ap > 0.9  # the fp32 model against its own detections: the reference really is them


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "0"], "--frames"),
        (["--holdout", "1"], "--holdout"),
        (["--max-drop", "-1"], "--max-drop"),
        (["--eval-images", "x"], "--annotations"),
        (["--holdout", "0"], "nothing to score"),
    ],
)
def test_usage_errors(args: list[str], message: str, synth_set: tuple[Path, Path], tmp_path: Path) -> None:
    rc, _, err = _quantize("--images", str(synth_set[0]), "--out", str(tmp_path / "x.onnx"), *args)
    assert rc == 2 and message in err and not (tmp_path / "x.onnx").exists()


def test_missing_onnx_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an environment without the package gives
    with pytest.raises(QuantizeError, match=r"needs the onnx package: pip install 'seg-agent\[quantize\]'"):
        _import_onnx()


# ------------------------------------------------------------------------------------------ sources


def test_load_samples_from_a_directory_and_a_video(synth_set: tuple[Path, Path], tmp_path: Path) -> None:
    images = load_samples(synth_set[0], 5)
    assert [s.name for s in images] == sorted(s.name for s in images) and len(images) == 5
    assert all(s.image_bgr.ndim == 3 and s.image_bgr.dtype == np.uint8 for s in images)
    frames = load_samples(VIDEO, 4)
    assert [s.name for s in frames] == ["frame_000000", "frame_000049", "frame_000099", "frame_000149"]
    with pytest.raises(ValueError, match="no readable images"):
        load_samples(tmp_path)
    with pytest.raises(ValueError, match="no such directory"):
        load_samples(tmp_path / "missing")


def _samples(n: int) -> list[Sample]:
    return [Sample(str(i), np.zeros((1, 1, 3), np.uint8)) for i in range(n)]


@pytest.mark.parametrize(
    ("n", "holdout", "calibration", "held"),
    [
        (8, 0.25, ["0", "1", "2", "4", "5", "6"], ["3", "7"]),
        (8, 0.0, [str(i) for i in range(8)], []),
        (5, 0.5, ["0", "2", "4"], ["1", "3"]),
        (0, 0.25, [], []),
        (1, 0.25, ["0"], []),
    ],
)
def test_split_holdout(n: int, holdout: float, calibration: list[str], held: list[str]) -> None:
    cal, out = split_holdout(_samples(n), holdout)
    assert [s.name for s in cal] == calibration and [s.name for s in out] == held


# ------------------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("fp32", "int8", "max_drop", "accepted", "drop"),
    [
        (0.750, 0.745, 1.0, True, 0.5),
        (0.750, 0.740, 1.0, True, 1.0),  # exactly the limit
        (0.750, 0.730, 1.0, False, 2.0),
        (0.700, 0.710, 0.0, True, -1.0),  # better is fine
        (0.0, 0.0, 0.0, True, 0.0),
    ],
)
def test_gate(fp32: float, int8: float, max_drop: float, accepted: bool, drop: float) -> None:
    assert gate(fp32, int8, max_drop) == (accepted, pytest.approx(drop))


@pytest.mark.parametrize(
    ("choice", "flags", "machine", "expected"),
    [
        ("auto", {"avx2", "avx512_vnni"}, "x86_64", ("uint8", False)),
        ("auto", {"avx2", "avx_vnni"}, "x86_64", ("uint8", False)),
        ("auto", {"avx2"}, "x86_64", ("uint8", True)),  # VPMADDUBSW would saturate: 7-bit weights
        ("auto", {"asimd", "asimddp"}, "aarch64", ("int8", False)),  # Pi 5
        ("auto", {"asimd"}, "aarch64", ("int8", False)),  # Pi 4
        ("int8", {"avx2"}, "x86_64", ("int8", False)),
        ("uint8", {"asimd"}, "aarch64", ("uint8", False)),
        ("auto", set(), "riscv64", ("uint8", False)),
    ],
)
def test_pick_activations(choice: str, flags: set[str], machine: str, expected: tuple[str, bool]) -> None:
    assert pick_activations(choice, flags, machine) == expected


def test_pick_activations_refuses_other_types() -> None:
    with pytest.raises(ValueError, match="activations"):
        pick_activations("int4", set(), "x86_64")


def test_cpu_flags(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu AVX2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0b\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert cpu_flags(tmp_path / "x86").isdisjoint({"flags", ":"})


def _graph(nodes: list[Any], outputs: list[str]) -> Any:
    info = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, "g", [x], info)


def _node(op: str, inputs: list[str], output: str, name: str) -> Any:
    return helper.make_node(op, inputs, [output], name=name)


@pytest.mark.parametrize(
    ("nodes", "outputs", "expected"),
    [
        ([], ["x"], set()),  # an output straight from the input: nothing to keep
        ([_node("Conv", ["x", "w"], "a", "c1"), _node("Sigmoid", ["a"], "y", "s")], ["y"], {"c1", "s"}),
        (  # the walk stops at the last convolution of each path
            [
                _node("Conv", ["x", "w"], "a", "c1"),
                _node("Conv", ["a", "w"], "b", "c2"),
                _node("Conv", ["a", "w"], "c", "c3"),
                _node("Concat", ["b", "c"], "y", "cat"),
            ],
            ["y"],
            {"c2", "c3", "cat"},
        ),
        (  # two outputs; a Shape's input is not followed into the network
            [
                _node("Conv", ["x", "w"], "a", "c1"),
                _node("Conv", ["a", "w"], "p", "proto"),
                _node("Shape", ["a"], "shp", "shape"),
                _node("Reshape", ["p", "shp"], "y", "reshape"),
                _node("MatMul", ["a", "w"], "z", "mm"),
            ],
            ["y", "z"],
            {"proto", "shape", "reshape", "mm"},
        ),
        (  # /dfl/ is decode: kept and walked through to the box convolution behind it
            [
                _node("Conv", ["x", "w"], "a", "/model.22/cv2/Conv"),
                _node("Softmax", ["a"], "s", "/model.22/dfl/Softmax"),
                _node("Conv", ["s", "w"], "d", "/model.22/dfl/conv/Conv"),
                _node("Mul", ["d", "k"], "y", "/model.22/Mul"),
            ],
            ["y"],
            {"/model.22/cv2/Conv", "/model.22/dfl/Softmax", "/model.22/dfl/conv/Conv", "/model.22/Mul"},
        ),
    ],
)
def test_float_head_nodes(nodes: list[Any], outputs: list[str], expected: set[str]) -> None:
    assert float_head_nodes(_graph(nodes, outputs), ("Conv", "MatMul", "Gemm")) == expected


@pytest.mark.parametrize(
    ("nodes", "outputs", "expected"),
    [
        ([], ["x"], set()),
        ([_node("Conv", ["x", "w"], "a", "c1"), _node("Sigmoid", ["a"], "y", "s")], ["y"], {"s"}),
        (  # the walk still stops at the last convolutions, which are now left to quantize
            [
                _node("Conv", ["x", "w"], "a", "c1"),
                _node("Conv", ["a", "w"], "b", "c2"),
                _node("Conv", ["a", "w"], "c", "c3"),
                _node("Concat", ["b", "c"], "y", "cat"),
            ],
            ["y"],
            {"cat"},
        ),
        (  # only an output straight from a convolution: nothing stays in float
            [_node("Conv", ["x", "w"], "a", "c1"), _node("MatMul", ["a", "w"], "z", "mm")],
            ["z"],
            set(),
        ),
        (  # /dfl/ stays float, its own Conv included; the box convolution behind it does not
            [
                _node("Conv", ["x", "w"], "a", "/model.22/cv2/Conv"),
                _node("Softmax", ["a"], "s", "/model.22/dfl/Softmax"),
                _node("Conv", ["s", "w"], "d", "/model.22/dfl/conv/Conv"),
                _node("Mul", ["d", "k"], "y", "/model.22/Mul"),
            ],
            ["y"],
            {"/model.22/dfl/Softmax", "/model.22/dfl/conv/Conv", "/model.22/Mul"},
        ),
    ],
)
def test_float_head_nodes_with_the_last_convolutions_quantized(
    nodes: list[Any], outputs: list[str], expected: set[str]
) -> None:
    graph = _graph(nodes, outputs)
    assert float_head_nodes(graph, ("Conv", "MatMul", "Gemm"), last_compute=False) == expected


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_median_run_ms_times_each_model_on_either_clock(clock: str) -> None:
    from agent.calibration import model_tensor
    from agent.model import OnnxModel

    models = [OnnxModel(MODEL, threads=1), OnnxModel(MODEL, threads=1)]
    tensor = model_tensor(models[0], np.zeros((48, 64, 3), np.uint8))
    times = median_run_ms(models, tensor, 2, clock=clock)
    assert len(times) == 2 and all(t > 0 for t in times)  # a 416 model's run is never 0 ms of CPU or wall


@pytest.mark.parametrize("clock", ["", "CPU", "process"])
def test_median_run_ms_rejects_an_unknown_clock(clock: str) -> None:
    with pytest.raises(ValueError, match="clock"):
        median_run_ms([], np.zeros((1, 3, 8, 8), np.float32), 1, clock=clock)


def test_an_int8_file_runs_without_the_nchwc_layout_pass(quantized: tuple[int, str, Path], tmp_path: Path) -> None:
    from agent.runtime import open_session, session_options

    rc, text, out = quantized
    assert rc == 0, text
    layouts = {}
    for name, path in (("fp32", MODEL), ("int8", out)):
        options = session_options(1)
        options.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
        open_session(path, options, "cpu", None)
        layouts[name] = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert "QLinearConv" in layouts["int8"] and not {"ReorderInput", "ReorderOutput"} & layouts["int8"]
    if is_x86(platform.machine()):  # MLAS has NCHWc kernels on x86 only: there the pass still runs for fp32
        assert "ReorderOutput" in layouts["fp32"]


def _shaped_graph(shapes: list[tuple[int, ...]], elem: int = TensorProto.FLOAT) -> Any:
    values = [helper.make_tensor_value_info(f"t{i}", elem, list(s)) for i, s in enumerate(shapes)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    return helper.make_graph([], "g", [x], [], value_info=values)


@pytest.mark.parametrize(
    ("shapes", "elem", "per_frame", "chunk"),
    [
        ([], TensorProto.FLOAT, 0, 16),  # nothing known: the old fixed chunk
        ([(1, 16, 8, 8)], TensorProto.FLOAT, 4096, 16),  # small: capped at 16 frames
        ([(1, 64, 1024, 1024)], TensorProto.FLOAT, 1 << 28, 2),  # 256 MiB a frame: 2 in 512 MiB
        ([(1, 64, 2048, 2048)], TensorProto.FLOAT, 1 << 30, 1),  # more than the budget: still one frame
        ([(1, 64, 2048, 2048)], TensorProto.UINT8, 0, 16),  # only float tensors count
        ([(1, 0, 8, 8), (2, 3)], TensorProto.FLOAT, 24, 16),  # an unknown (0) dimension counts nothing
    ],
)
def test_calibration_chunk_fits_the_memory_budget(
    shapes: list[tuple[int, ...]], elem: int, per_frame: int, chunk: int
) -> None:
    graph = _shaped_graph(shapes, elem)
    assert activation_bytes(graph) == per_frame
    assert calibration_chunk(graph) == chunk
