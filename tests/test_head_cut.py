"""agent.head_cut and ``seg-agent optimize``: the decode taken out of both committed models gives the same
detections; anything but the exact known head is refused and nothing is written."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import synth
from agent.decoders_split import HEAD_KEY, split_head_from_metadata
from agent.model import OnnxModel

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

from agent.head_cut import HeadCutError, cut_file, cut_head  # noqa: E402
from agent.optimize import main_optimize  # noqa: E402
from tests.onnx_models import build_yolov8_seg  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"
DEMO, YOLO = MODELS / "demo-seg.onnx", MODELS / "yolov8n-seg-synth.onnx"


@pytest.fixture(scope="module")
def cut_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("head_cut")
    paths = {}
    for path in (DEMO, YOLO):
        paths[path.name] = out / f"{path.stem}-cut.onnx"
        cut_file(path, paths[path.name])
    return paths


@pytest.mark.parametrize(
    "original, box, reg_max, packed, removed_ops",
    [
        (DEMO, "softplus", 1, True, {"Sigmoid", "Transpose", "Softplus", "Conv"}),
        (YOLO, "dfl", 16, False, {"Softmax", "Sigmoid"}),
    ],
)
def test_the_cut_graph_has_the_raw_outputs_and_says_how_to_decode_them(
    cut_models: dict[str, Path], original: Path, box: str, reg_max: int, packed: bool, removed_ops: set[str]
) -> None:
    model = onnx.load(str(cut_models[original.name]))
    meta = {p.key: p.value for p in model.metadata_props}
    head = split_head_from_metadata(meta)
    assert head is not None and (head.box, head.reg_max, head.strides) == (box, reg_max, (8, 16, 32))
    assert head.packed is packed  # the demo's three 1x1 convolutions per level share their input; YOLOv8's not
    before = {p.key: p.value for p in onnx.load(str(original)).metadata_props}
    assert {k: v for k, v in meta.items() if k != HEAD_KEY} == before  # names, imgsz... carried over
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    if packed:
        assert [o.name for o in model.graph.output] == ["head", "output1"]
        assert shapes[0] == [1, head.anchors, 4 + 3 + 32]
        tail = {n.op_type for n in model.graph.node if n.name.startswith("/seg_agent_pack/")}
        assert tail == {"Transpose", "MatMul", "Add", "Reshape", "Concat"}
        assert sum(n.op_type == "MatMul" for n in model.graph.node) == len(head.strides)  # one per level
        assert not any(n.op_type == "Softplus" for n in model.graph.node)  # on the candidates now
    else:
        assert [o.name for o in model.graph.output][:3] == ["boxes", "scores", "coeffs"]
        assert shapes[:3] == [[1, 4 * reg_max, head.anchors], [1, 3, head.anchors], [1, 32, head.anchors]]
    last = {n.op_type for n in model.graph.node[-12:] if not n.name.startswith("/seg_agent_pack/")}
    assert not removed_ops & last and "/dfl/" not in str([n.name for n in model.graph.node])


def test_the_demo_cut_without_packing_keeps_the_channel_layout(tmp_path: Path) -> None:
    cut, done = cut_head(onnx.load(str(DEMO)), pack=False)
    assert (done.head.box, done.head.packed, done.head.outputs[:3]) == ("ltrb", False, ("boxes", "scores", "coeffs"))
    onnx.save(cut, str(tmp_path / "unpacked.onnx"))
    cut_file(DEMO, tmp_path / "packed.onnx")
    packed, unpacked = (OnnxModel(tmp_path / f"{name}.onnx", threads=1) for name in ("packed", "unpacked"))
    assert packed.split_head is not None and packed.split_head.packed
    for frame in _frames(3):
        a = packed.detect(frame, confidence=0.2, overlap=0.5)
        b = unpacked.detect(frame, confidence=0.2, overlap=0.5)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)


def _frames(n: int) -> list[np.ndarray]:
    return [synth.render_sample(np.random.default_rng([77, i]), (480, 640))[0] for i in range(n)]


@pytest.mark.parametrize("original, frames", [(DEMO, 6), (YOLO, 3)])
@pytest.mark.parametrize("confidence, overlap", [(0.01, 0.5), (0.4, 0.3), (0.9, 0.3)])
def test_the_cut_model_detects_what_the_original_does(
    cut_models: dict[str, Path], original: Path, frames: int, confidence: float, overlap: float
) -> None:
    before, after = OnnxModel(original, threads=1), OnnxModel(cut_models[original.name], threads=1)
    assert after.class_names == before.class_names and after.input_hw == before.input_hw
    found = 0
    for frame in _frames(frames):
        a = before.detect(frame, confidence=confidence, overlap=overlap)
        b = after.detect(frame, confidence=confidence, overlap=overlap)
        assert len(a) == len(b)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-6)
        assert all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons, strict=True))
        found += len(a)
    if confidence < 0.9:
        assert found >= frames  # shapes on every synth frame: the comparison is of real detections


def _tamper(path: Path, change: Callable[[Any], None]) -> Any:
    model = onnx.load(str(path))
    change(model.graph)
    return model


def _initializer(name: str, scale: float) -> Callable[[Any], None]:
    def change(graph: Any) -> None:
        for init in graph.initializer:
            if init.name == name:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), name))

    return change


def _dynamic_input(graph: Any) -> None:
    graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"


def _half_input(graph: Any) -> None:
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16


def _anchors_shifted(graph: Any) -> None:  # the demo's anchor constants are Constant nodes
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == "/Constant_17_output_0":
            value = numpy_helper.to_array(node.attribute[0].t) + np.float32(1.0)
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(value))


@pytest.mark.parametrize(
    "path, change, message",
    [
        (YOLO, _initializer("model.22.dfl.conv.weight", 2.0), "not the fixed expectation"),
        (YOLO, _initializer("/model.22/Constant_15_output_0", 1.001), "does not reproduce output0"),
        (YOLO, _initializer("/model.22/Constant_18_output_0", 2.0), "stride"),
        (YOLO, _dynamic_input, "fixed input size"),
        (DEMO, _half_input, "not float32"),
        (DEMO, _anchors_shifted, "does not reproduce output0"),
    ],
)
def test_a_head_that_is_not_exactly_the_known_one_is_refused(
    path: Path, change: Callable[[Any], None], message: str
) -> None:
    with pytest.raises(HeadCutError, match=message):
        cut_head(_tamper(path, change))


def test_another_head_and_an_already_cut_graph_are_refused(cut_models: dict[str, Path], tmp_path: Path) -> None:
    other = build_yolov8_seg(tmp_path / "other.onnx", imgsz=(64, 64))
    with pytest.raises(HeadCutError, match="no known decode head"):
        cut_head(onnx.load(str(other)))
    with pytest.raises(HeadCutError, match="already out of this graph"):
        cut_head(onnx.load(str(cut_models[DEMO.name])))


def _optimize(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main_optimize(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_optimize_writes_the_cut_model(tmp_path: Path) -> None:
    rc, text, err = _optimize(str(DEMO), "--out", str(tmp_path / "fast.onnx"))
    assert rc == 0, err
    assert "37 decode nodes removed" in text and "wrote" in text and (tmp_path / "fast.onnx").is_file()


@pytest.mark.parametrize(
    "args, rc, message",
    [
        (["OTHER", "--out", "OUT"], 1, "no known decode head"),
        (["missing.onnx", "--out", "OUT"], 2, "no such model file"),
        ([str(DEMO), "--out", str(DEMO)], 2, "must not be the model itself"),
    ],
)
def test_optimize_refuses_and_writes_nothing(args: list[str], rc: int, message: str, tmp_path: Path) -> None:
    other = build_yolov8_seg(tmp_path / "other.onnx", imgsz=(64, 64))
    args = [str(other) if a == "OTHER" else str(tmp_path / "out.onnx") if a == "OUT" else a for a in args]
    got, _, err = _optimize(*args)
    assert got == rc and message in err
    assert not (tmp_path / "out.onnx").exists()
