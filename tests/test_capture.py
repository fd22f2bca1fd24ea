"""agent.capture against real OpenCV: generated MJPG files and a loopback MJPEG-over-HTTP camera."""

from __future__ import annotations

import itertools
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.capture import Camera, Frame
from agent.config import CameraSettings
from agent.logs import redact

try:  # tests/ as a package, or as a plain directory that pytest puts on sys.path
    from tests.streams import MjpegServer, decode_marks, free_port, write_video
except ImportError:
    from streams import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        MjpegServer,
        decode_marks,
        free_port,
        write_video,
    )

FAST = {
    "stall_timeout_s": 1.0,
    "open_timeout_s": 1.0,
    "reconnect_min_s": 0.1,
    "reconnect_max_s": 1.0,
}


def settings(source: str | int, **kw: Any) -> CameraSettings:
    values: dict[str, Any] = {"name": "cam", "source": source, **FAST}
    values.update(kw)
    return CameraSettings(**values)


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def read_all(cam: Camera, timeout: float = 3.0, limit: int = 10_000) -> list[Frame]:
    frames: list[Frame] = []
    while len(frames) < limit and (frame := cam.read(timeout)) is not None:
        frames.append(frame)
    return frames


def index_of(frame: Frame) -> int:
    return decode_marks(frame.image)[0]


def tag_of(frame: Frame) -> int:
    return decode_marks(frame.image)[1]


def transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The states the camera went to, in order, from its log lines."""
    return [
        r.getMessage().split(" -> ", 1)[1].split()[0].rstrip(":")
        for r in caplog.records
        if r.name == "agent.capture" and " -> " in r.getMessage()
    ]


def capture_threads(gen: int | None = None) -> list[threading.Thread]:
    prefix = "capture-cam#" + ("" if gen is None else str(gen))
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames at 30 fps, 320x240; frame i shows i."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", frames=60, fps=30.0)


@pytest.fixture
def cameras() -> Iterator[Callable[..., Camera]]:
    """Build started cameras (``make(settings, cls=Camera)``) that are stopped after the test."""
    made: list[Camera] = []

    def make(s: CameraSettings, cls: type[Camera] = Camera) -> Camera:
        cam = cls(s)
        made.append(cam)
        cam.start()
        return cam

    yield make
    for cam in made:
        cam.stop(timeout=1.0)


@pytest.fixture
def server() -> Iterator[MjpegServer]:
    srv = MjpegServer(tag=1)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.capture")


# --------------------------------------------------------------------------- files


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (5.0, list(range(0, 60, 6))),
        (0.0, list(range(60))),
        (60.0, list(range(60))),  # faster than the file: every frame, nothing twice
        (7.0, [math.ceil(k * 30 / 7 - 1e-6) for k in range(14)]),  # 0, 5, 9, 13, 18, ...
    ],
)
def test_file_batch_hands_out_exactly_the_sampled_frames(
    video: Path, cameras: Callable[..., Camera], fps: float, expected: list[int]
) -> None:
    cam = cameras(settings(str(video), fps=fps, realtime=False))
    frames = read_all(cam)
    assert [index_of(f) for f in frames] == expected
    assert [f.source_pos for f in frames] == expected
    assert [f.seq for f in frames] == list(range(1, len(expected) + 1))
    assert all(f.camera == "cam" and f.image.shape == (240, 320, 3) for f in frames)
    assert cam.ended
    assert cam.read(0.5) is None
    st = cam.status()
    assert st.state == "ended"
    assert (st.frames_read, st.frames_sampled, st.reconnects) == (60, len(expected), 0)
    assert (st.width, st.height) == (320, 240)


@pytest.mark.timeout(20)
def test_file_batch_waits_for_a_slow_consumer(video: Path, cameras: Callable[..., Camera]) -> None:
    cam = cameras(settings(str(video), fps=10.0, realtime=False))
    time.sleep(0.3)  # the worker must wait for us, not skip ahead
    assert not cam.ended
    indices = []
    while (frame := cam.read(3.0)) is not None:
        indices.append(index_of(frame))
        time.sleep(0.02)
    assert indices == list(range(0, 60, 3))
    assert cam.ended


@pytest.mark.timeout(20)
@pytest.mark.parametrize("length", [60, 64])
def test_file_loop_wraps_around_on_the_file_timeline(
    tmp_path: Path, cameras: Callable[..., Camera], length: int
) -> None:
    path = write_video(tmp_path / "loop.avi", frames=length, fps=30.0)
    cam = cameras(settings(str(path), fps=5.0, realtime=False, loop=True))
    frames = read_all(cam, limit=25)
    expected = [(6 * k) % length for k in range(25)]  # 64 frames: ..., 54, 60, 2, 8, ...
    assert [index_of(f) for f in frames] == expected
    assert [f.source_pos for f in frames] == expected
    assert not cam.ended
    assert cam.status().state == "streaming"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fps", [0.0, 5.0])
def test_file_realtime_plays_at_the_files_pace(video: Path, cameras: Callable[..., Camera], fps: float) -> None:
    t0 = time.monotonic()
    cam = cameras(settings(str(video), fps=fps, realtime=True))
    first = cam.read(3.0)
    assert first is not None and index_of(first) == 0
    time.sleep(0.1)
    frames = [first, *read_all(cam)]
    elapsed = time.monotonic() - t0
    indices = [index_of(f) for f in frames]
    assert 1.2 < elapsed < 10.0  # the file is 2 s long; loose on purpose
    assert indices == sorted(set(indices))  # newest-frame semantics: may skip, never repeats
    step = 6 if fps else 1
    assert all(i % step == 0 for i in indices)
    assert indices[-1] == 60 - step  # the last sampled frame stays until it is read
    assert cam.ended and cam.status().state == "ended"
    # timestamps follow the file's clock: 1/30 s per frame, give or take scheduling
    span = frames[-1].timestamp - frames[0].timestamp
    assert span > 0.6 * (indices[-1] - indices[0]) / 30.0


class CountingCamera(Camera):
    """Counts decodes: the only place a Camera decodes is ``_retrieve``."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.decoded = 0

    def _retrieve(self, cap: Any) -> Any:
        self.decoded += 1
        return super()._retrieve(cap)


