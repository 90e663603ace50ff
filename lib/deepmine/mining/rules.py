"""Association rules: baskets -> FP-growth frequent itemsets -> rules with mlxtend's metrics
(`deepmine rules` -> `mining/itemsets/run_date=D`, `mining/rules/run_date=D`).

Baskets: one per invoice in the clean history up to D, holding the distinct products of its
non-return lines (`rules.level: category` maps each product to its category through the products
file `input.products`, column `rules.category_column`; a product with no category there is left
out and counted as `lines_without_category`). An invoice made only of returns is no basket.

Itemsets: Spark ML FPGrowth. The minimum support is a fraction of baskets (`rules.min_support`) or,
when `rules.min_basket_count` > 0, a number of baskets. With a fraction an itemset is kept when its
count >= ceil(min_support * baskets) and count / baskets >= min_support, which is both what Spark
computes and what mlxtend's `fpgrowth` computes. Spark's FPGrowth has no length cap, so itemsets
longer than `rules.max_len` are dropped after mining and rules are made here from the capped
itemsets, as mlxtend makes them from `fpgrowth(max_len=...)`'s output (Spark's own
`associationRules` would use itemsets of every length).

Rules: every split of every itemset of 2+ items into a non-empty antecedent and consequent (item
lists sorted), kept when confidence >= `rules.min_confidence`. The metrics are mlxtend 0.23.4's
`association_rules` (no null values; `num_itemsets` = the number of baskets), written with the same
operations in the same order, so they agree to the last bit or nearly (sA, sC, sAC: supports of
antecedent, consequent and both; n: baskets):

    antecedent support  sA                      consequent support  sC
    support             sAC                     confidence          (sAC * n) / (sA * n)
    lift                confidence / sC         leverage            sAC - sA * sC
    conviction          (1 - sC) / (1 - confidence) if confidence < 1, else +Infinity
    zhangs_metric       leverage / max(sAC * (1 - sA), sA * (sC - sAC)), 0 if that max is 0
    jaccard             sAC / (sA + sC - sAC)
    certainty           (confidence - sC) / (1 - sC), 0 if sC is 1
    kulczynski          ((sAC * n) / (sA * n) + (sAC * n) / (sC * n)) / 2

Conviction's infinite case is stored as a double Infinity, as mlxtend returns np.inf.
"""
from __future__ import annotations

from typing import Any

from pyspark.ml.fpm import FPGrowth
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from deepmine.core.config import Config, ConfigError, RulesConfig
from deepmine.core.lake import Lake, StageRun, resolve_url

RULE_METRICS = ("antecedent support", "consequent support", "support", "confidence", "lift",
                "leverage", "conviction", "zhangs_metric", "jaccard", "certainty", "kulczynski")
LEVELS = ("product", "category")
ITEM_ARRAY = "array<string>"  # the tables' item lists, element nullability as Parquet reads it


# =============================================================== transform

def baskets(transactions: DataFrame, categories: DataFrame | None = None) -> DataFrame:
    """Clean transaction lines -> invoice_id, items (sorted distinct products, or categories when
    `categories` (product_id, category) is given) for every invoice with a non-return line."""
    lines = transactions.where(~F.col("is_return")).select("invoice_id", "product_id")
    if categories is not None:
        lines = lines.join(categories, "product_id").select(
            "invoice_id", F.col("category").alias("product_id"))
    return lines.groupBy("invoice_id").agg(
        F.array_sort(F.collect_set("product_id")).alias("items"))


def frequent_itemsets(basket_df: DataFrame, n_baskets: int, max_len: int,
                      min_support: float | None = None, min_count: int = 0,
                      num_partitions: int | None = None) -> DataFrame:
    """Baskets -> items (sorted), freq (baskets holding them), support (freq / n_baskets), for every
    itemset of at most `max_len` items that is frequent: in at least `min_count` baskets when
    `min_count` > 0, else in a share of at least `min_support` (see the module's docstring)."""
    schema = "items array<string>, freq long, support double"
    if n_baskets == 0 or (min_count > 0 and min_count > n_baskets):
        return basket_df.sparkSession.createDataFrame([], schema)
    if min_count > 0:
        # half a basket below the count: ceil(threshold * n) is min_count whatever the rounding
        threshold = (min_count - 0.5) / n_baskets
    else:
        threshold = float(min_support)
    fp = FPGrowth(itemsCol="items", minSupport=threshold, minConfidence=0.0)
    if num_partitions:
        fp = fp.setNumPartitions(num_partitions)
    mined = fp.fit(basket_df.select("items")).freqItemsets
    out = mined.where(F.size("items") <= max_len).select(
        F.array_sort("items").cast(ITEM_ARRAY).alias("items"), F.col("freq").cast("long"),
        (F.col("freq") / F.lit(float(n_baskets))).alias("support"))
    if min_count > 0:
        return out.where(F.col("freq") >= min_count)
    return out.where(F.col("support") >= F.lit(float(min_support)))


