"""Client of Roboflow's hosted ("serverless") instance-segmentation route (contract §1).

``POST {api_url}/{project}/{version}?api_key=..&confidence=..&overlap=..&max_detections=..`` with the
frame as base64 JPEG text in the body, over one keep-alive :class:`requests.Session` whose connection pool
holds ``max_in_flight`` connections, so N worker threads may call :meth:`ServerlessClient.infer` at once.

Every failure becomes a :class:`ServerlessError` with a ``kind`` the router acts on. The API key travels in
the URL, so nothing that could carry the URL is let out unredacted: exception texts are built from
:func:`agent.logs.redact`\\ ed strings and raised without the original exception attached (no ``__cause__``
or ``__context__`` that a traceback would print), and a logging filter redacts the records of the
``urllib3``/``requests`` loggers (urllib3 logs the full request line at DEBUG).
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import math
import threading
import time
from typing import Any, Literal

import cv2
import numpy as np
import requests
from numpy.typing import NDArray
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from agent import logs
from agent.config import ServerlessSettings
from agent.results import parse_api_response

__all__ = [
    "ErrorKind",
    "ServerlessClient",
    "ServerlessError",
]

log = logging.getLogger(__name__)

ErrorKind = Literal["connect", "timeout", "tls", "http", "auth", "rate_limited", "bad_response"]

# Retry-After is honoured up to this long (a server asking for more is treated as asking for this much).
MAX_RETRY_AFTER_S = 3600.0
_USER_AGENT = "seg-agent/0.1"


class ServerlessError(Exception):
    """A call to the hosted API that gave no usable result.

    ``kind``: ``connect`` (refused, DNS, reset), ``timeout`` (connect or read), ``tls``, ``http`` (other
    non-2xx), ``auth`` (401/403: the key isn't allowed, a configuration error), ``rate_limited`` (429),
    ``bad_response`` (a body that isn't the API's JSON). ``status`` is the HTTP status where one came,
    ``retry_after`` the seconds a ``Retry-After`` header asked for. The text is always redacted.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        secret: str = "",
    ) -> None:
        self.kind: ErrorKind = kind
        self.status = status
        self.retry_after = retry_after
        self.message = logs.redact(message, secret)
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def __repr__(self) -> str:
        return f"ServerlessError({self.kind!r}, {self.message!r}, status={self.status!r})"


# urllib3 logs the full request line (with ``api_key=``) at DEBUG. Handlers set up by agent.logs redact every
# record; a filter on each of these loggers also covers handlers that aren't ours.
_HTTP_LOGGERS = ("urllib3", "urllib3.connectionpool", "urllib3.connection", "urllib3.response", "requests")


