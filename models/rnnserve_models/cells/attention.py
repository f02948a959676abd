"""Attention RNN: a stacked GRU or LSTM whose output attends causally over its last K states.

Recurrent body (torch's gate conventions; layer input ``x_t`` is the model input for the first
layer and the layer below's ``h_t`` above), ``cell="gru"``::

    r_t = σ(W_r x_t + b_r + U_r h_{t-1})
    z_t = σ(W_z x_t + b_z + U_z h_{t-1})
    n_t = tanh(W_n x_t + b_n + r_t ⊙ (U_n h_{t-1} + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

``cell="lstm"``::

    i_t, f_t, o_t = σ(W_{i,f,o} x_t + U_{i,f,o} h_{t-1} + b_{i,f,o})
    g_t = tanh(W_g x_t + U_g h_{t-1} + b_g)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t;  h_t = o_t ⊙ tanh(c_t)

Attention over the top layer's states (``K = window``), with ``S_t`` the last ``min(K, n)``
top-layer states up to and including ``h_t`` (``n`` = steps the session has seen so far)::

    e_{t,i} = vᵀ tanh(W [h_t; h_i] + b) = vᵀ tanh(W_q h_t + W_k h_i + b)     for h_i in S_t
    α_t = softmax(e_t) over S_t;   context_t = Σ_i α_{t,i} h_i
    y_t = W_y [h_t; context_t] + b_y

States (batch-major): ``h`` (and ``c`` for the LSTM) ``[B, num_layers, H]``; ``window``
``[B, K, H]``, the last K top-layer states in *chronological* order (row ``K-1`` is the newest,
so no ring position is needed); ``fill`` int64 ``[B]``, how many of the window's rows are real
(the last ``fill`` rows; ``min(steps seen, K)``). A new session is all zeros.

Only the recurrent body needs a time loop (one ``Scan`` per layer in ONNX); the attention reads
the window and the chunk's states at once: the chunk's step ``t`` sees rows ``t+1 .. t+K`` of
``[window; h_1 .. h_T]``, of which rows with index ``< K - fill`` are empty and masked out. So a
chunk of 3 then one of 4 computes exactly what one chunk of 7 computes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnserve_models.base import RecurrentModel, StateSpec
from rnnserve_models.scan_export import (
    Tensors,
    export_scan_model,
    orthogonal_blocks_,
    time_loop,
    use_scan,
)

CELLS = ("gru", "lstm")
FORGET_BIAS = 1.0


class RecurrentLayer(nn.Module):
    """One GRU or LSTM layer over a chunk, written as a step function (Scan-exportable)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int) -> None:
        super().__init__()
        gates = 3 if cell == "gru" else 4
        h = hidden_size
        self.cell = cell
        self.hidden_size = h
        self.weight_ih = nn.Parameter(torch.empty(gates * h, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates * h, h))
        self.bias = nn.Parameter(torch.zeros(gates * h))
        # The GRU's candidate keeps its recurrent bias inside r ⊙ (...), as torch's GRU does.
        self.bias_hn = nn.Parameter(torch.zeros(h)) if cell == "gru" else None
        bound = 1.0 / math.sqrt(h)
        with torch.no_grad():
            nn.init.uniform_(self.weight_ih, -bound, bound)
            if cell == "lstm":  # gate order i, f, g, o: remember by default
                self.bias[h : 2 * h] = FORGET_BIAS
        orthogonal_blocks_(self.weight_hh, h)

    def forward(self, x: Tensor, state: Tensors, *, scan: bool) -> tuple[Tensor, Tensors]:
        """``x[B, T, I]``, ``(h0[, c0])`` each ``[B, H]`` -> ``(h_seq[B, T, H], final state)``."""
        H = self.hidden_size
        gx = (x @ self.weight_ih.T + self.bias).transpose(0, 1)  # [T, B, G*H]
        w_hh = self.weight_hh
        bias_hn = self.bias_hn

        def gru_step(carry: Tensors, inputs: Tensors) -> tuple[Tensors, Tensors]:
            (h,) = carry
            g_rz, g_n = inputs
            gh = h @ w_hh.T
            rz = torch.sigmoid(g_rz + gh[:, : 2 * H])
            r = rz[:, :H]
            z = rz[:, H:]
            assert bias_hn is not None
            n = torch.tanh(g_n + r * (gh[:, 2 * H :] + bias_hn))
            h_new = (1 - z) * n + z * h
            return (h_new,), (h_new,)

        def lstm_step(carry: Tensors, inputs: Tensors) -> tuple[Tensors, Tensors]:
            h, c = carry
            (g,) = inputs
            a = g + h @ w_hh.T
            i = torch.sigmoid(a[:, :H])
            f = torch.sigmoid(a[:, H : 2 * H])
            cand = torch.tanh(a[:, 2 * H : 3 * H])
            o = torch.sigmoid(a[:, 3 * H :])
            c_new = f * c + i * cand
            h_new = o * torch.tanh(c_new)
            return (h_new, c_new), (h_new,)

        if self.cell == "gru":  # split outside the loop, so the step slices less
            final, (seq,) = time_loop(
                gru_step, state, (gx[..., : 2 * H], gx[..., 2 * H :]), scan=scan
            )
        else:
            final, (seq,) = time_loop(lstm_step, state, (gx,), scan=scan)
        return seq.transpose(0, 1), final


