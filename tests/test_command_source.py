"""agent.command_source: cameras read from a program's stdout (the stand-in camera is ffmpeg playing the
sample video to stdout, as rpicam-vid / gst-launch-1.0 would on a board)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture import Camera, CameraState
from agent.command_source import JpegSplitter, LineLimiter, child_environment
from agent.config import CameraSettings, CommandSettings, ConfigError, parse_settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "models" / "sample.avi"
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
# Generous bounds: the machine running the tests may be heavily loaded; these only bound a hang.
SLOW = 30.0


def wait_for(pred: Callable[[], bool], timeout: float = SLOW) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def jpeg(h: int = 48, w: int = 64, value: int = 90, params: tuple[int, ...] = ()) -> bytes:
    img = np.full((h, w, 3), value, np.uint8)
    img[: h // 2, : w // 3] = (255 - value, 20, 200)
    ok, data = cv2.imencode(".jpg", img, list(params))
    assert ok
    return data.tobytes()


def with_exif_thumbnail(image: bytes) -> bytes:
    """The image with an APP1 Exif segment right after SOI that embeds a whole JPEG (SOI..EOI)."""
    payload = b"Exif\x00\x00" + jpeg(8, 8)
    return image[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + image[2:]


def split_all(stream: bytes, chunk: int, max_bytes: int = 1 << 20) -> tuple[list[bytes], JpegSplitter]:
    splitter = JpegSplitter(max_bytes)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        splitter.feed(stream[i : i + chunk])
        while (image := splitter.next_jpeg()) is not None:
            out.append(image)
    return out, splitter


A, B = jpeg(value=40), jpeg(64, 80, 160)
PROGRESSIVE = jpeg(params=(cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
RESTARTS = jpeg(96, 128, params=(cv2.IMWRITE_JPEG_RST_INTERVAL, 1))
EXIF = with_exif_thumbnail(A)
PART = b"--boundary\r\nContent-Type: image/jpeg\r\nContent-Length: 123\r\n\r\n"

SPLIT_CASES = [
    # (name, stream, expected images)
    ("empty", b"", []),
    ("garbage only", b"hello \xff\xff world \xff", []),
    ("one image", A, [A]),
    ("two back to back", A + B, [A, B]),
    ("multipartmux parts", PART + A + b"\r\n" + PART + B + b"\r\n", [A, B]),
    ("Exif thumbnail's EOI is not the end", EXIF + B, [EXIF, B]),
    ("progressive (several scans)", PROGRESSIVE + A, [PROGRESSIVE, A]),
    ("restart markers", RESTARTS, [RESTARTS]),
    ("an incomplete image is never returned", A + B[: len(B) // 2], [A]),
    ("a cut-off image is skipped", A[:200] + B, [B]),
    ("SOI split by garbage", b"\xff" + A, [A]),
]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize(("name", "stream", "expected"), SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_jpeg_splitter(name: str, stream: bytes, expected: list[bytes], chunk: int) -> None:
    images, _ = split_all(stream, chunk)
    assert images == expected
    for image in images:
        assert cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR) is not None


def test_jpeg_splitter_counts_skipped_bytes_and_drops_oversized_images() -> None:
    images, splitter = split_all(PART + A, 13)
    assert images == [A] and splitter.dropped == len(PART)
    big = jpeg(400, 400)  # arrives in pieces; past max_bytes without its end it is dropped
    images, splitter = split_all(big + A, 64, max_bytes=len(big) // 2)
    assert images == [A]
    assert splitter.buffered() == 0


LIMITER_CASES = [
    # (times, expected (shown, held) per line): 2 lines per 10 s
    ([0.0], [(True, 0)]),
    ([0.0, 1.0, 2.0, 3.0], [(True, 0), (True, 0), (False, 0), (False, 0)]),
    ([0.0, 1.0, 2.0, 10.0, 11.0, 12.0], [(True, 0), (True, 0), (False, 0), (True, 1), (True, 0), (False, 0)]),
    ([0.0, 100.0], [(True, 0), (True, 0)]),
]


@pytest.mark.parametrize(("times", "expected"), LIMITER_CASES)
def test_line_limiter(times: list[float], expected: list[tuple[bool, int]]) -> None:
    limiter = LineLimiter(lines=2, window_s=10.0)
    assert [limiter.admit(t) for t in times] == expected


@pytest.mark.parametrize(
    ("env", "kept"),
    [
        ({}, set()),
        ({"PATH": "/bin", "HOME": "/x", "LANG": "C"}, {"PATH", "HOME", "LANG"}),
        ({"ROBOFLOW_API_KEY": "s", "MQTT_PASSWORD": "s", "PATH": "/bin"}, {"PATH"}),
        (
            {"GITHUB_TOKEN": "s", "aws_secret_access_key": "s", "MY_CREDENTIALS": "s", "XDG_CACHE_HOME": "/c"},
            {"XDG_CACHE_HOME"},
        ),
    ],
)
def test_child_environment_drops_secrets(env: dict[str, str], kept: set[str]) -> None:
    assert set(child_environment(env)) == kept


# ---------------------------------------------------------------------------------------- config


def parse_camera(source: object, **extra: object) -> CameraSettings:
    raw = {"device_id": "d", "cameras": [{"name": "c", "source": source, **extra}], "state_dir": "s"}
    raw["inference"] = {"mode": "local", "local": {"model": str(ROOT / "models" / "demo-seg.onnx")}}
    return parse_settings(raw, base_dir=ROOT, env={}).cameras[0]


@pytest.mark.parametrize(
    ("source", "argv", "shell"),
    [
        ({"command": ["rpicam-vid", "-t", 0, "-o", "-"]}, ("rpicam-vid", "-t", "0", "-o", "-"), False),
        (
            {"command": "rpicam-vid -t 0 --codec mjpeg -o -"},
            ("rpicam-vid", "-t", "0", "--codec", "mjpeg", "-o", "-"),
            False,
        ),
        (
            {"command": "gst-launch-1.0 -q a ! 'video/x-raw,width=1' ! fdsink"},
            ("gst-launch-1.0", "-q", "a", "!", "video/x-raw,width=1", "!", "fdsink"),
            False,
        ),
        ({"command": "a | b", "shell": True}, ("/bin/sh", "-c", "a | b"), True),
    ],
)
def test_config_command_source(source: object, argv: tuple[str, ...], shell: bool) -> None:
    cam = parse_camera(source)
    assert cam.command == CommandSettings(argv=argv, shell=shell, format="mjpeg")
    assert not cam.is_file
    assert str(cam.source).startswith("command: ")


@pytest.mark.parametrize(
    ("source", "extra", "key", "reason"),
    [
        ({"command": []}, {}, "cameras[0].source.command", "must not be empty"),
        ({"command": ""}, {}, "cameras[0].source.command", "must not be empty"),
        ({"command": "a 'b"}, {}, "cameras[0].source.command", "cannot split"),
        ({"command": {"x": 1}}, {}, "cameras[0].source.command", "expected a list"),
        ({"command": [True]}, {}, "cameras[0].source.command", "expected a list"),
        ({"command": ["a"], "shell": True}, {}, "cameras[0].source.shell", "one string"),
        ({"command": ["a"], "format": "h264"}, {}, "cameras[0].source.format", "not one of"),
        ({"command": ["a"], "format": "bgr24"}, {}, "cameras[0].width", "width and height"),
        ({"command": ["a"], "extra": 1}, {}, "cameras[0].source.extra", "unknown key"),
        ({"shell": True}, {}, "cameras[0].source.command", "required"),
    ],
)
def test_config_command_source_errors(source: object, extra: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_camera(source, **extra)
    assert err.value.path == key and reason in str(err.value)


# ----------------------------------------------------------------------------- the real thing


def command_camera(tmp_path: Path, script: str, **settings: object) -> tuple[Camera, Path]:
    """A camera running ``script`` under /bin/sh, which writes its pid to a file and then execs."""
    pid_file = tmp_path / "pid"
    text = f"echo $$ > {pid_file}; {script}"
    cam_settings = CameraSettings(
        name="cam",
        source="command: test",
        fps=0,
        stall_timeout_s=float(settings.pop("stall_timeout_s", 5.0)),  # type: ignore[arg-type]
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        command=CommandSettings(argv=("/bin/sh", "-c", text), shell=True, format=settings.pop("format", "mjpeg")),  # type: ignore[arg-type]
        **settings,  # type: ignore[arg-type]
    )
    return Camera(cam_settings), pid_file


def read_pid(pid_file: Path) -> int:
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    return int(pid_file.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


FFMPEG = f"exec ffmpeg -nostdin -loglevel error -re -stream_loop -1 -i {SAMPLE} -f mjpeg -"


@needs_ffmpeg
def test_frames_arrive_child_death_is_recovered_and_stop_kills_it(tmp_path: Path) -> None:
    cam, pid_file = command_camera(tmp_path, FFMPEG)
    cam.start()
    try:
        frame = cam.read(SLOW)
        assert frame is not None and frame.frame_hw == (480, 640) and frame.image is not None
        first = read_pid(pid_file)
        pid_file.unlink()
        os.kill(first, 9)  # the camera program dies
        second = read_pid(pid_file)  # ... and is started again
        assert second != first
        assert wait_for(lambda: cam.status().reconnects >= 1 and cam.status().state == CameraState.STREAMING)
        assert cam.read(SLOW) is not None
        assert not alive(first)
    finally:
        cam.stop()
    assert not alive(second), "the camera program outlived the camera"


@needs_ffmpeg
def test_a_stalled_program_is_killed_and_restarted(tmp_path: Path) -> None:
    image = tmp_path / "one.jpg"
    image.write_bytes(A)
    cam, pid_file = command_camera(tmp_path, f"cat {image}; exec sleep 600", stall_timeout_s=1.0)
    cam.start()
    try:
        assert cam.read(SLOW) is not None
        first = read_pid(pid_file)
        pid_file.unlink()
        assert wait_for(lambda: cam.status().state == CameraState.STALLED)
        assert wait_for(lambda: not alive(first)), "the stalled program was not killed"
        second = read_pid(pid_file)
        assert second != first
    finally:
        cam.stop()
    assert not alive(second)


@needs_ffmpeg
def test_raw_bgr24_frames(tmp_path: Path) -> None:
    script = f"exec ffmpeg -nostdin -loglevel error -re -i {SAMPLE} -vf scale=160:120 -f rawvideo -pix_fmt bgr24 -"
    cam, _ = command_camera(tmp_path, script, format="bgr24", width=160, height=120)
    cam.start()
    try:
        frame = cam.read(SLOW)
        assert frame is not None and frame.image is not None
        assert frame.image.shape == (120, 160, 3) and frame.frame_hw == (120, 160)
        assert frame.image.std() > 1.0  # a picture, not zeros
    finally:
        cam.stop()


@needs_ffmpeg
def test_secrets_stay_out_of_the_programs_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf-secret-123")
    monkeypatch.setenv("SEG_AGENT_TEST_VISIBLE", "yes")
    cam, pid_file = command_camera(tmp_path, FFMPEG)
    cam.start()
    try:
        assert cam.read(SLOW) is not None
        environ = Path(f"/proc/{read_pid(pid_file)}/environ").read_bytes()
    finally:
        cam.stop()
    assert b"SEG_AGENT_TEST_VISIBLE=yes" in environ
    assert b"rf-secret-123" not in environ and b"ROBOFLOW_API_KEY" not in environ


@needs_ffmpeg
def test_stderr_is_drained_and_rate_limited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 3000 lines (more than a pipe buffer holds) before the first frame: a program whose stderr is not read
    # would block and never send a frame.
    script = f"i=0; while [ $i -lt 3000 ]; do echo noise line $i >&2; i=$((i+1)); done; {FFMPEG}"
    cam, _ = command_camera(tmp_path, script)
    with caplog.at_level(logging.INFO, logger="agent.capture"):
        cam.start()
        try:
            assert cam.read(SLOW) is not None
        finally:
            cam.stop()
    noise = [r for r in caplog.records if "noise line" in r.getMessage()]
    assert 1 <= len(noise) <= 5


def test_a_missing_program_is_retried(tmp_path: Path) -> None:
    settings = CameraSettings(
        name="cam",
        source="command: /nonexistent/camera-tool",
        reconnect_min_s=0.05,
        reconnect_max_s=0.1,
        command=CommandSettings(argv=("/nonexistent/camera-tool", "-o", "-")),
    )
    cam = Camera(settings)
    cam.start()
    try:
        assert wait_for(lambda: cam.status().reconnects >= 2)
        status = cam.status()
        assert status.state == CameraState.RECONNECTING
        assert status.last_error is not None and "cannot open" in status.last_error
    finally:
        cam.stop()
