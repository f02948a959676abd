"""The public surface is pinned, and importing the client pulls in no server or training code."""

from __future__ import annotations

import json
import subprocess
import sys

import rnnserve_client

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(rnnserve_client.__all__) == EXPECTED
    assert len(rnnserve_client.__all__) == len(EXPECTED)  # no duplicates
    for name in rnnserve_client.__all__:
        assert hasattr(rnnserve_client, name), name
    public = {n for n in dir(rnnserve_client) if not n.startswith("_")}
    # Submodules are importable by name, but every other public attribute must be in __all__.
    modules = {"aio", "client", "session", "cli", "demo"}
    assert public - modules <= EXPECTED


def test_public_members_are_documented() -> None:
    for name in rnnserve_client.__all__:
        obj = getattr(rnnserve_client, name)
        if isinstance(obj, type) and not issubclass(obj, rnnserve_client.RnnServeError):
            assert obj.__doc__, name


def test_import_pulls_in_no_heavy_or_server_packages() -> None:
    code = (
        "import json, sys; import rnnserve_client; "
        "from rnnserve_client import Client, AsyncClient; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    modules = set(json.loads(out))
    assert "rnnserve_client.client" in modules  # the probe really imported the client
    assert "grpc" in modules
    assert "numpy" in modules
    for banned in (
        "torch",
        "onnxruntime",
        "onnx",
        "rnnserve_server",
        "rnnserve_models",
        "matplotlib",
        "typer",
        "statsmodels",
        "pandas",
    ):
        assert banned not in modules, banned
