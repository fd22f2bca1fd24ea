"""OnnxModel on real ONNX graphs (tests/onnx_models.py), checked against an independent plain reference."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from agent import model as model_module
from agent import synth
from agent.capture import reduction_factor
from agent.model import ModelError, OnnxModel, SessionPool
from agent.polygons import PolygonOptions
from agent.postprocess import Detections, box_iou_xyxy, letterbox_content_hw
from tests.onnx_models import build_single_output, build_two_inputs, build_yolov8_seg

CLASS_NAMES = ["circle", "rectangle", "triangle"]
SMALL: dict[str, Any] = {"imgsz": (128, 128), "stride": 16}  # 64 anchors, quick to build


@pytest.fixture(scope="module")
def square_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_yolov8_seg(tmp_path_factory.mktemp("square") / "model.onnx", imgsz=(256, 256), seed=0)


@pytest.fixture(scope="module")
def wide_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_yolov8_seg(tmp_path_factory.mktemp("wide") / "model.onnx", imgsz=(192, 320), seed=1)


@pytest.fixture(scope="module")
def square_model(square_model_path: Path) -> OnnxModel:
    return OnnxModel(square_model_path, threads=1)


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A BGR frame with filled circles, rectangles and triangles on a textured background."""
    rng = np.random.default_rng(seed)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = rng.integers(30, 120, 3)
    noise = rng.normal(0, 6, size=(height, width, 3))
    frame = np.clip(frame + noise, 0, 255).astype(np.uint8)
    unit = min(height, width)
    for i in range(12):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(unit // 20, unit // 4))
        if i % 3 == 0:
            cv2.circle(frame, (cx, cy), size, colour, -1)
        elif i % 3 == 1:
            cv2.rectangle(frame, (cx - size, cy - size // 2), (cx + size, cy + size // 2), colour, -1)
        else:
            triangle = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
            cv2.fillPoly(frame, [triangle], colour)
    return frame


# ----------------------------------------------------------------------------------------------------------
# An independent reference: the textbook pipeline, written with plain loops and full-frame masks.


@dataclass
class RefInstance:
    box_xyxy: tuple[float, float, float, float]
    score: float
    class_id: int
    mask_hw: np.ndarray  # full frame, bool


def _pair_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_detect(
    path: Path, frame: np.ndarray, input_hw: tuple[int, int], confidence: float, overlap: float, max_det: int
) -> list[RefInstance]:
    in_h, in_w = input_hw
    h, w = frame.shape[:2]
    r = min(in_h / h, in_w / w)
    new_w, new_h = round(w * r), round(h * r)
    left, top = round((in_w - new_w) / 2 - 0.1), round((in_h - new_h) / 2 - 0.1)
    canvas = np.full((in_h, in_w, 3), 114, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    tensor = (canvas[:, :, ::-1].transpose(2, 0, 1)[None] / 255.0).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output0, protos = session.run(["output0", "output1"], {"images": tensor})
    num_masks = protos.shape[1]
    num_classes = output0.shape[1] - 4 - num_masks

    candidates = []
    for i in range(output0.shape[2]):
        column = output0[0, :, i]
        class_scores = column[4 : 4 + num_classes]
        best = int(np.argmax(class_scores))
        if class_scores[best] > confidence:
            cx, cy, bw, bh = (float(v) for v in column[:4])
            box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
            candidates.append((float(class_scores[best]), best, box, column[4 + num_classes :]))
    candidates.sort(key=lambda c: -c[0])
    kept: list[tuple[float, int, list[float], np.ndarray]] = []
    for cand in candidates:
        if len(kept) == max_det:
            break
        if all(k[1] != cand[1] or _pair_iou(k[2], cand[2]) <= overlap for k in kept):
            kept.append(cand)

    results = []
    cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5
    for score, cls, box, coeffs in kept:
        x1 = min(max((box[0] - left) / r, 0.0), w)
        y1 = min(max((box[1] - top) / r, 0.0), h)
        x2 = min(max((box[2] - left) / r, 0.0), w)
        y2 = min(max((box[3] - top) / r, 0.0), h)
        proto_mask = 1 / (1 + np.exp(-np.clip(np.tensordot(coeffs, protos[0], axes=1), -50, 50)))
        at_input = cv2.resize(proto_mask.astype(np.float32), (in_w, in_h), interpolation=cv2.INTER_LINEAR)
        at_frame = cv2.resize(at_input[top : top + new_h, left : left + new_w], (w, h), interpolation=cv2.INTER_LINEAR)
        in_box = ((cols >= x1) & (cols <= x2))[None, :] & ((rows >= y1) & (rows <= y2))[:, None]
        results.append(RefInstance((x1, y1, x2, y2), score, cls, (at_frame > 0.5) & in_box))
    return results


def largest_part_filled(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of a mask with its holes filled."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    part = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    outside = np.pad(~part, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2)
    return part | (outside[1:-1, 1:-1] != 2)


def rasterise(polygon: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(frame_hw, np.uint8)
    cv2.fillPoly(canvas, [np.round(polygon).astype(np.int32)], 1)
    return canvas.astype(bool)


def assert_matches_reference(dets: Detections, reference: list[RefInstance], frame_hw: tuple[int, int]) -> None:
    """Ours must be the reference in the same order, less only instances whose reference mask is (nearly) empty.

    Matched instances: same class, box corners within 1 px, same score, mask IoU >= 0.95 (our polygon
    rasterised with ``cv2.fillPoly`` against the reference's largest part with holes filled).
    """
    j = 0
    for ref in reference:
        ref_mask = largest_part_filled(ref.mask_hw)
        if (
            j < len(dets)
            and dets.class_id[j] == ref.class_id
            and np.allclose(dets.boxes_xyxy[j], ref.box_xyxy, atol=1.0)
        ):
            assert dets.confidence[j] == pytest.approx(ref.score, abs=1e-5)
            ours = rasterise(dets.polygons[j], frame_hw)
            iou = np.count_nonzero(ours & ref_mask) / max(1, np.count_nonzero(ours | ref_mask))
            assert iou >= 0.95, (j, iou, np.count_nonzero(ref_mask))
            j += 1
        else:
            assert np.count_nonzero(ref_mask) < 20, f"reference instance {ref} missing from ours"
    assert j == len(dets), "ours has instances the reference does not"
    assert j >= 5


@pytest.mark.parametrize(
    ("frame_hw", "seed"), [((480, 640), 0), ((720, 1280), 1), ((600, 400), 2)], ids=["640x480", "1280x720", "400x600"]
)
@pytest.mark.parametrize(("confidence", "overlap"), [(0.25, 0.45), (0.5, 0.3), (0.05, 0.7)])
@pytest.mark.parametrize("model_name", ["square", "wide"])
def test_detect_matches_the_reference(
    request: pytest.FixtureRequest,
    model_name: str,
    frame_hw: tuple[int, int],
    seed: int,
    confidence: float,
    overlap: float,
) -> None:
    path: Path = request.getfixturevalue(f"{model_name}_model_path")
    model = OnnxModel(path, threads=1)
    frame = scene(*frame_hw, seed)
    dets = model.detect(frame, confidence=confidence, overlap=overlap)
    reference = reference_detect(path, frame, model.input_hw, confidence, overlap, 300)
    assert len(reference) >= 5  # the fixture model gives a real workload
    assert_matches_reference(dets, reference, frame_hw)
    assert np.all(np.diff(dets.confidence) <= 0)
    assert np.all(dets.confidence > confidence)
    for box, polygon in zip(dets.boxes_xyxy, dets.polygons, strict=True):
        assert polygon.dtype == np.float32 and polygon.shape[0] >= 3
        # Vertices are pixel indices inside the box.
        assert polygon[:, 0].min() >= box[0] - 0.5 and polygon[:, 0].max() <= box[2] - 0.5
        assert polygon[:, 1].min() >= box[1] - 0.5 and polygon[:, 1].max() <= box[3] - 0.5
    assert dets.boxes_xyxy[:, [0, 2]].max() <= frame_hw[1] and dets.boxes_xyxy[:, [1, 3]].max() <= frame_hw[0]
    assert dets.boxes_xyxy.min() >= 0


def test_the_fixture_gives_a_varied_workload(square_model: OnnxModel) -> None:
    """Scores spread across thresholds, boxes of many sizes, overlaps within and across classes."""
    frame = scene(480, 640, 0)
    loose = square_model.detect(frame, confidence=0.0, overlap=1.0)
    assert len(loose) >= 100
    assert np.histogram(loose.confidence, bins=4, range=(0, 1))[0].min() >= 5
    widths = loose.boxes_xyxy[:, 2] - loose.boxes_xyxy[:, 0]
    assert widths.min() < 100 and widths.max() > 250
    assert set(loose.class_id.tolist()) == {0, 1, 2}
    strict = square_model.detect(frame, confidence=0.0, overlap=0.3)
    assert len(strict) < 0.6 * len(loose)  # many same-class overlaps were suppressed
    iou = box_iou_xyxy(strict.boxes_xyxy, strict.boxes_xyxy)
    np.fill_diagonal(iou, 0)
    other_class = strict.class_id[:, None] != strict.class_id[None, :]
    assert np.count_nonzero((iou > 0.5) & other_class) >= 2  # overlapping boxes of different classes survive
    assert np.count_nonzero((iou > 0.1) & (iou <= 0.3) & ~other_class) >= 2  # ... and same class below overlap
    other_frame = square_model.detect(scene(480, 640, 5), confidence=0.0, overlap=1.0)
    assert not np.allclose(other_frame.boxes_xyxy[:5], loose.boxes_xyxy[:5])  # outputs follow the image


@pytest.mark.parametrize("max_detections", [0, 1, 7])
def test_detect_max_detections(square_model: OnnxModel, max_detections: int) -> None:
    dets = square_model.detect(scene(480, 640, 0), confidence=0.1, overlap=0.5, max_detections=max_detections)
    assert len(dets) <= max_detections
    full = square_model.detect(scene(480, 640, 0), confidence=0.1, overlap=0.5)
    np.testing.assert_array_equal(dets.confidence, full.confidence[: len(dets)])


@pytest.mark.parametrize("frame_hw", [(7, 10), (1, 1), (256, 256), (1080, 1920)])
def test_detect_on_any_frame_size(square_model: OnnxModel, frame_hw: tuple[int, int]) -> None:
    frame = np.full((*frame_hw, 3), 128, np.uint8)
    dets = square_model.detect(frame, confidence=0.3, overlap=0.5)
    if len(dets):
        assert dets.boxes_xyxy[:, 2].max() <= frame_hw[1] and dets.boxes_xyxy[:, 3].max() <= frame_hw[0]
        for polygon in dets.polygons:
            assert polygon[:, 0].max() < frame_hw[1] and polygon[:, 1].max() < frame_hw[0]


def test_detect_is_thread_safe(square_model: OnnxModel) -> None:
    frames = [scene(480, 640, s) for s in range(4)]
    expected = [square_model.detect(f, confidence=0.25, overlap=0.45) for f in frames]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda f: square_model.detect(f, confidence=0.25, overlap=0.45), frames * 3))
    for i, dets in enumerate(got):
        want = expected[i % 4]
        np.testing.assert_array_equal(dets.boxes_xyxy, want.boxes_xyxy)
        np.testing.assert_array_equal(dets.class_id, want.class_id)


@pytest.mark.parametrize(
    ("kwargs", "image", "match"),
    [
        ({"confidence": 40, "overlap": 0.3}, np.zeros((8, 8, 3), np.uint8), "confidence"),
        ({"confidence": 0.4, "overlap": 30}, np.zeros((8, 8, 3), np.uint8), "overlap"),
        ({"confidence": 0.4, "overlap": 0.3, "max_detections": -1}, np.zeros((8, 8, 3), np.uint8), "max_det"),
        ({"confidence": 0.4, "overlap": 0.3}, np.zeros((8, 8), np.uint8), "HxWx3"),
        ({"confidence": 0.4, "overlap": 0.3}, np.zeros((8, 8, 4), np.uint8), "HxWx3"),
        ({"confidence": 0.4, "overlap": 0.3}, np.zeros((8, 8, 3), np.float32), "HxWx3"),
        ({"confidence": 0.4, "overlap": 0.3}, np.zeros((0, 8, 3), np.uint8), "HxWx3"),
    ],
)
def test_detect_rejects_bad_arguments(
    square_model: OnnxModel, kwargs: dict[str, float], image: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        square_model.detect(image, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# Loading


def test_model_attributes(square_model: OnnxModel, square_model_path: Path) -> None:
    assert square_model.path == square_model_path
    assert square_model.class_names == CLASS_NAMES
    assert square_model.input_hw == (256, 256)
    assert square_model.providers == ["CPUExecutionProvider"]
    assert "model.onnx" in repr(square_model)


def test_wide_model_input_size(wide_model_path: Path) -> None:
    assert OnnxModel(wide_model_path).input_hw == (192, 320)


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_threads(square_model_path: Path, threads: int) -> None:
    model = OnnxModel(square_model_path, threads=threads)
    assert len(model.detect(scene(480, 640, 0), confidence=0.25, overlap=0.45)) > 0


def test_negative_threads_rejected(square_model_path: Path) -> None:
    with pytest.raises(ValueError, match="threads"):
        OnnxModel(square_model_path, threads=-1)


def test_unavailable_provider_falls_back_to_cpu(square_model_path: Path) -> None:
    model = OnnxModel(square_model_path, providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert model.providers == ["CPUExecutionProvider"]
    assert OnnxModel(square_model_path, providers=["NoSuchExecutionProvider"]).providers == ["CPUExecutionProvider"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelError, match="no such model file") as info:
        OnnxModel(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content", [b"not an onnx model\n", b"", bytes(range(256)) * 4], ids=["text", "empty", "binary"]
)
def test_not_an_onnx_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a loadable ONNX model") as info:
        OnnxModel(path)
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        OnnxModel(tmp_path)


@pytest.mark.parametrize(
    ("build", "found"),
    [
        (lambda p: build_single_output(p), ["1 outputs", "output0 [1, 3, 1, 1]", "images [1, 3, 64, 64]"]),
        (lambda p: build_two_inputs(p), ["2 inputs", "a [1, 3, 8, 8]", "b [1, 3, 8, 8]"]),
        (
            lambda p: build_yolov8_seg(p, anchors_first=True),
            ["[1, anchors, values]", "output0 [1, 128, 39]", "output1 [1, 32, 64, 64]"],
        ),
        (
            lambda p: build_yolov8_seg(p, class_names=None, num_classes=0),
            ["output0 [1, 36, 128]", "36 rows"],
        ),
    ],
    ids=["one-output", "two-inputs", "anchors-first", "too-few-rows"],
)
def test_unsupported_layouts(tmp_path: Path, build: object, found: list[str]) -> None:
    path = tmp_path / "model.onnx"
    build(path)  # type: ignore[operator]
    with pytest.raises(ModelError, match="unsupported model layout") as info:
        OnnxModel(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in found:
        assert fragment in message


# ----------------------------------------------------------------------------------------------------------
# Class names and input size


@pytest.mark.parametrize(
    ("names_meta", "classes_txt", "expected"),
    [
        pytest.param("{0: 'cat', 1: 'dog', 2: 'bird'}", None, ["cat", "dog", "bird"], id="metadata"),
        pytest.param("{0: 'cat', 1: 'dog', 2: 'bird'}", "x\ny\nz\n", ["cat", "dog", "bird"], id="metadata-wins"),
        pytest.param("['cat', 'dog', 'bird']", None, ["cat", "dog", "bird"], id="metadata-list"),
        pytest.param("{2: 'bird', 0: 'cat'}", None, ["cat", "class1", "bird"], id="metadata-gap"),
        pytest.param(None, "apple\n\n banana \r\ncherry\n", ["apple", "banana", "cherry"], id="classes-txt"),
        pytest.param("__import__('os').getcwd()", "a\nb\nc\n", ["a", "b", "c"], id="not-a-literal"),
        pytest.param(None, None, ["class0", "class1", "class2"], id="fallback"),
        pytest.param(None, "a\nb\n", ["a", "b", "class2"], id="too-few-padded"),
        pytest.param("{0: 'a', 1: 'b', 2: 'c', 3: 'd'}", None, ["a", "b", "c"], id="too-many-trimmed"),
    ],
)
def test_class_names(tmp_path: Path, names_meta: str | None, classes_txt: str | None, expected: list[str]) -> None:
    metadata = {"names": names_meta} if names_meta is not None else {}
    path = build_yolov8_seg(tmp_path / "model.onnx", class_names=None, metadata=metadata, **SMALL)
    if classes_txt is not None:
        (tmp_path / "classes.txt").write_text(classes_txt, encoding="utf-8")
    assert OnnxModel(path).class_names == expected


def test_class_names_from_roboflow_class_names_txt(tmp_path: Path) -> None:
    path = build_yolov8_seg(tmp_path / "weights.onnx", class_names=None, **SMALL)
    (tmp_path / "class_names.txt").write_text("a\nb\nc\n", encoding="utf-8")
    assert OnnxModel(path).class_names == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("imgsz_meta", "expected"),
    [("[256, 256]", (256, 256)), ("256", (256, 256)), (None, (640, 640))],
)
def test_dynamic_input_size_from_metadata(tmp_path: Path, imgsz_meta: str | None, expected: tuple[int, int]) -> None:
    imgsz = expected
    path = build_yolov8_seg(tmp_path / "model.onnx", imgsz=imgsz, dynamic_input=True, metadata={"imgsz": imgsz_meta})
    model = OnnxModel(path)
    assert model.input_hw == expected
    assert model.class_names == CLASS_NAMES
    assert len(model.detect(scene(480, 640, 0), confidence=0.25, overlap=0.45)) > 0


def test_dynamic_input_with_wrong_metadata_size_fails_at_load(tmp_path: Path) -> None:
    path = build_yolov8_seg(tmp_path / "model.onnx", imgsz=(64, 64), dynamic_input=True, metadata={"imgsz": "[96, 96]"})
    with pytest.raises(ModelError, match="test run"):
        OnnxModel(path)


# ----------------------------------------------------------------------------------------------------------
# Frames decoded at a reduced size (JPEG DCT scaling), with the demo model


DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo-seg.onnx"
REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


@pytest.fixture(scope="module")
def demo_model() -> OnnxModel:
    return OnnxModel(DEMO_MODEL, threads=2)


def shapes_frame(height: int, width: int) -> np.ndarray:
    """Four solid shapes (agent.synth's geometry, in proportion to the frame) on a gradient."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (60 + 60 * x / width).astype(np.uint8)
    img[..., 1] = (70 + 40 * y / height).astype(np.uint8)
    img[..., 2] = 80
    sx, sy = width / 1920, height / 1080
    shapes = [  # class, centre x, centre y, size, angle, BGR (in 1920x1080 units)
        (0, 400, 300, 320, 0.0, (30, 30, 220)),
        (1, 1400, 350, 420, 0.4, (40, 200, 40)),
        (2, 900, 780, 380, 0.2, (220, 160, 30)),
        (0, 1650, 850, 260, 0.0, (200, 200, 240)),
    ]
    for cls, cx, cy, size, angle, colour in shapes:
        pts = synth.shape_polygon(cls, cx * sx, cy * sy, size * min(sx, sy), angle, aspect=0.6)
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], colour, lineType=cv2.LINE_AA)
    return img


@pytest.mark.parametrize(
    ("frame_hw", "factor"),
    [((1080, 1920), 4), ((1080, 1920), 2), ((720, 1280), 2), ((2160, 3840), 8)],
    ids=["1080p-4", "1080p-2", "720p-2", "4k-8"],
)
def test_detect_on_a_reduced_decode_matches_the_full_frame(
    demo_model: OnnxModel, frame_hw: tuple[int, int], factor: int
) -> None:
    ok, jpeg = cv2.imencode(".jpg", shapes_frame(*frame_hw), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    full = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    reduced = cv2.imdecode(jpeg, REDUCED_FLAGS[factor])
    assert reduced.shape[:2] == (-(-frame_hw[0] // factor), -(-frame_hw[1] // factor))
    want = demo_model.detect(full, confidence=0.5, overlap=0.45)
    got = demo_model.detect(reduced, confidence=0.5, overlap=0.45, frame_hw=frame_hw)
    assert len(want) == 4  # the scene's four shapes
    assert len(got) == len(want)
    assert sorted(got.class_id.tolist()) == sorted(want.class_id.tolist()) == [0, 0, 1, 2]
    # one-to-one: every full-frame box has its own same-class box in the reduced result
    iou = box_iou_xyxy(want.boxes_xyxy, got.boxes_xyxy)
    iou[want.class_id[:, None] != got.class_id[None, :]] = 0.0
    match = iou.argmax(axis=1)
    assert sorted(match.tolist()) == list(range(len(got)))
    assert iou[np.arange(len(want)), match].min() >= 0.9, iou
    np.testing.assert_allclose(got.confidence[match], want.confidence, atol=0.05)
    # masks too, in the full frame's pixels
    for i, j in enumerate(match):
        a, b = rasterise(want.polygons[i], frame_hw), rasterise(got.polygons[j], frame_hw)
        assert np.count_nonzero(a & b) / np.count_nonzero(a | b) >= 0.85
    xs = np.concatenate([p[:, 0] for p in got.polygons])
    ys = np.concatenate([p[:, 1] for p in got.polygons])
    assert xs.min() >= 0 and xs.max() < frame_hw[1] and ys.min() >= 0 and ys.max() < frame_hw[0]
    assert xs.max() > reduced.shape[1] and ys.max() > reduced.shape[0]  # not the reduced image's pixels
    assert got.boxes_xyxy[:, 2].max() <= frame_hw[1] and got.boxes_xyxy[:, 3].max() <= frame_hw[0]
    # without frame_hw the same image is a small frame of its own
    small = demo_model.detect(reduced, confidence=0.5, overlap=0.45)
    assert small.boxes_xyxy[:, 2].max() <= reduced.shape[1]
    to_frame = frame_hw[1] / reduced.shape[1]
    np.testing.assert_allclose(
        np.sort(small.boxes_xyxy[:, 0]) * to_frame, np.sort(got.boxes_xyxy[:, 0]), atol=2 * factor
    )


def test_detect_with_frame_hw_of_the_image_itself_changes_nothing(demo_model: OnnxModel) -> None:
    frame = shapes_frame(480, 640)
    plain = demo_model.detect(frame, confidence=0.5, overlap=0.45)
    same = demo_model.detect(frame, confidence=0.5, overlap=0.45, frame_hw=(480, 640))
    assert len(plain) == 4
    np.testing.assert_array_equal(plain.boxes_xyxy, same.boxes_xyxy)
    np.testing.assert_array_equal(plain.class_id, same.class_id)


@pytest.mark.parametrize(
    "frame_hw", [(1080, 1920), (720, 1280), (480, 640), (1920, 1080), (2160, 3840), (1081, 1921), (416, 416)]
)
def test_needed_hw_is_the_letterbox_content(demo_model: OnnxModel, frame_hw: tuple[int, int]) -> None:
    need = demo_model.needed_hw(frame_hw)
    assert need == letterbox_content_hw(frame_hw, demo_model.input_hw)
    assert need[0] <= frame_hw[0] and need[1] <= frame_hw[1]
    assert max(need[0] / demo_model.input_hw[0], need[1] / demo_model.input_hw[1]) == 1.0  # fills one side
    # the decode it allows still covers the need
    factor = reduction_factor(frame_hw, need)
    assert -(-frame_hw[0] // factor) >= need[0] and -(-frame_hw[1] // factor) >= need[1]


def test_needed_hw_of_a_yolov8_fixture_model(wide_model_path: Path) -> None:
    model = OnnxModel(wide_model_path)  # input 192x320
    assert model.needed_hw((1080, 1920)) == (180, 320)
    assert model.needed_hw((1920, 1080)) == (192, 108)
    assert reduction_factor((1080, 1920), model.needed_hw((1080, 1920))) == 4


@pytest.mark.parametrize("frame_hw", [(240, 320), (1, 1), (100, 1000), (1000, 100)])
def test_needed_hw_never_exceeds_a_frame_smaller_than_the_input(
    demo_model: OnnxModel, frame_hw: tuple[int, int]
) -> None:
    need = demo_model.needed_hw(frame_hw)
    assert need[0] <= frame_hw[0] and need[1] <= frame_hw[1]
    scale = min(demo_model.input_hw[0] / frame_hw[0], demo_model.input_hw[1] / frame_hw[1])
    if scale >= 1:  # the model enlarges the frame: all of it is needed
        assert need == frame_hw


# ----------------------------------------------------------------------------------------------------------
# Several sessions side by side


def test_session_pool_runs_frames_side_by_side_with_the_same_results() -> None:
    models = [OnnxModel(DEMO_MODEL, threads=1) for _ in range(2)]
    pool = SessionPool(models)
    assert pool.size == 2 and pool.class_names == CLASS_NAMES
    assert pool.needed_hw((1080, 1920)) == models[0].needed_hw((1080, 1920))
    frame = shapes_frame(480, 640)
    want = models[0].detect(frame, confidence=0.5, overlap=0.45)
    used: list[int] = []
    original = OnnxModel.run

    def run(self: OnnxModel, tensor: np.ndarray) -> tuple[np.ndarray, ...]:
        used.append(id(self))
        deadline = time.monotonic() + 5.0  # until another thread needed the other session (ends at once then)
        while len(used) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        return original(self, tensor)

    results: list[Detections] = []
    OnnxModel.run = run  # type: ignore[method-assign]
    try:
        threads = [
            threading.Thread(target=lambda: results.append(pool.detect(frame, confidence=0.5, overlap=0.45)))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        OnnxModel.run = original  # type: ignore[method-assign]
    assert len(results) == 4
    assert set(used) == {id(m) for m in models}, "both sessions ran frames"
    for got in results:
        np.testing.assert_array_equal(got.class_id, want.class_id)
        np.testing.assert_allclose(got.boxes_xyxy, want.boxes_xyxy, atol=1e-3)
    pool.class_names = ["a", "b", "c"]
    assert [m.class_names for m in models] == [["a", "b", "c"]] * 2
    with pytest.raises(ValueError, match="at least one"):
        SessionPool([])


_BLAS_CHECK = """
import ctypes, json, os
import cv2
import numpy as np
from agent.model import limit_helper_threads

def threads_of_each_openblas():
    out = {}
    for line in open("/proc/self/maps"):
        path = line.split(None, 5)[-1].strip()
        if path.startswith("/") and "openblas" in os.path.basename(path).lower() and path not in out:
            lib = ctypes.CDLL(path)
            for name in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                         "scipy_openblas_get_num_threads", "openblas_get_num_threads64_"):
                getter = getattr(lib, name, None)
                if getter is not None:
                    out[path] = getter()
                    break
    return out

before = threads_of_each_openblas()
capped = limit_helper_threads()
print(json.dumps({"before": before, "after": threads_of_each_openblas(), "capped": capped,
                  "cv2": cv2.getNumThreads()}))
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="finds the libraries through /proc (Linux)")
def test_limit_helper_threads_leaves_opencv_and_every_openblas_one_thread() -> None:
    """OpenBLAS workers busy-wait after a call that used them: the agent keeps the cores for ONNX Runtime."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _BLAS_CHECK], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cv2"] == 1
    assert result["after"] and set(result["after"].values()) == {1}  # NumPy's OpenBLAS at least
    assert len(result["capped"]) == len(result["after"])
    assert sorted(result["after"]) == sorted(result["before"])


@pytest.mark.parametrize("tolerance", [0.0, 2.0])
def test_detect_with_rings_and_a_tolerance(square_model_path: Path, tolerance: float) -> None:
    """Opt-in: every part and hole per instance, the first part being ``points``; a tolerance simplifies both."""
    frame = scene(480, 640, 0)
    plain = OnnxModel(square_model_path, threads=1).detect(frame, confidence=0.25, overlap=0.45)
    options = PolygonOptions(rings=True, tolerance_px=tolerance)
    dets = OnnxModel(square_model_path, threads=1, polygons=options).detect(frame, confidence=0.25, overlap=0.45)
    assert plain.rings is None and dets.rings is not None and len(dets.rings) == len(dets) == len(plain) >= 5
    np.testing.assert_array_equal(dets.boxes_xyxy, plain.boxes_xyxy)
    for polygon, exact, rings in zip(dets.polygons, plain.polygons, dets.rings, strict=True):
        assert rings[0][1] == -1
        np.testing.assert_array_equal(rings[0][0], polygon)
        assert all(-1 <= parent < len(rings) and (parent < 0 or rings[parent][1] == -1) for _, parent in rings)
        if tolerance == 0.0:
            np.testing.assert_array_equal(polygon, exact)
        else:
            assert 3 <= polygon.shape[0] <= exact.shape[0]
    if tolerance:
        assert sum(p.shape[0] for p in dets.polygons) < sum(p.shape[0] for p in plain.polygons)
    empty = OnnxModel(square_model_path, threads=1, polygons=options).detect(frame, confidence=1.0, overlap=0.45)
    assert len(empty) == 0 and empty.rings == []


@pytest.mark.parametrize("pooled", [False, True], ids=["one-model", "pool-of-one-session"])
def test_a_frames_decode_holds_no_session(monkeypatch: pytest.MonkeyPatch, pooled: bool) -> None:
    """frames_in_flight > sessions: frame N is decoded while frame N+1 is in session.run (the accelerator's
    overlap). The first decode waits until the second run has started: that only happens if the decode
    holds no session (the bound is generous: a loaded machine may be slow, a deadlock never ends)."""
    model = OnnxModel(DEMO_MODEL, threads=1)
    detector: OnnxModel | SessionPool = SessionPool([model]) if pooled else model
    frame = shapes_frame(480, 640)
    want = model.detect(frame, confidence=0.5, overlap=0.45)
    runs_started = threading.Semaphore(0)
    second_run = threading.Event()
    original_run, original_decode = OnnxModel.run, model_module.decode_yolov8_seg
    runs, decodes = [0], [0]
    lock = threading.Lock()

    def run(self: OnnxModel, tensor: np.ndarray) -> tuple[np.ndarray, ...]:
        with lock:
            runs[0] += 1
            if runs[0] == 2:
                second_run.set()
        runs_started.release()
        return original_run(self, tensor)

    def decode(*args: Any, **kwargs: Any) -> Detections:
        with lock:
            decodes[0] += 1
            first_decode = decodes[0] == 1
        if first_decode:
            assert second_run.wait(60), "the second frame's run waited for the first frame's decode"
        return original_decode(*args, **kwargs)

    monkeypatch.setattr(OnnxModel, "run", run)
    monkeypatch.setattr(model_module, "decode_yolov8_seg", decode)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(detector.detect, frame, confidence=0.5, overlap=0.45)
        assert runs_started.acquire(timeout=60)  # the first frame is in (or past) its run
        second = pool.submit(detector.detect, frame, confidence=0.5, overlap=0.45)
        results = [first.result(timeout=120), second.result(timeout=120)]
    assert second_run.is_set() and runs == [2] and decodes == [2]
    for got in results:
        np.testing.assert_array_equal(got.class_id, want.class_id)
        np.testing.assert_allclose(got.boxes_xyxy, want.boxes_xyxy, atol=1e-3)
