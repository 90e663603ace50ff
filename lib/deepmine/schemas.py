"""Every lake table's schema, in one place, checked when a table is written and when it is read.

Table names are paths under `lake.root` (`clean/transactions`, `quarantine/transactions`, ...);
partitions are directories below them (`dt=D` for inputs, `run_date=D` for everything derived).
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import types as T

ENTITIES = ("transactions", "ratings", "images")

CLEAN_TRANSACTIONS = T.StructType([
    T.StructField("invoice_id", T.StringType(), False),
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("product_id", T.StringType(), False),
    T.StructField("quantity", T.LongType(), False),
    T.StructField("unit_price", T.DoubleType(), True),
    T.StructField("invoice_ts", T.TimestampType(), False),
    T.StructField("country", T.StringType(), True),
    T.StructField("is_return", T.BooleanType(), False),
    T.StructField("source_file", T.StringType(), False),
])

CLEAN_RATINGS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("item_id", T.StringType(), False),
    T.StructField("rating", T.DoubleType(), False),
    T.StructField("rated_ts", T.TimestampType(), False),
    T.StructField("source_file", T.StringType(), False),
])

CLEAN_IMAGES = T.StructType([
    T.StructField("image_id", T.StringType(), False),
    T.StructField("label", T.LongType(), True),
    T.StructField("pixels", T.BinaryType(), False),
    T.StructField("split", T.StringType(), False),
    T.StructField("source_file", T.StringType(), False),
])

# One quarantine layout for every entity: the raw record as read, why it was refused, and where
# it came from, so nothing is lost and a fixed file can be replayed.
QUARANTINE = T.StructType([
    T.StructField("raw_record", T.StringType(), True),
    T.StructField("quarantine_reason", T.StringType(), False),
    T.StructField("source_file", T.StringType(), False),
])

# Top-N recommendations per customer; `source` says who made the row: `als`, or `popularity` for
# customers the model does not know. `score` is ALS's predicted preference (implicit) or rating
# (explicit) for `als` rows, the share of customers who bought/rated the product for `popularity`
# rows: compare scores within a source only. `rank` is 1..top_n per customer.
RECOMMENDATIONS = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("product_id", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("score", T.DoubleType(), False),
    T.StructField("source", T.StringType(), False),
])

TABLES: dict[str, T.StructType] = {
    "clean/transactions": CLEAN_TRANSACTIONS,
    "clean/ratings": CLEAN_RATINGS,
    "clean/images": CLEAN_IMAGES,
    "quarantine/transactions": QUARANTINE,
    "quarantine/ratings": QUARANTINE,
    "quarantine/images": QUARANTINE,
    "mining/recommendations": RECOMMENDATIONS,
}


class SchemaError(ValueError):
    """A table whose columns or types are not what its contract says."""


def check_schema(df: DataFrame, expected: T.StructType, where: str) -> None:
    """Raise SchemaError naming each missing column and each column of the wrong type.

    Nullability is not compared: Parquet readers report every column as nullable.
    """
    found = {f.name: f.dataType for f in df.schema.fields}
    problems = []
    for f in expected.fields:
        if f.name not in found:
            problems.append(f"missing column {f.name!r} ({f.dataType.simpleString()})")
        elif found[f.name] != f.dataType:
            problems.append(f"column {f.name!r}: expected {f.dataType.simpleString()}, "
                            f"found {found[f.name].simpleString()}")
    if problems:
        raise SchemaError(f"{where}: " + "; ".join(problems))
