"""The pure preprocessing steps (agent/preprocess.py) and the placement-aware decoders' building blocks,
each against numbers worked out independently here."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.decoders import decode_yolov8_placed
from agent.masks import logit_mask
from agent.placement import boxes_to_frame
from agent.postprocess import decode_yolov8_seg, letterbox
from agent.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Placement,
    Preprocessing,
    StaticCrop,
    apply_contrast,
    crop_bounds,
    letterbox_uint8,
    parse_roboflow_preprocessing,
    prepare,
    to_grayscale,
)
from tests.onnx_models import build_yolov8_seg
from tests.test_model import rasterise, scene

RESIZE = {"enabled": True, "format": "Fit (black edges) in", "width": 320, "height": 320}


# ----------------------------------------------------------------------------------------------------------
# environment.json's PREPROCESSING


def test_preprocessing_as_a_json_string_or_a_mapping_is_the_same() -> None:
    doc = {
        "resize": RESIZE,
        "static-crop": {"enabled": True, "x_min": 10, "y_min": 20, "x_max": 90, "y_max": 80},
        "contrast": {"enabled": True, "type": "Histogram Equalization"},
        "grayscale": {"enabled": True},
        "auto-orient": {"enabled": True},
    }
    from_dict, notes = parse_roboflow_preprocessing(doc)
    assert (from_dict, notes) == parse_roboflow_preprocessing(json.dumps(doc))
    assert notes == []
    assert from_dict == Preprocessing(
        resize="fit",
        fill=0,
        static_crop=StaticCrop(10, 20, 90, 80),
        contrast="Histogram Equalization",
        grayscale=True,
        auto_orient=True,
        input_hw=(320, 320),
    )


@pytest.mark.parametrize(
    ("fmt", "mode", "fill"),
    [
        ("Stretch to", "stretch", 0),
        ("Fit (black edges) in", "fit", 0),
        ("Fit (white edges) in", "fit", 255),
        ("Fit (grey edges) in", "fit", 114),
    ],
)
def test_resize_formats(fmt: str, mode: str, fill: int) -> None:
    spec, notes = parse_roboflow_preprocessing({"resize": {**RESIZE, "format": fmt}})
    assert (spec.resize, spec.fill, notes) == (mode, fill, [])


def test_what_roboflows_server_does_with_odd_values() -> None:
    spec, notes = parse_roboflow_preprocessing({"resize": {**RESIZE, "format": "Center Crop"}})
    assert spec.resize == "stretch" and "Center Crop" in notes[0]  # unknown format: Stretch to
    assert parse_roboflow_preprocessing({})[0].resize == "stretch"  # no resize: Stretch to
    disabled = {
        "resize": RESIZE,
        "grayscale": {"enabled": False},
        "static-crop": {"enabled": False, "x_min": 1, "y_min": 1, "x_max": 2, "y_max": 2},
    }
    spec, _ = parse_roboflow_preprocessing(disabled)
    assert not spec.grayscale and spec.static_crop is None
    spec, notes = parse_roboflow_preprocessing({"contrast": {"enabled": True, "type": "Sharpen"}})
    assert spec.contrast is None and "Sharpen" in notes[0]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a mapping"),
        ({"static-crop": {"enabled": True, "x_min": 5}}, "static-crop needs"),
        ({"static-crop": {"enabled": True, "x_min": 50, "y_min": 0, "x_max": 40, "y_max": 100}}, "within 0-100"),
    ],
)
def test_malformed_preprocessing_is_named(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_roboflow_preprocessing(value)


# ----------------------------------------------------------------------------------------------------------
# Steps


def test_static_crop_bounds_truncate_like_roboflow() -> None:
    crop = StaticCrop(x_min=12.5, y_min=33.3, x_max=87.5, y_max=99.9)
    # int(0.125 * 641) = 80, int(0.333 * 361) = 120, int(0.875 * 641) = 560, int(0.999 * 361) = 360
    assert crop_bounds((361, 641), crop) == (80, 120, 560, 360)
    assert crop_bounds((361, 641), None) == (0, 0, 641, 361)
    assert crop_bounds((2, 2), StaticCrop(10, 10, 20, 20)) == (0, 0, 1, 1)  # never empty


def test_grayscale_replaces_colour_by_grey_level() -> None:
    image = scene(40, 60, 3)
    out = to_grayscale(image)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_contrast_stretching_maps_percentiles_2_and_98_to_0_and_255() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(60, 160, size=(50, 70, 3)).astype(np.uint8)
    out = apply_contrast(image, "Contrast Stretching")
    low, high = np.percentile(image, 2), np.percentile(image, 98)
    expected = np.floor((np.clip(image.astype(np.float64), low, high) - low) / (high - low) * 255)
    assert np.abs(out.astype(np.int64) - expected).max() <= 1
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("kind", ["Histogram Equalization", "Adaptive Equalization"])
def test_equalisations_work_on_the_grey_image(kind: str) -> None:
    image = scene(64, 96, 4)
    out = apply_contrast(image, kind)  # type: ignore[arg-type]
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if kind == "Histogram Equalization":
        expected = cv2.equalizeHist(grey)
    else:
        expected = cv2.createCLAHE(clipLimit=0.03, tileGridSize=(8, 8)).apply(grey)  # Roboflow's parameters
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], expected)


def test_stretch_fills_the_input_and_scales_each_axis() -> None:
    frame = scene(363, 640, 0)
    tensor, placement = prepare(frame, Preprocessing(resize="stretch", fill=0), (320, 320))
    assert placement == Placement(0.5, 320 / 363, 0, 0, 0, 0, 640, 363, 320, 320)
    expected = cv2.resize(frame, (320, 320), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].transpose(2, 0, 1) / 255
    np.testing.assert_allclose(tensor[0], expected, atol=1e-6)


@pytest.mark.parametrize(("fill", "level"), [(0, 0.0), (255, 1.0), (114, 114 / 255)])
@pytest.mark.parametrize(
    ("frame_hw", "content"),
    [
        # 640x363: 320 / (640/363) = 181.5 -> int() 181 rows (Ultralytics would round to 182), top (320-181)//2 = 69
        ((363, 640), (0, 69, 320, 181)),
        # 300x560 portrait: int(320 * 300/560) = 171 columns, left (320-171)//2 = 74
        ((560, 300), (74, 0, 171, 320)),
    ],
)
def test_fit_keeps_the_aspect_and_pads_with_the_fill(
    fill: int, level: float, frame_hw: tuple[int, int], content: tuple[int, int, int, int]
) -> None:
    frame = np.full((*frame_hw, 3), 200, np.uint8)
    tensor, placement = prepare(frame, Preprocessing(resize="fit", fill=fill), (320, 320))
    left, top, width, height = content
    assert (placement.pad_x, placement.pad_y, placement.content_w, placement.content_h) == content
    inside = np.zeros((320, 320), bool)
    inside[top : top + height, left : left + width] = True
    np.testing.assert_allclose(tensor[0][:, inside], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(tensor[0][:, ~inside], level, atol=1e-6)


def test_ultralytics_letterbox_is_postprocess_letterbox() -> None:
    frame = scene(363, 640, 1)
    tensor, placement = prepare(frame, Preprocessing(), (256, 256))
    expected, params = letterbox(frame, (256, 256))
    np.testing.assert_array_equal(tensor, expected)
    assert (placement.scale_x, placement.pad_x, placement.pad_y) == (params.scale, params.pad_x, params.pad_y)


@pytest.mark.parametrize(
    ("frame_hw", "dst_hw", "decoded_hw"),
    [
        ((480, 640), (640, 640), None),  # 640x480 into 640: padded top and bottom
        ((720, 1280), (640, 640), None),
        ((1080, 1920), (640, 640), None),
        ((1080, 1920), (416, 416), (540, 960)),  # a JPEG decoded at 1/2: the true frame's params
        ((640, 640), (640, 640), None),  # already the input's size: no resize, no padding
        ((1920, 1080), (640, 640), None),  # portrait: padded left and right
        ((1, 1), (32, 32), None),  # a single pixel
        ((3, 1000), (64, 96), None),  # a strip: content 1 row high
        ((240, 320), (640, 640), None),  # smaller than the input: scaled up
    ],
)
def test_letterbox_uint8_is_the_float_letterbox_times_255_to_the_bit(
    frame_hw: tuple[int, int], dst_hw: tuple[int, int], decoded_hw: tuple[int, int] | None
) -> None:
    rng = np.random.default_rng(sum(frame_hw) + sum(dst_hw))
    image = rng.integers(0, 256, (*(decoded_hw or frame_hw), 3), dtype=np.uint8)  # every level, both ends
    tensor, params = letterbox(image, dst_hw, frame_hw=frame_hw if decoded_hw else None)
    tensor8, params8 = letterbox_uint8(image, dst_hw, frame_hw=frame_hw if decoded_hw else None)
    assert tensor8.dtype == np.uint8 and tensor8.shape == tensor.shape == (1, 3, *dst_hw)
    assert params8 == params
    np.testing.assert_array_equal(tensor8, np.rint(tensor * np.float32(255)).astype(np.uint8))
    np.testing.assert_array_equal(tensor8.astype(np.float32) * np.float32(1 / 255), tensor)  # and back, exactly
    if params.pad_y or params.pad_x:
        assert tensor8[0, :, 0, 0].tolist() == [114, 114, 114]  # the grey padding


def test_letterbox_uint8_refuses_what_is_not_a_bgr_frame() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox_uint8(np.zeros((8, 8), np.uint8), (16, 16))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox_uint8(np.zeros((8, 8, 3), np.float32), (16, 16))


def test_static_crop_then_contrast_then_grayscale_then_resize_then_normalise() -> None:
    frame = scene(200, 300, 2)
    spec = Preprocessing(
        resize="stretch",
        static_crop=StaticCrop(10, 20, 60, 90),
        contrast="Contrast Stretching",
        grayscale=True,
        auto_orient=True,  # frames carry no EXIF: nothing to turn
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    tensor, placement = prepare(frame, spec, (64, 96))
    part = frame[40:180, 30:180]  # int(0.2 * 200) .. int(0.9 * 200), int(0.1 * 300) .. int(0.6 * 300)
    low, high = np.percentile(part, (2, 98))
    stretched = ((np.clip(part.astype(np.float32), low, high) - low) * np.float32(255 / (high - low))).astype(np.uint8)
    grey = cv2.cvtColor(cv2.cvtColor(stretched, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    rgb = cv2.resize(grey, (96, 64), interpolation=cv2.INTER_LINEAR)[:, :, ::-1] / 255.0
    expected = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(tensor[0], expected, atol=1e-5)
    assert (placement.offset_x, placement.offset_y, placement.crop_w, placement.crop_h) == (30, 40, 150, 140)


@pytest.mark.parametrize("image", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_prepare_refuses_what_is_not_a_bgr_frame(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        prepare(image, Preprocessing(), (32, 32))


# ----------------------------------------------------------------------------------------------------------
# Decoder building blocks


def test_boxes_back_through_fit_and_crop_stay_inside_the_crop() -> None:
    placement = Placement(0.5, 0.5, 10, 20, 100, 50, 200, 100, 100, 50)  # input = (frame - (100, 50)) / 2 + pad
    boxes = np.array([[10, 20, 60, 45], [0, 0, 400, 400]], np.float32)
    np.testing.assert_allclose(boxes_to_frame(boxes, placement, (480, 640)), [[100, 50, 200, 100], [100, 50, 300, 150]])


def test_rfdetr_mask_is_sampled_only_near_positive_cells() -> None:
    logits = np.full((20, 30), -5.0, np.float32)
    logits[5:8, 10:14] = 5.0  # cells 10..13 x 5..7 of an 80x120 input, so input pixels 40..56 x 20..32
    placement = Placement(2.0, 2.0, 0, 0, 0, 0, 60, 40, 120, 80)  # a 60x40 frame stretched 2x
    mask, (x0, y0) = logit_mask(logits, placement, (80, 120), (40, 60))
    full = np.zeros((40, 60), np.uint8)
    full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
    expected = cv2.resize(logits, (60, 40), interpolation=cv2.INTER_LINEAR) > 0
    np.testing.assert_array_equal(full.astype(bool), expected)
    assert mask.size < 0.2 * full.size
    empty, _ = logit_mask(np.full((20, 30), -1.0, np.float32), placement, (80, 120), (40, 60))
    assert empty.size == 0


def test_placement_decoder_agrees_with_the_ultralytics_decoder(tmp_path: Path) -> None:
    """The general decoder (any resize) and postprocess's letterbox-only one give the same on a letterbox."""
    path = build_yolov8_seg(tmp_path / "m.onnx", imgsz=(256, 256), seed=2)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frame_hw in ((360, 640), (600, 400)):
        frame = scene(*frame_hw, 7)
        tensor, placement = prepare(frame, Preprocessing(), (256, 256))
        _, params = letterbox(frame, (256, 256))
        output0, protos = session.run(["output0", "output1"], {"images": tensor})
        a = decode_yolov8_seg(
            output0, protos, params=params, input_hw=(256, 256), frame_hw=frame_hw, confidence=0.25, overlap=0.45
        )
        b = decode_yolov8_placed(
            output0, protos, placement=placement, input_hw=(256, 256), frame_hw=frame_hw, confidence=0.25, overlap=0.45
        )
        assert len(a) == len(b) >= 5
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        ious = []
        for pa, pb in zip(a.polygons, b.polygons, strict=True):
            ra, rb = rasterise(pa, frame_hw), rasterise(pb, frame_hw)
            ious.append(np.count_nonzero(ra & rb) / max(1, np.count_nonzero(ra | rb)))
        assert min(ious) > 0.97 and float(np.mean(ious)) > 0.995
