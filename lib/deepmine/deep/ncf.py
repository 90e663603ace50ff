"""Neural collaborative filtering: `deepmine train --model ncf` (manifest stage `train_ncf`).

For run date D:

1. Interactions, as `recommend.feedback` says: implicit = every (customer, product) bought in
   clean/transactions up to D (quantity > 0; the pair's time is its first purchase, so the
   held-out item is the customer's newest product), explicit = every rated pair of clean/ratings
   (any rating is an interaction; its time is rated_ts). Customers and products are indexed in
   Spark (StringIndexer, alphabetical: the same history gives the same indices).
2. Leave-one-out split (He et al. 2017): each user's latest interaction (ties: the larger
   product_id) is the test item when the user has at least 2, the one before it the validation
   item when the user has at least 3; the rest is the training part. For the test and for the
   validation item, `ncf.eval_negatives` (99) items the user never touched are drawn (seeded by
   ncf.seed and the user) and the held-out item is put among them at a seeded random place:
   `features/ncf_test` and `features/ncf_validation` (user, items, target = the held-out item's
   place). A user with fewer untouched items than that is left out of the lists (counted).
3. Negative sampling in Spark (`mapInPandas` over each user's items as arrays, numpy seeded by
   (ncf.seed, set, user)): `ncf.negative_sets` training sets (0 = one per epoch: fresh
   negatives every epoch; fewer when they would hold more than `ncf.max_sampled_rows` rows, the
   epochs cycling them),
   each holding every training positive (label 1) and `ncf.negatives` items per positive drawn
   uniformly from the items the user never touched (label 0), with replacement as in the paper.
   Written as `features/ncf_train/run_date=D`, `split` = set_00, set_01, ..., each set as
   files of one row group (one per 50,000 rows, a multiple of train.num_proc, at most
   `features.row_groups`; rows dealt to them at random, seeded), so
   Petastorm can shard every set over the Horovod ranks.
4. Training through the shared trainer (deepmine.deep.trainer, task `ncf`: Horovod ranks,
   Petastorm shards, checkpoints and resume, retries, train.budget_seconds), one set per epoch,
   early stopping on the validation lists' HR@k (deepmine.deep.ncf_loop). With ncf.pretrain and
   NeuMF (He et al. 2017, section 3.4.1): a GMF, then an MLP, each trained like this on the same
   sets (checkpoints in <checkpoints>/gmf and /mlp), then NeuMF started from both
   (deepmine.deep.models.ncf.neumf_state_from_parts, ncf.pretrain_alpha; the starting weights
   written beside the checkpoints, named by their content) and trained with plain SGD at
   ncf.pretrain_lr. Each part's validation and test HR@k / NDCG@k, recall@k and seconds are in
   `metrics.pretrain`.
5. Metrics, on the test lists: `hr_at_k`, `ndcg_at_k` of the model, of popularity (items by
   training users, `baseline_*`) and of ALS (`als_*`: Spark ALS with implicit preferences on the
   same training pairs, confidence 1 + alpha * purchase count for purchases, 1 + alpha for ratings;
   rank from recommend.rank, reg_param and alpha chosen on the validation lists' HR@k among
   recommend.tune_reg_param x tune_alpha by the numpy ALS of deepmine.mining.als_grid, the
   recommend stage's objective). Full-ranking `recall_at_k` (and `baseline_`, `als_`): the share of
   users (at most ncf.recall_users, a seeded sample) whose test item is in the top k of every item
   they did not touch in training or validation. Ties in a ranking count against the held-out item
   when the other item comes first in a seeded random order.
6. Predictions: the top ncf.top_n products per customer (customer_id, product_id, rank, score =
   the model's probability), excluding every product the customer has (rated, bought or returned)
   -> `predictions/ncf/run_date=D`, scored in Spark (mapInPandas, weights broadcast).
7. The gate: `degraded` when the model's HR@k does not beat popularity's.

The model is trained on the training part only: the held-out items are the customers' newest,
and the predictions exclude them like everything else the customer has.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from deepmine.core.config import Config, ConfigError
from deepmine.core.lake import Lake, StageRun
from deepmine.mining.recommend import read_input

NAME = "ncf"
TRAIN_TABLE, VALIDATION_TABLE, TEST_TABLE = ("features/ncf_train", "features/ncf_validation",
                                             "features/ncf_test")
SAMPLING_TABLE = "features/ncf_sampling"  # sampling.json: what the tables above were made from
PREDICTIONS = "predictions/ncf"
CUSTOMER, PRODUCT = "customer_id", "product_id"
USER, ITEM = "user", "item"
TEST_SALT, VALIDATION_SALT = 1_000_003, 1_000_033  # seed streams of the two kinds of lists
SCORE_BLOCK_PAIRS = 1_000_000  # (user, item) pairs scored at once on the driver or a worker
# rows a row group of the sampled tables is sized for: each group is one Spark task and one
# file, so a small set in features.row_groups groups costs more in tasks than in rows (20
# sets x 8 groups of 7,500 rows: 160 tasks for 1.2M rows on the nightly's 20,000 lines)
ROWS_PER_GROUP = 50_000


def check_config(config: Config) -> None:
    n = config.ncf
    for key in ("factors", "negatives", "epochs", "batch_size", "eval_negatives", "k", "top_n"):
        if getattr(n, key) < 1:
            raise ConfigError(f"config key 'ncf.{key}': expected >= 1, found {getattr(n, key)}")
    for key in ("negative_sets", "recall_users", "max_sampled_rows", "sparse_embeddings_above"):
        if getattr(n, key) < 0:
            raise ConfigError(f"config key 'ncf.{key}': expected >= 0, found {getattr(n, key)}")
    if not n.mlp_layers or n.mlp_layers[0] % 2 or min(n.mlp_layers) < 1:
        raise ConfigError(f"config key 'ncf.mlp_layers': expected positive widths, the first "
                          f"even (two embeddings side by side), found {n.mlp_layers}")
    if not 0.0 <= n.pretrain_alpha <= 1.0:
        raise ConfigError(f"config key 'ncf.pretrain_alpha': expected a weight in [0, 1], found "
                          f"{n.pretrain_alpha}")
    if n.pretrain_lr <= 0:
        raise ConfigError(f"config key 'ncf.pretrain_lr': expected > 0, found {n.pretrain_lr}")
    if n.k > n.eval_negatives:
        raise ConfigError(f"config key 'ncf.k' ({n.k}): expected at most ncf.eval_negatives "
                          f"({n.eval_negatives}); every list would be a hit")


# =============================================================== interactions (transform)

def interactions(lake: Lake, feedback: str, run_date: str) -> tuple[DataFrame, DataFrame]:
    """(customer_id, product_id, ts, strength) one row per pair, and every (customer_id,
    product_id) the customer has (what the predictions exclude)."""
    if feedback == "implicit":
        history = read_input(lake, "clean/transactions", run_date, "train_ncf")
        pairs = (history.where(F.col("quantity") > 0).groupBy(CUSTOMER, PRODUCT)
                 .agg(F.min("invoice_ts").alias("ts"),
                      F.countDistinct("invoice_id").cast("double").alias("strength")))
        return pairs, history.select(CUSTOMER, PRODUCT).distinct()
    history = read_input(lake, "clean/ratings", run_date, "train_ncf")
    pairs = (history.groupBy(F.col("user_id").alias(CUSTOMER), F.col("item_id").alias(PRODUCT))
             .agg(F.max("rated_ts").alias("ts"), F.lit(1.0).alias("strength")))
    return pairs, pairs.select(CUSTOMER, PRODUCT)


def index_pairs(pairs: DataFrame) -> tuple[DataFrame, list[str], list[str]]:
    """Adds integer `user` and `item` (alphabetical order of the ids); returns the id lists too
    (position = index)."""
    from pyspark.ml.feature import StringIndexer
    indexer = StringIndexer(inputCols=[CUSTOMER, PRODUCT], outputCols=[USER, ITEM],
                            stringOrderType="alphabetAsc").fit(pairs)
    users, items = indexer.labelsArray
    indexed = (indexer.transform(pairs).withColumn(USER, F.col(USER).cast("int"))
               .withColumn(ITEM, F.col(ITEM).cast("int")))
    return indexed, list(users), list(items)


def leave_one_out(indexed: DataFrame) -> DataFrame:
    """Adds `role`: test (each user's latest, users with >= 2 interactions), validation (the one
    before, users with >= 3), train (the rest)."""
    latest_first = Window.partitionBy(USER).orderBy(F.col("ts").desc(), F.col(PRODUCT).desc())
    n = F.count(F.lit(1)).over(Window.partitionBy(USER))
    position = F.row_number().over(latest_first)
    role = (F.when((position == 1) & (n >= 2), "test")
            .when((position == 2) & (n >= 3), "validation").otherwise("train"))
    return indexed.withColumn("role", role)


def _rng(seed: int, stream: int, user: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, user])


def training_set_count(asked: int, epochs: int, train_pairs: int, negatives: int,
                       max_rows: int) -> int:
    """How many training sets to sample: `asked` (0 = one per epoch), fewer when they would hold
    more than `max_rows` rows together (each set: every training pair and `negatives` per pair),
    never fewer than one; max_rows 0 = no cap."""
    sets = asked or epochs
    rows_per_set = train_pairs * (1 + negatives)
    if max_rows and rows_per_set * sets > max_rows:
        sets = max(1, max_rows // max(rows_per_set, 1))
    return sets


def _by_user(split: DataFrame) -> DataFrame:
    """(user, items, roles): each user's interactions as two arrays, one row per user, so that
    the seeded draws run over a batch of users per Python call (a groupBy().applyInPandas made a
    pandas frame per user: at 1M generated lines, 40,000 users, most of 300 s of sampling)."""
    return split.groupBy(USER).agg(F.collect_list(ITEM).alias("items"),
                                   F.collect_list("role").alias("roles"))


def negative_sets(split: DataFrame, n_items: int, sets: int, negatives: int, groups: int,
                  seed: int) -> DataFrame:
    """Training rows of every set: (neg_set, user, item, label, _group, _order), positives = the
    training part, `negatives` draws per positive from the items the user never touched (numpy
    seeded by (seed, set, user): the same rows however the users are batched)."""
    everything = np.arange(n_items)

    def sample(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            columns: dict[str, list[np.ndarray]] = {k: [] for k in (
                "neg_set", USER, ITEM, "label", "_group", "_order")}
            for user, items, roles in zip(batch[USER], batch["items"], batch["roles"]):
                user, items = int(user), np.asarray(items)
                positives = np.sort(items[np.asarray(roles) == "train"])
                free = np.setdiff1d(everything, items)
                for s in range(sets):
                    rng = _rng(seed, s, user)
                    drawn = (free[rng.integers(0, len(free), len(positives) * negatives)]
                             if len(free) else np.zeros(0, dtype=np.int64))
                    rows = len(positives) + len(drawn)
                    columns["neg_set"].append(np.full(rows, s, dtype=np.int32))
                    columns[USER].append(np.full(rows, user, dtype=np.int32))
                    columns[ITEM].append(np.concatenate([positives, drawn]).astype(np.int32))
                    columns["label"].append(np.concatenate(
                        [np.ones(len(positives)), np.zeros(len(drawn))]).astype(np.float32))
                    columns["_group"].append(rng.integers(0, groups, rows).astype(np.int32))
                    columns["_order"].append(rng.random(rows))
            if columns[USER]:
                yield pd.DataFrame({k: np.concatenate(v) for k, v in columns.items()})
    schema = "neg_set int, user int, item int, label float, _group int, _order double"
    return _by_user(split).mapInPandas(sample, schema)


def evaluation_lists(split: DataFrame, n_items: int, role: str, eval_negatives: int,
                     seed: int) -> DataFrame:
    """One row per user with a `role` item: (user, items, target): the held-out item at a seeded
    random place among `eval_negatives` items the user never touched, drawn without replacement;
    users with fewer untouched items get items = [] (left out, counted)."""
    stream = TEST_SALT if role == "test" else VALIDATION_SALT
    everything = np.arange(n_items)

    def lists(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            users, made, targets = [], [], []
            for user, items, roles in zip(batch[USER], batch["items"], batch["roles"]):
                items = np.asarray(items)
                held = items[np.asarray(roles) == role]
                if not len(held):
                    continue
                user = int(user)
                free = np.setdiff1d(everything, items)
                users.append(user)
                if len(free) < eval_negatives:
                    made.append([])
                    targets.append(-1)
                    continue
                rng = _rng(seed, stream, user)
                drawn = rng.choice(free, eval_negatives, replace=False)
                target = int(rng.integers(0, eval_negatives + 1))
                made.append(np.insert(drawn, target, held[0]).astype(np.int32).tolist())
                targets.append(target)
            if users:
                yield pd.DataFrame({USER: pd.Series(users, dtype="int32"), "items": made,
                                    "target": pd.Series(targets, dtype="int32")})
    schema = "user int, items array<int>, target int"
    return _by_user(split).mapInPandas(lists, schema)


# =============================================================== layout (load)

def _laid_out(spark: SparkSession, df: DataFrame, group: F.Column, partitions: int,
              order: str) -> DataFrame:
    """Each value of `group` (0..partitions-1) in its own Spark partition (one file, one row
    group), sorted by `order` inside."""
    from deepmine.deep.features import _partition_keys
    keys = _partition_keys(spark, partitions)
    key_of = F.create_map(*[x for p, k in enumerate(keys)
                            for x in (F.lit(p), F.lit(k).cast("long"))])
    return (df.withColumn("_key", key_of[group]).repartition(partitions, "_key")
            .sortWithinPartitions(order).drop("_key"))


def row_groups_for(rows: int, most: int, ranks: int) -> int:
    """Row groups for a table of `rows`: one per ROWS_PER_GROUP rows, a multiple of the
    `ranks` (Petastorm gives each rank whole groups), at least `ranks`, at most `most`
    (features.row_groups)."""
    wanted = max(ranks, -(-rows // ROWS_PER_GROUP))
    return max(ranks, min(most, -(-wanted // ranks) * ranks))


def set_name(s: int) -> str:
    return f"set_{s:02d}"


def publish_training_sets(lake: Lake, rows: DataFrame, sets: int, groups: int,
                          partition: str) -> dict[str, Any]:
    from deepmine.deep.features import publish_for_petastorm
    names = F.create_map(*[x for s in range(sets) for x in (F.lit(s), F.lit(set_name(s)))])
    laid = _laid_out(lake.spark, rows, (F.col("neg_set") * groups + F.col("_group")).cast("int"),
                     sets * groups, "_order")
    laid = laid.select(names[F.col("neg_set")].alias("split"), USER, ITEM, "label")
    return publish_for_petastorm(lake, laid, TRAIN_TABLE, partition)


def publish_lists(lake: Lake, lists: DataFrame, table: str, groups: int,
                  partition: str) -> dict[str, Any]:
    from deepmine.deep.features import publish_for_petastorm
    laid = _laid_out(lake.spark, lists, F.pmod(F.col(USER), F.lit(groups)).cast("int"), groups,
                     USER)
    return publish_for_petastorm(lake, laid, table, partition)


def sampling_description(split: DataFrame, config: Config, feedback: str, n_users: int,
                         n_items: int, sets: int, groups: tuple[int, int]) -> dict[str, Any]:
    """What the sampled tables depend on: the settings and a checksum of the split pairs."""
    n = config.ncf
    checksum = split.agg(F.sum(F.xxhash64(CUSTOMER, PRODUCT, USER, ITEM, "role")
                               .cast("decimal(38,0)"))).first()[0]
    return {"feedback": feedback, "users": n_users, "items": n_items, "sets": sets,
            "negatives": n.negatives, "eval_negatives": n.eval_negatives, "seed": n.seed,
            "row_groups": list(groups), "pairs_checksum": str(checksum)}


def sampled_before(lake: Lake, partition: str, sampling: dict[str, Any]) -> dict | None:
    """The sampling record of the run date when the tables were made from these very inputs and
    settings (so a re-run, e.g. to resume an interrupted training, reads the same files and its
    checkpoints match), else None."""
    if not all(lake.has_partition(t, partition) for t in (SAMPLING_TABLE, TRAIN_TABLE,
                                                          VALIDATION_TABLE, TEST_TABLE)):
        return None
    try:
        record = json.loads(lake.read_text(f"{lake.partition_url(SAMPLING_TABLE, partition)}"
                                           "/sampling.json"))
    except Exception:  # noqa: BLE001 - unreadable: sample again
        return None
    return record if {k: record.get(k) for k in sampling} == sampling else None


# =============================================================== metrics (driver)

def model_scorer(model) -> Any:
    """(users, items) index arrays of equal shape -> the model's logits, same shape."""
    import torch
    from deepmine.deep.ncf_loop import pair_input
    model.eval()

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        flat_u, flat_i = users.reshape(-1), items.reshape(-1)
        out = np.empty(len(flat_u), dtype=np.float64)
        with torch.no_grad():
            for a in range(0, len(flat_u), SCORE_BLOCK_PAIRS):
                x = pair_input(torch.from_numpy(flat_u[a:a + SCORE_BLOCK_PAIRS].astype(np.int64)),
                               torch.from_numpy(flat_i[a:a + SCORE_BLOCK_PAIRS].astype(np.int64)))
                out[a:a + SCORE_BLOCK_PAIRS] = model(x).double().numpy()
        return out.reshape(users.shape)
    return score


