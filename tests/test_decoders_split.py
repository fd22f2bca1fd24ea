"""agent.decoders_split: the split-head layout's metadata, anchors, box formulas, and its decoder against
decode_yolov8_seg on the equivalent uncut outputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from agent.decoders import decode_yolov8_seg
from agent.decoders_split import (
    HEAD_KEY,
    SplitHead,
    anchor_grid,
    boxes_xywh,
    decode_yolov8_split,
    split_head_from_metadata,
    split_layout,
)
from agent.formats import FormatError, Port
from agent.masks import sigmoid
from agent.placement import letterbox_params, letterbox_placement

NAMES = ("boxes", "scores", "coeffs", "protos")
INPUT_HW = (64, 96)
GRIDS = ((8, 12), (4, 6), (2, 3))  # ceil(64 / s) x ceil(96 / s) for s = 8, 16, 32
N = sum(h * w for h, w in GRIDS)


def _head(box: str = "dfl", reg_max: int = 16, packed: bool = False) -> SplitHead:
    names = ("head", "protos") if packed else NAMES
    return SplitHead(box, reg_max, (8, 16, 32), GRIDS, names, packed)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"box": "xywh"}, "box must be"),
        ({"box": "ltrb", "reg_max": 16}, "reg_max"),
        ({"reg_max": 0}, "reg_max"),
        ({"strides": (8, 16)}, "2 strides for 3 grids"),
        ({"strides": ()}, "0 strides"),
        ({"grids": ((0, 1), (1, 1), (1, 1))}, "positive"),
        ({"outputs": ("a", "a", "b", "c")}, "distinct"),
        ({"box": "softplus", "reg_max": 16}, "reg_max"),
        ({"packed": True}, "2 distinct"),  # a packed head has one output beside the prototypes
        ({"outputs": ("head", "protos")}, "4 distinct"),
    ],
)
def test_split_head_refuses(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"box": "dfl", "reg_max": 16, "strides": (8, 16, 32), "grids": GRIDS, "outputs": NAMES}
    with pytest.raises(ValueError, match=message):
        SplitHead(**{**base, **kwargs})


@pytest.mark.parametrize("box, reg_max", [("dfl", 16), ("dfl", 8), ("ltrb", 1), ("softplus", 1)])
@pytest.mark.parametrize("packed", [False, True])
def test_metadata_round_trip(box: str, reg_max: int, packed: bool) -> None:
    head = _head(box, reg_max, packed)
    assert split_head_from_metadata({HEAD_KEY: head.to_json(), "names": "x"}) == head
    assert head.anchors == N and head.box_rows == 4 * reg_max


def test_metadata_written_before_packing_reads_as_unpacked() -> None:
    text = json.dumps({k: v for k, v in json.loads(_head().to_json()).items() if k != "packed"})
    head = split_head_from_metadata({HEAD_KEY: text})
    assert head == _head() and head is not None and not head.packed


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"layout": "other"}),
        json.dumps({**json.loads(_head().to_json()), "scores": "sigmoid"}),  # only logits are written
        json.dumps({**json.loads(_head().to_json()), "grids": [[1, 1]]}),
        json.dumps({k: v for k, v in json.loads(_head().to_json()).items() if k != "strides"}),
        "[1, 2]",
    ],
)
def test_metadata_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError, match=HEAD_KEY):
        split_head_from_metadata({HEAD_KEY: text})


def test_no_metadata_is_no_split_head() -> None:
    assert split_head_from_metadata({"names": "{0: 'a'}"}) is None


def _ports(box_rows: int = 64, n: int = N, nc: int = 3, nm: int = 32, protos_nm: int = 32) -> list[Port]:
    shapes = [(1, box_rows, n), (1, nc, n), (1, nm, n), (1, protos_nm, 16, 24)]
    return [Port(name, shape) for name, shape in zip(NAMES, shapes, strict=True)]


def test_split_layout() -> None:
    layout = split_layout(_head(), _ports())
    assert (layout.kind, layout.outputs, layout.num_classes, layout.num_masks) == ("yolov8", NAMES, 3, 32)


def _packed_ports(n: int = N, columns: int = 4 + 3 + 32, nm: int = 32) -> list[Port]:
    return [Port("head", (1, n, columns)), Port("protos", (1, nm, 16, 24))]


def test_split_layout_packed() -> None:
    layout = split_layout(_head("softplus", 1, packed=True), _packed_ports())
    assert (layout.kind, layout.outputs, layout.num_classes, layout.num_masks) == ("yolov8", ("head", "protos"), 3, 32)


@pytest.mark.parametrize(
    "ports",
    [
        _packed_ports(n=N - 1),
        _packed_ports(columns=4 + 32),  # no class column left
        _packed_ports()[:1],
        [Port("head", (1, 4 + 3 + 32, N)), Port("protos", (1, 32, 16, 24))],  # channel-major
    ],
)
def test_split_layout_packed_refuses(ports: list[Port]) -> None:
    with pytest.raises(FormatError):
        split_layout(_head("softplus", 1, packed=True), ports)


@pytest.mark.parametrize(
    "ports",
    [
        _ports(box_rows=4),  # distances where DFL logits are said
        _ports(n=N + 1),
        _ports(nm=31),
        _ports(nc=0),
        _ports()[:3],  # protos missing
    ],
)
def test_split_layout_refuses(ports: list[Port]) -> None:
    with pytest.raises(FormatError):
        split_layout(_head(), ports)


def test_anchor_grid_is_row_major_cell_centres() -> None:
    anchors, strides = anchor_grid((8, 16), ((2, 3), (1, 2)))
    expected = [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5], [0.5, 0.5], [1.5, 0.5]]
    np.testing.assert_array_equal(anchors, expected)
    np.testing.assert_array_equal(strides, [8] * 6 + [16] * 2)
    assert not anchors.flags.writeable


def test_boxes_of_one_hot_dfl_logits() -> None:
    head = _head()
    raw = np.full((64, N), -50.0, dtype=np.float32)
    sides = (1, 2, 3, 4)  # left, top, right, bottom in cells
    for s, b in enumerate(sides):
        raw[s * 16 + b] = 50.0
    rows = np.array([0, 13, N - 1])  # (0, 0) at stride 8, (1, 1) of a 12-wide grid, the last stride-32 cell
    xywh = boxes_xywh(head, raw, rows)
    centres = np.array([[0.5, 0.5], [1.5, 1.5], [2.5, 1.5]]) * np.array([[8], [8], [32]])
    left, top, right, bottom = sides
    strides = np.array([8, 8, 32])[:, None]
    expected_c = centres + np.array([(right - left) / 2, (bottom - top) / 2]) * strides
    np.testing.assert_allclose(xywh[:, :2], expected_c, atol=1e-4)
    np.testing.assert_allclose(xywh[:, 2:], np.array([[left + right, top + bottom]] * 3) * strides, atol=1e-4)


def test_boxes_of_ltrb_distances() -> None:
    head = _head("ltrb", 1)
    raw = np.zeros((4, N), dtype=np.float32)
    raw[:, 0] = [1.0, 0.5, 2.0, 0.0]  # in strides
    xywh = boxes_xywh(head, raw, np.array([0, 1]))
    np.testing.assert_allclose(xywh, [[4 + 4, 4 - 2, 24, 4], [12, 4, 0, 0]], atol=1e-6)


def test_boxes_of_softplus_logits_are_the_softplus_distances() -> None:
    raw = np.random.default_rng(2).normal(0, 4, (4, N)).astype(np.float32)
    raw[:, :3] = [[-100.0, 0.0, 100.0]] * 4  # far tails: 0, log 2, the logit itself
    rows = np.arange(N)
    expected = boxes_xywh(_head("ltrb", 1), np.log1p(np.exp(raw.astype(np.float64))).astype(np.float32), rows)
    np.testing.assert_allclose(boxes_xywh(_head("softplus", 1), raw, rows), expected, atol=1e-3)


def test_boxes_of_no_rows_is_empty() -> None:
    assert boxes_xywh(_head(), np.zeros((64, N), np.float32), np.zeros(0, np.intp)).shape == (0, 4)


def _raw_outputs(
    seed: int, box: str, nc: int = 3, packed: bool = False
) -> tuple[SplitHead, list[np.ndarray], np.ndarray]:
    """Random split-head outputs (four, or the packed one and the prototypes) and the uncut ``output0``
    they stand for."""
    rng = np.random.default_rng(seed)
    head = _head(box, 16 if box == "dfl" else 1, packed)
    if box == "dfl":
        boxes = rng.normal(0, 2, (64, N)).astype(np.float32)
    elif box == "ltrb":
        boxes = rng.uniform(0, 3, (4, N)).astype(np.float32)
    else:
        boxes = rng.normal(0, 1.5, (4, N)).astype(np.float32)
    logits = rng.normal(-3, 3, (nc, N)).astype(np.float32)
    coeffs = rng.normal(0, 1, (32, N)).astype(np.float32)
    protos = rng.normal(0, 1, (32, 16, 24)).astype(np.float32)
    xywh = boxes_xywh(head, boxes, np.arange(N)).T
    output0 = np.concatenate([xywh, sigmoid(logits), coeffs])
    if packed:
        return head, [np.concatenate([boxes, logits, coeffs]).T[None].copy(), protos[None]], output0
    return head, [boxes[None], logits[None], coeffs[None], protos[None]], output0


@pytest.mark.parametrize("box, packed", [("dfl", False), ("ltrb", False), ("softplus", True), ("dfl", True)])
@pytest.mark.parametrize("confidence", [0.0, 0.05, 0.4, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("frame_hw", [(64, 96), (480, 640), (100, 50)])
def test_same_detections_as_the_uncut_decoder(
    box: str, packed: bool, confidence: float, frame_hw: tuple[int, int]
) -> None:
    head, outputs, output0 = _raw_outputs(7, box, packed=packed)
    params = letterbox_params(frame_hw, INPUT_HW)
    common: dict[str, Any] = {"input_hw": INPUT_HW, "frame_hw": frame_hw, "confidence": confidence, "overlap": 0.5}
    uncut = decode_yolov8_seg(output0, outputs[-1], params=params, **common)
    placement = letterbox_placement(params, frame_hw, INPUT_HW)
    cut = decode_yolov8_split(outputs, head=head, placement=placement, fast_letterbox=True, **common)
    assert len(cut) == len(uncut)
    assert cut.boxes_xyxy.shape == (len(uncut), 4)  # (0, 4) when nothing passes
    np.testing.assert_array_equal(cut.class_id, uncut.class_id)
    np.testing.assert_allclose(cut.boxes_xyxy, uncut.boxes_xyxy, atol=1e-3)
    np.testing.assert_allclose(cut.confidence, uncut.confidence, atol=1e-7)
    assert all(np.array_equal(a, b) for a, b in zip(cut.polygons, uncut.polygons, strict=True))
    if confidence >= 1.0:
        assert len(cut) == 0
    elif confidence <= 0.4:
        assert len(cut) > 0  # the case compares real detections


@pytest.mark.parametrize(
    "case",
    ["max_detections 0", "no classes", "all logits -inf", "degenerate zero-size boxes"],
)
@pytest.mark.parametrize("packed", [False, True])
def test_degenerate_inputs(case: str, packed: bool) -> None:
    head, (boxes, logits, coeffs, protos), _ = _raw_outputs(3, "ltrb")
    kwargs: dict[str, Any] = {"max_detections": 300}
    if case == "max_detections 0":
        kwargs["max_detections"] = 0
    elif case == "no classes":
        logits = logits[:, :0]
    elif case == "all logits -inf":
        logits = np.full_like(logits, -np.inf)
    else:
        boxes = np.zeros_like(boxes)
    placement = letterbox_placement(letterbox_params(INPUT_HW, INPUT_HW), INPUT_HW, INPUT_HW)
    outputs = [boxes, logits, coeffs, protos]
    if packed:
        head = _head("ltrb", 1, packed=True)
        outputs = [np.concatenate([boxes[0], logits[0], coeffs[0]]).T[None], protos]
    dets = decode_yolov8_split(
        outputs, head=head, placement=placement, input_hw=INPUT_HW, frame_hw=INPUT_HW,
        confidence=0.1, overlap=0.5, **kwargs,
    )  # fmt: skip
    assert len(dets) == 0 and dets.boxes_xyxy.shape == (0, 4) and dets.confidence.shape == (0,)


_UNFIT = {
    "boxes: an anchor less": (False, lambda o: [o[0][..., :-1], *o[1:]]),
    "scores: an anchor less": (False, lambda o: [o[0], o[1][..., :-1], *o[2:]]),
    "coeffs: an anchor less": (False, lambda o: [*o[:2], o[2][..., :-1], o[3]]),
    "protos: a channel less": (False, lambda o: [*o[:3], o[3][:, :-1]]),
    "three outputs": (False, lambda o: o[:3]),
    "packed: an anchor less": (True, lambda o: [o[0][:, :-1], o[1]]),
    "packed: more prototypes than columns": (True, lambda o: [o[0], np.concatenate([o[1]] * 4, axis=1)]),
    "packed: prototypes without a batch": (True, lambda o: [o[0], o[1][0, 0]]),
}


@pytest.mark.parametrize("case", sorted(_UNFIT))
def test_shapes_that_do_not_fit_the_head_are_refused(case: str) -> None:
    packed, change = _UNFIT[case]
    head, outputs, _ = _raw_outputs(3, "dfl", packed=packed)
    outputs = change(outputs)
    placement = letterbox_placement(letterbox_params(INPUT_HW, INPUT_HW), INPUT_HW, INPUT_HW)
    with pytest.raises(ValueError, match="decode_yolov8_split"):
        decode_yolov8_split(
            outputs, head=head, placement=placement, input_hw=INPUT_HW, frame_hw=INPUT_HW, confidence=0.1,
            overlap=0.5,
        )  # fmt: skip
