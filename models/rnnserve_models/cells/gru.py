"""GRU (Cho et al. 2014) in torch's / cuDNN's convention, stacked, exported as native ONNX
``GRU`` nodes with ``linear_before_reset=1``.

Per layer (layer input x_t is the model input for layer 0, the layer below's h_t above it):

    r_t = σ(W_r x_t + b_ir + R_r h_{t-1} + b_hr)            reset gate
    z_t = σ(W_z x_t + b_iz + R_z h_{t-1} + b_hz)            update gate
    n_t = tanh(W_n x_t + b_in + r_t ⊙ (R_n h_{t-1} + b_hn)) candidate
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}
    y_t = W_y h_t^{(top)} + b_y                             linear head at every step

Conventions: z weights the *previous* state (z → 1 keeps the memory), and the reset gate is
applied *after* the recurrent matmul (to R_n h_{t-1} + b_hn), which is ONNX's
``linear_before_reset=1``; the original paper resets h_{t-1} before the matmul. State ``h`` is
``[B, num_layers, H]``. Initialisation: Xavier-uniform input weights, orthogonal recurrent blocks,
zero biases.
"""

from __future__ import annotations

from torch import nn

from rnnserve_models.cells._native import NativeStreamingModel, init_native


class GRU(NativeStreamingModel):
    variant = "gru"
    state_names = ("h",)

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 32,
        num_layers: int = 1,
    ) -> None:
        rnn = nn.GRU(input_size, hidden_size, num_layers, batch_first=True)
        super().__init__(input_size, output_size, hidden_size, num_layers, rnn)
        self.init_weights()

    def init_weights(self) -> None:
        init_native(self.rnn, gates=3)

    def hyperparameters(self) -> dict[str, str]:
        return {**super().hyperparameters(), "linear_before_reset": "1"}
