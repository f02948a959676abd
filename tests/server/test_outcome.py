"""`Promise`: the loop-free result slot streams use for steps."""

from __future__ import annotations

import logging

import pytest

from rnnserve_server.errors import InvalidArgument
from rnnserve_server.outcome import Promise


def test_callbacks_run_at_resolution_in_order() -> None:
    p = Promise()
    seen: list[tuple[str, object]] = []
    p.add_done_callback(lambda q: seen.append(("a", q.result())))
    p.add_done_callback(lambda q: seen.append(("b", q.result())))
    assert not p.done()
    assert seen == []
    p.set_result(7)
    assert p.done()
    assert seen == [("a", 7), ("b", 7)]  # synchronously, no event loop involved


def test_callback_added_after_resolution_runs_at_once() -> None:
    p = Promise()
    p.set_exception(InvalidArgument("bad"))
    seen: list[BaseException | None] = []
    p.add_done_callback(lambda q: seen.append(q.exception()))
    assert len(seen) == 1
    assert isinstance(seen[0], InvalidArgument)
    with pytest.raises(InvalidArgument, match="bad"):
        p.result()


def test_failing_callback_is_logged_and_the_rest_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = Promise()
    seen: list[int] = []

    def boom(_: Promise) -> None:
        raise RuntimeError("callback bug")

    p.add_done_callback(boom)
    p.add_done_callback(lambda q: seen.append(q.result()))
    with caplog.at_level(logging.ERROR, logger="rnnserve.outcome"):
        p.set_result(3)
    assert seen == [3]
    assert "callback failed" in caplog.text
    assert "callback bug" in caplog.text


def test_resolving_twice_or_reading_early_is_an_error() -> None:
    p = Promise()
    with pytest.raises(RuntimeError, match="not resolved"):
        p.result()
    p.set_result(1)
    with pytest.raises(RuntimeError, match="already resolved"):
        p.set_exception(InvalidArgument("late"))
    assert p.result() == 1
