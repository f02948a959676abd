"""End-to-end checks of the shipped model repository (built by `rnnserve-train ship`): every
variant is there, trained, its metadata reads back, its recorded validation RMSE beats the
persistence baseline, and the ONNX graph reproduces that number in ONNX Runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rnnserve_models.data import load_dataset, split_series
from rnnserve_models.evaluate import compute_metrics, onnx_predict_next
from rnnserve_models.repository import read_metadata
from rnnserve_models.variants import VARIANTS
from rnnserve_proto.model_repository_pb2 import ModelMetadata

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
VERSION_DIRS = sorted(p.parent for p in REPOSITORY.glob("*/*/metadata.json"))


def test_every_variant_is_shipped_and_small() -> None:
    variants = {read_metadata(d).variant for d in VERSION_DIRS}
    assert variants == set(VARIANTS)
    size = sum(p.stat().st_size for p in REPOSITORY.rglob("*") if p.is_file())
    assert size < 5 * 2**20, f"shipped repository is {size / 2**20:.1f} MiB"


def _check_metadata(directory: Path, meta: ModelMetadata) -> None:
    assert meta.name == directory.parent.name
    assert meta.version == int(directory.name)
    assert (directory / meta.onnx_file).is_file()
    assert meta.autoregressive
    assert meta.input_features == meta.output_features == 1
    norm = meta.normalization
    for values in (norm.input_mean, norm.input_std, norm.output_mean, norm.output_std):
        assert len(values) == 1
    assert min(norm.input_std[0], norm.output_std[0]) > 0
    t = meta.training
    assert t.trained
    assert t.dataset in ("sunspots", "multiscale")
    assert t.epochs > 0
    for value in (t.val_rmse, t.val_mae, t.baseline_rmse, t.baseline_mae):
        assert math.isfinite(value)
        assert value > 0
    assert t.val_rmse < t.baseline_rmse, f"{meta.name} is worse than persistence"


@pytest.mark.parametrize("directory", VERSION_DIRS, ids=lambda d: d.parent.name)
def test_shipped_model_reproduces_its_recorded_metrics(directory: Path) -> None:
    meta = read_metadata(directory)
    _check_metadata(directory, meta)
    split = split_series(load_dataset(meta.training.dataset))
    # The normalisation stored is the train split's: the server sees what training saw.
    assert meta.normalization.input_mean[0] == pytest.approx(split.mean[0])
    assert meta.normalization.input_std[0] == pytest.approx(split.std[0])
    window = json.loads((directory / "report.json").read_text())["training"]["window"]
    mean, std = split.mean, split.std
    z = (split.series.values - mean) / std
    prediction = onnx_predict_next(directory, meta, z, split.n_train, window) * std + mean
    metrics = compute_metrics(prediction, split.val_targets, split.val_persistence)
    assert metrics.val_rmse == pytest.approx(meta.training.val_rmse, rel=1e-4)
    assert metrics.baseline_rmse == pytest.approx(meta.training.baseline_rmse, rel=1e-9)
    assert np.isfinite(prediction).all()
