"""Training: truncated BPTT on next-step prediction, Adam, gradient clipping by global norm, early
stopping on the validation split with the best weights restored. Deterministic on CPU for a seed.

Streaming variants see the training series as ``streams`` parallel contiguous streams, cut into
windows; the state is carried (detached) from one window to the next, as a server carries it from
one chunk to the next. Whole-sequence (bidirectional) variants train on independent windows and
are scored on the window's *last* step only: every earlier step's target is inside the window,
which a backward pass would simply read off.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor, nn

from rnnserve_models.base import RecurrentModel
from rnnserve_models.data import DataError, FloatArray, Split


@dataclass(frozen=True)
class TrainConfig:
    window: int = 16  # BPTT length (streaming) or context length (whole-sequence)
    streams: int = 4  # parallel contiguous streams per step (streaming variants)
    batch_windows: int = 32  # windows per step (whole-sequence variants)
    epochs: int = 300
    lr: float = 5e-3
    clip: float = 1.0  # max global L2 norm of the gradient
    patience: int = 30  # epochs without a better validation loss before stopping
    seed: int = 0
    # Tiny models train fastest on one thread (more only adds contention on shared cores).
    threads: int = 1

    def __post_init__(self) -> None:
        sizes = (self.window, self.streams, self.batch_windows, self.epochs, self.patience)
        if min(*sizes, self.threads) < 1:
            raise ValueError(
                "window, streams, batch_windows, epochs, patience and threads must be >= 1"
            )
        if not (self.lr > 0 and self.clip > 0):
            raise ValueError("lr and clip must be > 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochLog:
    epoch: int  # 1-based
    train_loss: float  # mean normalised MSE over the epoch's steps
    val_loss: float  # normalised MSE on the validation targets
    max_grad_norm: float  # largest global gradient norm before clipping


@dataclass
class TrainResult:
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def seed_everything(seed: int) -> None:
    """Seed every generator training touches (call before building the model, too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress_enabled() -> bool:
    """A progress bar only for a person at a terminal, never in CI logs."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("true", "1")


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Rescale the gradients so their global L2 norm is at most ``max_norm``; return the norm
    before clipping."""
    return float(nn.utils.clip_grad_norm_(list(parameters), max_norm))


def _tensor(z: FloatArray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))


def _last_windows(z: FloatArray, ends: range, window: int) -> Tensor:
    """``[len(ends), window, F]``: for each ``j`` in ``ends`` the inputs ``z[j-window:j]``."""
    if ends.start < window:
        raise DataError(
            f"window {window} is longer than the history before the first target ({ends.start})"
        )
    # sliding_window_view puts the window axis last: [N - window + 1, F, window].
    views = np.lib.stride_tricks.sliding_window_view(z[: ends.stop - 1], window, axis=0)
    return _tensor(views[ends.start - window :].transpose(0, 2, 1))


@torch.no_grad()
def predict_next(model: RecurrentModel, z: FloatArray, start: int, window: int) -> FloatArray:
    """Normalised predictions of ``z[start:]``, each made from the values before it only.

    Streaming models run once over the whole series from the initial state (the history warms
    the state up); whole-sequence models see the ``window`` values before each target.
    """
    model.eval()
    if model.streaming:
        y = model(_tensor(z[:-1])[None], *model.initial_state(1))[0]
        return y[0, start - 1 :].double().numpy()
    x = _last_windows(z, range(start, len(z)), window)
    return model(x)[0][:, -1].double().numpy()


def validation_loss(model: RecurrentModel, split: Split, window: int) -> float:
    z = split.normalised
    prediction = predict_next(model, z, split.n_train, window)
    return float(np.mean((prediction - z[split.n_train :]) ** 2))


def _step(
    model: RecurrentModel, optimiser: torch.optim.Optimizer, loss: Tensor, clip: float
) -> float:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    norm = clip_gradients(model.parameters(), clip)
    optimiser.step()
    return norm


def _streaming_epoch(
    model: RecurrentModel,
    optimiser: torch.optim.Optimizer,
    z: FloatArray,
    config: TrainConfig,
    rng: np.random.Generator,
) -> tuple[float, float]:
    inputs, targets = z[:-1], z[1:]
    length = len(inputs)
    streams = max(1, min(config.streams, length // config.window))
    # A random offset each epoch, so window boundaries do not always fall on the same steps.
    spare = length - streams * config.window
    offset = int(rng.integers(0, min(config.window, spare) + 1)) if spare > 0 else 0
    per_stream = (length - offset) // streams
    used = slice(offset, offset + streams * per_stream)
    x = _tensor(inputs[used]).reshape(streams, per_stream, -1)
    y = _tensor(targets[used]).reshape(streams, per_stream, -1)
    state = model.initial_state(streams)
    losses, max_norm = [], 0.0
    for begin in range(0, per_stream, config.window):
        end = begin + config.window
        out = model(x[:, begin:end], *state)
        loss = nn.functional.mse_loss(out[0], y[:, begin:end])
        max_norm = max(max_norm, _step(model, optimiser, loss, config.clip))
        # Truncated BPTT: the state goes on, its history does not.
        state = [s.detach() for s in out[1:]]
        losses.append(loss.item())
    return float(np.mean(losses)), max_norm


def _window_epoch(
    model: RecurrentModel,
    optimiser: torch.optim.Optimizer,
    z: FloatArray,
    config: TrainConfig,
    rng: np.random.Generator,
) -> tuple[float, float]:
    x_all = _last_windows(z, range(config.window, len(z)), config.window)
    y_all = _tensor(z[config.window :])
    order = rng.permutation(len(y_all))
    losses, max_norm = [], 0.0
    for begin in range(0, len(order), config.batch_windows):
        index = torch.from_numpy(order[begin : begin + config.batch_windows])
        out = model(x_all[index])
        loss = nn.functional.mse_loss(out[0][:, -1], y_all[index])
        max_norm = max(max_norm, _step(model, optimiser, loss, config.clip))
        losses.append(loss.item())
    return float(np.mean(losses)), max_norm


def fit(
    model: RecurrentModel,
    split: Split,
    config: TrainConfig,
    *,
    progress: bool | None = None,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place; on return it holds the weights of the best validation epoch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _fit(model, split, config, progress, description)
    finally:
        torch.set_num_threads(threads)


def _fit(
    model: RecurrentModel,
    split: Split,
    config: TrainConfig,
    progress: bool | None,
    description: str,
) -> TrainResult:
    if split.n_train <= config.window + 1:
        raise DataError(
            f"the training part has {split.n_train} points; it must be longer than the window "
            f"({config.window}) + 1"
        )
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    train_z = split.normalised[: split.n_train]
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    epoch_fn = _streaming_epoch if model.streaming else _window_epoch
    result = TrainResult()
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    started = time.perf_counter()
    show = progress_enabled() if progress is None else progress
    # transient: the bar disappears when done, so the report that follows stands alone.
    with Progress(disable=not show, transient=True) as bar:
        task = bar.add_task(description, total=config.epochs)
        for epoch in range(1, config.epochs + 1):
            model.train()
            train_loss, max_norm = epoch_fn(model, optimiser, train_z, config, rng)
            val_loss = validation_loss(model, split, config.window)
            result.history.append(EpochLog(epoch, train_loss, val_loss, max_norm))
            if val_loss < result.best_val_loss:
                result.best_val_loss, result.best_epoch, stale = val_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            bar.update(
                task,
                advance=1,
                description=f"{description} val {val_loss:.4f} best {result.best_val_loss:.4f}",
            )
            if stale >= config.patience or not math.isfinite(train_loss):
                break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result
