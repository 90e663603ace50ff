"""Recommendations: ALS top-N per customer, scored on a held-out split beside a popularity baseline.

Owns `mining/recommendations/run_date=D` (customer_id, product_id, rank, score, source) and the
`recommend` entry of the run manifest (counts, the ALS parameters used, evaluation figures).

Feedback (`recommend.feedback`)
  implicit  clean/transactions up to the run date. The signal of a (customer, product) pair is its
            purchase count: the number of distinct invoices that bought it (quantity > 0). Returns
            add no signal; a returned product was still bought, so it is never recommended back.
            ALS runs with implicitPrefs, confidence 1 + alpha * purchase count.
  explicit  clean/ratings up to the run date; user_id becomes customer_id, item_id product_id, and
            the rating is the signal.

Evaluation (`recommend.evaluate`), on a held-out split, before the final fit
  implicit  by time per customer: a customer with n >= 2 purchase invoices has the last
            ceil(test_fraction * n) of them (at most n - 1) held out. Relevant = the products bought
            in the held-out invoices that the customer had not bought before, i.e. exactly what a
            list that excludes past purchases can hit. ALS and the popularity baseline (products
            ranked by number of buyers in the training part) each recommend `metrics_k` unseen
            products to every customer with a relevant product; precision@k, recall@k, MAP@k and
            NDCG@k (binary relevance, defined at `ranking_metrics`), the baseline's beside them as
            `baseline_<metric>`. Both lists are ranked and scored in one pass over those
            customers (als_and_popular_metrics): no list is built as a table.
  explicit  random: a rating is held out when a hash of (seed, user, item) falls below
            test_fraction, which is stable across runs and partitionings. RMSE and MAE of ALS's
            predictions clipped to the training rating range, on held-out pairs whose user and item
            both occur in training (the rest are counted as `test_cold_dropped`), beside a baseline
            that predicts each item's mean training rating, on the same pairs.

Tuning (`recommend.tune`, on by default): the training part is split again the same way, each
point of tune_rank x tune_reg_param (x tune_alpha, implicit) is fit on the rest and scored on that
validation part (NDCG@k implicit, RMSE explicit) by a numpy ALS on the driver with Spark ALS's
objective (deepmine.mining.als_grid: the grid costs a fraction of a second per point where Spark took
about 6.5 s). The best point replaces the configured one when it is better by more than three
paired standard errors (als_grid.SEPARATION), and is used for the evaluation and the final fit; the
grid (`tuning`) and the choice (`tuning_choice`: the point, its validation score, how many ratings
or customers it was validated on, whether the configured point was kept) go into the manifest.

Explicit model (`recommend.explicit_model`, ratings only): `als` is plain ALS; `baseline_als` is
Koren's baseline predictors (mean + damped user and item biases, `Biases`) plus ALS fit on what
they leave unexplained; `blend` predicts (1 - w) * als + w * baseline_als. With tuning, the same
validation split scores the grid for both fits and every blend weight w in 0, 0.05, .., 1
(als_grid.search_explicit); `auto` (the default) keeps plain ALS unless the best of these is
better by three paired standard errors. The grid of the baseline model goes into the manifest as
`tuning_baseline_als`, the choice as `tuning_choice.model`. The evaluation, the final fit and the
top-N lists all use the chosen model: predictions and lists score through the same pieces
(`score_parts`), so a list ranks by exactly the ratings the model predicts.

Quality gate: when ALS does not beat its baseline on the held-out split (NDCG@k against
popularity, implicit; RMSE against item means, explicit) the lists are still published and the
stage ends `degraded` with the reason (below_baseline).

Final recommendations: ALS fit on all history up to the run date. Every customer the model knows
gets its `top_n` best products among those it has not bought (rated), `source = als`, scored
exactly against every product in numpy blocks on the executors (top_unseen_als); every other
customer in the history (e.g. one with only returns) gets the most popular products it has not
bought, `source = popularity`. A baseline_als or blend model adds its biases (times their
weight) to every score. This fit needs only the chosen parameters, so it runs in a second thread
beside the evaluation.

ALS needs integer ids: customer and product ids are indexed in alphabetical order (StringIndexer),
so the same history gives the same indices, and mapped back by joins. With the same history, seed
and num_blocks (ALS seeds each block), a re-run gives the same recommendations. ALS checkpoints its
factors every `checkpoint_interval` sweeps into the session's checkpoint directory (set if
missing); the checkpoint files made during the stage are deleted when it ends.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from pyspark.ml.feature import StringIndexer
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from deepmine.mining import als_grid
from deepmine.core.config import Config, ConfigError, RecommendConfig
from deepmine.core.lake import Lake, StageRun

CUSTOMER, PRODUCT = "customer_id", "product_id"
STRENGTH = "strength"  # the ALS signal: purchase count (implicit) or rating (explicit)
HELD_OUT = "held_out"
USER, ITEM = "_user", "_item"  # ALS's integer ids
TABLE = "mining/recommendations"
SOURCE_ALS, SOURCE_POPULARITY = "als", "popularity"


# =============================================================== parameters

@dataclass(frozen=True)
class AlsParams:
    """One ALS configuration; `estimator()` builds the Spark ML estimator for it."""
    implicit: bool
    rank: int
    reg_param: float
    alpha: float
    max_iter: int
    seed: int
    checkpoint_interval: int
    num_blocks: int
    biases: bool = False  # this fit learns the residual of the baseline predictors (Biases)
    bias_damping: float = 10.0
    # explicit only: als (this fit), baseline_als (ALS on the residual of the baseline predictors,
    # at baseline_rank / baseline_reg_param) or blend ((1 - blend_weight) * als + blend_weight *
    # baseline_als); `components` gives the fits a model sums
    model: str = "als"
    baseline_rank: int = 10
    baseline_reg_param: float = 0.1
    blend_weight: float = 0.5

    @classmethod
    def from_config(cls, cfg: RecommendConfig, default_blocks: int) -> "AlsParams":
        implicit = cfg.feedback == "implicit"
        model = requested_model(cfg)
        return cls(implicit=implicit, rank=cfg.rank, reg_param=cfg.reg_param,
                   alpha=cfg.alpha, max_iter=cfg.max_iter, seed=cfg.seed,
                   checkpoint_interval=cfg.checkpoint_interval,
                   num_blocks=cfg.num_blocks or max(1, default_blocks),
                   bias_damping=cfg.bias_damping,
                   # auto is settled by tuning; without it (or for purchases) plain ALS
                   model="als" if implicit or model == "auto" else model,
                   baseline_rank=cfg.rank, baseline_reg_param=cfg.reg_param,
                   blend_weight=cfg.blend_weight)

    def components(self) -> list[tuple[float, "AlsParams"]]:
        """The ALS fits this model sums, each with its weight."""
        if self.implicit or self.model == "als":
            return [(1.0, self)]
        on_residual = dataclasses.replace(self, model="als", biases=True, rank=self.baseline_rank,
                                          reg_param=self.baseline_reg_param)
        if self.model == "baseline_als":
            return [(1.0, on_residual)]
        plain = dataclasses.replace(self, model="als", biases=False)
        return [(1.0 - self.blend_weight, plain), (self.blend_weight, on_residual)]

    def estimator(self) -> ALS:
        return ALS(rank=self.rank, maxIter=self.max_iter, regParam=self.reg_param,
                   alpha=self.alpha, implicitPrefs=self.implicit, seed=self.seed,
                   checkpointInterval=self.checkpoint_interval,
                   numUserBlocks=self.num_blocks, numItemBlocks=self.num_blocks,
                   userCol=USER, itemCol=ITEM, ratingCol=STRENGTH, coldStartStrategy="drop")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rank": self.rank, "reg_param": self.reg_param,
                               "max_iter": self.max_iter}
        if self.implicit:
            out["alpha"] = self.alpha
        if self.biases:
            out["biases"] = True
        if not self.implicit:
            out["model"] = self.model
            if self.model != "als":
                out.update(baseline_rank=self.baseline_rank,
                           baseline_reg_param=self.baseline_reg_param,
                           bias_damping=self.bias_damping)
            if self.model == "blend":
                out["blend_weight"] = self.blend_weight
        return out


def requested_model(cfg: RecommendConfig) -> str:
    """recommend.explicit_model, with the older `recommend.biases: true` read as baseline_als."""
    if cfg.biases and cfg.explicit_model == "auto":
        return "baseline_als"
    return cfg.explicit_model


def check_config(cfg: RecommendConfig) -> None:
    """Raise ConfigError naming the first `recommend.*` key out of range."""
    positive = {"top_n": cfg.top_n, "rank": cfg.rank, "max_iter": cfg.max_iter,
                "metrics_k": cfg.metrics_k, "checkpoint_interval": cfg.checkpoint_interval}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key 'recommend.{key}': expected an integer >= 1, "
                              f"found {value}")
    if cfg.num_blocks < 0:
        raise ConfigError(f"config key 'recommend.num_blocks': expected >= 0 (0 = "
                          f"spark.default.parallelism), found {cfg.num_blocks}")
    if not 0.0 < cfg.test_fraction < 1.0:
        raise ConfigError(f"config key 'recommend.test_fraction': expected a fraction in (0, 1), "
                          f"found {cfg.test_fraction}")
    if not 0.0 <= cfg.blend_weight <= 1.0:
        raise ConfigError(f"config key 'recommend.blend_weight': expected a weight in [0, 1], "
                          f"found {cfg.blend_weight}")
    for key in ("reg_param", "alpha", "bias_damping"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key 'recommend.{key}': expected >= 0, "
                              f"found {getattr(cfg, key)}")
    if cfg.tune:
        for key, least in (("tune_rank", 1), ("tune_reg_param", 0), ("tune_alpha", 0)):
            values = getattr(cfg, key)
            if not values or min(values) < least:
                raise ConfigError(f"config key 'recommend.{key}': tuning needs a list of values "
                                  f">= {least}, found {values}")


# =============================================================== interactions

def purchase_lines(transactions: DataFrame) -> DataFrame:
    """Clean transaction lines -> the purchase lines (quantity > 0) implicit ALS learns from."""
    return (transactions.where(F.col("quantity") > 0)
            .select(CUSTOMER, PRODUCT, "invoice_id", "invoice_ts"))


def purchase_counts(lines: DataFrame) -> DataFrame:
    """Purchase lines -> (customer_id, product_id, strength = number of distinct invoices)."""
    return (lines.groupBy(CUSTOMER, PRODUCT)
            .agg(F.countDistinct("invoice_id").cast("double").alias(STRENGTH)))


def rating_interactions(ratings: DataFrame) -> DataFrame:
    """Clean ratings -> (customer_id, product_id, strength = rating)."""
    return ratings.select(F.col("user_id").alias(CUSTOMER), F.col("item_id").alias(PRODUCT),
                          F.col("rating").cast("double").alias(STRENGTH))


def split_by_time(lines: DataFrame, test_fraction: float) -> DataFrame:
    """Adds `held_out`: true on the lines of each customer's last ceil(test_fraction * n) invoices
    (n = the customer's distinct invoices; at most n - 1, none when n < 2). Invoices are ordered by
    their first timestamp, ties by invoice_id."""
    invoices = (lines.groupBy(CUSTOMER, "invoice_id")
                .agg(F.min("invoice_ts").alias("_invoice_ts")))
    latest_first = Window.partitionBy(CUSTOMER).orderBy(F.col("_invoice_ts").desc(),
                                                       F.col("invoice_id").desc())
    n = F.count(F.lit(1)).over(Window.partitionBy(CUSTOMER))
    held = F.least(F.ceil(n * F.lit(test_fraction)), n - 1)
    invoices = invoices.select(CUSTOMER, "invoice_id",
                               (F.row_number().over(latest_first) <= held).alias(HELD_OUT))
    return lines.join(invoices, [CUSTOMER, "invoice_id"])


def split_random(interactions: DataFrame, test_fraction: float, seed: int,
                 salt: str = "test") -> DataFrame:
    """Adds `held_out`: true for about `test_fraction` of the (customer, product) pairs, chosen by a
    hash of (seed, salt, customer, product), so the split does not depend on partitioning."""
    bucket = F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), CUSTOMER, PRODUCT), F.lit(1_000_000))
    return interactions.withColumn(HELD_OUT, bucket < F.lit(int(round(test_fraction * 1_000_000))))


def new_relevant(test_lines: DataFrame, train: DataFrame) -> DataFrame:
    """Products bought in the held-out part that the customer had not bought in the training
    part."""
    return (test_lines.select(CUSTOMER, PRODUCT).distinct()
            .join(train.select(CUSTOMER, PRODUCT), [CUSTOMER, PRODUCT], "left_anti"))


# =============================================================== models

@dataclass
class Biases:
    """Baseline predictors (Koren 2008, "Factorization meets the neighborhood", KDD, section 2.1;
    Koren 2009, "The BellKor solution to the Netflix Grand Prize"): rating ~ mean + user bias +
    item bias, regularized by shrinkage: item bias = sum(r - mean) / (n_item + damping); user bias
    = sum(r - mean - item bias) / (n_user + damping); the damping pulls the biases of rarely rated
    items and users to 0. The numpy twin used for tuning is als_grid.Baseline."""
    mean: float
    users: DataFrame  # customer_id, _b_user
    items: DataFrame  # product_id, _b_item

    @classmethod
    def fit(cls, ratings: DataFrame, damping: float) -> "Biases":
        mean = ratings.agg(F.avg(STRENGTH)).first()[0]
        items = (ratings.groupBy(PRODUCT)
                 .agg((F.sum(F.col(STRENGTH) - mean) / (F.count(F.lit(1)) + damping))
                      .alias("_b_item")).persist())
        users = (ratings.join(F.broadcast(items), PRODUCT)
                 .groupBy(CUSTOMER)
                 .agg((F.sum(F.col(STRENGTH) - mean - F.col("_b_item"))
                       / (F.count(F.lit(1)) + damping)).alias("_b_user")).persist())
        return cls(float(mean), users, items)

    def add(self, pairs: DataFrame, column: str) -> DataFrame:
        """`column` += mean + user bias + item bias (pairs of known users and items)."""
        return (pairs.join(self.users, CUSTOMER).join(F.broadcast(self.items), PRODUCT)
                .withColumn(column, F.col(column) + F.lit(self.mean) + F.col("_b_user")
                            + F.col("_b_item")).drop("_b_user", "_b_item"))

    def unpersist(self) -> None:
        self.users.unpersist()
        self.items.unpersist()


@dataclass
class FittedAls:
    """An ALS model with the id maps between deepmine's string ids and ALS's integer ids, and the
    biases it learned the residual of (explicit with recommend.biases)."""
    model: ALSModel
    users: DataFrame  # customer_id, _user
    items: DataFrame  # product_id, _item
    n_items: int
    biases: Biases | None = None
    _cached: tuple[DataFrame, ...] = ()

    def unpersist(self) -> None:
        for df in self._cached:
            df.unpersist()
        if self.biases is not None:
            self.biases.unpersist()
        self.model.userFactors.unpersist()
        self.model.itemFactors.unpersist()


def fit_als(interactions: DataFrame, params: AlsParams) -> FittedAls:
    """Fit ALS on (customer_id, product_id, strength); with params.biases, on the residual of the
    damped biases."""
    interactions = interactions.select(CUSTOMER, PRODUCT, STRENGTH)
    biases = None
    if params.biases:
        biases = Biases.fit(interactions, params.bias_damping)
        interactions = biases.add(interactions.withColumn("_base", F.lit(0.0)), "_base") \
            .select(CUSTOMER, PRODUCT, (F.col(STRENGTH) - F.col("_base")).alias(STRENGTH))
    indexer = StringIndexer(inputCols=[CUSTOMER, PRODUCT], outputCols=[USER, ITEM],
                            stringOrderType="alphabetAsc").fit(interactions)
    indexed = (indexer.transform(interactions)
               .withColumn(USER, F.col(USER).cast("int")).withColumn(ITEM, F.col(ITEM).cast("int"))
               .persist())
    users = indexed.select(CUSTOMER, USER).distinct().persist()
    items = indexed.select(PRODUCT, ITEM).distinct().persist()
    model = params.estimator().fit(indexed.select(USER, ITEM, STRENGTH))
    return FittedAls(model, users, items, items.count(), biases, (indexed, users, items))


@dataclass
class FittedModel:
    """The ALS fits a model sums (AlsParams.components), each with its weight: one plain fit, one
    fit on the residual of the baseline predictors, or both (the blend). Every fit indexes the same
    pairs, so they share the id maps. Predictions and top-N lists both score through
    `score_parts`, so the lists rank by exactly the predicted ratings."""
    parts: list[tuple[float, FittedAls]]

    @property
    def users(self) -> DataFrame:
        return self.parts[0][1].users

    @property
    def items(self) -> DataFrame:
        return self.parts[0][1].items

    def unpersist(self) -> None:
        for _, part in self.parts:
            part.unpersist()


def fit_model(interactions: DataFrame, params: AlsParams) -> FittedModel:
    """Fit every component of `params` on (customer_id, product_id, strength)."""
    return FittedModel([(weight, fit_als(interactions, part))
                        for weight, part in params.components()])


def _as_model(fitted: FittedAls | FittedModel) -> FittedModel:
    return fitted if isinstance(fitted, FittedModel) else FittedModel([(1.0, fitted)])


@dataclass
class ScoreParts:
    """A model's score of (user, item) = user factors . item factors + user offset + item bias,
    its components side by side: the factors concatenated (the item side times each component's
    weight), the offsets and biases summed with the same weights."""
    users: DataFrame  # customer_id, _user, _factors, _offset
    item_factors: Any  # numpy (items x total rank), row = ALS item id
    item_bias: Any  # numpy (items,)


def score_parts(fitted: FittedAls | FittedModel) -> ScoreParts | None:
    """The pieces of `fitted`'s scores (None when it knows no item)."""
    import numpy as np

    model = _as_model(fitted)
    item_rows = [part.model.itemFactors.collect() for _, part in model.parts]
    if not any(item_rows):
        return None
    n_items = max(r["id"] for rows in item_rows for r in rows) + 1
    blocks, user_frames = [], []
    item_bias = np.zeros(n_items)
    offsets = model.users.select(CUSTOMER, USER).withColumn("_offset", F.lit(0.0))
    for n, ((weight, part), rows) in enumerate(zip(model.parts, item_rows)):
        factors = np.zeros((n_items, part.model.rank))
        for r in rows:
            factors[r["id"]] = r["features"]
        blocks.append(weight * factors)
        user_frames.append(part.model.userFactors.select(F.col("id").alias(USER),
                                                         F.col("features").alias(f"_f{n}")))
        if part.biases is not None:
            for r in part.biases.items.join(F.broadcast(part.items), PRODUCT).collect():
                item_bias[r[ITEM]] += weight * r["_b_item"]
            offsets = (offsets.join(part.biases.users, CUSTOMER)
                       .withColumn("_offset", F.col("_offset") + F.lit(weight) * (
                           F.col("_b_user") + F.lit(part.biases.mean))).drop("_b_user"))
    users = offsets
    for n, frame in enumerate(user_frames):
        users = users.join(frame, USER)
    users = users.select(CUSTOMER, USER, "_offset", F.concat(*[f"_f{n}" for n in range(
        len(user_frames))]).alias("_factors"))
    return ScoreParts(users, np.hstack(blocks), item_bias)


def predict(fitted: FittedAls | FittedModel, pairs: DataFrame) -> DataFrame:
    """Adds `prediction` to (customer_id, product_id, ...) rows whose customer and product the model
    knows; other rows are dropped. The score `top_unseen_als` ranks by."""
    parts = score_parts(fitted)
    spark = pairs.sparkSession
    if parts is None:
        return pairs.withColumn("prediction", F.lit(None).cast("double")).limit(0)
    items = spark.createDataFrame(
        [(i, [float(x) for x in row], float(b))
         for i, (row, b) in enumerate(zip(parts.item_factors, parts.item_bias))],
        f"{ITEM} int, _item_factors array<double>, _item_bias double")
    known = (pairs.join(parts.users, CUSTOMER).join(F.broadcast(_as_model(fitted).items), PRODUCT)
             .join(F.broadcast(items), ITEM))
    dot = F.aggregate(F.zip_with("_factors", "_item_factors", lambda a, b: a.cast("double") * b),
                      F.lit(0.0), lambda acc, x: acc + x)
    return (known.withColumn("prediction", dot + F.col("_offset") + F.col("_item_bias"))
            .drop(USER, ITEM, "_factors", "_item_factors", "_offset", "_item_bias"))


def _seen_counts(targets: DataFrame, seen: DataFrame) -> DataFrame:
    counts = seen.groupBy(CUSTOMER).agg(F.count(F.lit(1)).alias("_n_seen"))
    return targets.join(counts, CUSTOMER, "left").fillna(0, ["_n_seen"])


def _top_n(candidates: DataFrame, seen: DataFrame, n: int, *order) -> DataFrame:
    """Drop seen pairs, keep the first n per customer by `order`; rank 1..n."""
    fresh = candidates.join(seen.select(CUSTOMER, PRODUCT), [CUSTOMER, PRODUCT], "left_anti")
    rank = F.row_number().over(Window.partitionBy(CUSTOMER).orderBy(*order))
    return (fresh.withColumn("rank", rank).where(F.col("rank") <= n)
            .select(CUSTOMER, PRODUCT, "rank", F.col("score").cast("double").alias("score")))


def _als_scores(part, item_factors, item_bias):
    """Scores of a block of customers (a pandas frame with _factors and _offset) against every
    item: users x items doubles."""
    import numpy as np

    return (np.stack(part["_factors"].to_numpy()).astype(np.float64) @ item_factors.T
            + item_bias + part["_offset"].to_numpy()[:, None])


def _seen_mask(seen, shape):
    """A rows x columns boolean matrix from per-row lists of column indices (None: none;
    indices past the last column are left out)."""
    import numpy as np

    mask = np.zeros(shape, bool)
    lists = [s if s is not None else [] for s in seen]
    lengths = np.fromiter((len(s) for s in lists), int, len(lists))
    if lengths.sum():
        rows = np.repeat(np.arange(len(lists)), lengths)
        columns = np.concatenate([np.asarray(s, int) for s in lists])
        inside = columns < shape[1]
        mask[rows[inside], columns[inside]] = True
    return mask


def _best_unseen(scores, seen, n: int):
    """The n best columns of each row of `scores` whose column is not in the row's `seen` list,
    score descending, ties by column ascending -> (columns, scores), rows x min(n, columns); a
    score is -inf where the row has fewer unseen columns than that. `scores` is overwritten."""
    import numpy as np

    scores[_seen_mask(seen, scores.shape)] = -np.inf
    take = min(n, scores.shape[1])
    top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)  # score desc, then item (product) asc
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


