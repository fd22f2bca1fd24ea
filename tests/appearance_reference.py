"""The per-detection reference of :func:`agent.appearance.mean_bgr_n3` (the code before its samples were
gathered for every box at once): one crop, mask and ``cv2.mean`` per detection. tests/test_appearance.py checks
the fast one against it, bit for bit; nothing in agent/ uses it."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

_MAX_SIDE = 16


def reference_mean_bgr_n3(image_hwc: U8, polygons: Sequence[F64], boxes_xyxy: F64, scale: float = 1.0) -> F64:
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4) * scale
    n = len(boxes)
    if len(polygons) != n:
        raise ValueError("one polygon per box")
    out = np.full((n, 3), np.nan)
    h, w = image_hwc.shape[:2]
    for i in range(n):
        x0, y0 = (int(v) for v in np.floor(np.clip(boxes[i, :2], 0, (w, h))))
        x1, y1 = (int(v) for v in np.ceil(np.clip(boxes[i, 2:], 0, (w, h))))
        if x1 <= x0 or y1 <= y0:
            continue
        step = max(1, -(-max(x1 - x0, y1 - y0) // _MAX_SIDE))
        crop = np.ascontiguousarray(image_hwc[y0:y1:step, x0:x1:step])
        mask = np.zeros(crop.shape[:2], dtype=np.uint8)
        poly = np.asarray(polygons[i], dtype=np.float64).reshape(-1, 2)
        if len(poly) >= 3:
            centres = (poly + 0.5) * scale - 0.5
            pts = np.rint((centres - (x0, y0)) * (16 / step)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1, cv2.LINE_8, 4)
        if len(poly) < 3 or not mask.any():
            ch, cw = mask.shape
            mask[ch // 4 : max(ch // 4 + 1, (3 * ch + 3) // 4), cw // 4 : max(cw // 4 + 1, (3 * cw + 3) // 4)] = 1
        out[i] = cv2.mean(crop, mask)[:3]
    return out
