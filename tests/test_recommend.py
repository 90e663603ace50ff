"""Recommendations (deepmine.mining.recommend): the metrics against hand computations and Spark's own
RankingMetrics, the splits, the top-N lists against a brute-force ranking, the stage end to end on
generated transactions (where ALS must beat popularity) and on ratings, and MovieLens 100k's RMSE.
The same check on the Instacart sample takes longer than this file may: scripts/bench/recommend.py
makes it."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from deepmine.mining import recommend as rec
from deepmine.core.config import ConfigError, RecommendConfig, load_config
from deepmine.core.lake import Lake
from deepmine.core.schemas import CLEAN_RATINGS, CLEAN_TRANSACTIONS, MINING_RECOMMENDATIONS

from conftest import sample_or_skip

RUN_DATE = "2026-11-23"
RECS = "customer_id string, product_id string, rank int"
PAIRS = "customer_id string, product_id string"


def params(**changes) -> rec.AlsParams:
    base = rec.AlsParams.from_config(RecommendConfig(), 2)
    return dataclasses.replace(base, num_blocks=2, **changes)


# --------------------------------------------------------------------------- metrics

def test_ranking_metrics_by_hand(spark):
    recommended = spark.createDataFrame([
        ("a", "p1", 1), ("a", "p2", 2), ("a", "p3", 3), ("a", "p9", 4),  # rank 4 is past k
        ("b", "p4", 1), ("b", "p5", 2),  # fewer than k
        ("d", "p1", 1),  # d has nothing relevant: not scored
    ], RECS)
    relevant = spark.createDataFrame([
        ("a", "p1"), ("a", "p3"), ("a", "p9"), ("b", "p5"), ("c", "p1"),  # c got no list: zeros
    ], PAIRS)
    got = rec.ranking_metrics(recommended, relevant, k=3)

    def g(i):  # gain at rank i
        return 1 / math.log2(i + 1)
    # a: hits at ranks 1 and 3 of 3 relevant; b: a hit at rank 2 of 1 relevant; c: nothing
    precision = [2 / 3, 1 / 3, 0]
    recall = [2 / 3, 1 / 1, 0]
    ap = [(1 / 1 + 2 / 3) / 3, (1 / 2) / 1, 0]
    ndcg = [(g(1) + g(3)) / (g(1) + g(2) + g(3)), g(2) / g(1), 0]
    assert got["customers"] == 3
    assert got["precision_at_3"] == pytest.approx(sum(precision) / 3, abs=1e-12)
    assert got["recall_at_3"] == pytest.approx(sum(recall) / 3, abs=1e-12)
    assert got["map_at_3"] == pytest.approx(sum(ap) / 3, abs=1e-12)
    assert got["ndcg_at_3"] == pytest.approx(sum(ndcg) / 3, abs=1e-12)


def test_ranking_metrics_with_nothing_held_out_are_null_not_zero(spark):
    """CDNOW has one product: no customer has a new product to find, so nothing is measured."""
    recommended = spark.createDataFrame([("a", "p1", 1)], RECS)
    got = rec.ranking_metrics(recommended, spark.createDataFrame([], PAIRS), k=10)
    assert got == {"precision_at_10": None, "recall_at_10": None, "map_at_10": None,
                   "ndcg_at_10": None, "customers": 0}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # RankingMetrics builds an SQLContext
def test_ranking_metrics_agree_with_spark_ranking_metrics(spark):
    from pyspark.mllib.evaluation import RankingMetrics

    rng = np.random.default_rng(3)
    lists, rows, relevant_rows = [], [], []
    for c in range(40):
        predicted = [f"p{x}" for x in rng.permutation(30)[: rng.integers(0, 13)]]
        labels = sorted({f"p{x}" for x in rng.integers(0, 30, rng.integers(1, 8))})
        lists.append((predicted, labels))
        rows += [(f"c{c}", p, i + 1) for i, p in enumerate(predicted)]
        relevant_rows += [(f"c{c}", p) for p in labels]
    got = rec.ranking_metrics(spark.createDataFrame(rows, RECS),
                              spark.createDataFrame(relevant_rows, PAIRS), k=10)
    spark_metrics = RankingMetrics(spark.sparkContext.parallelize(lists, 2))
    assert got["precision_at_10"] == pytest.approx(spark_metrics.precisionAt(10), abs=1e-12)
    assert got["recall_at_10"] == pytest.approx(spark_metrics.recallAt(10), abs=1e-12)
    assert got["map_at_10"] == pytest.approx(spark_metrics.meanAveragePrecisionAt(10), abs=1e-12)
    assert got["ndcg_at_10"] == pytest.approx(spark_metrics.ndcgAt(10), abs=1e-12)


def test_rating_metrics_by_hand(spark):
    df = spark.createDataFrame([(4.0, 3.5), (2.0, 3.0), (5.0, 5.0), (1.0, 3.0)],
                               "strength double, prediction double")
    got = rec.rating_metrics(df)
    assert got["n"] == 4
    assert got["rmse"] == pytest.approx(math.sqrt((0.25 + 1 + 0 + 4) / 4), abs=1e-12)
    assert got["mae"] == pytest.approx((0.5 + 1 + 0 + 2) / 4, abs=1e-12)


# --------------------------------------------------------------------------- interactions, splits

LINES = "customer_id string, product_id string, invoice_id string, invoice_ts timestamp"


def _lines(spark, rows):
    return spark.createDataFrame(
        [(c, p, i, pd.Timestamp(ts).to_pydatetime()) for c, p, i, ts in rows], LINES)


def test_purchase_counts_skip_returns_and_count_invoices(spark):
    tx = spark.createDataFrame([
        ("I1", "A", "p1", 2, pd.Timestamp("2026-01-01").to_pydatetime()),
        ("I1", "A", "p1", 1, pd.Timestamp("2026-01-01").to_pydatetime()),  # same invoice again
        ("I2", "A", "p1", 1, pd.Timestamp("2026-01-02").to_pydatetime()),
        ("C1", "A", "p2", -1, pd.Timestamp("2026-01-03").to_pydatetime()),  # a return only
        ("I3", "B", "p2", 5, pd.Timestamp("2026-01-03").to_pydatetime()),
    ], "invoice_id string, customer_id string, product_id string, quantity long, "
       "invoice_ts timestamp")
    got = rec.purchase_counts(rec.purchase_lines(tx))
    assertDataFrameEqual(got, spark.createDataFrame(
        [("A", "p1", 2.0), ("B", "p2", 1.0)],
        "customer_id string, product_id string, strength double"))


def test_split_by_time_holds_out_each_customers_last_invoices(spark):
    rows = []
    for i in range(1, 6):  # A: 5 invoices -> the last ceil(0.2 * 5) = 1 held out (two lines)
        rows.append(("A", "p1", f"A{i}", f"2026-01-0{i}"))
    rows.append(("A", "p2", "A5", "2026-01-05"))
    rows += [("B", "p1", "B1", "2026-01-01"), ("B", "p2", "B2", "2026-01-02")]  # 2 -> 1 held out
    rows += [("C", "p1", "C1", "2026-01-01")]  # 1 invoice -> none held out
    # D: 7 invoices -> ceil(1.4) = 2 held out; the last three share a timestamp, so the invoice
    # ids decide (D7 and D6 go); D9 is the earliest despite its id
    rows += [("D", "p1", "D9", "2026-01-15")]
    rows += [("D", "p1", f"D{i}", f"2026-02-0{i}") for i in range(2, 5)]
    rows += [("D", "p1", f"D{i}", "2026-03-01") for i in (6, 5, 7)]
    got = rec.split_by_time(_lines(spark, rows), 0.2).select("invoice_id", "product_id", "held_out")
    held = {("A", "A5"), ("B", "B2"), ("D", "D6"), ("D", "D7")}
    expected = [(i, p, (c, i) in held) for c, p, i, _ in rows]
    assertDataFrameEqual(got, spark.createDataFrame(expected, got.schema))

    # with test_fraction 0.9 a customer still keeps one invoice for training
    got = rec.split_by_time(_lines(spark, rows), 0.9).groupBy("customer_id").agg(
        F.sum((~F.col("held_out")).cast("int")).alias("kept"))
    assert {r["customer_id"]: r["kept"] for r in got.collect()} == {"A": 1, "B": 1, "C": 1, "D": 1}


def test_split_random_is_stable_and_near_the_fraction(spark):
    pairs = spark.range(4000).select(F.concat(F.lit("u"), (F.col("id") % 97).cast("string"))
                                     .alias("customer_id"),
                                     F.col("id").cast("string").alias("product_id"))
    a = rec.split_random(pairs, 0.2, seed=1).where("held_out").select("customer_id", "product_id")
    b = rec.split_random(pairs.repartition(3).orderBy(F.rand(5)), 0.2, seed=1).where("held_out")
    assertDataFrameEqual(a, b.select("customer_id", "product_id"))
    assert 0.17 < a.count() / 4000 < 0.23
    other = rec.split_random(pairs, 0.2, seed=2).where("held_out")
    assert other.join(a, ["customer_id", "product_id"]).count() < 0.5 * a.count()


def test_new_relevant_excludes_products_bought_before(spark):
    test_lines = _lines(spark, [("A", "p1", "I9", "2026-02-01"), ("A", "p3", "I9", "2026-02-01"),
                                ("B", "p2", "I8", "2026-02-01")])
    train = spark.createDataFrame([("A", "p1", 1.0), ("B", "p1", 2.0)],
                                  "customer_id string, product_id string, strength double")
    assertDataFrameEqual(rec.new_relevant(test_lines, train),
                         spark.createDataFrame([("A", "p3"), ("B", "p2")], PAIRS))


# --------------------------------------------------------------------------- top-N lists

def test_top_unseen_popular(spark):
    bought = spark.createDataFrame([
        ("A", "p1"), ("B", "p1"), ("C", "p1"), ("A", "p2"), ("B", "p2"), ("C", "p3"), ("A", "p4"),
    ], PAIRS)
    popular = rec.popularity(bought)
    targets = spark.createDataFrame([("A",), ("C",), ("N",)], "customer_id string")
    got = rec.top_unseen_popular(popular, targets, bought, 2)
    # buyers: p1 3, p2 2, p3 1, p4 1 (ties by product id); of 3 customers
    assertDataFrameEqual(got, spark.createDataFrame([
        ("A", "p3", 1, 1 / 3),
        ("C", "p2", 1, 2 / 3), ("C", "p4", 2, 1 / 3),
        ("N", "p1", 1, 3 / 3), ("N", "p2", 2, 2 / 3),
    ], f"{RECS}, score double"))


@pytest.fixture(scope="module")
def small_interactions(spark):
    """30 customers x 80 products with two tastes, and one heavy buyer who has seen 70 products
    (so the ALS top-N asks in two rounds)."""
    rng = np.random.default_rng(5)
    rows = []
    for c in range(30):
        side = c % 2
        for p in rng.choice(40, size=8, replace=False):
            rows.append((f"c{c:02d}", f"p{side * 40 + p:02d}", float(rng.integers(1, 4))))
    rows += [("heavy", f"p{p:02d}", 1.0) for p in range(70)]
    df = spark.createDataFrame(rows, "customer_id string, product_id string, strength double")
    df.cache()
    yield df
    df.unpersist()


def test_top_unseen_als_is_the_best_unseen_by_brute_force(spark, small_interactions):
    p = params(rank=4, max_iter=3)
    fitted = rec.fit_als(small_interactions, p)
    targets = small_interactions.select("customer_id").distinct()
    got = rec.top_unseen_als(fitted, targets, small_interactions, 5).toPandas()

    users = {r["customer_id"]: r["_user"] for r in fitted.users.collect()}
    items = {r["_item"]: r["product_id"] for r in fitted.items.collect()}
    uf = {r["id"]: np.array(r["features"]) for r in fitted.model.userFactors.collect()}
    itf = {items[r["id"]]: np.array(r["features"]) for r in fitted.model.itemFactors.collect()}
    seen = small_interactions.toPandas().groupby("customer_id")["product_id"].agg(set)
    for customer, user in users.items():
        scores = {prod: float(uf[user] @ v) for prod, v in itf.items()
                  if prod not in seen[customer]}
        best = sorted(scores.values(), reverse=True)[:5]
        mine = got[got["customer_id"] == customer].sort_values("rank")
        assert list(mine["rank"]) == list(range(1, len(best) + 1)), customer
        assert not set(mine["product_id"]) & seen[customer], customer
        assert list(mine["score"]) == pytest.approx(best, abs=1e-4), customer
        assert [scores[x] for x in mine["product_id"]] == pytest.approx(best, abs=1e-4)
    assert len(got[got["customer_id"] == "heavy"]) == 5  # 10 unseen products are left

    fitted.unpersist()

    refitted = rec.fit_als(small_interactions, p)  # same data, same seed: the same lists
    again = rec.top_unseen_als(refitted, targets, small_interactions, 5).toPandas()
    refitted.unpersist()
    assertDataFrameEqual(again.sort_values(["customer_id", "rank"]).reset_index(drop=True),
                         got.sort_values(["customer_id", "rank"]).reset_index(drop=True))


def test_als_and_popular_metrics_are_those_of_the_lists(spark, small_interactions):
    """The evaluation's one pass (lists ranked and scored in numpy) gives ranking_metrics_of's
    figures on the lists top_unseen_als and top_unseen_popular publish: the same customers,
    relevant pairs and, up to the order Spark sums the customers in, the same averages. The
    relevant pairs include a product nobody bought (never a hit, but in |R|), a customer the
    model does not know (no ALS list, a popularity list) and the heavy buyer, who has 10 unseen
    products left."""
    fitted = rec.fit_als(small_interactions, params(rank=4, max_iter=3))
    pairs = [("c00", "p05"), ("c00", "p41"), ("c00", "p99"), ("c01", "p43"), ("c02", "p07"),
             ("c03", "p45"), ("c03", "p46"), ("heavy", "p71"), ("heavy", "p75"), ("new", "p01")]
    pairs += [(f"c{c:02d}", f"p{(c * 7) % 80:02d}") for c in range(4, 30)]
    relevant = spark.createDataFrame(pairs, PAIRS)
    relevant = relevant.join(small_interactions, ["customer_id", "product_id"], "left_anti")
    targets = relevant.select("customer_id").distinct()
    popular = rec.popularity(small_interactions)
    for k in (3, 10):
        want = rec.ranking_metrics_of(
            {"als": rec.top_unseen_als(fitted, targets, small_interactions, k),
             "baseline": rec.top_unseen_popular(popular, targets, small_interactions, k)},
            relevant, k)
        got = rec.als_and_popular_metrics(fitted, relevant, small_interactions, k, popular)
        assert set(got) == set(want)
        for name in want:
            assert got[name]["customers"] == want[name]["customers"]
            assert got[name]["relevant_pairs"] == want[name]["relevant_pairs"]
            assert got[name] == pytest.approx(want[name], rel=1e-12, abs=0), (name, k)
        assert want["baseline"][f"ndcg_at_{k}"] > 0 and want["als"][f"ndcg_at_{k}"] > 0
        alone = rec.als_and_popular_metrics(fitted, relevant, small_interactions, k, None)
        assert alone == {"als": got["als"]}
    fitted.unpersist()


# --------------------------------------------------------------------------- config

def test_explicit_model_from_config():
    """Without tuning auto is plain ALS and blend takes blend_weight; the older biases key reads as
    baseline_als; purchases always get plain ALS."""
    def parts(**cfg):
        model = rec.AlsParams.from_config(RecommendConfig(**cfg), 2)
        return model.model, [(w, p.biases) for w, p in model.components()]
    assert parts(feedback="explicit", tune=False) == ("als", [(1.0, False)])
    assert parts(feedback="explicit", explicit_model="blend", blend_weight=0.25) == (
        "blend", [(0.75, False), (0.25, True)])
    assert parts(feedback="explicit", biases=True) == ("baseline_als", [(1.0, True)])
    assert parts(feedback="implicit", explicit_model="blend") == ("als", [(1.0, False)])


@pytest.mark.parametrize("override,key", [
    ("recommend.test_fraction=1.0", "test_fraction"), ("recommend.top_n=0", "top_n"),
    ("recommend.alpha=-1", "alpha"), ("recommend.num_blocks=-2", "num_blocks"),
    ("recommend.tune=true recommend.tune_rank=[]", "tune_rank"),
    ("recommend.blend_weight=1.5", "blend_weight"), ("recommend.bias_damping=-1", "bias_damping"),
])
def test_config_out_of_range_is_named(override, key):
    with pytest.raises(ConfigError, match=f"recommend.{key}"):
        rec.check_config(load_config(None, [override]).recommend)


# --------------------------------------------------------------------------- the stage

def _clean_transactions(spark, lines: pd.DataFrame):
    lines = lines.assign(invoice_ts=pd.to_datetime(lines["invoice_ts"]),
                         quantity=lines["quantity"].astype("int64"),
                         unit_price=lines["unit_price"].astype("float64"),
                         is_return=lines["quantity"] < 0, source_file="transactions.csv")
    return spark.createDataFrame(lines[list(CLEAN_TRANSACTIONS.fieldNames())], CLEAN_TRANSACTIONS)


@pytest.fixture(scope="module")
def implicit_run(spark, tmp_path_factory):
    """The stage on generated transactions (6,000 lines, 240 customers, 60 products with planted
    tastes), plus one customer who only ever returned a product. The defaults, but for 2 ALS blocks
    and 10 sweeps to save time here (the defaults on 100,000 lines: ndcg@10 0.180 against 0.137)."""
    from deepmine.data.generate import generate_transactions

    base = tmp_path_factory.mktemp("recommend_implicit")
    generate_transactions(base / "input", lines=6000, seed=11, products=60)
    lines = pd.read_csv(base / "input" / "transactions.csv", dtype={"invoice_id": str,
                        "customer_id": str, "product_id": str})
    lines.loc[len(lines)] = ["C9", "RETURNER", lines["product_id"].iloc[0], -1, 9.99,
                             "2026-01-05 10:00:00", "Ireland"]
    config = load_config(None, [f"lake.root={base / 'lake'}", "spark.ui_enabled=false",
                                "recommend.num_blocks=2", "recommend.max_iter=10"])
    lake = Lake(spark, config.lake.root)
    lake.publish(_clean_transactions(spark, lines), "clean/transactions", f"dt={RUN_DATE}")
    checkpoints = spark.sparkContext.getCheckpointDir()
    before = lake.list_dir(checkpoints)
    result = rec.run_recommend(spark, config, RUN_DATE)
    return {"result": result, "lake": lake, "lines": lines, "config": config,
            "checkpoints": (before, lake.list_dir(checkpoints))}


def test_implicit_stage_output_contract(implicit_run, spark):
    lake, lines, config = implicit_run["lake"], implicit_run["lines"], implicit_run["config"]
    table = lake.read("mining/recommendations", f"run_date={RUN_DATE}")
    assert table.schema.fieldNames() == MINING_RECOMMENDATIONS.fieldNames()
    recs = table.toPandas()
    n = config.recommend.top_n
    per_customer = recs.groupby("customer_id")["rank"].agg(list)
    assert set(per_customer.index) == set(lines["customer_id"])  # every customer has a list
    assert all(ranks == list(range(1, n + 1)) for ranks in per_customer.map(sorted))
    seen = set(zip(lines["customer_id"], lines["product_id"]))
    assert not seen & set(zip(recs["customer_id"], recs["product_id"]))
    sources = recs.groupby("customer_id")["source"].agg(set)
    assert sources["RETURNER"] == {"popularity"}
    assert all(s == {"als"} for c, s in sources.items() if c != "RETURNER")
    ordered = recs.sort_values(["customer_id", "rank"]).groupby("customer_id")["score"]
    assert ordered.apply(lambda s: s.is_monotonic_decreasing).all()

    counts = implicit_run["result"]["counts"]
    assert counts["recommendations"] == len(recs) == n * len(per_customer)
    assert counts["customers_popularity"] == 1
    assert counts["customers_als"] == len(per_customer) - 1


def test_implicit_stage_beats_popularity_and_records_the_manifest(implicit_run):
    lake = implicit_run["lake"]
    record = lake.read_manifest(RUN_DATE)["stages"]["recommend"]
    assert record["status"] == "ok"
    m = record["metrics"]
    print(f"\ngenerated 6k lines: ALS ndcg@10 {m['ndcg_at_10']:.4f} vs popularity "
          f"{m['baseline_ndcg_at_10']:.4f}")
    for name in ("precision_at_10", "recall_at_10", "map_at_10", "ndcg_at_10"):
        assert 0 <= m["baseline_" + name] <= 1 and 0 <= m[name] <= 1
    assert m["ndcg_at_10"] > 1.05 * m["baseline_ndcg_at_10"]
    assert m["params"] == {"rank": 10, "reg_param": 0.1, "alpha": 1.0, "max_iter": 10}
    assert record["counts"]["test_customers"] > 100
    before, after = implicit_run["checkpoints"]
    assert after == before  # ALS's checkpoint files are gone with the stage
    assert record["outputs"]["recommendations"].endswith(
        f"mining/recommendations/run_date={RUN_DATE}")


def test_below_baseline_names_the_baseline():
    assert rec.below_baseline({"ndcg_at_10": 0.2, "baseline_ndcg_at_10": 0.1}, True, 10) is None
    assert "popularity" in rec.below_baseline(
        {"ndcg_at_10": 0.1, "baseline_ndcg_at_10": 0.1}, True, 10)
    assert rec.below_baseline({"rmse": 0.9, "baseline_rmse": 1.0}, False, 10) is None
    assert "item means" in rec.below_baseline({"rmse": 1.1, "baseline_rmse": 1.0}, False, 10)
    assert rec.below_baseline({"rmse": None, "baseline_rmse": None}, False, 10) is None


def test_a_broken_set_up_is_published_degraded_not_ok(implicit_run, spark):
    """ALS that cannot learn (regularization 1000, one sweep, no tuning) ranks no better than
    popularity: the lists are published, the stage says degraded and why."""
    config = load_config(None, [f"lake.root={implicit_run['config'].lake.root}",
                                "spark.ui_enabled=false", "recommend.num_blocks=2",
                                "recommend.tune=false", "recommend.reg_param=1000",
                                "recommend.max_iter=1"])
    rec.run_recommend(spark, config, RUN_DATE)
    lake = implicit_run["lake"]
    record = lake.read_manifest(RUN_DATE)["stages"]["recommend"]
    assert record["status"] == "degraded"
    assert "does not beat popularity" in record["degraded_reasons"][0]
    assert record["counts"]["recommendations"] > 0


def test_explicit_stage_with_tuning(spark, make_config):
    """Ratings with a planted rank-2 structure; recommendations exclude rated items; the grid and
    the point it chose are in the manifest, and rank 2 replaces the configured rank 1."""
    rng = np.random.default_rng(8)
    users, items = rng.normal(size=(80, 2)), rng.normal(size=(40, 2))
    rows = [(f"u{u}", f"m{i}", float(np.clip(np.rint(3 + users[u] @ items[i]), 1, 5)),
             pd.Timestamp(f"2026-01-{1 + (u + i) % 28:02d} 12:00:00").to_pydatetime(), "r.csv")
            for u in range(80) for i in range(40) if rng.random() < 0.5]
    config = make_config("recommend.feedback=explicit", "recommend.explicit_model=als",
                         "recommend.rank=1",
                         "recommend.tune_rank=[1,2]", "recommend.tune_reg_param=[0.1]",
                         "recommend.max_iter=5", "recommend.num_blocks=2", "recommend.top_n=3",
                         "recommend.evaluate=false")
    lake = Lake(spark, config.lake.root)
    lake.publish(spark.createDataFrame(rows, CLEAN_RATINGS), "clean/ratings", f"dt={RUN_DATE}")
    result = rec.run_recommend(spark, config, RUN_DATE)

    m = result["metrics"]
    assert [(g["rank"], g["reg_param"]) for g in m["tuning"]] == [(1, 0.1), (2, 0.1)]
    best = min(m["tuning"], key=lambda g: g["rmse"])
    assert best["rank"] == 2
    choice = m["tuning_choice"]
    assert choice["point"] == {"rank": 2, "reg_param": 0.1} and not choice["kept_configured"]
    assert choice["rmse"] == best["rmse"] and choice["validation_units"] > 200
    assert m["params"] == {"rank": 2, "reg_param": 0.1, "max_iter": 5, "model": "als"}
    assert "tuning_baseline_als" not in m and "model" not in choice
    assert "rmse" not in m  # evaluation off: the held-out figures are MovieLens's test below
    assert lake.read_manifest(RUN_DATE)["stages"]["recommend"]["metrics"] == m
    got = lake.read("mining/recommendations", f"run_date={RUN_DATE}").toPandas()
    assert set(got["source"]) == {"als"} and len(got) == 3 * 80
    assert not {(r[0], r[1]) for r in rows} & set(zip(got["customer_id"], got["product_id"]))


def _ratings_with_planted_biases(seed: int, users=150, items=100, rank=2, density=0.25,
                                 bias=0.8, noise=0.6) -> list[tuple]:
    """Ratings 1-5 from a known model: 3.5 + user bias + item bias + a rank-2 product + noise,
    rounded; what the baseline predictors (and ALS on their residual) are made for."""
    rng = np.random.default_rng(seed)
    u, i = 0.8 * rng.normal(size=(users, rank)), 0.8 * rng.normal(size=(items, rank))
    b_user, b_item = rng.normal(scale=bias, size=users), rng.normal(scale=bias, size=items)
    cu, ci = np.nonzero(rng.random((users, items)) < density)
    rating = np.clip(np.rint(3.5 + b_user[cu] + b_item[ci] + np.einsum("nk,nk->n", u[cu], i[ci])
                             + rng.normal(scale=noise, size=len(cu))), 1, 5)
    return [(f"u{a:03d}", f"m{b:03d}", float(r),
             pd.Timestamp(f"2026-01-{1 + (a + b) % 28:02d} 12:00:00").to_pydatetime(), "r.csv")
            for a, b, r in zip(cu, ci, rating)]


def test_explicit_stage_planted_biases_blend_beats_plain_als(spark, make_config):
    """Ratings with planted user and item biases: on the validation split cut from the training
    part, recommend.explicit_model=auto (the default) leaves plain ALS for a model with the
    baseline predictors, and on the held-out test split that model beats plain ALS at its own
    tuned point."""
    rows = _ratings_with_planted_biases(3)
    config = make_config("recommend.feedback=explicit", "recommend.tune_rank=[2]",
                         "recommend.rank=2", "recommend.tune_reg_param=[0.1,0.3]",
                         "recommend.max_iter=10", "recommend.num_blocks=2", "recommend.top_n=3")
    lake = Lake(spark, config.lake.root)
    lake.publish(spark.createDataFrame(rows, CLEAN_RATINGS), "clean/ratings", f"dt={RUN_DATE}")
    result = rec.run_recommend(spark, config, RUN_DATE)
    m = result["metrics"]
    model = m["tuning_choice"]["model"]
    assert model["model"] in ("blend", "baseline_als") and m["params"]["model"] == model["model"]
    assert model["rmse"] < model["rmse_als"] and model["validation_units"] > 500
    assert [(g["rank"], g["reg_param"]) for g in m["tuning_baseline_als"]] == [(2, 0.1), (2, 0.3)]
    assert lake.read_manifest(RUN_DATE)["stages"]["recommend"]["status"] == "ok"

    point = m["tuning_choice"]["point"]
    plain = params(implicit=False, max_iter=10, **point)
    plain_metrics, _ = rec.evaluate(plain, config.recommend, rec.rating_interactions(
        spark.createDataFrame(rows, CLEAN_RATINGS)))
    print(f"\nplanted biases: {model['model']} RMSE {m['rmse']:.4f} against plain ALS "
          f"{plain_metrics['rmse']:.4f} (item means {m['baseline_rmse']:.4f})")
    assert m["rmse"] < 0.95 * plain_metrics["rmse"]
    assert m["rmse"] < m["baseline_rmse"]


def test_blend_lists_rank_by_its_predictions(spark, small_interactions):
    """A blend's top-N lists are the best unseen products by the same model's predicted ratings
    (both go through score_parts), and the prediction is the weighted sum of its two fits'."""
    blend = params(implicit=False, rank=3, max_iter=4, model="blend", blend_weight=0.3,
                   baseline_rank=2, baseline_reg_param=0.2)
    fitted = rec.fit_model(small_interactions, blend)
    try:
        assert [w for w, _ in fitted.parts] == pytest.approx([0.7, 0.3])
        assert fitted.parts[1][1].biases is not None and fitted.parts[0][1].biases is None
        customers = small_interactions.select("customer_id").distinct()
        pairs = customers.crossJoin(small_interactions.select("product_id").distinct())
        predicted = rec.predict(fitted, pairs).toPandas()
        parts = [rec.predict(part, pairs).toPandas().set_index(["customer_id", "product_id"])
                 for _, part in fitted.parts]
        by_pair = predicted.set_index(["customer_id", "product_id"])["prediction"]
        weighted = 0.7 * parts[0]["prediction"] + 0.3 * parts[1]["prediction"]
        assert by_pair.sort_index().to_numpy() == pytest.approx(
            weighted.sort_index().to_numpy(), abs=1e-5)

        got = rec.top_unseen_als(fitted, customers, small_interactions, 4).toPandas()
        seen = set(small_interactions.select("customer_id", "product_id").toPandas()
                   .itertuples(index=False, name=None))
        unseen = predicted[[(c, p) not in seen for c, p in
                            zip(predicted["customer_id"], predicted["product_id"])]]
        expected = (unseen.sort_values(["customer_id", "prediction", "product_id"],
                                       ascending=[True, False, True])
                    .groupby("customer_id").head(4))
        mine = got.sort_values(["customer_id", "rank"])
        assert list(mine["customer_id"]) == list(expected["customer_id"])
        assert mine["score"].to_numpy() == pytest.approx(expected["prediction"].to_numpy(),
                                                         abs=1e-5)
    finally:
        fitted.unpersist()