@pytest.mark.timeout(20)
def test_skipped_frames_are_grabbed_but_never_decoded(
    video: Path, server: MjpegServer, cameras: Callable[..., Camera]
) -> None:
    cam = cameras(settings(str(video), fps=5.0, realtime=False), cls=CountingCamera)
    assert len(read_all(cam)) == 10
    assert isinstance(cam, CountingCamera)
    assert (cam.status().frames_read, cam.decoded) == (60, 10)

    server.start()  # a live 30 fps stream sampled at 5 fps: about one decode in six grabs
    live = cameras(settings(server.url(), fps=5.0), cls=CountingCamera)
    assert isinstance(live, CountingCamera)
    assert wait_for(lambda: live.status().frames_read >= 45, 5.0)
    st, decoded = live.status(), live.decoded
    assert decoded <= st.frames_read / 3
    assert decoded >= 2


class FormatRecordingCamera(Camera):
    """Records, per decode, whether the capture was reading raw packets (CAP_PROP_FORMAT == -1)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.raw: list[bool] = []

    def _retrieve(self, cap: Any) -> Any:
        import cv2

        self.raw.append(cap.get(cv2.CAP_PROP_FORMAT) == -1)
        return super()._retrieve(cap)


@pytest.mark.timeout(20)
def test_mjpeg_sources_are_read_as_packets_and_decoded_only_when_sampled(
    video: Path, server: MjpegServer, cameras: Callable[..., Camera]
) -> None:
    """FFmpeg decodes inside grab(): MJPEG files and streams are read as raw packets, decoded by imdecode."""
    cam = cameras(settings(str(video), fps=5.0, realtime=False), cls=FormatRecordingCamera)
    frames = read_all(cam)
    assert [index_of(f) for f in frames] == list(range(0, 60, 6))
    assert isinstance(cam, FormatRecordingCamera) and cam.raw and all(cam.raw)
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype.name == "uint8" for f in frames)
    server.start()
    live = cameras(settings(server.url(), fps=5.0), cls=FormatRecordingCamera)
    assert isinstance(live, FormatRecordingCamera)
    frame = live.read(5.0)
    assert frame is not None and tag_of(frame) == 1
    assert live.raw and all(live.raw)


@pytest.mark.timeout(20)
def test_mjpeg_packets_that_imdecode_cannot_read_fall_back_to_ffmpeg_decoding(
    video: Path, cameras: Callable[..., Camera], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source whose packets are not standalone JPEGs is reopened once and decoded by FFmpeg from then on."""
    import agent.capture

    monkeypatch.setattr(agent.capture.cv2, "imdecode", lambda *args, **kw: None)
    cam = cameras(settings(str(video), fps=5.0, realtime=False), cls=FormatRecordingCamera)
    frames = read_all(cam)
    assert [index_of(f) for f in frames] == list(range(0, 60, 6))  # nothing lost, nothing twice
    assert isinstance(cam, FormatRecordingCamera)
    assert cam.raw[0] and not any(cam.raw[1:])
    assert cam.status().reconnects == 1
    assert "MJPEG packets cannot be decoded" in (cam.status().last_error or "")