class AttentionRNN(RecurrentModel):
    """Stacked GRU/LSTM with causal additive attention over the last ``window`` top states."""

    variant = "attention"

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 32,
        num_layers: int = 1,
        *,
        cell: str = "gru",
        window: int = 8,
        attention_size: int | None = None,
    ) -> None:
        super().__init__(input_size, output_size, hidden_size, num_layers)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if attention_size is not None and attention_size < 1:
            raise ValueError(f"attention_size must be >= 1, got {attention_size}")
        self.cell = cell
        self.window = window
        self.attention_size = attention_size or hidden_size
        self.layers = nn.ModuleList(
            RecurrentLayer(cell, input_size if i == 0 else hidden_size, hidden_size)
            for i in range(num_layers)
        )
        self.attn_query = nn.Linear(hidden_size, self.attention_size)  # W_q and b
        self.attn_key = nn.Linear(hidden_size, self.attention_size, bias=False)  # W_k
        self.attn_v = nn.Parameter(torch.empty(self.attention_size))
        bound = 1.0 / math.sqrt(self.attention_size)
        nn.init.uniform_(self.attn_v, -bound, bound)
        self.head = nn.Linear(2 * hidden_size, output_size)
        self.force_scan = False

    def state_specs(self) -> list[StateSpec]:
        layer_shape = (self.num_layers, self.hidden_size)
        recurrent = [StateSpec("h", layer_shape)]
        if self.cell == "lstm":
            recurrent.append(StateSpec("c", layer_shape))
        return [
            *recurrent,
            StateSpec("window", (self.window, self.hidden_size)),
            StateSpec("fill", (), torch.int64),
        ]

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if not state:
            state = tuple(self.initial_state(x.shape[0], x.device))
        n_rec = 2 if self.cell == "lstm" else 1
        if len(state) != n_rec + 2:
            names = [s.name for s in self.state_specs()]
            raise ValueError(f"expected states {names}, got {len(state)} tensors")
        recurrent, (window, fill) = state[:n_rec], state[n_rec:]
        scan = use_scan(self)
        seq = x
        finals: list[Tensors] = []
        for i, layer in enumerate(self.layers):
            seq, final = layer(seq, tuple(s[:, i] for s in recurrent), scan=scan)
            finals.append(final)
        y, new_window, new_fill = self._attend(seq, window, fill)
        new_recurrent = [torch.stack([f[j] for f in finals], dim=1) for j in range(n_rec)]
        return y, *new_recurrent, new_window, new_fill

    def _attend(self, top: Tensor, window: Tensor, fill: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``top[B, T, H]`` -> ``(y[B, T, O], new window, new fill)`` (see the module docstring)."""
        K = self.window
        time = top.shape[1]
        fill = fill.clamp(0, K)  # a corrupt counter must never mask out h_t itself
        memory = torch.cat([window, top], dim=1)  # [B, K+T, H], chronological
        rows = (
            torch.arange(time, device=top.device)[:, None]
            + 1
            + torch.arange(K, device=top.device)[None, :]
        )  # [T, K]: the rows step t sees
        batch = top.shape[0]
        flat = rows.reshape(-1)  # one Gather along the time axis, no transposes around it

        def windows(seq: Tensor) -> Tensor:  # [B, K+T, D] -> [B, T, K, D]
            return seq.index_select(1, flat).reshape(batch, time, K, seq.shape[-1])

        keys = windows(self.attn_key(memory))  # [B, T, K, A]
        query = self.attn_query(top)[:, :, None, :]  # [B, T, 1, A]
        scores = torch.tanh(query + keys) @ self.attn_v  # [B, T, K]
        filled = rows[None] >= (K - fill)[:, None, None]
        scores = scores.masked_fill(~filled, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        context = (alpha[:, :, None, :] @ windows(memory)).squeeze(2)  # [B, T, H]
        y = self.head(torch.cat([top, context], dim=-1))
        return y, memory[:, time:], torch.clamp(fill + time, max=K)

    def export_onnx(self, path: Path, opset: int) -> None:
        export_scan_model(self, path, opset)

    def hyperparameters(self) -> dict[str, str]:
        return {
            **super().hyperparameters(),
            "cell": self.cell,
            "window": str(self.window),
            "attention_size": str(self.attention_size),
        }
