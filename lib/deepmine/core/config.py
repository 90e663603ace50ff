"""The one typed configuration object, loaded from YAML and validated on load.

Every section is a dataclass whose fields carry their defaults and a docstring-style comment.
`load_config(path, overrides)` reads the YAML file, applies `--set section.key=value` overrides,
and checks every key and type: an unknown key, a wrong type or a missing file raises
`ConfigError` naming the key or the path. The config is data only: YAML is read with
`yaml.safe_load` and nothing in it is ever evaluated.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class SparkConfig:
    master: str = "local[2]"  # any Spark master URL; local[N] is the embedded default
    app_name: str = "deepmine"
    shuffle_partitions: int = 4  # sized to the data and the cores, not Spark's default 200
    ui_enabled: bool = True  # forced off when the CI environment variable is set
    local_ip: str = "127.0.0.1"  # bind address in local mode: all traffic stays on loopback
    driver_memory: str = "4g"
    checkpoint_dir: str = ""  # ALS and long lineages; empty = <lake.root>/_checkpoints
    options: dict[str, str] = field(default_factory=dict)  # any other spark.* setting


@dataclass
class LakeConfig:
    root: str = "lake"  # URL (file:///..., hdfs://..., s3a://...); relative = from the working dir


@dataclass
class IngestConfig:
    format: Literal["csv", "json", "parquet"] = "csv"
    delimiter: str = ","
    # source column -> canonical column, for sources whose header differs from the canonical one
    column_map: dict[str, str] = field(default_factory=dict)
    # tried in order; Spark datetime patterns. The default holds only year-first forms, which no
    # two can read differently: day/month order cannot be guessed (01/02/2026 is 1 February in
    # most of the world, 2 January in the US), so a source that writes such dates names its
    # format here (e.g. ["d/M/yyyy H:mm"]); two formats that swap day and month are refused.
    timestamp_formats: list[str] = field(default_factory=lambda: [
        "yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd HH:mm", "yyyy-MM-dd",
        "yyyyMMdd"])
    max_field_chars: int = 1000  # a longer field is quarantined as oversized_field
    # A quoted field may hold line breaks (RFC 4180): its record then spans several lines. A
    # quote still open after this many more lines is taken as unbalanced, and its line alone is
    # quarantined as unbalanced_quote (so one stray quote cannot swallow the rest of a file).
    max_record_lines: int = 100
    # ratings outside [rating_min, rating_max] are quarantined as rating_out_of_range (the
    # default admits 1-5 stars and half stars from 0.5)
    rating_min: float = 0.5
    rating_max: float = 5.0


@dataclass
class GenerateConfig:
    """Synthetic input made on first use when `input.path` has no data (the embedded default)."""
    lines: int = 20000
    seed: int = 7
    dirty_rate: float = 0.02
    start_date: str = "2025-11-23"
    days: int = 365
    customers: int = 0  # 0 = derived from lines
    products: int = 0  # 0 = derived from lines


@dataclass
class InputConfig:
    """Where the nightly finds raw input for a run date when `--input` is not given."""
    transactions: str = "data/generated/transactions.csv"  # empty = no transactions input
    ratings: str = ""  # empty = no ratings input
    images: str = ""  # empty = no images input
    reviews: str = ""  # empty = no reviews input (the reviews stages are skipped)
    products: str = "data/generated/products.csv"  # product_id -> category; empty = none
    generate_if_missing: bool = True  # make synthetic transactions if the path does not exist


@dataclass
class RfmConfig:
    """RFM scores, named segments and K-means customer clusters (lib/deepmine/mining/rfm.py)."""
    k_min: int = 2  # K-means k is chosen by silhouette over [k_min, k_max]
    k_max: int = 6
    seed: int = 42  # K-means seed: same input + seed -> same clusters
    max_iter: int = 50  # K-means iterations per run
    n_init: int = 2  # K-means runs per k (seeds seed, seed+1, ...); the lowest cost wins
    # up to this many customers the K-means sweep over k runs on the driver with scikit-learn on
    # the whole table; above it, the sweep runs on a seeded sample of this size and only the
    # chosen k's centres are refined on every customer by Lloyd's iterations in Spark
    local_max_customers: int = 200_000
    # silhouette (the k-choosing score) on a seeded sample of at most this many customers: its cost
    # grows with the square of the sample
    silhouette_sample: int = 10_000
    # how returns count in monetary: net = a return subtracts its amount; ignore = purchases only
    # (recency and frequency always count purchase invoices only)
    returns: Literal["net", "ignore"] = "net"


@dataclass
class RulesConfig:
    """FP-growth frequent itemsets and association rules (lib/deepmine/mining/rules.py)."""
    min_support: float = 0.01  # a fraction of baskets
    min_confidence: float = 0.3
    max_len: int = 3  # the longest itemset mined; rules come from itemsets up to this length
    min_basket_count: int = 0  # > 0: minimum support as a number of baskets (min_support unused)
    level: Literal["product", "category"] = "product"  # items: products, or their categories
    category_column: str = "category"  # input.products column that names a product's category
    num_partitions: int = 0  # FPGrowth partitions; 0 = spark.shuffle_partitions


@dataclass
class ChurnConfig:
    """Churn risk and next-period spend per customer (lib/deepmine/mining/churn.py)."""
    horizon_days: int = 90  # churned = no purchase in (D, D + horizon_days]
    # cutoffs whose examples are stacked: D - horizon_days (the latest whose labels are known by
    # D), then each cutoff_step_days earlier (0 = one horizon apart)
    training_cutoffs: int = 2
    cutoff_step_days: int = 0
    # customers (a seeded hash) held out of training; the candidates and the baselines are
    # compared on them at the latest cutoff
    validation_share: float = 0.25
    # candidates, chosen by validation AUC (churn) and RMSE (spend) on the cutoff D - horizon
    classifiers: list[str] = field(default_factory=lambda: ["logistic", "gbt"])
    regressors: list[str] = field(default_factory=lambda: ["linear", "random_forest"])
    # the churn model the last earlier run published stays unless another candidate's validation
    # AUC is higher by more than this: near-equal candidates (GBT 0.956, the mean of classifiers
    # 0.958 on the five-night drill) otherwise swap nightly, and each swap moves every score
    # (PSI 1.49 night to night), which the drift stage reports as drift
    switch_margin: float = 0.005
    # a selection step after scaling; none by default: on CDNOW it kept the out-of-time AUC
    # (0.8399 with the top 12 of 25 features, 0.8403 with all) while costing a pass
    selector: Literal["none", "univariate", "pca"] = "none"
    top_features: int = 12  # univariate: the features kept
    pca_components: int = 8  # pca: the components kept
    risk_bands: list[float] = field(default_factory=lambda: [0.4, 0.7])  # medium from, high from
    # candidate fits run this many at a time (threads of the driver, as CrossValidator's
    # parallelism); 0 = spark.default.parallelism. The models are the same whatever it is
    parallelism: int = 0
    seed: int = 42


@dataclass
class ForecastConfig:
    """Demand forecasts per product, category or in total (lib/deepmine/mining/forecast.py)."""
    frequency: Literal["day", "week", "month"] = "week"  # period of the series (weeks start Monday)
    horizon: int = 8  # periods forecast after the last complete period ending by D
    # series: one per product, per category (input.products names each product's category), or
    # one for all lines
    level: Literal["product", "category", "total"] = "category"
    season_length: int = 0  # periods per seasonal cycle; 0 = 7 (day), 52 (week), 12 (month)
    # candidates per series (statsforecast): auto_arima, auto_ets, seasonal_naive, croston (only
    # for intermittent series), arima (a plain ARIMA(1,1,1), the textbook model), mstl (only
    # for seasons longer than max_auto_season, when the history holds two of them: MSTL's
    # seasonal decomposition, the season repeated and the rest forecast by a non-seasonal
    # AutoETS; Bandara, Hyndman and Bergmeir 2021), mean_of_models (the mean of the other
    # candidates' forecasts and bands: a forecast combination, which the M4 competition found
    # more accurate than choosing one model; it needs two others)
    models: list[str] = field(default_factory=lambda: [
        "auto_arima", "auto_ets", "seasonal_naive", "croston", "arima", "mstl",
        "mean_of_models"])
    # rolling-origin backtest: windows of `horizon` periods each, the last one ending at D's
    # last complete period; the model with the smallest error over them is chosen per series,
    # and the MASE reported on them grades each window with the model the other windows choose
    backtest_windows: int = 3
    # 0: as above (cross-validation over the windows). N > 0: N more windows before them, used
    # only to choose, and each reported window graded with the model chosen on every window
    # before it (forward in time, as the nightly chooses: stricter, N more fits per model)
    selection_windows: int = 0
    # periods a series needs before its first backtest origin; shorter (or all-zero) series get
    # the fallback (seasonal naive, the mean, or zeros) and are counted in series_skipped
    min_history: int = 12
    intermittent_zero_share: float = 0.3  # croston is a candidate from this share of zero periods
    # AutoARIMA/AutoETS fit the seasonal cycle only up to this length (AutoARIMA with 52 weekly
    # seasons took 8 s per fit here; AutoETS allows 24 at most); longer seasons: non-seasonal fits
    # beside the seasonal naive and mstl
    max_auto_season: int = 24
    # 80% intervals: conformal (forecast +- the 80th percentile of the chosen model's absolute
    # backtest errors, pooled over the windows' steps) or the model's own. Conformal by default:
    # on CDNOW weekly the models' own (a random walk's) held 100% of the backtest points,
    # conformal 75%; on the planted daily series both held 80-85%
    intervals: Literal["model", "conformal"] = "conformal"


@dataclass
class RecommendConfig:
    """ALS recommendations and their evaluation (lib/deepmine/mining/recommend.py)."""
    # implicit: purchase counts from clean/transactions; explicit: ratings from clean/ratings
    feedback: Literal["implicit", "explicit"] = "implicit"
    top_n: int = 10  # recommendations per customer in mining/recommendations
    seed: int = 42  # ALS initialisation and the random rating split
    rank: int = 10  # latent factors
    reg_param: float = 0.1  # ALS regularization (Spark scales it by each user's/item's count)
    alpha: float = 1.0  # implicit only: confidence = 1 + alpha * purchase count
    max_iter: int = 15  # ALS sweeps
    # explicit only, the model behind predictions and lists: als (plain ALS); baseline_als (ALS
    # on what the baseline predictors, mean + damped user and item biases, leave unexplained, the
    # biases added back: Koren 2008); blend ((1 - w) * als + w * baseline_als, w chosen on the
    # validation split, blend_weight without tuning); auto (tuning picks among the three on the
    # validation split and keeps plain ALS unless another is better by three paired standard
    # errors; plain ALS without tuning). Measured (docs/recommend-tuning.md): MovieLens 100k
    # chose a blend (w 0.55-0.6), test RMSE 0.9066/0.9077/0.9029 on split seeds 42/1/2 against
    # 0.9213/0.9240/0.9178 for tuned plain ALS; planted user and item biases: 0.758 against 0.871
    explicit_model: Literal["auto", "als", "baseline_als", "blend"] = "auto"
    blend_weight: float = 0.5  # blend without tuning: the share of baseline_als
    # damping = pseudo-ratings at the mean that pull a rarely rated user's or item's bias to 0
    bias_damping: float = 10.0
    biases: bool = False  # older spelling of explicit_model: baseline_als (read so when auto)
    checkpoint_interval: int = 10  # checkpoint factors every N sweeps so long lineages stay short
    # ALS user and item blocks. ALS seeds each block, so the factors depend on this number: it is
    # fixed for reproducible runs; raise it on a cluster (0 = spark.default.parallelism)
    num_blocks: int = 4
    evaluate: bool = True  # score ALS beside its baseline (popularity; item means for ratings)
    metrics_k: int = 10  # cut-off of precision/recall/MAP/NDCG@k (names say k: ndcg_at_10)
    # implicit: the last share of each customer's invoices (customers with >= 2 invoices);
    # explicit: a random share of the ratings (a hash of seed, user and item: stable across runs)
    test_fraction: float = 0.2
    # grid search over these on a validation split cut from the training part (the same kind of
    # split as the evaluation's, cut again from its training part), fit in numpy on the driver
    # (lib/deepmine/mining/als_grid.py: Spark ALS's objective, a fraction of a second per point on the
    # nightly's data, where one Spark fit and its scoring took about 6.5 s); the best point (NDCG@k
    # implicit, RMSE explicit) replaces rank/reg_param/alpha above only when it beats them on the
    # validation split by more than three paired standard errors, then it is used for the
    # evaluation and the final fit. Measured (docs/recommend-tuning.md): no single setting wins
    # everywhere (reg_param 0.15 on MovieLens, 0.3-1.0 with alpha 3 on generated data), and a point
    # two standard errors better on 20,000 generated lines ranked worse on the test split (the
    # implicit validation part is the latest invoices, the test part later ones). Rank 20 cost 4x
    # rank 10 on Instacart's 11,000 products and won nowhere by more than noise, so the default
    # grid keeps rank 10
    tune: bool = True
    tune_rank: list[int] = field(default_factory=lambda: [10])
    tune_reg_param: list[float] = field(default_factory=lambda: [0.1, 0.15, 0.3, 1.0])
    tune_alpha: list[float] = field(default_factory=lambda: [1.0, 3.0])  # implicit only
    # training rows (purchase lines; ratings) the grid is fit on at most; above it, on a seeded
    # hash sample of the customers (each keeps all its rows). A cost budget: the numpy grid's time
    # is linear in its rows (about 4 µs per purchase line per point on one core: the default 8
    # points on 200,000 lines ~6 s), while the choice's resolution grows only with the square root
    # of the validation customers (1M generated lines: 6,794 of them in the sample, 3 paired
    # standard errors = 0.006 NDCG@10; the same point as the grid on all 25,337 chose, which took
    # 130 s on a loaded machine; docs/recommend-tuning.md)
    tune_max_rows: int = 200_000


@dataclass
class NcfConfig:
    """Neural collaborative filtering, `deepmine train --model ncf` (lib/deepmine/deep/ncf.py,
    deep/models/ncf.py; He et al. 2017). The interactions follow recommend.feedback: implicit =
    every (customer, product) bought in clean/transactions, explicit = every rated pair of
    clean/ratings (any rating counts as an interaction). Each user's latest interaction is the
    test item, the one before it the validation item (users with 3 or more interactions; with 2,
    the test item only); the rest is trained on. Training runs through the shared trainer (train.*:
    num_proc, launcher, patience, budget_seconds, max_retries, lr, seed); the keys below are the
    model's and the protocol's."""
    model: Literal["neumf", "gmf", "mlp"] = "neumf"  # He et al.'s three networks
    factors: int = 16  # GMF's predictive factors (its embedding size)
    mlp_layers: list[int] = field(default_factory=lambda: [64, 32, 16])  # [0] = 2 x embedding
    negatives: int = 4  # sampled negatives per training positive (the paper's 4)
    # training sets sampled in Spark before training, each with fresh negatives (seeded); epoch e
    # reads set e mod negative_sets. 0 = one per epoch (ncf.epochs of them): fresh every epoch
    negative_sets: int = 0
    # a cost cap: the rows of all sets together (positives and negatives). When the sets asked
    # for would hold more, fewer are sampled (at least one) and the epochs cycle through them: at
    # 1M generated lines a set holds ~2.7M rows and 20 of them took longer to sample and write
    # than train.budget_seconds lets training read. 0 = no cap
    max_sampled_rows: int = 10_000_000
    epochs: int = 20  # most epochs (early stopping on validation HR@k usually ends it sooner)
    batch_size: int = 256  # per rank
    # with more embedding rows than this (users + items), the embeddings' gradients are sparse
    # and Adam updates only the rows a batch looked up (lazy Adam, as torch's SparseAdam): dense
    # Adam updates every row every step, 20 ms a step at 40,000 users and 250 ms at 400,000 on
    # one core, whatever the batch. At or below it, dense Adam as He et al. train
    sparse_embeddings_above: int = 20_000
    lr: float = 0.001  # per rank; multiplied by train.num_proc (Adam)
    eval_negatives: int = 99  # the items each held-out item is ranked among (the paper's 99)
    k: int = 10  # cut-off of HR@k, NDCG@k and recall@k (names say k: hr_at_10)
    top_n: int = 10  # recommendations per customer in predictions/ncf
    seed: int = 42  # negative sampling, the evaluation lists, the index of the training rows
    # full-ranking recall@k is computed on at most this many users (a seeded sample); 0 = all
    recall_users: int = 5000
    # neumf only: He et al.'s pretraining (section 3.4.1): GMF, then MLP, trained first (Adam at
    # ncf.lr, the same negative sets, each its own early stopping), then NeuMF started from both
    # (output layer [alpha h_GMF, (1 - alpha) h_MLP]) and trained with plain SGD at pretrain_lr
    # off: on MovieLens 100k it gains 0.016 validation HR@10 for +75% training time, on generated
    # purchases the parts stall near popularity and it loses 0.11 (README, "Neural recommender")
    pretrain: bool = False
    pretrain_alpha: float = 0.5  # the GMF part's weight in NeuMF's starting output layer
    # per rank, multiplied by train.num_proc (SGD, NeuMF phase); 0.01 chosen among 0.001, 0.01,
    # 0.05 on MovieLens 100k's validation lists
    pretrain_lr: float = 0.01


@dataclass
class TextConfig:
    """Product reviews: ingest checks, labels, text preparation and the baseline
    (lib/deepmine/deep/text.py)."""
    # labels from the star rating: positive from positive_min, negative up to negative_max; the
    # reviews between are scored but not trained on
    positive_min: float = 4.0
    negative_max: float = 2.0
    max_chars: int = 20000  # a longer review text is quarantined as oversized_text
    # words: split on anything that is not a letter or digit (space-separated languages);
    # chars: character n-grams (1..char_ngrams) over runs of letters, for languages written
    # without spaces (Chinese, Japanese); auto: chars for a review whose letters are mostly CJK
    tokenizer: Literal["auto", "words", "chars"] = "auto"
    char_ngrams: int = 2
    # removed from the models' and the baseline's tokens: none (default; stop words carry
    # sentiment) or english (Spark ML's list less its negations); the summary's terms always
    # leave that list out
    stop_words: Literal["english", "none"] = "none"
    vocab_size: int = 20000  # most frequent tokens kept (Spark ML CountVectorizer)
    min_count: int = 2  # reviews a token must appear in to enter the vocabulary
    max_tokens: int = 200  # token ids per review: longer cut, shorter padded with 0
    embedding_dim: int = 64  # Spark ML Word2Vec vector size (initialises the models' embeddings)
    word2vec_iterations: int = 3
    embeddings: Literal["fine_tune", "static"] = "fine_tune"
    test_share: float = 0.2  # reviews without a split: a seeded hash of review_id picks test
    summary_terms: int = 5  # terms per product that most set its negative reviews apart
    seed: int = 42


@dataclass
class NightlyConfig:
    """Which stages the nightly runs (lib/deepmine/nightly.py)."""
    skip_stages: list[str] = field(default_factory=list)  # stage names left out, e.g. [train_cnn]


@dataclass
class PruneConfig:
    """Pruning of the CNN after its training (lib/deepmine/deep/prune.py): global magnitude
    pruning to `sparsity`, fine-tuned through the same trainer for `epochs` from the trained
    weights, made permanent and quantized to int8; the manifest compares float, pruned and
    pruned+int8 (accuracy, non-zero share, gzip size, time per image). 0 = off."""
    sparsity: float = 0.0
    epochs: int = 2


@dataclass
class MlflowConfig:
    """The model registry (lib/deepmine/deep/registry.py): every training logged to MLflow and
    registered as a version; the `champion` alias moves only when tonight's version holds up."""
    enabled: bool = True
    # empty = a SQLite store under a local lake (<lake.root>/_mlflow/mlflow.db, artifacts
    # beside it); a cluster points it at the team's server, e.g. http://mlflow.internal:5000
    tracking_uri: str = ""
    experiment: str = "deepmine"
    model_prefix: str = "deepmine-"  # registered model names: <prefix><model name>, e.g. deepmine-cnn
    # tonight's version is promoted unless its held-out score (CNN accuracy, text AUC) falls
    # below the champion's on the same rows by more than this
    promotion_tolerance: float = 0.005
    # warm start (classifiers: the CNN, and the text models while their vocabulary holds): when
    # an earlier night's champion has tonight's spec, training starts from its weights for
    # warm_start_epochs; a full training instead every full_retrain_every nights (counting the
    # champion's warm starts since its last full one) or when the drift stage asks for one
    warm_start: bool = True
    warm_start_epochs: int = 2
    full_retrain_every: int = 7


