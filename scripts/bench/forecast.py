"""Demand forecasts: series per second, Spark's groupBy().applyInPandas (deepmine.mining.forecast) against
statsforecast's own multi-process run (`StatsForecast(n_jobs=...)`) on the same series.

For each size (number of series): weekly series of `--periods` (130) periods (a level per series, a yearly
sine, a trend and Poisson noise; seeded), the same work on both sides with the same models:
  spark          deepmine.mining.forecast.forecasts: per series a rolling-origin backtest of
                 `--windows` windows of `--horizon` periods, the choice, the refit and the
                 forecast with 80% intervals, in Python workers (`--cores` of local[N])
  statsforecast  StatsForecast(models, freq="W-MON", n_jobs=--cores): cross_validation over the
                 same windows, then forecast(level=[80]) on the whole series (the choice per
                 series is a groupby on the driver, not timed)
Both include moving the series in and the forecasts out (Spark: from a pandas frame to the
collected rows). The models default to the cheap ones (seasonal naive and ARIMA(1,1,1)):
AutoARIMA takes 0.1-0.5 s per fit, hours at 10k series on two cores. Results: a table on stdout
and bench-results/forecast.json.

    .venv/bin/python scripts/bench/forecast.py --sizes 1000 10000
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))
from results import publish  # noqa: E402

START = dt.date(2024, 1, 1)  # a Monday


def make_series(n: int, periods: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(periods)
    level = rng.uniform(5, 80, n)[:, None]
    trend = rng.uniform(-0.05, 0.2, n)[:, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None]
    mean = np.maximum(level * (1 + 0.3 * np.sin(2 * np.pi * t / 52 + phase)) + trend * t, 0.5)
    y = rng.poisson(mean).astype(float)
    ds = [START + dt.timedelta(weeks=int(k)) for k in t]
    return pd.DataFrame({"series_id": np.repeat([f"s{i:05d}" for i in range(n)], periods),
                         "ds": ds * n, "y": y.ravel()})


def _statsforecast_models(names: list[str], season: int, auto_season: int):
    from deepmine.mining.forecast import _model
    models = []
    for name in names:
        model = _model(name, season, auto_season)
        model.alias = name
        models.append(model)
    return models


def run_statsforecast(series: pd.DataFrame, cfg, cores: int) -> float:
    from statsforecast import StatsForecast
    from deepmine.mining.forecast import season_length
    m = season_length(cfg)
    first = series.groupby("series_id").size().min() - cfg.backtest_windows * cfg.horizon
    season = m if first >= 2 * m else 1
    auto = season if season <= cfg.max_auto_season else 1
    df = series.rename(columns={"series_id": "unique_id"})
    df["ds"] = pd.to_datetime(df["ds"])
    names = [n for n in cfg.models if n != "croston"]
    start = time.perf_counter()
    sf = StatsForecast(models=_statsforecast_models(names, season, auto), freq="W-MON",
                       n_jobs=cores)
    cv = sf.cross_validation(df=df, h=cfg.horizon, n_windows=cfg.backtest_windows,
                             step_size=cfg.horizon)
    errors = cv[names].sub(cv["y"], axis=0).abs().groupby(cv["unique_id"]).sum()
    chosen = errors.idxmin(axis=1)
    out = sf.forecast(df=df, h=cfg.horizon, level=[80])
    assert len(out) == len(chosen) * cfg.horizon
    return time.perf_counter() - start


def run_spark(spark, series: pd.DataFrame, cfg, run_date: str) -> float:
    from deepmine.mining.forecast import forecasts
    start = time.perf_counter()
    frame = spark.createDataFrame(series, "series_id string, ds date, y double")
    rows = forecasts(frame, cfg, run_date).collect()
    assert len(rows) == series["series_id"].nunique() * cfg.horizon
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--periods", type=int, default=130)  # two and a half years
    ap.add_argument("--horizon", type=int, default=8)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["seasonal_naive", "arima"])
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    warnings.simplefilter("ignore")
    from deepmine.core.config import load_config
    from deepmine.mining.forecast import shift
    from deepmine.core.spark import build_session
    config = load_config(None, [
        "spark.ui_enabled=false", f"spark.master=local[{args.cores}]",
        f"spark.shuffle_partitions={4 * args.cores}", "forecast.frequency=week",
        f"forecast.horizon={args.horizon}", f"forecast.backtest_windows={args.windows}",
        "forecast.models=[" + ",".join(args.models) + "]"])
    cfg = config.forecast
    run_date = (shift(START, args.periods, "week") - dt.timedelta(days=1)).isoformat()
    spark = build_session(config)
    spark.sparkContext.setLogLevel("ERROR")
    run_spark(spark, make_series(2 * args.cores, args.periods), cfg, run_date)  # warm workers
    rows = []
    for n in args.sizes:
        series = make_series(n, args.periods)
        sf_seconds = run_statsforecast(series, cfg, args.cores)
        spark_seconds = run_spark(spark, series, cfg, run_date)
        rows.append({"series": n, "periods": args.periods, "models": "+".join(args.models),
                     "spark_s": round(spark_seconds, 2),
                     "spark_series_per_s": round(n / spark_seconds, 1),
                     "statsforecast_s": round(sf_seconds, 2),
                     "statsforecast_series_per_s": round(n / sf_seconds, 1),
                     "spark_over_statsforecast": round(spark_seconds / sf_seconds, 2)})
        print(rows[-1], flush=True)
    spark.stop()
    publish("forecast", rows, meta={"cores_used": args.cores, "horizon": args.horizon,
                                    "windows": args.windows})


if __name__ == "__main__":
    main()
