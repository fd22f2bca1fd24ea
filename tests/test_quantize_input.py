"""agent.quantize_input: the int8 file's uint8 image input, exact against the float input.

A one-node graph checks every byte value through ONNX Runtime; tables of graphs the rewrite must refuse; the
demo model quantized once with its float input, rewritten, and run on synth frames: the same outputs to the bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from agent import synth
from agent.calibration import load_samples
from agent.preprocess import letterbox, letterbox_uint8
from agent.quantize_input import INPUT_SCALE, METADATA_KEY, input_overrides, to_float_input, to_uint8_input

onnx = pytest.importorskip("onnx")
pytest.importorskip("sympy")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "demo-seg.onnx"


def _qdq_graph(
    scale: float = float(INPUT_SCALE),
    zero: Any = None,
    dq_scale: float | None = None,
    extra_reader: bool = False,
    input_type: int = TensorProto.FLOAT,
) -> Any:
    """x -> QuantizeLinear -> DequantizeLinear -> Mul by 2 -> y (and an Identity of x when ``extra_reader``);
    ``zero``: the zero point, uint8 0 when None."""
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(np.uint8(0) if zero is None else zero), "x_zero"),
        numpy_helper.from_array(np.array(scale if dq_scale is None else dq_scale, np.float32), "dq_scale"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "dq_scale", "x_zero"], ["xd"], name="dq"),
        helper.make_node("Mul", ["xd", "two"], ["y"], name="mul"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["x"], ["x_copy"], name="copy"))
        outputs.append(helper.make_tensor_value_info("x_copy", input_type, [1, 3, 16, 16]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", input_type, [1, 3, 16, 16])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: Any, feed: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {"x": feed})]


def test_every_byte_value_gives_the_float_inputs_output_to_the_bit() -> None:
    values = np.resize(np.arange(256, dtype=np.uint8), (1, 3, 16, 16))  # 768 cells: every value thrice
    as_float = values.astype(np.float32) * INPUT_SCALE  # what letterbox writes for these bytes
    model = _qdq_graph()
    expected = _run(model, as_float)[0]
    assert to_uint8_input(model)
    assert "QuantizeLinear" not in {n.op_type for n in model.graph.node}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert {p.key for p in model.metadata_props} == {METADATA_KEY}
    onnx.checker.check_model(model)
    got = _run(model, values)[0]
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert np.array_equal(got, values.astype(np.float32) * INPUT_SCALE * 2)  # and it is the pixels, scaled


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 1 / 254},  # not the pixels' scale
        {"scale": 1 / 255 + 1e-7},  # near is not exact
        {"zero": np.uint8(1)},
        {"zero": np.int8(0)},  # int8 activations: a byte would need an offset
        {"dq_scale": 1 / 127},  # the DequantizeLinear would not undo the pixels' scale
        {"extra_reader": True},  # the float input is read by another node too
        {"input_type": TensorProto.UINT8},  # already rewritten (the QuantizeLinear is then invalid anyway)
    ],
)
def test_the_rewrite_refuses_what_would_not_be_exact(kwargs: dict[str, Any]) -> None:
    model = _qdq_graph(**kwargs)
    before = model.SerializeToString()
    assert not to_uint8_input(model)
    assert model.SerializeToString() == before  # untouched


def test_to_float_input_undoes_the_rewrite() -> None:
    values = np.resize(np.arange(256, dtype=np.uint8), (1, 3, 16, 16))
    as_float = values.astype(np.float32) * INPUT_SCALE
    model = _qdq_graph()
    expected = _run(model, as_float)[0]
    assert not to_float_input(model)  # a float input already: nothing to undo
    assert to_uint8_input(model) and to_float_input(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert METADATA_KEY not in {p.key for p in model.metadata_props}
    onnx.checker.check_model(model)
    assert np.array_equal(_run(model, as_float)[0], expected)
    assert to_uint8_input(model) and np.array_equal(_run(model, values)[0], expected)  # and back again


def test_input_overrides_only_for_uint8_activations() -> None:
    (override,) = input_overrides("images", "uint8", unit_range=True)["TensorQuantOverrides"]["images"]
    assert override["scale"].dtype == np.float32 and override["scale"] == INPUT_SCALE
    assert override["zero_point"].dtype == np.uint8 and override["zero_point"] == 0
    assert input_overrides("images", "int8", unit_range=True) == {}
    assert input_overrides("images", "uint8", unit_range=False) == {}  # ImageNet-normalised: not in 0..1


@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[np.ndarray]]:
    """The demo model quantized once with its float input (the pixels' scale forced), and its rewrite."""
    from agent.model import OnnxModel
    from agent.quantize import quantize_model

    out = tmp_path_factory.mktemp("quantize_input")
    synth.write_coco_dataset(out / "set", 10, seed=6262)
    samples = load_samples(str(out / "set" / "images"), None)
    fp32 = OnnxModel(MODEL, threads=1)
    float_in = out / "float-input.onnx"
    plan = quantize_model(MODEL, float_in, fp32, samples, activations="uint8", uint8_input=False)
    assert plan.activations == "uint8"
    model = onnx.load(str(float_in))
    assert to_uint8_input(model)
    uint8_in = out / "uint8-input.onnx"
    onnx.save(model, str(uint8_in))
    return float_in, uint8_in, [s.image_bgr for s in samples]


def test_the_demo_models_outputs_are_bit_identical_with_the_uint8_input(
    demo_int8: tuple[Path, Path, list[np.ndarray]],
) -> None:
    from agent.model import OnnxModel

    float_in, uint8_in, frames = demo_int8
    a, b = OnnxModel(float_in, threads=1), OnnxModel(uint8_in, threads=1)
    assert a.input_dtype is np.float32 and b.input_dtype is np.uint8
    found = 0
    for frame in frames:
        tensor, _ = letterbox(frame, a.input_hw)
        tensor8, _ = letterbox_uint8(frame, b.input_hw)
        for x, y in zip(a.run(tensor), b.run(tensor8), strict=True):
            assert np.array_equal(x, y)
        assert all(np.array_equal(x, y) for x, y in zip(a.run(tensor), b.run(tensor), strict=True))  # float in
        da, db = (m.detect(frame, confidence=0.4, overlap=0.5) for m in (a, b))
        assert np.array_equal(da.boxes_xyxy, db.boxes_xyxy) and np.array_equal(da.confidence, db.confidence)
        assert [p.tolist() for p in da.polygons] == [p.tolist() for p in db.polygons]
        found += len(da)
    assert found > 0  # frames with objects: masks and polygons were compared, not just empty outputs
    back = onnx.load(str(uint8_in))
    assert to_float_input(back)
    c = OnnxModel(_saved(back, uint8_in.with_name("back.onnx")), threads=1)
    tensor, _ = letterbox(frames[0], c.input_hw)
    assert c.input_dtype is np.float32
    assert all(np.array_equal(x, y) for x, y in zip(a.run(tensor), c.run(tensor), strict=True))


def _saved(model: Any, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_seg_agent_quantize_writes_the_uint8_input_where_it_is_exact(tmp_path: Path) -> None:
    from agent.model import OnnxModel
    from agent.quantize import quantize_model

    synth.write_coco_dataset(tmp_path / "set", 4, seed=6363)
    samples = load_samples(str(tmp_path / "set" / "images"), None)
    fp32 = OnnxModel(MODEL, threads=1)
    paths = {act: tmp_path / f"{act}.onnx" for act in ("uint8", "int8")}
    for act, path in paths.items():
        quantize_model(MODEL, path, fp32, samples, activations=act, method="minmax")
    uint8_file, int8_file = (onnx.load(str(paths[a])) for a in ("uint8", "int8"))
    assert uint8_file.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert METADATA_KEY in {p.key for p in uint8_file.metadata_props}
    assert int8_file.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # ARM's S8S8: float input
    assert METADATA_KEY not in {p.key for p in int8_file.metadata_props}
