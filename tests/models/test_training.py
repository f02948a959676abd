"""Training: beats persistence on a real series, clipping bounds the gradient norm, early stopping
restores the best weights, a seed fixes the result, and no forecast sees its own target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rnnserve_models.data import Split, load_dataset, split_series
from rnnserve_models.ship import ModelSpec, train_and_evaluate
from rnnserve_models.train import (
    TrainConfig,
    clip_gradients,
    fit,
    predict_next,
    seed_everything,
    validation_loss,
)
from rnnserve_models.variants import build_model

# Short, but long enough for a small recurrent net to learn the ~11-year cycle.
SHORT = TrainConfig(window=16, epochs=60, lr=1e-2, patience=15)


@pytest.fixture(scope="module")
def sunspots() -> Split:
    return split_series(load_dataset("sunspots"))


@pytest.mark.parametrize("variant", ["lstm", "gru"])
def test_short_training_beats_persistence(variant: str, sunspots: Split) -> None:
    trained = train_and_evaluate(ModelSpec(variant, hidden_size=16), sunspots, SHORT)
    m = trained.metrics
    assert m.n_val == sunspots.n_val
    # Both numbers are computed here, on the same validation targets.
    assert m.val_rmse < 0.8 * m.baseline_rmse, m
    assert m.val_mae < m.baseline_mae, m
    # The weights kept are those of the best epoch, and the metrics are theirs.
    assert validation_loss(trained.model, sunspots, SHORT.window) == pytest.approx(
        trained.result.best_val_loss, rel=1e-6
    )


def test_clipping_bounds_the_global_norm() -> None:
    seed_everything(0)
    model = build_model("gru", 1, 1, 8)
    x = torch.randn(4, 10, 1)
    y = model(x, *model.initial_state(4))[0]
    (1e4 * (y - 5.0).pow(2).mean()).backward()
    before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    raw_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in before))
    max_norm = 0.5
    reported = clip_gradients(model.parameters(), max_norm)
    after = [p.grad for p in model.parameters() if p.grad is not None]
    clipped_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in after))
    assert raw_norm > 100 * max_norm  # the case is one that needs clipping
    assert reported == pytest.approx(raw_norm, rel=1e-5)
    assert clipped_norm <= max_norm * (1 + 1e-5)
    assert clipped_norm == pytest.approx(max_norm, rel=1e-4)
    # Rescaled, not truncated: every gradient keeps its direction.
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b * (max_norm / raw_norm), rtol=1e-4, atol=1e-9)


def test_training_records_clipped_steps(sunspots: Split) -> None:
    seed_everything(0)
    model = build_model("gru", 1, 1, 8)
    config = TrainConfig(window=16, epochs=3, lr=1e-2, clip=1e-3, patience=5)
    result = fit(model, sunspots, config, progress=False)
    # Raw norms far above the bound show that clipping was active on these steps.
    assert all(log.max_grad_norm > 10 * config.clip for log in result.history)


def test_early_stopping_restores_best_weights(sunspots: Split) -> None:
    # A large learning rate makes validation loss bounce, so patience runs out early.
    config = TrainConfig(window=16, epochs=80, lr=0.03, patience=3)
    seed_everything(0)
    model = build_model("gru", 1, 1, 16)
    result = fit(model, sunspots, config, progress=False)
    losses = [log.val_loss for log in result.history]
    assert result.epochs_run < config.epochs, "patience never ran out"
    assert result.best_epoch > 1  # the best weights are trained ones, not the initial ones
    assert result.epochs_run == result.best_epoch + config.patience
    assert result.best_val_loss == min(losses) == losses[result.best_epoch - 1]
    assert losses[-1] > result.best_val_loss
    assert validation_loss(model, sunspots, config.window) == pytest.approx(
        result.best_val_loss, rel=1e-6
    )


def test_same_seed_same_weights(sunspots: Split) -> None:
    config = TrainConfig(window=16, epochs=3, lr=1e-2, patience=5, seed=7)
    spec = ModelSpec("gru", hidden_size=8)
    first, second = (train_and_evaluate(spec, sunspots, config) for _ in range(2))
    other = train_and_evaluate(spec, sunspots, TrainConfig(**{**config.as_dict(), "seed": 8}))
    a, b, c = (t.model.state_dict() for t in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h.val_loss for h in first.result.history] == [h.val_loss for h in second.result.history]
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("variant", ["gru", "bidirectional"])
def test_forecast_never_sees_its_target(variant: str, sunspots: Split) -> None:
    """Changing value j must not change the forecast of value j (whole-sequence models would
    read it off their backward pass if the window included it)."""
    seed_everything(0)
    model = build_model(variant, 1, 1, 8)
    z = sunspots.normalised.copy()
    start = sunspots.n_train
    before = predict_next(model, z, start, 16)
    j = start + 10
    z[j] += 5.0
    after = predict_next(model, z, start, 16)
    np.testing.assert_array_equal(after[: j - start + 1], before[: j - start + 1])
    assert not np.array_equal(after[j - start + 1 :], before[j - start + 1 :])


def test_bidirectional_trains_on_windows(sunspots: Split) -> None:
    config = TrainConfig(window=12, epochs=2, lr=1e-2, patience=5)
    trained = train_and_evaluate(ModelSpec("bidirectional", hidden_size=8), sunspots, config)
    assert trained.result.epochs_run == 2
    assert trained.prediction.shape == (sunspots.n_val, 1)
    assert np.isfinite(trained.metrics.val_rmse)
