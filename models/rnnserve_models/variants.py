"""Registry of served variants: name -> class, imported lazily so one broken cell cannot stop the
others from loading."""

from __future__ import annotations

import importlib
from typing import Any

from rnnserve_models.base import RecurrentModel

# variant name -> "module:ClassName"
VARIANTS: dict[str, str] = {
    "elman": "rnnserve_models.cells.elman:ElmanRNN",
    "lstm": "rnnserve_models.cells.lstm:LSTM",
    "gru": "rnnserve_models.cells.gru:GRU",
    "peephole_lstm": "rnnserve_models.cells.peephole_lstm:PeepholeLSTM",
    "peephole_gru": "rnnserve_models.cells.peephole_gru:PeepholeGRU",
    "clockwork": "rnnserve_models.cells.clockwork:ClockworkRNN",
    "attention": "rnnserve_models.cells.attention:AttentionRNN",
    "bidirectional": "rnnserve_models.cells.bidirectional:BidirectionalRNN",
}


def variant_class(variant: str) -> type[RecurrentModel]:
    try:
        target = VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}") from None
    module_name, class_name = target.split(":")
    cls: type[RecurrentModel] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_model(
    variant: str,
    input_size: int,
    output_size: int,
    hidden_size: int = 32,
    num_layers: int = 1,
    **options: Any,
) -> RecurrentModel:
    return variant_class(variant)(input_size, output_size, hidden_size, num_layers, **options)
