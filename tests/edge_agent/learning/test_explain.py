"""Attributions: Captum IG / DeepLift on the GRU forecaster, coefficients, occlusion and permutation for
River / scikit-learn models; explain() is pure and refuses what it cannot explain."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from edge_agent.learning import forecast as fc
from edge_agent.learning.explain import ExplainError, ExplainUnavailableError, explain, to_json


@pytest.fixture(scope="module")
def recent_matters() -> tuple[fc.GRUForecaster, np.ndarray]:
    """A tiny GRU trained on an AR(1) series one step ahead: the best forecast is the last input."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    series = np.zeros(1000)
    for t in range(1, series.size):
        series[t] = 0.9 * series[t - 1] + rng.standard_normal()
    data = fc.make_windows(series / series.std(), window=12, horizon=1)
    model = fc.new_model(1, hidden=8, seed=0)
    fc.fit(model, data.x, data.y, fc.FitConfig(epochs=6, batch_size=64, lr=1e-2))
    return model, data.x[-32:]


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_forecaster_attributions_are_finite_shaped_like_the_input_and_favour_recent_inputs(
    recent_matters: tuple[fc.GRUForecaster, np.ndarray], method: str
) -> None:
    model, x = recent_matters

    result = explain(model, x, method)  # type: ignore[arg-type]

    attributions = result["attributions"]
    assert result["method"] == method
    assert attributions.shape == x.shape
    assert np.all(np.isfinite(attributions))
    weight = np.abs(attributions[:, :, 0]).mean(axis=0)
    assert int(np.argmax(weight)) == x.shape[1] - 1, weight
    assert weight[-1] > weight[:-3].sum()
    assert result["delta"] is not None and np.isfinite(result["delta"])


def test_integrated_gradients_is_complete_on_the_gru(
    recent_matters: tuple[fc.GRUForecaster, np.ndarray],
) -> None:
    model, x = recent_matters

    ig = explain(model, x[0])

    assert ig["method"] == "integrated_gradients" and ig["attributions"].shape == x[0].shape
    with torch.no_grad():
        gap = float(model(torch.as_tensor(x[:1], dtype=torch.float32)) - model(torch.zeros(1, *x[0].shape)))
    assert ig["attributions"].sum() == pytest.approx(gap, abs=1e-3)
    assert ig["delta"] is not None and ig["delta"] < 1e-3


def test_explain_leaves_the_model_untouched(recent_matters: tuple[fc.GRUForecaster, np.ndarray]) -> None:
    model, x = recent_matters
    model.train()
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    explain(model, x[:4], "deeplift")
    explain(model, x[:4], "integrated_gradients")

    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    model.eval()


def test_a_forecaster_is_explained_on_its_raw_windows() -> None:
    series = 1.0 + 0.5 * np.sin(np.arange(400) * 2 * np.pi / 24)
    data = fc.make_windows(series, window=12, horizon=24, calendar=True)
    forecaster = fc.Forecaster(
        fc.new_model(5, hidden=4), fc.Scaler.fit(series, log=True), calendar=True, window=12
    )

    result = explain(forecaster, data.x[0])

    assert result["attributions"].shape == (12, 5)
    with pytest.raises(ExplainError):
        explain(forecaster, data.x[0, :, :2])


def test_river_linear_model_coefficients_are_exact() -> None:
    from river import linear_model

    rng = np.random.default_rng(1)
    model = linear_model.LinearRegression()
    for _ in range(2000):
        row = {"a": float(rng.normal()), "b": float(rng.normal())}
        model.learn_one(row, 3 * row["a"] - 2 * row["b"])
    x = {"a": 1.5, "b": -0.5}

    result = explain(model, x)

    assert result["method"] == "coefficients"
    assert set(result["attributions"]) == {"a", "b"}
    assert result["attributions"]["a"] == pytest.approx(model.weights["a"] * 1.5)
    assert result["attributions"]["a"] == pytest.approx(4.5, abs=0.2)
    assert result["attributions"]["b"] == pytest.approx(1.0, abs=0.2)
    assert result["delta"] == pytest.approx(0.0, abs=1e-9)


def test_occlusion_and_permutation_find_the_feature_a_nonlinear_model_uses() -> None:
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 3))
    y = np.sin(2 * X[:, 0]) + 0.1 * X[:, 1]
    model = RandomForestRegressor(n_estimators=20, random_state=0).fit(X, y)

    occlusion = explain(model, np.array([1.0, 0.0, 0.0]), window=(X[-100:], None))
    permutation = explain(model, X[0], "permutation", window=(X[-100:], y[-100:]), repeats=3)

    assert occlusion["method"] == "occlusion" and occlusion["attributions"].shape == (3,)
    assert int(np.argmax(np.abs(occlusion["attributions"]))) == 0
    assert permutation["delta"] is None
    scores = permutation["attributions"]
    assert scores[0] > 5 * max(scores[1], scores[2], 1e-6)
    assert to_json(permutation)["attributions"] == pytest.approx(scores.tolist())


def test_sklearn_linear_coefficients_and_a_plain_callable() -> None:
    from sklearn.linear_model import LinearRegression

    X = np.random.default_rng(3).normal(size=(50, 2))
    model = LinearRegression().fit(X, 2 * X[:, 0] + 1)

    result = explain(model, np.array([1.0, 1.0]))
    called = explain(lambda rows: rows[:, 0] * rows[:, 1], np.array([2.0, 3.0]), "occlusion")

    np.testing.assert_allclose(result["attributions"], [2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(called["attributions"], [6.0, 6.0])
    assert called["delta"] == pytest.approx(6.0)  # f(x) - f(0) = 6, attributions sum to 12: interaction


@pytest.mark.parametrize(
    ("x", "method", "message"),
    [
        (np.array([1.0, np.nan]), "occlusion", "NaN"),
        (np.array([1.0, 2.0]), "deeplift", "PyTorch"),
        (np.array([1.0, 2.0]), "nonsense", "unknown method"),
        (np.array([1.0, 2.0]), "permutation", "window"),
        (np.array([1.0, 2.0]), "coefficients", "linear"),
        (np.ones((2, 2)), "occlusion", "one sample"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(x: np.ndarray, method: str, message: str) -> None:
    with pytest.raises(ExplainError, match=message):
        explain(lambda rows: rows.sum(axis=1), x, method)  # type: ignore[arg-type]


def test_a_torch_model_without_captum_gets_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, recent_matters: tuple[fc.GRUForecaster, np.ndarray]
) -> None:
    model, x = recent_matters
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)

    with pytest.raises(ExplainUnavailableError, match=r"fedge\[train,monitor\]"):
        explain(model, x[0])
    with pytest.raises(ExplainError, match="PyTorch model is explained with"):
        explain(model, x[0], "occlusion")