def factor_scorer(user_factors: np.ndarray, item_factors: np.ndarray) -> Any:
    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.einsum("...r,...r->...", user_factors[users], item_factors[items])
    return score


def popularity_scorer(item_users: np.ndarray) -> Any:
    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return item_users[items].astype(np.float64)
    return score


def protocol_metrics(score, lists: pd.DataFrame, k: int) -> dict[str, float | None]:
    """HR@k and NDCG@k of `score` over the leave-one-out `lists` (user, items, target)."""
    from deepmine.deep.ncf_loop import hit_and_ndcg
    if not len(lists):
        return {"hr": None, "ndcg": None}
    items = np.stack(lists["items"].to_numpy()).astype(np.int64)
    users = np.repeat(lists[USER].to_numpy().astype(np.int64)[:, None], items.shape[1], axis=1)
    hit, gain = hit_and_ndcg(score(users, items), lists["target"].to_numpy(), k)
    return {"hr": float(hit.mean()), "ndcg": float(gain.mean())}


def full_ranking_recall(score, test: pd.DataFrame, known: dict[int, np.ndarray], n_items: int,
                        k: int, seed: int) -> float | None:
    """Share of the `test` users (user, item) whose held-out item is in the top k of every item
    but those in `known[user]` (its training and validation items); ties count against the
    held-out item when the other item comes first in a seeded random order of the items."""
    if not len(test):
        return None
    tie_order = np.random.default_rng([seed, 7]).permutation(n_items)
    hits = 0
    block = max(1, SCORE_BLOCK_PAIRS // max(n_items, 1))
    all_items = np.arange(n_items)
    rows = test[[USER, ITEM]].to_numpy().astype(np.int64)
    for a in range(0, len(rows), block):
        part = rows[a:a + block]
        users = np.repeat(part[:, 0:1], n_items, axis=1)
        scores = score(users, np.broadcast_to(all_items, users.shape))
        for row, (user, item) in zip(scores, part):
            masked = known.get(int(user), np.zeros(0, dtype=np.int64))
            row = row.copy()
            row[masked] = -np.inf
            mine = row[item]
            ahead = (row > mine) | ((row == mine) & (tie_order < tie_order[item]))
            ahead[item] = False
            hits += int(ahead.sum() < k)
    return hits / len(rows)


class _Clock:
    """Seconds per phase of the stage, logged as each ends and kept for the manifest."""

    def __init__(self, log):
        import time
        self.log, self.time, self.seconds = log, time.perf_counter, {}
        self.last = self.time()

    def lap(self, phase: str, detail: str = "") -> None:
        now = self.time()
        self.seconds[phase] = round(now - self.last, 3)
        self.last = now
        self.log(f"[train_{NAME}] {phase}: {self.seconds[phase]:.1f}s"
                 f"{' ' + detail if detail else ''}")


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


# =============================================================== ALS under the protocol

def als_point(config: Config, train: pd.DataFrame, validation: pd.DataFrame, n_users: int,
              n_items: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """ALS's (rank, reg_param, alpha) for the protocol: each point of recommend.tune_reg_param x
    tune_alpha (rank recommend.rank) fit by als_grid's numpy ALS on the training pairs and scored
    by HR@k on the validation lists; the best (ties: NDCG@k, then the grid's order). Without
    validation lists, or recommend.tune false: recommend.rank/reg_param/alpha."""
    import itertools
    import scipy.sparse as sp
    from deepmine.mining import als_grid
    r, n = config.recommend, config.ncf
    configured = {"rank": r.rank, "reg_param": r.reg_param, "alpha": r.alpha}
    if not r.tune or not len(validation):
        return configured, []
    coded = als_grid.Coded(sp.csr_matrix((train["strength"].to_numpy(np.float64),
                                          (train[USER].to_numpy(), train[ITEM].to_numpy())),
                                         shape=(n_users, n_items)),
                           pd.Index(range(n_users)), pd.Index(range(n_items)))
    grid = []
    for reg, alpha in itertools.product(r.tune_reg_param, r.tune_alpha):
        users, items = als_grid.fit(coded, r.rank, reg, alpha, True, r.max_iter, r.seed)
        scored = protocol_metrics(factor_scorer(users, items), validation, n.k)
        grid.append({"rank": r.rank, "reg_param": reg, "alpha": alpha,
                     f"val_hr_at_{n.k}": _round(scored["hr"]),
                     f"val_ndcg_at_{n.k}": _round(scored["ndcg"])})
    best = max(grid, key=lambda g: (g[f"val_hr_at_{n.k}"], g[f"val_ndcg_at_{n.k}"]))
    return {key: best[key] for key in ("rank", "reg_param", "alpha")}, grid


def fit_spark_als(spark: SparkSession, train: DataFrame, point: dict[str, Any], config: Config,
                  n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Spark ALS (implicit preferences) on the training pairs -> (user factors, item factors) as
    dense arrays by index; a user or item it did not see scores 0."""
    from pyspark.ml.recommendation import ALS
    r = config.recommend
    als = ALS(rank=point["rank"], regParam=point["reg_param"], alpha=point["alpha"],
              maxIter=r.max_iter, implicitPrefs=True, seed=r.seed,
              checkpointInterval=r.checkpoint_interval, numUserBlocks=r.num_blocks or 1,
              numItemBlocks=r.num_blocks or 1, userCol=USER, itemCol=ITEM, ratingCol="strength")
    model = als.fit(train.select(USER, ITEM, "strength"))
    users, items = np.zeros((n_users, point["rank"])), np.zeros((n_items, point["rank"]))
    for row in model.userFactors.collect():
        users[row["id"]] = row["features"]
    for row in model.itemFactors.collect():
        items[row["id"]] = row["features"]
    return users, items


# =============================================================== predictions (Spark)

def top_unseen(spark: SparkSession, spec: dict, weights: bytes, owned: DataFrame,
               users: DataFrame, items: list[str], n: int) -> DataFrame:
    """Every indexed customer's n best products it does not have: owned (customer_id,
    product_id) pairs are masked; scored in numpy blocks inside the executors."""
    shipped = spark.sparkContext.broadcast(weights)
    spec_text, n_items = json.dumps(spec), len(items)
    item_index = spark.createDataFrame(list(enumerate(items)), f"{ITEM} int, {PRODUCT} string")
    seen = (owned.join(F.broadcast(item_index), PRODUCT).groupBy(CUSTOMER)
            .agg(F.collect_list(ITEM).alias("_seen")))
    rows = users.join(seen, CUSTOMER, "left").select(CUSTOMER, USER, "_seen")
    take = min(n, n_items)
    block = max(1, SCORE_BLOCK_PAIRS // max(n_items, 1))

    def best(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch
        from deepmine.deep.models import build
        torch.set_num_threads(1)
        model = build(json.loads(spec_text))
        model.load_state_dict(torch.load(io.BytesIO(shipped.value), weights_only=True))
        score = model_scorer(model)
        for frame in batches:
            for a in range(0, len(frame), block):
                part = frame.iloc[a:a + block]
                u = np.repeat(part[USER].to_numpy().astype(np.int64)[:, None], n_items, axis=1)
                logits = score(u, np.broadcast_to(np.arange(n_items), u.shape))
                for i, s in enumerate(part["_seen"]):
                    if s is not None and len(s):
                        logits[i, np.asarray(s, dtype=np.int64)] = -np.inf
                top = np.argsort(-logits, axis=1, kind="stable")[:, :take]
                top_scores = np.take_along_axis(logits, top, axis=1)
                keep = np.isfinite(top_scores)
                ranks = np.broadcast_to(np.arange(1, take + 1), top.shape)
                yield pd.DataFrame({
                    CUSTOMER: np.repeat(part[CUSTOMER].to_numpy(), take).reshape(top.shape)[keep],
                    ITEM: top[keep].astype(np.int32), "rank": ranks[keep].astype(np.int32),
                    "score": 1.0 / (1.0 + np.exp(-top_scores[keep]))})

    out = rows.mapInPandas(best, f"{CUSTOMER} string, {ITEM} int, rank int, score double")
    return (out.join(F.broadcast(item_index), ITEM)
            .select(CUSTOMER, PRODUCT, "rank", "score"))


# =============================================================== stage

def ncf_spec(config: Config, n_users: int, n_items: int) -> dict[str, Any]:
    n = config.ncf
    return {"kind": n.model, "n_users": n_users, "n_items": n_items, "factors": n.factors,
            "mlp_layers": list(n.mlp_layers),
            "sparse_embeddings": n_users + n_items > n.sparse_embeddings_above}


# the NeuMF phase's own keys: a pretrained part does not depend on them (so trying another
# pretrain_lr reuses the parts' finished checkpoints); the NeuMF phase sees them through its
# args (lr, the content-named starting weights, the optimizer in its spec)
PHASE_KEYS = ("model", "pretrain", "pretrain_alpha", "pretrain_lr")


def ncf_args(config: Config, spec: dict, sets: dict[str, list[str]], validation: list[str],
             run_date: str, checkpoint_dir: str, layout: list, lr: float | None = None,
             init_weights_url: str = "", part: str = ""):
    from deepmine.deep.trainer import TrainArgs
    t, n = config.train, config.ncf
    if t.num_proc < 1:
        raise ConfigError(f"config key 'train.num_proc': expected >= 1, found {t.num_proc}")
    for name, urls in [*sets.items(), ("validation", validation)]:
        if len(urls) < t.num_proc:
            raise ValueError(f"train_ncf: {name} has {len(urls)} non-empty row groups for "
                             f"{t.num_proc} ranks (too little data for features.row_groups "
                             f"{config.features.row_groups}); Petastorm gives each rank whole "
                             "row groups")
    args = TrainArgs(task="ncf", name=NAME, spec=spec, init_weights_url=init_weights_url,
                     train_urls=[u for urls in sets.values() for u in urls],
                     eval_urls=validation, negative_sets=list(sets.values()), top_k=n.k,
                     checkpoint_dir=checkpoint_dir, epochs=n.epochs, batch_size=n.batch_size,
                     lr=n.lr if lr is None else lr, seed=t.seed, device=t.device,
                     reader_pool=t.reader_pool, shuffle_buffer=t.shuffle_buffer,
                     log_prefix=f"[train_{NAME}{' ' + part if part else ''}]",
                     patience=t.patience, min_delta=t.min_delta, validation_fraction=0.0,
                     budget_seconds=t.budget_seconds, max_retries=t.max_retries,
                     recovery_lr_factor=t.recovery_lr_factor)
    described = {k: v for k, v in dataclasses.asdict(args).items()
                 if k not in ("checkpoint_dir", "log_prefix", "fingerprint")}
    described.update(parts=layout, run_date=run_date,
                     sampling={k: v for k, v in dataclasses.asdict(n).items()
                               if k not in PHASE_KEYS})
    args.fingerprint = hashlib.sha256(json.dumps(described, sort_keys=True).encode()
                                      ).hexdigest()[:16]
    return args


def train_to_end(args, config: Config) -> dict[str, Any]:
    """The final checkpoint of `args`' training: launched on the ranks unless its checkpoint
    directory already holds this very training (same fingerprint) finished."""
    from deepmine.deep.train import launch
    from deepmine.deep.trainer import CheckpointStore
    store = CheckpointStore(args.checkpoint_dir)
    final = store.load_latest()
    if not (final and final.get("fingerprint") == args.fingerprint and final.get("finished")):
        launch(args, config)
        final = store.load_latest()
    if final is None or final.get("fingerprint") != args.fingerprint:
        raise RuntimeError(f"training {args.log_prefix} left no checkpoint in "
                           f"{args.checkpoint_dir}")
    return final


def write_state(lake: Lake, directory: str, stem: str, state: dict) -> str:
    """`state` as <directory>/<stem>-<sha256 of its bytes, 16>.pt (content-named, so a training
    that starts from it has another fingerprint when it changes); returns the URL."""
    from deepmine.deep.trainer import state_dict_bytes
    data = state_dict_bytes(state)
    url = f"{directory}/{stem}-{hashlib.sha256(data).hexdigest()[:16]}.pt"
    lake.write_bytes(url, data)
    return url


def pretrain_parts(config: Config, n_users: int, n_items: int, by_set: dict[str, list[str]],
                   validation_urls: list[str], run_date: str, checkpoints: str, layout: list,
                   lake: Lake, clock: "_Clock") -> tuple[dict[str, dict], str]:
    """He et al.'s pretraining: GMF, then MLP, on the same sets (Adam at ncf.lr, checkpoints in
    <checkpoints>/gmf, /mlp); returns their final checkpoints and the URL of NeuMF's starting
    weights made from them."""
    from deepmine.deep.models.ncf import neumf_state_from_parts
    finals = {}
    for kind in ("gmf", "mlp"):
        spec = {**ncf_spec(config, n_users, n_items), "kind": kind}
        args = ncf_args(config, spec, by_set, validation_urls, run_date, f"{checkpoints}/{kind}",
                        layout, part=kind)
        finals[kind] = train_to_end(args, config)
        clock.lap(f"training_{kind}", f"{len(finals[kind]['history'])} epochs")
    start = neumf_state_from_parts(finals["gmf"]["model"], finals["mlp"]["model"],
                                   config.ncf.pretrain_alpha)
    return finals, write_state(lake, checkpoints, "neumf_init", start)


def part_metrics(spec: dict, final: dict, lists: dict[str, pd.DataFrame], test_items: pd.DataFrame,
                 known: dict[int, np.ndarray], n_items: int, k: int, seed: int,
                 seconds: float) -> dict[str, Any]:
    """A pretrained part's figures: HR@k and NDCG@k on the validation and the test lists,
    recall@k, its epochs and seconds (the phase's, launch included)."""
    from deepmine.deep.models import build
    model = build(spec)
    model.load_state_dict(final["model"])
    score = model_scorer(model)
    val, test = (protocol_metrics(score, lists[role], k) for role in ("validation", "test"))
    summary, history = final.get("summary", {}), final["history"]
    return {f"val_hr_at_{k}": _round(val["hr"]), f"val_ndcg_at_{k}": _round(val["ndcg"]),
            f"hr_at_{k}": _round(test["hr"]), f"ndcg_at_{k}": _round(test["ndcg"]),
            f"recall_at_{k}": _round(full_ranking_recall(score, test_items, known, n_items, k,
                                                         seed)),
            "epochs_run": len(history), "best_epoch": summary.get("best_epoch"),
            "stop_reason": summary.get("stop_reason"), "failure": summary.get("failure"),
            "seconds": round(seconds, 3),
            "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 3)}


def run_train_ncf(spark: SparkSession, config: Config, run_date: str) -> dict:
    """Sample, train, evaluate and publish NCF for `run_date` (module docstring)."""
    from deepmine.deep.loader import parquet_parts, split_urls
    from deepmine.deep.train import publish_model_files
    from deepmine.deep.trainer import state_dict_bytes
    from deepmine.mining.recommend import _checkpoints_of_this_stage

    check_config(config)
    n, k = config.ncf, config.ncf.k
    lake = Lake(spark, config.lake.root)
    partition = f"run_date={run_date}"
    with StageRun(lake, run_date, f"train_{NAME}") as run, _checkpoints_of_this_stage(spark, lake):
        clock = _Clock(run.log)
        feedback = config.recommend.feedback
        pairs, owned = interactions(lake, feedback, run_date)
        indexed, user_ids, item_ids = index_pairs(pairs)
        n_users, n_items = len(user_ids), len(item_ids)
        if not n_users:
            raise ValueError(f"train_ncf: no {'purchases' if feedback == 'implicit' else 'ratings'}"
                             f" up to {run_date} in {lake.root}; nothing to learn from")
        split = leave_one_out(indexed).persist()
        try:
            roles = {r["role"]: r["count"] for r in split.groupBy("role").count().collect()}
            sets = training_set_count(n.negative_sets, n.epochs, roles.get("train", 0),
                                      n.negatives, n.max_sampled_rows)
            most, ranks = config.features.row_groups, config.train.num_proc
            groups = row_groups_for(roles.get("train", 0) * (1 + n.negatives), most, ranks)
            list_groups = row_groups_for(max(roles.get("test", 0), roles.get("validation", 0)),
                                         most, ranks)
            sampling = sampling_description(split, config, feedback, n_users, n_items, sets,
                                            (groups, list_groups))
            reuse = sampled_before(lake, partition, sampling)
            if not reuse:
                publish_training_sets(
                    lake, negative_sets(split, n_items, sets, n.negatives, groups, n.seed), sets,
                    groups, partition)
            lists, left_out = {}, {}
            for role, table in (("validation", VALIDATION_TABLE), ("test", TEST_TABLE)):
                if not reuse:
                    made = evaluation_lists(split, n_items, role, n.eval_negatives,
                                            n.seed).persist()
                    try:
                        left_out[role] = made.where(F.col("target") < 0).count()
                        publish_lists(lake, made.where(F.col("target") >= 0), table,
                                      list_groups, partition)
                    finally:
                        made.unpersist()
                lists[role] = lake.read(table, partition).toPandas()
            if reuse:
                left_out = reuse["left_out"]
            else:
                lake.publish_files(SAMPLING_TABLE, partition, {"sampling.json": json.dumps(
                    {**sampling, "left_out": left_out}, indent=1).encode()})
            train_pd = split.where(F.col("role") == "train").select(USER, ITEM, "strength") \
                .toPandas()
            held = split.where(F.col("role") != "train").select(USER, ITEM, "role").toPandas()
        finally:
            split.unpersist()
        parts = parquet_parts(lake.partition_url(TRAIN_TABLE, partition))
        set_rows = sum(p.rows for p in parts) // max(sets, 1)
        clock.lap("sampling", f"{sets} training sets of {set_rows} rows, {len(lists['test'])} "
                              f"test and {len(lists['validation'])} validation lists"
                              f"{' (sampled before for these inputs: reused)' if reuse else ''}")
        run.counts.update(interactions=sum(roles.values()), customers=n_users, products=n_items,
                          train_pairs=roles.get("train", 0), test_users=len(lists["test"]),
                          validation_users=len(lists["validation"]),
                          validation_users_left_out=left_out.get("validation", 0),
                          test_users_left_out=left_out.get("test", 0),
                          training_rows_per_set=set_rows)

        by_set = {set_name(s): split_urls(parts, set_name(s)) for s in range(sets)}
        validation_urls = split_urls(parquet_parts(lake.partition_url(VALIDATION_TABLE,
                                                                      partition)))
        checkpoints = lake.url("models", NAME, "_checkpoints", partition)
        spec = ncf_spec(config, n_users, n_items)
        layout = [(p.url, p.row_group_rows) for p in parts]
        pretrain = n.pretrain and n.model == "neumf"
        if pretrain:
            finals, start_url = pretrain_parts(config, n_users, n_items, by_set,
                                               validation_urls, run_date, checkpoints, layout,
                                               lake, clock)
            args = ncf_args(config, {**spec, "optimizer": "sgd"}, by_set, validation_urls,
                            run_date, checkpoints, layout, lr=n.pretrain_lr,
                            init_weights_url=start_url)
        else:
            args = ncf_args(config, spec, by_set, validation_urls, run_date, checkpoints, layout)
        final = train_to_end(args, config)
        weights = state_dict_bytes(final["model"])
        history = list(final["history"])
        summary = final.get("summary", {})
        clock.lap("training", f"{len(history)} epochs on {config.train.num_proc} ranks")

        from deepmine.deep.models import build
        model = build(spec)
        model.load_state_dict(final["model"])
        model.eval()
        item_users = np.bincount(train_pd[ITEM].to_numpy(), minlength=n_items)
        point, grid = als_point(config, train_pd, lists["validation"], n_users, n_items)
        train_frame = spark.createDataFrame(
            train_pd.assign(strength=train_pd["strength"].astype(float)),
            f"{USER} int, {ITEM} int, strength double")
        als_users, als_items = fit_spark_als(spark, train_frame, point, config, n_users, n_items)
        clock.lap("als", f"{len(grid)} points tuned, {point} fit by Spark")
        scorers = {"": model_scorer(model), "baseline_": popularity_scorer(item_users),
                   "als_": factor_scorer(als_users, als_items)}
        test = lists["test"]
        test_items = held[held["role"] == "test"][[USER, ITEM]]
        test_items = test_items[test_items[USER].isin(test[USER])]
        if n.recall_users and len(test_items) > n.recall_users:
            test_items = test_items.sample(n.recall_users, random_state=n.seed)
        known = {int(u): g[ITEM].to_numpy().astype(np.int64) for u, g in pd.concat(
            [train_pd[[USER, ITEM]], held[held["role"] == "validation"][[USER, ITEM]]])
            .groupby(USER)}
        metrics: dict[str, Any] = {"feedback": feedback, "model": n.model}
        for prefix, score in scorers.items():
            scored = protocol_metrics(score, test, k)
            metrics[f"{prefix}hr_at_{k}"] = _round(scored["hr"])
            metrics[f"{prefix}ndcg_at_{k}"] = _round(scored["ndcg"])
            metrics[f"{prefix}recall_at_{k}"] = _round(full_ranking_recall(
                score, test_items, known, n_items, k, n.seed))
        metrics.update(
            protocol=f"leave-one-out: each user's latest interaction ranked among "
                     f"{n.eval_negatives} items the user never touched (seeded, ncf.seed "
                     f"{n.seed}); recall_at_{k} over every item not touched in training or "
                     f"validation ({len(test_items)} users)",
            baseline="popularity: items by number of training users",
            als={"params": point, "implicit_prefs": True, "tuning": grid,
                 "strength": "purchase count" if feedback == "implicit" else "1 per rating"},
            gate=f"hr_at_{k} above popularity's")
        if pretrain:
            metrics["pretrain"] = {
                kind: part_metrics({**spec, "kind": kind}, finals[kind], lists, test_items,
                                   known, n_items, k, n.seed,
                                   clock.seconds[f"training_{kind}"])
                for kind in ("gmf", "mlp")}
            metrics["pretrain"].update(
                alpha=n.pretrain_alpha, optimizer="sgd", lr=n.pretrain_lr,
                start_weights=start_url,
                **{f"start_{key}": _round(summary.get(f"init_{key}"))
                   for key in (f"val_hr_at_{k}", f"val_ndcg_at_{k}")})
        clock.lap("evaluation")
        print(f"[train_{NAME}] test HR@{k} {metrics[f'hr_at_{k}']} NDCG@{k} "
              f"{metrics[f'ndcg_at_{k}']} recall@{k} {metrics[f'recall_at_{k}']}; popularity "
              f"{metrics[f'baseline_hr_at_{k}']}/{metrics[f'baseline_ndcg_at_{k}']}; ALS "
              f"{metrics[f'als_hr_at_{k}']}/{metrics[f'als_ndcg_at_{k}']}"
              + ("".join(f"; {kind} {metrics['pretrain'][kind][f'hr_at_{k}']}/"
                         f"{metrics['pretrain'][kind][f'ndcg_at_{k}']}"
                         for kind in ("gmf", "mlp")) if pretrain else ""))
        ours, theirs = metrics[f"hr_at_{k}"], metrics[f"baseline_hr_at_{k}"]
        if ours is not None and theirs is not None and ours <= theirs:
            run.degrade(f"NCF ({n.model}) test HR@{k} {ours:.4f} does not beat popularity's "
                        f"{theirs:.4f} (same lists)")
        if summary.get("failure"):
            run.degrade(f"training failed ({summary['failure']}) on all "
                        f"{len(summary.get('attempts', []))} attempts")

        users_frame = spark.createDataFrame(list(enumerate(user_ids)),
                                            f"{USER} int, {CUSTOMER} string")
        recs = top_unseen(spark, spec, weights, owned, users_frame, item_ids, n.top_n)
        rows = lake.publish(recs, PREDICTIONS, partition)
        clock.lap("predictions", f"{rows} rows")

        train_seconds = sum(h.get("seconds", 0.0) for h in history)
        train_samples = sum(h.get("samples", 0) for h in history)
        metrics.update(
            spec=spec, negative_sets=sets, negatives_per_positive=n.negatives,
            epochs_run=len(history), ranks=config.train.num_proc, batch_size=args.batch_size,
            launcher=config.train.launcher, best_epoch=summary.get("best_epoch"),
            stop_reason=summary.get("stop_reason"), failure=summary.get("failure"),
            retries=max(len(summary.get("attempts", [])) - 1, 0),
            attempts=summary.get("attempts", []), budget_seconds=config.train.budget_seconds,
            train_seconds=round(train_seconds, 3),
            train_samples_per_s=round(train_samples / train_seconds, 1) if train_seconds else None,
            phase_seconds=clock.seconds, history=history)
        import torch
        from deepmine.deep.export import torchscript_bytes
        files = {"weights.pt": weights, "spec.json": json.dumps(spec, indent=1).encode(),
                 "metrics.json": json.dumps(metrics, indent=1, default=float).encode(),
                 "users.json": json.dumps(user_ids).encode(),
                 "items.json": json.dumps(item_ids).encode(),
                 "model.torchscript.pt": torchscript_bytes(model, torch.zeros(2, 2))}
        model_url = publish_model_files(lake, NAME, run_date, files)
        if config.mlflow.enabled:  # registered, promoted on its gate (deepmine.deep.registry)
            from deepmine.deep.train import keep_fresh
            rows = keep_fresh(run, lake, config, NAME, run_date, args, metrics, files, model_url,
                               None, None, CUSTOMER, partition, rows, None)
        run.counts["predictions"] = rows
        run.metrics.update(metrics)
        run.outputs.update(model=model_url, predictions=lake.partition_url(PREDICTIONS, partition),
                           training_sets=lake.partition_url(TRAIN_TABLE, partition),
                           test_lists=lake.partition_url(TEST_TABLE, partition),
                           checkpoints=checkpoints)
    return {**run.counts, "metrics": run.metrics}
