"""The step graph (runtime.step_graph): RNN, GRU and LSTM nodes written out as cell equations for
one time step give ONNX Runtime's results, for every such model of the repository and for the
attributes the rewrite handles (linear_before_reset, biases, peepholes, stacked layers); kinds
it does not handle get no step graph; the runner runs it only for one-step batches from
`step_graph_min_batch` sessions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fixtures import RECURRENT_OPS, F, H, build_repository, forward_cells_only
from onnx import TensorProto, helper, numpy_helper

from rnnserve_server import repository
from rnnserve_server.config import RuntimeSettings
from rnnserve_server.runtime import ModelRunner
from rnnserve_server.step_graph import single_step_graph

TOLERANCE = 1e-5


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _random_feeds(session: ort.InferenceSession, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random float inputs, initial (zero) int64 states: a symbolic dimension named B or batch
    is the batch, any other one (time) is 1."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        shape = [
            (batch if str(d).lower() in ("b", "batch") else 1) if isinstance(d, str) else d
            for d in i.shape
        ]
        if i.type == "tensor(int64)":
            feeds[i.name] = np.zeros(shape, np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _assert_same_one_step(model: onnx.ModelProto, batches: tuple[int, ...] = (1, 17)) -> int:
    made = single_step_graph(model.SerializeToString())
    assert made is not None
    step = onnx.load_from_string(made[0])
    onnx.checker.check_model(step)
    written = made[1]
    cells = sum(1 for n in model.graph.node if n.op_type in RECURRENT_OPS)
    assert written == cells > 0
    assert not any(n.op_type in RECURRENT_OPS for n in step.graph.node)
    original, rewritten = _session(model), _session(step)
    for batch in batches:
        feeds = _random_feeds(original, batch, seed=batch)
        for want, got in zip(original.run(None, feeds), rewritten.run(None, feeds), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    return written


def _models(root: Path) -> list[tuple[str, Path]]:
    found = []
    for name, versions in repository.scan(root, None).items():
        for version, mv in versions.items():
            found.append((f"{name}:{version}", mv.onnx_path))
    return sorted(found)


def test_every_recurrent_op_model_of_the_repository_gets_an_exact_step_graph(
    repository: Path,
) -> None:
    """Forward RNN, GRU and LSTM graphs (the exporter's stacked layers and peephole LSTM, the
    fixture's single GRU layer) are rewritten and agree with the model; bidirectional and Scan
    graphs are left alone."""
    rewritten = []
    for label, path in _models(repository):
        model = onnx.load(str(path))
        if forward_cells_only(model.graph):
            _assert_same_one_step(model)
            rewritten.append(label)
        else:
            assert single_step_graph(model.SerializeToString()) is None, label
    assert rewritten, "no RNN, GRU or LSTM model in the repository"


def _cell_model(
    op: str, layers: int = 1, bias: bool = True, peepholes: bool = False, **attrs: object
) -> onnx.ModelProto:
    """x [T, B, F] through `layers` RNN, GRU or LSTM layers (time-major, as the ONNX ops take
    them), each with its initial states (h; h and c) as inputs and its final ones as outputs."""
    gates, states = {"RNN": (1, ("h",)), "GRU": (3, ("h",)), "LSTM": (4, ("h", "c"))}[op]
    rng = np.random.default_rng(layers * 10 + peepholes + len(attrs))
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", F])]
    outputs = []
    x, width = "x", F

    def weights(name: str, shape: tuple[int, ...], scale: float) -> str:
        inits.append(numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name))
        return name

    for k in range(layers):
        w = weights(f"W{k}", (1, gates * H, width), 0.5)
        r = weights(f"R{k}", (1, gates * H, H), 0.5)
        b = weights(f"B{k}", (1, 2 * gates * H), 0.3) if bias else ""
        cell_inputs = [x, w, r, b, "", *(f"{st}{k}" for st in states)]
        if peepholes:
            cell_inputs.append(weights(f"P{k}", (1, 3 * H), 0.5))
        for st in states:
            inputs.append(helper.make_tensor_value_info(f"{st}{k}", TensorProto.FLOAT, [1, "B", H]))
            outputs.append(
                helper.make_tensor_value_info(f"Y{st}{k}", TensorProto.FLOAT, [1, "B", H])
            )
        cell_outputs = [f"Y{k}", *(f"Y{st}{k}" for st in states)]
        nodes.append(helper.make_node(op, cell_inputs, cell_outputs, hidden_size=H, **attrs))
        nodes.append(helper.make_node("Squeeze", [f"Y{k}", "dir_axis"], [f"x{k + 1}"]))
        x, width = f"x{k + 1}", H
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "dir_axis"))
    outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["T", "B", H]))
    graph = helper.make_graph(nodes, op.lower(), inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("before_reset", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_cells_written_out_match_the_onnx_gru(before_reset: int, bias: bool) -> None:
    assert (
        _assert_same_one_step(
            _cell_model("GRU", 2, bias, linear_before_reset=before_reset), (1, 5, 40)
        )
        == 2
    )


@pytest.mark.parametrize(
    "attrs",
    [
        {"direction": "bidirectional"},
        {"direction": "reverse"},
        {"clip": 5.0},
        {"activations": ["Sigmoid", "Relu"]},
        {"layout": 1},
    ],
)
def test_gru_kinds_it_does_not_write_out_get_no_step_graph(attrs: dict[str, object]) -> None:
    assert single_step_graph(_cell_model("GRU", **attrs).SerializeToString()) is None


def test_a_gru_without_initial_state_gets_no_step_graph() -> None:
    model = _cell_model("GRU")
    gru = next(n for n in model.graph.node if n.op_type == "GRU")
    del gru.input[5]
    assert single_step_graph(model.SerializeToString()) is None


@pytest.mark.parametrize("bias", [True, False])
def test_elman_cells_written_out_match_the_onnx_rnn(bias: bool) -> None:
    assert _assert_same_one_step(_cell_model("RNN", 2, bias), (1, 5, 40)) == 2


@pytest.mark.parametrize("attrs", [{"activations": ["Relu"]}, {"direction": "reverse"}])
def test_rnn_kinds_it_does_not_write_out_get_no_step_graph(attrs: dict[str, object]) -> None:
    assert single_step_graph(_cell_model("RNN", **attrs).SerializeToString()) is None


@pytest.mark.parametrize("peepholes", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cells_written_out_match_the_onnx_lstm(peepholes: bool, bias: bool) -> None:
    assert _assert_same_one_step(_cell_model("LSTM", 2, bias, peepholes), (1, 5, 40)) == 2


@pytest.mark.parametrize(
    "attrs",
    [
        {"input_forget": 1},
        {"direction": "reverse"},
        {"clip": 3.0},
        {"activations": ["Sigmoid", "Tanh", "Relu"]},
    ],
)
def test_lstm_kinds_it_does_not_write_out_get_no_step_graph(attrs: dict[str, object]) -> None:
    assert (
        single_step_graph(_cell_model("LSTM", peepholes=True, **attrs).SerializeToString()) is None
    )


def test_an_lstm_without_initial_cell_state_gets_no_step_graph() -> None:
    model = _cell_model("LSTM")
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    lstm.input[6] = ""
    assert single_step_graph(model.SerializeToString()) is None


@pytest.fixture(scope="module")
def gru_version(tmp_path_factory: pytest.TempPathFactory) -> repository.ModelVersion:
    root = build_repository(tmp_path_factory.mktemp("step-graph-repo"))
    return repository.scan(root, ["gru"])["gru"][2]


def _runner(mv: repository.ModelVersion, **settings: object) -> ModelRunner:
    return ModelRunner(mv, RuntimeSettings(providers=["cpu"], intra_op_threads=1, **settings))  # type: ignore[arg-type]


def test_runner_results_are_the_same_with_and_without_the_step_graph(
    gru_version: repository.ModelVersion,
) -> None:
    with_step = _runner(gru_version, step_graph=True, step_graph_min_batch=4)
    without = _runner(gru_version, step_graph=False)
    assert with_step.step_graph
    assert not without.step_graph
    rng = np.random.default_rng(3)
    for batch, steps in ((4, 1), (9, 1), (2, 1), (6, 5)):
        x = rng.normal(size=(batch, steps, F)).astype(np.float32)
        states = {"h": rng.normal(size=(batch, 1, H)).astype(np.float32)}
        y1, s1 = with_step.run(x, states)
        y2, s2 = without.run(x, states)
        np.testing.assert_allclose(y1, y2, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(s1["h"], s2["h"], rtol=0, atol=TOLERANCE)


def test_runner_uses_the_step_graph_only_for_one_step_batches_from_the_minimum(
    gru_version: repository.ModelVersion,
) -> None:
    """White-box: the step session is swapped for a graph that answers zeros, which shows which
    runs go through it."""
    runner = _runner(gru_version, step_graph=True, step_graph_min_batch=4)
    zeros = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "zero"], ["y"]),
            helper.make_node("Mul", ["h_in", "zero"], ["h_out"]),
        ],
        "zeros",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", F]),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["B", 1, H]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", F]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["B", 1, H]),
        ],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    zero_model = helper.make_model(
        zeros, opset_imports=[helper.make_opsetid("", 17)], ir_version=10
    )
    runner._step_session = _session(zero_model)
    rng = np.random.default_rng(5)

    def through_step_graph(batch: int, steps: int) -> bool:
        x = rng.normal(size=(batch, steps, F)).astype(np.float32)
        _, states = runner.run(x, {"h": rng.normal(size=(batch, 1, H)).astype(np.float32)})
        return not states["h"].any()

    assert through_step_graph(4, 1)
    assert through_step_graph(30, 1)
    assert not through_step_graph(3, 1)  # below the minimum batch
    assert not through_step_graph(8, 2)  # a chunk of two steps needs the whole graph


def test_auto_times_both_graphs_at_load_and_says_what_it_chose(
    gru_version: repository.ModelVersion, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rnnserve.runtime")
    runner = _runner(gru_version, step_graph="auto", step_graph_min_batch=8)
    said = [r.getMessage() for r in caplog.records if "step graph" in r.getMessage()]
    assert len(said) == 1, said
    for batch in (8, 64, 128, 256):  # timed from step_graph_min_batch up
        assert f"batch {batch} " in said[0]
    assert "µs per session-step" in said[0]
    if runner.step_graph:  # from the smallest timed batch on which it stays faster
        chosen = runner._step_min_batch
        assert chosen in (8, 64, 128, 256)
        assert f"one-step batches of {chosen}+ sessions run a step graph" in said[0]
    else:
        assert "is not faster here" in said[0]


def test_no_step_graph_when_switched_off_or_the_model_has_no_gru(tmp_path: Path) -> None:
    root = build_repository(tmp_path)
    assert not _runner(repository.scan(root, ["gru"])["gru"][2], step_graph=False).step_graph
    assert not _runner(repository.scan(root, ["counter"])["counter"][1]).step_graph
