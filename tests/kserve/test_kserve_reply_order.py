"""Reply order on ModelStreamInfer (docs/kserve.md): the replies of one sequence arrive in the
order its requests were sent, whichever path answers them (a plain step answered from its batch,
a task for any other request, a rejection) and whether they succeed or fail; requests of other
sequences, and requests outside any sequence, are not held back.

The earlier request of each case is slow (a long chunk) or answered from a task, so that without
the ordering the later reply would overtake it in most runs; each case repeats a few times. The
requests are hand-built and sent on the raw stub, so the replies come back exactly in the order
the server wrote them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
from kserve_harness import Server
from tritonclient.grpc import service_pb2, service_pb2_grpc

from rnnserve_proto import model_repository_pb2 as mr

LONG = 4096  # steps: the most one chunk may have (max_chunk_steps); it takes a while to run
TRIALS = 8
_ids = itertools.count(7000)


def _request(
    meta: mr.ModelMetadata,
    x: np.ndarray,
    request_id: str,
    sequence_id: int | None = None,
    *,
    start: bool = False,
    outputs: Iterable[str] = (),
) -> service_pb2.ModelInferRequest:
    """A request with input `x` ([T, F] or [B, T, F]) for sequence `sequence_id` (None: none)."""
    batch = x[None] if x.ndim == 2 else x
    request = service_pb2.ModelInferRequest(model_name=meta.name, id=request_id)
    if sequence_id is not None:
        request.parameters["sequence_id"].int64_param = sequence_id
    if start:
        request.parameters["sequence_start"].bool_param = True
    request.inputs.add(name=meta.input_name, datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(np.ascontiguousarray(batch, "<f4").tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _stream(
    server: Server, requests: list[service_pb2.ModelInferRequest]
) -> list[service_pb2.ModelStreamInferResponse]:
    """Send every request on one stream (pipelined); the replies in the order they came."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(server.channel)
    return list(stub.ModelStreamInfer(iter(requests), timeout=60))


def _order(replies: list[service_pb2.ModelStreamInferResponse]) -> list[str]:
    return [r.infer_response.id for r in replies]


def _meta(server: Server) -> mr.ModelMetadata:
    return server.models[server.streaming[0]]


def test_error_reply_waits_for_its_sequences_long_request(server: Server) -> None:
    """A malformed request (wrong feature count: the general path, which fails at once) behind
    its sequence's long start: its error reply comes second."""
    meta = _meta(server)
    F = meta.input_features
    requests, sequences = [], []
    for _ in range(TRIALS):
        sid = next(_ids)
        sequences.append(sid)
        long = np.ones((LONG, F), np.float32)
        requests.append(_request(meta, long, f"{sid}/long", sid, start=True))
        requests.append(_request(meta, np.ones((1, F + 1), np.float32), f"{sid}/bad", sid))
    replies = _stream(server, requests)
    order = _order(replies)
    errors = {r.infer_response.id: r.error_message for r in replies}
    for sid in sequences:
        assert order.index(f"{sid}/long") < order.index(f"{sid}/bad"), order
        assert not errors[f"{sid}/long"]
        assert "INVALID_ARGUMENT" in errors[f"{sid}/bad"]


def test_rejected_plain_step_waits_for_its_sequences_long_request(server: Server) -> None:
    """A plain step the service rejects as it is submitted (one step too many) is answered at
    once, after its sequence's long start."""
    meta = _meta(server)
    F = meta.input_features
    for trial in range(TRIALS):
        sid = next(_ids)
        replies = _stream(
            server,
            [
                _request(meta, np.ones((LONG, F), np.float32), "long", sid, start=True),
                _request(meta, np.ones((LONG + 1, F), np.float32), "too-long", sid),
            ],
        )
        assert _order(replies) == ["long", "too-long"], f"trial {trial}"
        assert not replies[0].error_message
        assert "INVALID_ARGUMENT" in replies[1].error_message


def test_plain_steps_behind_a_state_output_request_wait_for_it(server: Server) -> None:
    """A request asking for the state (answered by a task) and plain steps of its sequence right
    behind it (answered from their batches, maybe first): replies in the order sent, each
    output as a run of the whole sequence gives."""
    meta = _meta(server)
    F = meta.input_features
    state = meta.states[0].output_name
    rng = np.random.default_rng(5)
    for trial in range(TRIALS):
        sid = next(_ids)
        x = rng.normal(size=(4, F)).astype(np.float32)
        requests = [
            _request(meta, x[:1], "0", sid, start=True, outputs=(meta.output_name, state)),
            _request(meta, x[1:2], "1", sid),
            _request(meta, x[2:3], "2", sid, outputs=(meta.output_name, state)),
            _request(meta, x[3:], "3", sid),
        ]
        replies = _stream(server, requests)
        assert _order(replies) == ["0", "1", "2", "3"], f"trial {trial}"
        assert [r.error_message for r in replies] == [""] * 4
        ys = [
            np.frombuffer(r.infer_response.raw_output_contents[0], "<f4").reshape(-1)
            for r in replies
        ]
        whole = _stream(server, [_request(meta, x[None], "whole")])[0]
        assert not whole.error_message
        y = np.frombuffer(whole.infer_response.raw_output_contents[0], "<f4").reshape(-1)
        np.testing.assert_allclose(np.concatenate(ys), y, rtol=1e-5, atol=1e-5)


def test_other_sequences_and_requests_without_one_are_not_held_back(server: Server) -> None:
    """Behind a long request of one sequence: a request whose parameters do not parse (it has no
    sequence) and a malformed request of another sequence are answered at once."""
    meta = _meta(server)
    F = meta.input_features
    for trial in range(TRIALS // 2):
        busy, other = next(_ids), next(_ids)
        unparsed = _request(meta, np.ones((1, F), np.float32), "unparsed")
        unparsed.parameters["sequence_id"].bool_param = True  # not a valid sequence id
        replies = _stream(
            server,
            [
                _request(meta, np.ones((LONG, F), np.float32), "busy", busy, start=True),
                unparsed,
                _request(meta, np.ones((1, F + 1), np.float32), "other", other),
            ],
        )
        assert _order(replies) == ["unparsed", "other", "busy"], f"trial {trial}"
        assert "sequence_id" in replies[0].error_message
        assert replies[1].error_message
        assert not replies[2].error_message
