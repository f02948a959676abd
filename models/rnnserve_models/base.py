"""The interface every served recurrent variant implements.

A streaming model maps ``(x[B, T, F], *state) -> (y[B, T, O], *new_state)``; every state tensor is
batch-major (``[B, *StateSpec.shape]``) so a server can gather/scatter a batch's states with one
indexing operation. Whole-sequence models (bidirectional) have no state and map ``x -> (y,)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor of a streaming model."""

    name: str  # logical name: "h", "c", "step", "window", "fill", ...
    shape: tuple[int, ...]  # per batch item, batch axis excluded
    dtype: torch.dtype = torch.float32  # float32 or int64
    initial_value: float = 0.0

    @property
    def input_name(self) -> str:
        return f"{self.name}_in"

    @property
    def output_name(self) -> str:
        return f"{self.name}_out"


class RecurrentModel(nn.Module, ABC):
    """Base of every variant: a recurrent body plus a linear output head.

    Constructor signature shared by all variants (variant-specific options are keyword-only):
    ``(input_size, output_size, hidden_size=32, num_layers=1, **options)``.
    """

    variant: ClassVar[str]
    streaming: ClassVar[bool] = True

    def __init__(self, input_size: int, output_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        if min(input_size, output_size, hidden_size, num_layers) < 1:
            raise ValueError("sizes and num_layers must be >= 1")
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers

    @abstractmethod
    def state_specs(self) -> list[StateSpec]:
        """The state tensors, in the order forward() takes and returns them ([] if stateless)."""

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> list[Tensor]:
        return [
            torch.full((batch_size, *s.shape), s.initial_value, dtype=s.dtype, device=device)
            for s in self.state_specs()
        ]

    @abstractmethod
    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """``x[B, T, input_size]`` plus states -> ``(y[B, T, output_size], *new_states)``."""

    @abstractmethod
    def export_onnx(self, path: Path, opset: int) -> None:
        """Write an ONNX graph honouring the repository contract (see model_repository.proto):
        input ``x`` and states ``<name>_in``; outputs ``y`` and ``<name>_out``; B and T dynamic
        and named; T never unrolled."""

    def hyperparameters(self) -> dict[str, str]:
        """Settings recorded in the model's metadata (for people, not for the server)."""
        return {
            "hidden_size": str(self.hidden_size),
            "num_layers": str(self.num_layers),
        }
