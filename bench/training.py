"""rnnserve's training benchmark: train the default model of every variant on CPU.

    python -m bench.training [--variants gru,lstm,...] [--epochs N] [--output FILE]

The default models and settings are those of the shipped repository (rnnserve_models.ship's
SHIP_PLAN): sunspots for every variant, the multi-scale series for Clockwork (and a GRU beside
it). Prints a Markdown table of wall time, epochs and validation RMSE against the persistence
baseline; --output also writes it (plus a .json of the rows) to FILE. Nothing is written to a
model repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from rnnserve_models.data import Split, load_dataset, split_series
from rnnserve_models.ship import SHIP_PLAN, train_and_evaluate
from rnnserve_models.variants import VARIANTS, variant_class


@dataclass(frozen=True)
class Row:
    name: str
    variant: str
    dataset: str
    parameters: int
    epochs: int
    best_epoch: int
    seconds: float
    seconds_per_epoch: float
    val_rmse: float
    baseline_rmse: float


def run(variants: set[str] | None, epochs: int | None) -> list[Row]:
    splits: dict[str, Split] = {}
    rows: list[Row] = []
    for variant in VARIANTS:  # import every cell first, so no row pays for an import
        variant_class(variant)
    for entry in SHIP_PLAN:
        if variants is not None and entry.spec.variant not in variants:
            continue
        if entry.dataset not in splits:
            splits[entry.dataset] = split_series(load_dataset(entry.dataset))
        config = entry.config if epochs is None else replace(entry.config, epochs=epochs)
        started = time.perf_counter()
        trained = train_and_evaluate(entry.spec, splits[entry.dataset], config, progress=False)
        seconds = time.perf_counter() - started
        result = trained.result
        rows.append(
            Row(
                name=entry.name,
                variant=entry.spec.variant,
                dataset=entry.dataset,
                parameters=sum(p.numel() for p in trained.model.parameters()),
                epochs=result.epochs_run,
                best_epoch=result.best_epoch,
                seconds=seconds,
                seconds_per_epoch=result.seconds / max(1, result.epochs_run),
                val_rmse=trained.metrics.val_rmse,
                baseline_rmse=trained.metrics.baseline_rmse,
            )
        )
        print(f"{entry.name}: {seconds:.1f} s", flush=True)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| model | variant | dataset | params | epochs (best) | wall s | s/epoch | val RMSE "
        "| persistence RMSE | RMSE / persistence |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.variant} | {r.dataset} | {r.parameters} "
            f"| {r.epochs} ({r.best_epoch}) | {r.seconds:.1f} | {r.seconds_per_epoch:.3f} "
            f"| {r.val_rmse:.4g} "
            f"| {r.baseline_rmse:.4g} | {r.val_rmse / r.baseline_rmse:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", help="comma-separated variants (default: all)")
    parser.add_argument("--epochs", type=int, help="override the most epochs (smoke runs)")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    variants = set(args.variants.split(",")) if args.variants else None
    started = time.perf_counter()
    rows = run(variants, args.epochs)
    table = markdown(rows)
    total = time.perf_counter() - started
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, training threads 1; total {total:.0f} s"
    )
    print()
    print(table)
    print(machine)
    if args.output is not None:
        args.output.write_text(table + "\n" + machine + "\n")
        payload = {"machine": machine, "rows": [asdict(r) for r in rows]}
        args.output.with_suffix(args.output.suffix + ".json").write_text(
            json.dumps(payload, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
