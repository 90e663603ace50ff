"""Features: the tables training reads (`deepmine features` -> `features/customers/run_date=D`,
`features/images/run_date=D`), and `features/customer_values/run_date=D`, the customer features
before scaling (customer_id + one double column per feature name; the drift stage compares
these, since each night's standardization moves the scaled values by itself).

Customers (one row per customer with a purchase up to D): a fixed-length float vector, each entry
standardized over the customers (mean 0, sd 1), in this order (names also in the manifest):

- `recency_days`, `frequency`, `monetary`: log1p (net monetary below 0 taken as 0). Taken from
  `mining/rfm/run_date=D` when the RFM stage has run for D, else computed from the clean
  transactions the same way (`deepmine.mining.rfm.rfm_values`).
- basket statistics over purchase lines: `lines_per_invoice`, `items_per_invoice`,
  `spend_per_invoice`, `distinct_products`, `tenure_days` (first purchase to D), all log1p, and
  `return_line_share` (return lines / all lines).
- `share_<category>`: the customer's purchase spend per product category (categories from the
  `input.products` CSV, sorted by name; spend on products missing from it is in `share_other`).
  `input.products: ""` leaves the shares out (said in the log); a named file that is missing is
  an error, as in the rules stage.

Blocks are weighted after standardizing: each RFM entry weighs 1; the basket block and the share
block are scaled to a total standard deviation of `features.basket_weight` (0.5) and
`features.category_weight` (0.25). Unweighted, the six basket statistics (noisy for one-invoice
customers) and the shares outvote recency/frequency/spend: on generated data (20k lines), K-means
on the unweighted vector finds the planted groups with ARI 0.57, on the weighted one 1.0.

Images: `features` = height*width intensities / 255 (row-major) and `label` (-1 when unknown),
from `clean/images` (every dt <= D, the latest version of each image_id) when images were ingested;
else Fashion-MNIST read from its Debian package when installed; else synthetic shapes
(`synthetic_images`): with `features.image_source: auto` that fallback is a warning in the log, the
manifest's `warnings` and the report. `features.image_limit_train/test` keep a seeded sample per split.

Layout for Petastorm. Petastorm shards a dataset by row group (row group i goes to rank
i % num_proc), so a rank's share is the rows of its row groups. Each table is written as exactly
`features.row_groups` files (per split for images) of one row group each, with sizes equal to within
one row: rows are dealt round-robin by `row_id` (dense, in a seeded hash order, so a group is a
random sample of the table) and each group is sent to its own Spark partition. Spark has no
"partition = this value" operator, so the group number is replaced by an integer key whose
Murmur3 hash (what `repartition(n, col)` uses) lands on that partition (`_partition_keys`). While
writing, `parquet.block.size` is raised to 1 GiB so that Parquet does not split a file into several
row groups; the row-group sizes actually written are read back and put in the manifest.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deepmine.core.config import Config, ConfigError
from deepmine.core.lake import Lake, StageRun

RFM_FEATURES = ("recency_days", "frequency", "monetary")
BASKET_FEATURES = ("lines_per_invoice", "items_per_invoice", "spend_per_invoice",
                   "distinct_products", "tenure_days", "return_line_share")
LOGGED = set(RFM_FEATURES) | set(BASKET_FEATURES) - {"return_line_share"}
OTHER_CATEGORY = "other"
ROW_GROUP_BYTES = 1 << 30


# =============================================================== customers (transform)

def category_names(products: DataFrame | None) -> list[str]:
    """The category share columns' categories, sorted, `other` last."""
    if products is None:
        return []
    names = sorted(r[0] for r in products.select("category").distinct().collect() if r[0])
    return names + [OTHER_CATEGORY]


def _share_column(category: str) -> str:
    return "share_" + "".join(c if c.isalnum() else "_" for c in category.lower()).strip("_")