@dataclass
class DriftConfig:
    """Drift of the models' inputs and scores against their last full training's snapshot
    (lib/deepmine/ops/drift.py): `mining/drift`, the report's drift table, full retrains."""
    # PSI over the reference's quantile bins; over this a column has drifted (Siddiqi 2006:
    # under 0.1 stable, 0.1-0.25 some shift, over 0.25 a real one)
    psi_threshold: float = 0.2
    # a column drifts by the two-sample KS test when p < ks_alpha and the statistic (the largest
    # gap between the two distribution functions) is at least ks_min_statistic: with tens of
    # thousands of rows a shift too small to matter is significant
    ks_alpha: float = 0.01
    ks_min_statistic: float = 0.1
    bins: int = 10  # quantile bins of the reference for the PSI (deciles)
    quantile_accuracy: int = 10_000  # percentile_approx's accuracy (relative error 1/accuracy)


@dataclass
class ImagesConfig:
    height: int = 28
    width: int = 28
    # labels are 0..classes-1; another label is quarantined at ingest as label_out_of_range
    # (0 = any label >= 0). An image without a label is kept, for clustering and scoring only.
    classes: int = 0


@dataclass
class FeaturesConfig:
    """Feature tables for training (lib/deepmine/deep/features.py): `features/customers`, `features/images`."""
    # row groups per table (per split for images), each in its own file and of equal size (+-1 row):
    # Petastorm shards by row group, so this must be a multiple of train.num_proc for a fair share
    row_groups: int = 8
    # build features/images, the image models' input; false also leaves the image trainings out
    # of the nightly. The nightly leaves the table out for a night on which neither image
    # training runs (both in nightly.skip_stages), whatever this says
    images: bool = True
    # images when clean/images has none for the run: Fashion-MNIST from its Debian package, else
    # synthetic shapes; per split, 0 = all (the small default keeps the nightly fast on 2 cores)
    image_limit_train: int = 6000
    image_limit_test: int = 1000
    # customer vector: the RFM features weigh 1 each; the basket statistics and the category
    # shares are each scaled as a block to this total standard deviation (entries w/sqrt(n)), so
    # that they inform the clustering without outvoting recency, frequency and spend
    basket_weight: float = 0.5
    category_weight: float = 0.25
    # auto: clean/images, else Fashion-MNIST from its package, else synthetic; or force one
    image_source: Literal["auto", "fashion_mnist", "synthetic"] = "auto"
    synthetic_images: int = 3000  # synthetic images made (train 6 : test 1) without any image source
    seed: int = 11  # which rows the image limits keep, and the synthetic images


