"""agent.capture against real OpenCV: generated MJPG files and a loopback MJPEG-over-HTTP camera."""

from __future__ import annotations

import functools
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

import cv2
import numpy as np
import pytest

from agent.capture import Camera, Frame
from agent.config import CameraSettings
from agent.frames import DecodePolicy
from agent.jpeg import jpeg_has_exif, jpeg_hw, reduction_factor
from agent.logs import redact
from agent.sampling import FileTimeline, LiveSampler
from agent.sources import VideoSource

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
    """Build started cameras (``make(settings, cls=Camera, **kw)``) that are stopped after the test."""
    made: list[Camera] = []

    def make(s: CameraSettings, cls: type[Camera] = Camera, **kw: Any) -> Camera:
        cam = cls(s, **kw)
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


# --------------------------------------------------------------------------- sampling (pure, injected clock)


def live_taken(fps: float, times: list[float], failed: frozenset[int] = frozenset()) -> list[int]:
    """Which grabs (at these clock readings) a live sampler decodes; decodes in ``failed`` fail."""
    sampler = LiveSampler(fps, times[0])
    taken = []
    for i, now in enumerate(times):
        if sampler.due(now):
            taken.append(i)
            if i not in failed:
                sampler.taken(now)
    return taken


THIRTY_FPS = [i / 30 for i in range(61)]


@pytest.mark.parametrize(
    ("fps", "times", "failed", "expected"),
    [
        (0.0, THIRTY_FPS[:10], frozenset(), list(range(10))),  # fps 0: every frame
        (5.0, THIRTY_FPS, frozenset(), list(range(0, 61, 6))),
        (60.0, THIRTY_FPS[:10], frozenset(), list(range(10))),  # faster than the source: every frame, once
        (7.5, THIRTY_FPS[:17], frozenset(), [0, 4, 8, 12, 16]),
        (5.0, [0.0, 0.2, 1.5, 1.6, 1.7, 1.9], frozenset(), [0, 1, 2, 4, 5]),  # behind: no burst to catch up
        (5.0, [0.0, 0.1, 0.19, 0.2, 0.3, 0.4], frozenset(), [0, 2, 5]),  # 10 % early counts as on time
        (5.0, THIRTY_FPS[:13], frozenset({6}), [0, 6, 7, 12]),  # a failed decode: the next frame is still due
    ],
    ids=["every-frame", "fps-5", "fps-above-source", "fps-7.5", "behind", "early", "failed-decode"],
)
def test_live_sampler(fps: float, times: list[float], failed: frozenset[int], expected: list[int]) -> None:
    assert live_taken(fps, times, failed) == expected


def file_targets(
    tl: FileTimeline, n: int, length: int = 10_000, now: Callable[[int], float] = lambda k: 0.0
) -> list[int]:
    """The first ``n`` sampled in-file indices of a file of ``length`` frames (looping), read at ``now(k)``."""
    out: list[int] = []
    while len(out) < n:
        target = tl.target(now(len(out)))
        if target >= length:  # end of the pass: every frame of it was read
            tl.wrapped(length)
            continue
        out.append(target)
        tl.sampled()
    return out


@pytest.mark.parametrize(
    ("file_fps", "fps", "length", "expected"),
    [
        (30.0, 0.0, 10_000, list(range(12))),  # fps 0: every frame
        (30.0, 5.0, 10_000, list(range(0, 72, 6))),
        (30.0, 60.0, 10_000, list(range(12))),  # faster than the file: every frame, nothing twice
        (30.0, 30.0, 10_000, list(range(12))),
        (30.0, 7.0, 10_000, [math.ceil(k * 30 / 7 - 1e-6) for k in range(12)]),  # 0, 5, 9, 13, 18, ...
        (25.0, 10.0, 10_000, [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]),
        (30.0, 5.0, 60, [(6 * k) % 60 for k in range(25)]),  # loop wrap on a multiple of the step
        (30.0, 5.0, 64, [(6 * k) % 64 for k in range(25)]),  # ... and off it: 54, 60, 2, 8, ...
        (30.0, 0.0, 5, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]),
    ],
)
def test_file_timeline_batch(file_fps: float, fps: float, length: int, expected: list[int]) -> None:
    assert file_targets(FileTimeline(file_fps, fps, realtime=False), len(expected), length) == expected


def test_file_timeline_resumes_where_it_was() -> None:
    """A reopened file goes on from the sample number and pass it had reached."""
    tl = FileTimeline(30.0, 5.0, realtime=False, k=12, base=64)  # a 64-frame file, in its second pass
    assert file_targets(tl, 3, length=64) == [8, 14, 20]  # sample 12 is frame 72 of the whole timeline


@pytest.mark.parametrize(
    ("fps", "reads", "expected", "due"),
    [
        # reading on time: one sample per 1/5 s of file time, each due at its frame's time
        (5.0, [100.0, 100.19, 100.39, 100.59], [0, 6, 12, 18], [100.0, 100.2, 100.4, 100.6]),
        # fps 0 plays every frame at the file's pace
        (0.0, [100.0, 100.01, 100.05, 100.07], [0, 1, 2, 3], [100.0, 100 + 1 / 30, 100 + 2 / 30, 100.1]),
        # falling behind: the newest due sample, not the backlog
        (5.0, [100.0, 101.03, 101.05, 101.21], [0, 30, 36, 42], [100.0, 101.0, 101.2, 101.4]),
        # fps above the file's: the file's own rate
        (60.0, [100.0, 100.5, 100.51], [0, 15, 16], [100.0, 100.5, 100 + 16 / 30]),
    ],
    ids=["on-time", "every-frame", "behind", "fps-above-file"],
)
def test_file_timeline_realtime(fps: float, reads: list[float], expected: list[int], due: list[float]) -> None:
    tl = FileTimeline(30.0, fps, realtime=True, now=100.0)
    targets, dues = [], []
    for now in reads:
        target = tl.target(now)
        targets.append(target)
        dues.append(tl.due_at(target))
        tl.sampled()
    assert targets == expected
    assert dues == pytest.approx(due)


