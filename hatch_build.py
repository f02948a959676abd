"""Build hook: generate the protobuf and gRPC modules from proto/rnnserve_proto/*.proto.

Generated code is never committed or edited; every build (wheel, editable install, `make proto`)
produces it from the .proto files with grpcio-tools. A wheel also packages the compiled hot path
when `build_native.py` built it first (git-ignored files, so they must be declared too).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:  # hatchling is present only inside a build; `python hatch_build.py` works without it.
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # pragma: no cover
    BuildHookInterface = object  # type: ignore[assignment,misc]

PROTO_ROOT = "proto"
PROTO_PACKAGE = "rnnserve_proto"


def generate(root: Path) -> list[str]:
    """Run protoc on every .proto of the package; return the generated files, relative to root."""
    import importlib.resources

    from grpc_tools import protoc

    proto_root = root / PROTO_ROOT
    sources = sorted((proto_root / PROTO_PACKAGE).glob("*.proto"))
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={proto_root}",
        f"--pyi_out={proto_root}",
        f"--grpc_python_out={proto_root}",
        *(str(s.relative_to(proto_root)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {[s.name for s in sources]}")
    generated = sorted((proto_root / PROTO_PACKAGE).glob("*_pb2*.py*"))
    return [str(p.relative_to(root)) for p in generated]


class ProtoBuildHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        # Generated files are git-ignored, so they must be declared as artifacts to be packaged.
        root = Path(self.root)
        build_data["artifacts"].extend(generate(root))
        build_data["artifacts"].extend(compiled_hot_path(root))


def compiled_hot_path(root: Path) -> list[str]:
    """The extensions and manifest build_native.py left in the server package, if any."""
    package = root / "server" / "rnnserve_server"
    files = [*package.rglob("*.so"), *package.rglob("*.pyd"), *package.glob("compiled.json")]
    return [str(p.relative_to(root)) for p in sorted(files)]


if __name__ == "__main__":
    print("\n".join(generate(Path(__file__).resolve().parent)), file=sys.stderr)
