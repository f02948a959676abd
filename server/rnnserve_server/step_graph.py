"""A single-step copy of a model's graph: every ONNX `RNN`, `GRU` and `LSTM` node written out as
its cell equations (two Gemms, Sigmoid, Tanh and a few elementwise ops), valid only when the
time axis is 1.

Why: streamed steps are almost always T=1 (ping-pong clients, frames of one step, forecasts),
and for T=1 ONNX Runtime's CPU GRU kernel is the slow way to compute one cell: on the benchmark
GRU (2 layers, hidden 128) it took 7.9 µs per session-step at batch 59 and 7.4 µs at batch 256,
against 5.5 and 5.0 µs for the same cell as plain ops, and its RNN kernel is 3-4x slower than
the plain ops from 32 sessions on (docs/benchmarks.md); its LSTM kernel is not, which is why the
runner times both graphs before it uses the copy. The rest of the graph is kept as it is, so
inputs, outputs and state layout do not change.

The copy is used only if it gives the original's outputs for T=1 (`ModelRunner` checks this on
random inputs when it loads the model); anything this module does not know how to write out
(another direction, clip, custom activations, sequence lengths, coupled LSTM gates, a cell with
no initial state) leaves the model without a step graph, never with a wrong one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from rnnserve_proto import onnx_graph_pb2 as og

# The default activations of each op, and the input slots of its sequence lengths and initial
# states (ONNX operator specs).
_DEFAULT_ACTIVATIONS = {
    "RNN": [b"Tanh"],
    "GRU": [b"Sigmoid", b"Tanh"],
    "LSTM": [b"Sigmoid", b"Tanh", b"Tanh"],
}
_SEQUENCE_LENS = 4
_INITIAL_STATES = {"RNN": (5,), "GRU": (5,), "LSTM": (5, 6)}
AttributeValue = int | float | bytes | list[int] | list[float] | list[bytes]


def _value(a: og.Attribute) -> AttributeValue:
    kinds: dict[int, AttributeValue] = {
        og.Attribute.INT: a.i,
        og.Attribute.FLOAT: a.f,
        og.Attribute.STRING: a.s,
        og.Attribute.INTS: list(a.ints),
        og.Attribute.FLOATS: list(a.floats),
        og.Attribute.STRINGS: list(a.strings),
    }
    if a.type not in kinds:
        raise ValueError(f"attribute {a.name!r} of an unexpected type {a.type}")
    return kinds[a.type]


def _attributes(node: og.Node) -> dict[str, AttributeValue]:
    return {a.name: _value(a) for a in node.attribute}


def _node(op: str, inputs: list[str], outputs: list[str], **ints: int) -> og.Node:
    """A node of the default domain with integer attributes."""
    node = og.Node(op_type=op, input=inputs, output=outputs)
    for name, value in ints.items():
        node.attribute.add(name=name, type=og.Attribute.INT, i=value)
    return node


def _int64s(name: str, values: list[int]) -> og.Tensor:
    raw = struct.pack(f"<{len(values)}q", *values)
    return og.Tensor(name=name, data_type=og.Tensor.INT64, dims=[len(values)], raw_data=raw)


def _writable(node: og.Node) -> bool:
    """An RNN, GRU or LSTM node this module can write out: forward, default activations, no clip,
    the time axis first (layout 0), no sequence lengths, initial states given, and for an LSTM
    separate input and forget gates."""
    try:
        attrs = _attributes(node)
    except ValueError:
        return False
    if attrs.get("direction", b"forward") != b"forward" or "clip" in attrs:
        return False
    if attrs.get("layout", 0) != 0 or "activation_alpha" in attrs or "activation_beta" in attrs:
        return False
    if attrs.get("activations", []) not in ([], _DEFAULT_ACTIVATIONS[node.op_type]):
        return False
    if attrs.get("input_forget", 0) != 0:
        return False
    inputs = list(node.input) + [""] * (8 - len(node.input))
    states = [inputs[i] for i in _INITIAL_STATES[node.op_type]]
    return not inputs[_SEQUENCE_LENS] and all(states) and isinstance(attrs.get("hidden_size"), int)


def _namer(k: int) -> Callable[[str], str]:
    """Names unique to the k-th cell written out."""
    return lambda name: f"__step{k}_{name}"


def _prologue(
    node: og.Node, n: Callable[[str], str], gates: int, hidden: int
) -> tuple[list[og.Node], list[og.Tensor], list[str], list[str]]:
    """What every cell starts with: the time, direction and weight axes squeezed away (x [B, I],
    h0 and for an LSTM c0 [B, H], w [gates*H, I], r [gates*H, H]) and the bias split into its W
    and R halves. Returns the nodes, the constants, and the bias input of the Gemm on x and of
    the one on h0 (empty without a bias)."""
    inputs = list(node.input) + [""] * (8 - len(node.input))
    consts = [_int64s(n("axis0"), [0]), _int64s(n("axes01"), [0, 1])]
    squeezed = {"x": inputs[0], "w": inputs[1], "r": inputs[2], "h0": inputs[5]}
    if node.op_type == "LSTM":
        squeezed["c0"] = inputs[6]
    nodes = [_node("Squeeze", [src, n("axis0")], [n(dst)]) for dst, src in squeezed.items()]
    bias = inputs[3]
    if not bias:
        return nodes, consts, [], []
    consts.append(_int64s(n("split_b"), [gates * hidden] * 2))
    nodes += [
        _node("Squeeze", [bias, n("axis0")], [n("b")]),  # [2 * gates * H]: Wb, then Rb
        _node("Split", [n("b"), n("split_b")], [n("wb"), n("rb")], axis=0),
    ]
    return nodes, consts, [n("wb")], [n("rb")]


def _epilogue(node: og.Node, n: Callable[[str], str]) -> list[og.Node]:
    """The node's outputs from the new states h (and c): Y [T=1, directions=1, B, H], Y_h and
    for an LSTM Y_c [directions=1, B, H]; an output the graph does not use has no name."""
    outputs = list(node.output) + [""] * (3 - len(node.output))
    made = [(outputs[0], "h", "axes01"), (outputs[1], "h", "axis0"), (outputs[2], "c", "axis0")]
    return [_node("Unsqueeze", [n(state), n(axes)], [out]) for out, state, axes in made if out]


def _gru_cell(node: og.Node, k: int) -> tuple[list[og.Node], list[og.Tensor]]:
    """The nodes (and constants) that compute a GRU node's outputs for one time step. Gates are
    ordered z, r, h in W, R and B."""
    attrs = _attributes(node)
    hidden = attrs["hidden_size"]
    assert isinstance(hidden, int)  # _writable checked it
    before_reset = attrs.get("linear_before_reset", 0) != 0
    n = _namer(k)
    nodes, consts, w_bias, r_bias = _prologue(node, n, 3, hidden)  # gates z, r, h
    consts += [
        _int64s(n("split_gates"), [2 * hidden, hidden]),
        _int64s(n("split_zr"), [hidden, hidden]),
    ]
    nodes += [
        _node("Gemm", [n("x"), n("w"), *w_bias], [n("gi")], transB=1),  # [B, 3H]
        _node("Split", [n("gi"), n("split_gates")], [n("gi_zr"), n("gi_h")], axis=1),
    ]
    if before_reset:
        # h~ = tanh(Wh x + Wbh + r * (Rh h0 + Rbh))
        nodes += [
            _node("Gemm", [n("h0"), n("r"), *r_bias], [n("gh")], transB=1),
            _node("Split", [n("gh"), n("split_gates")], [n("gh_zr"), n("gh_h")], axis=1),
            _node("Add", [n("gi_zr"), n("gh_zr")], [n("zr_in")]),
            _node("Sigmoid", [n("zr_in")], [n("zr")]),
            _node("Split", [n("zr"), n("split_zr")], [n("z"), n("rg")], axis=1),
            _node("Mul", [n("rg"), n("gh_h")], [n("rh")]),
        ]
    else:
        # h~ = tanh(Wh x + Wbh + Rh (r * h0) + Rbh)
        nodes.append(_node("Split", [n("r"), n("split_gates")], [n("r_zr"), n("r_h")], axis=0))
        zr_bias: list[str] = []
        h_bias: list[str] = []
        if r_bias:
            nodes.append(
                _node("Split", [n("rb"), n("split_gates")], [n("rb_zr"), n("rb_h")], axis=0)
            )
            zr_bias, h_bias = [n("rb_zr")], [n("rb_h")]
        nodes += [
            _node("Gemm", [n("h0"), n("r_zr"), *zr_bias], [n("gh_zr")], transB=1),
            _node("Add", [n("gi_zr"), n("gh_zr")], [n("zr_in")]),
            _node("Sigmoid", [n("zr_in")], [n("zr")]),
            _node("Split", [n("zr"), n("split_zr")], [n("z"), n("rg")], axis=1),
            _node("Mul", [n("rg"), n("h0")], [n("rh0")]),
            _node("Gemm", [n("rh0"), n("r_h"), *h_bias], [n("rh")], transB=1),
        ]
    nodes += [
        _node("Add", [n("gi_h"), n("rh")], [n("h_in")]),
        _node("Tanh", [n("h_in")], [n("h_cand")]),
        # h = (1 - z) * h~ + z * h0 = h~ + z * (h0 - h~)
        _node("Sub", [n("h0"), n("h_cand")], [n("diff")]),
        _node("Mul", [n("z"), n("diff")], [n("zdiff")]),
        _node("Add", [n("h_cand"), n("zdiff")], [n("h")]),
    ]
    nodes += _epilogue(node, n)
    return nodes, consts


def _lstm_cell(node: og.Node, k: int) -> tuple[list[og.Node], list[og.Tensor]]:
    """The nodes (and constants) that compute an LSTM node's outputs for one time step. Gates
    are ordered i, o, f, c in W, R and B; peepholes P are p_i, p_o, p_f, and p_o sees the new
    cell state."""
    hidden = _attributes(node)["hidden_size"]
    assert isinstance(hidden, int)  # _writable checked it
    peep = node.input[7] if len(node.input) > 7 else ""
    n = _namer(k)
    nodes, consts, w_bias, r_bias = _prologue(node, n, 4, hidden)  # gates i, o, f, c
    consts.append(_int64s(n("split4"), [hidden] * 4))
    nodes += [
        _node("Gemm", [n("x"), n("w"), *w_bias], [n("gx")], transB=1),  # [B, 4H]
        _node("Gemm", [n("h0"), n("r"), *r_bias], [n("gh")], transB=1),
        _node("Add", [n("gx"), n("gh")], [n("g")]),
        _node("Split", [n("g"), n("split4")], [n("i_in"), n("o_in"), n("f_in"), n("c_in")], axis=1),
    ]
    i_in, o_in, f_in = n("i_in"), n("o_in"), n("f_in")
    if peep:
        consts.append(_int64s(n("split3"), [hidden] * 3))
        nodes += [
            _node("Squeeze", [peep, n("axis0")], [n("p")]),  # [3H]
            _node("Split", [n("p"), n("split3")], [n("pi"), n("po"), n("pf")], axis=0),
            _node("Mul", [n("pi"), n("c0")], [n("pi_c")]),
            _node("Add", [i_in, n("pi_c")], [n("i_in_p")]),
            _node("Mul", [n("pf"), n("c0")], [n("pf_c")]),
            _node("Add", [f_in, n("pf_c")], [n("f_in_p")]),
        ]
        i_in, f_in = n("i_in_p"), n("f_in_p")
    nodes += [
        _node("Sigmoid", [i_in], [n("i")]),
        _node("Sigmoid", [f_in], [n("f")]),
        _node("Tanh", [n("c_in")], [n("c_cand")]),
        # c = f * c0 + i * c~
        _node("Mul", [n("f"), n("c0")], [n("fc")]),
        _node("Mul", [n("i"), n("c_cand")], [n("ic")]),
        _node("Add", [n("fc"), n("ic")], [n("c")]),
    ]
    if peep:
        nodes += [
            _node("Mul", [n("po"), n("c")], [n("po_c")]),
            _node("Add", [o_in, n("po_c")], [n("o_in_p")]),
        ]
        o_in = n("o_in_p")
    nodes += [
        _node("Sigmoid", [o_in], [n("o")]),
        _node("Tanh", [n("c")], [n("tanh_c")]),
        _node("Mul", [n("o"), n("tanh_c")], [n("h")]),  # h = o * tanh(c)
    ]
    nodes += _epilogue(node, n)
    return nodes, consts


def _rnn_cell(node: og.Node, k: int) -> tuple[list[og.Node], list[og.Tensor]]:
    """The nodes (and constants) that compute an RNN (Elman) node's outputs for one time step:
    h = tanh(W x + Wb + R h0 + Rb)."""
    hidden = _attributes(node)["hidden_size"]
    assert isinstance(hidden, int)  # _writable checked it
    n = _namer(k)
    nodes, consts, w_bias, r_bias = _prologue(node, n, 1, hidden)
    nodes += [
        _node("Gemm", [n("x"), n("w"), *w_bias], [n("gx")], transB=1),
        _node("Gemm", [n("h0"), n("r"), *r_bias], [n("gh")], transB=1),
        _node("Add", [n("gx"), n("gh")], [n("h_in")]),
        _node("Tanh", [n("h_in")], [n("h")]),
    ]
    nodes += _epilogue(node, n)
    return nodes, consts


_CELLS = {"RNN": _rnn_cell, "GRU": _gru_cell, "LSTM": _lstm_cell}


def single_step_graph(model_bytes: bytes) -> tuple[bytes, int] | None:
    """A serialised copy of the model for T=1 with its RNN, GRU and LSTM nodes written out, and
    how many there were; None when there is nothing to write out or one of them is of a kind this
    module leaves alone."""
    model = og.Model.FromString(model_bytes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    cells = [node for node in model.graph.node if node.op_type in _CELLS and not node.domain]
    if opset < 13 or not cells or not all(_writable(c) for c in cells):
        return None  # Squeeze/Split take their axes and sizes as inputs from opset 13 on
    graph = model.graph
    nodes: list[og.Node] = []
    k = 0
    for node in graph.node:
        if node.op_type in _CELLS and not node.domain:
            cell, consts = _CELLS[node.op_type](node, k)
            nodes += cell
            graph.initializer.extend(consts)
            k += 1
        else:
            nodes.append(node)
    kept = [og.Node.FromString(node.SerializeToString()) for node in nodes]
    del graph.node[:]
    graph.node.extend(kept)
    # Shapes recorded for the old outputs (a time axis of the export's length) no longer hold.
    del graph.value_info[:]
    return model.SerializeToString(), k
