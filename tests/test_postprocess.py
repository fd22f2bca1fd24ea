"""Tables of cases for the pure post-processing functions in agent.postprocess."""

from __future__ import annotations

import dataclasses
import itertools
import tracemalloc

import cv2
import numpy as np
import pytest

from agent import masks, nms
from agent.polygons import _covered_pixels
from agent.postprocess import (
    LETTERBOX_FILL,
    Detections,
    LetterboxParams,
    box_iou_xyxy,
    box_pixel_bounds,
    decode_yolov8_seg,
    letterbox,
    letterbox_content_hw,
    letterbox_params,
    mask_in_box,
    mask_polygon,
    nms_xyxy,
    unletterbox_boxes_xyxy,
    xywh_to_xyxy,
)

EMPTY_BOXES = np.zeros((0, 4), dtype=np.float32)


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------------------
# Detections


def test_detections_empty_has_typed_zero_length_arrays() -> None:
    empty = Detections.empty()
    assert len(empty) == 0
    assert empty.boxes_xyxy.shape == (0, 4) and empty.boxes_xyxy.dtype == np.float32
    assert empty.confidence.shape == (0,) and empty.confidence.dtype == np.float32
    assert empty.class_id.shape == (0,) and empty.class_id.dtype == np.int64
    assert empty.polygons == []


def test_detections_is_frozen() -> None:
    empty = Detections.empty()
    with pytest.raises(dataclasses.FrozenInstanceError):
        empty.polygons = []  # type: ignore[misc]


@pytest.mark.parametrize(
    ("n_boxes", "n_conf", "n_class", "n_poly"),
    [(1, 2, 2, 2), (2, 1, 2, 2), (2, 2, 1, 2), (2, 2, 2, 1)],
)
def test_detections_rejects_inconsistent_lengths(n_boxes: int, n_conf: int, n_class: int, n_poly: int) -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        Detections(
            boxes_xyxy=np.zeros((n_boxes, 4), np.float32),
            confidence=np.zeros(n_conf, np.float32),
            class_id=np.zeros(n_class, np.int64),
            polygons=[np.zeros((3, 2), np.float32)] * n_poly,
        )


# ----------------------------------------------------------------------------------------------------------
# Letterbox


@pytest.mark.parametrize(
    ("src_hw", "dst_hw", "expected"),
    [
        ((480, 640), (256, 256), (0.4, 0, 32)),
        ((720, 1280), (256, 256), (0.2, 0, 56)),
        ((640, 640), (640, 640), (1.0, 0, 0)),
        ((256, 256), (320, 320), (1.25, 0, 0)),  # upscaling
        ((100, 50), (256, 256), (2.56, 64, 0)),  # portrait
        ((480, 640), (192, 320), (0.4, 32, 0)),  # rectangular input, width padded
        ((720, 1280), (384, 640), (0.5, 0, 12)),
        ((10, 13), (32, 32), (32 / 13, 0, 3)),  # odd total padding (7): the smaller half first
        ((1, 1000), (64, 64), (0.064, 0, 31)),  # resized height rounds to 0 -> kept at 1 row
    ],
)
def test_letterbox_params(src_hw: tuple[int, int], dst_hw: tuple[int, int], expected: tuple[float, int, int]) -> None:
    params = letterbox_params(src_hw, dst_hw)
    assert params.scale == pytest.approx(expected[0])
    assert (params.pad_x, params.pad_y) == expected[1:]
    assert isinstance(params.pad_x, int) and isinstance(params.pad_y, int)