def test_file_timeline_realtime_wraps_and_resumes() -> None:
    tl = FileTimeline(30.0, 5.0, realtime=True, now=50.0)
    assert file_targets(tl, 12, length=60, now=lambda k: 50.0 + k / 5) == [(6 * k) % 60 for k in range(12)]
    assert tl.due_at(tl.target(50.0)) == pytest.approx(52.4)  # the second pass keeps the file's clock
    resumed = FileTimeline(30.0, 5.0, realtime=True, k=4, now=50.0)  # reopened: sample 4 is due at once
    assert resumed.target(50.0) == 24 and resumed.due_at(24) == pytest.approx(50.0)


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


class HookedSource(VideoSource):
    """A capture's own source that calls ``seen(kind, source)`` before each grab ("g") and retrieve ("r")."""

    def __init__(self, *args: Any, seen: Callable[[str, VideoSource], None]) -> None:
        super().__init__(*args)
        self._seen = seen

    def grab(self) -> bool:
        self._seen("g", self)
        return super().grab()

    def retrieve(self) -> Any:
        self._seen("r", self)
        return super().retrieve()


class HookedCamera(Camera):
    """A camera whose sources report each grab and retrieve to :meth:`seen`."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, source=functools.partial(HookedSource, seen=self.seen), **kw)

    def seen(self, kind: str, source: VideoSource) -> None:
        pass


class GrabTimingCamera(HookedCamera):
    """Records the clock at every grab ("g") and every decode of a sampled frame ("r")."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.events: list[tuple[str, float]] = []

    def seen(self, kind: str, source: VideoSource) -> None:
        self.events.append((kind, time.monotonic()))


@pytest.mark.timeout(20)
def test_file_realtime_reads_skipped_frames_just_before_the_sample(video: Path, cameras: Callable[..., Camera]) -> None:
    """The frames skipped before a sample are read when that sample is due, not right after the last sample
    (while its consumer infers it): after each sampled frame the capture sleeps until the next one is due."""
    cam = cameras(settings(str(video), fps=5.0, realtime=True), cls=GrabTimingCamera)
    assert len(read_all(cam)) >= 5
    assert isinstance(cam, GrabTimingCamera)
    events = cam.events
    quiet_after = [
        events[i + 1][1] - t for i, (kind, t) in enumerate(events[:-1]) if kind == "r" and events[i + 1][0] == "g"
    ]
    assert len(quiet_after) >= 5
    # 30 fps sampled at 5: the next sample is due ~200 ms later; a burst after the sample would grab at once
    # (< 5 ms). 50 ms, a quarter of the period, leaves a late wakeup on a loaded machine room (measured 190-210).
    assert sum(gap > 0.05 for gap in quiet_after) >= len(quiet_after) - 1, [round(g * 1000) for g in quiet_after]


class CountingCamera(HookedCamera):
    """Counts decodes: the only place a Camera decodes is its source's ``retrieve``."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.decoded = 0

    def seen(self, kind: str, source: VideoSource) -> None:
        self.decoded += kind == "r"


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
    assert wait_for(lambda: live.status().frames_read >= 45, 15.0)  # 1.5 s at 30 fps; room for a loaded machine
    st, decoded = live.status(), live.decoded
    assert decoded <= st.frames_read / 3
    assert decoded >= 2


def test_frames_the_slot_replaced_unread_are_counted_as_skipped(
    server: MjpegServer, cameras: Callable[..., Camera]
) -> None:
    server.start()  # 30 fps, every frame sampled (fps 0): a consumer that doesn't read lets them pile up
    cam = cameras(settings(server.url(), fps=0.0))
    assert cam.read(10.0) is not None
    assert wait_for(lambda: cam.status().frames_read >= 20, 15.0)  # nobody reads meanwhile
    assert cam.read(1.0) is not None  # the newest only
    cam.stop(timeout=2.0)
    st = cam.status()
    assert st.frames_skipped >= 15
    # every frame read is accounted for: handed out, skipped, or (at most one each) left in the slot at stop
    # and grabbed but not yet in the slot when the capture stopped
    assert 0 <= st.frames_read - st.frames_sampled - st.frames_skipped <= 2


def test_a_consumer_that_keeps_up_skips_nothing(video: Path, cameras: Callable[..., Camera]) -> None:
    cam = cameras(settings(str(video), fps=5.0, realtime=False))  # batch: the capture waits for the reader
    assert len(read_all(cam)) == 10
    assert cam.status().frames_skipped == 0


class FormatRecordingCamera(HookedCamera):
    """Records, per decode, whether the capture was reading raw packets (CAP_PROP_FORMAT == -1)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.raw: list[bool] = []

    def seen(self, kind: str, source: VideoSource) -> None:
        if kind == "r":
            assert source.cap is not None
            self.raw.append(source.cap.get(cv2.CAP_PROP_FORMAT) == -1)


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
    import agent.jpeg

    monkeypatch.setattr(agent.jpeg.cv2, "imdecode", lambda *args, **kw: None)
    cam = cameras(settings(str(video), fps=5.0, realtime=False), cls=FormatRecordingCamera)
    frames = read_all(cam)
    assert [index_of(f) for f in frames] == list(range(0, 60, 6))  # nothing lost, nothing twice
    assert isinstance(cam, FormatRecordingCamera)
    assert cam.raw[0] and not any(cam.raw[1:])
    assert cam.status().reconnects == 1
    assert "MJPEG packets cannot be decoded" in (cam.status().last_error or "")


