"""Test sources for the capture tests: a loopback MJPEG-over-HTTP server and generated video files.

Every frame carries numbers drawn as big black/white blocks (robust to JPEG compression), so a test
can tell which frame, and which server, a :class:`agent.frames.Frame` came from:
:func:`decode_marks` reads them back.

Nothing here mocks OpenCV: the server speaks real HTTP (``multipart/x-mixed-replace``, the format IP
cameras and ``mjpg-streamer`` use) over a real socket, and files are written with ``cv2.VideoWriter``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MjpegServer",
    "decode_marks",
    "free_port",
    "make_frame",
    "write_video",
]

BOUNDARY = "segagentframe"
_BITS = 16  # bits per number
_BLOCK = 16  # pixels per bit block (side)


def make_frame(index: int, width: int = 320, height: int = 240, tag: int = 0) -> NDArray[np.uint8]:
    """A BGR frame showing ``index`` (row 0) and ``tag`` (row 1) as 16-bit block codes.

    Needs ``width >= 16 * 16`` and ``height >= 2 * 16``. The rest of the image is a gray gradient so
    the JPEG encoder has something to do.
    """
    if width < _BITS * _BLOCK or height < 2 * _BLOCK:
        raise ValueError("frame too small for the block code")
    img = np.empty((height, width, 3), np.uint8)
    img[:] = np.linspace(40, 200, width, dtype=np.uint8)[None, :, None]
    for row, value in enumerate((index, tag)):
        for bit in range(_BITS):
            on = (value >> bit) & 1
            y, x = row * _BLOCK, bit * _BLOCK
            img[y : y + _BLOCK, x : x + _BLOCK] = 255 if on else 0
    return img


def decode_marks(image: NDArray[np.uint8]) -> tuple[int, int]:
    """``(index, tag)`` read back from a frame made by :func:`make_frame` (after JPEG round trips)."""
    values = []
    for row in range(2):
        value = 0
        for bit in range(_BITS):
            y, x = row * _BLOCK, bit * _BLOCK
            # the centre of the block: JPEG blurs the edges
            block = image[y + 4 : y + _BLOCK - 4, x + 4 : x + _BLOCK - 4]
            if float(block.mean()) > 128.0:
                value |= 1 << bit
        values.append(value)
    return values[0], values[1]


def write_video(
    path: Path, frames: int = 60, fps: float = 30.0, width: int = 320, height: int = 240, tag: int = 0
) -> Path:
    """Write an MJPG ``.avi`` whose frame ``i`` shows ``i`` (see :func:`make_frame`)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter could not open {path}")
    try:
        for i in range(frames):
            writer.write(make_frame(i, width, height, tag))
    finally:
        writer.release()
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _encode(img: NDArray[np.uint8]) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return bytes(buf.tobytes())


class MjpegServer:
    """A loopback MJPEG-over-HTTP camera (``multipart/x-mixed-replace``).

    ``start()`` / ``stop()`` may be called repeatedly; a restarted server listens on the same port
    (``SO_REUSEADDR``), so a client sees an outage and then the camera coming back. ``stop()``
    closes the listening socket *and* every client connection.

    ``hang``: accept, answer with the HTTP headers, then send nothing (a wedged camera);
    ``hang_after``: send this many frames per connection, then go silent with the socket open;
    ``status``: anything but 200 answers with that HTTP status and closes (a camera that refuses);
    ``corrupt``: two frames in three are mangled, the right length: one with its second half overwritten (a
    broken frame that decodes to garbage), the other all but its first two bytes (not decodable at all).
    All may be changed while running (they apply to the next connection / next frame).
    ``connect_times`` (``time.monotonic()`` of each accepted connection) and ``open_connections``
    (connections the client has not closed yet) let tests see what the client did.

    Each frame shows the per-connection frame counter (from 0) and ``tag`` (see :func:`make_frame`);
    change ``tag`` to tell one server incarnation from another.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        fps: float = 30.0,
        width: int = 320,
        height: int = 240,
        tag: int = 0,
        hang: bool = False,
        hang_after: int | None = None,
        status: int = 200,
        host: str = "127.0.0.1",
    ) -> None:
        """``host``: the address to listen on (another interface's, for a client in a network namespace)."""
        self.host = host
        self.port = port or free_port()
        self.fps = fps
        self.width = width
        self.height = height
        self.tag = tag
        self.hang = hang
        self.hang_after = hang_after
        self.status = status
        self.corrupt = False
        self.connections = 0  # accepted connections since construction
        self.connect_times: list[float] = []
        self.frames_sent = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._clients)

    def url(self, path: str = "/stream.mjpg") -> str:
        return f"http://{self.host}:{self.port}{path}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MjpegServer:
        if self._listener is not None:
            return self
        self._stop = threading.Event()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5.0
        while True:  # the previous incarnation's port may take a moment to free up
            try:
                listener.bind((self.host, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.05)
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, args=(listener, self._stop), daemon=True)
        thread.start()
        self._threads = [thread]
        return self

    def stop(self) -> None:
        self._stop.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            clients = list(self._clients)
            self._clients.clear()
        for c in clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads = []

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if stop.is_set():
                    conn.close()
                    return
                self._clients.add(conn)
                self.connections += 1
                self.connect_times.append(time.monotonic())
            t = threading.Thread(target=self._serve, args=(conn, stop), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _idle(conn: socket.socket, stop: threading.Event) -> None:
        """Send nothing; return when the client closes the connection or the server stops."""
        while not stop.is_set():
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable and not conn.recv(4096):
                return

    def _serve(self, conn: socket.socket, stop: threading.Event) -> None:
        try:
            conn.settimeout(2.0)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            if self.status != 200:
                conn.sendall(f"HTTP/1.0 {self.status} Nope\r\nContent-Length: 0\r\n\r\n".encode())
                return
            conn.sendall(
                (
                    "HTTP/1.0 200 OK\r\n"
                    "Server: seg-agent-test\r\n"
                    "Cache-Control: no-cache\r\n"
                    "Connection: close\r\n"
                    f"Content-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n"
                    "\r\n"
                ).encode()
            )
            if self.hang:
                self._idle(conn, stop)
                return
            period = 1.0 / self.fps
            index = 0
            next_t = time.monotonic()
            while not stop.is_set():
                if self.hang_after is not None and index >= self.hang_after:
                    self._idle(conn, stop)
                    return
                jpeg = _encode(make_frame(index, self.width, self.height, self.tag))
                if self.corrupt and index % 3:  # two in three: the second half overwritten, or no JPEG at all
                    half = len(jpeg) // 2 if index % 3 == 1 else 2
                    jpeg = jpeg[:half] + bytes((i * 37) & 0xFF for i in range(len(jpeg) - half))
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n").encode()
                conn.sendall(part + jpeg + b"\r\n")
                with self._lock:
                    self.frames_sent += 1
                index += 1
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                else:
                    next_t = time.monotonic()
        except OSError:
            pass
        finally:
            with self._lock:
                self._clients.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
