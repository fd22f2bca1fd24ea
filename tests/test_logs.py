"""agent.logs: line formats (plain and journald) and redaction of secrets."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import logs
from agent.logs import RedactingFilter, add_secret, redact, setup_logging

API_KEY = "rf_Abc123SecretKey"
PASSWORD = "p@ss w/rd"  # URL-encodes to p%40ss%20w%2Frd (quote) or p%40ss+w%2Frd (quote_plus)

PLAIN_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    level = root.level
    logs.clear_secrets()
    yield
    logs.clear_secrets()
    logs.reset_logging()
    assert not [h for h in root.handlers if isinstance(h, logs._AgentHandler)]
    root.setLevel(level)


def output_of(level: str = "debug", **kwargs: bool) -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, stream=stream, **kwargs)
    return stream


# ------------------------------------------------------------------------------------- formats


def test_plain_format_is_one_utc_line_per_event() -> None:
    out = output_of("info")
    logging.getLogger("agent.capture").info("camera %s opened at %d fps", "front", 5)
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert PLAIN_RE.match(line), line
    assert line.rstrip("\n").endswith(" INFO agent.capture: camera front opened at 5 fps")


def test_level_filters_and_names_are_case_insensitive() -> None:
    out = output_of("WARNING")
    log = logging.getLogger("agent.x")
    log.info("hidden")
    log.debug("hidden")
    log.warning("shown")
    assert "hidden" not in out.getvalue()
    assert "WARNING agent.x: shown" in out.getvalue()


def test_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="verbose"):
        setup_logging("verbose", stream=io.StringIO())


def test_setup_twice_replaces_the_handler() -> None:
    first = output_of("info")
    second = output_of("debug")
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs._AgentHandler)]
    assert len(ours) == 1
    logging.getLogger("agent.y").debug("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_setup_keeps_foreign_handlers() -> None:
    foreign = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(foreign)
    try:
        output_of()
        output_of()
        assert foreign in root.handlers
    finally:
        root.removeHandler(foreign)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (25, "<5>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ],
)
def test_journal_prefix_is_the_syslog_priority(level: int, prefix: str) -> None:
    out = output_of(journal=True)
    logging.getLogger("agent.z").log(level, "event")
    assert out.getvalue() == f"{prefix}agent.z: event\n"


def test_journal_is_detected_from_journal_stream(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with open(tmp_path / "journal", "w+", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("info", stream=stream)
        logging.getLogger("agent.j").warning("to the journal")
        stream.flush()
        stream.seek(0)
        assert stream.read() == "<4>agent.j: to the journal\n"


def test_other_streams_are_not_the_journal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.touch()
    st = os.stat(other)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        assert not logs.stream_is_journal(stream)
        setup_logging("info", stream=stream)
        logging.getLogger("agent.j").info("not the journal")
        stream.flush()
        stream.seek(0)
        assert PLAIN_RE.match(stream.read())
    assert not logs.stream_is_journal(io.StringIO())  # no file descriptor at all


def test_journal_traceback_lines_all_carry_the_priority() -> None:
    out = output_of(journal=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("agent.t").exception("failed")
    lines = out.getvalue().splitlines()
    assert lines[0] == "<3>agent.t: failed"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in lines)


def test_warnings_go_through_logging() -> None:
    out = output_of("warning")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    assert "WARNING py.warnings: " in out.getvalue()
    assert "deprecated thing" in out.getvalue()


def test_nothing_happens_at_import() -> None:
    code = "import logging, agent.logs; r = logging.getLogger(); print(len(r.handlers), r.level)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.split() == ["0", str(logging.WARNING)]


# ----------------------------------------------------------------------------------- redaction


def test_registered_secret_in_message_and_args() -> None:
    out = output_of()
    add_secret(API_KEY)
    add_secret(PASSWORD)
    log = logging.getLogger("agent.r")
    log.info(f"key is {API_KEY}")
    log.info("key %s and password %r", API_KEY, PASSWORD)
    log.info("as a dict %s", {"api_key": API_KEY, "nested": [PASSWORD]})
    text = out.getvalue()
    assert API_KEY not in text and PASSWORD not in text
    assert "key is ***" in text
    assert "key *** and password '***'" in text
    assert text.count("***") == 5


def test_url_encoded_forms_of_a_secret_are_redacted() -> None:
    add_secret(PASSWORD)
    assert redact("u=p%40ss%20w%2Frd&x=1") == "u=***&x=1"
    assert redact("form p%40ss+w%2Frd end") == "form *** end"


def test_secret_in_exception_text_and_traceback() -> None:
    out = output_of()
    add_secret(API_KEY)
    try:
        try:
            raise ConnectionError(f"POST https://api.example/x?key={API_KEY} failed")
        except ConnectionError as inner:
            raise RuntimeError(f"inference failed ({API_KEY})") from inner
    except RuntimeError:
        logging.getLogger("agent.e").exception("request with %s", API_KEY)
    text = out.getvalue()
    assert API_KEY not in text
    assert "ConnectionError: POST https://api.example/x?key=*** failed" in text
    assert "RuntimeError: inference failed (***)" in text
    assert "request with ***" in text


def test_secret_in_stack_info() -> None:
    out = output_of()
    add_secret(API_KEY)
    logging.getLogger("agent.s").info("here", stack_info=True)
    assert "Stack (most recent call last)" in out.getvalue()
    stack = f"  x = '{API_KEY}'"
    record = logging.LogRecord("agent.s", logging.INFO, __file__, 1, "m", None, None, sinfo=stack)
    RedactingFilter().filter(record)
    assert record.stack_info == "  x = '***'"


def test_secrets_registered_after_setup_still_apply() -> None:
    out = output_of()
    log = logging.getLogger("agent.late")
    log.info("early %s", "late-secret-value")
    add_secret("late-secret-value")
    log.info("later %s", "late-secret-value")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("early late-secret-value")
    assert lines[1].endswith("later ***")


def test_longer_secret_is_hidden_whole() -> None:
    add_secret("abcd")
    add_secret("abcdefgh")
    assert redact("x abcdefgh y abcd") == "x *** y ***"


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_secrets_are_ignored(value: str) -> None:
    add_secret(value)
    assert redact("nothing to hide here") == "nothing to hide here"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "POST https://serverless.roboflow.com/proj/3?api_key=XyZ123&confidence=40",
            "POST https://serverless.roboflow.com/proj/3?api_key=***&confidence=40",
        ),
        (
            '"POST /proj/3?confidence=40&api_key=XyZ123 HTTP/1.1" 200 512',
            '"POST /proj/3?confidence=40&api_key=*** HTTP/1.1" 200 512',
        ),
        ("https://h/x?API_KEY=abc#frag", "https://h/x?API_KEY=***#frag"),
        ("https://h/x?apikey=abc&access_token=def", "https://h/x?apikey=***&access_token=***"),
        ("mqtt_password=hunter2 client_secret=s", "mqtt_password=*** client_secret=***"),
        ("rtsp://admin:hunter2@192.168.1.10:554/stream1", "rtsp://admin:***@192.168.1.10:554/stream1"),
        ("mqtts://agent:pa%40ss@broker.example:8883", "mqtts://agent:***@broker.example:8883"),
        ("Authorization: Bearer eyJhbGciOi.abc", "Authorization: Bearer ***"),
        ("rtsp://camera.local/stream?channel=1", "rtsp://camera.local/stream?channel=1"),
        ("max_tokens=5 keyword=x user@example.com", "max_tokens=5 keyword=x user@example.com"),
    ],
)
def test_url_credentials_are_always_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_url_credentials_in_log_records() -> None:
    out = output_of()
    logging.getLogger("urllib3.connectionpool").debug(
        'https://serverless.roboflow.com:443 "%s %s HTTP/1.1" %s %s',
        "POST",
        "/proj/3?api_key=XyZ123&confidence=40",
        200,
        512,
    )
    logging.getLogger("agent.capture").warning("cannot open %s", "rtsp://admin:hunter2@10.0.0.5/live")
    text = out.getvalue()
    assert "XyZ123" not in text and "hunter2" not in text
    assert "api_key=***&confidence=40" in text
    assert "rtsp://admin:***@10.0.0.5/live" in text


def test_filter_rewrites_the_record_for_every_later_handler() -> None:
    add_secret(API_KEY)
    record = logging.LogRecord("agent.f", logging.ERROR, __file__, 1, "key=%s", (API_KEY,), None)
    try:
        raise ValueError(API_KEY)
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "key=***"
    assert record.args is None
    assert record.exc_text is not None and API_KEY not in record.exc_text
    # A plain formatter downstream reuses the redacted exception text.
    assert API_KEY not in logging.Formatter().format(record)


def test_filter_leaves_broken_format_strings_to_logging() -> None:
    record = logging.LogRecord("agent.f", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert RedactingFilter().filter(record) is True
    assert record.args == ("many",)


def test_throttle_writes_one_line_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    from agent.logs import Throttle

    now = [0.0]
    t = Throttle(logging.getLogger("agent.test.throttle"), 60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="agent.test.throttle"):
        written = []
        for i in range(10):  # ten frames in 9 s: one line
            now[0] = float(i)
            written.append(t.log(logging.WARNING, "cam0", "frame %d failed", i))
        assert t.log(logging.WARNING, "cam1", "frame %d failed", 0)  # another key has its own budget
        now[0] = 61.0
        assert t.log(logging.WARNING, "cam0", "frame %d failed", 99)
    assert written == [True] + [False] * 9
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["frame 0 failed", "frame 0 failed", "frame 99 failed (and 9 more like it in the last 60 s)"]
