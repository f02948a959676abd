"""A real `rnnserve serve` on the shipped model repository, started once for the client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_support import REPOSITORY, Model

from rnnserve_client import Client
from rnnserve_client._local import LocalServer

PREFERRED = ("sunspots_gru", "sunspots_lstm")


@pytest.fixture(scope="session")
def server() -> Iterator[LocalServer]:
    with LocalServer(REPOSITORY, extra_args=["--log-format", "text"]) as srv:
        yield srv


@pytest.fixture
def client(server: LocalServer) -> Iterator[Client]:
    with Client(server.target, timeout=20.0) as c:
        yield c


@pytest.fixture(scope="session")
def model(server: LocalServer) -> Model:
    """A streaming, autoregressive shipped model (a sunspots one when there is one)."""
    with Client(server.target) as c:
        infos = {m.name: m for m in c.list_models()}
        names = [n for n in PREFERRED if n in infos] + sorted(infos)
        for name in names:
            meta = c.model_metadata(name)
            if meta.streaming and meta.autoregressive:
                return Model(name, meta.input_features, meta.output_features, True)
    pytest.fail(f"no streaming autoregressive model in {REPOSITORY}: {sorted(infos)}")


@pytest.fixture(scope="session")
def whole_sequence_model(server: LocalServer) -> Model:
    with Client(server.target) as c:
        for m in c.list_models():
            if not m.streaming:
                meta = c.model_metadata(m.name)
                return Model(m.name, meta.input_features, meta.output_features, False)
    pytest.fail(f"no whole-sequence model in {REPOSITORY}")
