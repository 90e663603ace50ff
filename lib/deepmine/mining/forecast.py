"""Demand forecasts: net quantity per period, per product, category or in total, `forecast.horizon`
periods ahead with 80% intervals -> `mining/forecast/run_date=D`.

Series (`series_frame`, Spark): net quantity (returns subtract) of the clean transaction lines up
to the end of D, summed per series and period (`forecast.frequency`: day, week from Monday, or
month). Only complete periods count: the last is the one that ends on or before D, and the
forecast's first period is the one after it. Each series runs from its first period with a line to
that last period on a full grid built in Spark, the periods without lines filled with zeros.

Fitting (`forecast_series`, numpy, one series): `groupBy("series_id").applyInPandas` gives each
series to one Python call with its own set of Nixtla statsforecast models (`forecast.models`):
AutoARIMA, AutoETS, the seasonal naive, Croston (only for intermittent series), a plain
ARIMA(1,1,1), MSTL (only for seasons longer than the automatic models fit) and
`mean_of_models`, the mean of the others' forecasts (a forecast combination, the M4
competition's lesson: Makridakis et al. 2018; it costs no fit of its own). A rolling-origin
backtest (`forecast.backtest_windows` windows of `horizon` periods, the last ending at the last
complete period) scores them by MASE: mean absolute error over the mean absolute seasonal
difference of the history before the first origin. The model
with the smallest error over every window is refitted on the whole series and forecasts. The
MASE reported for a series is not graded on the data its choice was made on: each window is
scored with the model chosen on the other windows (cross-validation over the windows), or, with
`forecast.selection_windows` N > 0, the backtest starts N windows earlier, those windows are
only chosen on, and each reported window is scored with the model chosen on every window before
it (forward in time, as the nightly itself chooses). The 80% intervals are conformal by default
(`forecast.intervals`): the forecast +- the 80th percentile of the chosen model's absolute
backtest errors (each window's coverage judged with the errors of the windows its choice was
made on); `model` takes the models' own intervals instead (Croston has none: its band is then
the 10th-90th percentile of the recent periods).

Fallback (counted in `series_skipped`, with model `zeros`, `seasonal_naive` or `mean`): a series
that is all zeros forecasts zeros; one with fewer than `forecast.min_history` periods before its
first backtest origin repeats its last season (its mean when shorter than a season), its band the
10th-90th percentile of its periods.

A season is fitted only when the history before the first origin holds two of them; AutoARIMA and
AutoETS fit it only up to `forecast.max_auto_season` periods (longer seasons: the seasonal naive
and MSTL keep it, they fit none). MSTL (Bandara, Hyndman and Bergmeir 2021: STL's seasonal
component, repeated, plus a non-seasonal AutoETS of the rest) is a candidate only for such a
longer season; a series whose history before the first origin holds fewer than two of its
seasons, or whose season AutoARIMA and AutoETS fit themselves, is chosen among the others
without it (STL cannot tell a season it has seen once from that year's noise). The stage is
`degraded` when the summed MASE of the chosen models does not beat the seasonal naive's on the
same (reported) windows.
"""
from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deepmine.core.config import Config, ConfigError, ForecastConfig
from deepmine.core.lake import Lake, StageRun
from deepmine.mining.rfm import end_of_day
from deepmine.core.schemas import MINING_FORECAST

COMBINATION = "mean_of_models"
LONG_SEASON = "mstl"  # the candidate for seasons longer than max_auto_season
MODELS = ("auto_arima", "auto_ets", "seasonal_naive", "croston", "arima", LONG_SEASON,
          COMBINATION)
DEFAULT_SEASON = {"day": 7, "week": 52, "month": 12}
LEVEL = 80  # the interval's coverage, percent
HISTORY_POINTS = 156  # periods of the largest series kept in the manifest for the report

# What one applyInPandas call returns per series: its forecast rows, each carrying the series'
# backtest summary (the same on every row; the driver keeps one per series).
FIT_SCHEMA = T.StructType([f for f in MINING_FORECAST.fields if f.name != "level"] + [
    T.StructField("fitted", T.BooleanType(), False),
    T.StructField("mase", T.DoubleType(), True),
    T.StructField("baseline_mase", T.DoubleType(), True),
    T.StructField("held_out", T.LongType(), False),
    T.StructField("covered", T.LongType(), False),
    T.StructField("volume", T.DoubleType(), False),
])