@dataclass
class TrainConfig:
    """Horovod-launched PyTorch training (lib/deepmine/deep/train.py, trainer.py, models/).

    The defaults are the small nightly on 2 CPU cores; conf/full.yaml is the full-run config that
    reaches the quality targets (CNN test accuracy, image deep clustering)."""
    num_proc: int = 2  # Horovod ranks (Spark tasks with launcher spark)
    # the quality gate's allowance for sampling noise: a model within this (absolute accuracy)
    # below a strong baseline (logistic regression on the pixels, K-means on the raw vectors) is
    # not degraded; against the majority class there is no allowance (it must be beaten)
    gate_tolerance: float = 0.005
    launcher: Literal["spark", "horovodrun"] = "spark"  # horovod.spark.run, or a horovodrun process
    hosts: str = ""  # horovodrun -H (host:slots,...); empty = localhost:num_proc
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when torch sees a GPU
    # Every model trains until its validation score stops improving (early stopping) within
    # these bounds; the nightly stays quick through budget_seconds, not through a small epoch count
    epochs: int = 30  # CNN: most epochs
    patience: int = 3  # epochs without a better validation score before a phase stops
    min_delta: float = 0.001  # a validation loss must fall by this share to count as better
    validation_fraction: float = 0.1  # of the training rows, held out (seeded by row_id and seed)
    # wall-clock seconds per model and attempt (pretraining gets 0.6 of it when DEC follows);
    # the epoch that would overrun it is not started. 0 = no limit
    budget_seconds: float = 120.0
    # a failed attempt (NaN loss, a loss stuck at a learned-nothing model's, collapsed embeddings,
    # one cluster holding >90% of rows) starts again from a fresh initialization at
    # recovery_lr_factor times the learning rate, up to max_retries times; then it is degraded
    max_retries: int = 2
    recovery_lr_factor: float = 0.3
    batch_size: int = 128  # per rank
    lr: float = 0.001  # per rank; multiplied by num_proc (Adam)
    seed: int = 42  # weights, shuffling, K-means init: same data + seed -> same model
    # read_ahead: one thread decodes the next row groups while this one trains, in the same
    # order as dummy (read in the training thread); both make resumed training retrace an
    # uninterrupted one. thread: several readers, the order of row groups not fixed
    reader_pool: Literal["dummy", "read_ahead", "thread"] = "read_ahead"
    shuffle_buffer: int = 2048  # rows in the batched loader's shuffling buffer (0 = no row shuffle)
    # deep clustering (autoencoder): pretrain, K-means on embeddings, then DEC/IDEC refinement
    pretrain_epochs: int = 30  # images: most pretraining epochs (early stopping ends it sooner)
    customer_pretrain_epochs: int = 100  # customers: small table, many cheap epochs
    customer_batch_size: int = 32  # per rank; small, for enough steps on a few thousand rows
    # denoising pretraining: std of the Gaussian noise added to the inputs (the target stays clean).
    # On the standardized customer vector 0.3 made the embedding keep the planted groups for every
    # seed tried (K-means ARI 0.98-1.0 over 8 seeds; without noise 0.58-1.0)
    pretrain_noise: float = 0.0  # images (intensities in [0, 1])
    customer_pretrain_noise: float = 0.3
    # images: shift every training input by up to this many pixels (DEC-DA's augmentation; the
    # DEC target comes from the clean images). 0 = off
    augment_shift: int = 0
    # images: weight of the augmentation-consistency (NT-Xent) loss beside reconstruction while
    # pretraining (models/contrastive.py: two mirrored, zoomed, shifted views of every image pulled
    # together). On all of Fashion-MNIST it moved K-means on the embeddings from 0.50 to 0.60 and
    # the manifold's partition to 0.68 (README). Costs three encoder passes a step. 0 = off
    contrastive_weight: float = 0.0
    dec_max_epochs: int = 4  # images
    customer_dec_max_epochs: int = 20
    dec_tolerance: float = 0.001  # stop when fewer than this share of assignments change
    # idec: loss = reconstruction + dec_gamma * KL(P || Q), the decoder kept (Guo et al. 2017);
    # dec: KL(P || Q) alone, the decoder dropped after pretraining (Xie et al. 2016)
    dec_variant: Literal["idec", "dec"] = "idec"
    # the partition and centres DEC starts from: kmeans = K-means on the embeddings; umap = a
    # Gaussian mixture on a UMAP manifold of the embeddings, each centre the mean embedding of its
    # cluster (N2D's manifold step; worth it on images, minutes more on rank 0 at 70,000 images)
    dec_init: Literal["kmeans", "umap"] = "kmeans"  # images
    customer_dec_init: Literal["kmeans", "umap"] = "kmeans"
    # with kmeans: which of the kmeans_n_init restarts on the embeddings starts DEC. embedding =
    # K-means' own choice, the smallest within-cluster sum of squares in the embedding; input =
    # the one whose partition is the most compact in the input vectors. The customer vector is
    # built for Euclidean distance (standardized, blocks weighted); there the embedding made a
    # wrong partition and the right one near equals (sums of squares 265.0 and 265.9; 420 and 385
    # in the vectors) and K-means' pick was a coin flip (cluster_acc 0.64 vs 1.0 on generated
    # data; docs/training-quality.md). Pixel distances are what the image model is meant to
    # improve on, so images keep K-means' own choice
    dec_init_choice: Literal["embedding", "input"] = "embedding"  # images
    customer_dec_init_choice: Literal["embedding", "input"] = "input"
    # the first DEC epochs train toward the starting partition itself (0.9 on each row's cluster)
    # before the sharpened target takes over: with umap, the manifold's partition is not the
    # embedding's nearest-centre partition, and self-training from the latter loses the
    # difference. Counted within dec_max_epochs; 0 = off
    dec_warm_epochs: int = 0  # images
    customer_dec_warm_epochs: int = 0
    dec_gamma: float = 0.1  # IDEC: weight of the clustering (KL) loss beside reconstruction
    dec_alpha: float = 1.0  # degrees of freedom of the Student's t kernel
    image_clusters: int = 10
    customer_clusters: int = 4
    embedding_dim: int = 10  # images; customers use customer_embedding_dim
    # the image autoencoder: conv = DCEC's three stride-2 convolutions (good in few epochs); dense =
    # DEC's and N2D's 784-500-500-2000-10 layout, half of conv's time per epoch on 2 CPU ranks (a
    # quarter in one process), so many more epochs fit (100 of them: the same scores as 15 of conv)
    image_autoencoder: Literal["conv", "dense"] = "conv"
    customer_embedding_dim: int = 4
    kmeans_n_init: int = 10  # K-means restarts for the DEC init and the K-means baselines
    # planted customer groups (customer_id,group) for the clustering metrics; empty = the
    # generator's customers_truth.csv beside input.transactions when it exists
    customer_truth: str = ""
    quantize: bool = True  # export a dynamically int8-quantized CNN beside the float one
    start_timeout: int = 120  # seconds for all ranks to start


