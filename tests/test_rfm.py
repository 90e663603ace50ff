"""RFM (deepmine.mining.rfm) against a hand-computed table, a plain pandas computation (CDNOW and generated
data) and the customer groups planted by the generator."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.testing import assertDataFrameEqual
from sklearn.metrics import adjusted_rand_score

from deepmine.mining import rfm
from deepmine.core.config import ConfigError
from deepmine.core.lake import Lake
from deepmine.mining.rfm import SEGMENT_GRID, run_rfm, segment_name
from deepmine.core.schemas import CLEAN_TRANSACTIONS, MINING_RFM

from conftest import sample_or_skip

RFM_COLUMNS = ["customer_id", "recency_days", "frequency", "monetary", "r_score", "f_score",
               "m_score", "segment"]


# --------------------------------------------------------------------------- helpers

def clean_frame(spark, lines: pd.DataFrame):
    """Canonical lines (pandas) -> a DataFrame shaped like clean/transactions."""
    lines = lines.assign(invoice_ts=pd.to_datetime(lines["invoice_ts"]),
                         is_return=lines["quantity"] < 0, source_file="test.csv")
    for column in ("unit_price", "country"):
        if column not in lines:
            lines[column] = None
    lines["unit_price"] = lines["unit_price"].astype("float64")
    return spark.createDataFrame(lines[list(CLEAN_TRANSACTIONS.fieldNames())], CLEAN_TRANSACTIONS)


def pandas_rfm(lines: pd.DataFrame, run_date: str, returns: str = "net") -> pd.DataFrame:
    """The RFM table computed plainly with pandas, from rfm.py's docstring alone."""
    day = pd.Timestamp(run_date)
    lines = lines.assign(invoice_ts=pd.to_datetime(lines["invoice_ts"]))
    lines = lines[lines["invoice_ts"] < day + pd.Timedelta(days=1)]
    is_return = lines["quantity"] < 0
    purchases = lines[~is_return].groupby("customer_id")
    out = pd.DataFrame({
        "recency_days": (day - purchases["invoice_ts"].max().dt.normalize()).dt.days,
        "frequency": purchases["invoice_id"].nunique(),
    })
    counted = lines if returns == "net" else lines[~is_return]
    amounts = (counted["quantity"] * counted["unit_price"]).round(4)
    by_customer = counted["customer_id"]
    monetary = amounts.groupby(by_customer).sum().round(4)
    unknown = counted["unit_price"].isna().groupby(by_customer).any()
    out["monetary"] = monetary.where(~unknown.reindex(monetary.index, fill_value=False))
    for value, score, worse_is_larger in (("recency_days", "r_score", True),
                                          ("frequency", "f_score", False),
                                          ("monetary", "m_score", False)):
        known = out[value].notna().sum()
        worse = out[value].rank(method="min", ascending=not worse_is_larger) - 1
        out[score] = (1 + (5 * worse) // known).astype("Int64")
    out["segment"] = [segment_name(r, f) for r, f in zip(out["r_score"], out["f_score"])]
    return out.reset_index().astype({"recency_days": "int32", "frequency": "int64",
                                     "r_score": "int32", "f_score": "int32"})


def assert_same_rfm(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    ours = ours[RFM_COLUMNS].sort_values("customer_id").reset_index(drop=True)
    theirs = theirs[RFM_COLUMNS].sort_values("customer_id").reset_index(drop=True)
    ours["m_score"] = ours["m_score"].astype("Int64")
    theirs = theirs.astype(ours.dtypes.to_dict())
    pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=1e-12, atol=1e-9)


def sklearn_clusters(table: pd.DataFrame, k: int, seed: int, n_init: int) -> pd.DataFrame:
    """Clusters from rfm.py's docstring with numpy and scikit-learn alone: log1p of R/F/M (negative
    monetary as 0), standardized with the sample sd, K-means, renumbered by size."""
    from sklearn.cluster import KMeans
    table = table.sort_values("customer_id").reset_index(drop=True)
    x = np.log1p(table[["recency_days", "frequency", "monetary"]].astype(float).clip(lower=0))
    x = ((x - x.mean()) / x.std(ddof=1)).to_numpy()
    labels = KMeans(n_clusters=k, n_init=n_init, max_iter=50, random_state=seed).fit_predict(x)
    sizes = np.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    renumber = {old: new for new, old in enumerate(order)}
    return pd.DataFrame({"customer_id": table["customer_id"],
                         "cluster": [renumber[c] for c in labels]})


def assert_same_clusters(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    both = ours[["customer_id", "cluster"]].merge(theirs, on="customer_id", validate="1:1")
    assert len(both) == len(ours) == len(theirs)
    assert (both["cluster_x"] == both["cluster_y"]).all()


# --------------------------------------------------------------------------- hand-computed

RUN_DATE = "2026-01-31"
HAND_LINES = pd.DataFrame([
    # invoice, customer, product, quantity, unit_price, invoice_ts
    ("I1", "C1", "P1", 2, 10.0, "2026-01-30 09:00:00"),
    ("I1", "C1", "P2", 1, 5.5, "2026-01-30 09:00:00"),
    ("I2", "C1", "P1", 1, 20.0, "2026-01-10 12:00:00"),
    ("I3", "C1", "P3", 3, 1.25, "2025-12-01 08:00:00"),
    ("R1", "C1", "P2", -1, 5.5, "2026-01-31 10:00:00"),  # a return: no recency, net monetary
    ("I4", "C2", "P4", 1, 100.0, "2026-01-31 23:59:59"),  # the last second of the run date
    ("I5", "C2", "P4", 1, 50.0, "2026-02-01 00:00:00"),  # after the run date: not counted
    ("I6", "C3", "P5", 1, 8.0, "2025-11-01 10:00:00"),
    ("I7", "C3", "P5", 2, 4.0, "2025-12-15 10:00:00"),
    ("I8", "C4", "P6", 1, 30.0, "2025-06-30 10:00:00"),
    ("I9", "C5", "P6", 1, None, "2025-10-01 10:00:00"),  # no price: monetary unknown
    ("R2", "C6", "P1", -1, 9.0, "2026-01-05 10:00:00"),  # only a return: not scored
    ("I10", "C7", "P6", 1, 30.0, "2026-01-20 10:00:00"),
    ("R3", "C7", "P6", -1, 30.0, "2026-01-25 10:00:00"),  # returned it all: monetary 0
    ("I11", "C8", "P6", 1, 30.0, "2025-06-30 18:00:00"),  # ties C4 on recency and monetary
], columns=["invoice_id", "customer_id", "product_id", "quantity", "unit_price", "invoice_ts"])

# recency: C4, C8 215 (0 worse of 7 -> 1), C5 122 (2 worse -> 1 + 10 // 7 = 2), C3 47 (3 -> 3),
#   C7 11 (4 -> 3), C1 1 (5 -> 4), C2 0 (6 -> 5)
# frequency: five customers with 1 -> 1; C3 2 (5 worse -> 4); C1 3 (6 worse -> 5)
# monetary (6 known): C7 0 -> 1, C3 16 (1 worse -> 1 + 5 // 6 = 1), C4 and C8 30 (2 -> 2),
#   C1 20 + 5.5 + 20 + 3.75 - 5.5 = 43.75 (4 -> 4), C2 100 (5 -> 5)
HAND_RFM = [
    ("C1", 1, 3, 43.75, 4, 5, 4, "Champions"),
    ("C2", 0, 1, 100.0, 5, 1, 5, "New customers"),
    ("C3", 47, 2, 16.0, 3, 4, 1, "Loyal"),
    ("C4", 215, 1, 30.0, 1, 1, 2, "Lost"),
    ("C5", 122, 1, None, 2, 1, None, "Hibernating"),
    ("C7", 11, 1, 0.0, 3, 1, 1, "About to sleep"),
    ("C8", 215, 1, 30.0, 1, 1, 2, "Lost"),
]


def test_hand_computed_table(spark):
    lines = clean_frame(spark, HAND_LINES)
    table = rfm.rfm_table(lines, RUN_DATE).persist()
    assertDataFrameEqual(table, spark.createDataFrame(HAND_RFM, table.schema))
    assert_same_rfm(table.toPandas(), pandas_rfm(HAND_LINES, RUN_DATE))

    ignoring = {r["customer_id"]: r["monetary"] for r in
                rfm.rfm_table(lines, RUN_DATE, returns="ignore").collect()}
    assert ignoring["C1"] == 49.25 and ignoring["C7"] == 30.0 and ignoring["C5"] is None
    with pytest.raises(ConfigError, match="rfm.returns"):
        rfm.rfm_values(lines, RUN_DATE, returns="gross")


@pytest.mark.parametrize("brackets_miss", [False, True])
def test_scores_match_pandas_ranks_with_heavy_ties_and_no_window(spark, monkeypatch,
                                                                 brackets_miss):
    """20,000 customers: recency in 0..364 (ties everywhere), frequency mostly 1, monetary nearly
    all distinct with a block of equal values across a cut point. When every approximate bracket
    misses its rank (forced here), the fallback over all distinct values is exact too."""
    if brackets_miss:
        walk = rfm._walk_to_rank
        monkeypatch.setattr(rfm, "_walk_to_rank", lambda counted, before, q, lo, hi: (
            walk(counted, before, q, lo, hi) if lo == -math.inf else None))
    rng = np.random.default_rng(9)
    n = 20_000
    values = pd.DataFrame({
        "customer_id": [f"c{i:05d}" for i in range(n)],
        "recency_days": rng.integers(0, 365, n).astype("int32"),
        "frequency": np.minimum(rng.geometric(0.6, n), 40).astype("int64"),
        "monetary": np.round(rng.lognormal(4, 1, n), 2)})
    values.loc[7_000:9_000, "monetary"] = 55.0  # one value holding 10% of customers
    values.loc[::97, "monetary"] = np.nan  # unknown monetary: no m_score
    scored = rfm.rfm_scores(spark.createDataFrame(values))
    plan = scored._jdf.queryExecution().executedPlan().toString()
    assert "Window" not in plan
    ours = scored.toPandas().sort_values("customer_id").reset_index(drop=True)
    for value, score, worse_is_larger in (("recency_days", "r_score", True),
                                          ("frequency", "f_score", False),
                                          ("monetary", "m_score", False)):
        known = values[value].notna().sum()
        worse = values[value].rank(method="min", ascending=not worse_is_larger) - 1
        expected = (1 + (5 * worse) // known).astype("Int64")
        pd.testing.assert_series_equal(ours[score].astype("Int64"), expected, check_names=False)
    assert (ours["segment"] == [segment_name(r, f) for r, f in
                                zip(ours["r_score"], ours["f_score"])]).all()


def test_segment_grid_covers_every_pair_once():
    assert sorted(SEGMENT_GRID) == [1, 2, 3, 4, 5]
    assert all(len(row) == 5 for row in SEGMENT_GRID.values())
    assert {"Champions", "Loyal", "At risk", "Hibernating", "Lost"} <= set(rfm.SEGMENTS)
    assert segment_name(5, 5) == "Champions" and segment_name(1, 1) == "Lost"


def test_stage_publishes_tables_and_says_monetary_is_partly_unknown(spark, make_config):
    config = make_config("rfm.k_min=2", "rfm.k_max=3", "rfm.n_init=1")
    lake = Lake(spark, config.lake.root)
    lake.publish(clean_frame(spark, HAND_LINES), "clean/transactions", f"dt={RUN_DATE}")
    result = run_rfm(spark, config, RUN_DATE)
    partition = f"run_date={RUN_DATE}"
    published = lake.read("mining/rfm", partition)
    assert [f.name for f in published.schema.fields] == MINING_RFM.fieldNames()
    assertDataFrameEqual(published.drop("cluster"),
                         spark.createDataFrame(HAND_RFM, published.drop("cluster").schema))
    assert {r["cluster"] for r in published.collect()} <= {0, 1, 2}

    assert result["customers"] == 7 and result["customers_returns_only"] == 1
    assert result["lines_after_run_date"] == 1 and result["lines_without_price"] == 1
    manifest = lake.read_manifest(RUN_DATE)["stages"]["rfm"]
    assert manifest["status"] == "ok"
    assert manifest["metrics"]["cluster_features"] == ["recency_days", "frequency"]
    assert "null for 1 of 7 customers" in manifest["metrics"]["monetary"]
    assert manifest["metrics"]["k"] in (2, 3)

    summary = lake.read("mining/rfm_segments", partition)
    segments = summary.where("grouping = 'segment'")
    expected = [("segment", "Champions", 1, 1 / 7, 1.0, 3.0, 43.75),
                ("segment", "New customers", 1, 1 / 7, 0.0, 1.0, 100.0),
                ("segment", "Loyal", 1, 1 / 7, 47.0, 2.0, 16.0),
                ("segment", "Lost", 2, 2 / 7, 215.0, 1.0, 30.0),
                ("segment", "Hibernating", 1, 1 / 7, 122.0, 1.0, None),
                ("segment", "About to sleep", 1, 1 / 7, 11.0, 1.0, 0.0)]
    assertDataFrameEqual(segments, spark.createDataFrame(expected, summary.schema))
    clusters = summary.where("grouping = 'cluster'").toPandas()
    assert clusters["customers"].sum() == 7 and clusters["share"].sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- CDNOW

def test_cdnow_matches_pandas(spark, tmp_path):
    info = sample_or_skip(tmp_path, "cdnow")
    lines = pd.read_csv(info["path"], dtype={"invoice_id": str, "customer_id": str,
                                             "product_id": str})
    # the ingest quarantines the 80 rows with a dollar amount of 0 (nonpositive_price)
    lines = lines[lines["unit_price"] > 0]
    assert len(lines) == 69_659 - 80
    run_date = "1998-06-30"  # the last day in CDNOW
    ours = rfm.rfm_table(clean_frame(spark, lines), run_date).toPandas()
    theirs = pandas_rfm(lines, run_date)
    assert len(ours) == lines["customer_id"].nunique()
    assert_same_rfm(ours, theirs)
    # heavy ties: every one-time buyer gets f_score 1, and nobody else does
    assert set(ours.loc[ours["frequency"] == 1, "f_score"]) == {1}
    assert (ours.loc[ours["frequency"] > 1, "f_score"] > 1).all()
    print("cdnow segments:", ours["segment"].value_counts().to_dict())


# --------------------------------------------------------------------------- generated data

def test_generated_values_match_pandas_and_clusters_recover_planted_groups(
        spark, make_config, tmp_path):
    from deepmine.data.generate import generate_transactions
    truth = generate_transactions(tmp_path / "gen", lines=8_000, seed=3)
    raw = pd.read_csv(tmp_path / "gen" / "transactions.csv",
                      dtype={"invoice_id": str, "customer_id": str, "product_id": str})
    run_date = truth["as_of"]
    config = make_config("rfm.k_min=3", "rfm.k_max=5", "rfm.n_init=2")
    lake = Lake(spark, config.lake.root)
    lake.publish(clean_frame(spark, raw), "clean/transactions", f"dt={run_date}")
    result = run_rfm(spark, config, run_date)

    published = lake.read("mining/rfm", f"run_date={run_date}")
    ours = published.toPandas()
    assert_same_rfm(ours, pandas_rfm(raw, run_date))
    planted = pd.read_csv(tmp_path / "gen" / "customers_truth.csv", dtype={"customer_id": str})
    both = ours.merge(planted[["customer_id", "group"]], on="customer_id", validate="1:1")
    assert len(both) == len(ours) == truth["counts"]["customers"]
    ari = adjusted_rand_score(both["group"], both["cluster"])
    print(f"generated: {len(ours)} customers, k={result['metrics']['k']} "
          f"silhouette={result['metrics']['silhouette']}, ARI vs planted groups {ari:.3f}")
    assert ari >= 0.6
    # the clusters against a peer: the features and K-means made plainly with numpy and
    # scikit-learn from the pandas table, k fixed to the stage's choice, the same seed
    assert_same_clusters(ours, sklearn_clusters(ours, result["metrics"]["k"], seed=42, n_init=2))
    # silhouette prefers 3 clusters here (champions and loyal customers merge); told k = 4,
    # K-means finds the planted groups almost exactly, on the driver and by Spark ML alike
    # on a sample of 100 customers, then refined on all of them in Spark, it finds the same
    # partition as scikit-learn on all of them (Lloyd's iterations end where they end)
    features = rfm.standardized_features(published, rfm.CLUSTER_FEATURES).persist()
    found = {}
    for local_max in (100_000, 100):
        clusters, metrics = rfm.choose_clusters(features, rfm.CLUSTER_FEATURES, 4, 4, seed=42,
                                                n_init=3, local_max_customers=local_max)
        four = clusters.toPandas().merge(planted[["customer_id", "group"]], on="customer_id")
        ari_4 = adjusted_rand_score(four["group"], four["cluster"])
        print(f"generated: ARI with k = 4 ({metrics['selection']}): {ari_4:.3f}")
        assert ari_4 >= 0.9 and len(four) == len(ours)
        found[local_max] = four.sort_values("customer_id")["cluster"].to_numpy()
    assert metrics["refinement_iterations"] >= 1
    assert adjusted_rand_score(found[100_000], found[100]) >= 0.99
    features.unpersist()
    assert result["metrics"]["cluster_features"] == ["recency_days", "frequency", "monetary"]
    # the one-off buyers, planted with exactly one invoice, all have f_score 1
    one_off = both[both["group"] == "one_off"]
    assert (one_off["frequency"] == 1).all() and (one_off["f_score"] == 1).all()


def test_no_customers_yet_publishes_empty_tables(spark, make_config):
    config = make_config()
    lake = Lake(spark, config.lake.root)
    lake.publish(clean_frame(spark, HAND_LINES), "clean/transactions", f"dt={RUN_DATE}")
    result = run_rfm(spark, config, "2026-01-01")  # before the only input date
    assert result["customers"] == 0 and result["metrics"]["k"] == 0
    assert lake.read("mining/rfm", "run_date=2026-01-01").count() == 0


def test_bad_k_range_is_named(spark, make_config):
    with pytest.raises(ConfigError, match="rfm.k_min"):
        run_rfm(spark, make_config("rfm.k_min=5", "rfm.k_max=3"), RUN_DATE)


# --------------------------------------------------------------------------- cluster checks

def two_equal_groups(spark, per_group: int = 400):
    """customer_id + 3 feature columns: two tight, well-separated groups of exactly `per_group`
    customers."""
    rng = np.random.default_rng(4)
    rows = [(f"c{g}{i:04d}", *map(float, centre + rng.normal(scale=0.05, size=3)))
            for g, centre in enumerate((-np.ones(3), np.ones(3))) for i in range(per_group)]
    return spark.createDataFrame(rows, ["customer_id", "a", "b", "c"])


def test_equal_cluster_sizes_are_not_a_collapse(spark):
    """[400, 400] is two clusters: counting *distinct* sizes once threw this k away."""
    assert rfm.collapsed([400, 400]) is False
    assert rfm.collapsed([800, 0]) is True and rfm.collapsed([800]) is True
    assert rfm.collapsed([799, 1, 0]) is False
    clusters, metrics = rfm.choose_clusters(two_equal_groups(spark), ("a", "b", "c"), 2, 2,
                                            seed=1, n_init=1)
    assert metrics["k"] == 2 and metrics["cluster_sizes"] == [400, 400]
    assert metrics["silhouette"] > 0.9 and "degraded_reason" not in metrics
    got = clusters.toPandas()
    assert got.groupby(got["customer_id"].str[1])["cluster"].nunique().tolist() == [1, 1]


def test_kmeans_collapsing_for_every_k_degrades_the_stage(spark, make_config, monkeypatch):
    """When every k collapses, all customers in cluster 0 is published but not passed off as ok."""
    monkeypatch.setattr(rfm, "collapsed", lambda sizes: True)
    config = make_config("rfm.k_min=2", "rfm.k_max=3", "rfm.n_init=1")
    lake = Lake(spark, config.lake.root)
    lake.publish(clean_frame(spark, HAND_LINES), "clean/transactions", f"dt={RUN_DATE}")
    result = run_rfm(spark, config, RUN_DATE)
    record = lake.read_manifest(RUN_DATE)["stages"]["rfm"]
    assert record["status"] == "degraded"
    assert any("one cluster for every k" in r for r in record["degraded_reasons"])
    assert result["metrics"]["k"] == 1 and result["metrics"]["silhouette"] is None
    published = lake.read("mining/rfm", f"run_date={RUN_DATE}")
    assert {r["cluster"] for r in published.collect()} == {0} and published.count() == 7