# --------------------------------------------------------------------------- live streams


@pytest.mark.timeout(30)
def test_mjpeg_stream_survives_a_server_restart(
    server: MjpegServer, cameras: Callable[..., Camera], caplog: pytest.LogCaptureFixture
) -> None:
    server.start()
    cam = cameras(settings(server.url(), fps=0.0))
    frames = [f for _ in range(10) if (f := cam.read(3.0)) is not None]
    assert len(frames) == 10 and {tag_of(f) for f in frames} == {1}
    assert [f.seq for f in frames] == list(range(1, 11))
    positions = [f.source_pos for f in frames]
    assert positions == sorted(positions) and positions[0] >= 1
    assert wait_for(lambda: cam.status().fps_in > 10.0, 3.0)
    st = cam.status()
    assert st.state == "streaming" and (st.width, st.height) == (320, 240)
    assert st.last_frame_age_s is not None and st.last_frame_age_s < 0.5

    server.stop()
    assert wait_for(lambda: cam.status().state == "reconnecting", 5.0)
    assert cam.status().last_error
    time.sleep(0.5)  # a few refused reopenings

    server.tag = 2
    server.start()  # the same port
    deadline = time.monotonic() + 8.0
    resumed = None
    while time.monotonic() < deadline:
        frame = cam.read(1.0)
        if frame is not None and tag_of(frame) == 2:
            resumed = frame
            break
    assert resumed is not None, cam.status()
    st = cam.status()
    assert st.state == "streaming" and st.reconnects >= 1
    assert resumed.seq > frames[-1].seq
    assert transitions(caplog) == ["starting", "streaming", "reconnecting", "streaming"]


@pytest.mark.timeout(20)
def test_slow_consumer_gets_the_newest_frame_not_a_backlog(server: MjpegServer, cameras: Callable[..., Camera]) -> None:
    server.start()
    cam = cameras(settings(server.url(), fps=0.0))
    first = cam.read(3.0)
    assert first is not None
    time.sleep(0.5)  # ~15 frames arrive meanwhile
    second = cam.read(1.0)
    assert second is not None
    assert index_of(second) - index_of(first) >= 8
    assert time.time() - second.timestamp < 0.25  # fresh, not queued
    assert second.seq == first.seq + 1


@pytest.mark.timeout(30)
def test_stream_that_goes_silent_is_stalled_and_reopened(
    server: MjpegServer, cameras: Callable[..., Camera], caplog: pytest.LogCaptureFixture
) -> None:
    server.hang_after = 5  # five frames per connection, then nothing with the socket open
    server.start()
    cam = cameras(settings(server.url(), fps=0.0))
    assert wait_for(lambda: server.connections >= 2 and cam.status().reconnects >= 1, 8.0)
    assert transitions(caplog)[:3] == ["starting", "streaming", "stalled"], transitions(caplog)
    assert "no frame for" in (cam.status().last_error or "")
    assert wait_for(lambda: transitions(caplog)[3:4] == ["streaming"], 5.0)  # frames again


