"""Fixtures of the KServe tests: the repository under test, a real server with the KServe front
end (kserve_harness.py) and a stock tritonclient connected to it.

The repository is the shipped `model_repository/` when it holds models, otherwise the tiny
repository of tests/server/fixtures.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from kserve_harness import SHIPPED, Server, ServerThread, models_in, server_settings


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if models_in(SHIPPED):
        return SHIPPED
    from fixtures import build_repository

    return build_repository(tmp_path_factory.mktemp("kserve-repo"))


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[Server]:
    settings = server_settings(repository)
    runner = ServerThread(settings)
    port = runner.start()
    url = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(url)
    try:
        yield Server(url, repository, models_in(repository), channel)
    finally:
        channel.close()
        runner.stop()


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url) as c:
        yield c
