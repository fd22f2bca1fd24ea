"""A real HTTP server on loopback that speaks Roboflow's hosted instance-segmentation route.

``POST /{project}/{version}?api_key=..&confidence=..&overlap=..`` with a base64 image body. The answer is
derived from the picture: every saturated coloured blob becomes a prediction (class by hue, box and
polygon in the pixels of the image as sent), so a client that downsizes before upload must scale back to
get the right numbers. Faults are switched at run time (:meth:`FakeRoboflow.set_fault`), and every request
is recorded for assertions.

:func:`find_blobs` is the same detector as plain data, for a local-side stand-in in tests.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import cv2
import numpy as np

CLASS_NAMES = ["red", "green", "blue"]
# OpenCV hue (0-179) ranges per class.
_HUE_RANGES = {0: [(0, 10), (170, 180)], 1: [(45, 75)], 2: [(105, 130)]}
FORBIDDEN = {"Message": "User is not authorized to access this resource"}
FAULTS = ("none", "hang", "slow", "500", "503", "429", "403", "html", "truncated", "not_api_json", "reset")


@dataclass(frozen=True)
class Blob:
    class_id: int
    box_xyxy: tuple[float, float, float, float]
    polygon: np.ndarray  # (k, 2) float32
    confidence: float

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]


def find_blobs(image_bgr: np.ndarray, *, min_area: int = 12) -> list[Blob]:
    """Saturated red/green/blue regions: class by hue, confidence from how well they fill their box."""
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)
    saturated = (hsv[:, :, 1] > 120) & (hsv[:, :, 2] > 60)
    blobs: list[Blob] = []
    for class_id, ranges in _HUE_RANGES.items():
        mask = np.zeros(hsv.shape[:2], np.uint8)
        for lo, hi in ranges:
            mask |= ((hsv[:, :, 0] >= lo) & (hsv[:, :, 0] < hi) & saturated).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            area = cv2.contourArea(contour)
            if area < min_area:
                continue
            x, y, w, h = cv2.boundingRect(contour)
            poly = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2).astype(np.float32)
            if len(poly) < 3:
                continue
            # boundingRect/contours are in pixel indices; the far edge of the last pixel is +1
            confidence = round(0.5 + 0.49 * min(1.0, area / max(1.0, float(w * h))), 4)
            blobs.append(Blob(class_id, (float(x), float(y), float(x + w), float(y + h)), poly, confidence))
    blobs.sort(key=lambda b: -b.confidence)
    return blobs


def draw_scene(width: int = 640, height: int = 480, *, shift: int = 0) -> np.ndarray:
    """A grey frame with a red rectangle, a green circle and a blue triangle (``shift`` moves them)."""
    img = np.full((height, width, 3), 90, np.uint8)
    sx, sy = width / 640, height / 480
    cv2.rectangle(
        img, (int((60 + shift) * sx), int(50 * sy)), (int((220 + shift) * sx), int(170 * sy)), (0, 0, 230), -1
    )
    cv2.circle(img, (int((420 + shift) * sx), int(140 * sy)), int(70 * min(sx, sy)), (0, 210, 0), -1)
    tri = np.array(
        [[(150 + shift) * sx, 420 * sy], [(330 + shift) * sx, 420 * sy], [(240 + shift) * sx, 260 * sy]], np.int32
    )
    cv2.fillPoly(img, [tri], (220, 40, 0))
    return img


@dataclass
class Recorded:
    path: str
    params: dict[str, str]
    body_bytes: int
    image_wh: tuple[int, int] | None
    fault: str
    content_type: str
    body_sha256: str = ""  # of the raw request body (the base64 text)
    at: float = field(default_factory=time.monotonic)


class FakeRoboflow:
    """The fake hosted API. ``url`` is ``http://127.0.0.1:PORT``; the port stays the same across
    :meth:`stop`/:meth:`start`, so a stopped server means *connection refused*."""

    def __init__(self, *, api_key: str = "test-key", model_id: str = "shapes/3", host: str = "127.0.0.1") -> None:
        """``host``: the address to listen on (another interface's, for a client in a network namespace)."""
        self.host = host
        self.api_key = api_key
        self.model_id = model_id
        self.requests: list[Recorded] = []
        self.fault = "none"
        self.slow_s = 2.0
        self.hang_s = 30.0
        self.retry_after: str | None = "3"
        self.fault_times: int | None = None
        self.connections = 0  # TCP connections accepted (keep-alive check)
        self._lock = threading.Lock()
        self._release = threading.Event()  # ends hanging handlers
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ----------------------------------------------------------------- control

    def set_fault(
        self, fault: str, *, retry_after: str | None = "3", slow_s: float | None = None, times: int | None = None
    ) -> None:
        """Answer every request with ``fault`` from now on, or only the next ``times`` requests."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self._lock:
            self.fault = fault
            self.fault_times = times
            self.retry_after = retry_after
            if slow_s is not None:
                self.slow_s = slow_s
        if fault != "hang":
            self._release.set()
        else:
            self._release.clear()

    def clear_fault(self) -> None:
        self.set_fault("none")

    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> None:
        if self._server is not None:
            return
        fake = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with fake._lock:
                    fake._conns.add(request)
                    fake.connections += 1
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                with fake._lock:
                    fake._conns.discard(request)
                super().shutdown_request(request)

        server = Server((self.host, self.port), _handler_for(self))
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-roboflow", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open (keep-alive) connection: the next call is refused."""
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()

    # ----------------------------------------------------------------- answers

    def answer(self, image: np.ndarray, params: dict[str, str]) -> dict[str, Any]:
        t0 = time.perf_counter()
        confidence = float(params.get("confidence", 40))
        confidence = confidence / 100 if confidence >= 1 else confidence
        max_det = int(params.get("max_detections", 300))
        predictions = []
        for blob in find_blobs(image):
            if blob.confidence < confidence:
                continue
            x1, y1, x2, y2 = blob.box_xyxy
            predictions.append(
                {
                    "x": round((x1 + x2) / 2, 1),
                    "y": round((y1 + y2) / 2, 1),
                    "width": round(x2 - x1, 1),
                    "height": round(y2 - y1, 1),
                    "confidence": blob.confidence,
                    "class": blob.class_name,
                    "class_id": blob.class_id,
                    "detection_id": str(uuid.uuid4()),
                    "points": [{"x": float(px), "y": float(py)} for px, py in blob.polygon],
                }
            )
        h, w = image.shape[:2]
        return {
            "inference_id": str(uuid.uuid4()),
            "time": round(time.perf_counter() - t0, 4),
            "image": {"width": w, "height": h},
            "predictions": predictions[:max_det],
        }


def _handler_for(fake: FakeRoboflow) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the hosted API
        # Headers and body go out in separate writes; without TCP_NODELAY a busy keep-alive connection waits
        # ~40 ms on the client's delayed ACK each call, which the real service doesn't.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any, **headers: str) -> None:
            self._send(status, json.dumps(obj).encode(), **headers)

        def do_POST(self) -> None:
            split = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(split.query).items()}
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            image = _decode(body)
            with fake._lock:
                fault = fake.fault
                if fake.fault_times is not None:
                    fake.fault_times -= 1
                    if fake.fault_times <= 0:
                        fake.fault, fake.fault_times = "none", None
                retry_after = fake.retry_after
                slow_s = fake.slow_s
                fake.requests.append(
                    Recorded(
                        path=split.path,
                        params=params,
                        body_bytes=len(body),
                        image_wh=None if image is None else (image.shape[1], image.shape[0]),
                        fault=fault,
                        content_type=self.headers.get("Content-Type", ""),
                        body_sha256=hashlib.sha256(body).hexdigest(),
                    )
                )
            if fault == "hang":
                fake._release.wait(fake.hang_s)
                self.close_connection = True
                return
            if fault == "reset":
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if fault == "slow":
                time.sleep(slow_s)
            if fault == "500":
                return self._json(500, {"message": "Internal error"})
            if fault == "503":
                extra = {"Retry_After": retry_after} if retry_after else {}
                return self._json(503, {"message": "Service busy"}, **extra)
            if fault == "429":
                extra = {"Retry_After": retry_after} if retry_after else {}
                return self._json(429, {"message": "Too many requests"}, **extra)
            if fault == "403":
                return self._json(403, FORBIDDEN)
            if fault == "html":
                return self._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
            if fault == "not_api_json":
                return self._json(200, {"status": "ok"})
            if params.get("api_key") != fake.api_key:
                return self._json(403, FORBIDDEN)
            if split.path.strip("/") != fake.model_id:
                return self._json(404, {"message": f"Model {split.path.strip('/')} not found"})
            if image is None:
                return self._json(400, {"message": "Could not decode the image"})
            payload = json.dumps(fake.answer(image, params)).encode()
            if fault == "truncated":
                # promise the whole body, send half of it, hang up
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(200, payload)

    return Handler


def _decode(body: bytes) -> np.ndarray | None:
    text = body.strip()
    if b"%" in text:  # tolerate a form-urlencoded body
        text = unquote_plus(text.decode("ascii", "replace")).encode()
    try:
        raw = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None
