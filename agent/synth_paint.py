"""The painter of :mod:`agent.synth`: backgrounds, clutter, shape fills and the camera-like degradation.

Pure functions of a NumPy random generator and float32 BGR images; the layout of a scene (which shapes,
where, what stays visible) is :mod:`agent.synth`'s.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray


def fixed_point(pts: FloatArray) -> NDArray[np.int32]:
    """Sub-pixel coordinates for OpenCV's ``shift=4`` drawing."""
    return np.round(pts * 16.0).astype(np.int32).reshape(-1, 1, 2)


__all__ = ["background", "colour", "degrade", "draw_shape", "fixed_point"]

FloatArray = NDArray[np.float32]
ImageU8 = NDArray[np.uint8]


# ------------------------------------------------------------------------------------------ backgrounds


def colour(rng: np.random.Generator) -> NDArray[np.float32]:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int, channels: int) -> FloatArray:
    """Value noise in 0..1: a small random grid resized smoothly to the frame."""
    h, w = hw
    gh = max(2, int(cells * h / max(h, w)) + 1)
    gw = max(2, int(cells * w / max(h, w)) + 1)
    grid = rng.random((gh, gw, channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out.reshape(h, w, channels), 0.0, 1.0)


def _gradient(rng: np.random.Generator, hw: tuple[int, int]) -> FloatArray:
    """A 0..1 ramp over the frame, linear at a random angle or radial."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.6:
        ang = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(ang) + yy * math.sin(ang)
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    out: FloatArray = np.asarray(t, dtype=np.float32)
    return out


def background(rng: np.random.Generator, hw: tuple[int, int], *, clutter: bool = True) -> FloatArray:
    """A textured, gradient or plain background; ``clutter`` adds lines, scribbles and text."""
    h, w = hw
    kind = rng.choice(["solid", "gradient", "noise", "pattern", "mix"], p=[0.15, 0.25, 0.25, 0.15, 0.2])
    c1, c2 = colour(rng), colour(rng)
    if kind == "solid":
        bg = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == "gradient":
        t = _gradient(rng, hw)[..., None]
        bg = c1 * (1 - t) + c2 * t
    elif kind == "noise":
        n = _smooth_noise(rng, hw, int(rng.integers(3, 40)), 3 if rng.random() < 0.5 else 1)
        bg = c1 * (1 - n) + c2 * n
    elif kind == "pattern":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        period = rng.uniform(8, 80)
        ang = rng.uniform(0, math.pi)
        u = xx * math.cos(ang) + yy * math.sin(ang)
        if rng.random() < 0.5:
            t = (np.sin(u * 2 * math.pi / period) * 0.5 + 0.5)[..., None]
        else:
            v = -xx * math.sin(ang) + yy * math.cos(ang)
            t = ((np.floor(u / period) + np.floor(v / period)) % 2)[..., None]
        contrast = rng.uniform(0.1, 0.6)
        bg = c1 * (1 - contrast * t) + c2 * (contrast * t)
    else:
        t = _gradient(rng, hw)[..., None]
        n = _smooth_noise(rng, hw, int(rng.integers(10, 80)), 3)
        bg = (c1 * (1 - t) + c2 * t) * 0.7 + n * 255 * 0.3
    bg = bg.astype(np.float32)
    # Fine grain (paper, fabric, sensor).
    if rng.random() < 0.5:
        bg += rng.normal(0, rng.uniform(2, 12), size=(h, w, 1)).astype(np.float32)
    if clutter:
        _clutter(rng, bg)
    return bg


def _clutter(rng: np.random.Generator, img: FloatArray) -> None:
    """Lines, scribbles and text: things that are not one of the classes."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 6))):
        col = tuple(float(v) for v in colour(rng))
        th = int(rng.integers(1, max(2, min(h, w) // 80) + 1))
        kind = rng.random()
        if kind < 0.45:
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, col, th, cv2.LINE_AA)
        elif kind < 0.75:
            n = int(rng.integers(3, 8))
            pts = np.cumsum(rng.normal(0, min(h, w) * 0.08, size=(n, 2)), axis=0)
            pts += np.array([rng.uniform(0, w), rng.uniform(0, h)])
            cv2.polylines(img, [pts.astype(np.int32).reshape(-1, 1, 2)], False, col, th, cv2.LINE_AA)
        else:
            text = "".join(rng.choice(list("ABCDEFGHKMNPRSTUWXYZ0123456789"), size=int(rng.integers(2, 7))))
            scale = rng.uniform(0.4, 2.0) * min(h, w) / 480
            org = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            ink = np.zeros((h, w), np.uint8)  # OpenCV draws text only on 8-bit images
            cv2.putText(ink, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, th), cv2.LINE_AA)
            a = (ink.astype(np.float32) / 255.0)[..., None]
            img *= 1 - a
            img += a * np.array(col, np.float32)


# --------------------------------------------------------------------------------------------- drawing


def _fill_layer(rng: np.random.Generator, hw: tuple[int, int]) -> FloatArray:
    """Colour of a shape's paint over a (crop) region: solid, gradient or textured."""
    h, w = hw
    base = colour(rng)
    r = rng.random()
    if r < 0.55:
        return np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    other = np.clip(base + rng.normal(0, 70, size=3), 0, 255).astype(np.float32)
    t = _gradient(rng, hw)[..., None] if r < 0.8 else _smooth_noise(rng, hw, int(rng.integers(2, 12)), 1)
    return (base * (1 - t) + other * t).astype(np.float32)


def _composite(img: FloatArray, layer: FloatArray, alpha: FloatArray, x0: int, y0: int) -> None:
    h, w = alpha.shape
    roi = img[y0 : y0 + h, x0 : x0 + w]
    a = alpha[..., None]
    roi *= 1 - a
    roi += layer * a


def draw_shape(rng: np.random.Generator, img: FloatArray, pts: FloatArray, style: str, size: float) -> None:
    """Paint a shape (anti-aliased) onto a float image, in the given style."""
    h, w = img.shape[:2]
    pad = int(size * 0.1) + 4
    x0 = max(0, math.floor(float(pts[:, 0].min())) - pad)
    y0 = max(0, math.floor(float(pts[:, 1].min())) - pad)
    x1 = min(w, math.ceil(float(pts[:, 0].max())) + pad)
    y1 = min(h, math.ceil(float(pts[:, 1].max())) + pad)
    if x1 <= x0 or y1 <= y0:
        return
    local = pts - np.array([x0, y0], dtype=np.float32)
    crop_hw = (y1 - y0, x1 - x0)

    if rng.random() < 0.25:  # a soft drop shadow under the shape
        sh = np.zeros(crop_hw, np.float32)
        off = np.array(rng.normal(0, size * 0.04, size=2), dtype=np.float32)
        cv2.fillPoly(sh, [fixed_point(local + off)], 1.0, cv2.LINE_AA, 4)
        k = int(size * 0.05) * 2 + 1
        sh = cv2.GaussianBlur(sh, (k, k), 0) * float(rng.uniform(0.2, 0.5))
        _composite(img, np.zeros((*crop_hw, 3), np.float32), sh, x0, y0)

    fill = np.zeros(crop_hw, np.float32)
    cv2.fillPoly(fill, [fixed_point(local)], 1.0, cv2.LINE_AA, 4)
    thick = max(1, round(size * float(rng.uniform(0.03, 0.1))))
    if style == "outline":
        line = np.zeros(crop_hw, np.float32)
        cv2.polylines(line, [fixed_point(local)], True, 1.0, thick, cv2.LINE_AA, 4)
        _composite(img, _fill_layer(rng, crop_hw), np.minimum(line, 1.0), x0, y0)
        return
    alpha = fill * np.float32(rng.uniform(0.4, 0.8) if style == "translucent" else 1.0)
    _composite(img, _fill_layer(rng, crop_hw), alpha, x0, y0)
    if style == "solid" and rng.random() < 0.3:  # a border in another colour
        line = np.zeros(crop_hw, np.float32)
        cv2.polylines(line, [fixed_point(local)], True, 1.0, thick, cv2.LINE_AA, 4)
        _composite(img, _fill_layer(rng, crop_hw), np.minimum(line, 1.0) * fill, x0, y0)


def degrade(rng: np.random.Generator, img: FloatArray) -> ImageU8:
    """Lighting, blur, sensor noise and JPEG artefacts."""
    img = img * float(rng.uniform(0.75, 1.25)) + float(rng.uniform(-30, 30))
    if rng.random() < 0.35:
        k = int(rng.choice([3, 5, 7]))
        if rng.random() < 0.7:
            img = np.asarray(cv2.GaussianBlur(img, (k, k), 0), dtype=np.float32)
        else:  # motion blur
            kern = np.zeros((k, k), np.float32)
            kern[k // 2, :] = 1.0 / k
            rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
            kern = np.asarray(cv2.warpAffine(kern, rot, (k, k)), dtype=np.float32)
            img = np.asarray(cv2.filter2D(img, -1, kern / max(float(kern.sum()), 1e-6)), dtype=np.float32)
    if rng.random() < 0.6:
        img = img + rng.normal(0, rng.uniform(2, 14), size=img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        q = int(rng.integers(25, 95))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8)
    return out
