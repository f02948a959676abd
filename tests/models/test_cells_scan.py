"""The Scan-exported variants (peephole GRU, Clockwork RNN, attention RNN): torch in float64
against the NumPy references, their structure (clock schedule, block mask, window), the two
forms of the time loop, chunking, and the exported graphs in ONNX Runtime (CPU provider)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import reference_scan as ref
import torch
from torch import nn

from rnnserve_models.base import RecurrentModel
from rnnserve_models.cells.attention import AttentionRNN
from rnnserve_models.cells.clockwork import ClockworkLayer, ClockworkRNN
from rnnserve_models.cells.peephole_gru import PeepholeGRU
from rnnserve_models.onnx_export import DEFAULT_OPSET
from rnnserve_models.variants import build_model

INPUT, OUTPUT, BATCH, TIME = 3, 2, 3, 7
HIDDEN = 8  # divisible by the Clockwork's 4 modules
WINDOW = 4  # < TIME, so runs overflow the attention window
RTOL, ATOL = 1e-9, 1e-12
ORT_TOL = 1e-5
Perturb = Callable[..., nn.Module]
# (variant, options) of every model under test
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "peephole_gru": ("peephole_gru", {}),
    "clockwork": ("clockwork", {"num_modules": 4}),
    "attention_gru": ("attention", {"cell": "gru", "window": WINDOW}),
    "attention_lstm": ("attention", {"cell": "lstm", "window": WINDOW}),
}


def _model(case: str, layers: int, perturb: Perturb | None = None) -> RecurrentModel:
    variant, options = CASES[case]
    torch.manual_seed(0)
    model = build_model(variant, INPUT, OUTPUT, HIDDEN, layers, **options).double()
    if perturb is not None:
        perturb(model)
    return model


def _states(model: RecurrentModel, batch: int = BATCH, seed: int = 1) -> list[torch.Tensor]:
    """Random float states and counters at *different* positions per batch item (window partly
    and fully filled, clocks mid-period)."""
    gen = torch.Generator().manual_seed(seed)
    states = []
    for spec in model.state_specs():
        if spec.dtype.is_floating_point:
            states.append(0.5 * torch.randn(batch, *spec.shape, generator=gen, dtype=torch.float64))
        elif spec.name == "fill":
            states.append(torch.tensor([0, 2, WINDOW, 1, 3][:batch]))
        else:  # the Clockwork's absolute step
            states.append(torch.tensor([0, 3, 6, 13, 8][:batch]))
    return states


def _x(batch: int = BATCH, time: int = TIME, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, time, INPUT, generator=gen, dtype=torch.float64)


def _reference(model: RecurrentModel, x: torch.Tensor, states: list[torch.Tensor]) -> list[Any]:
    xs = ref.np64(x)
    st = [s.numpy() if not s.is_floating_point() else ref.np64(s) for s in states]
    if isinstance(model, PeepholeGRU):
        layers = ref.peephole_gru_layers(model.layers)
        return list(ref.peephole_gru(layers, model.head, xs, st[0], st[1]))
    if isinstance(model, ClockworkRNN):
        layers = ref.clockwork_layers(model.layers)
        return list(ref.clockwork(layers, model.head, model.num_modules, xs, st[0], st[1]))
    assert isinstance(model, AttentionRNN)
    y, new = ref.attention(model, xs, st)
    return [y, *new]


def _assert_same(got: tuple[torch.Tensor, ...] | list[torch.Tensor], want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        g_np = g.detach().numpy()
        assert g_np.shape == np.shape(w)
        if g_np.dtype == np.int64:
            np.testing.assert_array_equal(g_np, w)
        else:
            np.testing.assert_allclose(g_np, w, rtol=RTOL, atol=ATOL)


# --- torch vs NumPy ----------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy_reference(case: str, layers: int, perturb: Perturb) -> None:
    model = _model(case, layers, perturb)
    x, states = _x(), _states(model)
    with torch.no_grad():
        got = model(x, *states)
    _assert_same(got, _reference(model, x, states))


@pytest.mark.parametrize("case", list(CASES))
def test_chunks_equal_one_call(case: str, perturb: Perturb) -> None:
    model = _model(case, 2, perturb)
    x, states = _x(), _states(model)
    with torch.no_grad():
        whole = model(x, *states)
        first = model(x[:, :3], *states)
        second = model(x[:, 3:], *first[1:])
    _assert_same([torch.cat([first[0], second[0]], dim=1), *second[1:]], [w.numpy() for w in whole])


@pytest.mark.parametrize("case", list(CASES))
def test_scan_form_equals_loop_form(case: str, perturb: Perturb) -> None:
    """The exported form (torch scan) computes what the training form (Python loop) does."""
    model = _model(case, 2, perturb)
    x, states = _x(time=5), _states(model)
    with torch.no_grad():
        loop = model(x, *states)
        model.force_scan = True  # type: ignore[assignment]
        scanned = model(x, *states)
    _assert_same(scanned, [t.numpy() for t in loop])


@pytest.mark.parametrize("case", list(CASES))
def test_training_form_backpropagates(case: str) -> None:
    model = _model(case, 2)
    y = model(_x(time=5), *_states(model))[0]
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- Clockwork structure -----------------------------------------------------------------------


def test_clockwork_schedule() -> None:
    model = ClockworkRNN(INPUT, OUTPUT, HIDDEN, num_modules=4)
    k = HIDDEN // 4
    fire = model.firing(torch.tensor([0, 5]), 12)  # [B, T, H]
    # Written out by hand for module periods 1, 2, 4, 8 (absolute t, 0-based modules).
    expected = {
        0: [0, 1, 2, 3],
        1: [0],
        2: [0, 1],
        3: [0],
        4: [0, 1, 2],
        6: [0, 1],
        8: [0, 1, 2, 3],
    }
    for t, modules in expected.items():
        assert ref.fired_modules(t, 4) == modules
        units = fire[0, t].reshape(4, k)
        assert units.all(dim=1).tolist() == [i in modules for i in range(4)], t
        assert (units.all(dim=1) == units.any(dim=1)).all()  # whole modules fire together
    # The second session starts at t=5: its step j is absolute t = 5 + j.
    for j in range(12):
        fired = fire[1, j].reshape(4, k).all(dim=1)
        assert fired.tolist() == [i in ref.fired_modules(5 + j, 4) for i in range(4)]


def test_clockwork_idle_modules_keep_their_value(perturb: Perturb) -> None:
    model = _model("clockwork", 2, perturb)
    h0 = _states(model)[0]
    k = HIDDEN // 4
    with torch.no_grad():
        # t = 2: modules 0, 1 (periods 1, 2) fire; modules 2, 3 (periods 4, 8) keep their values.
        _, h1, step1 = model(_x(time=1), h0, torch.full((BATCH,), 2))
    assert torch.equal(h1[..., 2 * k :], h0[..., 2 * k :])
    assert not torch.isclose(h1[..., : 2 * k], h0[..., : 2 * k]).any()
    assert step1.tolist() == [3] * BATCH


def test_clockwork_mask_is_block_upper_triangular() -> None:
    model = ClockworkRNN(INPUT, OUTPUT, 12, 2, num_modules=3)
    layers = [layer for layer in model.layers if isinstance(layer, ClockworkLayer)]
    assert len(layers) == 2
    for layer in layers:
        np.testing.assert_array_equal(layer.mask.numpy(), ref.clockwork_mask(12, 3))
        # Stored weights are zero where masked; masked entries get no gradient.
        assert (layer.weight_hh[layer.mask == 0] == 0).all()
    model(torch.randn(2, 6, INPUT), *model.initial_state(2))[0].sum().backward()
    for layer in layers:
        assert layer.weight_hh.grad is not None
        assert (layer.weight_hh.grad[layer.mask == 0] == 0).all()
        assert (layer.weight_hh.grad[layer.mask == 1] != 0).any()


def test_clockwork_parameter_count() -> None:
    """g(g+1)/2 of g² recurrent blocks are parameters: 10/16 = 0.625 for g = 4, i.e. about half
    of a full RNN's recurrent matrix (the input weights, biases and head are the same)."""
    g, hidden, layers = 4, 32, 2
    model = ClockworkRNN(INPUT, OUTPUT, hidden, layers, num_modules=g)
    full = nn.RNN(INPUT, hidden, layers, bias=False)  # W_in and full W_h per layer
    full_count = sum(p.numel() for p in full.parameters()) + layers * hidden
    full_count += sum(p.numel() for p in model.head.parameters())
    k = hidden // g
    dropped = layers * (g * (g - 1) // 2) * k * k
    assert model.effective_parameter_count() == full_count - dropped
    recurrent_ratio = (layers * g * (g + 1) // 2 * k * k) / (layers * hidden * hidden)
    assert recurrent_ratio == pytest.approx(0.625)
    assert model.hyperparameters()["effective_parameters"] == str(full_count - dropped)


def test_clockwork_rejects_indivisible_hidden_size() -> None:
    with pytest.raises(ValueError, match="multiple of num_modules"):
        ClockworkRNN(INPUT, OUTPUT, 10, num_modules=4)


# --- attention window --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_attention_window_is_last_k_top_states(cell: str, perturb: Perturb) -> None:
    """After a run longer than K, the window is the last K top-layer states, oldest first (read
    back from ``h_out`` one step at a time), and fill is K."""
    model = _model(f"attention_{cell}", 2, perturb)
    x = _x(batch=2, time=WINDOW + 3)
    states = model.initial_state(2)
    states = [s.double() if s.is_floating_point() else s for s in states]
    tops = []
    with torch.no_grad():
        whole = model(x, *states)
        for t in range(x.shape[1]):
            out = model(x[:, t : t + 1], *states)
            states = list(out[1:])
            tops.append(states[0][:, -1])  # h_out's top layer
            assert states[-1].tolist() == [min(t + 1, WINDOW)] * 2
    expected = torch.stack(tops[-WINDOW:], dim=1)
    assert torch.equal(states[-2], expected)
    torch.testing.assert_close(whole[-2], expected, rtol=RTOL, atol=ATOL)
    assert whole[-1].tolist() == [WINDOW, WINDOW]


def test_attention_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="cell must be one of"):
        AttentionRNN(INPUT, OUTPUT, cell="rnn")
    with pytest.raises(ValueError, match="window must be >= 1"):
        AttentionRNN(INPUT, OUTPUT, window=0)


# --- exported graphs in ONNX Runtime -----------------------------------------------------------


@pytest.fixture(scope="module", params=["peephole_gru", "clockwork", "attention_lstm"])
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RecurrentModel, Path]:
    """One case exported with 2 layers and perturbed float32 weights."""
    case: str = request.param
    variant, options = CASES[case]
    torch.manual_seed(0)
    model = build_model(variant, INPUT, OUTPUT, HIDDEN, 2, **options).eval()
    with torch.no_grad():  # zero-initialised biases must take part too
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("scan_onnx") / f"{case}.onnx"
    model.export_onnx(path, DEFAULT_OPSET)
    return model, path


