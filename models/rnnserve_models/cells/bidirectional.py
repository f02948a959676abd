"""Bidirectional RNN (Schuster & Paliwal 1997): a whole-sequence model, not streaming.

Each layer runs a forward cell over t = 1..T and a backward cell over t = T..1, both from zero
states, and concatenates their hidden states; the next layer reads that concatenation
(2H features), and the head reads the top layer's:

    →h_t = cell_fwd(x_t, →h_{t-1}),   ←h_t = cell_bwd(x_t, ←h_{t+1}),   →h_0 = ←h_{T+1} = 0
    y_t  = W_y [→h_t ; ←h_t] + b_y

``cell`` (option) is one of
- ``"rnn"``:  h_t = tanh(W_x x_t + W_h h_{t-1} + b)                         (elman.py)
- ``"lstm"``: the LSTM equations of lstm.py (gates i, f, g, o; c_t, h_t = o ⊙ tanh(c_t))
- ``"gru"`` (default): the GRU equations of gru.py (h_t = (1−z)⊙n + z⊙h_{t−1}, reset applied
  after the recurrent matmul, ONNX linear_before_reset=1)

Every output depends on the whole chunk, so there is no state to carry: ``x -> (y,)``, exported as
native ONNX ``RNN``/``LSTM``/``GRU`` nodes with ``direction="bidirectional"``, B and T dynamic.
Initialisation as in the streaming variants (orthogonal recurrent blocks, LSTM forget bias 1).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from rnnserve_models.base import RecurrentModel, StateSpec
from rnnserve_models.cells._native import init_native
from rnnserve_models.onnx_export import export_with_torch

CELLS: dict[str, tuple[Callable[..., nn.RNNBase], int]] = {
    "rnn": (nn.RNN, 1),
    "lstm": (nn.LSTM, 4),
    "gru": (nn.GRU, 3),
}


class BidirectionalRNN(RecurrentModel):
    variant = "bidirectional"
    streaming = False

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 32,
        num_layers: int = 1,
        *,
        cell: str = "gru",
    ) -> None:
        super().__init__(input_size, output_size, hidden_size, num_layers)
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose from {sorted(CELLS)}")
        self.cell = cell
        module, _ = CELLS[cell]
        self.rnn = module(input_size, hidden_size, num_layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden_size, output_size)
        self.init_weights()

    def init_weights(self) -> None:
        _, gates = CELLS[self.cell]
        init_native(self.rnn, gates, forget_bias=1.0 if self.cell == "lstm" else None)

    def state_specs(self) -> list[StateSpec]:
        return []

    def hyperparameters(self) -> dict[str, str]:
        return {**super().hyperparameters(), "cell": self.cell}

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if state:
            raise ValueError("a bidirectional model is whole-sequence: it takes no state")
        y, _ = self.rnn(x)
        return (self.head(y),)

    def export_onnx(self, path: Path, opset: int) -> None:
        # Legacy exporter: one native node per layer; dynamo would unroll the "rnn" cell.
        export_with_torch(self, path, opset, dynamo=False)
