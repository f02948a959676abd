"""Clockwork RNN (Koutník, Greff, Gomez & Schmidhuber 2014), stacked, with a linear head.

The ``H`` hidden units of a layer are split into ``g = num_modules`` modules of ``k = H / g``
units; module ``i`` (``i = 1..g``, units ``(i-1)k .. ik-1``) has the period ``T_i = 2^(i-1)``.
With ``t`` the *absolute* step of the session, per layer (input ``x_t`` is the model input for the
first layer and the layer below's ``h_t`` above)::

    a_t   = tanh(W_in x_t + (M ⊙ W_h) h_{t-1} + b)
    h_t,i = a_t,i      if t mod T_i == 0     (module i fires)
    h_t,i = h_{t-1},i  otherwise             (module i keeps its value)
    y_t   = W_y h_t^{(top)} + b_y

``M`` is block-upper-triangular: block ``(i, j)`` (rows: receiving module ``i``, columns: sending
module ``j``) is ones iff ``j >= i``, so a module hears itself and *slower* modules, never faster
ones. Only those ``g(g+1)/2`` of ``g²`` blocks are parameters of the model
(:meth:`ClockworkRNN.effective_parameter_count`); ``W_h`` is stored full and multiplied by ``M``,
so masked entries stay zero and get no gradient. All layers follow the same schedule.

States (batch-major): ``h`` ``[B, num_layers, H]`` (zero for a new session) and ``step`` int64
``[B]``, the absolute ``t`` of the chunk's first step. A new session starts at ``t = 0``, where
every module fires; the graph returns ``step + T``. The firing mask of a chunk is computed outside
the time loop from ``step[:, None] + arange(T)``, so one batched call serves sessions at different
positions. No native ONNX operator has this form: the loop exports as one ``Scan`` per layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnserve_models.base import RecurrentModel, StateSpec
from rnnserve_models.scan_export import Tensors, export_scan_model, time_loop, use_scan


def module_periods(hidden_size: int, num_modules: int) -> Tensor:
    """Period of every hidden unit, int64 ``[H]``: ``2^(i-1)`` for the units of module ``i``."""
    k = hidden_size // num_modules
    return torch.tensor([2 ** (u // k) for u in range(hidden_size)], dtype=torch.int64)


def recurrent_mask(hidden_size: int, num_modules: int) -> Tensor:
    """The block-upper-triangular ``[H, H]`` mask: 1 where unit ``col``'s module is at least as
    slow as unit ``row``'s."""
    k = hidden_size // num_modules
    module = torch.arange(hidden_size) // k
    return (module[None, :] >= module[:, None]).to(torch.float32)


class ClockworkLayer(nn.Module):
    """One clockwork layer over a chunk, given the chunk's firing mask."""

    mask: Tensor

    def __init__(self, input_size: int, hidden_size: int, num_modules: int) -> None:
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.register_buffer("mask", recurrent_mask(hidden_size, num_modules))
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            nn.init.uniform_(self.weight_ih, -bound, bound)
            # Orthogonal, then masked: the stored matrix equals the one in use.
            nn.init.orthogonal_(self.weight_hh)
            self.weight_hh.mul_(self.mask)

    def forward(self, x: Tensor, h0: Tensor, fire: Tensor, *, scan: bool) -> tuple[Tensor, Tensor]:
        """``x[B, T, I]``, ``h0[B, H]``, ``fire[B, T, H]`` (bool) -> ``(h_seq[B, T, H], h_T)``."""
        gx = (x @ self.weight_ih.T + self.bias).transpose(0, 1)  # [T, B, H]
        w_hh = self.weight_hh * self.mask

        def step(carry: Tensors, inputs: Tensors) -> tuple[Tensors, Tensors]:
            (h,) = carry
            g, f = inputs
            h_new = torch.where(f, torch.tanh(g + h @ w_hh.T), h)
            return (h_new,), (h_new,)

        (h_t,), (seq,) = time_loop(step, (h0,), (gx, fire.transpose(0, 1)), scan=scan)
        return seq.transpose(0, 1), h_t


class ClockworkRNN(RecurrentModel):
    """Stacked Clockwork RNN with a linear head; states ``h`` and the int64 ``step`` counter."""

    variant = "clockwork"
    periods: Tensor

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 32,
        num_layers: int = 1,
        *,
        num_modules: int = 4,
    ) -> None:
        super().__init__(input_size, output_size, hidden_size, num_layers)
        if num_modules < 1 or hidden_size % num_modules:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a positive multiple of num_modules "
                f"({num_modules})"
            )
        self.num_modules = num_modules
        self.register_buffer("periods", module_periods(hidden_size, num_modules))
        self.layers = nn.ModuleList(
            ClockworkLayer(input_size if i == 0 else hidden_size, hidden_size, num_modules)
            for i in range(num_layers)
        )
        self.head = nn.Linear(hidden_size, output_size)
        self.force_scan = False

    def state_specs(self) -> list[StateSpec]:
        return [
            StateSpec("h", (self.num_layers, self.hidden_size)),
            StateSpec("step", (), torch.int64),
        ]

    def firing(self, step: Tensor, time: int) -> Tensor:
        """Bool ``[B, T, H]``: whether each unit is recomputed at each step of the chunk."""
        t = step[:, None] + torch.arange(time, device=step.device)[None, :]
        return torch.remainder(t[:, :, None], self.periods) == 0

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if not state:
            state = tuple(self.initial_state(x.shape[0], x.device))
        if len(state) != 2:
            raise ValueError(f"expected states (h, step), got {len(state)} tensors")
        h, step = state
        time = x.shape[1]
        fire = self.firing(step, time)
        scan = use_scan(self)
        seq = x
        hs: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            seq, h_t = layer(seq, h[:, i], fire, scan=scan)
            hs.append(h_t)
        return self.head(seq), torch.stack(hs, dim=1), step + time

    def export_onnx(self, path: Path, opset: int) -> None:
        export_scan_model(self, path, opset)

    def effective_parameter_count(self) -> int:
        """Trainable parameters that can be non-zero: the masked-out recurrent blocks excluded."""
        total = sum(p.numel() for p in self.parameters())
        mask = recurrent_mask(self.hidden_size, self.num_modules)
        masked_out = self.num_layers * int((mask == 0).sum())
        return total - masked_out

    def hyperparameters(self) -> dict[str, str]:
        return {
            **super().hyperparameters(),
            "num_modules": str(self.num_modules),
            "periods": ",".join(str(2**i) for i in range(self.num_modules)),
            "effective_parameters": str(self.effective_parameter_count()),
            "first_step": "0",
        }