# --------------------------------------------------------------------------- client


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), clamped to [0, 3600]."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _error_message(response: requests.Response) -> str:
    """The server's own reason: ``{"message": ...}`` or ``{"Message": ...}`` (403), else the text."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "Message", "error", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    text = response.content[:200].decode("utf-8", "replace").strip()
    return " ".join(text.split()) or "(empty body)"


class ServerlessClient:
    """Calls the hosted route for one model. Thread-safe; one keep-alive session for all calls."""

    def __init__(
        self,
        settings: ServerlessSettings,
        *,
        confidence: float,
        overlap: float,
        max_detections: int,
        pool_size: int | None = None,
    ) -> None:
        """``confidence``/``overlap`` on the API's 0-100 scale; ``pool_size`` (connections kept alive)
        defaults to ``settings.max_in_flight``; pass ``max_in_flight * cameras`` when one client serves
        several cameras."""
        if not settings.model_id:
            raise ValueError("serverless.model_id is not set")
        self.settings = settings
        self._key = settings.api_key.reveal()
        self._url = f"{settings.api_url.rstrip('/')}/{settings.model_id}"
        self._params = {
            "api_key": self._key,
            "confidence": f"{confidence:g}",
            "overlap": f"{overlap:g}",
            "max_detections": str(int(max_detections)),
        }
        self._timeout = (settings.connect_timeout_s, settings.timeout_s)
        size = max(1, pool_size or settings.max_in_flight)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"User-Agent": _USER_AGENT, "Accept": "application/json"})
        self._lock = threading.Lock()
        self._requests = 0
        self._bytes_sent = 0
        self._closed = False
        logs.add_secret(self._key)
        logs.redact_loggers(*_HTTP_LOGGERS)

    @property
    def model_id(self) -> str:
        return self.settings.model_id

    @property
    def endpoint(self) -> str:
        """The route without the query (safe to print)."""
        return self._url

    def upload_hw(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """The size ``(h, w)`` a frame of ``frame_hw`` is uploaded at (``upload_max_side``)."""
        h, w = frame_hw
        limit = self.settings.upload_max_side
        if not limit or max(w, h) <= limit:
            return h, w
        factor = limit / max(w, h)
        return max(1, round(h * factor)), max(1, round(w * factor))

    def encode(
        self, image_bgr: NDArray[np.uint8], frame_hw: tuple[int, int] | None = None, jpeg: bytes | None = None
    ) -> tuple[bytes, float, tuple[int, int]]:
        """The upload body (base64 JPEG), the factor that maps upload pixels back to the frame, and the
        uploaded size ``(w, h)``. ``frame_hw``: the frame's true size when ``image_bgr`` is a reduced decode.
        ``jpeg``: the camera's own JPEG of the frame, sent as it is when the frame needs no resizing (no
        second encode, no second generation of JPEG loss)."""
        ih, iw = image_bgr.shape[:2]
        h, w = frame_hw or (ih, iw)
        new_h, new_w = self.upload_hw((h, w))
        if jpeg is not None and (new_h, new_w) == (h, w):
            return base64.b64encode(jpeg), 1.0, (int(w), int(h))
        new_h, new_w = min(new_h, ih), min(new_w, iw)  # never upscaled: a reduced decode goes as it is
        upload: NDArray[Any] = image_bgr
        if (new_h, new_w) != (ih, iw):
            upload = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_AREA)
        scale = max(w, h) / max(new_w, new_h)
        ok, encoded = cv2.imencode(".jpg", upload, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        if not ok:
            raise ValueError("the frame could not be JPEG-encoded")
        uh, uw = upload.shape[:2]
        return base64.b64encode(encoded.tobytes()), scale, (int(uw), int(uh))

    def infer(
        self, image_bgr: NDArray[np.uint8], *, frame_hw: tuple[int, int] | None = None, jpeg: bytes | None = None
    ) -> dict[str, Any]:
        """One frame through the hosted model: the cleaned API dict in original-frame pixels
        (``frame_hw``: the frame's true size when ``image_bgr`` is a reduced decode; ``jpeg``: see
        :meth:`encode`).

        Raises :class:`ServerlessError` (redacted, nothing chained) on any failure.
        """
        if self._closed:
            raise ServerlessError("connect", "client is closed")
        h, w = frame_hw or image_bgr.shape[:2]
        body, scale, _ = self.encode(image_bgr, frame_hw, jpeg)
        with self._lock:
            self._requests += 1
            self._bytes_sent += len(body)
        error: ServerlessError | None = None
        response: requests.Response | None = None
        try:
            response = self._session.post(
                self._url,
                params=self._params,
                data=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=self._timeout,
            )
        except requests.exceptions.SSLError as exc:
            error = self._error("tls", f"TLS error talking to {self._url}: {exc}")
        except requests.exceptions.ConnectTimeout:
            error = self._error("timeout", f"no connection to {self._url} within {self._timeout[0]:g} s")
        except requests.exceptions.ReadTimeout:
            error = self._error("timeout", f"{self._url} did not answer within {self._timeout[1]:g} s")
        except requests.exceptions.ChunkedEncodingError as exc:
            error = self._error("bad_response", f"truncated response from {self._url}: {exc}")
        except requests.exceptions.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):  # timed out reading the body
                error = self._error("timeout", f"{self._url} stalled mid-response ({self._timeout[1]:g} s)")
            else:
                error = self._error("connect", f"cannot reach {self._url}: {exc}")
        except requests.exceptions.RequestException as exc:
            error = self._error("connect", f"request to {self._url} failed: {type(exc).__name__}: {exc}")
        if error is not None:  # raised outside the except blocks: no __context__ that could hold the URL
            raise error
        assert response is not None
        return self._result(response, scale=scale, image_wh=(int(w), int(h)))

    def _result(self, response: requests.Response, *, scale: float, image_wh: tuple[int, int]) -> dict[str, Any]:
        status = response.status_code
        if status in (401, 403):
            raise self._error(
                "auth",
                f"HTTP {status} from {self._url}: {_error_message(response)}"
                " (check serverless.api_key and serverless.model_id)",
                status=status,
            )
        if not 200 <= status < 300:
            retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            kind: ErrorKind = "rate_limited" if status == 429 else "http"
            raise self._error(
                kind,
                f"HTTP {status} from {self._url}: {_error_message(response)}",
                status=status,
                retry_after=retry_after,
            )
        reason: str | None = None
        try:
            obj = json.loads(response.content)
        except ValueError:
            ctype = response.headers.get("Content-Type", "?")
            reason = f"HTTP {status} from {self._url} is not JSON (Content-Type {ctype})"
        if reason is None:
            try:
                return parse_api_response(obj, scale=scale, image_wh=image_wh)
            except ValueError as exc:
                reason = f"HTTP {status} from {self._url} is not the API's response: {exc}"
        raise self._error("bad_response", reason, status=status)

    def _error(
        self, kind: ErrorKind, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> ServerlessError:
        return ServerlessError(kind, message, status=status, retry_after=retry_after, secret=self._key)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self._requests, "bytes_sent": self._bytes_sent}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._session.close()

    def __enter__(self) -> ServerlessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerlessClient({self._url!r})"
