"""Reconnect and resume: a TCP proxy between client and server cuts the connection mid-stream;
the step index (expected_step) keeps every chunk from being applied twice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from client_proxy import TcpProxy
from client_support import Model

from rnnserve_client import AsyncClient, Client, DeadlineExceeded, ReplyLost, Session
from rnnserve_client._local import LocalServer

RTOL, ATOL = 1e-4, 1e-3


@pytest.fixture
def proxy(server: LocalServer) -> Iterator[TcpProxy]:
    p = TcpProxy(server.port)
    yield p
    p.close()


@pytest.fixture
def direct(client: Client) -> Client:
    """A client that bypasses the proxy, to read the server's view of a session."""
    return client


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    box: list[object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the test thread
            box.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, box


@pytest.mark.parametrize("use_stream", [True, False], ids=["stream", "unary"])
def test_cuts_between_chunks_are_invisible(
    proxy: TcpProxy, direct: Client, model: Model, use_stream: bool
) -> None:
    x = model.series(40, seed=1)
    ref = direct.predict(model.name, x)
    outs = []
    with Client(proxy.target, use_stream=use_stream, timeout=10) as c, c.session(model.name) as s:
        for i in range(0, 40, 2):
            outs.append(s.step(x[i : i + 2]))
            if i % 10 == 8:
                proxy.cut()
        assert direct.get_session(s.id).step == 40
        assert s.step_index == 40
    assert proxy.connections >= 4
    np.testing.assert_allclose(np.concatenate(outs), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("use_stream", [True, False], ids=["stream", "unary"])
def test_chunk_lost_on_the_way_is_resent_once(
    proxy: TcpProxy, direct: Client, model: Model, use_stream: bool
) -> None:
    x = model.series(9, seed=2)
    ref = direct.predict(model.name, x)
    with Client(proxy.target, use_stream=use_stream, timeout=10) as c, c.session(model.name) as s:
        first = s.step(x[:4])
        proxy.hold_requests()
        thread, box = _in_thread(lambda: s.step(x[4:7]))
        time.sleep(0.3)
        assert direct.get_session(s.id).step == 4  # the chunk has not reached the server
        proxy.cut()
        thread.join(15)
        assert len(box) == 1, box
        assert isinstance(box[0], np.ndarray), box
        assert direct.get_session(s.id).step == 7
        last = s.step(x[7:])
        assert s.step_index == 9 == direct.get_session(s.id).step
    np.testing.assert_allclose(np.concatenate([first, box[0], last]), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("use_stream", [True, False], ids=["stream", "unary"])
def test_reply_lost_after_apply_raises_and_is_not_applied_twice(
    proxy: TcpProxy, direct: Client, model: Model, use_stream: bool
) -> None:
    x = model.series(10, seed=3)
    ref = direct.predict(model.name, x)
    with Client(proxy.target, use_stream=use_stream, timeout=10) as c, c.session(model.name) as s:
        first = s.step(x[:4])
        proxy.hold_replies()
        thread, box = _in_thread(lambda: s.step(x[4:7]))
        _wait_for(lambda: direct.get_session(s.id).step == 7)  # applied, reply held
        proxy.cut()
        thread.join(15)
        assert len(box) == 1, box
        assert isinstance(box[0], ReplyLost), box
        lost = box[0]
        assert (lost.step, lost.lost_steps, lost.code.name) == (7, 3, "UNAVAILABLE")
        assert s.step_index == 7
        assert direct.get_session(s.id).step == 7  # the resend was refused, not applied
        last = s.step(x[7:])  # continues from the state after exactly one application
        assert direct.get_session(s.id).step == 10
    np.testing.assert_allclose(first, ref[:4], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(last, ref[7:], rtol=RTOL, atol=ATOL)


def test_stream_on_lost_nan_keeps_alignment(proxy: TcpProxy, direct: Client, model: Model) -> None:
    x = model.series(12, seed=4)
    ref = direct.predict(model.name, x)
    with Client(proxy.target, timeout=10) as c, c.session(model.name) as s:

        def chunks() -> Iterator[np.ndarray]:
            for i in range(0, 12, 3):
                if i == 6:
                    proxy.hold_replies()
                    threading.Thread(target=cut_when_applied, args=(9,), daemon=True).start()
                yield x[i : i + 3]

        def cut_when_applied(step: int) -> None:
            _wait_for(lambda: direct.get_session(s.id).step == step)
            proxy.cut()

        outs = list(s.stream(chunks(), on_lost="nan"))
        assert direct.get_session(s.id).step == 12
    y = np.concatenate(outs)
    assert y.shape == ref.shape
    assert np.isnan(y[6:9]).all()
    mask = np.ones(12, bool)
    mask[6:9] = False
    np.testing.assert_allclose(y[mask], ref[mask], rtol=RTOL, atol=ATOL)


def test_unreachable_server_times_out_and_leaves_the_session_alone(model: Model) -> None:
    """Re-opened streams wait for the channel to be ready (so a reconnect does not burn retries),
    so an unreachable server surfaces as DeadlineExceeded after the client's timeout."""
    proxy = TcpProxy(1)  # upstream port 1: every connection fails at once
    try:
        with Client(proxy.target, max_retries=2, retry_backoff=0.01, timeout=1.0) as c:
            s: Session = c.session(model.name)
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded) as info:
                s.step(model.series(2))
            assert 0.9 < time.monotonic() - t0 < 10
            assert info.value.code.name == "DEADLINE_EXCEEDED"
            assert not s.started
            assert s.step_index == 0
    finally:
        proxy.close()


def test_async_reconnect(proxy: TcpProxy, direct: Client, model: Model) -> None:
    x = model.series(12, seed=5)
    ref = direct.predict(model.name, x)

    async def main() -> None:
        async with AsyncClient(proxy.target, timeout=10) as c:
            s = c.session(model.name)
            first = await s.step(x[:4])
            # lost on the way: resent once
            proxy.hold_requests()
            task = asyncio.create_task(s.step(x[4:6]))
            await asyncio.sleep(0.3)
            assert direct.get_session(s.id).step == 4
            proxy.cut()
            second = await asyncio.wait_for(task, 15)
            # lost on the way back: ReplyLost, applied once
            proxy.hold_replies()
            task = asyncio.create_task(s.step(x[6:9]))
            while direct.get_session(s.id).step != 9:
                await asyncio.sleep(0.02)
            proxy.cut()
            with pytest.raises(ReplyLost):
                await asyncio.wait_for(task, 15)
            assert s.step_index == 9
            last = await s.step(x[9:])
            assert direct.get_session(s.id).step == 12
            await s.close()
        np.testing.assert_allclose(np.concatenate([first, second]), ref[:6], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(last, ref[9:], rtol=RTOL, atol=ATOL)

    asyncio.run(main())


def test_reply_lost_for_the_final_chunk(proxy: TcpProxy, direct: Client, model: Model) -> None:
    x = model.series(6, seed=6)
    with Client(proxy.target, timeout=10) as c:
        s = c.session(model.name)
        s.step(x[:3])
        sid = s.id
        proxy.hold_replies()
        thread, box = _in_thread(lambda: s.step(x[3:], end=True))
        _wait_for(lambda: sid not in {i.session_id for i in direct.list_sessions(model.name)})
        proxy.cut()
        thread.join(15)
        assert len(box) == 1, box
        assert isinstance(box[0], ReplyLost), box
        assert box[0].lost_steps == 3
        assert not s.started
        assert s.step_index == 0
        # Not re-applied: a resend would have failed on the missing session, not created one.
        assert sid not in {i.session_id for i in direct.list_sessions(model.name)}