# --------------------------------------------------------------------------- JPEG headers and reduced decoding


def jpeg_bytes(h: int, w: int, *, progressive: bool = False) -> bytes:
    """A real JPEG (cv2.imencode) of a smooth h x w picture."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 200 // max(1, w), yy * 200 // max(1, h), (xx + yy) % 256], axis=-1).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return bytes(buf.tobytes())


def header_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """The marker segments between SOI and SOS (each with its marker and length), and the rest from SOS on."""
    assert data[:2] == b"\xff\xd8"
    segments: list[bytes] = []
    i = 2
    while data[i + 1] != 0xDA:
        length = (data[i + 2] << 8) | data[i + 3]
        segments.append(data[i : i + 2 + length])
        i += 2 + length
    return segments, data[i:]


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def sof_offset(data: bytes) -> int:
    """Where the frame header (SOF0 or SOF2, as libjpeg writes them) starts."""
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return i


FAKE_SOF = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03"  # a 16x16 frame header, as bytes inside a payload


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("hw", [(1080, 1920), (1081, 1921), (481, 643), (720, 1280), (7, 9), (1, 1), (2160, 3840)])
def test_jpeg_hw_reads_the_frame_header(hw: tuple[int, int], progressive: bool) -> None:
    data = jpeg_bytes(*hw, progressive=progressive)
    assert data[sof_offset(data) + 1] == (0xC2 if progressive else 0xC0)  # the SOFn kind under test
    packet = np.frombuffer(data, np.uint8).reshape(1, -1)  # how FFmpeg hands out raw packets
    assert jpeg_hw(data) == hw
    assert jpeg_hw(packet) == hw
    assert jpeg_hw(packet.reshape(-1)) == hw
    assert jpeg_hw(bytearray(data)) == hw
    decoded = cv2.imdecode(packet, cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[:2] == hw


def _big_app1_first(data: bytes) -> bytes:
    # An EXIF-sized APP1 (60 KiB) right after SOI whose payload holds a fake frame header: the parser must
    # skip segments by their length, never scan for marker bytes.
    payload = b"Exif\x00\x00" + FAKE_SOF * 6000
    return data[:2] + segment(0xE1, payload) + data[2:]


def _tables_first(data: bytes) -> bytes:
    # DHT (0xC4, in the SOFn range but no frame header) and COM segments before the SOF.
    segments, rest = header_segments(data)
    dht = [s for s in segments if s[1] == 0xC4]
    others = [s for s in segments if s[1] != 0xC4]
    return data[:2] + segment(0xFE, b"comment " + FAKE_SOF) + b"".join(dht + others) + rest


def _fill_bytes(data: bytes) -> bytes:
    # Fill bytes (0xFF runs) are allowed before any marker.
    i = sof_offset(data)
    return data[:i] + b"\xff\xff\xff" + data[i:]


@pytest.mark.parametrize("splice", [_big_app1_first, _tables_first, _fill_bytes], ids=["app1", "tables", "fill"])
@pytest.mark.parametrize("hw", [(1080, 1920), (481, 643)])
def test_jpeg_hw_skips_what_comes_before_the_frame_header(
    hw: tuple[int, int], splice: Callable[[bytes], bytes]
) -> None:
    data = splice(jpeg_bytes(*hw))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[:2] == hw  # still a valid JPEG
    assert jpeg_hw(data) == hw
    assert jpeg_hw(np.frombuffer(data, np.uint8).reshape(1, -1)) == hw


def _png() -> bytes:
    ok, buf = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    assert ok
    return bytes(buf.tobytes())


_JPEG = jpeg_bytes(480, 640)
_SOF = sof_offset(_JPEG)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_png(), id="png"),
        pytest.param(b"", id="empty"),
        pytest.param(np.zeros((1, 0), np.uint8), id="empty-array"),
        pytest.param(b"\xff\xd8", id="soi-only"),
        pytest.param(b"GIF89a\x01\x00\x01\x00" + bytes(30), id="gif"),
        pytest.param(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), id="garbage"),
        pytest.param(b"\xff\xd8" + bytes(100), id="soi-then-zeros"),
        pytest.param(_JPEG[:_SOF], id="cut-before-sof"),
        pytest.param(_JPEG[: _SOF + 7], id="cut-inside-sof"),
        pytest.param(_JPEG[:40], id="cut-early"),
        pytest.param(b"\xff\xd8\xff\xd9", id="soi-eoi"),
        pytest.param(b"\xff\xd8" + header_segments(_JPEG)[1], id="scan-before-sof"),
        pytest.param(_JPEG[:_SOF] + segment(0xC0, b"\x08\x00\x00\x02\x80\x03" + bytes(9)), id="zero-height"),
        pytest.param(_JPEG[:_SOF] + segment(0xC0, b"\x08\x01\xe0\x00\x00\x03" + bytes(9)), id="zero-width"),
        pytest.param(_JPEG[:2] + b"\xff\xe0\x00\x01" + _JPEG[2:], id="bad-length"),
    ],
)
def test_jpeg_hw_is_none_for_what_is_not_a_jpeg_header(data: bytes | np.ndarray) -> None:
    assert jpeg_hw(data) is None


@pytest.mark.parametrize(
    ("frame_hw", "needed_hw", "factor"),
    [
        ((1080, 1920), (234, 416), 4),  # 1080p for a 416 letterbox: 270x480
        ((720, 1280), (234, 416), 2),  # 180x320 at 1/4 is too small
        ((480, 640), (312, 416), 1),
        ((1080, 1920), (1080, 1920), 1),  # need == frame
        ((1080, 1920), (1081, 1920), 1),  # need > frame: nothing better than full
        ((1080, 1920), (540, 960), 2),  # exactly half
        ((1080, 1920), (541, 960), 1),
        ((1080, 1920), (135, 240), 8),  # exactly an eighth
        ((1081, 1921), (271, 481), 4),  # ceil(1081/4) = 271, ceil(1921/4) = 481
        ((1081, 1921), (136, 241), 8),  # ceil(1081/8) = 136, ceil(1921/8) = 241
        ((1081, 1921), (137, 241), 4),
        ((481, 643), (241, 322), 2),  # ceil on both axes
        ((481, 643), (121, 161), 4),
        ((1080, 1920), (1, 1), 8),  # tiny need
        ((1080, 1920), (0, 0), 8),
        ((1, 1), (1, 1), 8),  # libjpeg never gives less than one pixel
        ((2160, 3840), (234, 416), 8),
        ((2160, 3840), (360, 640), 4),
    ],
)
def test_reduction_factor(frame_hw: tuple[int, int], needed_hw: tuple[int, int], factor: int) -> None:
    assert reduction_factor(frame_hw, needed_hw) == factor


@pytest.mark.parametrize("hw", [(1081, 1921), (481, 643), (100, 37), (720, 1280)])
def test_reduction_factor_agrees_with_libjpeg_sizes(hw: tuple[int, int]) -> None:
    """What cv2 decodes at 1/f is ceil(size / f): asking for exactly that size gives back f."""
    packet = np.frombuffer(jpeg_bytes(*hw), np.uint8)
    for f, flag in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8)):
        reduced = cv2.imdecode(packet, flag)
        assert reduced is not None
        size = (int(reduced.shape[0]), int(reduced.shape[1]))
        assert size == (-(-hw[0] // f), -(-hw[1] // f))
        assert reduction_factor(hw, size) == f
        assert reduction_factor(hw, (size[0] + 1, size[1])) < f
        assert reduction_factor(hw, (size[0], size[1] + 1)) < f


@pytest.fixture(scope="module")
def video_720p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames, 1280x720; frame i shows i."""
    return write_video(tmp_path_factory.mktemp("video720") / "clip.avi", frames=12, fps=30.0, width=1280, height=720)


