"""Post-processing for Ultralytics YOLOv8 / YOLO11 ``-seg`` ONNX outputs: the names the rest of the agent uses.

The way of one frame::

    letterbox(frame) -> session.run -> decode_yolov8_seg(output0, protos, ...) -> Detections

Each piece lives in the module of its concern, all pure functions of their arguments (no I/O, no state):
:mod:`agent.detections` (``Detections``), :mod:`agent.placement` (letterbox and placement maths, frame
pixel bounds), :mod:`agent.nms` (boxes, IoU, NMS), :mod:`agent.masks` (sigmoid, mask sampling),
:mod:`agent.polygons` (a mask's outer contour), :mod:`agent.preprocess` (``letterbox``) and
:mod:`agent.decoders` (``decode_yolov8_seg`` and the other formats' decoders). This module gathers the
YOLOv8 path's names in one place, for the modules and tools that import them from here.

Conventions:

* Array names say their layout: ``boxes_xyxy`` is ``(n, 4)`` corners, ``boxes_xywh`` is ``(n, 4)`` centre x,
  centre y, width, height, ``mask_hw`` is one ``(h, w)`` mask, ``protos_chw`` is ``(c, h, w)``.
* Coordinates are continuous pixels: the pixel with index ``i`` covers ``[i, i + 1)`` and its centre is at
  ``i + 0.5`` (OpenCV's and PyTorch's ``align_corners=False`` convention). Polygon vertices are pixel
  indices, as ``cv2.findContours`` returns them, so ``cv2.fillPoly`` of a polygon gives back its pixels.
* Confidence filter: a candidate is kept when its best class score is strictly greater than ``confidence``
  (``score > confidence``), as Ultralytics' ``non_max_suppression`` does.
* NMS: greedy, class-aware; a box is suppressed by a higher-scoring box of the same class when their IoU is
  strictly greater than the threshold (``IoU > overlap``), as ``torchvision.ops.nms`` does. Equal scores
  keep their input order.
* Memory: masks are decoded per instance over its box only; nothing of size (n, H, W) is ever allocated.
"""

from __future__ import annotations

from agent.decoders import decode_yolov8_seg
from agent.detections import Detections
from agent.masks import mask_in_box
from agent.nms import MAX_NMS_CANDIDATES, box_iou_xyxy, nms_xyxy, xywh_to_xyxy
from agent.placement import (
    LETTERBOX_FILL,
    LetterboxParams,
    box_pixel_bounds,
    letterbox_content_hw,
    letterbox_params,
    unletterbox_boxes_xyxy,
)
from agent.polygons import mask_polygon
from agent.preprocess import letterbox

__all__ = [
    "LETTERBOX_FILL",
    "MAX_NMS_CANDIDATES",
    "Detections",
    "LetterboxParams",
    "box_iou_xyxy",
    "box_pixel_bounds",
    "decode_yolov8_seg",
    "letterbox",
    "letterbox_content_hw",
    "letterbox_params",
    "mask_in_box",
    "mask_polygon",
    "nms_xyxy",
    "unletterbox_boxes_xyxy",
    "xywh_to_xyxy",
]
