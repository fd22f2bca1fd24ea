"""The hosted-API client against a real HTTP server on loopback (tests/fake_roboflow.py)."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from agent.config import Secret, ServerlessSettings
from agent.logs import redact
from agent.serverless import ServerlessClient, ServerlessError
from tests.fake_roboflow import CLASS_NAMES, FakeRoboflow, draw_scene, find_blobs

KEY = "rf_SeCrEt-Key+42/xyz"
MODEL = "shapes/3"

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fake() -> Iterator[FakeRoboflow]:
    server = FakeRoboflow(api_key=KEY, model_id=MODEL)
    yield server
    server.close()


def settings(fake: FakeRoboflow, **kw: Any) -> ServerlessSettings:
    base: dict[str, Any] = dict(
        api_url=fake.url, model_id=MODEL, api_key=Secret(KEY), connect_timeout_s=1.0, timeout_s=2.0
    )
    base.update(kw)
    return ServerlessSettings(**base)


def make_client(fake: FakeRoboflow, **kw: Any) -> ServerlessClient:
    return ServerlessClient(settings(fake, **kw), confidence=40, overlap=30, max_detections=300)


def assert_no_key(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text)
        assert "SeCrEt" not in str(text)


def assert_clean_error(exc: ServerlessError) -> None:
    assert_no_key(str(exc), repr(exc), exc.args, exc.message)
    assert_no_key("".join(traceback.format_exception(exc)))
    assert exc.__cause__ is None and exc.__context__ is None


# --------------------------------------------------------------------------- redact


def test_redact_masks_the_key_in_every_form() -> None:
    assert redact(f"GET /m/1?api_key={KEY}&confidence=40", KEY) == "GET /m/1?api_key=***&confidence=40"
    assert redact("url: /m/1?api_key=abc123&x=1", "") == "url: /m/1?api_key=***&x=1"
    assert redact("API_KEY=abc 'x'", "") == "API_KEY=*** 'x'"
    encoded = "rf_SeCrEt-Key%2B42%2Fxyz"
    assert KEY not in redact(f"key {KEY} and {encoded}", KEY)
    assert "SeCrEt" not in redact(f"key {KEY} and {encoded} and rf_SeCrEt-Key%2B42/xyz", KEY)
    assert redact("nothing here", KEY) == "nothing here"


def test_error_text_is_redacted() -> None:
    exc = ServerlessError("connect", f"failed: /m/1?api_key={KEY}&confidence=40 {KEY}", secret=KEY)
    assert_no_key(str(exc), repr(exc), exc.args)
    assert "api_key=***" in str(exc)
    assert str(exc).startswith("connect: ")


# --------------------------------------------------------------------------- success


def test_request_and_answer_follow_the_api(fake: FakeRoboflow) -> None:
    image = draw_scene()
    with make_client(fake) as client:
        api = client.infer(image)
    rec = fake.requests[-1]
    assert rec.path == f"/{MODEL}"
    assert rec.params == {"api_key": KEY, "confidence": "40", "overlap": "30", "max_detections": "300"}
    assert rec.content_type == "application/x-www-form-urlencoded"
    assert rec.image_wh == (640, 480)
    assert api["image"] == {"width": 640, "height": 480}
    assert sorted(p["class"] for p in api["predictions"]) == sorted(CLASS_NAMES)
    confs = [p["confidence"] for p in api["predictions"]]
    assert confs == sorted(confs, reverse=True)
    expected = {b.class_name: b for b in find_blobs(image)}
    for p in api["predictions"]:
        x1, y1, x2, y2 = expected[p["class"]].box_xyxy
        # JPEG blurs edges by a pixel or so
        assert p["x"] == pytest.approx((x1 + x2) / 2, abs=2)
        assert p["y"] == pytest.approx((y1 + y2) / 2, abs=2)
        assert p["width"] == pytest.approx(x2 - x1, abs=3)
        assert p["height"] == pytest.approx(y2 - y1, abs=3)
        assert len(p["points"]) >= 3
        assert set(p) >= {"x", "y", "width", "height", "confidence", "class", "class_id", "points"}


def test_body_is_base64_jpeg() -> None:
    client = ServerlessClient(
        ServerlessSettings(model_id=MODEL, api_key=Secret(KEY), jpeg_quality=90),
        confidence=40,
        overlap=30,
        max_detections=300,
    )
    body, scale, size = client.encode(draw_scene())
    raw = base64.b64decode(body, validate=True)
    assert raw[:3] == b"\xff\xd8\xff"
    assert scale == 1.0 and size == (640, 480)
    client.close()


def test_one_keep_alive_connection(fake: FakeRoboflow) -> None:
    with make_client(fake) as client:
        for _ in range(5):
            client.infer(draw_scene())
    assert fake.calls() == 5
    assert fake.connections == 1


def test_concurrent_calls_share_the_pool(fake: FakeRoboflow) -> None:
    fake.set_fault("slow", slow_s=0.5)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    client = make_client(fake, max_in_flight=4)

    def work() -> None:
        try:
            for _ in range(3):
                results.append(client.infer(draw_scene()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    client.close()
    assert not errors
    assert len(results) == 12
    assert fake.connections <= 4
    # ran in parallel: one at a time takes 12 x 0.5 s, four at a time 1.5 s plus ~0.3 s of work (loaded)
    assert elapsed < 12 * 0.5


def test_slow_answer_within_the_timeout_is_a_result(fake: FakeRoboflow) -> None:
    fake.set_fault("slow", slow_s=2.0)
    with make_client(fake, timeout_s=5.0) as client:
        t0 = time.perf_counter()
        api = client.infer(draw_scene())
    assert time.perf_counter() - t0 >= 2.0
    assert len(api["predictions"]) == 3


# --------------------------------------------------------------------------- downscale


@pytest.mark.parametrize(("size", "max_side"), [((640, 480), 320), ((1000, 750), 333), ((1280, 720), 500)])
def test_downscaled_upload_is_scaled_back(fake: FakeRoboflow, size: tuple[int, int], max_side: int) -> None:
    image = draw_scene(*size)
    with make_client(fake) as full_client:
        full = full_client.infer(image)
    with make_client(fake, upload_max_side=max_side) as small_client:
        small = small_client.infer(image)
    sent = fake.requests[-1].image_wh
    assert sent is not None and max(sent) == max_side
    assert fake.requests[-1].body_bytes < fake.requests[-2].body_bytes
    assert small["image"] == full["image"] == {"width": size[0], "height": size[1]}
    by_class = {p["class"]: p for p in full["predictions"]}
    assert sorted(by_class) == sorted(p["class"] for p in small["predictions"])
    tol = 2.5 * size[0] / max_side  # one upload pixel, blurred by resize and JPEG
    for p in small["predictions"]:
        q = by_class[p["class"]]
        for k in ("x", "y", "width", "height"):
            assert p[k] == pytest.approx(q[k], abs=tol), k
        sp = np.array([[pt["x"], pt["y"]] for pt in p["points"]])
        qp = np.array([[pt["x"], pt["y"]] for pt in q["points"]])
        assert sp.min(0) == pytest.approx(qp.min(0), abs=tol)
        assert sp.max(0) == pytest.approx(qp.max(0), abs=tol)


def test_no_downscale_when_small_enough(fake: FakeRoboflow) -> None:
    with make_client(fake, upload_max_side=1000) as client:
        client.infer(draw_scene())
    assert fake.requests[-1].image_wh == (640, 480)


# --------------------------------------------------------------------------- frames decoded at a reduced size


def offline_client(**kw: Any) -> ServerlessClient:
    return ServerlessClient(
        ServerlessSettings(model_id=MODEL, api_key=Secret(KEY), **kw), confidence=40, overlap=30, max_detections=300
    )


@pytest.mark.parametrize(
    ("frame_hw", "max_side", "expected"),
    [
        ((1080, 1920), 0, (1080, 1920)),
        ((1080, 1920), 640, (360, 640)),
        ((1080, 1920), 320, (180, 320)),
        ((1080, 1920), 1920, (1080, 1920)),  # already small enough
        ((1080, 1920), 4096, (1080, 1920)),
        ((1920, 1080), 640, (640, 360)),  # portrait: the long side is the height
        ((481, 643), 320, (239, 320)),  # 239.38 rounds down
        ((1, 1000), 100, (1, 100)),  # never 0
    ],
)
def test_upload_hw(frame_hw: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    client = offline_client(upload_max_side=max_side)
    assert client.upload_hw(frame_hw) == expected
    client.close()


@pytest.mark.parametrize(
    ("image_hw", "frame_hw", "max_side", "upload_wh", "scale"),
    [
        ((270, 480), (1080, 1920), 0, (480, 270), 4.0),  # a 1/4 decode goes as it is
        ((270, 480), (1080, 1920), 320, (320, 180), 6.0),  # further down to the limit
        ((270, 480), (1080, 1920), 480, (480, 270), 4.0),
        ((270, 480), (1080, 1920), 640, (480, 270), 4.0),  # never upscaled to the 640 the full frame would give
        ((135, 240), (1080, 1920), 0, (240, 135), 8.0),
        ((360, 640), (720, 1280), 0, (640, 360), 2.0),
        ((480, 270), (1920, 1080), 320, (180, 320), 6.0),  # portrait
        ((1080, 1920), None, 640, (640, 360), 3.0),  # a full frame, as before
        ((1080, 1920), (1080, 1920), 0, (1920, 1080), 1.0),
    ],
)
def test_encode_of_a_reduced_decode(
    image_hw: tuple[int, int],
    frame_hw: tuple[int, int] | None,
    max_side: int,
    upload_wh: tuple[int, int],
    scale: float,
) -> None:
    client = offline_client(upload_max_side=max_side)
    image = draw_scene(image_hw[1], image_hw[0])
    body, got_scale, got_wh = client.encode(image, frame_hw)
    assert got_wh == upload_wh
    assert got_scale == pytest.approx(scale)
    sent = cv2.imdecode(np.frombuffer(base64.b64decode(body), np.uint8), cv2.IMREAD_COLOR)
    assert sent is not None and (sent.shape[1], sent.shape[0]) == upload_wh
    client.close()


def _jpeg_decodes(image: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    return cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.imdecode(jpeg, flag)


@pytest.mark.parametrize(
    ("frame_wh", "factor", "max_side", "sent_wh"),
    [
        ((1920, 1080), 4, 0, (480, 270)),
        ((1920, 1080), 4, 320, (320, 180)),
        ((1280, 720), 2, 0, (640, 360)),
        ((1920, 1080), 8, 0, (240, 135)),
    ],
)
def test_infer_on_a_reduced_decode_answers_in_frame_pixels(
    fake: FakeRoboflow, frame_wh: tuple[int, int], factor: int, max_side: int, sent_wh: tuple[int, int]
) -> None:
    full, reduced = _jpeg_decodes(draw_scene(*frame_wh), factor)
    assert (reduced.shape[1], reduced.shape[0]) == (frame_wh[0] // factor, frame_wh[1] // factor)
    with make_client(fake) as full_client:
        want = full_client.infer(full)
    assert fake.requests[-1].image_wh == frame_wh
    with make_client(fake, upload_max_side=max_side) as client:
        got = client.infer(reduced, frame_hw=(frame_wh[1], frame_wh[0]))
    assert fake.requests[-1].image_wh == sent_wh
    assert got["image"] == want["image"] == {"width": frame_wh[0], "height": frame_wh[1]}
    by_class = {p["class"]: p for p in want["predictions"]}
    assert sorted(p["class"] for p in got["predictions"]) == sorted(by_class) == sorted(CLASS_NAMES)
    # a few upload pixels: the decode, the resize and the upload's own JPEG (colour bleeds at 240x135) blur edges
    tol = 3.0 * frame_wh[0] / sent_wh[0]
    for p in got["predictions"]:
        q = by_class[p["class"]]
        for k in ("x", "y", "width", "height"):
            assert p[k] == pytest.approx(q[k], abs=tol), (p["class"], k)
        gp = np.array([[pt["x"], pt["y"]] for pt in p["points"]])
        qp = np.array([[pt["x"], pt["y"]] for pt in q["points"]])
        assert gp.min(0) == pytest.approx(qp.min(0), abs=tol)
        assert gp.max(0) == pytest.approx(qp.max(0), abs=tol)
    # in frame pixels, not the upload's: the right-most shape lies beyond the upload's width
    assert max(pt["x"] for p in got["predictions"] for pt in p["points"]) > sent_wh[0]


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "kind", "status", "retry_after"),
    [
        ("hang", "timeout", None, None),
        ("slow", "timeout", None, None),
        ("500", "http", 500, None),
        ("503", "http", 503, 3.0),
        ("429", "rate_limited", 429, 3.0),
        ("403", "auth", 403, None),
        ("html", "bad_response", 200, None),
        ("not_api_json", "bad_response", 200, None),
        ("truncated", "bad_response", None, None),
        ("reset", "connect", None, None),
    ],
)
def test_faults_become_typed_redacted_errors(
    fake: FakeRoboflow, fault: str, kind: str, status: int | None, retry_after: float | None
) -> None:
    fake.set_fault(fault, slow_s=2.0)
    with make_client(fake, timeout_s=0.4) as client, pytest.raises(ServerlessError) as info:
        client.infer(draw_scene())
    exc = info.value
    assert exc.kind == kind
    assert exc.status == status
    assert exc.retry_after == retry_after
    assert_clean_error(exc)
    if fault == "403":
        assert "User is not authorized" in str(exc)


def test_connection_refused(fake: FakeRoboflow) -> None:
    client = make_client(fake)
    client.infer(draw_scene())  # a kept-alive connection exists
    fake.stop()
    with pytest.raises(ServerlessError) as info:
        client.infer(draw_scene())
    assert info.value.kind == "connect"
    assert_clean_error(info.value)
    fake.start()
    assert client.infer(draw_scene())["image"]["width"] == 640
    client.close()


def test_tls_failure(fake: FakeRoboflow) -> None:
    with (
        make_client(fake, api_url=fake.url.replace("http://", "https://")) as client,
        pytest.raises(ServerlessError) as info,
    ):
        client.infer(draw_scene())
    assert info.value.kind == "tls"
    assert_clean_error(info.value)


def test_wrong_key_and_unknown_model(fake: FakeRoboflow) -> None:
    with make_client(fake, api_key=Secret("not-the-key")) as client, pytest.raises(ServerlessError) as info:
        client.infer(draw_scene())
    assert info.value.kind == "auth" and info.value.status == 403
    assert "not-the-key" not in str(info.value)
    with make_client(fake, model_id="nope/1") as client, pytest.raises(ServerlessError) as info:
        client.infer(draw_scene())
    assert info.value.kind == "http" and info.value.status == 404
    assert "not found" in str(info.value)


def test_retry_after_as_http_date(fake: FakeRoboflow) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    fake.set_fault("429", retry_after=when)
    with make_client(fake) as client, pytest.raises(ServerlessError) as info:
        client.infer(draw_scene())
    assert info.value.retry_after is not None and 100 < info.value.retry_after <= 121
    fake.set_fault("429", retry_after="garbage")
    with make_client(fake) as client, pytest.raises(ServerlessError) as info:
        client.infer(draw_scene())
    assert info.value.kind == "rate_limited" and info.value.retry_after is None


def test_closed_client_refuses() -> None:
    client = ServerlessClient(
        ServerlessSettings(model_id=MODEL, api_key=Secret(KEY)), confidence=40, overlap=30, max_detections=10
    )
    client.close()
    with pytest.raises(ServerlessError) as info:
        client.infer(draw_scene())
    assert info.value.kind == "connect"


# --------------------------------------------------------------------------- the key never shows


def test_no_log_line_holds_the_key(fake: FakeRoboflow, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(fake, timeout_s=0.3)
    client.infer(draw_scene())
    errors: list[ServerlessError] = []
    for fault in ("500", "403", "hang", "truncated"):
        fake.set_fault(fault)
        try:
            client.infer(draw_scene())
        except ServerlessError as exc:
            errors.append(exc)
            logging.getLogger("test").exception("call failed: %s", exc)
    fake.clear_fault()
    fake.stop()
    try:
        client.infer(draw_scene())
    except ServerlessError as exc:
        errors.append(exc)
    client.close()
    assert len(errors) == 5
    assert "api_key=***" in caplog.text  # urllib3 logged the request line, redacted
    formatter = logging.Formatter("%(name)s %(message)s")
    for record in caplog.records:
        assert_no_key(formatter.format(record))
    assert_no_key(caplog.text, repr(client), client.stats())
    for exc in errors:
        assert_clean_error(exc)


def test_image_helper_decodes() -> None:
    # the fake's decoder must read what the client sends (guards the scaling tests)
    ok, jpeg = cv2.imencode(".jpg", draw_scene(320, 240))
    assert ok
    from tests.fake_roboflow import _decode

    img = _decode(base64.b64encode(jpeg.tobytes()))
    assert img is not None and img.shape == (240, 320, 3)


# ----------------------------------------------------------------------------------------------------------
# The camera's own JPEG


@pytest.mark.parametrize(
    ("frame_wh", "reduce", "max_side", "as_sent"),
    [
        ((640, 480), 1, 0, True),  # nothing to resize: the camera's bytes go as they are
        ((640, 480), 1, 640, True),  # the limit is the frame's size: still nothing to resize
        ((640, 480), 1, 320, False),  # resized for upload: encoded again
        ((1280, 720), 2, 0, True),  # a reduced decode, but the upload wants the full frame: the camera's bytes
        ((1280, 720), 2, 640, False),
    ],
)
def test_encode_sends_the_cameras_jpeg_when_nothing_is_resized(
    frame_wh: tuple[int, int], reduce: int, max_side: int, as_sent: bool
) -> None:
    client = offline_client(upload_max_side=max_side)
    frame = draw_scene(*frame_wh)
    ok, camera_jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    image = frame if reduce == 1 else cv2.imdecode(camera_jpeg, cv2.IMREAD_REDUCED_COLOR_2)
    frame_hw = (frame_wh[1], frame_wh[0])
    body, scale, wh = client.encode(image, frame_hw, camera_jpeg.tobytes())
    assert (base64.b64decode(body) == camera_jpeg.tobytes()) == as_sent
    sent = cv2.imdecode(np.frombuffer(base64.b64decode(body), np.uint8), cv2.IMREAD_COLOR)
    assert (sent.shape[1], sent.shape[0]) == wh
    assert scale == pytest.approx(frame_wh[0] / wh[0])
    client.close()


def test_infer_with_the_cameras_jpeg_uploads_those_bytes(fake: FakeRoboflow) -> None:
    client = make_client(fake)
    frame = draw_scene()
    ok, camera_jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    with_jpeg = client.infer(frame, jpeg=camera_jpeg.tobytes())
    without = client.infer(frame)
    sent, reencoded = fake.requests[-2:]
    assert sent.body_sha256 == hashlib.sha256(base64.b64encode(camera_jpeg.tobytes())).hexdigest()
    assert reencoded.body_sha256 != sent.body_sha256
    assert with_jpeg["image"] == without["image"] == {"width": 640, "height": 480}
    assert sorted(p["class"] for p in with_jpeg["predictions"]) == sorted(CLASS_NAMES)
    for a, b in zip(
        sorted(with_jpeg["predictions"], key=lambda p: p["class"]),
        sorted(without["predictions"], key=lambda p: p["class"]),
        strict=True,
    ):
        assert abs(a["x"] - b["x"]) <= 2 and abs(a["y"] - b["y"]) <= 2
    client.close()
