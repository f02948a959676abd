"""The Models servicer: what is loaded, and each model's metadata."""

from __future__ import annotations

from typing import Any

import grpc
from typing_extensions import override

from rnnserve_proto import model_repository_pb2 as repo_pb2
from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_proto import rnnserve_pb2_grpc as pb_grpc
from rnnserve_server.grpc_api import convert
from rnnserve_server.grpc_api.status import abort, as_service_error
from rnnserve_server.service import InferenceService

Context = grpc.aio.ServicerContext[Any, Any]


class ModelsServicer(pb_grpc.ModelsServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    @override
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        try:
            return convert.list_models_response(self._service.list_models())
        except Exception as exc:
            await abort(context, as_service_error(exc))

    @override
    async def GetModelMetadata(
        self, request: pb.ModelRef, context: Context
    ) -> repo_pb2.ModelMetadata:
        try:
            return self._service.model_metadata(
                request.model, convert.version_or_latest(request.model_version)
            )
        except Exception as exc:
            await abort(context, as_service_error(exc))