# scores computed at once per Python worker: users x items doubles (about 16 MB)
SCORE_BLOCK_CELLS = 2_000_000


def top_unseen_als(fitted: FittedAls | FittedModel, targets: DataFrame, seen: DataFrame,
                   n: int) -> DataFrame:
    """The n best-scored products per target customer that it has not seen (ties: product_id);
    customers the model does not know get none. -> customer_id, product_id, rank, score.

    Exact: every target's scores against every item (user factors . item factors, plus the biases
    when the model has them) in numpy blocks inside the executors, with the customer's seen items
    masked before the top n are taken; the item factors travel with the function (items x rank
    floats). One pass, no join per candidate and no over-asking to make room for seen items.
    """
    import numpy as np
    import pandas as pd

    spark = targets.sparkSession
    parts = score_parts(fitted)
    if parts is None:
        return _empty_recommendations(spark)
    model = _as_model(fitted)
    item_factors, item_bias = parts.item_factors, parts.item_bias
    n_items = len(item_factors)
    target_users = targets.select(CUSTOMER).distinct().join(parts.users, CUSTOMER)
    seen_items = (seen.select(CUSTOMER, PRODUCT).join(F.broadcast(model.items), PRODUCT)
                  .groupBy(CUSTOMER).agg(F.collect_list(ITEM).alias("_seen")))
    rows = (target_users.join(seen_items, CUSTOMER, "left")
            .select(CUSTOMER, "_offset", "_factors", "_seen"))
    block = max(1, SCORE_BLOCK_CELLS // n_items)

    def best(batches):
        for frame in batches:
            for start in range(0, len(frame), block):
                part = frame.iloc[start:start + block]
                top, top_scores = _best_unseen(_als_scores(part, item_factors, item_bias),
                                               part["_seen"], n)
                take = top.shape[1]
                keep = np.isfinite(top_scores)
                ranks = np.broadcast_to(np.arange(1, take + 1), top.shape)
                yield pd.DataFrame({
                    CUSTOMER: np.repeat(part[CUSTOMER].to_numpy(), take).reshape(top.shape)[keep],
                    ITEM: top[keep].astype("int32"), "rank": ranks[keep].astype("int32"),
                    "score": top_scores[keep]})

    out = rows.mapInPandas(best, f"{CUSTOMER} string, {ITEM} int, rank int, score double")
    return (out.join(F.broadcast(model.items), ITEM)
            .select(CUSTOMER, PRODUCT, "rank", "score"))


def popularity(interactions: DataFrame) -> DataFrame:
    """(customer_id, product_id, ...) -> product_id, buyers (distinct customers), score (buyers as a
    share of all customers)."""
    customers = interactions.agg(F.countDistinct(CUSTOMER).alias("_customers"))
    return (interactions.groupBy(PRODUCT).agg(F.countDistinct(CUSTOMER).alias("buyers"))
            .crossJoin(F.broadcast(customers))
            .select(PRODUCT, "buyers", (F.col("buyers") / F.col("_customers")).alias("score")))


def top_unseen_popular(popular: DataFrame, targets: DataFrame, seen: DataFrame,
                       n: int) -> DataFrame:
    """The n most popular products per target customer that it has not seen (ties: product_id).
    -> customer_id, product_id, rank, score."""
    targets = _seen_counts(targets.select(CUSTOMER).distinct(), seen)
    most_seen = targets.agg(F.max("_n_seen")).first()[0]
    if most_seen is None:
        return _empty_recommendations(targets.sparkSession)
    # the head of the list that any customer can reach, with its ranks, is small: build it on the
    # driver (a global window would pull every product into one partition)
    head = (popular.orderBy(F.col("buyers").desc(), F.col(PRODUCT)).limit(n + int(most_seen))
            .select(PRODUCT, "score").collect())
    spark = targets.sparkSession
    ranked = spark.createDataFrame(
        [(r[PRODUCT], float(r["score"]), i + 1) for i, r in enumerate(head)],
        f"{PRODUCT} string, score double, _pop_rank int")
    candidates = targets.join(F.broadcast(ranked), F.col("_pop_rank") <= F.col("_n_seen") + n)
    return _top_n(candidates, seen, n, F.col("_pop_rank"))


def _empty_recommendations(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], f"{CUSTOMER} string, {PRODUCT} string, rank int, score double")