# --------------------------------------------------------------------------- the grid (no Spark)

def _planted_ratings(seed: int, users=300, items=200, rank=3, density=0.12, noise=0.8):
    """Ratings from a known rank-3 model plus Gaussian noise: what a too small regularization
    overfits and a too large one flattens."""
    rng = np.random.default_rng(seed)
    u, i = rng.normal(size=(users, rank)), rng.normal(size=(items, rank))
    mask = rng.random((users, items)) < density
    cu, ci = np.nonzero(mask)
    frame = pd.DataFrame({"customer_id": [f"u{x:03d}" for x in cu],
                          "product_id": [f"p{x:03d}" for x in ci],
                          "strength": np.einsum("nk,nk->n", u[cu], i[ci])
                          + rng.normal(scale=noise, size=len(cu))})
    held = rng.random(len(frame)) < 0.2
    return frame[~held], frame[held], np.einsum("nk,nk->n", u[cu], i[ci])[held]


def test_grid_picks_the_planted_regularization_over_an_overfitting_configured_one():
    from deepmine.mining import als_grid
    fit_part, valid, _ = _planted_ratings(1)
    points = [als_grid.Point(10, reg, 1.0) for reg in (0.005, 0.1, 3.0)]
    overfit = points[0]
    chosen, rows, choice = als_grid.search(fit_part, valid, points, overfit, False, 10, 10, 42)
    assert [r["reg_param"] for r in rows] == [0.005, 0.1, 3.0]
    assert chosen.reg_param == 0.1 and not choice["kept_configured"]
    assert rows[1]["rmse"] < rows[0]["rmse"] and rows[1]["rmse"] < rows[2]["rmse"]
    # and the choice holds on fresh ratings of the same model: it generalises, it is not luck
    train, test, _ = _planted_ratings(2)
    rmse = {p.reg_param: float(np.sqrt(als_grid.losses(train, test, p, False, 10, 10, 42).mean()))
            for p in points}
    assert rmse[0.1] < rmse[0.005] and rmse[0.1] < rmse[3.0]


