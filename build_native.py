"""Compile the server's hot path with mypyc (`make native`; see server/rnnserve_server/compiled.py).

    python build_native.py [--require]

Compiles `compiled.MODULES` with the project's mypy configuration into C extensions placed beside
their sources (C files and objects go to build/native/), then records the sources' digests, so
that an edit made afterwards falls back to pure Python instead of running stale code.

Needs a C compiler and Python's headers. Without them (or if mypyc fails), the extensions of an
earlier build are removed, the server runs pure Python, and this exits 0 with a warning, unless
`--require` is given (CI, images): then it exits 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BUILD_DIR = ROOT / "build" / "native"
# This checkout's package, even where an installed copy would shadow it (an image's build stage).
sys.path.insert(0, str(ROOT / "server"))


def remove_extensions() -> None:
    """Remove every compiled module and the manifest: the package is pure Python again."""
    from rnnserve_server import compiled

    for module in compiled.MODULES:
        for path in compiled.extension_files(module):
            path.unlink()
    group_lib = compiled.GROUP.rsplit(".", 1)[1] + "__mypyc"  # the shared extension's name
    for path in compiled.PACKAGE_DIR.glob(group_lib + ".*"):
        path.unlink()
    compiled.MANIFEST.unlink(missing_ok=True)


def compile_hot_path() -> None:
    """Run mypyc and setuptools' build_ext; copy the extensions into the package."""
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped]

    from rnnserve_server import compiled

    sources = [str(compiled.source_path(m).relative_to(ROOT)) for m in compiled.MODULES]
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    os.chdir(ROOT)  # mypyc writes its C files relative to the working directory
    try:
        extensions = mypycify(
            ["--config-file", "pyproject.toml", *sources],
            group_name=compiled.GROUP,
            target_dir=str(BUILD_DIR / "c"),
            opt_level="3",
        )
        with tempfile.TemporaryDirectory(dir=BUILD_DIR) as lib:
            dist = Distribution({"name": "rnnserve-hotpath", "ext_modules": extensions})
            build_ext = dist.get_command_obj("build_ext")
            build_ext.build_lib = lib
            build_ext.build_temp = str(BUILD_DIR / "obj")
            build_ext.parallel = os.cpu_count() or 1
            dist.run_command("build_ext")
            built = Path(lib) / compiled.PACKAGE
            for so in built.rglob("*"):
                if so.is_file():
                    target = compiled.PACKAGE_DIR / so.relative_to(built)
                    shutil.copy2(so, target)
    finally:
        os.chdir(cwd)
    compiled.write_manifest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--require", action="store_true", help="fail (exit 1) when the hot path cannot be compiled"
    )
    args = parser.parse_args()
    # The previous build goes first: should this one fail, nothing stale is left behind.
    os.environ["RNNSERVE_PURE_PYTHON"] = "1"  # import the package's code from source here
    remove_extensions()
    try:
        compile_hot_path()
    except (Exception, SystemExit) as exc:  # setuptools reports compiler errors as SystemExit
        remove_extensions()
        print(f"build_native: not compiled, the server runs pure Python: {exc}", file=sys.stderr)
        return 1 if args.require else 0
    print("build_native: hot path compiled with mypyc", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