def customer_feature_values(transactions: DataFrame, run_date: str, rfm: DataFrame,
                            products: DataFrame | None, categories: list[str]) -> DataFrame:
    """customer_id + one raw (unscaled) column per feature, for the customers in `rfm`."""
    from deepmine.mining.rfm import end_of_day
    lines = transactions.where(F.col("invoice_ts") < F.lit(end_of_day(run_date)))
    purchase = ~F.col("is_return")
    amount = F.coalesce(F.col("quantity") * F.col("unit_price"), F.lit(0.0))
    basket = lines.groupBy("customer_id").agg(
        F.count(F.when(purchase, 1)).alias("_purchase_lines"),
        F.sum(F.when(purchase, F.col("quantity"))).alias("_items"),
        F.sum(F.when(purchase, amount)).alias("_spend"),
        F.count_distinct(F.when(purchase, F.col("product_id"))).alias("distinct_products"),
        F.min(F.when(purchase, F.col("invoice_ts"))).alias("_first"),
        (F.count(F.when(~purchase, 1)) / F.count("*")).alias("return_line_share"))
    values = rfm.select("customer_id", *RFM_FEATURES).join(basket, "customer_id", "left").select(
        "customer_id", *RFM_FEATURES,
        (F.col("_purchase_lines") / F.col("frequency")).alias("lines_per_invoice"),
        (F.col("_items") / F.col("frequency")).alias("items_per_invoice"),
        (F.col("_spend") / F.col("frequency")).alias("spend_per_invoice"),
        "distinct_products",
        F.datediff(F.lit(run_date).cast("date"), F.to_date("_first")).alias("tenure_days"),
        "return_line_share")
    if not categories:
        return values
    cats = products.select("product_id", F.col("category").cast("string"))
    spend = (lines.where(purchase).join(cats, "product_id", "left")
             .withColumn("category", F.coalesce("category", F.lit(OTHER_CATEGORY)))
             .groupBy("customer_id").pivot("category", categories).agg(F.sum(amount)))
    total = sum((F.coalesce(F.col(c), F.lit(0.0)) for c in categories), F.lit(0.0))
    shares = spend.select("customer_id", *[
        F.when(total > 0, F.coalesce(F.col(c), F.lit(0.0)) / total).otherwise(F.lit(0.0))
        .alias(_share_column(c)) for c in categories])
    return values.join(shares, "customer_id", "left")


def standardize(values: DataFrame, names: list[str], weights: dict[str, float]) -> DataFrame:
    """customer_id + `features` (array<float>): log1p where LOGGED, then (x - mean) / sd * weight.

    Missing values (a customer without priced lines) become the mean (0); a constant column is 0.
    """
    def raw(name: str):
        x = F.col(name).cast("double")
        return F.log1p(F.greatest(x, F.lit(0.0))) if name in LOGGED else x
    prepared = values.select("customer_id", *[raw(n).alias(n) for n in names])
    stats = prepared.agg(*[F.avg(n).alias(f"m_{i}") for i, n in enumerate(names)],
                         *[F.stddev_pop(n).alias(f"s_{i}") for i, n in enumerate(names)]).first()
    scaled = []
    for i, n in enumerate(names):
        mean, sd = stats[f"m_{i}"] or 0.0, stats[f"s_{i}"] or 0.0
        z = (F.col(n) - F.lit(mean)) / F.lit(sd) * F.lit(weights.get(n, 1.0)) if sd > 0 else F.lit(0.0)
        scaled.append(F.coalesce(z, F.lit(0.0)).cast("float"))
    return prepared.select("customer_id", F.array(*scaled).cast("array<float>").alias("features"))


def customer_features(transactions: DataFrame, run_date: str, rfm: DataFrame,
                      products: DataFrame | None, basket_weight: float = 0.5,
                      category_weight: float = 0.25) -> tuple[DataFrame, list[str]]:
    """Clean transactions (+ RFM values, products) -> (customer_id, features), feature names."""
    values, names = customer_values(transactions, run_date, rfm, products)
    return scaled_features(values, names, basket_weight, category_weight), names


