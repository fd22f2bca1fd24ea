"""Every supported local-model format on real ONNX graphs (tests/onnx_formats.py), checked two ways:

* against independent plain references (loops, full-frame masks, the textbook resize) on an image-dependent
  model converted to each format's exact inputs and outputs;
* with a model that really finds the red object, on non-square frames, for each ``PREPROCESSING`` resize
  mode and a static crop: the object must come back at its pixel coordinates in the original frame.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from agent.config import load_settings
from agent.model import ModelError, OnnxModel, onnx_providers
from agent.postprocess import Detections
from tests.onnx_formats import IMAGENET_MEAN, IMAGENET_STD, build_red_finder, convert, write_package
from tests.onnx_models import build_yolov8_seg
from tests.test_model import RefInstance, largest_part_filled, rasterise, scene

NAMES = ["circle", "rectangle", "triangle"]


# ----------------------------------------------------------------------------------------------------------
# Fixtures: one image-dependent YOLOv8-layout model per input shape, converted to each format.


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    (d / "rfdetr").mkdir()
    square = build_yolov8_seg(d / "square.onnx", imgsz=(256, 256), stride=16, seed=4)  # 512 anchors
    wide = build_yolov8_seg(d / "wide.onnx", imgsz=(192, 320), stride=16, seed=5)  # 480 anchors
    out = {
        "yolov5": convert(square, d / "yolov5.onnx", "yolov5"),
        "end2end": convert(square, d / "yolo26.onnx", "end2end"),
        "rfdetr": convert(wide, d / "rfdetr" / "rf-detr-seg.onnx", "rfdetr"),
    }
    (d / "rfdetr" / "class_names.txt").write_text("".join(f"{n}\n" for n in NAMES))
    return out


@pytest.fixture(scope="module")
def finder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_red_finder(tmp_path_factory.mktemp("finder") / "finder.onnx", imgsz=(320, 320))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-np.clip(x, -50, 50))))


def assert_matches(dets: Detections, reference: list[RefInstance], frame_hw: tuple[int, int]) -> None:
    """Ours must be the reference, in its order, less only instances whose reference mask is (nearly) empty.

    Matched: same class, box corners within 1 px, same score (near-equal scores may swap places: the two
    sides compute the input in different float orders), and the same mask: IoU >= 0.95, or every differing
    pixel on the other's 1-pixel boundary (the reference resizes twice, to the input and then to the frame,
    where the decoders sample once; on a narrow mask a column more or less is a big share), and IoU >= 0.98
    on average (our polygon rasterised against the reference mask's largest part, holes filled).
    """
    assert np.all(np.diff(dets.confidence) <= 0)
    unmatched = list(range(len(dets)))
    ious = []
    kernel = np.ones((3, 3), np.uint8)
    for ref in reference:
        ref_mask = largest_part_filled(ref.mask_hw)
        match = next(
            (
                k
                for k in unmatched[:4]
                if dets.class_id[k] == ref.class_id
                and np.allclose(dets.boxes_xyxy[k], ref.box_xyxy, atol=1)
                and abs(float(dets.confidence[k]) - ref.score) < 1e-5
            ),
            None,
        )
        if match is None:
            assert np.count_nonzero(ref_mask) < 20, f"reference instance ({ref.score}, {ref.box_xyxy}) missing"
            continue
        unmatched.remove(match)
        ours = rasterise(dets.polygons[match], frame_hw)
        ious.append(np.count_nonzero(ours & ref_mask) / max(1, np.count_nonzero(ours | ref_mask)))
        if ious[-1] < 0.95:
            near_ref = cv2.dilate(ref_mask.astype(np.uint8), kernel).astype(bool)
            near_ours = cv2.dilate(ours.astype(np.uint8), kernel).astype(bool)
            assert not np.any(ours & ~near_ref) and not np.any(ref_mask & ~near_ours), (match, ious[-1])
    assert not unmatched, "ours has instances the reference does not"
    assert len(ious) >= 5 and float(np.mean(ious)) >= 0.98


# ----------------------------------------------------------------------------------------------------------
# Independent references


def ref_prepare(frame: np.ndarray, mode: str, input_hw: tuple[int, int]) -> tuple[np.ndarray, dict[str, Any]]:
    """The textbook resize: ``letterbox`` (Ultralytics, grey 114) or ``stretch``; the 0..1 RGB tensor."""
    in_h, in_w = input_hw
    h, w = frame.shape[:2]
    if mode == "stretch":
        canvas = cv2.resize(frame, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
        geo = {"sx": in_w / w, "sy": in_h / h, "left": 0, "top": 0, "new_w": in_w, "new_h": in_h}
    else:
        r = min(in_h / h, in_w / w)
        new_w, new_h = round(w * r), round(h * r)
        left, top = round((in_w - new_w) / 2 - 0.1), round((in_h - new_h) / 2 - 0.1)
        canvas = np.full((in_h, in_w, 3), 114, np.uint8)
        canvas[top : top + new_h, left : left + new_w] = cv2.resize(frame, (new_w, new_h))
        geo = {"sx": r, "sy": r, "left": left, "top": top, "new_w": new_w, "new_h": new_h}
    return (canvas[:, :, ::-1].transpose(2, 0, 1)[None] / 255.0).astype(np.float32), geo


def to_frame_box(box: list[float], geo: dict[str, Any], frame_hw: tuple[int, int]) -> tuple[float, ...]:
    h, w = frame_hw
    x1, y1, x2, y2 = box
    fx = [min(max((x - geo["left"]) / geo["sx"], 0.0), w) for x in (x1, x2)]
    fy = [min(max((y - geo["top"]) / geo["sy"], 0.0), h) for y in (y1, y2)]
    return fx[0], fy[0], fx[1], fy[1]


def iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def ref_yolo(
    path: Path, kind: str, frame: np.ndarray, mode: str, conf: float, overlap: float, score: str = "product"
) -> list[RefInstance]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_h, in_w = session.get_inputs()[0].shape[2:]
    tensor, geo = ref_prepare(frame, mode, (in_h, in_w))
    output0, protos = session.run(["output0", "output1"], {"images": tensor})
    nm = protos.shape[1]
    candidates = []
    for row in output0[0]:
        if kind == "yolov5":
            cls_scores = row[5:-nm]
            c = int(np.argmax(cls_scores))
            s = float(row[4] * cls_scores[c]) if score == "product" else float(row[4])
            cx, cy, bw, bh = (float(v) for v in row[:4])
            box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        else:  # end2end: x1, y1, x2, y2, score, class
            c, s, box = round(float(row[5])), float(row[4]), [float(v) for v in row[:4]]
        if s > conf:
            candidates.append((s, c, box, row[-nm:]))
    candidates.sort(key=lambda t: -t[0])
    kept: list[tuple[float, int, list[float], np.ndarray]] = []
    for cand in candidates:
        if kind == "end2end" or all(k[1] != cand[1] or iou(k[2], cand[2]) <= overlap for k in kept):
            kept.append(cand)
    h, w = frame.shape[:2]
    cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5
    out = []
    for s, c, box, coeffs in kept[:300]:
        fb = to_frame_box(box, geo, (h, w))
        prob = sigmoid(np.tensordot(coeffs, protos[0], axes=1)).astype(np.float32)
        at_input = cv2.resize(prob, (in_w, in_h))
        content = at_input[geo["top"] : geo["top"] + geo["new_h"], geo["left"] : geo["left"] + geo["new_w"]]
        at_frame = cv2.resize(content, (w, h))
        in_box = ((cols >= fb[0]) & (cols <= fb[2]))[None, :] & ((rows >= fb[1]) & (rows <= fb[3]))[:, None]
        out.append(RefInstance(fb, s, c, (at_frame > 0.5) & in_box))  # type: ignore[arg-type]
    return out


def ref_rfdetr(path: Path, frame: np.ndarray, conf: float, num_names: int) -> list[RefInstance]:
    """RF-DETR as its own post-processing does it: stretch, ImageNet, top (query, class) pairs, masks > 0."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_h, in_w = session.get_inputs()[0].shape[2:]
    h, w = frame.shape[:2]
    rgb = cv2.resize(frame, (in_w, in_h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1] / 255.0
    tensor = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
    dets, labels, masks = session.run(["dets", "labels", "masks"], {"input": tensor})
    prob = sigmoid(labels[0])  # float32, as RF-DETR computes it (near-equal scores keep their order)
    slots = prob.shape[1]
    pairs = sorted(((float(prob.flat[i]), i) for i in range(prob.size)), key=lambda t: (-t[0], t[1]))[:300]
    out = []
    for s, i in pairs:
        q, c = divmod(i, slots)
        if s <= conf or c >= num_names:
            continue
        cx, cy, bw, bh = dets[0, q]
        box = (
            min(max((cx - bw / 2) * w, 0), w),
            min(max((cy - bh / 2) * h, 0), h),
            min(max((cx + bw / 2) * w, 0), w),
            min(max((cy + bh / 2) * h, 0), h),
        )
        mask = cv2.resize(masks[0, q], (w, h), interpolation=cv2.INTER_LINEAR) > 0
        out.append(RefInstance(box, s, c, mask))
    return out


# ----------------------------------------------------------------------------------------------------------
# Each architecture against its reference


FRAMES = [((360, 640), 1), ((600, 400), 2)]  # non-square both ways


@pytest.mark.parametrize(("frame_hw", "seed"), FRAMES, ids=["640x360", "400x600"])
@pytest.mark.parametrize(("conf", "overlap"), [(0.25, 0.45), (0.5, 0.3)])
def test_yolov5_seg_matches_reference(
    models: dict[str, Path], frame_hw: tuple[int, int], seed: int, conf: float, overlap: float
) -> None:
    model = OnnxModel(models["yolov5"])
    assert model.layout.kind == "yolov5" and model.class_names == NAMES
    frame = scene(*frame_hw, seed)
    dets = model.detect(frame, confidence=conf, overlap=overlap)
    assert_matches(dets, ref_yolo(models["yolov5"], "yolov5", frame, "letterbox", conf, overlap), frame_hw)


@pytest.mark.parametrize(("frame_hw", "seed"), FRAMES, ids=["640x360", "400x600"])
def test_yolov5_seg_in_a_roboflow_package_scores_by_objectness(
    models: dict[str, Path], tmp_path: Path, frame_hw: tuple[int, int], seed: int
) -> None:
    """Roboflow's server takes YOLOv5-seg's objectness as the confidence, and its package says Stretch to."""
    pre = {"resize": {"enabled": True, "format": "Stretch to", "width": 256, "height": 256}}
    package = write_package(tmp_path / "pkg", models["yolov5"], model_type="yolov5s-seg", class_names=NAMES,
                            preprocessing=pre, weights_name="yolov5s_weights.onnx")  # fmt: skip
    model = OnnxModel(package)
    assert model.layout.kind == "yolov5" and model.preprocessing.resize == "stretch"
    frame = scene(*frame_hw, seed)
    dets = model.detect(frame, confidence=0.5, overlap=0.45)
    reference = ref_yolo(models["yolov5"], "yolov5", frame, "stretch", 0.5, 0.45, score="objectness")
    assert_matches(dets, reference, frame_hw)


@pytest.mark.parametrize(("frame_hw", "seed"), FRAMES, ids=["640x360", "400x600"])
@pytest.mark.parametrize("conf", [0.3, 0.6])
def test_yolo26_end2end_matches_reference(
    models: dict[str, Path], frame_hw: tuple[int, int], seed: int, conf: float
) -> None:
    model = OnnxModel(models["end2end"])
    assert model.layout.kind == "end2end" and model.class_names == NAMES
    frame = scene(*frame_hw, seed)
    dets = model.detect(frame, confidence=conf, overlap=0.0)  # NMS-free: overlap does not apply
    reference = ref_yolo(models["end2end"], "end2end", frame, "letterbox", conf, 0.0)
    assert_matches(dets, reference, frame_hw)
    # The model's own duplicates are kept: overlapping same-class boxes survive, as YOLO26 returns them.
    assert len(dets) == len(model.detect(frame, confidence=conf, overlap=1.0))


@pytest.mark.parametrize(("frame_hw", "seed"), FRAMES, ids=["640x360", "400x600"])
@pytest.mark.parametrize("conf", [0.5, 0.8])
def test_rfdetr_seg_matches_reference(
    models: dict[str, Path], frame_hw: tuple[int, int], seed: int, conf: float
) -> None:
    model = OnnxModel(models["rfdetr"])
    assert model.layout.kind == "rfdetr" and model.input_hw == (192, 320)
    assert model.class_names == NAMES  # class_names.txt beside the file; the 4th (no-object) slot is not a class
    assert model.preprocessing.resize == "stretch" and model.preprocessing.mean == IMAGENET_MEAN
    frame = scene(*frame_hw, seed)
    dets = model.detect(frame, confidence=conf, overlap=0.3)
    assert_matches(dets, ref_rfdetr(models["rfdetr"], frame, conf, len(NAMES)), frame_hw)
    assert set(dets.class_id.tolist()) <= {0, 1, 2}


def test_max_detections_caps_every_format(models: dict[str, Path]) -> None:
    frame = scene(480, 640, 0)
    for path in models.values():
        model = OnnxModel(path)
        full = model.detect(frame, confidence=0.05, overlap=0.7)
        capped = model.detect(frame, confidence=0.05, overlap=0.7, max_detections=3)
        assert len(full) > 3 and len(capped) <= 3
        np.testing.assert_array_equal(capped.confidence, full.confidence[: len(capped)])
        assert len(model.detect(frame, confidence=0.05, overlap=0.7, max_detections=0)) == 0


# ----------------------------------------------------------------------------------------------------------
# Preprocessing: a known object at known pixels, on non-square frames, through each resize mode


RECT = (400, 90, 520, 230)  # x1, y1, x2, y2 (end exclusive) in a 640x360 frame
PORTRAIT_RECT = (60, 380, 200, 470)  # in a 300x560 frame


def red_frame(
    hw: tuple[int, int], rect: tuple[int, int, int, int], extra: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    frame = np.full((*hw, 3), 70, np.uint8)
    frame[::7] = 110  # some texture that is not red
    frame[rect[1] : rect[3], rect[0] : rect[2]] = (20, 30, 230)
    if extra is not None:
        frame[extra[1] : extra[3], extra[0] : extra[2]] = (20, 30, 230)
    return frame


def assert_found(dets: Detections, names: list[str], rect: tuple[int, int, int, int], tol: float) -> None:
    assert len(dets) == 1, dets.boxes_xyxy
    assert names[int(dets.class_id[0])] == "rectangle"
    assert dets.confidence[0] == pytest.approx(0.9, abs=0.1)
    np.testing.assert_allclose(dets.boxes_xyxy[0], rect, atol=tol)
    frame_hw = (1000, 1000)
    ours = rasterise(dets.polygons[0], frame_hw)
    truth = np.zeros(frame_hw, bool)
    truth[rect[1] : rect[3], rect[0] : rect[2]] = True
    assert np.count_nonzero(ours & truth) / np.count_nonzero(ours | truth) > 0.8


def resize(fmt: str) -> dict[str, Any]:
    return {"resize": {"enabled": True, "format": fmt, "width": 320, "height": 320}}


CASES: dict[str, tuple[str, str | None, dict[str, Any] | None]] = {
    # name: (format conversion, Roboflow model_type or None for a bare .onnx, PREPROCESSING)
    "yolov8-onnx-letterbox": ("yolov8", None, None),
    "yolov8-stretch": ("yolov8", "yolov8n-seg", resize("Stretch to")),
    "yolov8-fit-black": ("yolov8", "yolov8n-seg", resize("Fit (black edges) in")),
    "yolov8-fit-white": ("yolov8", "yolov8n-seg", resize("Fit (white edges) in")),
    "yolov8-fit-grey": ("yolov8", "yolov11n-seg", resize("Fit (grey edges) in")),
    "yolov5-onnx-letterbox": ("yolov5", None, None),
    "yolov5-fit-black": ("yolov5", "yolov5n-seg", resize("Fit (black edges) in")),
    "yolo26-onnx-letterbox": ("end2end", None, None),
    "yolo26-stretch": ("end2end", "yolo26n-seg", resize("Stretch to")),
    "rfdetr-onnx-stretch": ("rfdetr", None, None),
    "rfdetr-fit-grey": ("rfdetr", "rfdetr-seg-preview", resize("Fit (grey edges) in")),
}


@pytest.fixture(scope="module")
def case_models(finder: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], OnnxModel]:
    cache: dict[str, OnnxModel] = {}
    d = tmp_path_factory.mktemp("cases")

    def get(name: str, preprocessing: dict[str, Any] | None = None) -> OnnxModel:
        key = name + json.dumps(preprocessing, sort_keys=True)
        if key not in cache:
            kind, model_type, pre = CASES[name]
            weights = finder if kind == "yolov8" else convert(finder, d / f"{kind}.onnx", kind)  # type: ignore[arg-type]
            if model_type is None:
                (d / "class_names.txt").write_text("".join(f"{n}\n" for n in NAMES))  # beside the bare exports
                cache[key] = OnnxModel(weights)
            else:
                pkg = write_package(d / f"pkg{len(cache)}", weights, model_type=model_type, class_names=NAMES,
                                    preprocessing=preprocessing or pre)  # fmt: skip
                cache[key] = OnnxModel(pkg)
        return cache[key]

    return get  # type: ignore[return-value]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    ("frame_hw", "rect"), [((360, 640), RECT), ((560, 300), PORTRAIT_RECT)], ids=["landscape", "portrait"]
)
def test_known_object_comes_back_at_its_pixels(
    case_models: Callable[[str], OnnxModel], case: str, frame_hw: tuple[int, int], rect: tuple[int, int, int, int]
) -> None:
    model = case_models(case)
    scale = min(320 / frame_hw[0], 320 / frame_hw[1])
    dets = model.detect(red_frame(frame_hw, rect), confidence=0.4, overlap=0.3)
    assert_found(dets, model.class_names, rect, tol=1.5 / scale)


@pytest.mark.parametrize("case", ["yolov8-stretch", "yolo26-stretch", "rfdetr-fit-grey"])
def test_static_crop_sees_only_the_crop_and_answers_in_frame_pixels(
    case_models: Callable[[str], OnnxModel], case: str
) -> None:
    """Crop x 50-100 %, y 10-90 % of a 640x360 frame: the red object left of it is not seen."""
    pre = CASES[case][2]
    assert pre is not None
    pre = {**pre, "static-crop": {"enabled": True, "x_min": 50, "y_min": 10, "x_max": 100, "y_max": 90}}
    model = case_models(case, pre)
    assert model.preprocessing.static_crop is not None
    dets = model.detect(red_frame((360, 640), RECT, extra=(40, 40, 200, 300)), confidence=0.4, overlap=0.3)
    crop_scale = min(320 / 288, 320 / 320)
    assert_found(dets, model.class_names, RECT, tol=1.5 / crop_scale)
    assert dets.boxes_xyxy[0, 0] >= 320 and dets.polygons[0][:, 0].min() >= 320


def test_grayscale_package_sees_no_colour(case_models: Callable[[str], OnnxModel]) -> None:
    """With ``grayscale`` the model sees what the hosted one sees: no red, so nothing."""
    pre = {**resize("Stretch to"), "grayscale": {"enabled": True}}
    model = case_models("yolov8-stretch", pre)
    assert model.preprocessing.grayscale
    assert len(model.detect(red_frame((360, 640), RECT), confidence=0.4, overlap=0.3)) == 0
    assert len(case_models("yolov8-stretch").detect(red_frame((360, 640), RECT), confidence=0.4, overlap=0.3)) == 1


# ----------------------------------------------------------------------------------------------------------
# Recognition, packages, class names and clear errors


def test_roboflow_package_class_names(finder: Path, tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "a", finder, model_type="yolov8n-seg", class_map={"0": "x", "1": "y", "2": "z"},
                        preprocessing=resize("Stretch to"), preprocessing_as_string=False)  # fmt: skip
    assert OnnxModel(pkg).class_names == ["x", "y", "z"]  # CLASS_MAP, PREPROCESSING as a mapping
    (pkg / "class_names.txt").write_text("p\nq\nr\n")
    assert OnnxModel(pkg).class_names == ["p", "q", "r"]  # class_names.txt wins, as in Roboflow's server


def test_rfdetr_package_drops_roboflows_background_class(finder: Path, tmp_path: Path) -> None:
    """Roboflow's server removes ``background_class83422``'s slot and shifts the classes after it down."""
    weights = convert(finder, tmp_path / "rf.onnx", "rfdetr")
    pkg = write_package(tmp_path / "pkg", weights, model_type="rfdetr-seg-nano", preprocessing=resize("Stretch to"),
                        class_names=["background_class83422", "circle", "rectangle"])  # fmt: skip
    model = OnnxModel(pkg)
    assert model.class_names == ["circle", "rectangle"]
    dets = model.detect(red_frame((360, 640), RECT), confidence=0.4, overlap=0.3)
    assert dets.class_id.tolist() == [0]  # the finder's slot 1 is "circle" once slot 0 is gone


@pytest.mark.parametrize("as_string", [True, False])
def test_preprocessing_json_string_or_mapping(finder: Path, tmp_path: Path, as_string: bool) -> None:
    pre = {**resize("Fit (white edges) in"), "auto-orient": {"enabled": True}, "contrast": {"enabled": False}}
    pkg = write_package(tmp_path / "p", finder, model_type="yolov8s-seg", class_names=NAMES, preprocessing=pre,
                        preprocessing_as_string=as_string)  # fmt: skip
    spec = OnnxModel(pkg).preprocessing
    assert (spec.resize, spec.fill, spec.auto_orient, spec.contrast) == ("fit", 255, True, None)


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda f, d: convert(f, d / "m.onnx", "rfdetr-detect"), ["RF-DETR detection model", "dets [1, 300, 4]"]),
        (lambda f, d: d / "empty", ["no such model file", "no weights.onnx"]),
        (
            lambda f, d: write_package(d / "pkg", f, model_type="yolov8n", task="object-detection"),
            ["object-detection model", "instance-segmentation"],
        ),
        (
            lambda f, d: write_package(d / "pkg", f, model_type="rfdetr-seg-small"),
            ["model_type says RF-DETR", "output0 [1, 39, 300]"],
        ),
        (
            lambda f, d: write_package(
                d / "pkg", f, model_type="yolov8n-seg", preprocessing={"static-crop": {"x_min": 5}}
            ),
            ["environment.json", "static-crop"],
        ),
    ],
    ids=["rfdetr-detection-only", "empty-directory", "detection-package", "model-type-mismatch", "bad-static-crop"],
)
def test_unsupported_models_are_named(finder: Path, tmp_path: Path, make: Any, fragments: list[str]) -> None:
    (tmp_path / "empty").mkdir()
    path = make(finder, tmp_path)
    with pytest.raises(ModelError) as info:
        OnnxModel(path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_an_unrecognised_layout_lists_what_is_supported(tmp_path: Path) -> None:
    path = build_yolov8_seg(tmp_path / "m.onnx", anchors_first=True)  # [1, 128, 39]: no format has that
    with pytest.raises(ModelError, match="unsupported model layout") as info:
        OnnxModel(path)
    for fragment in ("YOLOv5-seg", "RF-DETR-seg", "Roboflow package", "output0 [1, 128, 39]"):
        assert fragment in str(info.value)


def test_config_accepts_a_package_directory(finder: Path, tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "pkg", finder, model_type="yolov8n-seg", class_names=NAMES)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"device_id: d\nstate_dir: {tmp_path}\ncameras: [{{name: c, source: 0}}]\n"
        f"inference: {{mode: local, local: {{model: {pkg}, providers: [tensorrt, cuda]}}}}\n"
    )
    settings = load_settings(config)
    assert settings.inference.local.model == pkg
    assert settings.inference.local.providers == ("tensorrt", "cuda")


