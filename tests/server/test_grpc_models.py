"""Models admin, standard health checking and server reflection over real gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from fixtures import load_metadata
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import ServerProcess, Stubs
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb


def test_list_models_names_every_model_and_version(
    stubs: Stubs, repository: Path, catalog: dict[str, mr.ModelMetadata]
) -> None:
    listed = {m.name: m for m in stubs.models.ListModels(pb.ListModelsRequest()).models}
    assert set(listed) == set(catalog)
    for name, meta in catalog.items():
        info = listed[name]
        on_disk = sorted(int(p.name) for p in (repository / name).iterdir() if p.is_dir())
        assert list(info.versions) == on_disk
        assert info.latest_version == meta.version == on_disk[-1]
        assert (info.variant, info.streaming, info.ready) == (meta.variant, meta.streaming, True)


def test_model_metadata_is_the_repository_metadata(
    stubs: Stubs, repository: Path, catalog: dict[str, mr.ModelMetadata]
) -> None:
    for name, meta in catalog.items():
        got = stubs.models.GetModelMetadata(pb.ModelRef(model=name))
        assert got == meta
        first = min(int(p.name) for p in (repository / name).iterdir() if p.is_dir())
        got = stubs.models.GetModelMetadata(pb.ModelRef(model=name, model_version=first))
        assert got == load_metadata(repository, name, first)
    with pytest.raises(grpc.RpcError) as info:
        stubs.models.GetModelMetadata(pb.ModelRef(model="no-such-model"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stubs.models.GetModelMetadata(pb.ModelRef(model=next(iter(catalog)), model_version=999))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_overall_per_service_and_per_model(
    channel: grpc.Channel, catalog: dict[str, mr.ModelMetadata]
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ["", "rnnserve.v1.Inference", "rnnserve.v1.Sessions", *catalog]:
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == serving
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service(server: ServerProcess, channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "rnnserve.v1.Inference",
        "rnnserve.v1.Sessions",
        "rnnserve.v1.Models",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    # grpcurl needs the file descriptors too.
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="rnnserve.v1.Inference")
    [reply] = list(stub.ServerReflectionInfo(iter([request])))
    assert reply.file_descriptor_response.file_descriptor_proto
