"""Recommendations: ALS fit + evaluate time and quality on real data, fit time on generated data.

With recommend's defaults (lib/deepmine/core/config.py, RecommendConfig) unless overridden by --set:
  movielens   MovieLens 100k, explicit: per split seed, the tuning as the stage runs it (grid and
              explicit model chosen on a validation split cut from the 80% training part, when
              recommend.tune) and the random 80/20 evaluation (fit on 80%, predict 20%), each
              timed, RMSE and MAE beside the item-mean baseline, then the fit of the chosen model
              on all 100k ratings timed alone
  instacart   the Instacart sample, implicit: the per-customer time split evaluation timed, NDCG@10
              and the other ranking metrics beside the popularity baseline
  generated   for each size (lines): generated transactions, implicit; the evaluation (NDCG@10 vs
              popularity) timed, then the fit on all history timed alone and the top-N for every
              customer timed; with --peer implicit, the `implicit` library's ALS (single node, CPU,
              2 threads) beside it on the same split: same rank, sweeps and confidence
              (1 + alpha * purchase count, recommend's tuned point), its regularization is plain
              lambda (Spark scales it by each user's/item's count); NDCG@10 by
              als_grid.ndcg_per_customer, the stage's definition; fit and top-N timed
Inputs are cached in memory before any clock starts (reading CSV is not what is measured).
Results: a table on stdout and bench-results/recommend.json.

    .venv/bin/python scripts/bench/recommend.py                       # the full run
    .venv/bin/python scripts/bench/recommend.py --sizes 20000 --movielens-seeds 42 --quick
    .venv/bin/pip install implicit==0.7.3      # the peer; not part of the stack (setup.sh)
    .venv/bin/python scripts/bench/recommend.py --skip movielens instacart --peer implicit \
        --sizes 100000 1000000
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

from results import publish


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="generated transaction lines")
    parser.add_argument("--movielens-seeds", type=int, nargs="+", default=[42, 1, 2],
                        help="random 80/20 splits of MovieLens (recommend.seed)")
    parser.add_argument("--seed", type=int, default=11, help="generator seed")
    parser.add_argument("--skip", nargs="*", default=[], choices=["movielens", "instacart",
                                                                    "generated"])
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="config overrides, e.g. recommend.rank=20")
    parser.add_argument("--quick", action="store_true", help="fewer ALS sweeps (max_iter 5): "
                        "checks that the script runs, the figures mean little")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    parser.add_argument("--peer", choices=["implicit"], default=None,
                        help="also run the implicit library's ALS on the generated sizes "
                             "(pip install implicit==0.7.3)")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from pyspark.sql import functions as F

    from deepmine.mining import recommend as rec
    from deepmine.core.config import load_config
    from deepmine.core.spark import build_session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deepmine-bench-recommend-"))
    overrides = [f"lake.root={work / 'lake'}", "spark.ui_enabled=false", *args.set]
    if args.quick:
        overrides.append("recommend.max_iter=5")
    config = load_config("conf/local.yaml", overrides)
    spark = build_session(config)
    blocks = spark.sparkContext.defaultParallelism
    results: dict = {"cores": os.cpu_count(), "spark_master": config.spark.master,
                     "recommend": dataclasses.asdict(config.recommend)}
    table: list[dict] = []

    def params_for(feedback: str, seed: int | None = None):
        cfg = dataclasses.replace(config.recommend, feedback=feedback,
                                  seed=config.recommend.seed if seed is None else seed)
        return cfg, rec.AlsParams.from_config(cfg, blocks)

    def read_transactions(path: Path):
        return (spark.read.csv(str(path), header=True)
                .select("invoice_id", "customer_id", "product_id",
                        F.col("quantity").cast("long").alias("quantity"),
                        F.to_timestamp("invoice_ts").alias("invoice_ts")))

    def implicit_peer(cfg, params, data) -> dict:
        """The implicit library's ALS on the evaluation split and on all pairs, timed."""
        import numpy as np
        import scipy.sparse as sp
        from threadpoolctl import threadpool_limits
        from implicit.cpu.als import AlternatingLeastSquares

        from deepmine.mining import als_grid
        split = rec.holdout(params, cfg, data)
        train = rec.purchase_counts(split.where(~F.col(rec.HELD_OUT))).persist()
        relevant = rec.new_relevant(split.where(F.col(rec.HELD_OUT)), train).toPandas()
        train_frame = train.toPandas()
        train.unpersist()
        all_frame = rec.purchase_counts(data).toPandas()

        def fit(frame):
            coded = als_grid.Coded.of(frame)
            confidence = coded.matrix.copy()
            confidence.data = 1.0 + params.alpha * confidence.data  # Spark's 1 + alpha * r
            model = AlternatingLeastSquares(
                factors=params.rank, regularization=params.reg_param, alpha=1.0,
                iterations=params.max_iter, random_state=params.seed, num_threads=2,
                calculate_training_loss=False)
            with threadpool_limits(1, "blas"):
                model.fit(sp.csr_matrix(confidence, dtype=np.float32), show_progress=False)
            return coded, model
        (coded, model), eval_fit_s = timed(fit, train_frame)
        factors = (np.asarray(model.user_factors, np.float64),
                   np.asarray(model.item_factors, np.float64))
        ndcg = float(als_grid.ndcg_per_customer(coded, factors, relevant, cfg.metrics_k).mean())
        (coded, model), fit_s = timed(fit, all_frame)

        def top_n():
            ids, _ = model.recommend(np.arange(coded.matrix.shape[0]), coded.matrix.tocsr(),
                                     N=cfg.top_n, filter_already_liked_items=True)
            return ids.size
        _, top_s = timed(top_n)
        return {"peer": "implicit", "peer_eval_fit_s": eval_fit_s, "peer_fit_all_s": fit_s,
                "peer_top_n_all_s": top_s, f"peer_ndcg_at_{cfg.metrics_k}": ndcg}

    def implicit_row(dataset: str, lines, extra: dict, peer: bool = False) -> dict:
        data = rec.purchase_lines(lines).persist()
        n_lines = data.count()
        cfg, params = params_for("implicit")
        if cfg.tune:  # the point the stage would fit (the peer is fit at the same one)
            params, _ = rec.tune(params, cfg, data)
        (metrics, counts), eval_s = timed(rec.evaluate, params, cfg, data)
        interactions = rec.purchase_counts(data).persist()
        n_pairs = interactions.count()
        fitted, fit_s = timed(rec.fit_als, interactions, params)
        customers = interactions.select("customer_id").distinct()
        top, top_s = timed(lambda: rec.top_unseen_als(fitted, customers, interactions,
                                                      cfg.top_n).count())
        fitted.unpersist()
        interactions.unpersist()
        peer_row = implicit_peer(cfg, params, data) if peer else {}
        data.unpersist()
        k = cfg.metrics_k
        row = {"dataset": dataset, "feedback": "implicit", **extra, "purchase_lines": n_lines,
               "pairs": n_pairs, "evaluate_s": eval_s, "fit_all_s": fit_s, "top_n_all_s": top_s,
               "recommendations": top, f"ndcg_at_{k}": metrics[f"ndcg_at_{k}"],
               f"baseline_ndcg_at_{k}": metrics[f"baseline_ndcg_at_{k}"],
               "metrics": metrics, "counts": counts, **peer_row}
        if peer_row:
            spark_s, peer_s = fit_s + top_s, peer_row["peer_fit_all_s"] + peer_row["peer_top_n_all_s"]
            row["lines_per_s"] = round(n_lines / spark_s)
            row["peer_lines_per_s"] = round(n_lines / peer_s)
            row["peer_time_over_spark"] = round(peer_s / spark_s, 3)
            print(f"{dataset}: implicit ndcg@{k} {peer_row[f'peer_ndcg_at_{k}']:.4f}; fit "
                  f"{peer_row['peer_fit_all_s']}s, top-N {peer_row['peer_top_n_all_s']}s; "
                  f"time peer/Spark {row['peer_time_over_spark']}", flush=True)
        print(f"{dataset}: ndcg@{k} {row[f'ndcg_at_{k}']:.4f} vs popularity "
              f"{row[f'baseline_ndcg_at_{k}']:.4f}; evaluate {eval_s}s, fit {fit_s}s, "
              f"top-N {top_s}s", flush=True)
        return row

    from deepmine.data.samples import SampleUnavailable, write_samples

    if "movielens" not in args.skip:
        try:
            info = write_samples(work / "samples", only=["movielens"])["movielens"]
        except SampleUnavailable as e:
            results["movielens"] = {"unavailable": e.command}
        else:
            ratings = rec.rating_interactions(
                spark.read.csv(info["path"], header=True)
                .select("user_id", "item_id", F.col("rating").cast("double").alias("rating"))
            ).persist()
            ratings.count()
            rows = []
            for seed in args.movielens_seeds:
                cfg, params = params_for("explicit", seed)
                tune_s = None
                if cfg.tune:
                    (params, _), tune_s = timed(rec.tune, params, cfg, ratings)
                (metrics, counts), eval_s = timed(rec.evaluate, params, cfg, ratings)
                rows.append({"dataset": "movielens-100k", "feedback": "explicit",
                             "split_seed": seed, "model": params.describe(), "tune_s": tune_s,
                             "evaluate_s": eval_s, "rmse": metrics["rmse"], "mae": metrics["mae"],
                             "baseline_rmse": metrics["baseline_rmse"],
                             "baseline_mae": metrics["baseline_mae"], "counts": counts})
                print(f"movielens seed {seed}: RMSE {metrics['rmse']:.4f} "
                      f"MAE {metrics['mae']:.4f} (item means {metrics['baseline_rmse']:.4f}); "
                      f"{params.describe()}; tune {tune_s}s, evaluate {eval_s}s", flush=True)
            fitted, fit_s = timed(rec.fit_model, ratings, params)
            fitted.unpersist()
            ratings.unpersist()
            for row in rows:
                row["fit_all_s"] = fit_s
            results["movielens"] = rows
            table += rows

    if "instacart" not in args.skip:
        try:
            info = write_samples(work / "samples", only=["instacart"])["instacart"]
        except SampleUnavailable as e:
            results["instacart"] = {"unavailable": e.command}
        else:
            row = implicit_row("instacart-sample", read_transactions(Path(info["path"])), {})
            results["instacart"] = row
            table.append(row)

    if "generated" not in args.skip:
        from deepmine.data.generate import generate_transactions
        results["generated"] = []
        for n in args.sizes:
            out = work / f"gen-{n}"
            truth, gen_s = timed(generate_transactions, out, lines=n, seed=args.seed)
            row = implicit_row(f"generated-{n}", read_transactions(out / "transactions.csv"),
                               {"lines": n, "customers": truth["counts"]["customers"],
                                "products": truth["counts"]["products"], "generate_s": gen_s},
                               peer=args.peer == "implicit")
            results["generated"].append(row)
            table.append(row)
            shutil.rmtree(out, ignore_errors=True)

    columns = ["dataset", "feedback", "split_seed", "lines", "pairs", "tune_s", "evaluate_s",
               "fit_all_s",
               "top_n_all_s", "rmse", "mae", "baseline_rmse", "ndcg_at_10", "baseline_ndcg_at_10",
               "peer_fit_all_s", "peer_top_n_all_s", "peer_ndcg_at_10", "lines_per_s",
               "peer_lines_per_s", "peer_time_over_spark"]
    columns = [c for c in columns if any(c in r for r in table)]
    publish("recommend", table, meta={"by_dataset": results}, columns=columns)
    spark.stop()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
