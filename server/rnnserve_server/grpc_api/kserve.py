"""KServe v2 / Triton `inference.GRPCInferenceService` on rnnserve's service layer.

Thin: messages are converted by `kserve_convert`, work is done by `InferenceService`, errors are
mapped by `status`. A sequence id is the native session id (str(int) for integer ids), so a
sequence started here is an ordinary session of the native API and vice versa.

Registered with `add_to_server(KServeServicer(service, recorder, settings), server)`, which adds
the handlers under Triton's service name `inference.GRPCInferenceService` (our proto package
differs; see kserve.proto). RPCs the servicer does not define answer UNIMPLEMENTED with a
message that says so.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import numpy.typing as npt
from typing_extensions import override

from rnnserve_proto import kserve_pb2 as kpb
from rnnserve_proto import kserve_pb2_grpc as kpb_grpc
from rnnserve_proto import model_repository_pb2 as repo_pb2
from rnnserve_server.config import ServerSettings
from rnnserve_server.errors import ErrorCode, InvalidArgument, NotFound, RnnServeError
from rnnserve_server.grpc_api import kserve_convert as conv
from rnnserve_server.grpc_api.drain import EOF, StreamDrain, StreamReplies
from rnnserve_server.grpc_api.kserve_stream import METHOD, KServeSteps, explain, stream_error
from rnnserve_server.grpc_api.recording import Recorder
from rnnserve_server.grpc_api.status import abort, as_service_error, code_name
from rnnserve_server.grpc_api.stream_tasks import StreamTasks
from rnnserve_server.types import ModelInfo

if TYPE_CHECKING:  # the servicer only calls it; importing it here would drag in the runtime
    from rnnserve_server.service import InferenceService

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "rnnserve"
Context = grpc.aio.ServicerContext[Any, Any]
Output = tuple[str, str, npt.NDArray[np.generic]]
_OK = code_name(ErrorCode.OK)


@functools.cache
def _server_version() -> str:
    try:
        return metadata.version("rnnserve")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        service: InferenceService,
        recorder: Recorder | None = None,
        settings: ServerSettings | None = None,
    ) -> None:
        """`settings` (default: the service's) only feeds ModelConfig: max_batch_size and the
        sequence idle time."""
        settings = settings if settings is not None else service.settings
        self._service = service
        self._max_batch_size = settings.batcher.max_batch_size
        self._idle_ttl_s = settings.sessions.idle_ttl_s
        self._rec = recorder if recorder is not None else Recorder(None, ())
        self._counters: dict[tuple[str, int], conv.ModelCounters] = {}
        # Model metadata never changes while the server runs; the service hands out copies.
        self._metas: dict[tuple[str, int | None], repo_pb2.ModelMetadata] = {}
        self._drain = StreamDrain()

    def begin_drain(self) -> None:
        """Shutdown stage: not ready any more; open streams stop reading and end after answering
        what they took."""
        self._drain.begin()

    @property
    def draining(self) -> bool:
        return self._drain.draining

    # -- health and metadata ---------------------------------------------------------------------
    @override
    async def ServerLive(
        self, request: kpb.ServerLiveRequest, context: Context
    ) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    @override
    async def ServerReady(
        self, request: kpb.ServerReadyRequest, context: Context
    ) -> kpb.ServerReadyResponse:
        models = self._service.list_models()
        ready = not self._drain.draining and all(m.ready for m in models)
        return kpb.ServerReadyResponse(ready=ready)

    @override
    async def ServerMetadata(
        self, request: kpb.ServerMetadataRequest, context: Context
    ) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(
            name=SERVER_NAME, version=_server_version(), extensions=list(conv.EXTENSIONS)
        )

    @override
    async def ModelReady(
        self, request: kpb.ModelReadyRequest, context: Context
    ) -> kpb.ModelReadyResponse:
        try:
            info = self._model_info(request.name)
            version = conv.parse_version(request.version)
        except RnnServeError:
            return kpb.ModelReadyResponse(ready=False)  # Triton: not ready, not an error
        ready = info.ready and (version is None or version in info.versions)
        return kpb.ModelReadyResponse(ready=ready and not self._drain.draining)

    @override
    async def ModelMetadata(
        self, request: kpb.ModelMetadataRequest, context: Context
    ) -> kpb.ModelMetadataResponse:
        try:
            meta = self._metadata(request.name, request.version)
            return conv.model_metadata_response(meta, self._model_info(request.name))
        except Exception as exc:
            await abort(context, as_service_error(exc))

    @override
    async def ModelConfig(
        self, request: kpb.ModelConfigRequest, context: Context
    ) -> kpb.ModelConfigResponse:
        try:
            meta = self._metadata(request.name, request.version)
        except Exception as exc:
            await abort(context, as_service_error(exc))
        return conv.model_config_response(
            meta, max_batch_size=self._max_batch_size, idle_ttl_s=self._idle_ttl_s
        )

    @override
    async def RepositoryIndex(
        self, request: kpb.RepositoryIndexRequest, context: Context
    ) -> kpb.RepositoryIndexResponse:
        return conv.repository_index(self._service.list_models(), request.ready)

    @override
    async def ModelStatistics(
        self, request: kpb.ModelStatisticsRequest, context: Context
    ) -> kpb.ModelStatisticsResponse:
        try:
            infos = [self._model_info(request.name)] if request.name else self._all_models()
            version = conv.parse_version(request.version)
        except Exception as exc:
            await abort(context, as_service_error(exc))
        if version is not None and request.name and version not in infos[0].versions:
            await abort(context, NotFound(f"model {request.name!r} has no version {version}"))
        response = kpb.ModelStatisticsResponse()
        for info in infos:
            for v in info.versions:
                if version is None or v == version:
                    counters = self._counters.get((info.name, v), conv.ModelCounters())
                    response.model_stats.append(conv.model_statistics(info.name, v, counters))
        return response

    # -- inference -------------------------------------------------------------------------------
    @override
    async def ModelInfer(
        self, request: kpb.ModelInferRequest, context: Context
    ) -> kpb.ModelInferResponse:
        try:
            return await self._infer(request, "kserve_infer")
        except Exception as exc:
            await abort(context, as_service_error(exc))

    @override
    async def ModelStreamInfer(  # reader/writer API: a coroutine
        self, request_iterator: AsyncIterator[kpb.ModelInferRequest], context: Context
    ) -> None:
        """Plain sequence steps are submitted as they are read and answered from their batch
        (`kserve_stream`); any other request becomes a task. Either way work reaches the service
        in arrival order, so chunks of one sequence apply in order; replies go out as they
        finish, except that a reply never overtakes an earlier reply of its sequence (a task's
        reply takes its place among them as the request is read: `KServeSteps.sender`). A
        failed request gets a reply with `error_message` and the stream stays open."""
        replies: StreamReplies[kpb.ModelStreamInferResponse] = StreamReplies(context.write)
        steps = KServeSteps(self._service, self._rec, self._metadata, self._counter, replies.put)
        general: StreamTasks[kpb.ModelStreamInferResponse] = StreamTasks()

        async def read() -> None:
            read_next = context.read
            while (request := await read_next()) is not EOF:
                assert isinstance(request, kpb.ModelInferRequest)
                replies.expect()
                if general.unstarted:  # earlier requests' tasks submit first (arrival order)
                    await general.submitted()
                if steps.try_submit(request):
                    continue
                send = steps.sender(request)  # its place in its sequence's reply order
                general.start(functools.partial(self._stream_one, request), send)

        await self._drain.serve(context, read, replies)

    async def _stream_one(self, request: kpb.ModelInferRequest) -> kpb.ModelStreamInferResponse:
        try:
            response = await self._infer(request, METHOD)
        except Exception as exc:
            error = as_service_error(exc)
            return stream_error(request, error)
        return kpb.ModelStreamInferResponse(infer_response=response)

    async def _infer(self, request: kpb.ModelInferRequest, method: str) -> kpb.ModelInferResponse:
        started = perf_counter_ns()
        model = request.model_name
        batch = 0
        resolved: int | None = None
        try:
            meta = self._metadata(model, request.model_version)
            resolved = int(meta.version)
            sequence = conv.parse_sequence(request.parameters)
            x = conv.decode_input(request, meta)
            batch = int(x.shape[0])
            names = conv.requested_outputs(request, meta)
            if sequence.is_sequence:
                response = await self._infer_sequence(request, meta, sequence, x, names)
            else:
                response = await self._infer_stateless(request, meta, x, names)
        except Exception as exc:
            error = as_service_error(exc)
            elapsed = perf_counter_ns() - started
            self._rec.request(model, method, code_name(error.code), elapsed / 1e9)
            if resolved is not None:
                self._counter(model, resolved).record(ok=False, batch=batch, elapsed_ns=elapsed)
            raise error from exc
        elapsed = perf_counter_ns() - started
        steps = batch * int(x.shape[1])
        self._rec.request(model, method, _OK, elapsed / 1e9, steps)
        self._counter(model, int(response.model_version)).record(
            ok=True, batch=batch, elapsed_ns=elapsed
        )
        return response

    async def _infer_sequence(
        self,
        request: kpb.ModelInferRequest,
        meta: repo_pb2.ModelMetadata,
        sequence: conv.SequenceControl,
        x: npt.NDArray[np.float32],
        names: list[str],
    ) -> kpb.ModelInferResponse:
        if not meta.streaming:
            raise InvalidArgument(
                f"model {meta.name!r} is a whole-sequence model without state; send requests "
                "without sequence_id"
            )
        states = [n for n in names if n != meta.output_name]
        # A state output after an end: step without ending, read the state, then close.
        end_here = sequence.end and not states
        chunk = conv.sequence_step(request, meta, sequence, x, end=end_here)
        extra: dict[str, tuple[str, npt.NDArray[np.generic]]] = {}
        try:
            if states:  # read with the step, before any later request of the sequence runs
                out, snapshot = await self._service.step_and_export(chunk, close=sequence.end)
                extra = conv.state_outputs(snapshot, meta, states)
            else:
                out = await self._service.step(chunk)
        except RnnServeError as exc:
            raise explain(exc, chunk) from exc
        y = out.y[None]
        outputs: list[Output] = [
            conv.y_output(y, meta) if n == meta.output_name else (n, *extra[n]) for n in names
        ]
        return conv.infer_response(
            model=out.model,
            version=out.version,
            request_id=request.id,
            outputs=outputs,
            sequence=sequence,
            session_id=out.session_id,
        )

    async def _infer_stateless(
        self,
        request: kpb.ModelInferRequest,
        meta: repo_pb2.ModelMetadata,
        x: npt.NDArray[np.float32],
        names: list[str],
    ) -> kpb.ModelInferResponse:
        if names != [meta.output_name]:
            raise InvalidArgument(
                f"state outputs ({', '.join(n for n in names if n != meta.output_name)}) exist "
                "only for sequence requests; set sequence_id"
            )
        if x.shape[0] > self._max_batch_size:  # what ModelConfig.max_batch_size promises
            raise InvalidArgument(
                f"batch size {x.shape[0]} exceeds max_batch_size {self._max_batch_size} of "
                f"model {meta.name!r}"
            )
        y = await self._service.predict(meta.name, int(meta.version), x)
        return conv.infer_response(
            model=meta.name,
            version=int(meta.version),
            request_id=request.id,
            outputs=[conv.y_output(y, meta)],
        )

    # -- helpers ---------------------------------------------------------------------------------
    def _all_models(self) -> list[ModelInfo]:
        return list(self._service.list_models())

    def _model_info(self, name: str) -> ModelInfo:
        for info in self._service.list_models():
            if info.name == name:
                return info
        raise NotFound(f"unknown model {name!r}; loaded: {', '.join(self._service.model_names())}")

    def _metadata(self, name: str, version: str) -> repo_pb2.ModelMetadata:
        if not name:
            raise InvalidArgument("model name is empty")
        key = (name, conv.parse_version(version))
        meta = self._metas.get(key)
        if meta is None:
            meta = self._metas[key] = self._service.model_metadata(*key)
        return meta

    def _counter(self, model: str, version: int) -> conv.ModelCounters:
        key = (model, version)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = conv.ModelCounters()
        return counters


def _unimplemented(name: str) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handler(request: Any, context: Context) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"rnnserve does not implement {name} (models load at start-up; no shared memory, "
            "tracing or log-settings control; see docs/kserve.md)",
        )

    return handler


def _method_handlers(servicer: KServeServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """One handler per RPC of the proto's service, named as Triton names them."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    factories: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    for method in kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_cls = getattr(kpb, method.input_type.name)
        response_cls = getattr(kpb, method.output_type.name)
        factory = factories[(method.client_streaming, method.server_streaming)]
        implemented = method.name in vars(KServeServicer)
        handlers[method.name] = factory(
            getattr(servicer, method.name) if implemented else _unimplemented(method.name),
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
    return handlers


def add_to_server(servicer: KServeServicer, server: grpc.aio.Server) -> None:
    """Serve `inference.GRPCInferenceService` on `server` (before it starts); the shape of the
    generated `add_*Servicer_to_server` functions, so app.py's ServicerSpec takes it."""
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, _method_handlers(servicer)),)
    )