@pytest.mark.timeout(30)
def test_stream_that_never_sends_a_frame_is_retried_idle_and_stops_promptly(
    server: MjpegServer, cameras: Callable[..., Camera]
) -> None:
    server.hang = True  # accept, send the HTTP headers, then nothing
    server.start()
    cam = cameras(settings(server.url(), fps=0.0))
    assert wait_for(lambda: server.connections >= 2, 6.0)
    st = cam.status()
    assert st.state == "stalled" and st.frames_read == 0, st  # no data, as opposed to refused
    assert "timed out" in (st.last_error or "")
    # idle means idle: nothing spins while the source is wedged
    cpu0, t0 = time.process_time(), time.monotonic()
    time.sleep(1.5)
    cpu = time.process_time() - cpu0
    assert cpu < 0.25 * (time.monotonic() - t0), f"{cpu:.2f} s of CPU while waiting on a dead source"
    # stop() does not wait for the hung open
    assert wait_for(lambda: bool(capture_threads()), 3.0)
    t = time.monotonic()
    cam.stop(timeout=0.3)
    assert time.monotonic() - t < 0.8
    assert cam.status().state == "stopped"
    assert cam.read(1.0) is None


@pytest.mark.timeout(30)
def test_stop_returns_while_a_native_read_hangs_and_the_thread_cleans_up(
    server: MjpegServer, cameras: Callable[..., Camera]
) -> None:
    server.hang_after = 3
    server.start()
    cam = cameras(settings(server.url(), fps=0.0, stall_timeout_s=3.0))
    assert wait_for(lambda: cam.status().frames_read == 3, 5.0)
    time.sleep(0.5)  # the grabber is now blocked inside grab() (FFmpeg's read timeout is 3 s)
    assert cam.status().state == "streaming"
    workers = capture_threads()
    assert workers
    t = time.monotonic()
    cam.stop(timeout=0.5)
    assert time.monotonic() - t < 1.0
    assert cam.status().state == "stopped"
    assert any(w.is_alive() for w in workers)  # still stuck in the native call...
    assert wait_for(lambda: not any(w.is_alive() for w in workers), 5.0)  # ...until it returns
    assert wait_for(lambda: server.open_connections == 0, 3.0)  # and its capture was released