# ----------------------------------------------------------------------------------------------------------
# Execution providers


def test_provider_names() -> None:
    cpu, cuda, trt = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
    assert onnx_providers(("cpu",)) == [cpu]
    assert onnx_providers(("cuda",)) == [cuda, cpu]
    assert onnx_providers(("cpu", "cuda")) == [cuda, cpu]  # CPU is always the last resort
    assert onnx_providers(("tensorrt",)) == [trt, cuda, cpu]  # CUDA runs what TensorRT can't
    assert onnx_providers(("tensorrt", "openvino", "cuda")) == [trt, "OpenVINOExecutionProvider", cuda, cpu]
    assert onnx_providers(["CUDAExecutionProvider", "cuda"]) == [cuda, cpu]
    from agent import config, daemon
    from agent.model import PROVIDER_NAMES

    assert daemon.onnx_providers is onnx_providers  # one mapping, used by the daemon
    assert set(config._PROVIDERS) == set(PROVIDER_NAMES)  # config accepts exactly the names that map


def test_unavailable_providers_fall_back_to_cpu_with_one_log_line(
    finder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with caplog.at_level(logging.INFO, logger="agent.model"):
        model = OnnxModel(finder, providers=["tensorrt", "cuda"])
    assert model.providers == ["CPUExecutionProvider"]
    lines = [r for r in caplog.records if "providers" in r.getMessage()]
    assert len(lines) == 1
    text = lines[0].getMessage()
    assert lines[0].levelno == logging.WARNING
    assert "requested TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider" in text
    assert "available here" in text and "CPUExecutionProvider" in text.split("available here")[1]
    assert "using CPUExecutionProvider" in text
    assert len(model.detect(red_frame((360, 640), RECT), confidence=0.4, overlap=0.3)) == 1
