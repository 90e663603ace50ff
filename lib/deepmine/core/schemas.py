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

CLEAN_REVIEWS = T.StructType([
    T.StructField("review_id", T.StringType(), False),
    T.StructField("product_id", T.StringType(), False),
    T.StructField("customer_id", T.StringType(), True),
    T.StructField("rating", T.DoubleType(), False),
    T.StructField("text", T.StringType(), False),
    T.StructField("review_ts", T.TimestampType(), True),
    T.StructField("split", T.StringType(), True),
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
MINING_RECOMMENDATIONS = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("product_id", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("score", T.DoubleType(), False),
    T.StructField("source", T.StringType(), False),
])

# mining/rfm/run_date=D: one row per customer with a purchase up to D (lib/deepmine/mining/rfm.py).
MINING_RFM = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("recency_days", T.IntegerType(), False),
    T.StructField("frequency", T.LongType(), False),
    T.StructField("monetary", T.DoubleType(), True),  # null when a line has no unit_price
    T.StructField("r_score", T.IntegerType(), False),
    T.StructField("f_score", T.IntegerType(), False),
    T.StructField("m_score", T.IntegerType(), True),
    T.StructField("segment", T.StringType(), False),
    T.StructField("cluster", T.IntegerType(), False),
])

# mining/rfm_segments/run_date=D: size and mean values per named segment and per cluster.
MINING_RFM_SEGMENTS = T.StructType([
    T.StructField("grouping", T.StringType(), False),  # "segment" or "cluster"
    T.StructField("name", T.StringType(), False),  # the segment's name or the cluster's number
    T.StructField("customers", T.LongType(), False),
    T.StructField("share", T.DoubleType(), False),  # of all scored customers
    T.StructField("mean_recency_days", T.DoubleType(), True),
    T.StructField("mean_frequency", T.DoubleType(), True),
    T.StructField("mean_monetary", T.DoubleType(), True),
])

# mining/itemsets/run_date=D: frequent itemsets (lib/deepmine/mining/rules.py).
MINING_ITEMSETS = T.StructType([
    T.StructField("items", T.ArrayType(T.StringType()), False),  # sorted
    T.StructField("support", T.DoubleType(), False),  # fraction of baskets
])

# mining/rules/run_date=D: association rules with mlxtend's metric names and definitions.
MINING_RULES = T.StructType([
    T.StructField("antecedents", T.ArrayType(T.StringType()), False),  # sorted
    T.StructField("consequents", T.ArrayType(T.StringType()), False),  # sorted
    *[T.StructField(name, T.DoubleType(), False) for name in (
        "antecedent support", "consequent support", "support", "confidence", "lift", "leverage",
        "conviction",  # Infinity when confidence is 1, as mlxtend's np.inf
        "zhangs_metric", "jaccard", "certainty", "kulczynski")],
])

# features/customers/run_date=D: one standardized, fixed-length float vector per customer
# (lib/deepmine/deep/features.py; the names of its entries are in the manifest). `row_id` is dense,
# 0..n-1, so training can key per-row state (DEC targets) by it.
FEATURES_CUSTOMERS = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("row_id", T.LongType(), False),
    T.StructField("features", T.ArrayType(T.FloatType()), False),
])

def _labelled_features(id_column: str) -> T.StructType:
    """A classifier's feature table, as the trainer reads it: an id, the dense row_id, the
    label (-1 where none), the split, and the flat float vector."""
    return T.StructType([
        T.StructField(id_column, T.StringType(), False),
        T.StructField("row_id", T.LongType(), False),
        T.StructField("label", T.LongType(), False),
        T.StructField("split", T.StringType(), False),
        T.StructField("features", T.ArrayType(T.FloatType()), False),
    ])


# features/images/run_date=D: `features` = height*width pixel intensities / 255, row-major;
# `label` -1 where unknown; train and test rows are in separate files (and row groups).
FEATURES_IMAGES = _labelled_features("image_id")

# features/reviews/run_date=D: `features` = the review's token ids (0 pads, 1 an unknown token,
# the vocabulary's i-th token i + 2) as floats, text.max_tokens of them; `label` 1 positive,
# 0 negative, -1 neither (scored, not trained on); train and test rows in separate files.
FEATURES_REVIEWS = _labelled_features("review_id")

# predictions/textcnn and predictions/textrnn: the probability that the review is positive.
PREDICTIONS_TEXT = T.StructType([
    T.StructField("review_id", T.StringType(), False),
    T.StructField("sentiment_probability", T.DoubleType(), False),
])

# mining/review_summary/run_date=D: per product, from the chosen text model's predictions.
MINING_REVIEW_SUMMARY = T.StructType([
    T.StructField("product_id", T.StringType(), False),
    T.StructField("reviews", T.LongType(), False),
    T.StructField("mean_sentiment", T.DoubleType(), True),
    T.StructField("share_negative", T.DoubleType(), True),
    T.StructField("negative_terms", T.ArrayType(T.StringType()), False),
])