# =============================================================== metrics

def ranking_metrics(recommended: DataFrame, relevant: DataFrame, k: int) -> dict[str, float]:
    """Binary-relevance ranking metrics at k, averaged over the customers that have at least one
    relevant product (a customer with no recommendations scores 0).

    recommended: customer_id, product_id, rank (1 = first; ranks above k are ignored)
    relevant:    customer_id, product_id
    With hits_i = 1 when the product at rank i is relevant, R = the customer's relevant products:
      precision@k = sum_{i<=k} hit_i / k
      recall@k    = sum_{i<=k} hit_i / |R|
      AP@k        = sum_{i<=k} hit_i * (hits in ranks 1..i) / i  /  min(|R|, k)
      NDCG@k      = sum_{i<=k} hit_i / log2(i + 1)  /  sum_{i<=min(|R|,k)} 1 / log2(i + 1)
    the definitions of Spark's RankingMetrics (precisionAt, recallAt, meanAveragePrecisionAt,
    ndcgAt).
    """
    out = ranking_metrics_of({"": recommended}, relevant, k)[""]
    out.pop("relevant_pairs")
    return out


def ranking_metrics_of(lists: dict[str, DataFrame], relevant: DataFrame,
                       k: int) -> dict[str, dict[str, Any]]:
    """`ranking_metrics` of several lists (name -> recommended) against the same relevant pairs,
    in one pass: the relevant sets are built and joined once, one aggregation scores every list.
    Each result also has `relevant_pairs` (the distinct relevant pairs of its customers)."""
    wanted = list(lists)
    names = relevant.sparkSession.createDataFrame([(name,) for name in wanted], "_list string")
    recommended = None
    for name, frame in lists.items():
        frame = frame.select(F.lit(name).alias("_list"), CUSTOMER, PRODUCT, "rank")
        recommended = frame if recommended is None else recommended.unionByName(frame)
    # one row per (list, customer with a relevant product): its relevant set and its list (sorted
    # by rank) side by side, one join; the sums run over the list with higher-order functions
    relevant = (relevant.select(CUSTOMER, PRODUCT).distinct().groupBy(CUSTOMER)
                .agg(F.collect_set(PRODUCT).alias("_rel")).crossJoin(F.broadcast(names)))
    lists = (recommended.where(F.col("rank") <= k).groupBy("_list", CUSTOMER)
             .agg(F.array_sort(F.collect_list(F.struct(F.col("rank").alias("r"),
                                                       F.col(PRODUCT).alias("p")))).alias("_recs")))
    per_customer = relevant.join(lists, ["_list", CUSTOMER], "left").select(
        "_list", F.size("_rel").alias("_n_rel"),
        F.coalesce("_recs", F.array().cast("array<struct<r:int,p:string>>")).alias("_recs"),
        "_rel")

    def hit(x):
        return F.array_contains(F.col("_rel"), x["p"])
    ap = F.aggregate("_recs", F.struct(F.lit(0).alias("c"), F.lit(0.0).alias("s")),
                     lambda acc, x: F.when(hit(x), F.struct((acc["c"] + 1).alias("c"),
                                                            (acc["s"] + (acc["c"] + 1) / x["r"])
                                                            .alias("s"))).otherwise(acc),
                     lambda acc: acc["s"])
    per_customer = per_customer.select(
        "_list", "_n_rel",
        F.size(F.filter("_recs", hit)).alias("_hits"),
        ap.alias("_ap_sum"),
        F.aggregate("_recs", F.lit(0.0), lambda acc, x: acc + F.when(
            hit(x), 1.0 / F.log2(x["r"] + 1)).otherwise(0.0)).alias("_dcg"))
    return _summarize_ranking(per_customer, wanted, k)


