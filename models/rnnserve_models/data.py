"""Time series for next-step prediction: built-in datasets, a user's CSV column, the chronological
train/validation split and the normalisation statistics (from the train split only).

The task everywhere is next-step prediction: input ``x_t``, target ``x_{t+1}``, one feature.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

DATASETS = ("sunspots", "co2", "multiscale")


class DataError(ValueError):
    """A dataset or CSV that cannot be used, with a message meant for a person."""


@dataclass(frozen=True)
class Series:
    """A raw (un-normalised) series of shape ``[N, features]``."""

    name: str
    values: FloatArray
    description: str

    @property
    def features(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class Split:
    """A chronological split: ``values[:n_train]`` trains, the rest validates.

    ``mean``/``std`` come from the train part only, so nothing of the validation part leaks into
    the model or its stored normalisation.
    """

    series: Series
    n_train: int
    mean: FloatArray  # [features]
    std: FloatArray  # [features]

    @property
    def n_val(self) -> int:
        return len(self.series) - self.n_train

    def normalise(self, raw: FloatArray) -> FloatArray:
        return (raw - self.mean) / self.std

    def denormalise(self, z: FloatArray) -> FloatArray:
        return z * self.std + self.mean

    @property
    def normalised(self) -> FloatArray:
        """The whole series, normalised with the train statistics."""
        return self.normalise(self.series.values)

    @property
    def val_targets(self) -> FloatArray:
        """Raw targets the validation metrics are computed on: ``x[n_train:]``."""
        return self.series.values[self.n_train :]

    @property
    def val_persistence(self) -> FloatArray:
        """The persistence (last-value) forecast of each validation target: ``x[n_train-1:-1]``."""
        return self.series.values[self.n_train - 1 : -1]


def split_series(series: Series, val_fraction: float = 0.2, min_points: int = 4) -> Split:
    """Split chronologically; the validation part is the last ``val_fraction`` of the series."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n = len(series)
    n_val = max(1, round(n * val_fraction))
    n_train = n - n_val
    if n_train < min_points or n_val < 2:
        raise DataError(
            f"series {series.name!r} has {n} points: too short to split into train and validation "
            f"(need at least {min_points} training and 2 validation points)"
        )
    train = series.values[:n_train]
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    # A constant training part would divide by zero; keep the scale at 1 then.
    std = np.where(std > 1e-12, std, 1.0)
    return Split(series=series, n_train=n_train, mean=mean, std=std)


def _column(values: FloatArray) -> FloatArray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def sunspots() -> Series:
    """Yearly mean sunspot numbers 1700-2008 (309 points, shipped with statsmodels).

    Small enough to train in seconds, with a nonlinear ~11-year cycle of varying amplitude, so the
    persistence baseline is far from perfect and a recurrent model has something to learn.
    """
    from statsmodels.datasets import sunspots as ds

    data = ds.load_pandas().data["SUNACTIVITY"].to_numpy()
    return Series("sunspots", _column(data), "yearly mean sunspot number 1700-2008 (statsmodels)")


def co2() -> Series:
    """Weekly Mauna Loa CO2 1958-2001 (2284 points, statsmodels); 59 missing weeks interpolated.

    Offered for completeness: it is smooth, so persistence is already a strong baseline.
    """
    from statsmodels.datasets import co2 as ds

    frame = ds.load_pandas().data["co2"].interpolate(limit_direction="both")
    return Series(
        "co2", _column(frame.to_numpy()), "weekly Mauna Loa CO2 ppm 1958-2001 (statsmodels)"
    )


def multiscale(length: int = 1200, seed: int = 0) -> Series:
    """Synthetic series with structure at three time scales, seeded.

    A slow sine (period 120), a fast sine (period 10), and a decaying pulse every 40 steps whose
    amplitude varies slowly (period 400), plus a little noise: structure at the time scales a
    Clockwork RNN's modules (periods 1..32) are built for. Measured here: a plain GRU of similar
    size does as well (docs/training.md), so the series shows the clock, not an advantage.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    slow = np.sin(2 * math.pi * t / 120.0)
    fast = 0.5 * np.sin(2 * math.pi * t / 10.0)
    phase = t % 40.0
    amplitude = 1.0 + 0.5 * np.sin(2 * math.pi * t / 400.0)
    events = amplitude * np.exp(-phase / 3.0)
    noise = 0.05 * rng.standard_normal(length)
    values = slow + fast + events + noise
    return Series(
        "multiscale",
        _column(values),
        f"synthetic: sin/120 + 0.5 sin/10 + pulse every 40 steps + noise (seed {seed})",
    )


def load_dataset(name: str) -> Series:
    if name == "sunspots":
        return sunspots()
    if name == "co2":
        return co2()
    if name == "multiscale":
        return multiscale()
    raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)} or use --csv")


def load_csv(path: Path, column: str) -> Series:
    """One numeric column of a CSV file with a header row, in file order."""
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise DataError(f"CSV file {path} is empty (expected a header row)")
        if column not in reader.fieldnames:
            available = ", ".join(repr(name) for name in reader.fieldnames)
            raise DataError(f"column {column!r} not in {path}; available columns: {available}")
        values: list[float] = []
        # Line 1 is the header, so data row i sits on line i + 2.
        for line, row in enumerate(reader, start=2):
            cell = (row.get(column) or "").strip()
            try:
                value = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}, line {line}: column {column!r} has non-numeric value {cell!r}"
                ) from None
            if not math.isfinite(value):
                raise DataError(f"{path}, line {line}: column {column!r} is not finite ({cell!r})")
            values.append(value)
    if len(values) < 8:
        raise DataError(f"{path}: column {column!r} has {len(values)} values; need at least 8")
    return Series(f"{path.stem}:{column}", _column(np.array(values)), f"column {column} of {path}")
