"""Structured logs: one JSON object per line with the `extra` fields (session_id, model) on top."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from rnnserve_server.logging_setup import configure_logging


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_carry_session_and_model() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    log = logging.getLogger("rnnserve.test")
    log.info("session %s evicted", "s1", extra={"session_id": "s1", "model": "gru"})
    log.debug("not shown at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"model": "gru"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["msg"] == "session s1 evicted"
    assert (first["session_id"], first["model"], first["level"]) == ("s1", "gru", "INFO")
    assert first["logger"] == "rnnserve.test"
    assert first["ts"].endswith("+00:00")
    assert "ValueError: boom" in lines[1]["exc"]


@pytest.mark.usefixtures("restore_root_logger")
def test_text_format_shows_extras() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "text", stream=out)
    logging.getLogger("rnnserve.test").debug("hello", extra={"session_id": "abc"})
    assert "hello session_id=abc" in out.getvalue()
