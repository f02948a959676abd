"""Errors come back as the documented exception types carrying the gRPC status; the session's
state is untouched by a rejected chunk."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from client_support import Model

import rnnserve_client as rc
from rnnserve_client import AsyncClient, Client
from rnnserve_client._local import LocalServer


def _check(exc: rc.RnnServeError, cls: type[rc.RnnServeError], code: grpc.StatusCode) -> None:
    assert type(exc) is cls
    assert exc.code is code
    assert exc.details
    assert code.name in str(exc)


def test_unknown_model_is_not_found_chained_to_the_rpc_error(client: Client) -> None:
    with pytest.raises(rc.NotFound) as info:
        client.predict("no_such_model", np.zeros((3, 1)))
    _check(info.value, rc.NotFound, grpc.StatusCode.NOT_FOUND)
    assert isinstance(info.value.__cause__, grpc.RpcError)
    assert info.value.__cause__.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with pytest.raises(rc.NotFound):
        client.model_metadata("no_such_model")


def test_unknown_session(client: Client) -> None:
    for call in (client.get_session, client.reset_session, client.close_session):
        with pytest.raises(rc.NotFound) as info:
            call("no-such-session")
        _check(info.value, rc.NotFound, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(rc.NotFound):
        client.forecast("no-such-session", 3)
    with pytest.raises(rc.NotFound):
        client.attach("no-such-session")


def test_stream_reply_errors_use_the_same_types(client: Client, model: Model) -> None:
    with pytest.raises(rc.NotFound) as info:
        client.session("no_such_model").step(np.zeros((2, model.input_features)))
    _check(info.value, rc.NotFound, grpc.StatusCode.NOT_FOUND)
    assert info.value.__cause__ is None  # a per-message status: no RpcError to chain


@pytest.mark.parametrize("use_stream", [True, False], ids=["stream", "unary"])
def test_bad_chunk_is_invalid_argument_and_leaves_state(
    server: LocalServer, model: Model, use_stream: bool
) -> None:
    x = model.series(6)
    with Client(server.target, use_stream=use_stream) as c, c.session(model.name) as s:
        s.step(x[:3])
        bad = np.zeros((2, model.input_features + 1), np.float32)
        with pytest.raises(rc.InvalidArgument) as info:
            s.step(bad)
        _check(info.value, rc.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(rc.InvalidArgument):
            s.step(np.full((1, model.input_features), np.nan))
        assert s.step_index == 3 == s.info().step
        np.testing.assert_allclose(
            s.step(x[3:]), c.predict(model.name, x)[3:], rtol=1e-4, atol=1e-3
        )


def test_step_index_mismatch_is_failed_precondition_with_the_server_step(
    client: Client, model: Model
) -> None:
    x = model.series(4)
    s = client.session(model.name)
    s.step(x[:2])
    other = client.attach(s.id)
    other.step(x[2:3])  # the session moved on behind `s`'s back
    with pytest.raises(rc.FailedPrecondition) as info:
        s.step(x[3:])
    _check(info.value, rc.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION)
    assert info.value.step == 3
    assert s.step_index == 3  # resynchronised to the server's count
    s.step(x[3:])
    assert s.info().step == 4
    s.close()


def test_invalid_forecast_horizon(client: Client, model: Model) -> None:
    with client.session(model.name) as s:
        s.step(model.series(2))
        with pytest.raises(rc.InvalidArgument):
            s.forecast(0)


def test_not_streaming_model_rejects_sessions(client: Client, whole_sequence_model: Model) -> None:
    s = client.session(whole_sequence_model.name)
    with pytest.raises(rc.RnnServeError) as info:
        s.step(whole_sequence_model.series(3))
    assert info.value.code in (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert not s.started
    y = client.predict(whole_sequence_model.name, whole_sequence_model.series(5))
    assert y.shape == (5, whole_sequence_model.output_features)


def test_client_side_shape_check(client: Client) -> None:
    with pytest.raises(rc.InvalidArgument):
        client.session("any").step(np.zeros((1, 2, 3, 4)))


def test_async_errors(server: LocalServer) -> None:
    async def main() -> None:
        async with AsyncClient(server.target) as c:
            with pytest.raises(rc.NotFound) as info:
                await c.get_session("no-such-session")
            _check(info.value, rc.NotFound, grpc.StatusCode.NOT_FOUND)
            assert isinstance(info.value.__cause__, grpc.RpcError)
            with pytest.raises(rc.NotFound):
                await c.session("no_such_model").step(np.zeros((2, 1)))

    asyncio.run(main())


def test_every_status_code_maps_to_its_class() -> None:
    from rnnserve_client._errors import error_from_code

    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        err = error_from_code(code, "x")
        assert err.code is code
        assert isinstance(err, rc.RnnServeError)
        assert type(err).__name__.lower() == code.name.replace("_", "").lower()
        assert error_from_code(code.value[0], "x").code is code
    assert isinstance(error_from_code(99, "x"), rc.Unknown)
    assert issubclass(rc.ReplyLost, rc.Unavailable)


def test_session_closed_behind_its_back_starts_afresh(client: Client, model: Model) -> None:
    x = model.series(4)
    s = client.session(model.name)
    first = s.step(x)
    client.close_session(s.id)
    with pytest.raises(rc.NotFound):
        s.step(x)
    assert not s.started
    np.testing.assert_allclose(s.step(x), first, rtol=1e-4, atol=1e-3)
    assert s.step_index == 4
    s.close()