def check_config(cfg: ForecastConfig) -> None:
    if cfg.horizon < 1:
        raise ConfigError(f"config key 'forecast.horizon': expected >= 1, found {cfg.horizon}")
    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown or "seasonal_naive" not in cfg.models:
        raise ConfigError(f"config key 'forecast.models': expected a list from {list(MODELS)} "
                          f"that holds seasonal_naive (the baseline), found {cfg.models}")
    if COMBINATION in cfg.models and len(set(cfg.models) - {COMBINATION, "croston",
                                                            LONG_SEASON}) < 2:
        raise ConfigError(f"config key 'forecast.models': {COMBINATION} averages the other "
                          f"candidates and needs two besides croston and {LONG_SEASON} (which "
                          f"not every series gets), found {cfg.models}")
    if cfg.selection_windows < 0:
        raise ConfigError(f"config key 'forecast.selection_windows': expected >= 0, "
                          f"found {cfg.selection_windows}")
    for key in ("backtest_windows", "min_history", "max_auto_season"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key 'forecast.{key}': expected >= 1, "
                              f"found {getattr(cfg, key)}")
    if cfg.season_length < 0:
        raise ConfigError(f"config key 'forecast.season_length': expected >= 0 (0 = the "
                          f"frequency's default), found {cfg.season_length}")


def season_length(cfg: ForecastConfig) -> int:
    return cfg.season_length or DEFAULT_SEASON[cfg.frequency]


# =============================================================== periods (Spark and Python)

def _step(frequency: str) -> Column:
    return F.expr({"day": "INTERVAL 1 DAY", "week": "INTERVAL 7 DAYS",
                   "month": "INTERVAL 1 MONTH"}[frequency])


def period_start(ts: Column, frequency: str) -> Column:
    """The start (a date) of the period holding `ts`: the day, the Monday, the first of the month."""
    if frequency == "day":
        return F.to_date(ts)
    return F.to_date(F.date_trunc("week" if frequency == "week" else "month", ts))


def _start_of(day: dt.date, frequency: str) -> dt.date:
    if frequency == "week":
        return day - dt.timedelta(days=day.weekday())
    if frequency == "month":
        return day.replace(day=1)
    return day