def _split(items: str, mask: str, side: int) -> Column:
    """The items whose bit in `mask` is `side` (1: antecedent, 0: consequent); order is kept."""
    return F.expr(f"filter({items}, (x, i) -> (shiftright({mask}, i) & 1) = {side})")


def association_rules(itemsets: DataFrame, n_baskets: int, min_confidence: float) -> DataFrame:
    """Frequent itemsets (items sorted, support) -> one row per rule with confidence >=
    `min_confidence`: antecedents, consequents and RULE_METRICS, as mlxtend defines them.

    `itemsets` must hold every subset of each itemset (FP-growth's output does: support is
    downward closed, and a length cap keeps subsets of what it keeps)."""
    supports = itemsets.select("items", "support")
    splits = (supports.where(F.size("items") >= 2)
              .select("items", F.col("support").alias("sAC"),
                      F.explode(F.sequence(F.lit(1), F.expr("shiftleft(1, size(items)) - 2")))
                      .alias("_mask"))
              .select(_split("items", "_mask", 1).alias("antecedents"),
                      _split("items", "_mask", 0).alias("consequents"), "sAC"))
    joined = (splits
              .join(supports.select(F.col("items").alias("antecedents"),
                                    F.col("support").alias("sA")), "antecedents")
              .join(supports.select(F.col("items").alias("consequents"),
                                    F.col("support").alias("sC")), "consequents"))
    return rule_metrics(joined, n_baskets).where(
        F.col("confidence") >= F.lit(float(min_confidence)))


def rule_metrics(df: DataFrame, n_baskets: int) -> DataFrame:
    """antecedents, consequents, sA, sC, sAC -> antecedents, consequents and RULE_METRICS.

    Each division is guarded the way mlxtend guards it, so none divides by zero (Spark's ANSI mode
    would raise) and the special values are mlxtend's."""
    n = F.lit(float(n_baskets))
    sA, sC, sAC = F.col("sA"), F.col("sC"), F.col("sAC")
    one = F.lit(1.0)
    confidence = (sAC * n) / (sA * n)
    leverage = sAC - sA * sC
    zhang_den = F.greatest(sAC * (one - sA), sA * (sC - sAC))
    metrics = {
        "antecedent support": sA,
        "consequent support": sC,
        "support": sAC,
        "confidence": confidence,
        "lift": confidence / sC,
        "leverage": leverage,
        "conviction": F.when(confidence < one, (one - sC) / (one - confidence))
                       .otherwise(F.lit(float("inf"))),
        "zhangs_metric": F.when(zhang_den == 0.0, F.lit(0.0)).otherwise(leverage / zhang_den),
        "jaccard": sAC / (sA + sC - sAC),
        "certainty": F.when(one - sC == 0.0, F.lit(0.0))
                      .otherwise((confidence - sC) / (one - sC)),
        "kulczynski": ((sAC * n) / (sA * n) + (sAC * n) / (sC * n)) / F.lit(2.0),
    }
    return df.select(F.col("antecedents").cast(ITEM_ARRAY), F.col("consequents").cast(ITEM_ARRAY),
                     *[expr.cast("double").alias(name) for name, expr in metrics.items()])


# =============================================================== extract / load

class RulesInputError(ValueError):
    """Input the rules stage cannot use: no products file, a missing column, conflicting rows."""


def read_categories(spark: SparkSession, path: str, column: str) -> DataFrame:
    """The products file (CSV with a header) -> product_id, category (one per product)."""
    if not path:
        raise RulesInputError("rules.level is 'category' but input.products is empty: give the "
                              "products file (product_id plus a category column)")
    url = resolve_url(path)
    try:
        products = spark.read.option("header", True).csv(url)
    except Exception as e:  # noqa: BLE001 - Spark's AnalysisException: path does not exist
        raise RulesInputError(f"products file {path} (input.products) cannot be read: "
                              f"{str(e).splitlines()[0]}") from None
    missing = [c for c in ("product_id", column) if c not in products.columns]
    if missing:
        raise RulesInputError(f"products file {path}: missing column(s) {missing} (rules.level is "
                              f"'category', rules.category_column is {column!r}); found "
                              f"{products.columns}")
    categories = (products.select(F.trim("product_id").alias("product_id"),
                                  F.trim(column).alias("category"))
                  .where(F.col("category").isNotNull() & (F.col("category") != ""))
                  .distinct())
    conflicts = categories.groupBy("product_id").count().where("count > 1").count()
    if conflicts:
        raise RulesInputError(f"products file {path}: {conflicts} product_id(s) have more than one "
                              f"{column!r}; expected one category per product")
    return categories