def marks_of_reduced(image: np.ndarray, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """The block code of a frame decoded at a reduced size, read at the frame's size."""
    return decode_marks(cv2.resize(image, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_NEAREST))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("need", "image_hw"),
    [
        (None, (720, 1280)),
        ((720, 1280), (720, 1280)),  # needs the full frame
        ((234, 416), (360, 640)),  # a 416 letterbox of 720p: 1/2
        ((180, 320), (180, 320)),  # exactly 1/4
        ((90, 160), (90, 160)),  # 1/8
        ((1, 1), (90, 160)),  # never below 1/8
    ],
)
def test_mjpeg_file_is_decoded_at_the_reduced_size_the_consumer_needs(
    video_720p: Path, cameras: Callable[..., Camera], need: tuple[int, int] | None, image_hw: tuple[int, int]
) -> None:
    asked: list[tuple[int, int]] = []

    def needed_hw(frame_hw: tuple[int, int]) -> tuple[int, int]:
        asked.append(frame_hw)
        assert need is not None
        return need

    kw: dict[str, Any] = {} if need is None else {"decode": DecodePolicy(model_hw=needed_hw)}
    cam = cameras(settings(str(video_720p), fps=0.0, realtime=False), cls=FormatRecordingCamera, **kw)
    frames = read_all(cam)
    assert [f.source_pos for f in frames] == list(range(12))
    assert isinstance(cam, FormatRecordingCamera) and cam.raw and all(cam.raw)  # the raw-packet path
    assert all(f.image.shape == (*image_hw, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.frame_hw == (720, 1280) for f in frames)
    assert [marks_of_reduced(f.image, f.frame_hw) for f in frames] == [(i, 0) for i in range(12)]  # the right frames
    st = cam.status()
    assert (st.width, st.height) == (1280, 720)
    assert st.state == "ended" and st.frames_sampled == 12
    if need is not None:
        assert asked and set(asked) == {(720, 1280)}  # asked with the true size, from the JPEG header


def textured_frame(i: int, hw: tuple[int, int] = (720, 1280)) -> np.ndarray:
    """A busy picture (noise, edges, colours) that changes with ``i``."""
    rng = np.random.default_rng(i)
    h, w = hw
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(8):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, centre, int(rng.integers(20, 200)), colour, -1)
    return np.asarray(img, np.uint8)


