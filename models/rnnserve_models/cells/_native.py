"""Shared body of the variants built on torch's native recurrent modules (nn.RNN, nn.LSTM,
nn.GRU): batch-major state handling, weight initialisation and the export route.

torch keeps recurrent states as ``[num_layers, B, H]``; the repository contract wants them
batch-major, ``[B, num_layers, H]``, so forward() transposes on the way in and out (the exporter
turns these into ONNX ``Transpose`` nodes around the native ``RNN``/``LSTM``/``GRU`` nodes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from rnnserve_models.base import RecurrentModel, StateSpec
from rnnserve_models.onnx_export import export_with_torch


def init_gate_blocks(
    weight_ih: Tensor, weight_hh: Tensor, gates: int, *, input_gain: float = 1.0
) -> None:
    """Xavier-uniform input weights and an orthogonal recurrent matrix per gate block.

    Orthogonal recurrent matrices keep the linearised state map norm-preserving at the start of
    training, so gradients neither explode nor vanish over long truncated-BPTT windows.
    """
    hidden = weight_hh.shape[1]
    with torch.no_grad():
        for k in range(gates):
            block = slice(k * hidden, (k + 1) * hidden)
            nn.init.xavier_uniform_(weight_ih[block], gain=input_gain)
            nn.init.orthogonal_(weight_hh[block])


def init_native(rnn: nn.RNNBase, gates: int, *, forget_bias: float | None = None) -> None:
    """Initialise every layer (and direction) of a torch recurrent module.

    Biases start at zero; for an LSTM (torch gate order i, f, g, o) the forget gate's input bias
    is ``forget_bias`` so the cell remembers by default (Gers et al. 2000; Jozefowicz et al. 2015).
    """
    hidden = rnn.hidden_size
    suffixes = ["", "_reverse"] if rnn.bidirectional else [""]
    for layer in range(rnn.num_layers):
        for sfx in suffixes:
            init_gate_blocks(
                getattr(rnn, f"weight_ih_l{layer}{sfx}"),
                getattr(rnn, f"weight_hh_l{layer}{sfx}"),
                gates,
            )
            b_ih: Tensor = getattr(rnn, f"bias_ih_l{layer}{sfx}")
            b_hh: Tensor = getattr(rnn, f"bias_hh_l{layer}{sfx}")
            with torch.no_grad():
                b_ih.zero_()
                b_hh.zero_()
                if forget_bias is not None:
                    b_ih[hidden : 2 * hidden] = forget_bias


class NativeStreamingModel(RecurrentModel):
    """A stacked torch recurrent module (batch_first) plus a linear head at every step."""

    rnn: nn.RNNBase
    state_names: tuple[str, ...] = ("h",)

    def __init__(
        self, input_size: int, output_size: int, hidden_size: int, num_layers: int, rnn: nn.RNNBase
    ) -> None:
        super().__init__(input_size, output_size, hidden_size, num_layers)
        self.rnn = rnn
        self.head = nn.Linear(hidden_size, output_size)

    def state_specs(self) -> list[StateSpec]:
        shape = (self.num_layers, self.hidden_size)
        return [StateSpec(name, shape) for name in self.state_names]

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if not state:
            state = tuple(self.initial_state(x.shape[0], x.device))
        if len(state) != len(self.state_names):
            raise ValueError(f"expected states {self.state_names}, got {len(state)} tensors")
        # [B, L, H] -> torch's [L, B, H]; contiguous because cuDNN wants it.
        torch_state = [s.transpose(0, 1).contiguous().to(x.dtype) for s in state]
        y, new_state = self.rnn(x, torch_state[0] if len(torch_state) == 1 else tuple(torch_state))
        new = (new_state,) if isinstance(new_state, Tensor) else tuple(new_state)
        return (self.head(y), *(s.transpose(0, 1) for s in new))

    def export_onnx(self, path: Path, opset: int) -> None:
        # Legacy exporter: keeps RNN/LSTM/GRU as single native nodes with dynamic B and T
        # (dynamo unrolls nn.RNN, and specialises nn.LSTM/GRU's time axis in torch.export).
        export_with_torch(self, path, opset, dynamo=False)
