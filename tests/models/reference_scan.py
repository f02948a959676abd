"""Independent NumPy float64 references for the Scan-exported variants (peephole GRU, Clockwork
RNN, attention RNN), written from the equations in the cells' docstrings, not by calling the
torch modules.

Weights come from the torch modules only as arrays, split into named per-gate matrices using the
documented layouts (peephole GRU rows z, r, h; attention GRU rows r, z, n; LSTM rows i, f, g, o).
Unlike the torch code, every reference loops step-major over one batch item at a time, with all
layers inside the step.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from rnnserve_models.cells.attention import AttentionRNN, RecurrentLayer
from rnnserve_models.cells.clockwork import ClockworkLayer
from rnnserve_models.cells.peephole_gru import PeepholeGRULayer

Array = NDArray[np.float64]
Layer = dict[str, Array]


def np64(t: torch.Tensor) -> Array:
    return t.detach().cpu().to(torch.float64).numpy()


def sigmoid(a: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-a))


def _gates(packed: Array, names: tuple[str, ...], prefix: str) -> Layer:
    blocks = np.split(packed, len(names), axis=0)
    return {f"{prefix}_{n}": b for n, b in zip(names, blocks, strict=True)}


def _head(head: nn.Linear) -> tuple[Array, Array]:
    return np64(head.weight), np64(head.bias)


# --- peephole GRU ------------------------------------------------------------------------------


def peephole_gru_layers(layers: Iterable[nn.Module]) -> list[Layer]:
    out = []
    for layer in layers:
        assert isinstance(layer, PeepholeGRULayer)
        d = _gates(np64(layer.weight_ih), ("z", "r", "h"), "W")
        d |= _gates(np64(layer.weight_hh), ("z", "r", "h"), "U")
        d |= _gates(np64(layer.bias), ("z", "r", "h"), "b")
        d["v_z"], d["v_r"] = np64(layer.peephole)
        out.append(d)
    return out


def peephole_gru(
    layers: list[Layer], head: nn.Linear, x: Array, h0: Array, c0: Array
) -> tuple[Array, Array, Array]:
    """``x[B, T, I]``, ``h0, c0 [B, L, H]`` -> ``(y, h_T, c_T)``."""
    w_y, b_y = _head(head)
    h, c = h0.copy(), c0.copy()
    ys = []
    for b in range(x.shape[0]):
        y_b = []
        for t in range(x.shape[1]):
            inp = x[b, t]
            for k, p in enumerate(layers):
                hp, cp = h[b, k], c[b, k]
                z = sigmoid(p["W_z"] @ inp + p["U_z"] @ hp + p["v_z"] * cp + p["b_z"])
                r = sigmoid(p["W_r"] @ inp + p["U_r"] @ hp + p["v_r"] * cp + p["b_r"])
                cand = np.tanh(p["W_h"] @ inp + p["U_h"] @ (r * hp) + p["b_h"])
                c[b, k] = z * cp + (1 - z) * cand
                h[b, k] = r * hp + (1 - r) * c[b, k]
                inp = h[b, k]
            y_b.append(w_y @ inp + b_y)
        ys.append(y_b)
    return np.array(ys), h, c


# --- Clockwork RNN -----------------------------------------------------------------------------


def clockwork_mask(hidden: int, modules: int) -> Array:
    """Block-upper-triangular mask built block by block: receiving module i hears module j iff
    j >= i (j at least as slow)."""
    k = hidden // modules
    mask = np.zeros((hidden, hidden))
    for i in range(modules):
        for j in range(i, modules):
            mask[i * k : (i + 1) * k, j * k : (j + 1) * k] = 1.0
    return mask


def fired_modules(t: int, modules: int) -> list[int]:
    """0-based indices of the modules recomputed at absolute step t (period of module i: 2^i)."""
    return [i for i in range(modules) if t % (2**i) == 0]


def clockwork_layers(layers: Iterable[nn.Module]) -> list[Layer]:
    out = []
    for layer in layers:
        assert isinstance(layer, ClockworkLayer)
        out.append(
            {"W_in": np64(layer.weight_ih), "W_h": np64(layer.weight_hh), "b": np64(layer.bias)}
        )
    return out


def clockwork(
    layers: list[Layer], head: nn.Linear, modules: int, x: Array, h0: Array, step0: Array
) -> tuple[Array, Array, Array]:
    """``x[B, T, I]``, ``h0[B, L, H]``, ``step0[B]`` -> ``(y, h_T, step_T)``."""
    w_y, b_y = _head(head)
    hidden = h0.shape[-1]
    k = hidden // modules
    mask = clockwork_mask(hidden, modules)
    h = h0.copy()
    ys = []
    for b in range(x.shape[0]):
        y_b = []
        for t in range(x.shape[1]):
            absolute = int(step0[b]) + t
            inp = x[b, t]
            for layer_idx, p in enumerate(layers):
                a = np.tanh(p["W_in"] @ inp + (mask * p["W_h"]) @ h[b, layer_idx] + p["b"])
                new = h[b, layer_idx].copy()
                for i in fired_modules(absolute, modules):
                    new[i * k : (i + 1) * k] = a[i * k : (i + 1) * k]
                h[b, layer_idx] = new
                inp = new
            y_b.append(w_y @ inp + b_y)
        ys.append(y_b)
    return np.array(ys), h, step0 + x.shape[1]


# --- attention RNN -----------------------------------------------------------------------------


def attention_layers(layers: Iterable[nn.Module], cell: str) -> list[Layer]:
    names = ("r", "z", "n") if cell == "gru" else ("i", "f", "g", "o")
    out = []
    for layer in layers:
        assert isinstance(layer, RecurrentLayer)
        d = _gates(np64(layer.weight_ih), names, "W")
        d |= _gates(np64(layer.weight_hh), names, "U")
        d |= _gates(np64(layer.bias), names, "b")
        if layer.bias_hn is not None:
            d["b_hn"] = np64(layer.bias_hn)
        out.append(d)
    return out


def _gru_step(p: Layer, x: Array, h: Array) -> Array:
    r = sigmoid(p["W_r"] @ x + p["b_r"] + p["U_r"] @ h)
    z = sigmoid(p["W_z"] @ x + p["b_z"] + p["U_z"] @ h)
    n = np.tanh(p["W_n"] @ x + p["b_n"] + r * (p["U_n"] @ h + p["b_hn"]))
    return (1 - z) * n + z * h


def _lstm_step(p: Layer, x: Array, h: Array, c: Array) -> tuple[Array, Array]:
    i = sigmoid(p["W_i"] @ x + p["U_i"] @ h + p["b_i"])
    f = sigmoid(p["W_f"] @ x + p["U_f"] @ h + p["b_f"])
    g = np.tanh(p["W_g"] @ x + p["U_g"] @ h + p["b_g"])
    o = sigmoid(p["W_o"] @ x + p["U_o"] @ h + p["b_o"])
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


def attention(model: AttentionRNN, x: Array, states: list[Array]) -> tuple[Array, list[Array]]:
    """The attention RNN on ``x[B, T, I]`` and its states ``(h[, c], window, fill)``.

    The window is modelled as a growing list of rows (the K stored rows, oldest first, then every
    new top state) and a count of valid rows; step t attends over the valid rows among the last K.
    """
    cell = model.cell
    K = model.window
    layers = attention_layers(model.layers, cell)
    w_q, b_q = np64(model.attn_query.weight), np64(model.attn_query.bias)
    w_k = np64(model.attn_key.weight)
    v = np64(model.attn_v)
    w_y, b_y = _head(model.head)
    h = states[0].copy()
    c = states[1].copy() if cell == "lstm" else None
    window, fill = states[-2], states[-1]
    ys, windows, fills = [], [], []
    for b in range(x.shape[0]):
        rows = list(window[b])
        valid = int(fill[b])
        y_b = []
        for t in range(x.shape[1]):
            inp = x[b, t]
            for k, p in enumerate(layers):
                if c is None:
                    h[b, k] = _gru_step(p, inp, h[b, k])
                else:
                    h[b, k], c[b, k] = _lstm_step(p, inp, h[b, k], c[b, k])
                inp = h[b, k].copy()  # a copy: h[b, k] is overwritten at the next step
            rows.append(inp)
            valid = min(valid + 1, K)
            memory = rows[-valid:]
            scores = np.array([v @ np.tanh(w_q @ inp + w_k @ m + b_q) for m in memory])
            alpha = np.exp(scores - scores.max())
            alpha /= alpha.sum()
            context = sum(a * m for a, m in zip(alpha, memory, strict=True))
            y_b.append(w_y @ np.concatenate([inp, context]) + b_y)
        ys.append(y_b)
        windows.append(rows[-K:])
        fills.append(valid)
    recurrent = [h] if c is None else [h, c]
    return np.array(ys), [*recurrent, np.array(windows), np.array(fills, dtype=np.int64)]
