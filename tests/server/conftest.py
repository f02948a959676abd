"""Shared fixtures of the server tests: the model repository under test and real servers.

The repository is the shipped `model_repository/` as soon as it holds models; until then (and
whenever it is empty) a tiny repository built with onnx.helper (fixtures.py) stands in.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_helpers import ROOT, ServerProcess, Stubs, models_in

from rnnserve_proto import model_repository_pb2 as mr

SHIPPED = ROOT / "model_repository"


@functools.cache
def fixture_repository_path() -> Path:
    """The tiny onnx.helper repository (fixtures.py), built once per test run."""
    from fixtures import build_repository

    root = Path(tempfile.mkdtemp(prefix="rnnserve-repo-"))
    atexit.register(shutil.rmtree, root, True)
    return build_repository(root)


@functools.cache
def repository_path() -> Path:
    """The shipped repository once it has models, else the fixture repository."""
    if any(SHIPPED.glob("*/*/metadata.json")):
        return SHIPPED
    return fixture_repository_path()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`streaming_name` / `whole_name` parametrize over every such model in the repository."""
    catalog = models_in(repository_path())
    if "streaming_name" in metafunc.fixturenames:
        names = sorted(n for n, m in catalog.items() if m.streaming)
        metafunc.parametrize("streaming_name", names)
    if "whole_name" in metafunc.fixturenames:
        names = sorted(n for n, m in catalog.items() if not m.streaming)
        metafunc.parametrize("whole_name", names)


@pytest.fixture(scope="session")
def repository() -> Path:
    return repository_path()


@pytest.fixture(scope="session")
def fixture_repository() -> Path:
    return fixture_repository_path()


@pytest.fixture(scope="session")
def catalog(repository: Path) -> dict[str, mr.ModelMetadata]:
    """Latest version of every model in the repository under test."""
    return models_in(repository)


@pytest.fixture(scope="session")
def streaming_model(catalog: dict[str, mr.ModelMetadata]) -> mr.ModelMetadata:
    """One streaming model for tests that need any (prefers a float-state RNN)."""
    streaming = [m for m in catalog.values() if m.streaming]
    assert streaming, "the repository under test has no streaming model"
    streaming.sort(key=lambda m: (not any(s.dtype == mr.FLOAT32 for s in m.states), m.name))
    return streaming[0]


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server shared by the tests that only need default settings (unique session ids!)."""
    proc = ServerProcess(repository, tmp_path_factory.mktemp("server")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def fixture_stubs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stubs]:
    """Stubs of a server on the fixture repository, whose models have properties the shipped ones
    may lack (a non-autoregressive streaming model, a scalar int64 state)."""
    if repository_path() == fixture_repository_path():
        yield request.getfixturevalue("stubs")
        return
    proc = ServerProcess(fixture_repository_path(), tmp_path_factory.mktemp("fixture-server"))
    proc.start()
    try:
        with proc.channel() as ch:
            yield Stubs(ch)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="session")
def stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
def make_server(repository: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start extra servers with their own flags; all are stopped after the test."""
    started: list[ServerProcess] = []

    def make(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(
            repository, tmp_path / f"server{len(started)}", args=args, env=env or {}
        )
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()
