"""The UC10 consumption forecaster (seed 2.1.3.1): a GRU that forecasts the power 24 h ahead from the
previous 36 samples, with transfer learning, 90 % forecast intervals from Gaussian residuals and a
seasonal-naive baseline.

What "24 h ahead" means here: one 15-minute series ``s``; a sample's inputs are the ``window`` (36)
values ``s[t-35] .. s[t]`` ending at the forecast time ``t`` and its target is the single value
``s[t + horizon]`` with ``horizon`` = 96 steps (exactly 24 h after the last input). The seasonal-naive
forecast of that target is "the same time yesterday", ``s[t + horizon - 96]`` = ``s[t]``: the last input.

Split by the calendar month of the *target* (the SimBench year is 2016): training = targets in January to
September, validation = October, held-out test = November (defaults of :class:`MonthSplit`). Inputs of a
validation or test sample may reach back into the previous split (the past is known at forecast time), but
no training input or target lies after the training period, so nothing of the test month reaches training.
The scaler (mean and spread) is fitted on the training period only.

Inputs per step: the value and, by default, four known-in-advance calendar covariates of the slot the step
"predicts" (time of day as sine/cosine, Saturday and Sunday flags; :func:`calendar_features`); without
them the network cannot tell a Monday from a Sunday. Values are modelled on a log scale by default
(:class:`Scaler`): MSE on logs is a relative error, which is what MAPE scores.

Data: the real SimBench load and generation profiles that the ``simbench`` wheel ships (one year of
15-minute values, relative to rated power; :func:`profile_series`), read by :mod:`simulator.grid.data`.

Transfer learning (the seed's recipe): pre-train on a source profile, freeze the first GRU layer
(:func:`freeze_first_layer`), retrain the rest on a little target data.

Needs the ``train`` extra (torch) and, for SimBench data, the ``grid`` extra (pandas, simbench).
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

__all__ = [
    "CALENDAR_FEATURES",
    "HORIZON",
    "SLOTS_PER_DAY",
    "WINDOW",
    "FitConfig",
    "ForecastError",
    "ForecastReport",
    "Forecaster",
    "GRUForecaster",
    "GaussianInterval",
    "History",
    "MonthSplit",
    "Scaler",
    "TransferReport",
    "WindowedData",
    "calendar_features",
    "coverage",
    "evaluate_forecaster",
    "fit",
    "freeze_first_layer",
    "last_days",
    "make_windows",
    "mape",
    "new_model",
    "normality_pvalues",
    "predict",
    "profile_series",
    "seasonal_naive",
    "small_data_scaler",
    "split_series",
    "train_forecaster",
    "transfer_comparison",
]

SLOTS_PER_DAY = 96
"""15-minute slots in a day: the seasonal period of the series."""
WINDOW = 36
"""Input samples per forecast (the seed: the previous 36 power samples, 9 h)."""
HORIZON = 96
"""Steps from the last input to the target: 96 x 15 min = 24 h."""
PROFILE_START = dt.datetime(2016, 1, 1)
"""Time of the first SimBench sample (the profiles cover the leap year 2016)."""
STEP = dt.timedelta(minutes=15)

Array = NDArray[np.float64]


class ForecastError(ValueError):
    """Input the forecaster cannot use: a series too short, a wrong window shape, an unknown profile."""


# ---------------------------------------------------------------------------------------------- data


def profile_series(name: str, kind: Literal["load", "generation"] = "load") -> Array:
    """One SimBench profile as a flat 15-minute series (35136 values, 2016), relative to rated power.

    ``kind="load"``: the active-power column ``<name>_pload`` of ``LoadProfile.csv`` (e.g. ``H0-A``, a
    household; ``G0-A``, a business; ``lv_rural1``, a feeder). ``kind="generation"``: a column of
    ``RESProfile.csv`` (e.g. ``PV3``, ``WP1``). Read from the installed wheel, never downloaded.
    """
    try:
        from simulator.grid import data
        from simulator.grid.errors import GridDataError
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ForecastError(f"SimBench profiles need the grid extra (no module {exc.name!r})") from exc
    try:
        values = data.load_profiles([name])[name][0] if kind == "load" else data.res_profiles([name])[name]
    except GridDataError as exc:
        raise ForecastError(str(exc)) from exc
    return np.asarray(values, dtype=np.float64).reshape(-1).copy()


@dataclass(frozen=True)
class WindowedData:
    """Samples cut from one series: inputs ``x`` [N, window, 1], targets ``y`` [N] and, per sample, the
    index in the series of its last input (``t``) and of its target (``t + horizon``)."""

    x: Array
    y: Array
    last_index: NDArray[np.int64]
    target_index: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, mask: NDArray[np.bool_] | NDArray[np.int64]) -> WindowedData:
        return WindowedData(self.x[mask], self.y[mask], self.last_index[mask], self.target_index[mask])


def calendar_features(index: NDArray[np.int64], start: dt.datetime = PROFILE_START) -> Array:
    """Known-in-advance covariates of the slots ``index``: sine and cosine of the time of day, and
    Saturday / Sunday flags, shaped [len(index), 4]."""
    idx = np.asarray(index, dtype=np.int64)
    phase = 2 * np.pi * (idx % SLOTS_PER_DAY) / SLOTS_PER_DAY
    weekday = (start.weekday() + idx // SLOTS_PER_DAY) % 7
    return np.stack(
        [np.sin(phase), np.cos(phase), (weekday == 5).astype(np.float64), (weekday == 6).astype(np.float64)],
        axis=-1,
    )


CALENDAR_FEATURES = 4


def make_windows(
    series: Array, window: int = WINDOW, horizon: int = HORIZON, calendar: bool = False
) -> WindowedData:
    """Every (inputs, target) pair of ``series``: ``x[i, :, 0] = s[i : i + window]`` and ``y[i] = s[i +
    window - 1 + horizon]``; the target always lies ``horizon`` steps after the last input, never inside
    the inputs. With ``calendar``, each input step ``k`` also carries :func:`calendar_features` of the
    slot ``k + horizon`` (the time its value "predicts": the target's time of day on the last step)."""
    s = np.asarray(series, dtype=np.float64).reshape(-1)
    if window < 1 or horizon < 1:
        raise ForecastError("window and horizon must be at least 1")
    count = s.shape[0] - window - horizon + 1
    if count < 1:
        raise ForecastError(f"a series of {s.shape[0]} values has no window of {window} + horizon {horizon}")
    x = np.lib.stride_tricks.sliding_window_view(s, window)[:count][:, :, None]
    if calendar:
        steps = np.arange(s.shape[0] - horizon + 1, dtype=np.int64)[: count + window - 1] + horizon
        cal = np.lib.stride_tricks.sliding_window_view(calendar_features(steps), window, axis=0)[:count]
        x = np.concatenate([x, np.moveaxis(cal, -1, 1)], axis=-1)
    last = np.arange(window - 1, window - 1 + count, dtype=np.int64)
    target = last + horizon
    return WindowedData(np.ascontiguousarray(x), s[target].copy(), last, target)


def seasonal_naive(series: Array, target_index: NDArray[np.int64], period: int = SLOTS_PER_DAY) -> Array:
    """The same time one period (a day) before each target: ``s[target - period]``."""
    idx = np.asarray(target_index, dtype=np.int64)
    if idx.size and int(idx.min()) < period:
        raise ForecastError(f"a target before index {period} has no value one period earlier")
    return np.asarray(series, dtype=np.float64)[idx - period]


def mape(y: Array, y_hat: Array) -> float:
    """Mean absolute percentage error, as a fraction (0.1 = 10 %). Targets must be non-zero."""
    y = np.asarray(y, dtype=np.float64)
    if np.any(y == 0):
        raise ForecastError("MAPE is undefined for a zero target")
    return float(np.mean(np.abs((y - np.asarray(y_hat, dtype=np.float64)) / y)))


@dataclass(frozen=True)
class MonthSplit:
    """Train / validation / held-out test by the calendar month (1-12) of a sample's target time.

    Training takes the targets of the months before ``val_month``; later months (after ``test_month``)
    are used by nobody, so no training sample is later than the validation and test months.
    """

    val_month: int = 10
    test_month: int = 11
    start: dt.datetime = PROFILE_START

    def __post_init__(self) -> None:
        if not 2 <= self.val_month < self.test_month <= 12:
            raise ForecastError("need 2 <= val_month < test_month <= 12")

    def months(self, target_index: NDArray[np.int64]) -> NDArray[np.int64]:
        # Month of each 15-minute slot: a day-of-year -> month table (vectorised).
        days = np.asarray(target_index, dtype=np.int64) // SLOTS_PER_DAY
        first = self.start.date()
        n_days = int(days.max()) + 1 if days.size else 0
        table = np.array([(first + dt.timedelta(days=d)).month for d in range(n_days)], dtype=np.int64)
        return table[days] if days.size else days

    def masks(
        self, target_index: NDArray[np.int64]
    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
        month = self.months(target_index)
        return month < self.val_month, month == self.val_month, month == self.test_month

    def train_end(self) -> int:
        """Series index of the first slot of the validation month (training data ends before it)."""
        first = dt.datetime(self.start.year, self.val_month, 1)
        return int((first - self.start) / STEP)


@dataclass(frozen=True)
class Scaler:
    """Standardisation with statistics of the training period only, optionally of ``log(v + offset)``.

    The log scale suits MAPE: squared errors of logs penalise relative errors, so an MSE-trained model
    forecasts a typical (median-like) value instead of the mean that large outliers pull up. ``offset``
    (a small share of the training mean) keeps zeros finite.
    """

    mean: float
    std: float
    log: bool = False
    offset: float = 0.0

    @classmethod
    def fit(cls, values: Array, log: bool = False, offset_share: float = 0.05) -> Scaler:
        v = np.asarray(values, dtype=np.float64)
        offset = float(offset_share * abs(v.mean())) if log else 0.0
        if log and (offset <= 0 or float(v.min()) + offset <= 0):
            raise ForecastError("a log scale needs non-negative values with a positive mean")
        w = np.log(v + offset) if log else v
        std = float(w.std())
        return cls(float(w.mean()), std if std > 0 else 1.0, log, offset)

    def transform(self, values: Array) -> Array:
        v = np.asarray(values, dtype=np.float64)
        if self.log:
            v = np.log(np.maximum(v + self.offset, 1e-12))
        return (v - self.mean) / self.std

    def inverse(self, values: Array) -> Array:
        v = np.asarray(values, dtype=np.float64) * self.std + self.mean
        return np.exp(v) - self.offset if self.log else v

    def inputs(self, x: Array) -> Array:
        """Model inputs [N, window, F]: channel 0 (the series) scaled, calendar channels as they are."""
        out = np.array(x, dtype=np.float64, copy=True)
        out[..., 0] = self.transform(out[..., 0])
        return out


# --------------------------------------------------------------------------------------------- model


class GRUForecaster(nn.Module):
    """Two stacked GRU layers and a linear head: [B, window, features] -> [B] (the value 24 h ahead).

    The GRU layers are separate modules (``gru1``, ``gru2``) so that transfer learning freezes exactly
    the first one (the seed's Figure 8: GRU, GRU, dense).
    """

    def __init__(self, n_features: int = 1, hidden: int = 32) -> None:
        super().__init__()
        self.gru1 = nn.GRU(n_features, hidden, batch_first=True)
        self.gru2 = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru1(x)
        out, _ = self.gru2(out)
        y: torch.Tensor = self.head(out[:, -1]).squeeze(-1)
        return y


def new_model(n_features: int, hidden: int = 32, seed: int = 0) -> GRUForecaster:
    """A fresh network; the same seed gives the same initial weights."""
    torch.manual_seed(seed)
    return GRUForecaster(n_features, hidden)


def freeze_first_layer(model: GRUForecaster) -> None:
    """Transfer learning: the first GRU layer keeps its pre-trained weights (no gradient, no update)."""
    model.gru1.requires_grad_(False)


@dataclass(frozen=True)
class FitConfig:
    """Training hyper-parameters; the defaults are the seed's Table 3 (Adam, lr 0.001, MSE, batch 128,
    50 epochs). ``max_samples`` draws that many training samples per epoch (a shorter epoch on 2 CPU
    cores); ``None`` uses them all."""

    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ForecastError("epochs and batch_size must be >= 1 and lr > 0")
        if self.max_samples is not None and self.max_samples < 1:
            raise ForecastError("max_samples must be >= 1")


@dataclass
class History:
    """Per-epoch mean training loss (model units) and validation MSE (whatever ``evaluate`` returns)."""

    train_loss: list[float] = field(default_factory=list)
    val_mse: list[float] = field(default_factory=list)
    samples_per_epoch: int = 0


def _tensor(values: Array) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)


def predict(model: nn.Module, x: Array, batch_size: int = 4096) -> Array:
    """Model outputs for model inputs ``x`` [N, window, features], in evaluation mode, without grad."""
    model.eval()
    outs: list[Array] = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            outs.append(model(_tensor(x[start : start + batch_size])).numpy().astype(np.float64))
    return np.concatenate(outs) if outs else np.zeros(0)


def fit(
    model: nn.Module,
    x: Array,
    y: Array,
    config: FitConfig,
    evaluate: Callable[[nn.Module], float] | None = None,
) -> History:
    """Adam + MSE mini-batches over the parameters that require a gradient (frozen ones stay as they
    are); ``evaluate(model)`` after every epoch. Reproducible for a given ``config.seed``."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ForecastError("x and y need the same, non-zero number of samples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ForecastError("the model has no trainable parameter")
    optimizer = torch.optim.Adam(params, lr=config.lr)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(config.seed)
    xt, yt = _tensor(x), _tensor(y)
    n = xt.shape[0]
    per_epoch = n if config.max_samples is None else min(n, config.max_samples)
    history = History(samples_per_epoch=per_epoch)
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=generator)[:per_epoch]
        total = 0.0
        for start in range(0, per_epoch, config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.shape[0]
        history.train_loss.append(total / per_epoch)
        if evaluate is not None:
            history.val_mse.append(float(evaluate(model)))
    model.eval()
    return history


# ------------------------------------------------------------------------------------------ intervals


@dataclass(frozen=True)
class GaussianInterval:
    """A central interval from residuals assumed Gaussian: ``y_hat + mean +- z * std`` (90 %: z 1.645)."""

    mean: float
    std: float
    level: float = 0.9

    @classmethod
    def from_residuals(cls, residuals: Array, level: float = 0.9) -> GaussianInterval:
        r = np.asarray(residuals, dtype=np.float64)
        if r.size < 2 or not np.all(np.isfinite(r)):
            raise ForecastError("need at least 2 finite residuals")
        if not 0 < level < 1:
            raise ForecastError("level must be in (0, 1)")
        return cls(float(r.mean()), float(r.std(ddof=1)), level)

    @property
    def z(self) -> float:
        from scipy.stats import norm

        return float(norm.ppf(0.5 + self.level / 2))

    def bounds(self, y_hat: Array) -> tuple[Array, Array]:
        center = np.asarray(y_hat, dtype=np.float64) + self.mean
        half = self.z * self.std
        return center - half, center + half


def coverage(y: Array, lower: Array, upper: Array) -> float:
    """Share of targets inside their interval."""
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean((y >= np.asarray(lower)) & (y <= np.asarray(upper))))


def _anderson_pvalue(statistic: float, n: int) -> float:
    # Anderson-Darling p-value for normality with estimated mean and variance (D'Agostino & Stephens
    # 1986, Table 4.9); scipy's ``anderson`` gives critical values only.
    a = statistic * (1 + 0.75 / n + 2.25 / n**2)
    if a >= 0.6:
        a = min(a, 153.0)  # the fitted quadratic turns upwards past its minimum near 153
        return float(math.exp(1.2937 - 5.709 * a + 0.0186 * a**2))
    if a > 0.34:
        return float(math.exp(0.9177 - 4.279 * a - 1.38 * a**2))
    if a > 0.2:
        return float(1 - math.exp(-8.318 + 42.796 * a - 59.938 * a**2))
    return float(1 - math.exp(-13.436 + 101.14 * a - 223.73 * a**2))


def normality_pvalues(residuals: Array) -> dict[str, float]:
    """p-values of the seed's three normality tests (Table 4): Shapiro-Wilk (on the first 5000
    residuals, where scipy's p-value holds), Anderson-Darling and D'Agostino-Pearson. Below 0.05 the
    Gaussian assumption is rejected. Needs at least 20 residuals."""
    from scipy import stats

    r = np.asarray(residuals, dtype=np.float64)
    if r.size < 20 or not np.all(np.isfinite(r)):
        raise ForecastError("normality tests need at least 20 finite residuals")
    anderson = stats.anderson(r, dist="norm")
    return {
        "shapiro_wilk": float(stats.shapiro(r[:5000]).pvalue),
        "anderson_darling": _anderson_pvalue(float(anderson.statistic), int(r.size)),
        "dagostino_pearson": float(stats.normaltest(r).pvalue),
    }


# -------------------------------------------------------------------------------------- forecaster


@dataclass
class Forecaster:
    """A trained forecaster in the series' own units: scaler + GRU (+ the interval once calibrated).

    Inputs are raw windows [N, window, F] as :func:`make_windows` cuts them (channel 0 in series units,
    then the calendar channels when ``calendar``).
    """

    model: GRUForecaster
    scaler: Scaler
    calendar: bool = True
    window: int = WINDOW
    interval: GaussianInterval | None = None

    @property
    def n_features(self) -> int:
        return 1 + (CALENDAR_FEATURES if self.calendar else 0)

    def model_inputs(self, x: Array) -> Array:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 3 or arr.shape[1:] != (self.window, self.n_features):
            raise ForecastError(
                f"expected inputs shaped [N, {self.window}, {self.n_features}], got {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ForecastError("inputs must be finite")
        return self.scaler.inputs(arr)

    def predict_scaled(self, x: Array) -> Array:
        """Model-unit forecasts (scaled, log when the scaler is)."""
        return predict(self.model, self.model_inputs(x))

    def predict(self, x: Array) -> Array:
        """Forecasts in series units."""
        return self.scaler.inverse(self.predict_scaled(x))

    def mse(self, data: WindowedData, units: Scaler | None = None) -> float:
        """Mean squared error in the units of ``units`` (e.g. the standardised log scale the model
        trains on; a fixed one compares models with different scalers), or series units when None."""
        y_hat, y = self.predict(data.x), data.y
        if units is not None:
            y_hat, y = units.transform(y_hat), units.transform(y)
        return float(np.mean((y_hat - y) ** 2))

    def residuals(self, data: WindowedData) -> Array:
        """Model-unit residuals (target - forecast): on the log scale when the scaler is."""
        return self.scaler.transform(data.y) - self.predict_scaled(data.x)

    def calibrate(self, val: WindowedData, level: float = 0.9) -> GaussianInterval:
        """Fit the forecast interval on validation residuals (model units) and keep it."""
        self.interval = GaussianInterval.from_residuals(self.residuals(val), level)
        return self.interval

    def predict_interval(self, x: Array) -> tuple[Array, Array, Array]:
        """(forecast, lower, upper) in series units. The Gaussian interval lives in model units, so on a
        log scale it is asymmetric in series units (wider above)."""
        if self.interval is None:
            raise ForecastError("calibrate the forecaster on validation data first")
        scaled = self.predict_scaled(x)
        lower, upper = self.interval.bounds(scaled)
        return self.scaler.inverse(scaled), self.scaler.inverse(lower), self.scaler.inverse(upper)


def train_forecaster(
    train: WindowedData,
    config: FitConfig,
    *,
    scaler: Scaler,
    calendar: bool,
    hidden: int = 32,
    val: WindowedData | None = None,
    val_scaler: Scaler | None = None,
    init: GRUForecaster | None = None,
    freeze_first: bool = False,
) -> tuple[Forecaster, History]:
    """Train a forecaster on ``train`` (from ``init``'s weights when given: transfer learning, with the
    first GRU layer frozen when ``freeze_first``); the validation MSE per epoch, in the units of
    ``val_scaler`` (default: ``scaler``, the model's own units)."""
    n_features = train.x.shape[-1]
    model = copy.deepcopy(init) if init is not None else new_model(n_features, hidden, config.seed)
    if freeze_first:
        freeze_first_layer(model)
    forecaster = Forecaster(model, scaler, calendar, train.x.shape[1])
    evaluate = None if val is None else (lambda _m: forecaster.mse(val, val_scaler or scaler))
    history = fit(model, scaler.inputs(train.x), scaler.transform(train.y), config, evaluate)
    return forecaster, history


def split_series(
    series: Array,
    split: MonthSplit = MonthSplit(),
    window: int = WINDOW,
    horizon: int = HORIZON,
    calendar: bool = True,
    log: bool = True,
) -> tuple[Scaler, WindowedData, WindowedData, WindowedData]:
    """The scaler (fitted on the training period only) and the train / validation / test samples."""
    data = make_windows(series, window, horizon, calendar)
    train, val, test = split.masks(data.target_index)
    scaler = Scaler.fit(np.asarray(series)[: split.train_end()], log=log)
    return scaler, data.subset(train), data.subset(val), data.subset(test)


def last_days(data: WindowedData, days: float) -> WindowedData:
    """The samples whose targets fall in the last ``days`` days of ``data`` (a little target data)."""
    if days <= 0 or len(data) == 0:
        raise ForecastError("need positive days and some samples")
    end = int(data.target_index.max()) + 1
    return data.subset(data.target_index >= end - round(days * SLOTS_PER_DAY))


def small_data_scaler(data: WindowedData, log: bool = True) -> Scaler:
    """A scaler fitted on the values a small training set holds (its inputs and targets), nothing else."""
    return Scaler.fit(np.concatenate([data.x[:, :, 0].ravel(), data.y]), log=log)


# ---------------------------------------------------------------------------------- experiments


@dataclass
class ForecastReport:
    """The held-out month: MAPE of the GRU vs seasonal-naive, interval coverage, residual normality."""

    mape_model: float
    mape_seasonal_naive: float
    val_mse: float
    test_mse: float
    interval_level: float
    coverage_gaussian: float
    coverage_empirical: float
    normality_p: dict[str, float]
    samples: dict[str, int]
    history: History

    @property
    def mape_gain_vs_seasonal_naive(self) -> float:
        return 1 - self.mape_model / self.mape_seasonal_naive


def evaluate_forecaster(
    series: Array,
    config: FitConfig = FitConfig(),
    *,
    split: MonthSplit = MonthSplit(),
    hidden: int = 32,
    calendar: bool = True,
    log: bool = True,
    level: float = 0.9,
) -> tuple[Forecaster, ForecastReport]:
    """Train on the training months, calibrate the interval on the validation month, score the test
    month against seasonal-naive. The empirical coverage is that of an interval from the validation
    residuals' own quantiles, beside the Gaussian one, to show what the Gaussian assumption costs."""
    scaler, train, val, test = split_series(series, split, calendar=calendar, log=log)
    forecaster, history = train_forecaster(
        train, config, scaler=scaler, calendar=calendar, hidden=hidden, val=val
    )
    interval = forecaster.calibrate(val, level)
    residuals = forecaster.residuals(val)
    y_hat, lower, upper = forecaster.predict_interval(test.x)
    scaled = forecaster.predict_scaled(test.x)
    lo_q, hi_q = np.quantile(residuals, [0.5 - level / 2, 0.5 + level / 2])
    report = ForecastReport(
        mape_model=mape(test.y, y_hat),
        mape_seasonal_naive=mape(test.y, seasonal_naive(series, test.target_index)),
        val_mse=forecaster.mse(val),
        test_mse=float(np.mean((y_hat - test.y) ** 2)),
        interval_level=interval.level,
        coverage_gaussian=coverage(test.y, lower, upper),
        coverage_empirical=coverage(scaler.transform(test.y), scaled + lo_q, scaled + hi_q),
        normality_p=normality_pvalues(residuals),
        samples={"train": len(train), "val": len(val), "test": len(test)},
        history=history,
    )
    return forecaster, report


@dataclass
class TransferReport:
    """Transfer learning (pre-trained, first GRU layer frozen) vs from scratch on little target data.

    ``days`` are the target training sizes (the last days before the validation month); each run's
    validation MSE is that of its best epoch (the version save-on-improvement keeps), on one fixed scale
    (the standardised log scale fitted on the ``reference_days``). ``*_curve`` are the per-epoch
    validation MSE of both at ``reference_days``.
    """

    days: list[float]
    samples: list[int]
    scratch_val_mse: list[float]
    transfer_val_mse: list[float]
    reference_days: float
    scratch_curve: list[float]
    transfer_curve: list[float]
    source_val_mse: float

    @property
    def target(self) -> float:
        """The from-scratch model's validation MSE with all ``reference_days`` of target data."""
        return self.scratch_val_mse[self.days.index(self.reference_days)]

    @property
    def days_needed(self) -> float | None:
        """The fewest target days with which the transferred model reaches :attr:`target` (None: never)."""
        for d, mse in zip(self.days, self.transfer_val_mse, strict=True):
            if mse <= self.target:
                return d
        return None

    @property
    def data_ratio(self) -> float | None:
        needed = self.days_needed
        return None if needed is None else needed / self.reference_days

    @property
    def epochs_needed(self) -> int | None:
        """First epoch (1-based) at which the transferred model, on ``reference_days``, reaches the
        from-scratch model's best validation MSE on the same data."""
        for epoch, mse in enumerate(self.transfer_curve, start=1):
            if mse <= min(self.scratch_curve):
                return epoch
        return None

    @property
    def epochs_ratio(self) -> float | None:
        needed = self.epochs_needed
        return None if needed is None else needed / len(self.scratch_curve)


def transfer_comparison(
    source: Array,
    target: Array,
    *,
    days: Sequence[float] = (3.5, 7, 14, 28),
    reference_days: float | None = None,
    config: FitConfig = FitConfig(),
    pretrain_config: FitConfig = FitConfig(),
    split: MonthSplit = MonthSplit(),
    hidden: int = 32,
    calendar: bool = True,
    log: bool = True,
) -> TransferReport:
    """Pre-train on ``source``'s training months, then for each size in ``days``: fine-tune a copy with
    the first GRU layer frozen, and train a fresh network, both on the same last days of ``target``'s
    training months (scaler fitted on those days only) for ``config.epochs``; score both on the target's
    validation month."""
    sizes = sorted({float(d) for d in days})
    reference = float(reference_days) if reference_days is not None else sizes[-1]
    if reference not in sizes:
        raise ForecastError("reference_days must be one of days")
    src_scaler, src_train, src_val, _ = split_series(source, split, calendar=calendar, log=log)
    pretrained, _ = train_forecaster(
        src_train, pretrain_config, scaler=src_scaler, calendar=calendar, hidden=hidden
    )
    _, tgt_train, tgt_val, _ = split_series(target, split, calendar=calendar, log=log)
    # One fixed scoring scale for every size (the reference days' scaler): MSEs stay comparable, and
    # scoring touches no model.
    units = small_data_scaler(last_days(tgt_train, reference), log)
    report = TransferReport(sizes, [], [], [], reference, [], [], pretrained.mse(src_val, src_scaler))
    for size in sizes:
        small = last_days(tgt_train, size)
        scaler = small_data_scaler(small, log)
        runs = [
            train_forecaster(
                small, config, scaler=scaler, calendar=calendar, hidden=hidden, val=tgt_val, val_scaler=units
            ),
            train_forecaster(
                small,
                config,
                scaler=scaler,
                calendar=calendar,
                val=tgt_val,
                val_scaler=units,
                init=pretrained.model,
                freeze_first=True,
            ),
        ]
        (_, h_scratch), (_, h_tuned) = runs
        report.samples.append(len(small))
        report.scratch_val_mse.append(min(h_scratch.val_mse))
        report.transfer_val_mse.append(min(h_tuned.val_mse))
        if size == reference:
            report.scratch_curve, report.transfer_curve = h_scratch.val_mse, h_tuned.val_mse
    return report