def customer_values(transactions: DataFrame, run_date: str, rfm: DataFrame,
                    products: DataFrame | None) -> tuple[DataFrame, list[str]]:
    """(customer_id + one unscaled double column per feature, the feature names in order)."""
    categories = category_names(products)
    values = customer_feature_values(transactions, run_date, rfm, products, categories)
    names = [*RFM_FEATURES, *BASKET_FEATURES, *[_share_column(c) for c in categories]]
    return values.select("customer_id", *[F.col(n).cast("double").alias(n) for n in names]), names


def scaled_features(values: DataFrame, names: list[str], basket_weight: float,
                    category_weight: float) -> DataFrame:
    """`standardize` with the blocks' weights: the basket block and the category block are
    scaled to a total standard deviation of `basket_weight` / `category_weight` (each entry by
    weight / sqrt(entries))."""
    shares = [n for n in names if n.startswith("share_")]
    weights = {s: category_weight / math.sqrt(len(shares)) for s in shares}
    weights.update({b: basket_weight / math.sqrt(len(BASKET_FEATURES)) for b in BASKET_FEATURES})
    return standardize(values, names, weights)


def read_products(spark: SparkSession, path: str) -> DataFrame | None:
    """The `input.products` CSV (product_id,category_id,category,list_price), or None if unset.

    A products file that is named but missing or unreadable is an error (ConfigError, exit 2), as
    it is for the rules stage: a wrong path must not quietly drop the category features."""
    if not path:
        return None
    url = path if "://" in path else Path(path).resolve().as_uri()
    if "://" not in path and not Path(path).exists():
        raise ConfigError(f"input.products {path}: file not found (the products file gives each "
                          "product's category: product_id,category); set input.products to it, "
                          "or to \"\" for customer features without category shares")
    try:
        df = spark.read.option("header", True).csv(url)
    except Exception as e:  # noqa: BLE001 - Spark's AnalysisException: path does not exist
        raise ConfigError(f"input.products {path} cannot be read: "
                          f"{str(e).splitlines()[0]}") from None
    missing = {"product_id", "category"} - set(df.columns)
    if missing:
        raise ConfigError(f"input.products {path}: missing column(s) {sorted(missing)}; expected "
                          "product_id,category_id,category,list_price")
    return df.select("product_id", "category").dropDuplicates(["product_id"])


# =============================================================== images (sources)

SHAPE_CLASSES = ["horizontal bar", "vertical bar", "filled square", "hollow square", "disc",
                 "ring", "plus", "diagonal cross", "triangle", "two dots"]


def class_names(source: str) -> list[str] | None:
    """The names of the labels 0..9 of an image source, where the source has them (Fashion-MNIST's
    classes, the synthetic shapes); None for ingested images, whose labels are only numbers."""
    if source == "synthetic":
        return list(SHAPE_CLASSES)
    if source.startswith("fashion_mnist"):
        from deepmine.data.generate import FASHION_MNIST_CLASSES
        return list(FASHION_MNIST_CLASSES)
    return None


