"""The README's Python examples run unchanged (bar the address) against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnserve_client._local import LocalServer

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples() -> None:
    # sync, asyncio and tritonclient: if one goes missing, the README lost a promised example.
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, server: LocalServer) -> None:
    code = BLOCKS[index].replace("localhost:8001", server.target)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"README example {index} failed:\n{code}\n{done.stderr}"
    assert done.stdout.strip(), f"README example {index} printed nothing"