@dataclass
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    input: InputConfig = field(default_factory=InputConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    text: TextConfig = field(default_factory=TextConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)
    rfm: RfmConfig = field(default_factory=RfmConfig)
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    ncf: NcfConfig = field(default_factory=NcfConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading

def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Read `path` (None = all defaults), apply `key=value` overrides, validate, return Config."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p}: expected a mapping of sections, found "
                              f"{type(raw).__name__}")
    for item in expand_overrides(overrides or []):
        apply_override(raw, item)
    config = _build(Config, raw, "")
    if os.environ.get("CI"):
        config.spark.ui_enabled = False
    return config


def expand_overrides(values: list[str]) -> list[str]:
    """`--set a.b=1 c.d=2` and repeated `--set` both arrive here; split on whitespace too."""
    return [pair for value in values for pair in value.split()]


def apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    parts = _key_path(key.split("."))
    if len(parts) < 2:
        raise ConfigError(f"override {item!r}: the key must name a section and a field, "
                          "like lake.root=...")
    target = raw
    for part in parts[:-1]:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        target = node
    target[parts[-1]] = yaml.safe_load(text) if text != "" else ""


def _key_path(parts: list[str]) -> list[str]:
    """Split a dotted key along the schema: below a mapping field (like spark.options), the rest
    is one key, so `spark.options.spark.ui.port` names the option `spark.ui.port`."""
    tp: Any = Config
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            break
        tp = typing.get_type_hints(tp).get(part)
        if typing.get_origin(tp) is dict and i + 1 < len(parts):
            return parts[: i + 1] + [".".join(parts[i + 1:])]
    return parts


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, found {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(names))}")
    values = {}
    for name in names & set(raw):
        key = f"{where}.{name}" if where else name
        values[name] = _check(hints[name], raw[name], key)
    return cls(**values)


def _check(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key {key!r}: expected one of {list(allowed)}, found {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} does not fit {tp}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, found {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_check(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, found {type(value).__name__}")
        key_tp, val_tp = typing.get_args(tp)
        return {_check(key_tp, k, key): _check(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"config key {key!r}: expected null")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        # `--set spark.driver_memory=4` or a numeric id; a string field takes the text
        return str(value)
    if tp is str and isinstance(value, datetime.date):
        return value.isoformat()  # YAML reads 2026-11-22 as a date
    if tp in (int, float, bool, str):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"config key {key!r}: expected {tp.__name__}, found "
                              f"{type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"config key {key!r}: unsupported type {tp}")  # a bug in this module
