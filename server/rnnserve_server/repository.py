"""Read a Triton-style model repository: `<root>/<name>/<version>/{metadata.json, model.onnx}`.

Only metadata is read here (protobuf JSON, unknown fields rejected); ONNX Runtime sessions are
created by `runtime.py`. Every version directory found is loaded; `version=None` means the latest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from rnnserve_proto import model_repository_pb2 as mr

log = logging.getLogger("rnnserve.repository")


class RepositoryError(Exception):
    """The repository is missing, empty or malformed (a startup error, not a client error)."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One `<name>/<version>` directory: its metadata and the path of its ONNX file."""

    metadata: mr.ModelMetadata
    onnx_path: Path

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return int(self.metadata.version)


def read_metadata(path: Path) -> mr.ModelMetadata:
    try:
        return json_format.Parse(path.read_text(encoding="utf-8"), mr.ModelMetadata())
    except (OSError, json_format.ParseError) as exc:
        raise RepositoryError(f"{path}: cannot read model metadata: {exc}") from exc


def _check(meta: mr.ModelMetadata, vdir: Path) -> None:
    where = f"{vdir}/metadata.json"
    if meta.name != vdir.parent.name:
        raise RepositoryError(f"{where}: name {meta.name!r} differs from its folder")
    if meta.version != int(vdir.name):
        raise RepositoryError(f"{where}: version {meta.version} differs from its folder")
    if meta.input_features < 1 or meta.output_features < 1:
        raise RepositoryError(f"{where}: input_features and output_features must be >= 1")
    if meta.streaming and not meta.states:
        raise RepositoryError(f"{where}: a streaming model needs at least one state tensor")
    if not meta.streaming and meta.states:
        raise RepositoryError(f"{where}: a whole-sequence model must not declare state tensors")
    if meta.autoregressive and meta.input_features != meta.output_features:
        raise RepositoryError(f"{where}: autoregressive needs input_features == output_features")
    for st in meta.states:
        if st.dtype not in (mr.FLOAT32, mr.INT64):
            raise RepositoryError(f"{where}: state {st.name!r} has no dtype")
        if any(d < 1 for d in st.shape):
            raise RepositoryError(f"{where}: state {st.name!r} has a non-positive dimension")
    norm = meta.normalization
    for label, mean, std, n in (
        ("input", norm.input_mean, norm.input_std, meta.input_features),
        ("output", norm.output_mean, norm.output_std, meta.output_features),
    ):
        if (mean or std) and not (len(mean) == len(std) == n):
            raise RepositoryError(f"{where}: {label} normalisation must have {n} means and stds")
        if any(s == 0 for s in std):
            raise RepositoryError(f"{where}: {label} normalisation has a zero std")


def scan(root: Path, models: list[str] | None = None) -> dict[str, dict[int, ModelVersion]]:
    """Every model (or the named ones) with every version directory holding a metadata.json.

    Returns name -> {version -> ModelVersion}. Raises RepositoryError for a missing root, a named
    model that is absent, a model without versions, or malformed metadata.
    """
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a directory")
    wanted = set(models or [])
    found: dict[str, dict[int, ModelVersion]] = {}
    for mdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted and mdir.name not in wanted:
            continue
        versions: dict[int, ModelVersion] = {}
        for vdir in mdir.iterdir():
            if not (vdir.is_dir() and vdir.name.isdigit() and (vdir / "metadata.json").is_file()):
                continue
            meta = read_metadata(vdir / "metadata.json")
            _check(meta, vdir)
            onnx_path = vdir / (meta.onnx_file or "model.onnx")
            if not onnx_path.is_file():
                raise RepositoryError(f"{vdir}: {onnx_path.name} is missing")
            versions[meta.version] = ModelVersion(meta, onnx_path)
        if not versions:
            log.warning("model folder %s has no version with a metadata.json; skipped", mdir)
            continue
        found[mdir.name] = dict(sorted(versions.items()))
    missing = wanted - found.keys()
    if missing:
        raise RepositoryError(f"models not found in {root}: {', '.join(sorted(missing))}")
    if not found:
        raise RepositoryError(f"model repository {root} holds no models")
    return found