@pytest.mark.timeout(30)
def test_reduced_decode_is_the_same_picture_as_a_resized_full_decode(
    tmp_path: Path, cameras: Callable[..., Camera]
) -> None:
    path = tmp_path / "textured.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (1280, 720))
    assert writer.isOpened()
    for i in range(6):
        writer.write(textured_frame(i))
    writer.release()
    full = read_all(cameras(settings(str(path), fps=0.0, realtime=False)))
    quarter = DecodePolicy(model_hw=lambda hw: (180, 320))
    reduced = read_all(cameras(settings(str(path), fps=0.0, realtime=False), decode=quarter))
    assert [f.source_pos for f in full] == [f.source_pos for f in reduced] == list(range(6))

    def mad(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())

    same, other = [], []
    for k, (a, b) in enumerate(zip(full, reduced, strict=True)):
        assert a.image.shape == (720, 1280, 3) and b.image.shape == (180, 320, 3)
        assert a.frame_hw == b.frame_hw == (720, 1280)
        same.append(mad(cv2.resize(a.image, (320, 180), interpolation=cv2.INTER_AREA), b.image))
        other.append(mad(cv2.resize(full[(k + 1) % 6].image, (320, 180), interpolation=cv2.INTER_AREA), b.image))
    assert max(same) < 3.0, same  # 0..255 scale: the same picture, up to JPEG and filter differences
    assert min(other) > 10 * max(same), other  # ... and another frame is far off


