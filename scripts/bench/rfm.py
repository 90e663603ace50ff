"""RFM: the Spark stage (deepmine.mining.rfm) against a pandas groupby of the same lines, side by side.

For each size (lines): generate N lines with no dirty lines, put them into the lake's
clean/transactions as Spark reads them (not timed), then time
  spark_table  deepmine.mining.rfm.rfm_table (R/F/M values, quintile scores, segments) written to Parquet
  spark_stage  deepmine.mining.rfm.run_rfm: the same plus K-means over [rfm.k_min, rfm.k_max] with
               rfm.n_init runs per k, both lake tables published, the manifest written
  pandas       one process: read the same Parquet lines, groupby per customer, the same scores
               and segments (no clustering)
  pandas_sklearn  the pandas table plus the stage's K-means selection done with scikit-learn in
               the same process (log1p, standardize, every k in [k_min, k_max] with n_init runs,
               silhouette on a seeded sample of rfm.silhouette_sample customers): the single-node
               peer of spark_stage
and report lines/s, the pandas/Spark ratios, and whether both tables are equal (values within
1e-9, scores and segments exactly). Results: a table on stdout and
bench-results/rfm.json.

    .venv/bin/python scripts/bench/rfm.py --sizes 1000000 10000000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from results import publish


def pandas_rfm(lines: pd.DataFrame, run_date: str, returns: str = "net") -> pd.DataFrame:
    """The RFM table with plain pandas, as rfm.py's docstring defines it."""
    from deepmine.mining.rfm import SEGMENT_GRID

    day = pd.Timestamp(run_date)
    lines = lines[lines["invoice_ts"] < day + pd.Timedelta(days=1)]
    is_return = lines["is_return"]
    purchases = lines[~is_return].groupby("customer_id")
    out = pd.DataFrame({
        "recency_days": (day - purchases["invoice_ts"].max().dt.floor("D")).dt.days,
        "frequency": purchases["invoice_id"].nunique(),
    })
    counted = lines if returns == "net" else lines[~is_return]
    amount = (counted["quantity"] * counted["unit_price"]).round(4)
    grouped = pd.DataFrame({"customer_id": counted["customer_id"], "amount": amount,
                            "unknown": counted["unit_price"].isna()}).groupby("customer_id")
    monetary = grouped["amount"].sum().round(4).where(~grouped["unknown"].any())
    out["monetary"] = monetary.reindex(out.index)
    for value, score, worse_is_larger in (("recency_days", "r_score", True),
                                          ("frequency", "f_score", False),
                                          ("monetary", "m_score", False)):
        known = out[value].notna().sum()
        worse = out[value].rank(method="min", ascending=not worse_is_larger) - 1
        out[score] = (1 + (5 * worse) // known).astype("Int64")
    names = np.array([[SEGMENT_GRID[r][f - 1] for f in range(1, 6)] for r in range(1, 6)])
    out["segment"] = names[out["r_score"].to_numpy(int) - 1, out["f_score"].to_numpy(int) - 1]
    return out.reset_index()


def sklearn_selection(table: pd.DataFrame, k_min: int, k_max: int, seed: int, max_iter: int,
                      n_init: int, silhouette_sample: int) -> int:
    """The K-means selection of the RFM stage, with numpy and scikit-learn: returns the chosen k."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    columns = ["recency_days", "frequency", "monetary"]
    if table["monetary"].isna().any():
        columns = columns[:2]
    x = np.log1p(table[columns].astype(float).clip(lower=0))
    x = ((x - x.mean()) / x.std(ddof=1)).to_numpy()
    best = None
    for k in range(k_min, k_max + 1):
        labels = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter,
                        random_state=seed).fit_predict(x)
        score = silhouette_score(x, labels, metric="sqeuclidean",
                                 sample_size=min(len(x), silhouette_sample), random_state=seed)
        if best is None or score > best[0]:
            best = (score, k)
    return best[1]


def tables_equal(ours: pd.DataFrame, theirs: pd.DataFrame) -> bool:
    columns = ["customer_id", "recency_days", "frequency", "monetary", "r_score", "f_score",
               "m_score", "segment"]
    a = ours[columns].sort_values("customer_id").reset_index(drop=True)
    b = theirs[columns].sort_values("customer_id").reset_index(drop=True)
    if len(a) != len(b) or not (a["customer_id"] == b["customer_id"]).all():
        return False
    exact = all((a[c].astype("Int64") == b[c].astype("Int64")).fillna(True).all() and
                (a[c].isna() == b[c].isna()).all()
                for c in ("recency_days", "frequency", "r_score", "f_score", "m_score"))
    close = np.allclose(a["monetary"].to_numpy(float), b["monetary"].to_numpy(float),
                        rtol=0, atol=1e-9, equal_nan=True)
    return bool(exact and close and (a["segment"] == b["segment"]).all())


def load_clean(spark, lake, csv_path: Path, run_date: str) -> None:
    """The generated lines into clean/transactions (no dirty lines: nothing to quarantine)."""
    from pyspark.sql import functions as F

    from deepmine.core.schemas import CLEAN_TRANSACTIONS
    lines = (spark.read.option("header", True)
             .schema("invoice_id string, customer_id string, product_id string, quantity long, "
                     "unit_price double, invoice_ts timestamp, country string")
             .csv(str(csv_path))
             .withColumn("is_return", F.col("quantity") < 0)
             .withColumn("source_file", F.lit(str(csv_path))))
    lake.publish(lines.select(*CLEAN_TRANSACTIONS.fieldNames()), "clean/transactions",
                 f"dt={run_date}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--conf", default="conf/local.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="config overrides, e.g. rfm.k_max=6")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from deepmine.mining import rfm
    from deepmine.core.config import load_config
    from deepmine.data.generate import generate_transactions
    from deepmine.core.lake import Lake
    from deepmine.core.spark import build_session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deepmine-bench-rfm-"))
    rows = []
    config = load_config(args.conf, [f"lake.root={work / 'lake-warm-up'}",
                                     "spark.ui_enabled=false", *args.set])
    spark = build_session(config)
    # warm-up, not reported: the JVM's first jobs pay for class loading and JIT
    truth = generate_transactions(work / "warm-up", lines=2000, seed=args.seed)
    load_clean(spark, Lake(spark, config.lake.root), work / "warm-up" / "transactions.csv",
               truth["as_of"])
    rfm.run_rfm(spark, config, truth["as_of"])
    for n in args.sizes:
        data = work / f"gen-{n}"
        t0 = time.perf_counter()
        truth = generate_transactions(data, lines=n, seed=args.seed)
        gen_s = time.perf_counter() - t0
        run_date = truth["as_of"]
        config = load_config(args.conf, [f"lake.root={work / f'lake-{n}'}",
                                         "spark.ui_enabled=false", *args.set])
        lake = Lake(spark, config.lake.root)
        load_clean(spark, lake, data / "transactions.csv", run_date)
        lines_path = lake.url("clean/transactions", f"dt={run_date}").removeprefix("file://")

        t0 = time.perf_counter()
        table_path = work / f"rfm-table-{n}.parquet"
        values = rfm.rfm_values(lake.read_history("clean/transactions", run_date), run_date,
                                config.rfm.returns).persist()  # as the stage does
        rfm.rfm_scores(values).write.mode("overwrite").parquet(str(table_path))
        values.unpersist()
        table_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        result = rfm.run_rfm(spark, config, run_date)
        stage_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        lines = ds.dataset(lines_path, format="parquet").to_table(
            columns=["invoice_id", "customer_id", "quantity", "unit_price", "invoice_ts",
                     "is_return"]).to_pandas()
        if lines["invoice_ts"].dt.tz is not None:
            lines["invoice_ts"] = lines["invoice_ts"].dt.tz_convert("UTC").dt.tz_localize(None)
        theirs = pandas_rfm(lines, run_date, config.rfm.returns)
        pandas_s = time.perf_counter() - t0
        del lines
        t0 = time.perf_counter()
        peer_k = sklearn_selection(theirs, config.rfm.k_min, config.rfm.k_max, config.rfm.seed,
                                   config.rfm.max_iter, config.rfm.n_init,
                                   getattr(config.rfm, "silhouette_sample", 10_000))
        peer_s = pandas_s + time.perf_counter() - t0

        ours = pd.read_parquet(table_path)
        row = {"lines": n, "customers": len(theirs), "generate_s": round(gen_s, 1),
               "spark_table_s": round(table_s, 2), "spark_table_lines_per_s": round(n / table_s),
               "pandas_s": round(pandas_s, 2), "pandas_lines_per_s": round(n / pandas_s),
               "pandas_over_spark": round(pandas_s / table_s, 3),
               "spark_stage_s": round(stage_s, 2),
               "pandas_sklearn_s": round(peer_s, 2),
               "pandas_sklearn_over_stage": round(peer_s / stage_s, 3),
               "k": result["metrics"]["k"], "peer_k": peer_k,
               "silhouette": result["metrics"]["silhouette"],
               "tables_equal": tables_equal(ours, theirs)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(table_path, ignore_errors=True)
        shutil.rmtree(work / f"lake-{n}", ignore_errors=True)

    publish("rfm", rows, meta={
        "spark_master": config.spark.master,
        "shuffle_partitions": config.spark.shuffle_partitions,
        "rfm": {"k_min": config.rfm.k_min, "k_max": config.rfm.k_max,
                "n_init": config.rfm.n_init, "returns": config.rfm.returns}})
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
