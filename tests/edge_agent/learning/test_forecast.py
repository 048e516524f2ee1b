"""The UC10 forecaster: windowing without leakage, seasonal-naive, the GRU, transfer freezing, intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_agent.learning import forecast as fc


def _noisy_periodic(n: int, period: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 2.0 + np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(n)


def test_windows_hold_the_past_and_the_target_lies_horizon_steps_after_the_last_input() -> None:
    series = np.arange(400, dtype=np.float64)

    data = fc.make_windows(series, window=36, horizon=96)

    assert data.x.shape == (400 - 36 - 96 + 1, 36, 1)
    np.testing.assert_array_equal(data.x[0, :, 0], series[:36])
    np.testing.assert_array_equal(data.x[-1, :, 0], series[-36 - 96 : -96])
    np.testing.assert_array_equal(data.target_index - data.last_index, 96)
    np.testing.assert_array_equal(data.y, series[data.target_index])
    # No leakage: every input is strictly older than its target (the series is increasing).
    assert np.all(data.x[:, :, 0].max(axis=1) == series[data.last_index])
    assert np.all(data.x[:, :, 0].max(axis=1) < data.y)


def test_calendar_channels_describe_the_slot_each_step_predicts() -> None:
    data = fc.make_windows(np.ones(2000), window=36, horizon=96, calendar=True)

    assert data.x.shape[-1] == 1 + fc.CALENDAR_FEATURES
    # The last step's calendar is the target's; the first step's is 35 slots earlier.
    np.testing.assert_allclose(data.x[:, -1, 1:], fc.calendar_features(data.target_index))
    np.testing.assert_allclose(data.x[:, 0, 1:], fc.calendar_features(data.target_index - 35))
    # 2016-01-02 was a Saturday: its slots carry the Saturday flag.
    saturday = fc.calendar_features(np.arange(96, 192))
    assert saturday[:, 2].all() and not saturday[:, 3].any()


def test_month_split_trains_only_before_validation_and_tests_on_the_held_out_month() -> None:
    data = fc.make_windows(np.ones(fc.SLOTS_PER_DAY * 366), calendar=False)
    split = fc.MonthSplit(val_month=10, test_month=11)

    train, val, test = split.masks(data.target_index)

    months = split.months(data.target_index)
    assert set(months[train]) == set(range(1, 10))
    assert set(months[val]) == {10} and set(months[test]) == {11}
    assert data.target_index[train].max() < split.train_end() <= data.target_index[val].min()
    assert data.last_index[test].min() > data.target_index[train].max()
    assert test.sum() == 30 * 96


def test_seasonal_naive_is_the_same_time_one_day_earlier() -> None:
    day = np.linspace(1.0, 2.0, 96)
    series = np.concatenate([day, day * 2, day * 3])
    targets = np.arange(96, 288)

    naive = fc.seasonal_naive(series, targets)

    np.testing.assert_array_equal(naive, series[targets - 96])
    # Each day is double, then 1.5x, the previous one: errors of 1/2 and 1/3 of the target.
    assert fc.mape(series[targets], naive) == pytest.approx((1 / 2 + 1 / 3) / 2)
    with pytest.raises(fc.ForecastError):
        fc.seasonal_naive(series, np.array([95]))
    with pytest.raises(fc.ForecastError):
        fc.mape(np.array([0.0, 1.0]), np.array([1.0, 1.0]))


def test_a_tiny_gru_learns_a_noisy_periodic_series_better_than_seasonal_naive() -> None:
    torch.set_num_threads(1)
    period, window = 24, 12
    series = _noisy_periodic(2000, period, noise=0.3)
    data = fc.make_windows(series, window=window, horizon=period, calendar=False)
    train, test = data.subset(np.arange(1500)), data.subset(np.arange(1500 + period, len(data)))
    scaler = fc.Scaler.fit(series[:1500])

    forecaster, history = fc.train_forecaster(
        train, fc.FitConfig(epochs=12, batch_size=64, lr=1e-2), scaler=scaler, calendar=False, hidden=8
    )

    naive = fc.seasonal_naive(series, test.target_index, period=period)
    mse_naive = float(np.mean((naive - test.y) ** 2))
    assert history.train_loss[-1] < history.train_loss[0]
    # Naive carries two noise draws (variance 2 x 0.09); the model about one.
    assert forecaster.mse(test) < 0.8 * mse_naive
    assert fc.mape(test.y, forecaster.predict(test.x)) < fc.mape(test.y, naive)


def test_freezing_keeps_the_first_gru_layer_and_trains_the_rest() -> None:
    series = _noisy_periodic(600, 24, noise=0.1)
    data = fc.make_windows(series, window=12, horizon=24, calendar=False)
    scaler = fc.Scaler.fit(series)
    pretrained = fc.new_model(1, hidden=6, seed=1)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}

    tuned, _ = fc.train_forecaster(
        data,
        fc.FitConfig(epochs=2, lr=1e-2),
        scaler=scaler,
        calendar=False,
        init=pretrained,
        freeze_first=True,
    )

    after = tuned.model.state_dict()
    for name, value in before.items():
        if name.startswith("gru1."):
            assert torch.equal(after[name], value), name
        else:
            assert not torch.equal(after[name], value), name
    assert not any(p.requires_grad for p in tuned.model.gru1.parameters())
    # The pre-trained model itself is untouched (transfer works on a copy).
    assert all(torch.equal(pretrained.state_dict()[k], v) for k, v in before.items())


def test_a_fully_frozen_model_is_refused() -> None:
    model = fc.new_model(1, hidden=4)
    model.requires_grad_(False)
    with pytest.raises(fc.ForecastError):
        fc.fit(model, np.zeros((4, 12, 1)), np.zeros(4), fc.FitConfig(epochs=1))


def test_gaussian_interval_covers_about_its_level_on_gaussian_data() -> None:
    rng = np.random.default_rng(0)
    interval = fc.GaussianInterval.from_residuals(rng.normal(0.5, 2.0, 5000), level=0.9)
    y_hat = rng.normal(0, 10, 20000)
    y = y_hat + rng.normal(0.5, 2.0, 20000)

    lower, upper = interval.bounds(y_hat)

    assert lower.shape == upper.shape == y_hat.shape
    assert np.all(lower < y_hat + interval.mean) and np.all(upper > y_hat + interval.mean)
    assert interval.z == pytest.approx(1.6449, abs=1e-4)
    assert fc.coverage(y, lower, upper) == pytest.approx(0.9, abs=0.01)


def test_normality_tests_accept_gaussian_and_reject_skewed_residuals() -> None:
    rng = np.random.default_rng(3)

    gaussian = fc.normality_pvalues(rng.standard_normal(800))
    skewed = fc.normality_pvalues(rng.exponential(1.0, 800))

    assert set(gaussian) == {"shapiro_wilk", "anderson_darling", "dagostino_pearson"}
    assert all(p > 0.05 for p in gaussian.values()), gaussian
    assert all(p < 1e-6 for p in skewed.values()), skewed
    with pytest.raises(fc.ForecastError):
        fc.normality_pvalues(np.ones(5))


def test_anderson_darling_pvalue_falls_as_the_statistic_grows() -> None:
    stats = [0.1, 0.25, 0.4, 0.7, 1.5, 5.0, 500.0]
    pvalues = [fc._anderson_pvalue(a, 1000) for a in stats]
    assert all(0 <= p <= 1 for p in pvalues)
    assert pvalues == sorted(pvalues, reverse=True)
    # Tabulated: A*2 = 0.752 is the 5 % critical value of the normal case.
    assert fc._anderson_pvalue(0.752 / (1 + 0.75 / 1000 + 2.25 / 1000**2), 1000) == pytest.approx(
        0.05, abs=0.003
    )


def test_forecaster_intervals_bracket_the_forecast_in_series_units() -> None:
    series = _noisy_periodic(800, 24, noise=0.1)
    data = fc.make_windows(series, window=12, horizon=24, calendar=False)
    scaler = fc.Scaler.fit(series, log=True)
    forecaster, _ = fc.train_forecaster(data, fc.FitConfig(epochs=1), scaler=scaler, calendar=False, hidden=4)

    forecaster.calibrate(data, level=0.9)
    y_hat, lower, upper = forecaster.predict_interval(data.x[:50])

    assert y_hat.shape == lower.shape == upper.shape == (50,)
    assert np.all(lower < y_hat) and np.all(y_hat < upper)
    with pytest.raises(fc.ForecastError):
        forecaster.predict(data.x[:, :5])
    with pytest.raises(fc.ForecastError):
        forecaster.predict(np.full_like(data.x[:2], np.nan))


def test_log_scaler_round_trips_and_keeps_zeros_finite() -> None:
    values = np.array([0.0, 0.1, 0.5, 2.0])
    scaler = fc.Scaler.fit(values, log=True)
    np.testing.assert_allclose(scaler.inverse(scaler.transform(values)), values, atol=1e-12)
    assert np.all(np.isfinite(scaler.transform(values)))


def test_transfer_comparison_reports_both_curves_with_their_data_sizes() -> None:
    year = fc.SLOTS_PER_DAY * 366
    source = _noisy_periodic(year, 96, noise=0.05, seed=1)
    target = 0.8 * _noisy_periodic(year, 96, noise=0.05, seed=2)
    tiny = fc.FitConfig(epochs=2, max_samples=256)

    report = fc.transfer_comparison(source, target, days=(1, 2), config=tiny, pretrain_config=tiny, hidden=4)

    assert report.days == [1.0, 2.0] and report.samples == [96, 192]
    assert len(report.scratch_curve) == len(report.transfer_curve) == 2
    assert report.target == report.scratch_val_mse[-1]
    assert all(np.isfinite(v) for v in report.scratch_val_mse + report.transfer_val_mse)
    needed = report.days_needed
    assert needed is None or needed in report.days
