"""The guard of the mypyc-compiled hot path (server/rnnserve_server/compiled.py): compiled code
runs only while every compiled module matches its source, and then all of it; otherwise every
one of those modules comes from its .py. Each case imports a copy of the built package in a
fresh interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnserve_server import compiled

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not all(compiled.extension_files(m) for m in compiled.MODULES),
    reason="the hot path is not compiled here (make native)",
)

PROBE = """
import importlib, json
from rnnserve_server import compiled
files = {m: importlib.import_module(m).__file__ for m in compiled.MODULES}
state = compiled.hot_path()
print(json.dumps({"files": files, "compiled": state.compiled, "reason": state.reason}))
"""


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the built package (sources, extensions, manifest) to import and edit."""
    shutil.copytree(
        compiled.PACKAGE_DIR,
        tmp_path / compiled.PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return tmp_path


def probe(root: Path, **env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if k != compiled.PURE_PYTHON_ENV}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([str(root), str(REPO / "proto")])
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=environ,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def suffixes(result: dict[str, object]) -> set[str]:
    files = result["files"]
    assert isinstance(files, dict)
    return {Path(f).suffix for f in files.values()}


def test_a_fresh_build_runs_every_module_compiled(package_copy: Path) -> None:
    for switched_off in ({}, {compiled.PURE_PYTHON_ENV: "0"}, {compiled.PURE_PYTHON_ENV: "false"}):
        result = probe(package_copy, **switched_off)
        assert result["compiled"] is True
        assert suffixes(result) == {".so"}


def test_an_edited_source_puts_every_module_back_on_python(package_copy: Path) -> None:
    lanes = package_copy / compiled.PACKAGE / "lanes.py"
    lanes.write_text(lanes.read_text() + "\n# edited after the build\n")
    result = probe(package_copy)
    assert result["compiled"] is False
    assert "lanes.py changed since it was compiled" in str(result["reason"])
    assert suffixes(result) == {".py"}  # all of them, not only the edited one


def test_a_missing_manifest_or_the_environment_switch_means_python(package_copy: Path) -> None:
    switched = probe(package_copy, **{compiled.PURE_PYTHON_ENV: "1"})
    assert switched["compiled"] is False
    assert suffixes(switched) == {".py"}
    (package_copy / compiled.PACKAGE / compiled.MANIFEST.name).unlink()
    unrecorded = probe(package_copy)
    assert unrecorded["compiled"] is False
    assert "missing" in str(unrecorded["reason"])
    assert suffixes(unrecorded) == {".py"}
