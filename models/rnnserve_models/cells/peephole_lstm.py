"""Peephole LSTM (Gers & Schmidhuber 2000), stacked, exported as native ONNX ``LSTM`` nodes with
the peephole input ``P``.

Per layer (layer input x_t is the model input for layer 0, the layer below's h_t above it):

    i_t = σ(W_i x_t + R_i h_{t-1} + p_i ⊙ c_{t-1} + b_i)     input gate sees the old cell
    f_t = σ(W_f x_t + R_f h_{t-1} + p_f ⊙ c_{t-1} + b_f)     forget gate sees the old cell
    g_t = tanh(W_g x_t + R_g h_{t-1} + b_g)                  candidate
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    o_t = σ(W_o x_t + R_o h_{t-1} + p_o ⊙ c_t + b_o)         output gate sees the new cell
    h_t = o_t ⊙ tanh(c_t)
    y_t = W_y h_t^{(top)} + b_y                              linear head at every step

p_i, p_f, p_o are diagonal (vectors of size H). States ``h`` and ``c`` are ``[B, num_layers, H]``.
Parameters per layer: ``weight_ih [4H, I]``, ``weight_hh [4H, H]`` and ``bias [4H]`` in torch's
gate order i, f, g, o, and ``peephole [3, H]`` as rows p_i, p_f, p_o. Initialisation:
Xavier-uniform input weights, orthogonal recurrent blocks, zero biases except the forget gate's
(``forget_bias``, default 1), zero peepholes (the cell starts as a plain LSTM).

Training runs a Python loop over time in torch. The export does not trace that loop (tracing would
unroll it to the example length): the graph is written directly from the weights with
``onnx.helper``, one ONNX ``LSTM`` node per layer (gate order i, o, f, c; P = [p_i, p_o, p_f]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from rnnserve_models.base import RecurrentModel, StateSpec
from rnnserve_models.cells._native import init_gate_blocks
from rnnserve_models.onnx_export import (
    BATCH_DIM,
    INPUT_NAME,
    OUTPUT_NAME,
    TIME_DIM,
    save_verified,
)

# torch gate blocks i, f, g, o -> ONNX blocks i, o, f, c
_ONNX_GATE_ORDER = [0, 3, 1, 2]
# peephole rows p_i, p_f, p_o -> ONNX P = [p_i, p_o, p_f]
_ONNX_PEEPHOLE_ORDER = [0, 2, 1]


class PeepholeLSTMLayer(nn.Module):
    """One peephole LSTM layer over a whole chunk (Python loop over time)."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.peephole = nn.Parameter(torch.zeros(3, hidden_size))
        self.reset_parameters(forget_bias)

    def reset_parameters(self, forget_bias: float) -> None:
        init_gate_blocks(self.weight_ih, self.weight_hh, gates=4)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[self.hidden_size : 2 * self.hidden_size] = forget_bias
            self.peephole.zero_()

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x[B, T, I]``, ``h, c [B, H]`` -> ``(h_seq[B, T, H], h_T, c_T)``."""
        p_i, p_f, p_o = self.peephole
        # The input projection of every step at once; only the recurrence is sequential.
        x_proj = torch.nn.functional.linear(x, self.weight_ih, self.bias)
        outputs = []
        for t in range(x.shape[1]):
            gates = x_proj[:, t] + h @ self.weight_hh.T
            a_i, a_f, a_g, a_o = gates.chunk(4, dim=-1)
            i = torch.sigmoid(a_i + p_i * c)
            f = torch.sigmoid(a_f + p_f * c)
            c = f * c + i * torch.tanh(a_g)
            o = torch.sigmoid(a_o + p_o * c)
            h = o * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h, c


class PeepholeLSTM(RecurrentModel):
    variant = "peephole_lstm"

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 32,
        num_layers: int = 1,
        *,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__(input_size, output_size, hidden_size, num_layers)
        self.forget_bias = forget_bias
        self.layers = nn.ModuleList(
            PeepholeLSTMLayer(input_size if k == 0 else hidden_size, hidden_size, forget_bias)
            for k in range(num_layers)
        )
        self.head = nn.Linear(hidden_size, output_size)

    def init_weights(self) -> None:
        for layer in self.layers:
            assert isinstance(layer, PeepholeLSTMLayer)
            layer.reset_parameters(self.forget_bias)

    def state_specs(self) -> list[StateSpec]:
        shape = (self.num_layers, self.hidden_size)
        return [StateSpec("h", shape), StateSpec("c", shape)]

    def hyperparameters(self) -> dict[str, str]:
        return {
            **super().hyperparameters(),
            "forget_bias": str(self.forget_bias),
            "peepholes": "diagonal",
        }

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        h, c = state if state else self.initial_state(x.shape[0], x.device)
        new_h, new_c = [], []
        seq = x
        for k, layer in enumerate(self.layers):
            seq, h_k, c_k = layer(seq, h[:, k].to(x.dtype), c[:, k].to(x.dtype))
            new_h.append(h_k)
            new_c.append(c_k)
        return self.head(seq), torch.stack(new_h, dim=1), torch.stack(new_c, dim=1)

    def export_onnx(self, path: Path, opset: int) -> None:
        save_verified(self.onnx_graph(opset), self, path)

    def onnx_graph(self, opset: int) -> onnx.ModelProto:
        """The graph, built from the weights: one ONNX ``LSTM`` node (with ``P``) per layer."""
        hidden, layers = self.hidden_size, self.num_layers
        inits: list[TensorProto] = []
        nodes: list[onnx.NodeProto] = []

        def const(name: str, value: np.ndarray) -> str:
            inits.append(numpy_helper.from_array(value, name))
            return name

        def weights(t: Tensor) -> np.ndarray:
            return t.detach().cpu().to(torch.float32).numpy()

        def onnx_blocks(w: np.ndarray) -> np.ndarray:  # [4H, ...] torch order -> ONNX order
            return np.concatenate([w[k * hidden : (k + 1) * hidden] for k in _ONNX_GATE_ORDER])

        # [B, T, I] -> [T, B, I]; states [B, L, H] -> [L, B, H] -> L x [1, B, H]
        nodes.append(helper.make_node("Transpose", [INPUT_NAME], ["seq_0"], perm=[1, 0, 2]))
        split = const("layer_split", np.ones(layers, dtype=np.int64))
        for s in ("h", "c"):
            nodes.append(helper.make_node("Transpose", [f"{s}_in"], [f"{s}_lbh"], perm=[1, 0, 2]))
            nodes.append(
                helper.make_node(
                    "Split",
                    [f"{s}_lbh", split],
                    [f"{s}0_{k}" for k in range(layers)],
                    axis=0,
                )
            )
        for k, layer in enumerate(self.layers):
            assert isinstance(layer, PeepholeLSTMLayer)
            w = const(f"W_{k}", onnx_blocks(weights(layer.weight_ih))[None])
            r = const(f"R_{k}", onnx_blocks(weights(layer.weight_hh))[None])
            bias = np.concatenate([onnx_blocks(weights(layer.bias)), np.zeros(4 * hidden)])
            b = const(f"B_{k}", bias.astype(np.float32)[None])
            p = const(f"P_{k}", weights(layer.peephole)[_ONNX_PEEPHOLE_ORDER].reshape(1, -1))
            nodes.append(
                helper.make_node(
                    "LSTM",
                    [f"seq_{k}", w, r, b, "", f"h0_{k}", f"c0_{k}", p],
                    [f"Y_{k}", f"hT_{k}", f"cT_{k}"],
                    hidden_size=hidden,
                )
            )
            # Y is [T, num_directions=1, B, H]
            axes = const(f"squeeze_axes_{k}", np.array([1], dtype=np.int64))
            nodes.append(helper.make_node("Squeeze", [f"Y_{k}", axes], [f"seq_{k + 1}"]))
        for s, out in (("h", "hT"), ("c", "cT")):
            nodes.append(
                helper.make_node(
                    "Concat", [f"{out}_{k}" for k in range(layers)], [f"{s}_lbh_out"], axis=0
                )
            )
            nodes.append(
                helper.make_node("Transpose", [f"{s}_lbh_out"], [f"{s}_out"], perm=[1, 0, 2])
            )
        head_w = const("head_weight_t", weights(self.head.weight).T.copy())
        head_b = const("head_bias", weights(self.head.bias))
        nodes.append(helper.make_node("Transpose", [f"seq_{layers}"], ["top"], perm=[1, 0, 2]))
        nodes.append(helper.make_node("MatMul", ["top", head_w], ["head_mm"]))
        nodes.append(helper.make_node("Add", ["head_mm", head_b], [OUTPUT_NAME]))

        def value(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

        state_shape: list[int | str] = [BATCH_DIM, layers, hidden]
        graph = helper.make_graph(
            nodes,
            "peephole_lstm",
            [
                value(INPUT_NAME, [BATCH_DIM, TIME_DIM, self.input_size]),
                value("h_in", state_shape),
                value("c_in", state_shape),
            ],
            [
                value(OUTPUT_NAME, [BATCH_DIM, TIME_DIM, self.output_size]),
                value("h_out", state_shape),
                value("c_out", state_shape),
            ],
            inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rnnserve"
        )
        model.ir_version = min(model.ir_version, 10)  # readable by older ONNX Runtimes too
        onnx.checker.check_model(model, full_check=True)
        return model
