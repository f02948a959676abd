"""Unit tests of the pure KServe v2 conversions (no server)."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import InferResult
from tritonclient.grpc import service_pb2 as triton

from rnnserve_proto import kserve_pb2 as kpb
from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_server.errors import InvalidArgument
from rnnserve_server.grpc_api import kserve_convert as conv
from rnnserve_server.types import ModelInfo, SessionInfo, SessionSnapshot

F, OUT, H = 3, 2, 4


def _meta(streaming: bool = True) -> mr.ModelMetadata:
    meta = mr.ModelMetadata(
        name="m",
        version=2,
        input_name="x",
        output_name="y",
        input_features=F,
        output_features=OUT,
        streaming=streaming,
    )
    if streaming:
        meta.states.add(
            name="h", input_name="h_in", output_name="h_out", shape=[1, H], dtype=mr.FLOAT32
        )
        meta.states.add(name="n", input_name="n_in", output_name="n_out", shape=[], dtype=mr.INT64)
    return meta


def _params(**kw: object) -> dict[str, kpb.InferParameter]:
    params: dict[str, kpb.InferParameter] = {}
    for key, value in kw.items():
        if isinstance(value, bool):
            params[key] = kpb.InferParameter(bool_param=value)
        elif isinstance(value, int):
            params[key] = kpb.InferParameter(int64_param=value)
        elif isinstance(value, str):
            params[key] = kpb.InferParameter(string_param=value)
        else:
            params[key] = value  # type: ignore[assignment]
    return params


# -- sequence parameters -------------------------------------------------------------------------
def test_int_id_maps_to_its_decimal_string() -> None:
    seq = conv.parse_sequence(_params(sequence_id=42, sequence_start=True, sequence_end=False))
    assert (seq.session_id, seq.id_kind, seq.start, seq.end) == ("42", "int", True, False)


def test_uint64_and_string_ids() -> None:
    big = 2**63 + 5
    seq = conv.parse_sequence({"sequence_id": kpb.InferParameter(uint64_param=big)})
    assert (seq.session_id, seq.id_kind) == (str(big), "int")
    seq = conv.parse_sequence(_params(sequence_id="sensor-7", sequence_end=True))
    assert (seq.session_id, seq.id_kind, seq.start, seq.end) == ("sensor-7", "string", False, True)


@pytest.mark.parametrize("empty", [0, ""])
def test_zero_or_empty_id_is_no_sequence(empty: int | str) -> None:
    seq = conv.parse_sequence(_params(sequence_id=empty, sequence_start=False, sequence_end=False))
    assert not seq.is_sequence


def test_no_parameters_is_stateless() -> None:
    assert not conv.parse_sequence({}).is_sequence


def test_empty_id_with_start_asks_for_a_server_assigned_id() -> None:
    seq = conv.parse_sequence(_params(sequence_id="", sequence_start=True))
    assert seq.is_sequence
    assert seq.session_id == ""
    assert seq.start


def test_end_without_id_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="sequence_end"):
        conv.parse_sequence(_params(sequence_end=True))


def test_bad_parameter_kinds_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="sequence_id"):
        conv.parse_sequence({"sequence_id": kpb.InferParameter(double_param=1.0)})
    with pytest.raises(InvalidArgument, match="sequence_start"):
        conv.parse_sequence(_params(sequence_id=1, sequence_start="yes"))


def test_echo_keeps_the_id_kind() -> None:
    assert conv.sequence_id_param("42", "int") == kpb.InferParameter(int64_param=42)
    assert conv.sequence_id_param("42", "string") == kpb.InferParameter(string_param="42")


def test_versions() -> None:
    assert conv.parse_version("") is None
    assert conv.parse_version("3") == 3
    for bad in ("latest", "-4"):
        with pytest.raises(InvalidArgument, match="version"):
            conv.parse_version(bad)


# -- inputs --------------------------------------------------------------------------------------
def _request(
    datatype: str = "FP32", shape: tuple[int, ...] = (1, 2, F), name: str = "x"
) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name="m")
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    return request


def test_raw_fp32_input() -> None:
    x = np.random.default_rng(0).normal(size=(2, 5, F)).astype(np.float32)
    request = _request(shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    np.testing.assert_array_equal(conv.decode_input(request, _meta()), x)


def test_typed_fp32_input() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 2, F) / 7
    request = _request()
    request.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    np.testing.assert_array_equal(conv.decode_input(request, _meta()), x)


@pytest.mark.parametrize("raw", [True, False])
def test_fp64_is_rounded_to_float32(raw: bool) -> None:
    x = np.random.default_rng(1).normal(size=(1, 4, F)) * 1e3
    request = _request("FP64", x.shape)
    if raw:
        request.raw_input_contents.append(x.astype("<f8").tobytes())
    else:
        request.inputs[0].contents.fp64_contents.extend(x.ravel().tolist())
    got = conv.decode_input(request, _meta())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x, rtol=2**-24, atol=0)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (_request("INT32"), "datatype INT32"),
        (_request(name="input"), "exactly one input"),
        (_request(shape=(2, F)), r"shape \[2, 3\]"),
        (_request(shape=(1, 2, F + 1)), "expected \\[batch, time, 3\\]"),
        (_request(shape=(1, 0, F)), "empty"),
    ],
)
def test_bad_inputs_are_explained(request_: kpb.ModelInferRequest, match: str) -> None:
    request_.raw_input_contents.append(b"\0" * 4 * int(np.prod(request_.inputs[0].shape)))
    with pytest.raises(InvalidArgument, match=match):
        conv.decode_input(request_, _meta())


def test_byte_count_must_match_the_shape() -> None:
    request = _request()
    request.raw_input_contents.append(b"\0" * 20)
    with pytest.raises(InvalidArgument, match="24 bytes expected"):
        conv.decode_input(request, _meta())


def test_typed_count_and_field_must_match() -> None:
    request = _request()
    request.inputs[0].contents.fp32_contents.extend([1.0] * 5)
    with pytest.raises(InvalidArgument, match="6 values expected"):
        conv.decode_input(request, _meta())
    request = _request()
    request.inputs[0].contents.int_contents.extend([1] * 6)
    with pytest.raises(InvalidArgument, match="fp32_contents"):
        conv.decode_input(request, _meta())


def test_raw_and_typed_together_are_rejected() -> None:
    request = _request()
    request.inputs[0].contents.fp32_contents.extend([1.0] * 6)
    request.raw_input_contents.append(b"\0" * 24)
    with pytest.raises(InvalidArgument, match="both"):
        conv.decode_input(request, _meta())


def test_sequence_requests_have_batch_one() -> None:
    x = np.zeros((2, 3, F), np.float32)
    with pytest.raises(InvalidArgument, match="batch size 1"):
        conv.sequence_chunk(x, "m")
    assert conv.sequence_chunk(x[:1], "m").shape == (3, F)


# -- outputs -------------------------------------------------------------------------------------
def test_requested_outputs() -> None:
    meta = _meta()
    assert conv.requested_outputs(kpb.ModelInferRequest(), meta) == ["y"]
    request = kpb.ModelInferRequest()
    for name in ("h_out", "y", "h_out"):
        request.outputs.add(name=name)
    assert conv.requested_outputs(request, meta) == ["h_out", "y"]
    request.outputs.add(name="c_out")
    with pytest.raises(InvalidArgument, match="no output 'c_out'"):
        conv.requested_outputs(request, meta)


def test_response_is_what_tritonclient_reads() -> None:
    meta = _meta()
    y = np.random.default_rng(2).normal(size=(1, 4, OUT)).astype(np.float32)
    info = SessionInfo("7", "m", 2, 4, 0.0, 0.0)
    snapshot = SessionSnapshot(info, {"h": np.full((1, H), 0.5, np.float32), "n": np.array(4)})
    states = conv.state_outputs(snapshot, meta, ["n_out"])
    seq = conv.parse_sequence(_params(sequence_id=7, sequence_start=True))
    response = conv.infer_response(
        model="m",
        version=2,
        request_id="r9",
        outputs=[conv.y_output(y, meta), ("n_out", *states["n_out"])],
        sequence=seq,
        session_id="7",
    )
    parsed = triton.ModelInferResponse.FromString(response.SerializeToString())
    result = InferResult(parsed)
    np.testing.assert_array_equal(result.as_numpy("y"), y)
    np.testing.assert_array_equal(result.as_numpy("n_out"), np.array([4], np.int64))
    assert parsed.id == "r9"
    assert parsed.model_version == "2"
    assert parsed.parameters["sequence_id"].int64_param == 7


# -- metadata ------------------------------------------------------------------------------------
def _info(ready: bool = True) -> ModelInfo:
    return ModelInfo("m", [1, 2], 2, "gru", True, ready)


def test_model_metadata_advertises_dynamic_batch_and_time() -> None:
    response = conv.model_metadata_response(_meta(), _info())
    assert list(response.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in response.inputs] == [
        ("x", "FP32", [-1, -1, F])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [
        ("y", "FP32", [-1, -1, OUT])
    ]


def test_model_config_declares_implicit_state() -> None:
    config = conv.model_config_response(_meta(), max_batch_size=64, idle_ttl_s=2.5).config
    assert config.WhichOneof("scheduling_choice") == "sequence_batching"
    assert config.sequence_batching.max_sequence_idle_microseconds == 2_500_000
    states = [
        (s.input_name, s.output_name, s.data_type, list(s.dims))
        for s in config.sequence_batching.state
    ]
    assert states == [
        ("h_in", "h_out", kpb.TYPE_FP32, [1, H]),
        ("n_in", "n_out", kpb.TYPE_INT64, []),
    ]
    assert list(config.input[0].dims) == [-1, F]
    assert config.max_batch_size == 64
    whole = conv.model_config_response(
        _meta(streaming=False), max_batch_size=8, idle_ttl_s=0
    ).config
    assert whole.WhichOneof("scheduling_choice") == "dynamic_batching"


def test_repository_index_lists_versions_and_filters_ready() -> None:
    models = [_info(), ModelInfo("broken", [1], 1, "gru", True, False)]
    index = conv.repository_index(models, ready_only=False)
    assert [(m.name, m.version, m.state) for m in index.models] == [
        ("m", "1", "READY"),
        ("m", "2", "READY"),
        ("broken", "1", "UNAVAILABLE"),
    ]
    assert [m.name for m in conv.repository_index(models, ready_only=True).models] == ["m", "m"]


def test_statistics_counters() -> None:
    counters = conv.ModelCounters()
    counters.record(ok=True, batch=3, elapsed_ns=100)
    counters.record(ok=False, batch=1, elapsed_ns=7)
    stats = conv.model_statistics("m", 2, counters)
    assert (stats.inference_count, stats.execution_count) == (3, 1)
    assert (stats.inference_stats.success.count, stats.inference_stats.success.ns) == (1, 100)
    assert (stats.inference_stats.fail.count, stats.inference_stats.fail.ns) == (1, 7)
    assert stats.last_inference > 0