# predictions/autoencoder_customers/run_date=D and predictions/autoencoder_images/run_date=D:
# the DEC cluster (argmax of the soft assignment), its probability, and the embedding.
PREDICTIONS_CLUSTERS_CUSTOMERS = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("cluster", T.IntegerType(), False),
    T.StructField("probability", T.FloatType(), False),
    T.StructField("embedding", T.ArrayType(T.FloatType()), False),
])
PREDICTIONS_CLUSTERS_IMAGES = T.StructType([
    T.StructField("image_id", T.StringType(), False),
    T.StructField("cluster", T.IntegerType(), False),
    T.StructField("probability", T.FloatType(), False),
    T.StructField("embedding", T.ArrayType(T.FloatType()), False),
])

# predictions/cnn/run_date=D: the CNN's class and its softmax probability per image.
PREDICTIONS_CNN = T.StructType([
    T.StructField("image_id", T.StringType(), False),
    T.StructField("predicted_label", T.LongType(), False),
    T.StructField("probability", T.FloatType(), False),
])

# Churn risk and next-period spend per customer as of the run date D: churn_probability is the
# probability of no purchase in (D, D + churn.horizon_days]; risk_band low/medium/high by
# churn.risk_bands; expected_spend the predicted net spend in that window.
MINING_CHURN = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("churn_probability", T.DoubleType(), False),
    T.StructField("risk_band", T.StringType(), False),
    T.StructField("expected_spend", T.DoubleType(), False),
])

# Demand forecasts as of the run date D: per series (a product, a category or "total", as
# `level` says) and period start `ds` after the last complete period ending by D, the forecast net
# quantity `yhat`, its 80% interval and the statsforecast model that made it (or the fallback:
# zeros, seasonal_naive, mean).
MINING_FORECAST = T.StructType([
    T.StructField("series_id", T.StringType(), False),
    T.StructField("level", T.StringType(), False),
    T.StructField("ds", T.DateType(), False),
    T.StructField("yhat", T.DoubleType(), False),
    T.StructField("yhat_lower", T.DoubleType(), False),
    T.StructField("yhat_upper", T.DoubleType(), False),
    T.StructField("model", T.StringType(), False),
])

# predictions/ncf/run_date=D: NCF's top ncf.top_n products per customer, none it already has;
# score = the model's probability that the customer takes the product.
PREDICTIONS_NCF = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("product_id", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("score", T.DoubleType(), False),
])

# mining/drift/run_date=D: per watched column (lib/deepmine/ops/drift.py), tonight's values
# against the reference night's (the latest full training of model_stage): PSI over the
# reference's quantile bins, the two-sample KS statistic and its asymptotic p-value, the values
# tested on each side, and whether the column drifted by drift.* thresholds.
MINING_DRIFT = T.StructType([
    T.StructField("table", T.StringType(), False),
    T.StructField("column", T.StringType(), False),
    T.StructField("reference_date", T.StringType(), False),
    T.StructField("model_stage", T.StringType(), False),
    T.StructField("reference_rows", T.LongType(), False),
    T.StructField("rows", T.LongType(), False),
    T.StructField("psi", T.DoubleType(), False),
    T.StructField("ks_statistic", T.DoubleType(), False),
    T.StructField("ks_p_value", T.DoubleType(), False),
    T.StructField("drifted", T.BooleanType(), False),
])

TABLES: dict[str, T.StructType] = {
    "clean/transactions": CLEAN_TRANSACTIONS,
    "clean/ratings": CLEAN_RATINGS,
    "clean/images": CLEAN_IMAGES,
    "clean/reviews": CLEAN_REVIEWS,
    "quarantine/transactions": QUARANTINE,
    "quarantine/ratings": QUARANTINE,
    "quarantine/images": QUARANTINE,
    "quarantine/reviews": QUARANTINE,
    "mining/rfm": MINING_RFM,
    "mining/rfm_segments": MINING_RFM_SEGMENTS,
    "mining/churn": MINING_CHURN,
    "mining/forecast": MINING_FORECAST,
    "mining/drift": MINING_DRIFT,
    "mining/itemsets": MINING_ITEMSETS,
    "mining/rules": MINING_RULES,
    "mining/recommendations": MINING_RECOMMENDATIONS,
    "features/customers": FEATURES_CUSTOMERS,
    "features/images": FEATURES_IMAGES,
    "features/reviews": FEATURES_REVIEWS,
    "predictions/textcnn": PREDICTIONS_TEXT,
    "predictions/textrnn": PREDICTIONS_TEXT,
    "predictions/review_baseline": PREDICTIONS_TEXT,
    "mining/review_summary": MINING_REVIEW_SUMMARY,
    "predictions/autoencoder_customers": PREDICTIONS_CLUSTERS_CUSTOMERS,
    "predictions/autoencoder_images": PREDICTIONS_CLUSTERS_IMAGES,
    "predictions/cnn": PREDICTIONS_CNN,
    "predictions/ncf": PREDICTIONS_NCF,
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