def als_and_popular_metrics(fitted: FittedAls | FittedModel, relevant: DataFrame, seen: DataFrame,
                            k: int, popular: DataFrame | None) -> dict[str, dict[str, Any]]:
    """`ranking_metrics_of` {"als": top_unseen_als(fitted, customers of relevant, seen, k),
    "baseline": top_unseen_popular(popular, the same customers, seen, k)} (no baseline when
    `popular` is None) without building the lists as tables: one pass over the customers with a
    relevant product, each row carrying its relevant and seen products (as codes) and its
    factors, ranks both lists in numpy blocks (the same scoring and ties as the two functions)
    and scores them at once; only one row per (list, customer) leaves the Python workers. The
    per-customer sums run in rank order, as the higher-order functions of `ranking_metrics_of`
    do, so each customer's figures are the same; the averages are Spark's, as there."""
    import numpy as np
    import pandas as pd

    spark = relevant.sparkSession
    parts = score_parts(fitted)
    if parts is None:  # a model that knows no item recommends nothing
        lists = {"als": _empty_recommendations(spark)}
        if popular is not None:
            targets = relevant.select(CUSTOMER).distinct()
            lists["baseline"] = top_unseen_popular(popular, targets, seen, k)
        return ranking_metrics_of(lists, relevant, k)
    item_factors, item_bias = parts.item_factors, parts.item_bias
    n_items = len(item_factors)
    # codes: the model's item ids, then any popular product the model does not know
    codes = {r[PRODUCT]: r[ITEM] for r in _as_model(fitted).items.collect()}
    order = np.zeros(0, int)
    if popular is not None:
        ranked = sorted(((r[PRODUCT], r["buyers"]) for r in popular.select(PRODUCT, "buyers")
                         .collect()), key=lambda pb: (-pb[1], pb[0]))
        for product, _ in ranked:
            codes.setdefault(product, max(n_items, len(codes)))
        order = np.asarray([codes[p] for p, _ in ranked], int)
    n_codes = max(n_items, len(codes))
    coded = spark.createDataFrame(list(codes.items()), f"{PRODUCT} string, _code int")
    # a relevant product without a code counts in |R| but cannot be a hit
    rel = (relevant.select(CUSTOMER, PRODUCT).distinct().join(F.broadcast(coded), PRODUCT, "left")
           .groupBy(CUSTOMER).agg(F.count(F.lit(1)).alias("_n_rel"),
                                  F.collect_list("_code").alias("_rel")))
    seen_codes = (seen.select(CUSTOMER, PRODUCT).join(F.broadcast(coded), PRODUCT)
                  .groupBy(CUSTOMER).agg(F.collect_list("_code").alias("_seen")))
    rows = (rel.join(parts.users.select(CUSTOMER, "_offset", "_factors"), CUSTOMER, "left")
            .join(seen_codes, CUSTOMER, "left"))
    # 1 / log2(rank + 1) as Spark computes it (its log2 and numpy's differ in the last bit)
    discount = np.asarray([r["d"] for r in spark.range(1, k + 1, numPartitions=1).select(
        "id", (1.0 / F.log2(F.col("id").cast("int") + 1)).alias("d")).orderBy("id").collect()])
    block = max(1, SCORE_BLOCK_CELLS // n_codes)
    with_baseline = popular is not None

    def figures(top, found, relevant_mask):
        """hits, AP sum and DCG of lists (rows x ranks, in rank order), summed in rank order."""
        hit = np.take_along_axis(relevant_mask, top, axis=1) & found
        count = np.zeros(len(top), np.int64)
        ap, dcg = np.zeros(len(top)), np.zeros(len(top))
        for j in range(top.shape[1]):
            h = hit[:, j]
            ap = np.where(h, ap + (count + 1) / (j + 1), ap)
            dcg = dcg + np.where(h, discount[j], 0.0)
            count = count + h
        return count, ap, dcg

    def score(batches):
        for frame in batches:
            for start in range(0, len(frame), block):
                part = frame.iloc[start:start + block]
                relevant_mask = _seen_mask(part["_rel"], (len(part), n_codes))
                n_rel = part["_n_rel"].to_numpy()
                out = []
                known = part["_factors"].notna().to_numpy()
                hits, ap, dcg = (np.zeros(len(part), np.int64), np.zeros(len(part)),
                                 np.zeros(len(part)))
                if known.any():
                    users = part[known]
                    scores = _als_scores(users, item_factors, item_bias)
                    top, top_scores = _best_unseen(scores, users["_seen"], k)
                    hits[known], ap[known], dcg[known] = figures(
                        top, np.isfinite(top_scores), relevant_mask[known])
                out.append(("als", hits, ap, dcg))
                if with_baseline and len(order):
                    unseen = ~_seen_mask(part["_seen"], (len(part), n_codes))[:, order]
                    take = min(k, len(order))
                    # the first `take` unseen products in popularity order (stable: seen last)
                    first = np.argsort(~unseen, axis=1, kind="stable")[:, :take]
                    out.append(("baseline", *figures(order[first],
                                                     np.take_along_axis(unseen, first, axis=1),
                                                     relevant_mask)))
                elif with_baseline:
                    out.append(("baseline", *(np.zeros(len(part), t) for t in (np.int64, float,
                                                                                 float))))
                for name, h, a, d in out:
                    yield pd.DataFrame({"_list": name, "_n_rel": n_rel.astype("int32"),
                                        "_hits": h.astype("int32"), "_ap_sum": a, "_dcg": d})

    per_customer = rows.mapInPandas(
        score, "_list string, _n_rel int, _hits int, _ap_sum double, _dcg double")
    return _summarize_ranking(per_customer, ["als", "baseline"] if with_baseline else ["als"], k)


def _summarize_ranking(per_customer: DataFrame, wanted: list[str],
                       k: int) -> dict[str, dict[str, Any]]:
    """Per (list, customer) rows (_list, _n_rel, _hits, _ap_sum, _dcg) -> `ranking_metrics_of`'s
    result: every figure averaged over each list's customers."""
    ideal = F.aggregate(F.sequence(F.lit(1), F.least("_n_rel", F.lit(k))), F.lit(0.0),
                        lambda acc, i: acc + 1.0 / F.log2(i + 1))
    rows = {row["_list"]: row for row in per_customer.groupBy("_list").agg(
        F.count(F.lit(1)).alias("customers"),
        F.sum("_n_rel").alias("relevant_pairs"),
        F.avg(F.col("_hits") / F.lit(k)).alias("precision"),
        F.avg(F.col("_hits") / F.col("_n_rel")).alias("recall"),
        F.avg(F.col("_ap_sum") / F.least("_n_rel", F.lit(k))).alias("map"),
        F.avg(F.col("_dcg") / ideal).alias("ndcg")).collect()}
    out = {}
    for name in wanted:
        row = rows.get(name)
        # no customer with a relevant held-out product: nothing was measured, so None (null in
        # the manifest), not a score of 0
        out[name] = {f"precision_at_{k}": row and row["precision"],
                     f"recall_at_{k}": row and row["recall"], f"map_at_{k}": row and row["map"],
                     f"ndcg_at_{k}": row and row["ndcg"],
                     "customers": row["customers"] if row else 0,
                     "relevant_pairs": row["relevant_pairs"] if row else 0}
    return out


def rating_metrics(predictions: DataFrame, label: str = STRENGTH,
                   prediction: str = "prediction") -> dict[str, float]:
    """RMSE and MAE of `prediction` against `label`, and the number of rows scored."""
    err = F.col(prediction) - F.col(label)
    row = predictions.agg(F.sqrt(F.avg(err * err)).alias("rmse"), F.avg(F.abs(err)).alias("mae"),
                          F.count(F.lit(1)).alias("n")).first()
    return {"rmse": row["rmse"], "mae": row["mae"], "n": row["n"]}


# =============================================================== evaluation

def score_implicit(train_lines: DataFrame, test_lines: DataFrame, params: AlsParams, k: int,
                   baseline: bool = True) -> dict[str, Any]:
    """Fit on the training lines, rank for the held-out customers, score ALS (and popularity)."""
    train = purchase_counts(train_lines).persist()
    relevant = new_relevant(test_lines, train).persist()
    fitted = fit_als(train, params)
    try:
        # both lists ranked and scored in one pass over the customers with a relevant product
        out: dict[str, Any] = als_and_popular_metrics(
            fitted, relevant, train, k, popularity(train) if baseline else None)
        als = out["als"]
        out["counts"] = {"train_pairs": train.count(), "test_customers": als.pop("customers"),
                         "test_relevant_pairs": als.pop("relevant_pairs")}
        for name in ("customers", "relevant_pairs"):
            out.get("baseline", {}).pop(name, None)
        return out
    finally:
        fitted.unpersist()
        train.unpersist()
        relevant.unpersist()


def score_explicit(train: DataFrame, test: DataFrame, params: AlsParams,
                   baseline: bool = True) -> dict[str, Any]:
    """Fit on the training ratings, predict the held-out ones, score ALS (and item means)."""
    train = train.select(CUSTOMER, PRODUCT, STRENGTH).persist()
    fitted = fit_model(train, params)
    try:
        low, high = train.agg(F.min(STRENGTH), F.max(STRENGTH)).first()
        predicted = (predict(fitted, test.select(CUSTOMER, PRODUCT, STRENGTH))
                     .withColumn("prediction", F.least(F.greatest(F.col("prediction"),
                                                                  F.lit(low)), F.lit(high)))
                     .persist())
        als = rating_metrics(predicted)
        out: dict[str, Any] = {"als": als}
        if baseline:
            item_mean = train.groupBy(PRODUCT).agg(F.avg(STRENGTH).alias("_item_mean"))
            out["baseline"] = rating_metrics(predicted.join(item_mean, PRODUCT),
                                             prediction="_item_mean")
            out["baseline"].pop("n")
        test_rows = test.count()
        out["counts"] = {"train_pairs": train.count(), "test_pairs": test_rows,
                         "test_scored": als["n"], "test_cold_dropped": test_rows - als.pop("n")}
        predicted.unpersist()
        return out
    finally:
        fitted.unpersist()
        train.unpersist()


def holdout(params: AlsParams, cfg: RecommendConfig, data: DataFrame,
            salt: str = "test") -> DataFrame:
    """`data` with `held_out`: by time per customer for purchase lines (implicit), by a hash for
    rating interactions (explicit; `salt` makes the validation split differ from the test split)."""
    if params.implicit:
        return split_by_time(data, cfg.test_fraction)
    return split_random(data, cfg.test_fraction, cfg.seed, salt)


def tune(params: AlsParams, cfg: RecommendConfig, data: DataFrame,
         split: DataFrame | None = None) -> tuple[AlsParams, dict[str, Any]]:
    """Grid search on a validation split cut from the training part of the evaluation split of
    `data` (the held-out test part is never seen), in numpy on the driver (deepmine.mining.als_grid);
    returns the chosen parameters and the manifest's entries: `tuning` (every point's validation
    score), `tuning_choice` (the point, its score, whether the configured point was kept) and, for
    ratings unless recommend.explicit_model is als, `tuning_baseline_als` (every point fit on the
    residual of the baseline predictors) and `tuning_choice.model` (the explicit model chosen:
    als, baseline_als or blend, its weight and points).

    Above tune_max_rows rows the grid runs on the rows of a seeded hash sample of the customers:
    each customer keeps all its rows, so the per-customer counts that ALS's regularization scales
    with stay as they are.

    `split`: the evaluation split of `data` (`holdout(params, cfg, data)`) when the caller has it
    already, as run_recommend does so that tuning and evaluation do not each compute it."""
    if split is None:
        split = holdout(params, cfg, data)
    data = split.where(~F.col(HELD_OUT)).drop(HELD_OUT)
    total = data.count()
    if total > cfg.tune_max_rows:
        share = cfg.tune_max_rows / total
        bucket = F.pmod(F.xxhash64(F.lit(cfg.seed), F.lit("tune"), CUSTOMER), F.lit(1_000_000))
        data = data.where(bucket < F.lit(int(share * 1_000_000)))
    split = holdout(params, cfg, data, salt="validation").persist()
    try:
        fit_lines, valid_lines = split.where(~F.col(HELD_OUT)), split.where(F.col(HELD_OUT))
        if params.implicit:
            fit_part = purchase_counts(fit_lines).persist()
            valid = new_relevant(valid_lines, fit_part).toPandas()
            fit_frame = fit_part.toPandas()
            fit_part.unpersist()
        else:
            fit_frame = fit_lines.select(CUSTOMER, PRODUCT, STRENGTH).toPandas()
            valid = valid_lines.select(CUSTOMER, PRODUCT, STRENGTH).toPandas()
    finally:
        split.unpersist()
    alphas = cfg.tune_alpha if params.implicit else [params.alpha]
    points = [als_grid.Point(rank, reg, alpha) for rank, reg, alpha
              in itertools.product(cfg.tune_rank, cfg.tune_reg_param, alphas)]
    configured = als_grid.Point(params.rank, params.reg_param, params.alpha)
    model = "als" if params.implicit else requested_model(cfg)
    entries: dict[str, Any] = {}
    if model == "als":
        point, grid, choice = als_grid.search(fit_frame, valid, points, configured,
                                              params.implicit, cfg.metrics_k, params.max_iter,
                                              params.seed)
        chosen = dataclasses.replace(params, rank=point.rank, reg_param=point.reg_param,
                                     alpha=point.alpha)
    else:
        point, grid, choice, entries["tuning_baseline_als"], choice["model"] = \
            als_grid.search_explicit(fit_frame, valid, points, configured, model,
                                     params.bias_damping, params.max_iter, params.seed)
        chosen = _explicit_choice(params, point, choice["model"])
    choice["fit_rows"] = len(fit_frame)
    key = f"ndcg_at_{cfg.metrics_k}" if params.implicit else "rmse"
    print(f"[recommend] tune: {len(grid)} points on {len(fit_frame)} rows, validated on "
          f"{choice['validation_units']} {'customers' if params.implicit else 'ratings'}; "
          f"chose {choice['point']} ({key} {choice[key]}"
          f"{'; the configured point, none beat it by the margin' if choice['kept_configured'] else ''})")
    if "model" in choice:
        print(f"[recommend] tune: explicit model {chosen.describe()} (validation rmse "
              f"{choice['model']['rmse']}, plain ALS {choice['model'].get('rmse_als')})")
    return chosen, {"tuning": grid, "tuning_choice": choice, **entries}


def _explicit_choice(params: AlsParams, point: als_grid.Point, model: dict) -> AlsParams:
    """`params` set to the explicit model that als_grid.search_explicit chose."""
    chosen = dataclasses.replace(params, model=model["model"], rank=point.rank,
                                 reg_param=point.reg_param)
    if model.get("baseline_point") is None:  # plain ALS, or nothing to validate on
        return chosen
    base = model["baseline_point"]
    chosen = dataclasses.replace(chosen, baseline_rank=base["rank"],
                                 baseline_reg_param=base["reg_param"])
    if model["model"] == "blend":
        als = model["als_point"]
        chosen = dataclasses.replace(chosen, rank=als["rank"], reg_param=als["reg_param"],
                                     blend_weight=model["weight"])
    return chosen


def evaluate(params: AlsParams, cfg: RecommendConfig, data: DataFrame,
             split: DataFrame | None = None) -> tuple[dict, dict]:
    """Score ALS and its baseline on the held-out split of `data` (purchase lines for implicit,
    rating interactions for explicit); returns (metrics, counts). `split`: that split, when the
    caller has it already (see `tune`); the caller then owns its cache."""
    own = split is None
    if own:
        split = holdout(params, cfg, data).persist()
    try:
        train, test = split.where(~F.col(HELD_OUT)), split.where(F.col(HELD_OUT))
        if params.implicit:
            scored = score_implicit(train, test, params, cfg.metrics_k)
        else:
            scored = score_explicit(train, test, params)
    finally:
        if own:
            split.unpersist()
    metrics = dict(scored["als"])
    metrics.update({f"baseline_{name}": value for name, value in scored["baseline"].items()})
    metrics["baseline"] = ("popularity: products by number of buyers in the training part"
                           if params.implicit else "item means: each item's mean rating in the "
                           "training part")
    return metrics, scored["counts"]


# =============================================================== stage

def recommend_top_n(fitted: FittedAls | FittedModel, interactions: DataFrame,
                    customers: DataFrame, seen: DataFrame, n: int) -> DataFrame:
    """ALS's top n unseen products for every customer the model knows, the most popular unseen
    ones (by `interactions`) for the others. -> customer_id, product_id, rank, score, source."""
    als = top_unseen_als(fitted, customers, seen, n).withColumn("source", F.lit(SOURCE_ALS))
    unknown = customers.select(CUSTOMER).distinct().join(fitted.users, CUSTOMER, "left_anti")
    pop = (top_unseen_popular(popularity(interactions), unknown, seen, n)
           .withColumn("source", F.lit(SOURCE_POPULARITY)))
    return als.unionByName(pop)


def read_input(lake: Lake, table: str, run_date: str, stage: str = "recommend") -> DataFrame:
    """`table`'s history up to `run_date`, or an error that says what to ingest."""
    try:
        return lake.read_history(table, run_date)
    except FileNotFoundError:
        raise FileNotFoundError(f"{stage}: no {table} in the lake at {lake.url(table)}; ingest "
                                f"some up to {run_date} first (deepmine ingest ... --entity "
                                f"{table.split('/')[1]})") from None


@contextlib.contextmanager
def _checkpoints_of_this_stage(spark: SparkSession, lake: Lake):
    """Sets a checkpoint directory if the session has none (without one ALS silently ignores
    checkpointInterval), and on the way out deletes the checkpoint files made meanwhile: ALS
    leaves the last one of every fit behind, which would pile up night after night."""
    if not spark.sparkContext.getCheckpointDir():
        spark.sparkContext.setCheckpointDir(lake.url("_checkpoints"))
    directory = spark.sparkContext.getCheckpointDir()
    before = set(lake.list_dir(directory))
    try:
        yield
    finally:
        for name in sorted(set(lake.list_dir(directory)) - before):
            lake.delete(f"{directory.rstrip('/')}/{name}")


def run_recommend(spark: SparkSession, config: Config, run_date: str) -> dict:
    """Evaluate, fit on all history up to `run_date`, publish mining/recommendations/run_date=D.
    Returns {"counts", "metrics", "outputs"} as recorded in the run manifest."""
    cfg = config.recommend
    check_config(cfg)
    lake = Lake(spark, config.lake.root)
    params = AlsParams.from_config(cfg, spark.sparkContext.defaultParallelism)
    partition = f"run_date={run_date}"
    with StageRun(lake, run_date, "recommend") as run, _checkpoints_of_this_stage(spark, lake):
        run.metrics["feedback"] = cfg.feedback
        if params.implicit:
            history = read_input(lake, "clean/transactions", run_date)
            data = purchase_lines(history).persist()  # what evaluation and tuning split
            interactions = purchase_counts(data).persist()
            seen = history.select(CUSTOMER, PRODUCT).distinct().persist()
            cached = [data, interactions, seen]
        else:
            history = read_input(lake, "clean/ratings", run_date)
            data = interactions = rating_interactions(history).persist()
            seen = interactions.select(CUSTOMER, PRODUCT)
            cached = [interactions]
        customers = seen.select(CUSTOMER).distinct()
        fitted = None
        if cfg.tune or cfg.evaluate:
            # the evaluation's split, which tuning cuts its validation part from: made once
            split = holdout(params, cfg, data).persist()
            cached.append(split)
        try:
            size = interactions.agg(F.count(F.lit(1)).alias("interactions"),
                                    F.countDistinct(PRODUCT).alias("products")).first()
            if size["interactions"] == 0:
                raise ValueError(f"recommend: no {'purchases' if params.implicit else 'ratings'} "
                                 f"up to {run_date} in {lake.root}; nothing to learn from")
            run.counts.update(interactions=size["interactions"], customers=customers.count(),
                              products=size["products"])
            if cfg.tune:
                params, tuning = tune(params, cfg, data, split)
                run.metrics.update(tuning)
            run.metrics["params"] = params.describe()
            # the final fit needs only the chosen parameters: it runs beside the evaluation (a
            # second thread of Spark jobs), whose many small jobs leave the cores idle between
            # tasks; ALS seeds every block, so the factors are the same as fit alone. Leaving
            # the pool waits for the fit, so an evaluation error is raised after it, alone
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                final_fit = pool.submit(fit_model, interactions, params)
                if cfg.evaluate:
                    metrics, counts = evaluate(params, cfg, data, split)
                    run.metrics.update(metrics)
                    run.counts.update(counts)
                    _log_evaluation(run.metrics, params.implicit, cfg.metrics_k)
                    reason = below_baseline(run.metrics, params.implicit, cfg.metrics_k)
                    if reason:
                        run.degrade(reason)
                fitted = final_fit.result()
            recs = recommend_top_n(fitted, interactions, customers, seen, cfg.top_n)
            run.counts["recommendations"] = lake.publish(recs, TABLE, partition)
        finally:
            if fitted is not None:
                fitted.unpersist()
            for df in cached:
                df.unpersist()
        by_source = {r["source"]: r["n"] for r in lake.read(TABLE, partition)
                     .groupBy("source").agg(F.countDistinct(CUSTOMER).alias("n")).collect()}
        run.counts["customers_als"] = by_source.get(SOURCE_ALS, 0)
        run.counts["customers_popularity"] = by_source.get(SOURCE_POPULARITY, 0)
        run.outputs["recommendations"] = lake.partition_url(TABLE, partition)
    return {"counts": run.counts, "metrics": run.metrics, "outputs": run.outputs}


def below_baseline(metrics: dict, implicit: bool, k: int) -> str | None:
    """The reason to publish the lists as `degraded` when ALS does not beat its baseline on the
    held-out split (NDCG@k against popularity, implicit; RMSE against item means, explicit), else
    None. Nothing measured (no held-out customer or pair) is not a failure: None."""
    name, better = (f"ndcg_at_{k}", max) if implicit else ("rmse", min)
    ours, theirs = metrics.get(name), metrics.get(f"baseline_{name}")
    if ours is None or theirs is None:
        return None
    if better(ours, theirs) == ours and ours != theirs:
        return None
    baseline = "popularity" if implicit else "item means"
    return (f"ALS does not beat {baseline} on the held-out split: {name} {ours:.4f} against "
            f"{theirs:.4f}; the lists are published but a plain {baseline} list would do as well")


def _log_evaluation(metrics: dict, implicit: bool, k: int) -> None:
    if implicit:
        names = [f"precision_at_{k}", f"recall_at_{k}", f"map_at_{k}", f"ndcg_at_{k}"]
    else:
        names = ["rmse", "mae"]
    if all(metrics.get(n) is None for n in names):
        print("[recommend] held-out: nothing to evaluate (no held-out customer has a product it "
              "had not seen in training)")
        return

    def text(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    shown = " ".join(f"{n}={text(metrics[n])} (baseline {text(metrics['baseline_' + n])})"
                     for n in names)
    print(f"[recommend] held-out: {shown}")