class HangingCamera(Camera):
    """The first capture's 4th grab blocks for 4 s and ignores every timeout, like a wedged driver."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.grabs = 0
        self.hung: threading.Thread | None = None

    def _grab(self, cap: Any) -> bool:
        self.grabs += 1
        if self.grabs == 4:
            self.hung = threading.current_thread()
            time.sleep(4.0)
        return super()._grab(cap)


@pytest.mark.timeout(30)
def test_supervisor_abandons_a_hung_capture_and_reopens(
    server: MjpegServer, cameras: Callable[..., Camera], caplog: pytest.LogCaptureFixture
) -> None:
    server.start()
    cam = cameras(settings(server.url(), fps=0.0), cls=HangingCamera)
    assert isinstance(cam, HangingCamera)
    assert wait_for(lambda: "stalled" in transitions(caplog), 4.0), transitions(caplog)
    # a new capture streams while the old thread is still stuck
    assert wait_for(lambda: transitions(caplog)[-1:] == ["streaming"] and cam.status().reconnects == 1, 3.0)
    assert cam.hung is not None and cam.hung.is_alive()
    seen = {tag_of(f) for _ in range(5) if (f := cam.read(2.0)) is not None}
    assert seen == {1}
    assert "no frame for" in (cam.status().last_error or "")
    # the stale thread exits when its call returns, without touching the camera
    reads = cam.status().frames_read
    assert wait_for(lambda: cam.hung is not None and not cam.hung.is_alive(), 5.0)
    assert cam.status().state == "streaming" and cam.status().frames_read >= reads


# --------------------------------------------------------------------------- sources that never open


@pytest.mark.timeout(20)
def test_sources_that_never_open_are_retried_without_raising(
    tmp_path: Path, cameras: Callable[..., Camera], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"http://admin:hunter2@127.0.0.1:{port}/video?password=hunter2"
    cams = {
        "refused": cameras(settings(url)),
        "device": cameras(settings(99)),
        "file": cameras(settings(str(tmp_path / "missing.avi"))),
    }
    assert wait_for(lambda: all(c.status().reconnects >= 3 for c in cams.values()), 6.0)
    for kind, cam in cams.items():
        st = cam.status()
        assert st.state == "reconnecting", kind
        assert st.last_error and st.last_error.startswith("cannot open"), (kind, st)
        assert st.frames_read == 0 and st.last_frame_age_s is None and st.width == 0
        assert cam.read(0.05) is None and not cam.ended
    refused = cams["refused"].status().last_error or ""
    assert "hunter2" not in refused and "***@127.0.0.1" in refused
    assert all("hunter2" not in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(20)
def test_reconnect_backoff_grows(server: MjpegServer, cameras: Callable[..., Camera]) -> None:
    server.status = 404  # answers, refuses: every open fails at once
    server.start()
    cameras(settings(server.url(), reconnect_min_s=0.1, reconnect_max_s=0.8))
    time.sleep(3.0)
    times = list(server.connect_times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 4 <= len(times) <= 9, gaps  # 0, .1, .3, .7, 1.5, 2.3 s: not a tight loop
    assert gaps[0] < 0.5 and max(gaps) > 0.6
    assert all(g < 1.5 for g in gaps)  # capped at reconnect_max_s


@pytest.mark.timeout(20)
def test_rtsp_uses_tcp_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch, cameras: Callable[..., Camera]) -> None:
    env = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    url = f"rtsp://127.0.0.1:{free_port()}/stream"
    monkeypatch.setenv(env, "rtsp_transport;udp")
    cam = cameras(settings(url))
    assert wait_for(lambda: cam.status().state == "reconnecting", 5.0)
    assert os.environ[env] == "rtsp_transport;udp"
    cam.stop(timeout=1.0)
    monkeypatch.delenv(env)
    cam = cameras(settings(url))
    assert wait_for(lambda: cam.status().state == "reconnecting", 5.0)
    assert os.environ[env] == "rtsp_transport;tcp"


# --------------------------------------------------------------------------- plumbing


def test_import_and_construction_have_no_side_effects(video: Path) -> None:
    code = (
        "import os, threading\n"
        "import agent.capture as c\n"
        "from agent.config import CameraSettings\n"
        "cam = c.Camera(CameraSettings(name='x', source='rtsp://u:p@127.0.0.1:1/s'))\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert 'OPENCV_FFMPEG_CAPTURE_OPTIONS' not in os.environ\n"
        "st = cam.status()\n"
        "assert (st.state, st.frames_read, st.width, st.last_error) == ('stopped', 0, 0, None), st\n"
        "assert cam.read(0.01) is None and not cam.ended\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_CAPTURE_OPTIONS"}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.timeout(20)
def test_stop_wakes_a_blocked_reader(server: MjpegServer, cameras: Callable[..., Camera]) -> None:
    server.hang = True
    server.start()
    cam = cameras(settings(server.url()))
    result: list[Frame | None] = []
    reader = threading.Thread(target=lambda: result.append(cam.read(10.0)))
    reader.start()
    time.sleep(0.2)
    t = time.monotonic()
    cam.stop(timeout=0.2)
    reader.join(2.0)
    assert not reader.is_alive() and result == [None]
    assert time.monotonic() - t < 1.0


def test_redact() -> None:
    assert redact("rtsp://user:pa:ss@cam.local:554/s") == "rtsp://user:***@cam.local:554/s"
    assert redact("cannot open rtsp://u:p@ss@10.0.0.2/live") == "cannot open rtsp://u:***@10.0.0.2/live"
    assert redact("http://cam/video.cgi?user=admin&pwd=secret&x=1") == "http://cam/video.cgi?user=admin&pwd=***&x=1"
    assert redact("/videos/clip.avi") == "/videos/clip.avi"