def synthetic_images(n: int, height: int = 28, width: int = 28, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`n` grey images (uint8, n x height x width) of 10 shape classes, and their labels.

    Classes (SHAPE_CLASSES): 0 horizontal bar, 1 vertical bar, 2 filled square, 3 hollow square,
    4 disc, 5 ring, 6 plus, 7 diagonal cross, 8 triangle, 9 two dots; each jittered in position,
    size and brightness, with noise. A stand-in for product photos when no image set is installed.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, height, width), dtype=np.uint8)
    s = min(height, width)
    for i, label in enumerate(labels):
        cy = height / 2 + rng.uniform(-0.12, 0.12) * height
        cx = width / 2 + rng.uniform(-0.12, 0.12) * width
        r = s * rng.uniform(0.22, 0.36)
        t = max(1.5, s * rng.uniform(0.06, 0.1))  # stroke half-width
        dy, dx = yy - cy, xx - cx
        dist = np.sqrt(dy ** 2 + dx ** 2)
        shape = [
            (np.abs(dy) < t) & (np.abs(dx) < r),
            (np.abs(dx) < t) & (np.abs(dy) < r),
            (np.abs(dy) < r) & (np.abs(dx) < r),
            (np.maximum(np.abs(dy), np.abs(dx)) < r) & (np.maximum(np.abs(dy), np.abs(dx)) > r - 2 * t),
            dist < r,
            (dist < r) & (dist > r - 2 * t),
            ((np.abs(dy) < t) & (np.abs(dx) < r)) | ((np.abs(dx) < t) & (np.abs(dy) < r)),
            ((np.abs(dy - dx) < 1.4 * t) | (np.abs(dy + dx) < 1.4 * t)) & (dist < 1.2 * r),
            (dy < r) & (dy > -r) & (np.abs(dx) < (dy + r) / 2),
            (np.sqrt(dy ** 2 + (dx - r * 0.6) ** 2) < r * 0.4)
            | (np.sqrt(dy ** 2 + (dx + r * 0.6) ** 2) < r * 0.4),
        ][label]
        img = shape * rng.uniform(150, 255) + rng.normal(0, 18, size=shape.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out, labels.astype(np.int64)


def _raw_images_frame(spark: SparkSession, pixels: np.ndarray, labels: np.ndarray,
                      splits: list[str], ids: list[str]) -> DataFrame:
    flat = pixels.reshape(len(pixels), -1)
    pdf = pd.DataFrame({"image_id": ids, "label": labels.astype(np.int64),
                        "pixels": [row.tobytes() for row in flat], "split": splits})
    schema = T.StructType([T.StructField("image_id", T.StringType()),
                           T.StructField("label", T.LongType()),
                           T.StructField("pixels", T.BinaryType()),
                           T.StructField("split", T.StringType())])
    return spark.createDataFrame(pdf, schema)


def latest_versions(history: DataFrame, key: str) -> DataFrame:
    """Clean rows of every dt up to D -> the latest version of each `key` (the newest dt, then
    the last source file), without the dt column."""
    latest = Window.partitionBy(key).orderBy(F.col("dt").desc(), F.col("source_file").desc())
    return history.withColumn("_n", F.row_number().over(latest)).where("_n = 1").drop("_n", "dt")


def image_source(spark: SparkSession, lake: Lake, config: Config, run_date: str
                 ) -> tuple[DataFrame, str]:
    """(image_id, label, pixels binary, split) for the run, and which source it came from."""
    source = config.features.image_source
    if source == "auto" and lake.exists(lake.url("clean/images")):
        clean = latest_versions(lake.read_history("clean/images", run_date), "image_id") \
            .select("image_id", "label", "pixels", "split")
        if not clean.isEmpty():
            return clean, "clean/images"
    from deepmine.data import samples
    h, w = config.images.height, config.images.width
    try:
        if source == "synthetic":
            raise samples.SampleUnavailable("fashion_mnist", "", "features.image_source=synthetic")
        paths = samples.source_paths("fashion_mnist")
        if (h, w) != (28, 28):
            raise samples.SampleUnavailable("fashion_mnist", "", f"images are 28x28, not {h}x{w}")
    except samples.SampleUnavailable:
        if source == "fashion_mnist":
            raise
        n = config.features.synthetic_images
        pixels, labels = synthetic_images(n, h, w, config.features.seed)
        n_test = max(1, n // 7)
        splits = ["train"] * (n - n_test) + ["test"] * n_test
        ids = [f"synthetic-{i:06d}" for i in range(n)]
        return _raw_images_frame(spark, pixels, labels, splits, ids), "synthetic"
    frames = []
    for split in ("train", "test"):
        pixels = samples.read_idx(paths[f"{split}_images"])
        labels = samples.read_idx(paths[f"{split}_labels"])
        limit = getattr(config.features, f"image_limit_{split}")
        keep = np.arange(len(labels))
        if limit and limit < len(keep):
            keep = np.sort(np.random.default_rng(config.features.seed).choice(
                len(keep), limit, replace=False))
        frames.append(_raw_images_frame(spark, pixels[keep], labels[keep], [split] * len(keep),
                                        [f"{split}-{i:05d}" for i in keep]))
    return frames[0].unionByName(frames[1]), "fashion_mnist_package"


def decode_pixels(images: DataFrame, height: int, width: int) -> DataFrame:
    """pixels (binary, height*width uint8) -> features (array<float>, / 255); checks the size."""
    size = height * width

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def to_floats(pixels: pd.Series) -> pd.Series:
        lengths = pixels.map(len)
        if (lengths != size).any():
            bad = int(lengths[lengths != size].iloc[0])
            raise ValueError(f"image pixels: expected {height}x{width} = {size} bytes per image "
                             f"(config images.height/width), found {bad}")
        flat = np.frombuffer(b"".join(pixels), dtype=np.uint8).reshape(-1, size)
        return pd.Series(list((flat / np.float32(255)).astype(np.float32)))

    return images.withColumn("features", to_floats("pixels")).drop("pixels")


# =============================================================== layout (load)

def _partition_keys(spark: SparkSession, partitions: int) -> list[int]:
    """For each partition p, an integer whose Murmur3 hash mod `partitions` is p (so that
    `repartition(partitions, key)` puts exactly the rows with that key into partition p)."""
    found: dict[int, int] = {}
    span = 64 * partitions
    start = 0
    while len(found) < partitions:
        rows = (spark.range(start, start + span)
                .select("id", F.pmod(F.hash("id"), F.lit(partitions)).alias("p")).collect())
        for r in rows:
            found.setdefault(int(r["p"]), int(r["id"]))
        start += span
    return [found[p] for p in range(partitions)]


ROW_BITS = 33  # monotonically_increasing_id: the partition index above bit 33, the row below


@contextlib.contextmanager
def with_row_ids(df: DataFrame, key: str, seed: int,
                 order_first: str | None = None) -> Iterator[DataFrame]:
    """`df` with `row_id` 0..n-1 in a seeded hash order of `key` (after `order_first`, if given;
    `key` unique), for the duration of the `with` block. Without a single-partition window: a
    distributed sort (range partitions, in order), each row's position inside its sorted
    partition, plus the rows of the partitions before it (one count per partition, collected).
    The sorted rows are cached while the block runs, so the counts and the ids come from one
    partitioning (a recomputed sort could sample other range bounds)."""
    order = [F.xxhash64(F.col(key), F.lit(seed)), F.col(key)]
    if order_first:
        order = [F.col(order_first), *order]
    ranked = (df.orderBy(*order)
              .withColumn("_part", F.spark_partition_id())
              .withColumn("_mono", F.monotonically_increasing_id())
              .persist())
    try:
        sizes = sorted((r["_part"], r["n"]) for r in
                       ranked.groupBy("_part").agg(F.count("*").alias("n")).collect())
        offsets, before = [], 0
        for part, n in sizes:
            offsets += [F.lit(part), F.lit(before)]
            before += n
        offset = F.create_map(*offsets)[F.col("_part")] if offsets else F.lit(0)
        position = F.col("_mono").bitwiseAND(F.lit((1 << ROW_BITS) - 1))
        yield ranked.select(*df.columns, (offset + position).cast("long").alias("row_id"))
    finally:
        ranked.unpersist()


def row_group_layout(spark: SparkSession, df: DataFrame, groups: int, split_col: str | None = None,
                     splits: tuple[str, ...] = ()) -> DataFrame:
    """`df` (with dense `row_id`) arranged so that each Spark partition is one row group:
    `groups` partitions per split (rows dealt round-robin by row_id), sorted by row_id inside."""
    if groups < 1:
        raise ConfigError(f"config key 'features.row_groups': expected >= 1, found {groups}")
    n_splits = len(splits) if split_col else 1
    keys = _partition_keys(spark, groups * n_splits)
    # the keys are longs, as in _partition_keys: Murmur3 hashes an int and a long differently
    key_of = F.create_map(*[x for p, k in enumerate(keys)
                            for x in (F.lit(p), F.lit(k).cast("long"))])
    if split_col:
        first = df.groupBy(split_col).agg(F.min("row_id").alias("_first"))
        df = df.join(F.broadcast(first), split_col)
        index = F.create_map(*[x for i, s in enumerate(splits) for x in (F.lit(s), F.lit(i))])
        group = index[F.col(split_col)] * groups + F.pmod(F.col("row_id") - F.col("_first"), F.lit(groups))
    else:
        group = F.pmod(F.col("row_id"), F.lit(groups))
    return (df.withColumn("_key", key_of[group.cast("int")])
            .repartition(groups * n_splits, "_key").sortWithinPartitions("row_id")
            .drop("_key", "_first"))


@contextlib.contextmanager
def one_row_group_per_file(spark: SparkSession) -> Iterator[None]:
    """Raise Parquet's row-group size while writing, so a file is never split into several."""
    previous = spark.conf.get("parquet.block.size", None)
    spark.conf.set("parquet.block.size", str(ROW_GROUP_BYTES))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset("parquet.block.size")
        else:
            spark.conf.set("parquet.block.size", previous)


def publish_for_petastorm(lake: Lake, df: DataFrame, table: str, partition: str) -> dict[str, Any]:
    """Publish `df` (already laid out) with one row group per file; returns the layout found."""
    from deepmine.deep.loader import parquet_parts
    with one_row_group_per_file(lake.spark):
        rows = lake.publish(df, table, partition)
    parts = parquet_parts(lake.partition_url(table, partition))
    sizes = [n for p in parts for n in p.row_group_rows]
    return {"rows": rows, "files": len(parts), "row_groups": len(sizes),
            "rows_per_row_group": [min(sizes), max(sizes)] if sizes else [0, 0]}


# =============================================================== stage

def _publish_review_features(lake: Lake, config: Config, run_date: str,
                             metrics: dict[str, Any]) -> dict[str, int]:
    """features/reviews (token ids for the text models, laid out for Petastorm like the images)
    and features/reviews_vocabulary (the embedding matrix and the vocabulary, as files)."""
    import io
    import json

    from deepmine.deep.text import VOCABULARY, review_features
    partition = f"run_date={run_date}"
    cfg = config.features
    reviews = latest_versions(lake.read_history("clean/reviews", run_date), "review_id")
    features, vocab, matrix, summary = review_features(reviews, config.text)
    try:
        with with_row_ids(features.withColumn("_test", F.col("split") == "test"), "review_id",
                          cfg.seed, order_first="_test") as laid:
            laid = row_group_layout(lake.spark, laid.drop("_test"), cfg.row_groups, "split",
                                    ("train", "test"))
            layout = publish_for_petastorm(lake, laid, "features/reviews", partition)
    finally:
        features.unpersist()
    buffer = io.BytesIO()
    np.save(buffer, matrix)
    lake.publish_files(VOCABULARY, partition, {
        "embeddings.npy": buffer.getvalue(),
        "vocabulary.json": json.dumps(vocab.tokens, ensure_ascii=False).encode()})
    metrics["reviews"] = {**summary, **{k: v for k, v in layout.items() if k != "rows"}}
    return {"reviews": layout["rows"], "reviews_train": summary["reviews"] - summary["test"],
            "reviews_test": summary["test"]}


def run_features(spark: SparkSession, config: Config, run_date: str) -> dict:
    """Build and publish the customer and image feature tables for `run_date`."""
    lake = Lake(spark, config.lake.root)
    partition = f"run_date={run_date}"
    cfg = config.features
    with StageRun(lake, run_date, "features") as run:
        if lake.exists(lake.url("clean/transactions")):
            transactions = lake.read_history("clean/transactions", run_date)
            if lake.has_partition("mining/rfm", partition):
                rfm, rfm_source = lake.read("mining/rfm", partition), "mining/rfm"
            else:
                from deepmine.mining.rfm import rfm_values
                rfm, rfm_source = rfm_values(transactions, run_date, config.rfm.returns), \
                    "clean/transactions"
            products = read_products(spark, config.input.products)
            if products is None:
                run.log("[features] input.products is empty: customer vectors without category "
                        "shares")
            values, names = customer_values(transactions, run_date, rfm, products)
            values = values.persist()
            try:
                lake.publish(values, "features/customer_values", partition)
                vectors = scaled_features(values, names, cfg.basket_weight, cfg.category_weight)
                with with_row_ids(vectors, "customer_id", cfg.seed) as vectors:
                    layout = publish_for_petastorm(
                        lake, row_group_layout(spark, vectors, cfg.row_groups),
                        "features/customers", partition)
            finally:
                values.unpersist()
            run.counts["customers"] = layout["rows"]
            run.metrics["customers"] = {"feature_names": names, "dimension": len(names),
                                        "rfm_source": rfm_source,
                                        "products": config.input.products if products else None,
                                        **{k: v for k, v in layout.items() if k != "rows"}}
            run.outputs["customers"] = lake.partition_url("features/customers", partition)
            run.outputs["customer_values"] = lake.partition_url("features/customer_values",
                                                                partition)
        else:
            run.log("[features] no clean/transactions: customer features skipped")
            run.counts["customers"] = 0

        if lake.exists(lake.url("clean/reviews")):
            run.counts.update(_publish_review_features(lake, config, run_date, run.metrics))

        if cfg.images:
            _publish_image_features(spark, lake, config, run_date, run)
        else:
            run.log("[features] images skipped (features.images: false)")
            run.counts["images"] = 0
    return {**run.counts, "metrics": run.metrics}


def _publish_image_features(spark: SparkSession, lake: Lake, config: Config, run_date: str,
                            run: StageRun) -> None:
    """features/images for the run: the image set (image_source), decoded, train rows first,
    laid out for Petastorm; counts, metrics and outputs into `run`."""
    cfg, partition = config.features, f"run_date={run_date}"
    raw, source = image_source(spark, lake, config, run_date)
    if source == "synthetic" and cfg.image_source == "auto":
        run.warn(f"no image set found (no clean/images for {run_date}, Fashion-MNIST not "
                 f"installed or not {config.images.height}x{config.images.width}): the image "
                 f"models train on {cfg.synthetic_images} synthetic shapes, not product "
                 "photos (apt-get install dataset-fashion-mnist, or ingest --entity images; "
                 "features.image_source: synthetic says this is meant)")
    images = decode_pixels(raw, config.images.height, config.images.width)
    images = images.select("image_id", F.coalesce(F.col("label").cast("long"), F.lit(-1))
                           .alias("label"), "split", "features")
    unknown = images.where(~F.col("split").isin("train", "test")).limit(1).collect()
    if unknown:
        raise ValueError(f"images: split must be 'train' or 'test', found {unknown[0]['split']!r}")
    # train rows first (row_id 0..n_train-1), then test
    with with_row_ids(images.withColumn("_test", F.col("split") == "test"),
                      "image_id", cfg.seed, order_first="_test") as images:
        images = row_group_layout(spark, images.drop("_test"), cfg.row_groups, "split",
                                  ("train", "test"))
        layout = publish_for_petastorm(lake, images, "features/images", partition)
    by_split = {r["split"]: r["count"] for r in
                lake.read("features/images", partition).groupBy("split").count().collect()}
    run.counts.update(images=layout["rows"], images_train=by_split.get("train", 0),
                      images_test=by_split.get("test", 0))
    run.metrics["images"] = {"source": source, "height": config.images.height,
                             "width": config.images.width, "class_names": class_names(source),
                             **{k: v for k, v in layout.items() if k != "rows"}}
    run.outputs["images"] = lake.partition_url("features/images", partition)
