"""Our kserve.proto against tritonclient's generated descriptors: same RPCs, and every field we
declare has the number, type and cardinality Triton's has, so the two are the same on the wire."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton

from rnnserve_proto import kserve_pb2 as kpb

OURS = kpb.DESCRIPTOR.package + "."
THEIRS = "inference."


def _relative(full_name: str, prefix: str) -> str:
    assert full_name.startswith(prefix), full_name
    return full_name[len(prefix) :]


def _triton_message(relative: str) -> Descriptor:
    for module in (triton, triton_config):
        try:
            return module.DESCRIPTOR.pool.FindMessageTypeByName(THEIRS + relative)
        except KeyError:
            continue
    raise KeyError(relative)


def _walk(message: Descriptor) -> list[Descriptor]:
    found = [message]
    for nested in message.nested_types:
        found.extend(_walk(nested))
    return found


OUR_MESSAGES = [m for top in kpb.DESCRIPTOR.message_types_by_name.values() for m in _walk(top)]


def _type_name(field: FieldDescriptor, prefix: str) -> str:
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields
            return f"map<{key.type},{_type_name(value, prefix)}>"
        return _relative(field.message_type.full_name, prefix)
    if field.enum_type is not None:
        return _relative(field.enum_type.full_name, prefix)
    return str(field.type)


@pytest.mark.parametrize("message", OUR_MESSAGES, ids=lambda m: m.full_name)
def test_fields_match_triton(message: Descriptor) -> None:
    theirs = _triton_message(_relative(message.full_name, OURS))
    by_number = {f.number: f for f in theirs.fields}
    for field in message.fields:
        other = by_number.get(field.number)
        assert other is not None, f"{message.full_name}.{field.name}: no field {field.number}"
        assert (field.name, field.is_repeated, _type_name(field, OURS)) == (
            other.name,
            other.is_repeated,
            _type_name(other, THEIRS),
        )
        if field.containing_oneof is not None:
            assert other.containing_oneof is not None
            assert field.containing_oneof.name == other.containing_oneof.name


def test_messages_tritonclient_reads_are_complete() -> None:
    """The messages tritonclient builds or parses in full have all of Triton's fields."""
    complete = [
        "ModelInferRequest",
        "ModelInferResponse",
        "ModelStreamInferResponse",
        "InferParameter",
        "InferTensorContents",
        "ModelMetadataResponse",
        "ServerMetadataResponse",
        "RepositoryIndexResponse",
        "ModelStatistics",
    ]
    for name in complete:
        ours = {
            f.number for m in _walk(kpb.DESCRIPTOR.message_types_by_name[name]) for f in m.fields
        }
        theirs = {f.number for m in _walk(_triton_message(name)) for f in m.fields}
        assert ours == theirs, name


def test_enum_values_match() -> None:
    ours: EnumDescriptor = kpb.DESCRIPTOR.enum_types_by_name["DataType"]
    theirs = triton_config.DESCRIPTOR.enum_types_by_name["DataType"]
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in theirs.values}


def test_every_triton_rpc_is_declared_with_the_same_signature() -> None:
    ours = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert [m.name for m in ours.methods] == [m.name for m in theirs.methods]
    for mine in ours.methods:
        other = theirs.methods_by_name[mine.name]
        assert _relative(mine.input_type.full_name, OURS) == other.input_type.name
        assert _relative(mine.output_type.full_name, OURS) == other.output_type.name
        assert (mine.client_streaming, mine.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )


def test_request_round_trips_through_both_definitions() -> None:
    request = triton.ModelInferRequest(model_name="gru", model_version="2", id="r1")
    request.parameters["sequence_id"].int64_param = 42
    request.parameters["sequence_start"].bool_param = True
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2, 3])
    tensor.contents.fp64_contents.extend([1.5, 2.5])
    request.outputs.add(name="h_out")
    request.raw_input_contents.append(np.arange(6, dtype="<f4").tobytes())
    ours = kpb.ModelInferRequest.FromString(request.SerializeToString())
    assert ours.parameters["sequence_id"].int64_param == 42
    assert ours.parameters["sequence_start"].bool_param is True
    assert list(ours.inputs[0].shape) == [1, 2, 3]
    assert list(ours.inputs[0].contents.fp64_contents) == [1.5, 2.5]
    assert ours.outputs[0].name == "h_out"
    back = triton.ModelInferRequest.FromString(ours.SerializeToString())
    assert back == request
