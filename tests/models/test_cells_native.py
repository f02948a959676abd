"""The native-operator variants in torch (float64) against the NumPy references, plus their
construction contract (state specs, options, initialisation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import reference_native as ref
import torch
from torch import nn

from rnnserve_models.base import RecurrentModel
from rnnserve_models.cells._native import NativeStreamingModel
from rnnserve_models.cells.bidirectional import BidirectionalRNN
from rnnserve_models.cells.peephole_lstm import PeepholeLSTM
from rnnserve_models.variants import build_model

INPUT, OUTPUT, HIDDEN, BATCH, TIME = 3, 2, 5, 3, 6
RTOL, ATOL = 1e-9, 1e-12
# variant -> (reference kind, state names)
STREAMING = {
    "elman": ("rnn", ("h",)),
    "lstm": ("lstm", ("h", "c")),
    "gru": ("gru", ("h",)),
    "peephole_lstm": ("lstm", ("h", "c")),
}
Perturb = Callable[..., nn.Module]


def _reference_layers(model: RecurrentModel, kind: str) -> list[ref.Layer]:
    if isinstance(model, PeepholeLSTM):
        return ref.peephole_layers(model.layers)
    assert isinstance(model, NativeStreamingModel)
    return ref.native_layers(model.rnn, kind)


def _inputs(model: RecurrentModel, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, TIME, INPUT, generator=gen, dtype=torch.float64)
    states = [
        0.5 * torch.randn(BATCH, *s.shape, generator=gen, dtype=torch.float64)
        for s in model.state_specs()
    ]
    return x, states


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("variant", sorted(STREAMING))
def test_streaming_matches_numpy(variant: str, num_layers: int, perturb: Perturb) -> None:
    kind, names = STREAMING[variant]
    model = build_model(variant, INPUT, OUTPUT, HIDDEN, num_layers)
    perturb(model, seed=num_layers)
    model.double().eval()
    assert [s.name for s in model.state_specs()] == list(names)
    x, states = _inputs(model, seed=7)
    with torch.no_grad():
        y, *new_states = model(x, *states)
    want_y, want_states = ref.run_stack(
        kind,
        _reference_layers(model, kind),
        ref.head_weights(model.head),
        x.numpy(),
        tuple(s.numpy() for s in states),
    )
    np.testing.assert_allclose(y.numpy(), want_y, rtol=RTOL, atol=ATOL)
    assert len(new_states) == len(want_states)
    for got, want in zip(new_states, want_states, strict=True):
        assert got.shape == (BATCH, num_layers, HIDDEN)
        np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bidirectional_matches_numpy(cell: str, num_layers: int, perturb: Perturb) -> None:
    model = build_model("bidirectional", INPUT, OUTPUT, HIDDEN, num_layers, cell=cell)
    assert isinstance(model, BidirectionalRNN)
    perturb(model, seed=num_layers)
    model.double().eval()
    x, states = _inputs(model, seed=3)
    assert states == []
    with torch.no_grad():
        outputs = model(x)
    want = ref.run_bidirectional(
        cell,
        ref.native_layers(model.rnn, cell),
        ref.native_layers(model.rnn, cell, suffix="_reverse"),
        ref.head_weights(model.head),
        x.numpy(),
    )
    assert len(outputs) == 1
    np.testing.assert_allclose(outputs[0].numpy(), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("variant", sorted(STREAMING))
def test_chunks_carry_state(variant: str, perturb: Perturb) -> None:
    """Two chunks with the returned state carried equal one chunk (torch side)."""
    model = perturb(build_model(variant, INPUT, OUTPUT, HIDDEN, 2)).double().eval()
    assert isinstance(model, RecurrentModel)
    x, states = _inputs(model, seed=11)
    with torch.no_grad():
        whole = model(x, *states)
        first = model(x[:, :2], *states)
        second = model(x[:, 2:], *first[1:])
    np.testing.assert_allclose(
        torch.cat([first[0], second[0]], dim=1).numpy(), whole[0].numpy(), rtol=RTOL, atol=ATOL
    )
    for got, want in zip(second[1:], whole[1:], strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("variant", sorted(STREAMING))
def test_no_state_means_initial_state(variant: str) -> None:
    model = build_model(variant, INPUT, OUTPUT, HIDDEN, 2).eval()
    x = torch.randn(2, 4, INPUT)
    with torch.no_grad():
        implicit = model(x)
        explicit = model(x, *model.initial_state(2))
    for a, b in zip(implicit, explicit, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _recurrent_blocks(model: RecurrentModel) -> list[tuple[torch.Tensor, int]]:
    """(weight_hh, number of gates) of every layer and direction."""
    if isinstance(model, PeepholeLSTM):
        return [(layer.weight_hh, 4) for layer in model.layers]
    rnn = model.rnn
    assert isinstance(rnn, nn.RNNBase)
    gates = {"RNN_TANH": 1, "LSTM": 4, "GRU": 3}[rnn.mode]
    return [(w, gates) for name, w in rnn.named_parameters() if name.startswith("weight_hh")]


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        ("elman", {}),
        ("lstm", {}),
        ("gru", {}),
        ("peephole_lstm", {}),
        ("bidirectional", {"cell": "lstm"}),
        ("bidirectional", {"cell": "gru"}),
        ("bidirectional", {"cell": "rnn"}),
    ],
)
def test_initialisation(variant: str, options: dict[str, str]) -> None:
    hidden = 6
    model = build_model(variant, INPUT, OUTPUT, hidden, 2, **options)
    blocks = _recurrent_blocks(model)
    assert len(blocks) == (4 if variant == "bidirectional" else 2)
    for weight, gates in blocks:
        assert weight.shape == (gates * hidden, hidden)
        for block in weight.detach().split(hidden):
            torch.testing.assert_close(block @ block.T, torch.eye(hidden), atol=1e-5, rtol=0)
    is_lstm = variant in ("lstm", "peephole_lstm") or options.get("cell") == "lstm"
    for name, bias in model.named_parameters():
        if "bias" not in name or name.startswith("head"):
            continue
        expected = torch.zeros_like(bias)
        if is_lstm and (variant == "peephole_lstm" or "bias_ih" in name):
            expected[hidden : 2 * hidden] = 1.0  # forget gate, once per layer and direction
        torch.testing.assert_close(bias.detach(), expected, rtol=0, atol=0)
    if variant == "peephole_lstm":
        assert isinstance(model, PeepholeLSTM)
        assert all(not layer.peephole.detach().any() for layer in model.layers)


def test_options_and_hyperparameters() -> None:
    assert build_model("lstm", 1, 1, 4, 1, forget_bias=2.0).hyperparameters() == {
        "hidden_size": "4",
        "num_layers": "1",
        "forget_bias": "2.0",
    }
    assert build_model("bidirectional", 1, 1, 4, 3).hyperparameters()["cell"] == "gru"
    assert build_model("gru", 1, 1).hyperparameters()["linear_before_reset"] == "1"
    assert build_model("peephole_lstm", 1, 1).hyperparameters()["num_layers"] == "1"
    with pytest.raises(ValueError, match="unknown cell"):
        build_model("bidirectional", 1, 1, cell="transformer")
    with pytest.raises(TypeError):
        build_model("gru", 1, 1, forget_bias=1.0)
    with pytest.raises(ValueError, match="num_layers"):
        build_model("elman", 1, 1, 4, 0)
    with pytest.raises(ValueError, match="no state"):
        build_model("bidirectional", 2, 1)(torch.zeros(1, 2, 2), torch.zeros(1, 4))