def shift(start: dt.date, periods: int, frequency: str) -> dt.date:
    """The period start `periods` periods after (or before) `start`."""
    if frequency == "day":
        return start + dt.timedelta(days=periods)
    if frequency == "week":
        return start + dt.timedelta(weeks=periods)
    months = start.year * 12 + start.month - 1 + periods
    return dt.date(months // 12, months % 12 + 1, 1)


def last_complete_period(run_date: str, frequency: str) -> dt.date:
    """The start of the last period that ends on or before the end of D."""
    after = dt.date.fromisoformat(run_date) + dt.timedelta(days=1)
    return shift(_start_of(after, frequency), -1, frequency)


# =============================================================== series (Spark)

def series_key(lines: DataFrame, level: str, products: DataFrame | None) -> DataFrame:
    """`lines` with `series_id`: the product, its category ("(none)" for products the products
    file does not name) or "total"."""
    if level == "product":
        return lines.withColumn("series_id", F.col("product_id"))
    if level == "total":
        return lines.withColumn("series_id", F.lit("total"))
    if products is None:
        raise ConfigError("forecast.level category needs input.products (product_id,category); "
                          "it is empty: set it, or use forecast.level product or total")
    categories = products.select("product_id", F.col("category").cast("string").alias("_category"))
    return (lines.join(F.broadcast(categories), "product_id", "left")
            .withColumn("series_id", F.coalesce("_category", F.lit("(none)"))).drop("_category"))


def series_frame(lines: DataFrame, run_date: str, cfg: ForecastConfig,
                 products: DataFrame | None = None) -> DataFrame:
    """Clean transaction lines -> (series_id, ds, y): net quantity per series and complete period
    up to D, every period from the series' first line to the last complete one, zeros where
    nothing was sold. Lines after the last complete period are never read."""
    last = last_complete_period(run_date, cfg.frequency)
    end = dt.datetime.combine(shift(last, 1, cfg.frequency), dt.time())
    kept = lines.where((F.col("invoice_ts") < F.lit(end_of_day(run_date)))
                       & (F.col("invoice_ts") < F.lit(end)))
    keyed = series_key(kept, cfg.level, products)
    sold = (keyed.groupBy("series_id", period_start(F.col("invoice_ts"), cfg.frequency).alias("ds"))
            .agg(F.sum("quantity").cast("double").alias("y")))
    grid = (sold.groupBy("series_id").agg(F.min("ds").alias("_first"))
            .select("series_id", F.explode(F.sequence(F.col("_first"), F.lit(last),
                                                      _step(cfg.frequency))).alias("ds")))
    return (grid.join(sold, ["series_id", "ds"], "left")
            .select("series_id", "ds", F.coalesce("y", F.lit(0.0)).alias("y")))


# =============================================================== one series (numpy)

def _model(name: str, season: int, auto_season: int):
    from statsforecast.models import (ARIMA, MSTL, AutoARIMA, AutoETS, CrostonClassic,
                                      SeasonalNaive)
    if name == "auto_arima":
        return AutoARIMA(season_length=auto_season)
    if name == "auto_ets":
        return AutoETS(season_length=auto_season)
    if name == "seasonal_naive":
        return SeasonalNaive(season_length=season)
    if name == "croston":
        return CrostonClassic()
    if name == LONG_SEASON:  # its trend forecaster must be non-seasonal: MSTL holds the season
        return MSTL(season_length=season, trend_forecaster=AutoETS(model="ZZN"))
    return ARIMA(order=(1, 1, 1), include_constant=False)


def _band(history: np.ndarray, mean: np.ndarray, recent: int) -> tuple[np.ndarray, np.ndarray]:
    """The 10th-90th percentile of the last `recent` periods, widened to hold the forecast."""
    tail = history[-recent:]
    low, high = np.quantile(tail, 0.1), np.quantile(tail, 0.9)
    return np.minimum(low, mean), np.maximum(high, mean)


def _predict(name: str, y: np.ndarray, h: int, season: int, auto_season: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit `name` on `y`; the forecast of the next `h` periods and its 80% band."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _model(name, season, auto_season)
        if name == "croston":
            mean = np.asarray(model.forecast(y=y, h=h)["mean"], dtype=float)
            low, high = _band(y, mean, max(2 * season, 4 * h))
            return mean, low, high
        out = model.forecast(y=y, h=h, level=[LEVEL])
    mean = np.asarray(out["mean"], dtype=float)
    return mean, np.asarray(out[f"lo-{LEVEL}"], dtype=float), np.asarray(out[f"hi-{LEVEL}"],
                                                                          dtype=float)


def _predict_all(names: list[str], y: np.ndarray, h: int, season: int, auto_season: int
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each of `names` fitted on `y` (those that fail or give a non-finite forecast left out);
    COMBINATION, when named, is the mean of the others' forecasts and bands (two at least)."""
    out = {}
    for name in names:
        if name == COMBINATION:
            continue
        try:
            got = _predict(name, y, h, season, auto_season)
        except Exception:  # noqa: BLE001 - a model that cannot fit this window loses it
            continue
        if np.all(np.isfinite(got[0])):
            out[name] = got
    if COMBINATION in names and len(out) >= 2:
        out[COMBINATION] = tuple(np.mean([got[i] for got in out.values()], axis=0)
                                 for i in range(3))
    return out


def _conformal(abs_errors: np.ndarray) -> float:
    """The half-width that holds LEVEL% of the backtest's absolute errors, with the split
    conformal correction (the ceil((n + 1) * level)-th smallest of n)."""
    values = np.sort(abs_errors[np.isfinite(abs_errors)].ravel())
    if not len(values):
        return 0.0
    k = int(np.ceil((len(values) + 1) * LEVEL / 100))
    return float(values[min(k, len(values)) - 1])


def _scale(history: np.ndarray, season: int) -> float:
    """MASE's denominator: the mean absolute seasonal difference (lag 1 when that is zero); the
    mean absolute value, or 1, for a series that never changes."""
    for lag in (season, 1):
        if len(history) > lag:
            value = float(np.mean(np.abs(history[lag:] - history[:-lag])))
            if value > 0:
                return value
    return float(np.mean(np.abs(history))) or 1.0


def _fallback(y: np.ndarray, h: int, season: int) -> dict[str, Any]:
    if not np.any(y):
        zeros = np.zeros(h)
        return {"model": "zeros", "yhat": zeros, "lower": zeros, "upper": zeros}
    if len(y) >= season > 1:
        mean, name = np.resize(y[-season:], h).astype(float), "seasonal_naive"
    else:
        mean, name = np.full(h, float(np.mean(y))), "mean"
    low, high = _band(y, mean, len(y))
    return {"model": name, "yhat": mean, "lower": low, "upper": high}


def forecast_series(y: np.ndarray, cfg: ForecastConfig) -> dict[str, Any]:
    """One series' backtest, choice and forecast: model, yhat, lower, upper (arrays of
    `cfg.horizon`), fitted (False: the fallback), mase and baseline_mase (on the reported
    backtest windows; None for the fallback), held_out and covered (their points, and those
    inside the 80% band)."""
    y = np.asarray(y, dtype=float)
    h, m = cfg.horizon, season_length(cfg)
    chosen_only = cfg.selection_windows  # the first windows: chosen on, never reported
    windows = chosen_only + cfg.backtest_windows
    first = len(y) - windows * h
    summary = {"fitted": False, "mase": None, "baseline_mase": None, "held_out": 0, "covered": 0}
    if first < cfg.min_history or not np.any(y[:first] if first > 0 else y):
        return {**summary, **_fallback(y, h, m)}
    season = m if first >= 2 * m else 1
    auto_season = season if season <= cfg.max_auto_season else 1
    intermittent = np.mean(y[:first] == 0) >= cfg.intermittent_zero_share
    names = [n for n in cfg.models if (n != "croston" or intermittent)
             and (n != LONG_SEASON or season > cfg.max_auto_season)]
    scale = _scale(y[:first], season)
    origins = [first + w * h for w in range(windows)]
    error = {n: np.full(windows, np.inf) for n in names}
    inside = {n: np.zeros(windows) for n in names}
    residual = {n: np.full((windows, h), np.inf) for n in names}  # absolute errors
    for w, origin in enumerate(origins):
        actual = y[origin:origin + h]
        for name, (mean, low, high) in _predict_all(names, y[:origin], h, season,
                                                    auto_season).items():
            residual[name][w] = np.abs(actual - mean)
            error[name][w] = float(np.mean(residual[name][w])) / scale
            inside[name][w] = float(np.sum((actual >= low) & (actual <= high)))
    total = {n: float(np.sum(e)) for n, e in error.items()}
    chosen = min(names, key=lambda n: (total[n], names.index(n)))
    # each reported window scored by the model the other windows choose, or with selection
    # windows the windows before it (the choice is not graded on the data it was made on);
    # one window and no selection window: its own choice
    honest, covered = [], 0.0
    for w in range(chosen_only, windows):
        if chosen_only:
            others = list(range(w))
        else:
            others = [v for v in range(windows) if v != w] or [w]
        pick = min(names, key=lambda n: (float(np.sum(error[n][others])), names.index(n)))
        honest.append(error[pick][w])
        if cfg.intervals == "conformal":
            covered += float(np.sum(residual[pick][w] <= _conformal(residual[pick][others])))
        else:
            covered += inside[pick][w]
    refit = _predict_all(names if chosen == COMBINATION else [chosen], y, h, season,
                         auto_season)
    if chosen not in refit:  # the refit on the whole series failed: the baseline
        chosen = "seasonal_naive"
        refit = _predict_all([chosen], y, h, season, auto_season)
    mean, low, high = refit[chosen]
    if cfg.intervals == "conformal":
        half = _conformal(residual[chosen])
        low, high = mean - half, mean + half
    return {"fitted": True, "model": chosen, "yhat": mean, "lower": low, "upper": high,
            "mase": float(np.mean(honest)),
            "baseline_mase": float(np.mean(error["seasonal_naive"][chosen_only:])),
            "held_out": cfg.backtest_windows * h, "covered": int(covered)}


def _fit_group(cfg: ForecastConfig, last: dt.date):
    def fit(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values("ds")
        y = pdf["y"].to_numpy(dtype=float)
        got = forecast_series(y, cfg)
        h = cfg.horizon
        return pd.DataFrame({
            "series_id": [pdf["series_id"].iloc[0]] * h,
            "ds": [shift(last, k, cfg.frequency) for k in range(1, h + 1)],
            "yhat": got["yhat"], "yhat_lower": got["lower"], "yhat_upper": got["upper"],
            "model": got["model"], "fitted": got["fitted"],
            "mase": got["mase"], "baseline_mase": got["baseline_mase"],
            "held_out": got["held_out"], "covered": got["covered"],
            "volume": float(np.sum(np.abs(y))),
        })
    return fit


# =============================================================== the stage

def forecasts(series: DataFrame, cfg: ForecastConfig, run_date: str) -> DataFrame:
    """(series_id, ds, y) -> FIT_SCHEMA rows: one statsforecast model set per series, in Spark."""
    last = last_complete_period(run_date, cfg.frequency)
    return series.groupBy("series_id").applyInPandas(_fit_group(cfg, last), FIT_SCHEMA)


def summarize(per_series: pd.DataFrame) -> dict[str, Any]:
    """One row per series (FIT_SCHEMA's summary columns) -> the stage's metrics."""
    fitted = per_series[per_series["fitted"]]
    held_out = int(fitted["held_out"].sum())
    out: dict[str, Any] = {
        "series": int(len(per_series)), "series_skipped": int((~per_series["fitted"]).sum()),
        "mase": None, "baseline_mase": None, "win_rate": None, "interval_coverage": None,
        "held_out_points": held_out,
        "models_chosen": {str(k): int(v) for k, v in per_series["model"].value_counts().items()},
    }
    if len(fitted):
        out.update(
            mase=round(float(fitted["mase"].mean()), 4),
            baseline_mase=round(float(fitted["baseline_mase"].mean()), 4),
            mase_sum=round(float(fitted["mase"].sum()), 4),
            baseline_mase_sum=round(float(fitted["baseline_mase"].sum()), 4),
            win_rate=round(float((fitted["mase"] < fitted["baseline_mase"]).mean()), 4),
            interval_coverage=round(float(fitted["covered"].sum() / held_out), 4))
    return out


def run_forecast(spark: SparkSession, config: Config, run_date: str) -> dict:
    """Series up to D, a backtest per series, forecasts of the next horizon: mining/forecast."""
    cfg = config.forecast
    check_config(cfg)
    lake = Lake(spark, config.lake.root)
    partition = f"run_date={run_date}"
    products = None
    if cfg.level == "category":
        from deepmine.deep.features import read_products
        products = read_products(spark, config.input.products)
        if products is None:
            series_key(None, "category", None)  # raises the ConfigError that says what to set
    with StageRun(lake, run_date, "forecast") as run:
        lines = (lake.read_history("clean/transactions", run_date)
                 .select("product_id", "quantity", "invoice_ts"))
        series = series_frame(lines, run_date, cfg, products).persist()
        try:
            fitted = forecasts(series, cfg, run_date).persist()
            per_series = (fitted.groupBy("series_id")
                          .agg(*[F.first(c).alias(c) for c in (
                              "model", "fitted", "mase", "baseline_mase", "held_out", "covered",
                              "volume")]).toPandas())
            metrics = summarize(per_series)
            table = fitted.select("series_id", F.lit(cfg.level).alias("level"), "ds", "yhat",
                                  "yhat_lower", "yhat_upper", "model")
            rows = lake.publish(table, "mining/forecast", partition) if len(per_series) else 0
            if len(per_series):
                metrics["largest_series"] = _largest(series, per_series)
            fitted.unpersist()
        finally:
            series.unpersist()
        last = last_complete_period(run_date, cfg.frequency)
        run.counts.update(series=metrics["series"], series_skipped=metrics["series_skipped"],
                          forecast_rows=rows, last_period=last.isoformat())
        run.metrics.update(metrics, frequency=cfg.frequency, level=cfg.level,
                           horizon=cfg.horizon, season_length=season_length(cfg))
        if metrics["mase"] is None:
            run.degrade(f"no series has {cfg.min_history} periods before its backtest "
                        f"({cfg.backtest_windows} windows of {cfg.horizon} {cfg.frequency}s): "
                        "every forecast is the fallback")
        elif metrics["mase_sum"] >= metrics["baseline_mase_sum"]:
            fitted_series = metrics["series"] - metrics["series_skipped"]
            run.degrade(f"the chosen models' MASE summed over {fitted_series} series "
                        f"({metrics['mase_sum']}) does not beat "
                        f"the seasonal naive's ({metrics['baseline_mase_sum']}) on the backtest")
        if rows:
            run.outputs["forecast"] = lake.partition_url("mining/forecast", partition)
    return {**run.counts, **run.metrics}


def _largest(series: DataFrame, per_series: pd.DataFrame) -> dict[str, Any]:
    """The series with the largest volume: its last HISTORY_POINTS periods, for the report."""
    top = per_series.sort_values(["volume", "series_id"], ascending=[False, True]).iloc[0]
    history = (series.where(F.col("series_id") == top["series_id"]).orderBy(F.col("ds").desc())
               .limit(HISTORY_POINTS).toPandas().sort_values("ds"))
    return {"series_id": str(top["series_id"]), "model": str(top["model"]),
            "history": [[d.isoformat(), float(v)] for d, v in zip(history["ds"], history["y"])]}