@pytest.mark.timeout(20)
def test_mjpeg_stream_is_decoded_at_a_reduced_size(cameras: Callable[..., Camera]) -> None:
    with MjpegServer(width=640, height=480, tag=3) as srv:
        cam = cameras(settings(srv.url(), fps=0.0), decode=DecodePolicy(model_hw=lambda hw: (hw[0] // 4, hw[1] // 4)))
        frames = [f for _ in range(3) if (f := cam.read(5.0)) is not None]
        assert len(frames) == 3
        assert all(f.image.shape == (120, 160, 3) and f.frame_hw == (480, 640) for f in frames)
        assert {marks_of_reduced(f.image, f.frame_hw)[1] for f in frames} == {3}
        st = cam.status()
        assert (st.width, st.height) == (640, 480) and st.state == "streaming"


def test_frame_hw_defaults_to_the_image_size() -> None:
    image = np.zeros((90, 160, 3), np.uint8)
    assert Frame("cam", 1, 0.0, image, 0).frame_hw == (90, 160)
    assert Frame("cam", 1, 0.0, image, 0, (720, 1280)).frame_hw == (720, 1280)


def test_frame_pixels_decode_lazily_at_the_size_asked_and_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.frames

    calls: list[int] = []
    real = agent.frames.decode_jpeg

    def counting(data: np.ndarray, factor: int = 1) -> np.ndarray | None:
        calls.append(factor)
        return real(data, factor)

    monkeypatch.setattr(agent.frames, "decode_jpeg", counting)
    jpeg = jpeg_bytes(720, 1280)
    frame = Frame("cam", 1, 0.0, None, 0, jpeg=jpeg)
    assert frame.frame_hw == (720, 1280) and frame.decoded is None and not calls  # the size from the header
    assert frame.pixels((180, 320)).shape == (180, 320, 3)  # 1/4
    assert frame.pixels((100, 100)) is frame.decoded  # covered by what is decoded: no decode
    assert calls == [4]
    assert frame.pixels((360, 640)).shape == (360, 640, 3)  # more is asked: 1/2, kept as the larger
    assert frame.pixels((180, 320)).shape == (360, 640, 3) and calls == [4, 2]
    assert frame.pixels().shape == (360, 640, 3)  # None: as decoded so far
    assert frame.pixels((2000, 2000)).shape == (720, 1280, 3)  # more than the frame has: all of it, once
    assert frame.pixels((2000, 2000)).shape == (720, 1280, 3) and calls == [4, 2, 1]
    fresh = Frame("cam", 2, 0.0, None, 0, (720, 1280), jpeg)
    assert fresh.image.shape == (720, 1280, 3)  # nothing decoded yet: the whole frame

    reduced = np.zeros((90, 160, 3), np.uint8)
    plain = Frame("cam", 3, 0.0, reduced, 0, (720, 1280))  # no JPEG: the pixels there are
    assert plain.pixels((720, 1280)) is reduced and plain.image is reduced

    broken = Frame("cam", 4, 0.0, None, 0, (720, 1280), b"\xff\xd8 not a picture")
    with pytest.raises(ValueError, match="could not be decoded"):
        broken.pixels((180, 320))
    with pytest.raises(ValueError):
        Frame("cam", 5, 0.0, None, 0)


def test_frame_pixels_decode_once_for_threads_that_ask_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker and its inference pool may ask one frame at once: one decode, one array for all."""
    import agent.frames

    calls: list[int] = []
    real = agent.frames.decode_jpeg

    def slow(data: np.ndarray, factor: int = 1) -> np.ndarray | None:
        calls.append(factor)
        time.sleep(0.05)
        return real(data, factor)

    monkeypatch.setattr(agent.frames, "decode_jpeg", slow)
    frame = Frame("cam", 1, 0.0, None, 0, jpeg=jpeg_bytes(480, 640))
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(frame.pixels((240, 320)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5.0)
    assert calls == [2] and len(got) == 4 and all(g is got[0] for g in got)


def _same(hw: tuple[int, int]) -> tuple[int, int]:
    return hw


def _quarter(hw: tuple[int, int]) -> tuple[int, int]:
    return -(-hw[0] // 4), -(-hw[1] // 4)


def _max_640(hw: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, 640 / max(hw))
    return round(hw[0] * scale), round(hw[1] * scale)


def _strip(hw: tuple[int, int]) -> tuple[int, int]:
    return hw[0] // 2, hw[1] // 8


HD = (1080, 1920)


@pytest.mark.parametrize(
    ("policy", "frame_hw", "decode_hw", "keep", "ahead"),
    [
        (DecodePolicy(), (1080, 1920), (1080, 1920), False, True),  # the default: whole frames, on the capture
        (DecodePolicy(model_hw=_quarter), (1080, 1920), (270, 480), False, True),  # local only
        (
            DecodePolicy(model_hw=_quarter, upload_hw=_same, hosted=lambda: True),
            (1080, 1920),
            (1080, 1920),
            True,
            False,
        ),
        (
            DecodePolicy(model_hw=_quarter, upload_hw=_same, hosted=lambda: False),
            (1080, 1920),
            (1080, 1920),
            True,
            True,
        ),
        (DecodePolicy(upload_hw=_max_640, hosted=lambda: True), (1080, 1920), (360, 640), True, True),  # a resize
        (DecodePolicy(upload_hw=_max_640, hosted=lambda: True), (480, 640), (480, 640), True, False),  # ... not here
        (DecodePolicy(upload_hw=_same, change_gate=True, hosted=lambda: True), (480, 640), (480, 640), True, True),
        (
            DecodePolicy(model_hw=lambda hw: (hw[0] // 2, hw[1] // 8), upload_hw=_max_640),
            (1080, 1920),
            (540, 640),
            True,
            True,
        ),
    ],
    ids=["default", "local", "hosted", "fallen-back", "upload-resize", "upload-as-is", "gate", "per-axis"],
)
def test_decode_policy(
    policy: DecodePolicy, frame_hw: tuple[int, int], decode_hw: tuple[int, int], keep: bool, ahead: bool
) -> None:
    assert policy.decode_hw(frame_hw) == decode_hw
    assert policy.keep_jpeg is keep
    assert policy.decode_ahead(frame_hw) is ahead


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
    # fresh (measured ~3 ms at 30 fps); a frame older than the stall timeout (1 s) would not be "streaming"
    assert st.last_frame_age_s is not None and st.last_frame_age_s < 1.0

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
    time.sleep(1.0)  # a slow consumer: ~30 frames arrive meanwhile
    second = cam.read(1.0)
    assert second is not None
    assert index_of(second) - index_of(first) >= 8
    # fresh, not queued: the frame after `first` would be ~1 s old; the newest is ~2 ms old (measured)
    assert time.time() - second.timestamp < 0.5
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
    # each open hangs for its 3 s timeout: long enough that waiting for it would show against stop()'s bound below
    cam = cameras(settings(server.url(), fps=0.0, open_timeout_s=3.0))
    assert wait_for(lambda: server.connections >= 2, 15.0)
    st = cam.status()
    assert st.state == "stalled" and st.frames_read == 0, st  # no data, as opposed to refused
    assert "timed out" in (st.last_error or "")
    # idle means idle: nothing spins while the source is wedged. The whole process measured ~0.4 % of the wall
    # time, loaded or not (its own CPU, not the machine's); a spinning thread takes a core (>= 50 % even sharing it).
    cpu0, t0 = time.process_time(), time.monotonic()
    time.sleep(1.5)
    cpu = time.process_time() - cpu0
    assert cpu < 0.25 * (time.monotonic() - t0), f"{cpu:.2f} s of CPU while waiting on a dead source"
    # stop() does not wait for the hung open
    assert wait_for(lambda: bool(capture_threads()), 3.0)
    t = time.monotonic()
    cam.stop(timeout=0.3)
    assert time.monotonic() - t < 2.0  # measured 0.30 s; room for a loaded machine, under the open's 3 s
    assert cam.status().state == "stopped"
    assert cam.read(1.0) is None


@pytest.mark.timeout(30)
def test_stop_returns_while_a_native_read_hangs_and_the_thread_cleans_up(
    server: MjpegServer, cameras: Callable[..., Camera]
) -> None:
    server.hang_after = 3
    server.start()
    cam = cameras(settings(server.url(), fps=0.0, stall_timeout_s=6.0), cls=GrabTimingCamera)
    assert isinstance(cam, GrabTimingCamera)
    assert wait_for(lambda: cam.status().frames_read == 3, 5.0)
    # the grabber is now blocked inside its 4th grab() (FFmpeg's read timeout is 6 s)
    assert wait_for(lambda: sum(kind == "g" for kind, _ in list(cam.events)) >= 4, 5.0)
    assert cam.status().state == "streaming"
    workers = capture_threads()
    assert workers
    t = time.monotonic()
    cam.stop(timeout=0.5)
    assert time.monotonic() - t < 2.5  # measured 0.50 s; room for a loaded machine, well under the read's 6 s
    assert cam.status().state == "stopped"
    assert any(w.is_alive() for w in workers)  # still stuck in the native call...
    assert wait_for(lambda: not any(w.is_alive() for w in workers), 15.0)  # ...until it returns
    assert wait_for(lambda: server.open_connections == 0, 3.0)  # and its capture was released


class HangingCamera(HookedCamera):
    """The first capture's 4th grab blocks for 6 s and ignores every timeout, like a wedged driver."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.grabs = 0
        self.hung: threading.Thread | None = None

    def seen(self, kind: str, source: VideoSource) -> None:
        if kind != "g":
            return
        self.grabs += 1
        if self.grabs == 4:
            self.hung = threading.current_thread()
            time.sleep(6.0)  # the supervisor gives up after 1 s; 6 s keeps it stuck while the test looks


@pytest.mark.timeout(30)
def test_supervisor_abandons_a_hung_capture_and_reopens(
    server: MjpegServer, cameras: Callable[..., Camera], caplog: pytest.LogCaptureFixture
) -> None:
    server.start()
    cam = cameras(settings(server.url(), fps=0.0), cls=HangingCamera)
    assert isinstance(cam, HangingCamera)
    assert wait_for(lambda: "stalled" in transitions(caplog), 5.0), transitions(caplog)
    # a new capture streams while the old thread is still stuck
    assert wait_for(lambda: transitions(caplog)[-1:] == ["streaming"] and cam.status().reconnects == 1, 4.0)
    assert cam.hung is not None and cam.hung.is_alive()
    seen = {tag_of(f) for _ in range(5) if (f := cam.read(2.0)) is not None}
    assert seen == {1}
    assert "no frame for" in (cam.status().last_error or "")
    # the stale thread exits when its call returns, without touching the camera
    reads = cam.status().frames_read
    assert wait_for(lambda: cam.hung is not None and not cam.hung.is_alive(), 10.0)
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
    assert wait_for(lambda: all(c.status().reconnects >= 3 for c in cams.values()), 15.0)
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
    reader.join(5.0)
    assert not reader.is_alive() and result == [None]
    assert time.monotonic() - t < 5.0  # measured 0.20 s; a reader that stop() didn't wake sleeps out its 10 s


def test_redact() -> None:
    assert redact("rtsp://user:pa:ss@cam.local:554/s") == "rtsp://user:***@cam.local:554/s"
    assert redact("cannot open rtsp://u:p@ss@10.0.0.2/live") == "cannot open rtsp://u:***@10.0.0.2/live"
    assert redact("http://cam/video.cgi?user=admin&pwd=secret&x=1") == "http://cam/video.cgi?user=admin&pwd=***&x=1"
    assert redact("/videos/clip.avi") == "/videos/clip.avi"


# ----------------------------------------------------------------------------------------------------------
# The camera's own JPEG, kept for uploads


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """``jpeg`` with an extra segment right after its start-of-image marker."""
    return jpeg[:2] + bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_jpeg_has_exif() -> None:
    ok, encoded = cv2.imencode(".jpg", np.full((16, 24, 3), 90, np.uint8))
    assert ok
    plain = encoded.tobytes()
    exif = _with_segment(plain, 0xE1, b"Exif\x00\x00MM\x00*" + bytes(20))
    xmp = _with_segment(plain, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>")
    comment = _with_segment(plain, 0xFE, b"Exif\x00\x00 in a comment is not Exif")
    assert not jpeg_has_exif(plain)
    assert jpeg_has_exif(exif) and jpeg_has_exif(np.frombuffer(exif, np.uint8).reshape(1, -1))
    assert not jpeg_has_exif(xmp) and not jpeg_has_exif(comment)
    assert not jpeg_has_exif(b"") and not jpeg_has_exif(b"\x89PNG\r\n\x1a\n")
    assert jpeg_hw(exif) == jpeg_hw(plain) == (16, 24)  # the walk goes past the Exif block


@pytest.mark.timeout(20)
@pytest.mark.parametrize("keep", [True, False])
def test_kept_jpeg_is_the_frame_as_the_camera_sent_it(video: Path, cameras: Callable[..., Camera], keep: bool) -> None:
    uploads = DecodePolicy(upload_hw=lambda hw: hw)  # frames go up at full size: their JPEGs are kept
    cam = cameras(settings(str(video), fps=10.0, realtime=False), decode=uploads if keep else DecodePolicy())
    frames = read_all(cam)
    assert len(frames) == 20
    for frame in frames:
        if not keep:
            assert frame.jpeg is None
            continue
        assert isinstance(frame.jpeg, bytes) and frame.jpeg[:2] == b"\xff\xd8"
        again = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(again, frame.image)  # the very bytes this frame was decoded from


@pytest.mark.timeout(20)
def test_kept_jpeg_is_the_full_frame_when_the_image_is_reduced(
    video_720p: Path, cameras: Callable[..., Camera]
) -> None:
    uploads = DecodePolicy(upload_hw=lambda hw: (180, 320))  # uploads downscaled to 320x180
    cam = cameras(settings(str(video_720p), realtime=False), decode=uploads)
    frames = read_all(cam)
    assert frames and all(f.image.shape[:2] == (180, 320) for f in frames)
    assert all(f.jpeg is not None and jpeg_hw(f.jpeg) == (720, 1280) == f.frame_hw for f in frames)


@pytest.mark.timeout(20)
def test_frames_go_out_undecoded_when_the_consumer_needs_no_pixels(video: Path, cameras: Callable[..., Camera]) -> None:
    """Frames that go to the hosted API as they came: after the opening's first frame (decoded: it shows the
    packets stand alone), frames carry only their JPEG and true size; the JPEG is the very frame, and nothing is
    lost or reordered."""
    asked: list[tuple[int, int]] = []

    def upload_hw(frame_hw: tuple[int, int]) -> tuple[int, int]:
        asked.append(frame_hw)
        return frame_hw

    hosted = DecodePolicy(upload_hw=upload_hw, hosted=lambda: True)
    cam = cameras(settings(str(video), fps=10.0, realtime=False), decode=hosted)
    frames = read_all(cam)
    reference = read_all(cameras(settings(str(video), fps=10.0, realtime=False)))
    assert len(frames) == len(reference) == 20
    assert frames[0].image.shape == (240, 320, 3)
    assert all(f.decoded is None and f.frame_hw == (240, 320) for f in frames[1:])
    assert asked and set(asked) == {(240, 320)}
    for frame, ref in zip(frames, reference, strict=True):
        assert frame.jpeg is not None and frame.source_pos == ref.source_pos
        decoded = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(decoded, ref.image)


@pytest.mark.timeout(20)
def test_frames_are_decoded_when_the_consumer_says_so(video: Path, cameras: Callable[..., Camera]) -> None:
    local_now = DecodePolicy(upload_hw=lambda hw: hw, hosted=lambda: False)  # frames go local (for now)
    cam = cameras(settings(str(video), fps=10.0, realtime=False), decode=local_now)
    frames = read_all(cam)
    assert len(frames) == 20 and all(f.image.shape == (240, 320, 3) and f.jpeg is not None for f in frames)
    # Without the hosted API no JPEG is kept: nothing to hand out undecoded, the mode is not even asked.
    asked: list[str] = []
    no_uploads = DecodePolicy(hosted=lambda: asked.append("hosted?") or True)
    cam = cameras(settings(str(video), fps=10.0, realtime=False), decode=no_uploads)
    assert all(f.image.shape == (240, 320, 3) and f.jpeg is None for f in read_all(cam)) and not asked


# --------------------------------------------------------------------------- a new rate at runtime (a command)


@pytest.mark.parametrize(
    ("fps", "new_fps", "expected"),
    [
        (1.0, 10.0, [0, 4, 7, 10, 13]),  # faster: the next frame is due one new period away, not a second
        (10.0, 1.0, [0, 1, 30, 60]),  # slower: the one nearly due (the new period's 10 %), then one a second
        (5.0, 0.0, [0, 1, 2, 3, 4]),  # 0: every frame from the change on
    ],
)
def test_live_sampler_takes_a_new_rate(fps: float, new_fps: float, expected: list[int]) -> None:
    times = [i / 30 for i in range(61)]
    sampler = LiveSampler(fps, 0.0)
    taken = []
    for i, now in enumerate(times):
        if i == 1:
            sampler.set_fps(new_fps, now)
        if sampler.due(now):
            taken.append(i)
            sampler.taken(now)
        if len(taken) == len(expected):
            break
    assert taken == expected
    assert sampler.fps == new_fps


def test_file_timeline_takes_a_new_rate_where_it_was() -> None:
    tl = FileTimeline(30.0, 5.0, realtime=False)
    assert file_targets(tl, 3) == [0, 6, 12]
    tl.set_fps(10.0)  # from the next sample on, every 3rd frame, starting where the 5 fps timeline was
    assert file_targets(tl, 3) == [18, 21, 24]
    tl.set_fps(0.0)
    assert file_targets(tl, 3) == [27, 28, 29]


@pytest.mark.timeout(20)
def test_set_fps_changes_the_running_files_sampling(video: Path, cameras: Callable[..., Camera]) -> None:
    cam = cameras(settings(str(video), fps=5.0, realtime=False))
    assert cam.fps() == 5.0
    before = [index_of(f) for f in read_all(cam, limit=3)]
    cam.set_fps(10.0)  # every 3rd frame of the 30 fps file from the next sample the opening takes on
    after = [index_of(f) for f in read_all(cam)]
    assert before == [0, 6, 12]
    steps = [b - a for a, b in zip([before[-1], *after], after, strict=False)]
    assert set(steps[:2]) <= {3, 6} and set(steps[2:]) == {3}, steps  # up to two were sampled already
    assert cam.fps() == 10.0
    with pytest.raises(ValueError):
        cam.set_fps(-1.0)


@pytest.mark.timeout(20)
def test_file_batch_tracks_by_the_files_own_timeline(tmp_path: Path, cameras: Callable[..., Camera]) -> None:
    """realtime: false reads as fast as it can: ``timestamp`` stays the wall time each frame was grabbed,
    while ``track_time`` (what tracking and events go by) is the file's own timeline from its first frame:
    1/fps per frame, on across a loop, as if it played at its pace."""
    path = write_video(tmp_path / "clip.avi", frames=20, fps=10.0)
    cam = cameras(settings(str(path), fps=5.0, realtime=False, loop=True))
    frames = read_all(cam, limit=15)
    assert [f.source_pos for f in frames] == [(2 * k) % 20 for k in range(15)]  # a loop after 10
    t0 = frames[0].track_time
    assert t0 == frames[0].timestamp
    assert [round(f.track_time - t0, 6) for f in frames] == [round(0.2 * k, 6) for k in range(15)]


@pytest.mark.timeout(20)
def test_live_and_realtime_frames_track_by_their_capture_time(video: Path, cameras: Callable[..., Camera]) -> None:
    cam = cameras(settings(str(video), fps=0.0, realtime=True))
    frames = read_all(cam, limit=3)
    assert frames and all(f.track_time == f.timestamp for f in frames)
