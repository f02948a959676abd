"""Shared by the client tests (a uniquely named module: `conftest` is ambiguous across tiers)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# RNNSERVE_TEST_REPOSITORY points the tests at another repository (e.g. while retraining).
REPOSITORY = Path(os.environ.get("RNNSERVE_TEST_REPOSITORY", ROOT / "model_repository"))


@dataclass(frozen=True)
class Model:
    name: str
    input_features: int
    output_features: int
    autoregressive: bool

    def series(self, steps: int, seed: int = 0) -> np.ndarray:
        """A plausible input: a noisy cycle around 50 (sunspot-like scale), [steps, F]."""
        rng = np.random.default_rng(seed)
        t = np.arange(steps)[:, None]
        noise = rng.normal(0, 5, (steps, self.input_features))
        return (50 + 40 * np.sin(2 * np.pi * t / 11) + noise).astype(np.float32)
