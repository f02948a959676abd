"""The main job (`make demo` runs `rnnserve-client demo`): starts its own server on the shipped
repository, streams the sunspot series with predictions printed as they arrive, summarises and
stops the server with SIGTERM -- with CI=true and no TTY."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from client_support import REPOSITORY

from rnnserve_client import Client, _series
from rnnserve_client._local import LocalServer


def test_demo_end_to_end(server: LocalServer) -> None:
    env = {**os.environ, "CI": "true", "TERM": "dumb"}
    res = subprocess.run(
        [
            str(Path(sys.executable).with_name("rnnserve-client")),
            "demo",
            "--model-repository",
            str(REPOSITORY),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=180,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout
    labels, values = _series.sunspots()
    assert labels[0] == "1700"
    assert labels[-1] == "2008"
    assert len(values) == 309

    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+\d{4}\s", line)]
    assert [r[0] for r in rows] == labels
    np.testing.assert_allclose([float(r[1]) for r in rows], values, atol=0.01)
    predicted = np.array([float(r[2]) for r in rows])

    model = re.search(r"through (\S+) \(", out)
    assert model, out[:500]
    with Client(server.target) as client:  # the same repository, served by the test server
        ref = client.predict(model[1], values)[:, 0]
    np.testing.assert_allclose(predicted, ref, atol=0.01, rtol=1e-3)

    summary = re.search(r"predictions in [\d.]+ s, RMSE ([\d.]+) vs persistence ([\d.]+)", out)
    assert summary, out[-1000:]
    rmse = float(np.sqrt(np.mean((ref[:-1] - values[1:]) ** 2)))
    persistence = float(np.sqrt(np.mean((values[:-1] - values[1:]) ** 2)))
    assert abs(float(summary[1]) - rmse) < 0.02
    assert abs(float(summary[2]) - persistence) < 0.01
    assert "server stopped with SIGTERM (exit status 0)" in out
