"""Elman RNN (Elman 1990), stacked, exported as native ONNX ``RNN`` nodes (tanh).

Per layer (layer input x_t is the model input for layer 0, the layer below's h_t above it):

    h_t = tanh(W_x x_t + W_h h_{t-1} + b)        (torch stores b as b_ih + b_hh)
    y_t = W_y h_t^{(top)} + b_y                  linear head at every step

State ``h`` is ``[B, num_layers, H]``. Initialisation: Xavier-uniform W_x, orthogonal W_h, zero
biases. Exported with torch's legacy exporter: the dynamo exporter unrolls nn.RNN (torchlib has
no rnn_tanh).
"""

from __future__ import annotations

from torch import nn

from rnnserve_models.cells._native import NativeStreamingModel, init_native


class ElmanRNN(NativeStreamingModel):
    variant = "elman"
    state_names = ("h",)

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 32,
        num_layers: int = 1,
    ) -> None:
        rnn = nn.RNN(input_size, hidden_size, num_layers, nonlinearity="tanh", batch_first=True)
        super().__init__(input_size, output_size, hidden_size, num_layers, rnn)
        self.init_weights()

    def init_weights(self) -> None:
        init_native(self.rnn, gates=1)

    def hyperparameters(self) -> dict[str, str]:
        return {**super().hyperparameters(), "nonlinearity": "tanh"}