def test_grid_implicit_ndcg_by_hand():
    """als_grid's per-customer NDCG against ranking_metrics' definition on factors set by hand."""
    from deepmine.mining import als_grid
    fit_part = pd.DataFrame({"customer_id": ["a", "a", "b"], "product_id": ["p1", "p2", "p1"],
                             "strength": [1.0, 1.0, 1.0]})
    coded = als_grid.Coded.of(fit_part)  # items p1, p2 (no p3: unseen in the fit part)
    users = np.array([[1.0], [1.0]])
    items = np.array([[2.0], [1.0]])
    relevant = pd.DataFrame({"customer_id": ["a", "b", "b", "c"],
                             "product_id": ["p3", "p2", "p3", "p2"]})
    got = als_grid.ndcg_per_customer(coded, (users, items), relevant, k=2)
    # a: every known product seen, nothing to recommend: 0; b: p2 at rank 1 of 2 relevant
    # (p3 counts in the ideal DCG but cannot be hit); c: unknown customer: 0
    assert list(got) == pytest.approx([0.0, 1.0 / (1.0 + 1.0 / math.log2(3)), 0.0])


def test_explicit_model_choice_on_planted_biases_and_when_validation_cannot_tell():
    """search_explicit leaves plain ALS for the baseline model or a blend when the ratings carry
    planted biases; with a dozen validation ratings the evidence cannot separate them and plain
    ALS is kept; asked for `blend`, the weight stays strictly between 0 and 1."""
    from deepmine.mining import als_grid
    frame = pd.DataFrame(_ratings_with_planted_biases(4),
                         columns=["customer_id", "product_id", "strength", "ts", "f"])
    held = np.random.default_rng(0).random(len(frame)) < 0.2
    fit_part, valid = frame[~held], frame[held]
    points = [als_grid.Point(2, 0.1, 1.0), als_grid.Point(2, 0.3, 1.0)]
    point, rows, choice, base_rows, model = als_grid.search_explicit(
        fit_part, valid, points, points[0], "auto", 10.0, 10, 42)
    assert model["model"] in ("blend", "baseline_als") and model["weight"] > 0
    assert model["rmse"] < min(r["rmse"] for r in rows) and len(base_rows) == 2
    assert model["validation_units"] == choice["validation_units"]
    # the baseline predictors alone recover the planted biases' ordering
    baseline = als_grid.Baseline.fit(fit_part, 10.0)
    assert baseline.mean == pytest.approx(fit_part["strength"].mean())
    *_, tiny = als_grid.search_explicit(fit_part, valid.iloc[:12], points, points[0], "auto",
                                        10.0, 10, 42)
    assert tiny["model"] == "als" and tiny["rmse"] == tiny["rmse_als"]
    *_, forced = als_grid.search_explicit(fit_part, valid, points, points[0], "blend", 10.0,
                                          10, 42)
    assert forced["model"] == "blend" and 0 < forced["weight"] < 1