def check_config(cfg: RulesConfig) -> None:
    problems = []
    if not 0.0 < cfg.min_support <= 1.0:
        problems.append(f"'rules.min_support': expected a fraction in (0, 1], found "
                        f"{cfg.min_support}")
    if not 0.0 <= cfg.min_confidence <= 1.0:
        problems.append(f"'rules.min_confidence': expected a value in [0, 1], found "
                        f"{cfg.min_confidence}")
    if cfg.max_len < 1:
        problems.append(f"'rules.max_len': expected >= 1, found {cfg.max_len}")
    if cfg.min_basket_count < 0:
        problems.append(f"'rules.min_basket_count': expected >= 0 (0 = use rules.min_support), "
                        f"found {cfg.min_basket_count}")
    if cfg.level not in LEVELS:
        problems.append(f"'rules.level': expected one of {list(LEVELS)}, found {cfg.level!r}")
    if cfg.num_partitions < 0:
        problems.append(f"'rules.num_partitions': expected >= 0, found {cfg.num_partitions}")
    if problems:
        raise ConfigError("config key " + "; ".join(problems))


def run_rules(spark: SparkSession, config: Config, run_date: str) -> dict:
    """Mine the baskets of the clean history up to `run_date`; publish `mining/itemsets` and
    `mining/rules`; returns the stage's counts and metrics (also in the manifest)."""
    cfg = config.rules
    check_config(cfg)
    lake = Lake(spark, config.lake.root)
    partition = f"run_date={run_date}"
    with StageRun(lake, run_date, "rules") as run:
        transactions = lake.read_history("clean/transactions", run_date)
        categories = None
        if cfg.level == "category":
            categories = read_categories(spark, config.input.products, cfg.category_column)
            missing = (transactions.where(~F.col("is_return"))
                       .join(categories, "product_id", "left_anti").count())
            run.counts["lines_without_category"] = missing
        basket_df = baskets(transactions, categories).persist()
        itemsets = None
        try:
            n_baskets = basket_df.count()
            partitions = cfg.num_partitions or config.spark.shuffle_partitions
            itemsets = frequent_itemsets(basket_df, n_baskets, cfg.max_len, cfg.min_support,
                                         cfg.min_basket_count, partitions).persist()
            n_itemsets = lake.publish(itemsets.select("items", "support"), "mining/itemsets",
                                      partition)
            by_length = {int(r["n"]): int(r["count"]) for r in
                         itemsets.groupBy(F.size("items").alias("n")).count().collect()}
            rules = association_rules(itemsets, n_baskets, cfg.min_confidence)
            n_rules = lake.publish(rules, "mining/rules", partition)
        finally:
            basket_df.unpersist()
            if itemsets is not None:
                itemsets.unpersist()

        published = lake.read("mining/rules", partition)
        rule_stats = published.agg(
            F.count(F.when(F.col("conviction") == float("inf"), 1)).alias("infinite"),
            F.max("lift").alias("max_lift")).first()
        top = (published.orderBy(F.col("lift").desc(), F.col("support").desc(),
                                 F.array_join("antecedents", ","), F.array_join("consequents", ","))
               .limit(5).collect())
        run.counts.update(baskets=n_baskets, itemsets=n_itemsets,
                          itemsets_by_length={str(k): v for k, v in sorted(by_length.items())},
                          rules=n_rules, rules_infinite_conviction=int(rule_stats["infinite"]))
        run.metrics.update(
            level=cfg.level, max_len=cfg.max_len, min_confidence=cfg.min_confidence,
            min_support=(cfg.min_basket_count / n_baskets if cfg.min_basket_count and n_baskets
                         else cfg.min_support),
            min_basket_count=cfg.min_basket_count or None,
            max_lift=rule_stats["max_lift"],
            top_rules_by_lift=[_describe(r) for r in top])
        run.outputs.update(itemsets=lake.partition_url("mining/itemsets", partition),
                           rules=lake.partition_url("mining/rules", partition))
    return {**run.counts, "metrics": run.metrics}


def _describe(rule) -> dict[str, Any]:
    return {"rule": f"{sorted(rule['antecedents'])} -> {sorted(rule['consequents'])}",
            "support": round(rule["support"], 6), "confidence": round(rule["confidence"], 6),
            "lift": round(rule["lift"], 6)}