@pytest.mark.parametrize(("src_hw", "dst_hw"), [((0, 10), (32, 32)), ((10, 10), (32, 0)), ((-1, 5), (8, 8))])
def test_letterbox_params_rejects_empty_sizes(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        letterbox_params(src_hw, dst_hw)


@pytest.mark.parametrize(
    ("frame_hw", "dst_hw"), [((480, 640), (256, 256)), ((720, 1280), (192, 320)), ((50, 20), (64, 64))]
)
def test_letterbox_places_the_frame_centred_on_grey(frame_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
    frame = np.zeros((*frame_hw, 3), dtype=np.uint8)
    frame[..., 0] = 255  # pure blue in BGR
    tensor, params = letterbox(frame, dst_hw)
    assert tensor.shape == (1, 3, *dst_hw) and tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    assert params == letterbox_params(frame_hw, dst_hw)
    new_h = round(frame_hw[0] * params.scale)
    new_w = round(frame_hw[1] * params.scale)
    inside = tensor[0, :, params.pad_y : params.pad_y + new_h, params.pad_x : params.pad_x + new_w]
    np.testing.assert_allclose(inside[2], 1.0)  # blue lands in channel 2 (RGB order)
    np.testing.assert_allclose(inside[:2], 0.0)
    outside = np.ones(dst_hw, dtype=bool)
    outside[params.pad_y : params.pad_y + new_h, params.pad_x : params.pad_x + new_w] = False
    np.testing.assert_allclose(tensor[0][:, outside], LETTERBOX_FILL / 255.0, rtol=1e-6)


def test_letterbox_same_size_is_an_exact_rgb_copy() -> None:
    frame = np.random.default_rng(0).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    tensor, params = letterbox(frame, (32, 48))
    assert params == LetterboxParams(1.0, 0, 0)
    np.testing.assert_allclose(tensor[0], frame[..., ::-1].transpose(2, 0, 1) / 255.0, rtol=1e-6)


@pytest.mark.parametrize(
    "image",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32)],
    ids=["gray", "bgra", "float"],
)
def test_letterbox_rejects_non_bgr_images(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox(image, (32, 32))


@pytest.mark.parametrize(
    ("src_hw", "dst_hw", "expected"),
    [
        ((1080, 1920), (416, 416), (234, 416)),
        ((720, 1280), (416, 416), (234, 416)),
        ((480, 640), (416, 416), (312, 416)),
        ((1920, 1080), (416, 416), (416, 234)),  # portrait
        ((416, 416), (416, 416), (416, 416)),
        ((1081, 1921), (416, 416), (234, 416)),  # 234.09 rounds down
        ((1083, 1920), (416, 416), (235, 416)),  # 234.65 rounds up
        ((100, 50), (256, 256), (256, 128)),  # upscaling
        ((720, 1280), (384, 640), (360, 640)),  # rectangular input
        ((10, 13), (32, 32), (25, 32)),
        ((1, 1000), (64, 64), (1, 64)),  # never 0
    ],
)
def test_letterbox_content_hw(src_hw: tuple[int, int], dst_hw: tuple[int, int], expected: tuple[int, int]) -> None:
    assert letterbox_content_hw(src_hw, dst_hw) == expected
    # ... which is the rectangle letterbox() fills: the padding around it is the params' padding
    params = letterbox_params(src_hw, dst_hw)
    assert (dst_hw[1] - expected[1]) // 2 == params.pad_x and (dst_hw[0] - expected[0]) // 2 == params.pad_y


@pytest.mark.parametrize(("src_hw", "dst_hw"), [((0, 10), (32, 32)), ((10, 10), (0, 32)), ((-5, 5), (8, 8))])
def test_letterbox_content_hw_rejects_empty_sizes(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        letterbox_content_hw(src_hw, dst_hw)


def smooth_frame(hw: tuple[int, int]) -> np.ndarray:
    """A smooth BGR picture (gradients and a few soft blobs), the same at any resolution."""
    h, w = hw
    y, x = np.mgrid[0:h, 0:w]
    u, v = x / w, y / h
    img = np.stack(
        [
            120 + 100 * np.sin(2 * np.pi * u) * np.cos(np.pi * v),
            60 + 150 * u * v,
            200 - 150 * np.exp(-(((u - 0.6) / 0.15) ** 2 + ((v - 0.4) / 0.2) ** 2)),
        ],
        axis=-1,
    )
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize(
    ("frame_hw", "dst_hw"),
    [((1080, 1920), (416, 416)), ((720, 1280), (416, 416)), ((1081, 1921), (384, 640)), ((1920, 1080), (640, 640))],
)
def test_letterbox_of_a_reduced_decode_matches_the_full_frame(
    frame_hw: tuple[int, int], dst_hw: tuple[int, int], factor: int
) -> None:
    full = smooth_frame(frame_hw)
    reduced_hw = (-(-frame_hw[0] // factor), -(-frame_hw[1] // factor))  # as libjpeg's DCT scaling gives
    reduced = cv2.resize(full, (reduced_hw[1], reduced_hw[0]), interpolation=cv2.INTER_AREA)
    want, want_params = letterbox(full, dst_hw)
    got, params = letterbox(reduced, dst_hw, frame_hw=frame_hw)
    assert params == want_params == letterbox_params(frame_hw, dst_hw)
    assert got.shape == want.shape == (1, 3, *dst_hw) and got.dtype == np.float32
    assert float(np.abs(got - want).mean()) < 0.005  # 0..1 scale; measured <= 0.0005
    # the grey padding is exactly where the full frame's is: same content rectangle
    new_h, new_w = letterbox_content_hw(frame_hw, dst_hw)
    outside = np.ones(dst_hw, dtype=bool)
    outside[params.pad_y : params.pad_y + new_h, params.pad_x : params.pad_x + new_w] = False
    np.testing.assert_array_equal(got[0][:, outside], want[0][:, outside])
    # without frame_hw the reduced image would be letterboxed as a frame of its own (other numbers)
    assert letterbox(reduced, dst_hw)[1].scale == pytest.approx(params.scale * frame_hw[1] / reduced_hw[1], rel=0.01)


def test_letterbox_with_frame_hw_of_the_image_itself_changes_nothing() -> None:
    frame = smooth_frame((480, 640))
    plain, plain_params = letterbox(frame, (416, 416))
    same, same_params = letterbox(frame, (416, 416), frame_hw=(480, 640))
    assert plain_params == same_params
    np.testing.assert_array_equal(plain, same)


@pytest.mark.parametrize("frame_hw", [(0, 1920), (1080, 0), (-1080, 1920), (1080, -1), (0, 0)])
def test_letterbox_rejects_bad_frame_hw(frame_hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="frame_hw"):
        letterbox(np.zeros((270, 480, 3), np.uint8), (416, 416), frame_hw=frame_hw)


@pytest.mark.parametrize(
    ("boxes_in", "params", "frame_hw", "expected"),
    [
        (EMPTY_BOXES, LetterboxParams(0.4, 0, 32), (480, 640), EMPTY_BOXES),
        (boxes((0, 32, 256, 224)), LetterboxParams(0.4, 0, 32), (480, 640), boxes((0, 0, 640, 480))),
        (boxes((10, 42, 20, 52)), LetterboxParams(0.4, 0, 32), (480, 640), boxes((25, 25, 50, 50))),
        # Partly in the padding / past the edge: clipped to the frame.
        (boxes((-8, 20, 40, 60)), LetterboxParams(0.4, 0, 32), (480, 640), boxes((0, 0, 100, 70))),
        (boxes((200, 200, 300, 300)), LetterboxParams(0.4, 0, 32), (480, 640), boxes((500, 420, 640, 480))),
        # Entirely in the padding: collapses onto the frame edge (zero height).
        (boxes((10, 0, 50, 20)), LetterboxParams(0.4, 0, 32), (480, 640), boxes((25, 0, 125, 0))),
        (boxes((64, 0, 192, 128)), LetterboxParams(2.0, 64, 0), (64, 32), boxes((0, 0, 32, 64))),
    ],
)
def test_unletterbox_boxes_xyxy(
    boxes_in: np.ndarray, params: LetterboxParams, frame_hw: tuple[int, int], expected: np.ndarray
) -> None:
    out = unletterbox_boxes_xyxy(boxes_in, params, frame_hw)
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_unletterbox_inverts_the_letterbox_mapping() -> None:
    rng = np.random.default_rng(3)
    frame_hw = (720, 1280)
    params = letterbox_params(frame_hw, (256, 256))
    frame_boxes = np.sort(rng.uniform(0, 700, size=(20, 2, 2)), axis=1).reshape(20, 4)[:, [0, 2, 1, 3]]
    input_boxes = frame_boxes * params.scale + np.array([params.pad_x, params.pad_y] * 2)
    np.testing.assert_allclose(unletterbox_boxes_xyxy(input_boxes, params, frame_hw), frame_boxes, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------
# Boxes


@pytest.mark.parametrize(
    ("boxes_xywh", "expected"),
    [
        (EMPTY_BOXES, EMPTY_BOXES),
        (boxes((10, 20, 4, 6)), boxes((8, 17, 12, 23))),
        (boxes((0, 0, 0, 0)), boxes((0, 0, 0, 0))),
        (boxes((5, 5, 0, 10), (1.5, 2.5, 3, 1)), boxes((5, 0, 5, 10), (0, 2, 3, 3))),
    ],
)
def test_xywh_to_xyxy(boxes_xywh: np.ndarray, expected: np.ndarray) -> None:
    out = xywh_to_xyxy(boxes_xywh)
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (EMPTY_BOXES, EMPTY_BOXES, np.zeros((0, 0))),
        (EMPTY_BOXES, boxes((0, 0, 1, 1)), np.zeros((0, 1))),
        (boxes((0, 0, 1, 1), (0, 0, 2, 2)), EMPTY_BOXES, np.zeros((2, 0))),
        (boxes((0, 0, 10, 10)), boxes((0, 0, 10, 10)), [[1.0]]),
        (boxes((0, 0, 10, 10)), boxes((20, 20, 30, 30)), [[0.0]]),
        (boxes((0, 0, 10, 10)), boxes((10, 0, 20, 10)), [[0.0]]),  # touching edges
        (boxes((0, 0, 10, 10)), boxes((5, 0, 15, 10)), [[1 / 3]]),
        (boxes((0, 0, 10, 10)), boxes((0, 0, 10, 5)), [[0.5]]),  # contained
        (boxes((0, 0, 0, 10)), boxes((0, 0, 0, 10)), [[0.0]]),  # zero area: no union
        (boxes((0, 0, 10, 10), (5, 5, 15, 15)), boxes((5, 5, 15, 15)), [[25 / 175], [1.0]]),
    ],
)
def test_box_iou_xyxy(a: np.ndarray, b: np.ndarray, expected: object) -> None:
    iou = box_iou_xyxy(a, b)
    expected_arr = np.asarray(expected, dtype=np.float64)
    assert iou.shape == expected_arr.shape
    np.testing.assert_allclose(iou, expected_arr)


# ----------------------------------------------------------------------------------------------------------
# NMS


@pytest.mark.parametrize(
    ("boxes_xyxy", "scores", "class_id", "iou", "expected"),
    [
        pytest.param(EMPTY_BOXES, [], [], 0.5, [], id="empty"),
        pytest.param(boxes((0, 0, 10, 10)), [0.3], [0], 0.5, [0], id="one"),
        pytest.param(boxes(*[(0, 0, 10, 10)] * 3), [0.5, 0.9, 0.7], [1, 1, 1], 0.5, [1], id="identical"),
        pytest.param(
            boxes((0, 0, 10, 10), (20, 0, 30, 10), (0, 20, 10, 30)),
            [0.2, 0.9, 0.5],
            [0, 0, 0],
            0.0,
            [1, 2, 0],
            id="disjoint-kept-in-score-order",
        ),
        pytest.param(boxes((0, 0, 10, 10), (0, 0, 10, 10)), [0.9, 0.8], [0, 1], 0.5, [0, 1], id="same-box-other-class"),
        pytest.param(
            boxes((0, 0, 10, 10), (0, 0, 10, 5)), [0.9, 0.8], [0, 0], 0.5, [0, 1], id="iou-equal-to-threshold-kept"
        ),
        pytest.param(boxes((0, 0, 10, 10), (0, 0, 10, 5)), [0.9, 0.8], [0, 0], 0.49, [0], id="iou-just-over-threshold"),
        pytest.param(
            boxes((0, 0, 10, 10), (0, 0, 10, 10)), [0.9, 0.8], [0, 0], 1.0, [0, 1], id="threshold-1-keeps-all"
        ),
        pytest.param(
            # b overlaps a (suppressed), c overlaps only b: c survives because b was suppressed first.
            boxes((0, 0, 10, 10), (5, 0, 15, 10), (10, 0, 20, 10)),
            [0.9, 0.8, 0.7],
            [0, 0, 0],
            0.3,
            [0, 2],
            id="chain",
        ),
        pytest.param(
            boxes((0, 0, 10, 10), (1, 0, 11, 10), (0, 0, 10, 10)),
            [0.5, 0.5, 0.5],
            [0, 0, 0],
            0.5,
            [0],
            id="ties-keep-input-order",
        ),
        pytest.param(
            boxes((0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10)),
            [0.1, 0.4, 0.3, 0.2],
            [0, 1, 0, 1],
            0.5,
            [1, 2],
            id="per-class",
        ),
        pytest.param(boxes((0, 0, 0, 0), (0, 0, 0, 0)), [0.9, 0.8], [0, 0], 0.0, [0, 1], id="zero-area-boxes"),
    ],
)
def test_nms_xyxy(
    boxes_xyxy: np.ndarray, scores: list[float], class_id: list[int], iou: float, expected: list[int]
) -> None:
    keep = nms_xyxy(boxes_xyxy, np.array(scores, np.float32), np.array(class_id, np.int64), iou)
    assert keep.dtype == np.int64
    assert keep.tolist() == expected


@pytest.mark.parametrize(("max_keep", "expected"), [(None, [1, 2, 0]), (2, [1, 2]), (1, [1]), (0, [])])
def test_nms_xyxy_max_keep(max_keep: int | None, expected: list[int]) -> None:
    disjoint = boxes((0, 0, 10, 10), (20, 0, 30, 10), (0, 20, 10, 30))
    keep = nms_xyxy(disjoint, np.array([0.2, 0.9, 0.5]), np.zeros(3, np.int64), 0.5, max_keep=max_keep)
    assert keep.tolist() == expected


def test_nms_xyxy_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        nms_xyxy(boxes((0, 0, 1, 1)), np.array([0.5, 0.4]), np.array([0]), 0.5)


def _nms_loops(boxes_xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray, iou: float) -> list[int]:
    def pair_iou(a: np.ndarray, b: np.ndarray) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda j: -scores[j]):
        if all(class_id[k] != class_id[i] or pair_iou(boxes_xyxy[k], boxes_xyxy[i]) <= iou for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize(
    ("seed", "iou", "num_classes", "max_keep"),
    [
        *itertools.product(range(3), (0.1, 0.45, 0.7), (1, 3, 40), (None,)),
        *itertools.product(range(3), (0.45,), (1, 3, 40), (1, 10, 25)),
    ],
)
def test_nms_xyxy_matches_a_plain_loop(seed: int, iou: float, num_classes: int, max_keep: int | None) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    xy = rng.uniform(0, 200, size=(n, 2))
    wh = rng.uniform(5, 60, size=(n, 2))
    boxes_xyxy = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = np.round(rng.uniform(0, 1, n), 2).astype(np.float32)  # rounded: many ties
    class_id = rng.integers(0, num_classes, n)
    expected = _nms_loops(boxes_xyxy.astype(np.float64), scores, class_id, iou)
    keep = nms_xyxy(boxes_xyxy, scores, class_id, iou, max_keep=max_keep)
    assert keep.tolist() == expected[:max_keep]


@pytest.mark.parametrize(("seed", "num_classes", "max_keep"), [(0, 1, None), (1, 3, 10), (2, 40, None)])
def test_nms_xyxy_per_kept_box_fallback_gives_the_same_result(
    monkeypatch: pytest.MonkeyPatch, seed: int, num_classes: int, max_keep: int | None
) -> None:
    """Past _NMS_PAIR_LIMIT overlapping pairs nms_xyxy loops per kept box: the same answer, ties included."""
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 100, size=(n, 2))
    wh = rng.uniform(0, 60, size=(n, 2))
    wh[:20] = 0.0  # boxes without area never suppress
    boxes_xyxy = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = np.round(rng.uniform(0, 1, n), 2).astype(np.float32)
    class_id = rng.integers(0, num_classes, n)
    swept = nms_xyxy(boxes_xyxy, scores, class_id, 0.45, max_keep=max_keep)
    monkeypatch.setattr(nms, "_NMS_PAIR_LIMIT", 0)
    looped = nms_xyxy(boxes_xyxy, scores, class_id, 0.45, max_keep=max_keep)
    expected = _nms_loops(boxes_xyxy.astype(np.float64), scores, class_id, 0.45)[:max_keep]
    assert swept.tolist() == looped.tolist() == expected


# ----------------------------------------------------------------------------------------------------------
# Masks and polygons


@pytest.mark.parametrize(
    ("box", "frame_hw", "expected"),
    [
        ((10, 20, 50, 60), (100, 100), (10, 20, 50, 60)),
        ((10.4, 20.6, 49.6, 60.4), (100, 100), (10, 21, 50, 60)),  # x centres 10.5..49.5, y 21.5..59.5
        ((10.6, 20.0, 11.4, 21.0), (100, 100), (11, 20, 11, 21)),  # no pixel centre across: empty width
        ((5.0, 5.0, 6.0, 6.0), (100, 100), (5, 5, 6, 6)),  # one pixel
        ((5.5, 5.5, 5.5, 5.5), (100, 100), (5, 5, 6, 6)),  # a point on a pixel centre
        ((30, 30, 30, 60), (100, 100), (30, 30, 30, 60)),  # zero width
        ((30, 30, 60, 30), (100, 100), (30, 30, 60, 30)),  # zero height
        ((-20, -5, 40, 30), (100, 100), (0, 0, 40, 30)),  # partly outside
        ((90, 80, 140, 120), (100, 120), (90, 80, 120, 100)),  # partly outside (bottom right)
        ((200, 200, 300, 300), (100, 100), (100, 100, 100, 100)),  # entirely outside: empty
        ((float("nan"), 0, 10, 10), (100, 100), (0, 0, 0, 0)),
    ],
)
def test_box_pixel_bounds(
    box: tuple[float, float, float, float], frame_hw: tuple[int, int], expected: tuple[int, int, int, int]
) -> None:
    assert box_pixel_bounds(np.array(box, np.float32), frame_hw) == expected


def _mask(shape: tuple[int, int], *slices: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for rows, cols in slices:
        mask[rows, cols] = 1
    return mask


@pytest.mark.parametrize(
    ("mask", "expected_bounds"),
    [
        pytest.param(np.zeros((0, 0), np.uint8), None, id="empty-array"),
        pytest.param(np.zeros((8, 8), np.uint8), None, id="all-zeros"),
        pytest.param(_mask((8, 8), (slice(3, 4), slice(3, 4))), None, id="single-pixel"),
        pytest.param(_mask((8, 8), (slice(3, 4), slice(1, 7))), None, id="horizontal-1px-line"),
        pytest.param(_mask((8, 8), (slice(0, 8), slice(2, 3))), None, id="vertical-1px-line"),
        pytest.param(np.eye(8, dtype=np.uint8), None, id="diagonal-1px-line"),
        pytest.param(np.ones((1, 9), np.uint8), None, id="one-row-mask"),
        pytest.param(_mask((8, 8), (slice(2, 4), slice(2, 4))), (2, 2, 3, 3), id="2x2-block"),
        pytest.param(np.ones((5, 7), np.uint8), (0, 0, 6, 4), id="full-mask-touching-borders"),
        pytest.param(
            _mask((20, 20), (slice(1, 4), slice(1, 4)), (slice(8, 18), slice(6, 19))), (6, 8, 18, 17), id="two-parts"
        ),
        pytest.param(
            _mask((20, 20), (slice(1, 1 + 12), slice(1, 2)), (slice(15, 19), slice(10, 14))),
            (10, 15, 13, 18),
            id="two-parts-long-thin-loses-to-compact",  # line: 12 px, block: 16 px
        ),
        pytest.param(
            _mask((10, 10), (slice(1, 9), slice(1, 9))) - _mask((10, 10), (slice(3, 6), slice(3, 6))),
            (1, 1, 8, 8),
            id="ring-outer-contour-only",
        ),
    ],
)
def test_mask_polygon(mask: np.ndarray, expected_bounds: tuple[int, int, int, int] | None) -> None:
    polygon = mask_polygon(mask)
    assert polygon.dtype == np.float32 and polygon.ndim == 2 and polygon.shape[1] == 2
    if expected_bounds is None:
        assert polygon.shape == (0, 2)
        return
    assert polygon.shape[0] >= 3
    x0, y0, x1, y1 = expected_bounds
    assert (polygon[:, 0].min(), polygon[:, 1].min(), polygon[:, 0].max(), polygon[:, 1].max()) == (x0, y0, x1, y1)


def test_mask_polygon_largest_part_counts_pixels_not_polygon_area() -> None:
    """A 2x30 strip (60 px, polygon area 29) beats a 7x7 block (49 px, polygon area 36)."""
    mask = _mask((40, 40), (slice(2, 4), slice(2, 32)), (slice(20, 27), slice(20, 27)))
    polygon = mask_polygon(mask)
    assert (polygon[:, 0].min(), polygon[:, 0].max(), polygon[:, 1].min(), polygon[:, 1].max()) == (2, 31, 2, 3)


@pytest.mark.parametrize("seed", range(5))
def test_covered_pixels_counts_the_filled_outer_contours(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = np.zeros((120, 160), np.uint8)
    for _ in range(12):
        centre = (int(rng.integers(0, 160)), int(rng.integers(0, 120)))
        axes = (int(rng.integers(0, 25)), int(rng.integers(0, 25)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    mask[rng.integers(0, 120, 30), rng.integers(0, 160, 30)] = 1  # single pixels
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour, covered in zip(contours, _covered_pixels(contours), strict=True):
        filled = np.zeros_like(mask)
        cv2.drawContours(filled, [contour], -1, 1, thickness=-1)
        assert covered == pytest.approx(np.count_nonzero(filled), abs=0.5)


def test_mask_polygon_rasterises_back_to_the_largest_part_with_holes_filled() -> None:
    mask = np.zeros((40, 50), np.uint8)
    cv2.circle(mask, (30, 20), 12, 1, -1)
    cv2.circle(mask, (30, 20), 4, 0, -1)  # a hole
    cv2.rectangle(mask, (1, 1), (5, 5), 1, -1)  # a smaller part
    polygon = mask_polygon(mask, offset_xy=(100, 200))
    filled = np.zeros((240, 150), np.uint8)
    cv2.fillPoly(filled, [np.round(polygon).astype(np.int32)], 1)
    expected = np.zeros_like(filled)
    cv2.circle(expected[200:, 100:], (30, 20), 12, 1, -1)
    assert np.array_equal(filled, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.float32, np.int32])
def test_mask_polygon_accepts_any_nonzero_mask(dtype: type) -> None:
    mask = _mask((6, 6), (slice(1, 4), slice(1, 5))).astype(dtype)
    polygon = mask_polygon(mask, (0.5, -1.0))
    assert sorted(map(tuple, polygon.tolist())) == [(1.5, 0.0), (1.5, 2.0), (4.5, 0.0), (4.5, 2.0)]


def test_mask_polygon_rejects_3d_masks() -> None:
    with pytest.raises(ValueError):
        mask_polygon(np.ones((3, 3, 3), np.uint8))


def _protos_full(value: float, hw: tuple[int, int] = (16, 16), num_masks: int = 4) -> np.ndarray:
    protos = np.zeros((num_masks, *hw), np.float32)
    protos[0] = value
    return protos


UNIT_COEFFS = np.array([1, 0, 0, 0], np.float32)
IDENTITY = LetterboxParams(1.0, 0, 0)


@pytest.mark.parametrize(
    ("box", "frame_hw", "expected_shape", "expected_offset"),
    [
        ((10, 20, 50, 40), (64, 64), (20, 40), (10, 20)),
        ((0, 0, 64, 64), (64, 64), (64, 64), (0, 0)),
        ((30, 30, 30, 50), (64, 64), (20, 0), (30, 30)),  # zero width
        ((30, 30, 50, 30), (64, 64), (0, 20), (30, 30)),  # zero height
        ((-10, 50, 20, 80), (64, 64), (14, 20), (0, 50)),  # partly outside the frame: clipped
        ((5, 5, 6, 6), (64, 64), (1, 1), (5, 5)),  # single pixel
    ],
)
def test_mask_in_box_covers_the_box_pixels(
    box: tuple[float, float, float, float],
    frame_hw: tuple[int, int],
    expected_shape: tuple[int, int],
    expected_offset: tuple[int, int],
) -> None:
    mask, offset = mask_in_box(UNIT_COEFFS, _protos_full(10.0), np.array(box), IDENTITY, (64, 64), frame_hw)
    assert mask.dtype == np.uint8 and mask.shape == expected_shape and offset == expected_offset
    assert mask.all()  # logit +10 everywhere: the whole box
    mask, _ = mask_in_box(UNIT_COEFFS, _protos_full(-10.0), np.array(box), IDENTITY, (64, 64), frame_hw)
    assert not mask.any()


def test_mask_in_box_maps_prototypes_through_the_letterbox() -> None:
    """A half-plane prototype (logit = x_input - 100) must cut the frame at the letterboxed x."""
    input_hw = (256, 256)
    frame_hw = (480, 640)
    params = letterbox_params(frame_hw, input_hw)  # scale 0.4, pad_y 32
    proto_hw = (64, 64)
    x_input = (np.arange(proto_hw[1]) + 0.5) * 4.0
    protos = np.zeros((2, *proto_hw), np.float32)
    protos[0] = x_input[None, :] - 100.0
    box = np.array([100.0, 50.0, 500.0, 400.0])
    mask, (x0, y0) = mask_in_box(np.array([1.0, 0.0]), protos, box, params, input_hw, frame_hw)
    assert (x0, y0) == (100, 50) and mask.shape == (350, 400)
    cols = np.flatnonzero(mask.any(axis=0)) + x0
    # Frame x where x_input = 100: (100 - pad_x) / scale = 250; sigmoid > 0.5 right of it.
    assert abs(cols.min() - 250) <= 1
    assert cols.max() == 499 and mask[:, cols - x0].all()


def _naive_full_frame_probs(
    coeffs: np.ndarray,
    protos: np.ndarray,
    params: LetterboxParams,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> np.ndarray:
    """Ultralytics' way: upsample to the input, cut the padding off, resize to the frame."""
    new_h, new_w = round(frame_hw[0] * params.scale), round(frame_hw[1] * params.scale)
    probs = (1 / (1 + np.exp(-np.clip(np.tensordot(coeffs, protos, axes=1), -50, 50)))).astype(np.float32)
    upsampled = cv2.resize(probs, (input_hw[1], input_hw[0]), interpolation=cv2.INTER_LINEAR)
    unpadded = upsampled[params.pad_y : params.pad_y + new_h, params.pad_x : params.pad_x + new_w]
    return np.asarray(cv2.resize(unpadded, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_LINEAR))


SMOOTH_PROTOS = np.ascontiguousarray(
    cv2.GaussianBlur(np.random.default_rng(7).normal(0, 1, size=(48, 80, 8)).astype(np.float32), (0, 0), 3).transpose(
        2, 0, 1
    )
    * 4
)


@pytest.mark.parametrize(
    "box",
    [
        (100.0, 100.0, 480.0, 320.0),
        (0.0, 0.0, 1280.0, 720.0),  # the whole frame
        (0.0, 0.0, 200.0, 150.0),  # top-left corner: both edge bands
        (1000.3, 600.7, 1280.0, 720.0),  # bottom-right corner
        (500.0, 717.6, 900.0, 720.0),  # wholly inside the bottom edge band (2 rows)
        (1279.2, 100.0, 1280.0, 300.0),  # one column at the right edge
        (640.0, 0.0, 700.0, 0.9),  # one row at the top edge
        (333.3, 222.2, 334.4, 223.3),  # one pixel
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_in_box_equals_full_frame_upsampling(box: tuple[float, float, float, float], seed: int) -> None:
    """Decoding only the box gives the naive full-frame mask cropped to the box, frame edges included."""
    input_hw, frame_hw = (192, 320), (720, 1280)
    params = letterbox_params(frame_hw, input_hw)  # scale 0.25, pad_y 6
    coeffs = np.random.default_rng(seed).normal(0, 1, 8).astype(np.float32)
    mask, (x0, y0) = mask_in_box(coeffs, SMOOTH_PROTOS, np.array(box), params, input_hw, frame_hw)
    assert (x0, y0, x0 + mask.shape[1], y0 + mask.shape[0]) == box_pixel_bounds(np.array(box), frame_hw)
    full = _naive_full_frame_probs(coeffs, SMOOTH_PROTOS, params, input_hw, frame_hw)
    expected = full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] > 0.5
    disagree = np.count_nonzero(expected != mask.astype(bool))
    # Two linear resamplings vs one differ only where the probability is within a hair of 0.5.
    assert disagree <= max(2, 0.01 * np.count_nonzero(expected)), disagree


@pytest.mark.parametrize(
    ("frame_hw", "input_hw"),
    [((720, 1280), (192, 320)), ((1080, 1920), (640, 640)), ((480, 640), (320, 320)), ((500, 700), (256, 256))],
)
def test_mask_in_box_resize_matmul_and_warp_sample_alike(
    monkeypatch: pytest.MonkeyPatch, frame_hw: tuple[int, int], input_hw: tuple[int, int]
) -> None:
    """cv2.resize (whole samples per prototype cell), the separable matmuls and cv2.warpAffine (any scale)
    give the same masks, frame edges included."""
    params = letterbox_params(frame_hw, input_hw)
    proto_hw = (input_hw[0] // 4, input_hw[1] // 4)
    protos = np.ascontiguousarray(
        cv2.resize(SMOOTH_PROTOS.transpose(1, 2, 0), (proto_hw[1], proto_hw[0])).transpose(2, 0, 1)
    )
    rng = np.random.default_rng(3)
    h, w = frame_hw
    boxes = [np.array([0.0, 0.0, w, h]), np.array([0.0, h - 1.5, w / 3, h]), np.array([w - 0.7, 10.0, w, h / 2])]
    for _ in range(12):
        x1, y1 = rng.uniform(-20, w), rng.uniform(-20, h)
        boxes.append(np.array([x1, y1, x1 + rng.uniform(1, w / 2), y1 + rng.uniform(1, h / 2)]))
    cases = [(rng.normal(0, 1, 8).astype(np.float32), box) for box in boxes]
    resized = [mask_in_box(c, protos, b, params, input_hw, frame_hw) for c, b in cases]
    monkeypatch.setattr(masks, "_whole_reciprocal", lambda step: 0)
    multiplied = [mask_in_box(c, protos, b, params, input_hw, frame_hw) for c, b in cases]
    monkeypatch.setattr(masks, "_SEPARABLE_MAX_CELLS", 0)
    warped = [mask_in_box(c, protos, b, params, input_hw, frame_hw) for c, b in cases]
    for (a, offset_a), (m, offset_m), (b, offset_b) in zip(resized, multiplied, warped, strict=True):
        assert offset_a == offset_m == offset_b and a.shape == m.shape == b.shape
        # All three sample the same positions; warpAffine rounds them to 1/32 of a cell, the others do not.
        assert np.count_nonzero(a != b) <= max(2, 0.002 * a.size)
        assert np.count_nonzero(a != m) <= max(2, 0.0005 * a.size)


@pytest.mark.parametrize(
    ("frame_len", "input_len", "proto_len"), [(640, 416, 104), (1920, 640, 160), (1081, 320, 80), (7, 64, 16)]
)
def test_axis_weights_interpolate_each_pixel_centre(frame_len: int, input_len: int, proto_len: int) -> None:
    """Each frame pixel: two neighbouring prototype cells weighted to sum 1, at its centre's mapped position;
    pixels whose centres fall outside the content repeat the nearest one inside."""
    scale = input_len / frame_len / 1.25  # content 80 % of the input: padding on both sides
    content = round(frame_len * scale)
    pad = (input_len - content) // 2
    weights = masks._axis_weights(frame_len, scale, pad, content, proto_len, input_len)
    assert weights.shape == (frame_len, proto_len) and not weights.flags.writeable
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    for u in range(frame_len):
        nonzero = np.flatnonzero(weights[u])
        assert 1 <= nonzero.size <= 2 and np.ptp(nonzero) <= 1
        centre = (u + 0.5) * scale + pad
        if pad + 0.5 <= centre <= pad + content - 0.5:  # inside the content: its own position, unclamped
            position = centre * proto_len / input_len - 0.5
            mapped = float(weights[u] @ np.arange(proto_len))
            assert mapped == pytest.approx(min(max(position, 0.0), proto_len - 1.0), abs=1e-5)
    inside = [u for u in range(frame_len) if pad + 0.5 <= (u + 0.5) * scale + pad <= pad + content - 0.5]
    assert np.array_equal(weights[0], weights[inside[0]]) and np.array_equal(weights[-1], weights[inside[-1]])


def test_mask_in_box_edge_band_repeats_the_last_content_row() -> None:
    """Frame rows mapping past the content's last pixel centre take that row's value, not the padding's."""
    input_hw, frame_hw = (256, 256), (720, 1280)
    params = letterbox_params(frame_hw, input_hw)  # scale 0.2, content input rows 56..199
    protos = np.zeros((1, 64, 64), np.float32)
    protos[0] = 2.5
    protos[0, 50:] = -100.0  # prototype rows from input y = 202 (the padding) say "no"
    coeffs = np.ones(1, np.float32)
    # Last content centre, input y 199.5 = prototype 49.375: p = 0.924 * 0.625 = 0.58, "yes". Frame row 719
    # unclamped would sample input y 199.9 = prototype 49.475: p = 0.924 * 0.525 = 0.485, "no".
    mask, _ = mask_in_box(coeffs, protos, np.array([0.0, 700.0, 1280.0, 720.0]), params, input_hw, frame_hw)
    assert mask.shape == (20, 1280) and mask.all()
    band, _ = mask_in_box(coeffs, protos, np.array([0.0, 718.0, 1280.0, 720.0]), params, input_hw, frame_hw)
    assert band.shape == (2, 1280) and band.all()
    full = _naive_full_frame_probs(coeffs, protos, params, input_hw, frame_hw)
    assert (full[700:] > 0.5).all()  # the naive way agrees


# ----------------------------------------------------------------------------------------------------------
# decode_yolov8_seg on hand-made outputs


NUM_CLASSES = 3
NUM_MASKS = 4
INPUT_HW = (64, 64)


def _outputs(rows: list[tuple[tuple[float, float, float, float], list[float], float]]) -> tuple[np.ndarray, ...]:
    """output0 (1, 4+3+4, N) from (cx, cy, w, h), class scores, mask logit; protos: plane 0 = 1."""
    output0 = np.zeros((1, 4 + NUM_CLASSES + NUM_MASKS, len(rows)), np.float32)
    for i, (xywh, scores, logit) in enumerate(rows):
        output0[0, 0:4, i] = xywh
        output0[0, 4 : 4 + NUM_CLASSES, i] = scores
        output0[0, 4 + NUM_CLASSES, i] = logit
    protos = np.zeros((1, NUM_MASKS, INPUT_HW[0] // 4, INPUT_HW[1] // 4), np.float32)
    protos[0, 0] = 1.0
    return output0, protos


def _decode(
    output0: np.ndarray,
    protos: np.ndarray,
    *,
    confidence: float = 0.25,
    overlap: float = 0.5,
    max_detections: int = 300,
    params: LetterboxParams = IDENTITY,
    frame_hw: tuple[int, int] = INPUT_HW,
) -> Detections:
    return decode_yolov8_seg(
        output0,
        protos,
        params=params,
        input_hw=INPUT_HW,
        frame_hw=frame_hw,
        confidence=confidence,
        overlap=overlap,
        max_detections=max_detections,
    )


SCENE = [
    ((20, 20, 20, 20), [0.9, 0.1, 0.0], 10.0),  # 0: class 0
    ((21, 20, 20, 20), [0.2, 0.8, 0.0], 10.0),  # 1: same place, class 1
    ((22, 21, 20, 20), [0.7, 0.0, 0.0], 10.0),  # 2: overlaps 0, class 0 -> suppressed
    ((48, 48, 10, 10), [0.0, 0.0, 0.5], 10.0),  # 3: class 2, exactly at 0.5
    ((50, 10, 8, 8), [0.0, 0.6, 0.3], -10.0),  # 4: empty mask -> dropped
    ((10, 50, 0, 12), [0.95, 0.0, 0.0], 10.0),  # 5: zero width -> dropped
    ((40, 30.5, 6, 0.8), [0.3, 0.0, 0.0], 10.0),  # 6: one pixel row high -> a line -> dropped
]


@pytest.mark.parametrize(
    ("confidence", "overlap", "max_detections", "expected_classes", "expected_scores"),
    [
        (0.25, 0.5, 300, [0, 1, 2], [0.9, 0.8, 0.5]),
        (0.5, 0.5, 300, [0, 1], [0.9, 0.8]),  # 0.5 is not > 0.5
        (0.49, 0.5, 300, [0, 1, 2], [0.9, 0.8, 0.5]),
        (0.25, 0.95, 300, [0, 1, 0, 2], [0.9, 0.8, 0.7, 0.5]),  # loose NMS keeps box 2
        (0.25, 0.5, 3, [0, 1], [0.9, 0.8]),  # the cap applies before dropping (box 5 counted)
        (0.25, 0.5, 1, [], []),  # ... so only box 5 is kept, then dropped
        (0.25, 0.5, 0, [], []),
        (0.99, 0.5, 300, [], []),
        (0.0, 0.5, 300, [0, 1, 2], [0.9, 0.8, 0.5]),
    ],
)
def test_decode_yolov8_seg_filters_suppresses_and_drops(
    confidence: float,
    overlap: float,
    max_detections: int,
    expected_classes: list[int],
    expected_scores: list[float],
) -> None:
    dets = _decode(*_outputs(SCENE), confidence=confidence, overlap=overlap, max_detections=max_detections)
    assert dets.class_id.tolist() == expected_classes
    np.testing.assert_allclose(dets.confidence, expected_scores, rtol=1e-6)
    assert dets.boxes_xyxy.dtype == np.float32 and dets.boxes_xyxy.shape == (len(expected_classes), 4)
    assert dets.confidence.dtype == np.float32 and dets.class_id.dtype == np.int64
    assert len(dets.polygons) == len(dets)
    assert all(p.dtype == np.float32 and p.shape[0] >= 3 for p in dets.polygons)
    assert np.all(np.diff(dets.confidence) <= 0)


def test_decode_yolov8_seg_boxes_and_polygons_in_frame_pixels() -> None:
    frame_hw = (96, 128)  # letterboxed into 64x64: scale 0.5, pad_y 8
    params = letterbox_params(frame_hw, INPUT_HW)
    assert params == LetterboxParams(0.5, 0, 8)
    rows = [
        ((20, 28, 20, 20), [0.9, 0, 0], 10.0),  # frame (20, 20) - (60, 60)
        ((60, 12, 20, 20), [0, 0.8, 0], 10.0),  # past the right edge and into the top padding
    ]
    dets = _decode(*_outputs(rows), params=params, frame_hw=frame_hw)
    np.testing.assert_allclose(dets.boxes_xyxy, [[20, 20, 60, 60], [100, 0, 128, 28]], atol=1e-4)
    first = sorted(map(tuple, dets.polygons[0].tolist()))
    assert first == [(20, 20), (20, 59), (59, 20), (59, 59)]  # pixel indices of the box's corners
    second = dets.polygons[1]
    assert (second[:, 0].min(), second[:, 1].min(), second[:, 0].max(), second[:, 1].max()) == (100, 0, 127, 27)


@pytest.mark.parametrize(
    "shape", [(1, 4 + NUM_CLASSES + NUM_MASKS, 0), (4 + NUM_CLASSES + NUM_MASKS, 0)], ids=["batched", "unbatched"]
)
def test_decode_yolov8_seg_no_anchors(shape: tuple[int, ...]) -> None:
    _, protos = _outputs([])
    dets = _decode(np.zeros(shape, np.float32), protos)
    assert len(dets) == 0 and dets.boxes_xyxy.shape == (0, 4)


def test_decode_yolov8_seg_accepts_unbatched_arrays() -> None:
    output0, protos = _outputs(SCENE)
    batched = _decode(output0, protos)
    unbatched = _decode(output0[0], protos[0])
    np.testing.assert_array_equal(batched.boxes_xyxy, unbatched.boxes_xyxy)
    assert batched.class_id.tolist() == unbatched.class_id.tolist()


def test_decode_yolov8_seg_rejects_too_few_rows() -> None:
    with pytest.raises(ValueError, match="rows"):
        _decode(np.zeros((1, 4 + NUM_MASKS, 5), np.float32), np.zeros((1, NUM_MASKS, 16, 16), np.float32))


def test_decode_yolov8_seg_memory_is_bounded_by_the_boxes_not_the_frame() -> None:
    """Many candidates over a 4000x4000 frame: at most max_detections, and no (n, H, W) mask stack."""
    rng = np.random.default_rng(0)
    n = 5000
    output0 = np.zeros((1, 4 + NUM_CLASSES + NUM_MASKS, n), np.float32)
    output0[0, 0:2] = rng.uniform(0, 64, (2, n))
    output0[0, 2:4] = rng.uniform(2, 30, (2, n))
    output0[0, 4 : 4 + NUM_CLASSES] = rng.uniform(0, 1, (NUM_CLASSES, n))
    output0[0, 4 + NUM_CLASSES] = 10.0
    _, protos = _outputs([])
    frame_hw = (4000, 4000)
    params = letterbox_params(frame_hw, INPUT_HW)
    tracemalloc.start()
    try:
        dets = _decode(
            output0, protos, confidence=0.0, overlap=0.9, max_detections=40, params=params, frame_hw=frame_hw
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dets) == 40
    assert np.all(np.diff(dets.confidence) <= 0)
    assert dets.boxes_xyxy.min() >= 0 and dets.boxes_xyxy.max() <= 4000
    # One full-frame float32 mask alone would be 64 MB; the largest box here is about 1900 px square.
    assert peak < 48 * 2**20, peak
