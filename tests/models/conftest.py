"""Shared fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


def _perturb(model: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Add noise to every parameter, so parameters initialised to zero (biases, peepholes) or to
    a structured value (forget bias) still take part in the comparisons: a swapped gate or a
    dropped bias would otherwise go unseen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.fixture(scope="session")
def perturb() -> Callable[..., nn.Module]:
    return _perturb
