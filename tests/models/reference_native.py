"""Independent NumPy float64 references for the native-operator variants, written from the
equations in the cells' docstrings (not by calling the torch modules).

Weights come from the torch modules only as arrays: ``*_layers(...)`` split torch's packed
parameters into named per-gate matrices using torch's documented layouts (nn.LSTM rows i, f, g, o;
nn.GRU rows r, z, n; PeepholeLSTMLayer rows i, f, g, o and peephole rows p_i, p_f, p_o).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

Array = NDArray[np.float64]
Layer = dict[str, Array]
State = tuple[Array, ...]

LSTM_GATES = ("i", "f", "g", "o")
GRU_GATES = ("r", "z", "n")


def _np(t: torch.Tensor) -> Array:
    return t.detach().cpu().to(torch.float64).numpy()


def sigmoid(a: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-a))


# --- weight extraction -------------------------------------------------------------------------


def _split(packed: Array, gates: tuple[str, ...], prefix: str) -> Layer:
    blocks = np.split(packed, len(gates), axis=0)
    return {f"{prefix}_{g}": b for g, b in zip(gates, blocks, strict=True)}


def native_layers(rnn: nn.RNNBase, kind: str, suffix: str = "") -> list[Layer]:
    """Per-layer weights of a torch nn.RNN / nn.LSTM / nn.GRU (``suffix="_reverse"`` for the
    backward direction)."""
    layers = []
    for k in range(rnn.num_layers):
        w_ih = _np(getattr(rnn, f"weight_ih_l{k}{suffix}"))
        w_hh = _np(getattr(rnn, f"weight_hh_l{k}{suffix}"))
        b_ih = _np(getattr(rnn, f"bias_ih_l{k}{suffix}"))
        b_hh = _np(getattr(rnn, f"bias_hh_l{k}{suffix}"))
        if kind == "rnn":
            layers.append({"W_x": w_ih, "W_h": w_hh, "b": b_ih + b_hh})
        elif kind == "lstm":
            layer = {**_split(w_ih, LSTM_GATES, "W"), **_split(w_hh, LSTM_GATES, "R")}
            layer |= _split(b_ih + b_hh, LSTM_GATES, "b")
            layers.append(layer)
        elif kind == "gru":
            layer = {**_split(w_ih, GRU_GATES, "W"), **_split(w_hh, GRU_GATES, "R")}
            layer |= _split(b_ih, GRU_GATES, "bi") | _split(b_hh, GRU_GATES, "bh")
            layers.append(layer)
        else:
            raise ValueError(kind)
    return layers


def peephole_layers(layers: nn.ModuleList) -> list[Layer]:
    out = []
    for layer in layers:
        entry = {
            **_split(_np(layer.weight_ih), LSTM_GATES, "W"),
            **_split(_np(layer.weight_hh), LSTM_GATES, "R"),
            **_split(_np(layer.bias), LSTM_GATES, "b"),
        }
        p = _np(layer.peephole)
        entry |= {"p_i": p[0], "p_f": p[1], "p_o": p[2]}
        out.append(entry)
    return out


def head_weights(head: nn.Linear) -> tuple[Array, Array]:
    return _np(head.weight), _np(head.bias)


# --- one step of each cell (x [B, I], states [B, H]) --------------------------------------------


def elman_step(p: Layer, x: Array, h: Array) -> tuple[Array]:
    return (np.tanh(x @ p["W_x"].T + h @ p["W_h"].T + p["b"]),)


def lstm_step(p: Layer, x: Array, h: Array, c: Array) -> tuple[Array, Array]:
    """Plain LSTM, or Gers & Schmidhuber's peephole LSTM when the layer has p_i, p_f, p_o."""

    def pre(g: str) -> Array:
        return x @ p[f"W_{g}"].T + h @ p[f"R_{g}"].T + p[f"b_{g}"]

    peep = "p_i" in p
    i = sigmoid(pre("i") + (p["p_i"] * c if peep else 0.0))
    f = sigmoid(pre("f") + (p["p_f"] * c if peep else 0.0))
    g = np.tanh(pre("g"))
    c_new = f * c + i * g
    o = sigmoid(pre("o") + (p["p_o"] * c_new if peep else 0.0))
    return o * np.tanh(c_new), c_new


def gru_step(p: Layer, x: Array, h: Array) -> tuple[Array]:
    r = sigmoid(x @ p["W_r"].T + p["bi_r"] + h @ p["R_r"].T + p["bh_r"])
    z = sigmoid(x @ p["W_z"].T + p["bi_z"] + h @ p["R_z"].T + p["bh_z"])
    n = np.tanh(x @ p["W_n"].T + p["bi_n"] + r * (h @ p["R_n"].T + p["bh_n"]))
    return ((1.0 - z) * n + z * h,)


STEPS: dict[str, Callable[..., State]] = {"rnn": elman_step, "lstm": lstm_step, "gru": gru_step}
N_STATES = {"rnn": 1, "lstm": 2, "gru": 1}
RECURRENT_KEY = {"rnn": "W_h", "lstm": "R_i", "gru": "R_r"}  # an [H, H] matrix of each kind


# --- sequences ----------------------------------------------------------------------------------


def run_layer(kind: str, p: Layer, xs: Array, state: State) -> tuple[Array, State]:
    """xs [B, T, I] -> (hs [B, T, H], final state)."""
    outputs = []
    for t in range(xs.shape[1]):
        state = STEPS[kind](p, xs[:, t], *state)
        outputs.append(state[0])
    return np.stack(outputs, axis=1), state


def run_stack(
    kind: str, layers: list[Layer], head: tuple[Array, Array], xs: Array, states: State
) -> tuple[Array, State]:
    """Stacked streaming model. ``states`` are batch-major [B, L, H]; returns (y, new states)."""
    seq = xs
    finals: list[State] = []
    for k, p in enumerate(layers):
        seq, final = run_layer(kind, p, seq, tuple(s[:, k] for s in states))
        finals.append(final)
    w_y, b_y = head
    new_states = tuple(np.stack([f[j] for f in finals], axis=1) for j in range(len(states)))
    return seq @ w_y.T + b_y, new_states


def run_bidirectional(
    kind: str,
    forward_layers: list[Layer],
    backward_layers: list[Layer],
    head: tuple[Array, Array],
    xs: Array,
) -> Array:
    """Whole-sequence bidirectional model from zero states."""
    seq = xs
    batch = xs.shape[0]
    for p_f, p_b in zip(forward_layers, backward_layers, strict=True):
        hidden = p_f[RECURRENT_KEY[kind]].shape[0]
        zeros = tuple(np.zeros((batch, hidden)) for _ in range(N_STATES[kind]))
        fwd, _ = run_layer(kind, p_f, seq, zeros)
        bwd_reversed, _ = run_layer(kind, p_b, seq[:, ::-1], zeros)
        seq = np.concatenate([fwd, bwd_reversed[:, ::-1]], axis=-1)
    w_y, b_y = head
    return seq @ w_y.T + b_y
