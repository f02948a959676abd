"""Reading a CSV column as a series and scoring one-step-ahead predictions (pure numpy)."""

from __future__ import annotations

import csv
import math
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def read_column(path: Path, column: str) -> tuple[list[str], F64]:
    """(first-column labels, float values) of `column`; ValueError with a readable message."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if column not in fields:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(fields)})")
        labels: list[str] = []
        values: list[float] = []
        for line, row in enumerate(reader, start=2):
            cell = (row.get(column) or "").strip()
            try:
                values.append(float(cell))
            except ValueError:
                raise ValueError(f"{path}:{line}: {column}={cell!r} is not a number") from None
            labels.append(row[fields[0]] if fields[0] != column else str(line - 2))
    if len(values) < 2:
        raise ValueError(f"{path}: column {column!r} needs at least 2 values")
    return labels, np.asarray(values, dtype=np.float64)


def sunspots() -> tuple[list[str], F64]:
    """Yearly mean sunspot numbers 1700-2008 (public domain, as shipped with statsmodels)."""
    ref = resources.files("rnnserve_client") / "data" / "sunspots.csv"
    with resources.as_file(ref) as path:
        return read_column(path, "sunactivity")


def rmse(pred: F64, actual: F64) -> float:
    ok = np.isfinite(pred) & np.isfinite(actual)
    return math.sqrt(float(np.mean((pred[ok] - actual[ok]) ** 2))) if ok.any() else math.nan


def plot(path: Path, labels: list[str], actual: F64, predicted: F64, title: str) -> None:
    """Actual values and the one-step-ahead predictions (shifted to the step they predict)."""
    import matplotlib  # lazily: only the CLI's --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(actual))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(x, actual, label="actual", color="black", linewidth=1)
    ax.plot(x[1:], predicted[:-1], label="predicted (one step ahead)", color="tab:orange")
    step = max(1, len(labels) // 10)
    ax.set_xticks(x[::step], [labels[i] for i in range(0, len(labels), step)], rotation=45)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
