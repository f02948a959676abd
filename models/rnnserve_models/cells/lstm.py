"""LSTM (Hochreiter & Schmidhuber 1997, with a forget gate), stacked, exported as native ONNX
``LSTM`` nodes.

Per layer (layer input x_t is the model input for layer 0, the layer below's h_t above it):

    i_t = σ(W_i x_t + R_i h_{t-1} + b_i)            input gate
    f_t = σ(W_f x_t + R_f h_{t-1} + b_f)            forget gate
    g_t = tanh(W_g x_t + R_g h_{t-1} + b_g)         candidate
    o_t = σ(W_o x_t + R_o h_{t-1} + b_o)            output gate
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)
    y_t = W_y h_t^{(top)} + b_y                     linear head at every step

(torch splits each bias into b_ih + b_hh; ONNX's gate order is i, o, f, c, and the exporter
reorders the weights.) States ``h`` and ``c`` are ``[B, num_layers, H]``. Initialisation:
Xavier-uniform input weights, orthogonal recurrent blocks, zero biases except the forget gate's,
which starts at ``forget_bias`` (default 1).
"""

from __future__ import annotations

from torch import nn

from rnnserve_models.cells._native import NativeStreamingModel, init_native


class LSTM(NativeStreamingModel):
    variant = "lstm"
    state_names = ("h", "c")

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 32,
        num_layers: int = 1,
        *,
        forget_bias: float = 1.0,
    ) -> None:
        rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        super().__init__(input_size, output_size, hidden_size, num_layers, rnn)
        self.forget_bias = forget_bias
        self.init_weights()

    def init_weights(self) -> None:
        init_native(self.rnn, gates=4, forget_bias=self.forget_bias)

    def hyperparameters(self) -> dict[str, str]:
        return {**super().hyperparameters(), "forget_bias": str(self.forget_bias)}