def _ort(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_onnx_runtime_matches_torch(exported: tuple[RecurrentModel, Path]) -> None:
    """ORT vs torch at T=1 and T=7 with counters mid-way (clock mid-period, window partly
    filled), and 3 + 4 steps in ORT equal 7; the graph is one Scan per layer with named axes."""
    model, path = exported
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Scan") == 2  # one per layer
    assert "Loop" not in ops
    x_dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[:2]]
    assert x_dims == ["batch", "time"]
    session = _ort(path)
    assert session.get_providers() == ["CPUExecutionProvider"]
    in_names = [i.name for i in session.get_inputs()]
    states = [s.float() if s.is_floating_point() else s for s in _states(model)]
    x = _x().float()

    def run(xc: torch.Tensor, st: list[Any]) -> list[Any]:
        feeds = {n: np.asarray(v) for n, v in zip(in_names, [xc.numpy(), *st], strict=True)}
        result: list[Any] = session.run(None, feeds)
        return result

    for time in (1, TIME):
        with torch.no_grad():
            want = model(x[:, :time], *states)
        got = run(x[:, :time], [s.numpy() for s in states])
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=ORT_TOL, atol=ORT_TOL)
    # Chunked in ONNX Runtime: 3 then 4 steps equal one call of 7.
    whole = run(x, [s.numpy() for s in states])
    first = run(x[:, :3], [s.numpy() for s in states])
    second = run(x[:, 3:], first[1:])
    np.testing.assert_allclose(np.concatenate([first[0], second[0]], axis=1), whole[0], atol=1e-6)
    for a, b in zip(second[1:], whole[1:], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
