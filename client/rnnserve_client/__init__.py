"""Python client for rnnserve (needs only grpcio and numpy).

    from rnnserve_client import Client

    with Client("localhost:8001") as client:
        with client.session("sunspots_gru") as session:
            for y in session.stream(chunks):
                ...

`AsyncClient` is the asyncio twin. Errors are `RnnServeError` subclasses keyed on the gRPC
status (see `rnnserve_client._errors`).
"""

from rnnserve_client._errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ReplyLost,
    ResourceExhausted,
    RnnServeError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from rnnserve_client._types import FrameResult, ModelInfo, SessionInfo, SessionSnapshot
from rnnserve_client.aio import AsyncClient
from rnnserve_client.client import Client
from rnnserve_client.session import AsyncSession, Session

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncSession",
    "Cancelled",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FrameResult",
    "Internal",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ReplyLost",
    "ResourceExhausted",
    "RnnServeError",
    "Session",
    "SessionInfo",
    "SessionSnapshot",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "__version__",
]
