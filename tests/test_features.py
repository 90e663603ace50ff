"""Feature tables: customer vectors (values, standardization, weighting), the exact row-group
layout Petastorm shards by, synthetic images, and the stage end to end on a small lake."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from deepmine.deep.features import (customer_feature_values, customer_features, row_group_layout,
                               synthetic_images, with_row_ids)
from deepmine.core.schemas import CLEAN_TRANSACTIONS

D = "2026-01-31"


def _lines(spark, rows):
    full = [(inv, cust, prod, qty, price, dt.datetime.fromisoformat(ts), "UK", qty < 0, "f")
            for inv, cust, prod, qty, price, ts in rows]
    return spark.createDataFrame(full, CLEAN_TRANSACTIONS)


@pytest.fixture
def small(spark):
    lines = _lines(spark, [
        ("I1", "A", "P1", 2, 10.0, "2026-01-01 10:00:00"),  # A: two invoices, shoes and a bag
        ("I1", "A", "P2", 1, 30.0, "2026-01-01 10:00:00"),
        ("I2", "A", "P1", 1, 10.0, "2026-01-21 10:00:00"),
        ("C1", "A", "P2", -1, 30.0, "2026-01-25 10:00:00"),  # a return
        ("I3", "B", "P3", 4, 5.0, "2026-01-11 09:00:00"),  # B: one invoice, unknown product
        ("I4", "B", "P3", 1, 5.0, "2026-02-05 09:00:00"),  # after D: not counted
    ])
    products = spark.createDataFrame([("P1", "Sneaker"), ("P2", "Bag")], "product_id string, category string")
    rfm = spark.createDataFrame([("A", 10, 2, 50.0), ("B", 20, 1, 20.0)],
                                "customer_id string, recency_days int, frequency long, monetary double")
    return lines, products, rfm


def test_customer_values_whole_frame(spark, small):
    lines, products, rfm = small
    values = customer_feature_values(lines, D, rfm, products, ["Bag", "Sneaker", "other"])
    expected = spark.createDataFrame([
        ("A", 10, 2, 50.0, 3 / 2, 4 / 2, 60.0 / 2, 2, 30, 1 / 4, 30 / 60, 30 / 60, 0.0),
        ("B", 20, 1, 20.0, 1.0, 4.0, 20.0, 1, 20, 0.0, 0.0, 0.0, 1.0),
    ], "customer_id string, recency_days int, frequency long, monetary double, "
       "lines_per_invoice double, items_per_invoice double, spend_per_invoice double, "
       "distinct_products long, tenure_days int, return_line_share double, share_bag double, "
       "share_sneaker double, share_other double")
    assertDataFrameEqual(values, expected, checkRowOrder=False)


def test_customer_vectors_standardized_and_weighted(spark, small):
    lines, products, rfm = small
    vectors, names = customer_features(lines, D, rfm, products, basket_weight=0.5, category_weight=0.25)
    assert names[:3] == ["recency_days", "frequency", "monetary"]
    assert names[-3:] == ["share_bag", "share_sneaker", "share_other"]
    x = np.array([r["features"] for r in vectors.orderBy("customer_id").collect()])
    assert x.shape == (2, len(names)) and x.dtype == np.float64
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-6)
    # with two customers a standardized column is +-1 times its weight
    np.testing.assert_allclose(np.abs(x[:, 0]), 1, rtol=1e-6)
    np.testing.assert_allclose(np.abs(x[:, 3]), 0.5 / math.sqrt(6), rtol=1e-6)
    np.testing.assert_allclose(np.abs(x[:, -1]), 0.25 / math.sqrt(3), rtol=1e-6)


def test_row_groups_exact_and_split_apart(spark):
    ids = spark.range(0, 1003).select(F.format_string("c%04d", "id").alias("image_id"),
                                      F.when(F.col("id") % 5 == 0, "test").otherwise("train").alias("split"))
    with with_row_ids(ids.withColumn("_t", F.col("split") == "test"), "image_id", 3,
                      order_first="_t") as ids:
        laid = row_group_layout(spark, ids.drop("_t"), 4, "split", ("train", "test"))
        parts = laid.rdd.glom().map(lambda rows: (len(rows), sorted({r.split for r in rows}),
                                                  [r.row_id for r in rows])).collect()
    assert [(n, s) for n, s, _ in parts] == [(201, ["train"]), (201, ["train"]), (200, ["train"]),
                                             (200, ["train"]), (51, ["test"]), (50, ["test"]),
                                             (50, ["test"]), (50, ["test"])]
    assert all(r == sorted(r) for _, _, r in parts)
    all_ids = sorted(i for _, _, r in parts for i in r)
    assert all_ids == list(range(1003))


def test_row_ids_are_the_seeded_hash_rank_across_partitions(spark):
    """Dense ids from the distributed sort equal the rank a single global window gives (the
    definition), on an input spread over many partitions and shuffled."""
    from pyspark.sql import Window
    keys = (spark.range(0, 5000, numPartitions=7)
            .select(F.format_string("k%05d", "id").alias("key"),
                    (F.col("id") % 3 == 0).alias("_first")).repartition(5))
    for order_first in (None, "_first"):
        order = [F.xxhash64("key", F.lit(11)), F.col("key")]
        if order_first:
            order = [F.col(order_first), *order]
        expected = {r["key"]: r["r"] for r in keys.select(
            "key", (F.row_number().over(Window.orderBy(*order)) - 1).alias("r")).collect()}
        with with_row_ids(keys, "key", 11, order_first) as ranked:
            got = {r["key"]: r["row_id"] for r in ranked.collect()}
            assert ranked.columns == ["key", "_first", "row_id"]
        assert got == expected


def test_synthetic_images_are_seeded_and_distinct():
    a, la = synthetic_images(50, 28, 28, seed=3)
    b, lb = synthetic_images(50, 28, 28, seed=3)
    assert a.shape == (50, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    means = {k: a[la == k].mean() for k in set(la.tolist())}
    assert len(set(np.round(list(means.values()), 3))) > 1


def test_run_features_end_to_end(spark, tmp_path, make_config):
    """Generated transactions -> ingest -> features: both tables, equal row groups, manifest."""
    from deepmine.deep.features import run_features
    from deepmine.data.generate import generate_transactions
    from deepmine.data.ingest import run_ingest
    from deepmine.core.lake import Lake
    from deepmine.deep.loader import parquet_parts

    generate_transactions(tmp_path / "in", lines=3000, seed=5)
    config = make_config(f"input.products={tmp_path / 'in' / 'products.csv'}",
                         "features.image_source=synthetic", "features.synthetic_images=700",
                         "features.row_groups=4")
    run_ingest(spark, config, D, str(tmp_path / "in" / "transactions.csv"), "transactions")
    out = run_features(spark, config, D)
    lake = Lake(spark, config.lake.root)
    customers = lake.read("features/customers", f"run_date={D}")
    n = customers.count()
    assert out["customers"] == n > 0
    assert sorted(r[0] for r in customers.select("row_id").collect()) == list(range(n))
    dims = {len(r[0]) for r in customers.select("features").collect()}
    assert dims == {out["metrics"]["customers"]["dimension"]} == {9 + 11}  # 10 categories + other
    parts = parquet_parts(lake.partition_url("features/customers", f"run_date={D}"))
    sizes = [n for p in parts for n in p.row_group_rows]
    assert len(sizes) == 4 and max(sizes) - min(sizes) <= 1
    images = parquet_parts(lake.partition_url("features/images", f"run_date={D}"))
    assert [p.split for p in images] == ["train"] * 4 + ["test"] * 4
    assert sum(p.rows for p in images) == out["images"] == 700
    assert out["metrics"]["images"]["source"] == "synthetic"
    manifest = lake.read_manifest(D)["stages"]["features"]
    assert manifest["status"] == "ok" and manifest["metrics"]["images"]["row_groups"] == 8