# --------------------------------------------------------------------------- quality targets

def test_movielens_100k_explicit_rmse(spark, tmp_path):
    """The default config as the stage runs it: tuning on a validation split cut from the
    training part (it picks the explicit model too), then the held-out test split."""
    info = sample_or_skip(tmp_path, "movielens")
    ratings = (spark.read.csv(info["path"], header=True)
               .select("user_id", "item_id", F.col("rating").cast("double").alias("rating")))
    cfg = RecommendConfig(feedback="explicit")
    assert cfg.tune and cfg.explicit_model == "auto"
    data = rec.rating_interactions(ratings).persist()
    chosen, tuning = rec.tune(rec.AlsParams.from_config(cfg, 2), cfg, data)
    metrics, counts = rec.evaluate(chosen, cfg, data)
    data.unpersist()
    print(f"\nMovieLens 100k, random 80/20: RMSE {metrics['rmse']:.4f} MAE {metrics['mae']:.4f} "
          f"(item means: RMSE {metrics['baseline_rmse']:.4f}); {chosen.describe()}; {counts}")
    assert counts["train_pairs"] + counts["test_pairs"] == 100_000
    assert 0.17 < counts["test_pairs"] / 100_000 < 0.23
    assert tuning["tuning_choice"]["validation_units"] < 0.2 * counts["train_pairs"]
    assert metrics["rmse"] <= 0.91
    assert metrics["mae"] < metrics["baseline_mae"] and metrics["rmse"] < metrics["baseline_rmse"]


def test_instacart_implicit_beats_popularity(spark, tmp_path):
    """The Instacart sample (15,183 orders by 593 users), the stage's defaults, split by time."""
    info = sample_or_skip(tmp_path, "instacart")
    lines = (spark.read.csv(info["path"], header=True)
             .select("invoice_id", "customer_id", "product_id",
                     F.col("quantity").cast("long").alias("quantity"),
                     F.to_timestamp("invoice_ts").alias("invoice_ts")))
    cfg = RecommendConfig(feedback="implicit")
    metrics, counts = rec.evaluate(rec.AlsParams.from_config(cfg, 2), cfg, rec.purchase_lines(lines))
    print(f"\nInstacart: ndcg@10 {metrics['ndcg_at_10']:.4f} against popularity's "
          f"{metrics['baseline_ndcg_at_10']:.4f}; {counts}")
    assert counts["test_customers"] > 500
    assert metrics["ndcg_at_10"] > metrics["baseline_ndcg_at_10"]
    assert metrics["map_at_10"] > metrics["baseline_map_at_10"]
