"""Peephole GRU: a GRU with a second, cell-like state ``c`` that the gates look at.

Per layer ``l`` (input ``x_t`` is the model input for ``l = 0`` and layer ``l-1``'s ``h_t`` above),
with ``σ`` the logistic sigmoid and ``⊙`` the element-wise product::

    z_t = σ(W_z x_t + U_z h_{t-1} + v_z ⊙ c_{t-1} + b_z)
    r_t = σ(W_r x_t + U_r h_{t-1} + v_r ⊙ c_{t-1} + b_r)
    h̃_t = tanh(W_h x_t + U_h (r_t ⊙ h_{t-1}) + b_h)
    c_t = z_t ⊙ c_{t-1} + (1 - z_t) ⊙ h̃_t
    h_t = r_t ⊙ h_{t-1} + (1 - r_t) ⊙ c_t
    y_t = W_y h_t^{(L-1)} + b_y                      (linear head on the top layer)

The peephole matrices are *diagonal* (``V_z = diag(v_z)``, ``V_r = diag(v_r)``), as in the
peephole LSTM (Gers & Schmidhuber 2000) and ONNX's ``LSTM`` ``P`` input: ``H`` weights each
instead of ``H²``. Parameters per layer, stored gate-stacked in the order ``z, r, h``:
``weight_ih [3H, I]``, ``weight_hh [3H, H]`` (``U_z; U_r; U_h``), ``peephole [2, H]``
(``v_z; v_r``), ``bias [3H]``.

States (batch-major): ``h`` and ``c``, each ``[B, num_layers, H]``, zero for a new session.
No native ONNX operator has this form: the time loop exports as one ``Scan`` per layer.
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


class PeepholeGRULayer(nn.Module):
    """One layer of the peephole GRU over a whole chunk."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        h = hidden_size
        self.hidden_size = h
        self.weight_ih = nn.Parameter(torch.empty(3 * h, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * h, h))
        self.peephole = nn.Parameter(torch.empty(2, h))
        self.bias = nn.Parameter(torch.zeros(3 * h))
        bound = 1.0 / math.sqrt(h)
        with torch.no_grad():
            nn.init.uniform_(self.weight_ih, -bound, bound)
            nn.init.uniform_(self.peephole, -bound, bound)
        orthogonal_blocks_(self.weight_hh, h)

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor, *, scan: bool) -> tuple[Tensor, ...]:
        """``x[B, T, I]``, ``h0, c0 [B, H]`` -> ``(h_seq[B, T, H], h_T, c_T)``."""
        H = self.hidden_size
        # Input projections of every step at once, outside the loop; split per use so the
        # step slices nothing.
        gx = (x @ self.weight_ih.T + self.bias).transpose(0, 1)  # [T, B, 3H]
        gx_zr, gx_h = gx[..., : 2 * H], gx[..., 2 * H :]
        # Transposed copies, not views: scan refuses two lifted inputs aliasing one tensor.
        u_zr = self.weight_hh[: 2 * H].T.contiguous()
        u_h = self.weight_hh[2 * H :].T.contiguous()
        v_zr = self.peephole.reshape(1, 2 * H)

        def step(carry: Tensors, inputs: Tensors) -> tuple[Tensors, Tensors]:
            h, c = carry
            g_zr, g_h = inputs
            zr = torch.sigmoid(g_zr + h @ u_zr + v_zr * torch.cat([c, c], dim=1))
            z = zr[:, :H]
            r = zr[:, H:]
            cand = torch.tanh(g_h + (r * h) @ u_h)
            c_new = z * c + (1 - z) * cand
            h_new = r * h + (1 - r) * c_new
            return (h_new, c_new), (h_new,)

        (h_t, c_t), (seq,) = time_loop(step, (h0, c0), (gx_zr, gx_h), scan=scan)
        return seq.transpose(0, 1), h_t, c_t


class PeepholeGRU(RecurrentModel):
    """Stacked peephole GRU (diagonal peepholes) with a linear head; states ``h``, ``c``."""

    variant = "peephole_gru"

    def __init__(
        self, input_size: int, output_size: int, hidden_size: int = 32, num_layers: int = 1
    ) -> None:
        super().__init__(input_size, output_size, hidden_size, num_layers)
        self.layers = nn.ModuleList(
            PeepholeGRULayer(input_size if i == 0 else hidden_size, hidden_size)
            for i in range(num_layers)
        )
        self.head = nn.Linear(hidden_size, output_size)
        self.force_scan = False

    def state_specs(self) -> list[StateSpec]:
        shape = (self.num_layers, self.hidden_size)
        return [StateSpec("h", shape), StateSpec("c", shape)]

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if not state:
            state = tuple(self.initial_state(x.shape[0], x.device))
        if len(state) != 2:
            raise ValueError(f"expected states (h, c), got {len(state)} tensors")
        h, c = state
        scan = use_scan(self)
        seq = x
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            seq, h_t, c_t = layer(seq, h[:, i], c[:, i], scan=scan)
            hs.append(h_t)
            cs.append(c_t)
        return self.head(seq), torch.stack(hs, dim=1), torch.stack(cs, dim=1)

    def export_onnx(self, path: Path, opset: int) -> None:
        export_scan_model(self, path, opset)

    def hyperparameters(self) -> dict[str, str]:
        return {**super().hyperparameters(), "peephole": "diagonal"}
