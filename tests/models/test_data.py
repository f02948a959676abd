"""Datasets, the chronological split, train-only normalisation and CSV errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnserve_models.data import (
    DataError,
    Series,
    load_csv,
    load_dataset,
    multiscale,
    split_series,
)


def test_split_is_chronological_and_normalised_on_train_only() -> None:
    series = load_dataset("sunspots")
    split = split_series(series, val_fraction=0.2)
    values = series.values
    assert split.n_train + split.n_val == len(series) == 309
    assert split.n_val == round(309 * 0.2)
    # Statistics of the train prefix, not of the whole series (the two differ on sunspots).
    np.testing.assert_allclose(split.mean, values[: split.n_train].mean(axis=0))
    np.testing.assert_allclose(split.std, values[: split.n_train].std(axis=0))
    assert not np.allclose(split.mean, values.mean(axis=0))
    z = split.normalised
    np.testing.assert_allclose(z[: split.n_train].mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[: split.n_train].std(), 1.0, atol=1e-12)
    np.testing.assert_allclose(split.denormalise(z), values)
    # Validation targets are the tail; persistence predicts each from the value before it.
    np.testing.assert_array_equal(split.val_targets, values[split.n_train :])
    np.testing.assert_array_equal(split.val_persistence[1:], split.val_targets[:-1])
    assert split.val_persistence[0] == values[split.n_train - 1]


def test_too_short_and_bad_fraction_are_rejected() -> None:
    short = Series("short", np.arange(4.0).reshape(-1, 1), "four points")
    with pytest.raises(DataError, match="too short"):
        split_series(short)
    with pytest.raises(DataError, match="val_fraction"):
        split_series(load_dataset("sunspots"), val_fraction=1.5)


def test_constant_training_part_keeps_unit_scale() -> None:
    values = np.concatenate([np.full(20, 3.0), np.arange(5.0)]).reshape(-1, 1)
    split = split_series(Series("flat", values, "flat then ramp"))
    assert split.std[0] == 1.0
    assert np.isfinite(split.normalised).all()


def test_builtin_datasets_are_finite_single_feature() -> None:
    for name in ("sunspots", "co2", "multiscale"):
        series = load_dataset(name)
        assert series.features == 1
        assert np.isfinite(series.values).all(), name
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("nope")


def test_multiscale_is_seeded() -> None:
    np.testing.assert_array_equal(multiscale(seed=3).values, multiscale(seed=3).values)
    assert not np.array_equal(multiscale(seed=3).values, multiscale(seed=4).values)
    assert len(multiscale(length=500)) == 500


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_csv_column_loads_in_order(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i * 0.5},x" for i in range(10))
    series = load_csv(_write(tmp_path, f"t,value,label\n{rows}\n"), "value")
    np.testing.assert_array_equal(series.values[:, 0], np.arange(10) * 0.5)


def test_csv_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_csv(tmp_path / "missing.csv", "value")
    path = _write(tmp_path, "t,value\n" + "\n".join(f"{i},{i}" for i in range(10)) + "\n")
    with pytest.raises(DataError, match=r"column 'price' not in .*available columns: 't', 'value'"):
        load_csv(path, "price")
    rows = [f"{i},{i}" for i in range(10)]
    rows[4] = "4,n/a"
    path = _write(tmp_path, "t,value\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"line 6: column 'value' has non-numeric value 'n/a'"):
        load_csv(path, "value")
    with pytest.raises(DataError, match="empty"):
        load_csv(_write(tmp_path, ""), "value")
    with pytest.raises(DataError, match="need at least 8"):
        load_csv(_write(tmp_path, "value\n1\n2\n"), "value")
