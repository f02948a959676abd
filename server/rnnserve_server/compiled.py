"""The hot path compiled to C with mypyc, and the guard that keeps a stale build from running.

Why: on a streamed ping-pong step the event loop spends most of rnnserve's own time in the
interpreter (about 25 small Python calls per step: batcher, lanes, store, reply ordering,
protobuf conversion). mypyc compiles exactly these modules, from the same type-annotated source,
into C extensions: 27k fewer instructions per step (-16% with ONNX Runtime's share, counted by
`bench.stream_path --instructions`). Nothing else changes; the pure Python modules stay the
reference and the fallback.

`build_native.py` (`make native`) compiles `MODULES` into extension modules beside their
sources and records each source's SHA-256 in `MANIFEST`. At import, `activate()` (run by the
package's `__init__`) decides which code runs:

- compiled, when every compiled module's source still matches what was compiled;
- pure Python when nothing was compiled (no C compiler, or a plain source checkout), when
  `RNNSERVE_PURE_PYTHON` is set, or when any source changed since the build (an edit without
  `make native`): then *every* module of `MODULES` is loaded from its `.py`. All or none,
  because compiled modules call each other's functions and classes directly, in C; mixing an
  edited Python module with the compiled rest would run two versions of one class.

This module is never compiled itself.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGE = "rnnserve_server"
# What runs per streamed step, and what it calls. Not the servicers (mypyc cannot compile a class
# deriving from grpc's generated, interpreted servicer bases), nor errors.py (its subclasses'
# class-level `code` defaults are not supported by compiled classes) or runtime.py (tests
# subclass its ModelRunner; it runs once per batch, not per step).
MODULES: tuple[str, ...] = tuple(
    f"{PACKAGE}.{name}"
    for name in (
        "batcher",
        "lanes",
        "loop_metrics",
        "outcome",
        "service",
        "store",
        "types",
        "validation",
        "grpc_api.convert",
        "grpc_api.drain",
        "grpc_api.kserve_convert",
        "grpc_api.kserve_stream",
        "grpc_api.recording",
        "grpc_api.status",
        "grpc_api.stream_steps",
        "grpc_api.stream_tasks",
    )
)
# mypyc puts the code of all MODULES in one shared extension, `<GROUP>__mypyc`.
GROUP = f"{PACKAGE}.hotpath"
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "compiled.json"
PURE_PYTHON_ENV = "RNNSERVE_PURE_PYTHON"


@dataclass(frozen=True)
class HotPath:
    compiled: bool
    reason: str  # why it is (not) compiled, for the startup log

    @property
    def label(self) -> str:
        return "mypyc" if self.compiled else "python"


def source_path(module: str) -> Path:
    """The .py file of one of MODULES."""
    return PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension_files(module: str) -> list[Path]:
    """The compiled extension files present for `module` (any Python ABI)."""
    source = source_path(module)
    return [
        p
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if (p := source.with_suffix(suffix)).is_file()
    ]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest() -> None:
    """Record the sources just compiled (build_native.py, after a successful build)."""
    sources = {m: digest(source_path(m)) for m in MODULES}
    MANIFEST.write_text(json.dumps({"modules": sources}, indent=1, sort_keys=True) + "\n")


def _stale() -> str | None:
    """Why the compiled modules must not run (None: they match their sources)."""
    try:
        recorded = json.loads(MANIFEST.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST.name} is missing or unreadable; run `make native`"
    for module in MODULES:
        if not extension_files(module):
            return f"{module} was not compiled; run `make native`"
        if recorded.get(module) != digest(source_path(module)):
            return f"{source_path(module).name} changed since it was compiled; run `make native`"
    return None


class _FromSource(importlib.abc.MetaPathFinder):
    """Loads MODULES from their .py files, ahead of the extension beside them."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


_state: HotPath | None = None


def activate() -> HotPath:
    """Decide, once per process and before any of MODULES is imported, which code runs."""
    global _state
    if _state is not None:
        return _state
    built = any(extension_files(m) for m in MODULES)
    if not built:
        _state = HotPath(False, "not compiled (`make native` compiles it with mypyc)")
        return _state
    switch = os.environ.get(PURE_PYTHON_ENV, "").strip().lower()
    pure = switch not in ("", "0", "false", "no", "off")
    why = f"{PURE_PYTHON_ENV}={switch} is set" if pure else _stale()
    if why is None:
        _state = HotPath(True, f"{len(MODULES)} modules compiled with mypyc")
    else:
        sys.meta_path.insert(0, _FromSource())
        _state = HotPath(False, why)
    return _state


def hot_path() -> HotPath:
    """What `activate()` decided."""
    return activate()
