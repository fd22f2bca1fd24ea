"""Synthetic YOLOv8-seg outputs with a chosen number of instances, for timing postprocessing alone.

A model with random weights finds few or odd objects, so the dense case (100+ instances) is made here:
``output0`` ``(1, 4 + nc + nm, anchors)`` and ``protos`` ``(1, nm, H/4, W/4)`` as an Ultralytics export lays
them out. Each instance is one box (sizes from small to a third of the input) with ``dup`` near-copies
(neighbouring anchors predict the same object, so NMS has work to do); the remaining anchors score below
any threshold. Prototypes are the planes 1, X, Y, X^2, Y^2 plus low-frequency waves, and each instance's
coefficients make ``coeffs . protos`` an ellipse filling most of its box with wobbly edges, so masks,
contours and polygons are as busy as a real model's.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["dense_outputs"]

_UNIT = 0.01  # prototype coordinates are input pixels / 100


def dense_outputs(
    instances: int,
    input_hw: tuple[int, int] = (640, 640),
    *,
    num_classes: int = 80,
    num_masks: int = 32,
    anchors: int | None = None,
    dup: int = 3,
    seed: int = 0,
    content_hw: tuple[int, int] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``(output0, protos)`` with ``instances`` objects that survive NMS (IoU 0.45) at confidence 0.25.

    ``content_hw``: the letterboxed frame's part of the input (boxes are placed inside it).
    """
    rng = np.random.default_rng(seed)
    in_h, in_w = input_hw
    if anchors is None:
        anchors = sum((in_h // s) * (in_w // s) for s in (8, 16, 32))
    c_h, c_w = content_hw or input_hw
    pad_y, pad_x = (in_h - c_h) // 2, (in_w - c_w) // 2
    rows = 4 + num_classes + num_masks
    out = np.zeros((rows, anchors), np.float32)
    out[4 : 4 + num_classes] = rng.uniform(0.0, 0.2, size=(num_classes, anchors)).astype(np.float32)
    out[0:2] = rng.uniform(0, 1, size=(2, anchors)) * np.array([[in_w], [in_h]])
    out[2:4] = rng.uniform(4, 40, size=(2, anchors))

    # Instances on a jittered grid so that most of them survive NMS; sizes vary by a factor of 20.
    cols = int(np.ceil(np.sqrt(instances * c_w / c_h)))
    grid_rows = int(np.ceil(instances / cols))
    cell_w, cell_h = c_w / cols, c_h / grid_rows
    centres = []
    for i in range(instances):
        r, c = divmod(i, cols)
        centres.append((pad_x + (c + 0.5) * cell_w, pad_y + (r + 0.5) * cell_h))
    centres_arr = np.asarray(centres) + rng.uniform(-0.2, 0.2, size=(instances, 2)) * [cell_w, cell_h]
    # A few big objects (up to a third of the input) overlapping the small ones, as in a crowded scene.
    size = rng.uniform(0.6, 1.3, size=(instances, 2)) * [cell_w, cell_h]
    big = rng.choice(instances, size=max(1, instances // 20), replace=False)
    size[big] = rng.uniform(0.2, 0.35, size=(big.size, 2)) * [c_w, c_h]
    classes = rng.integers(0, num_classes, size=instances)
    classes[big] = (classes[big] + 1) % num_classes  # another class than its neighbours, mostly
    scores = rng.uniform(0.4, 0.95, size=instances)

    chosen = rng.choice(anchors, size=instances * dup, replace=False).reshape(instances, dup)
    proto_h, proto_w = in_h // 4, in_w // 4
    xs = (np.arange(proto_w) + 0.5) * 4.0 * _UNIT
    ys = (np.arange(proto_h) + 0.5) * 4.0 * _UNIT
    gx, gy = np.meshgrid(xs, ys)
    planes = [np.ones_like(gx), gx, gy, gx**2, gy**2]
    for _ in range(num_masks - len(planes)):
        fx, fy = rng.uniform(-1.5, 1.5, size=2)
        planes.append(np.sin(2 * np.pi * (fx * gx + fy * gy) + rng.uniform(0, 2 * np.pi)))
    protos = np.stack(planes)[np.newaxis].astype(np.float32)

    k = 6.0
    for i in range(instances):
        for d in range(dup):
            a = chosen[i, d]
            jitter = rng.normal(0, 0.02, size=4) * [size[i, 0], size[i, 1], size[i, 0], size[i, 1]]
            cx, cy = centres_arr[i] + jitter[:2]
            w, h = size[i] + jitter[2:]
            out[0:4, a] = (cx, cy, w, h)
            out[4 + classes[i], a] = scores[i] - 0.05 * d
            rx, ry = 0.45 * w * _UNIT, 0.45 * h * _UNIT
            cxn, cyn = cx * _UNIT, cy * _UNIT
            cxx, cyy = -k / rx**2, -k / ry**2
            coeffs = np.zeros(num_masks)
            coeffs[0:5] = (k + cxn**2 * cxx + cyn**2 * cyy, -2 * cxn * cxx, -2 * cyn * cyy, cxx, cyy)
            coeffs[5:] = rng.normal(0, 0.4, size=num_masks - 5)
            out[4 + num_classes :, a] = coeffs
    return out[np.newaxis], protos
