"""The Sessions servicer: session administration, export and import."""

from __future__ import annotations

from time import perf_counter
from typing import Any, NoReturn

import grpc
from typing_extensions import override

from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_proto import rnnserve_pb2_grpc as pb_grpc
from rnnserve_server.errors import ErrorCode, InvalidArgument
from rnnserve_server.grpc_api import convert
from rnnserve_server.grpc_api.recording import Recorder
from rnnserve_server.grpc_api.status import abort, as_service_error, code_name
from rnnserve_server.service import InferenceService

Context = grpc.aio.ServicerContext[Any, Any]
_OK = code_name(ErrorCode.OK)


class SessionsServicer(pb_grpc.SessionsServicer):
    def __init__(self, service: InferenceService, recorder: Recorder) -> None:
        self._service = service
        self._rec = recorder

    async def _fail(
        self, context: Context, method: str, started: float, exc: Exception
    ) -> NoReturn:
        error = as_service_error(exc)
        self._rec.request("", method, code_name(error.code), perf_counter() - started)
        await abort(context, error)

    @override
    async def GetSession(self, request: pb.SessionRef, context: Context) -> pb.SessionInfo:
        started = perf_counter()
        try:
            info = self._service.get_session(request.session_id)
        except Exception as exc:
            await self._fail(context, "get_session", started, exc)
        self._rec.request(info.model, "get_session", _OK, perf_counter() - started)
        return convert.session_info(info)

    @override
    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        started = perf_counter()
        try:
            if request.limit < 0:
                raise InvalidArgument(f"limit must be >= 0, got {request.limit}")
            infos, total = self._service.list_sessions(request.model or None, request.limit)
        except Exception as exc:
            await self._fail(context, "list_sessions", started, exc)
        self._rec.request(request.model, "list_sessions", _OK, perf_counter() - started)
        return pb.ListSessionsResponse(
            sessions=[convert.session_info(i) for i in infos], total=total
        )

    @override
    async def ResetSession(self, request: pb.SessionRef, context: Context) -> pb.SessionInfo:
        started = perf_counter()
        try:
            info = await self._service.reset_session(request.session_id)
        except Exception as exc:
            await self._fail(context, "reset_session", started, exc)
        self._rec.request(info.model, "reset_session", _OK, perf_counter() - started)
        return convert.session_info(info)

    @override
    async def CloseSession(
        self, request: pb.SessionRef, context: Context
    ) -> pb.CloseSessionResponse:
        started = perf_counter()
        try:
            info = await self._service.close_session(request.session_id)
        except Exception as exc:
            await self._fail(context, "close_session", started, exc)
        self._rec.request(info.model, "close_session", _OK, perf_counter() - started)
        return pb.CloseSessionResponse(session=convert.session_info(info))

    @override
    async def ExportSession(self, request: pb.SessionRef, context: Context) -> pb.SessionSnapshot:
        started = perf_counter()
        try:
            snapshot = convert.snapshot_proto(
                await self._service.export_session(request.session_id)
            )
            model = snapshot.session.model
        except Exception as exc:
            await self._fail(context, "export_session", started, exc)
        self._rec.request(model, "export_session", _OK, perf_counter() - started)
        return snapshot

    @override
    async def ImportSession(
        self, request: pb.ImportSessionRequest, context: Context
    ) -> pb.SessionInfo:
        started = perf_counter()
        try:
            snapshot = convert.snapshot_from_proto(request.snapshot)
            info = await self._service.import_session(snapshot, overwrite=request.overwrite)
        except Exception as exc:
            await self._fail(context, "import_session", started, exc)
        self._rec.request(info.model, "import_session", _OK, perf_counter() - started)
        return convert.session_info(info)
