"""The time loop shared by the variants with no native ONNX operator, and their export route.

One step function serves two forms of the same loop (see /work/shared/notes/onnx-export.md):

- training and eager inference: a plain Python ``for`` over the time axis (cheap autograd for
  truncated BPTT; ``scan`` in eager mode with gradients compiles for seconds per call);
- export: ``torch._higher_order_ops.scan.scan`` (a prototype API), which the dynamo exporter turns
  into one ONNX ``Scan`` node, so the time axis stays dynamic and is never unrolled.

The scan form is chosen while ``torch.export`` traces the model, or when a model sets
``force_scan`` (tests use it to compare the two forms in eager mode).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnserve_models.base import RecurrentModel
from rnnserve_models.onnx_export import export_with_torch

Tensors = tuple[Tensor, ...]
# (carry, inputs at step t) -> (next carry, outputs at step t); every tensor is [B, ...].
StepFn = Callable[[Tensors, Tensors], tuple[Tensors, Tensors]]


def use_scan(model: nn.Module) -> bool:
    """Whether ``model`` should run its time loop as a ``scan`` (export) or a Python loop."""
    return bool(getattr(model, "force_scan", False)) or torch.compiler.is_exporting()


def time_loop(step: StepFn, init: Tensors, xs: Tensors, *, scan: bool) -> tuple[Tensors, Tensors]:
    """Run ``step`` over the time axis (axis 0) of every tensor in ``xs``.

    Returns the final carry and the per-step outputs stacked time-major (``[T, B, ...]``).
    """
    # scan wants the carry's strides equal to the step's (contiguous) outputs.
    init = tuple(t.contiguous() for t in init)
    if scan:
        from torch._higher_order_ops.scan import scan as torch_scan

        def combine(carry: Tensors, inputs: Tensors) -> tuple[Tensors, Tensors]:
            new, out = step(carry, inputs)
            # scan forbids aliasing between carries and outputs (a state is often both).
            return new, tuple(o.clone() for o in out)

        final, stacked = torch_scan(combine, init, xs)
        return tuple(final), tuple(stacked)
    carry = init
    outs: list[Tensors] = []
    for t in range(xs[0].shape[0]):
        carry, out = step(carry, tuple(x[t] for x in xs))
        outs.append(out)
    if not outs:
        raise ValueError("a chunk needs at least one time step")
    return carry, tuple(torch.stack(parts) for parts in zip(*outs, strict=True))


def orthogonal_blocks_(weight: Tensor, block: int) -> None:
    """Initialise each ``block``-row slice of ``weight`` as an orthogonal matrix (one per gate)."""
    with torch.no_grad():
        for start in range(0, weight.shape[0], block):
            nn.init.orthogonal_(weight[start : start + block])


def export_scan_model(model: RecurrentModel, path: Path, opset: int) -> None:
    """The scan variants' route: dynamo under no_grad (-> ONNX ``Scan``), with the shared guard.

    ``export_with_torch`` calls ``torch.export.export`` with ``Dim("time")`` first (so an unrolled
    loop raises instead of being re-exported at the example length), names the axes, and runs
    ONNX Runtime at a chunk longer than the export example before the graph reaches ``path``.
    """
    export_with_torch(model, path, opset, dynamo=True)
