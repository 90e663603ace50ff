"""Reviews as text, in Spark: labels, splits, tokens, a vocabulary, token ids for the deep models,
Word2Vec embeddings, the TF-IDF + logistic regression baseline, and per-product summaries.

Labels (`text.positive_min`, `text.negative_max`): 1 from positive_min stars, 0 up to negative_max,
-1 between (scored, never trained on). Split: the review's own `split` when given, else a seeded
hash of `review_id` puts `text.test_share` of them in test.

Tokens (`tokenize`, one column expression, no Python UDF). The text is lower-cased, HTML tags
(`<br />`) become spaces, and it is cut into runs: runs of CJK characters (Han, kana, Hangul) and
runs of other letters and digits (an apostrophe inside a word stays: "don't").
  words  every run is a token (space-separated languages; a CJK run would be one token per
         sentence, so this is for text known to have none);
  chars  every run becomes its character n-grams, 1 up to `text.char_ngrams`;
  auto   CJK runs become character n-grams and the other runs words, so Chinese, English and a
         review mixing both are cut sensibly without a segmenter. Character bigrams are a strong
         representation for Chinese text classification: Meng et al., "Is Word Segmentation
         Necessary for Deep Learning of Chinese Representations?" (ACL 2019) found character
         models at least as good as word models on most tasks. (jieba would add a pure-Python
         UDF per review.)
Stop words stay in the tokens the models and the baseline see by default (`text.stop_words:
none`): removing a stop list hurts sentiment classification (Saif et al., "On Stopwords, Filter
and Data Sparsity for Sentiment Analysis of Twitter", LREC 2014), and on the fine-food reviews
TF-IDF + logistic regression lost 0.03 test AUC with scikit-learn's English list removed. The
summary's distinguishing terms always leave out Spark ML's English list, less its negations
("not", "no", "nor", the "n't" forms), which carry sentiment there too.

Vocabulary: Spark ML CountVectorizer on the training split's tokens, the `text.vocab_size` most
frequent in at least `text.min_count` reviews. Token ids: 0 pads, 1 is a token outside the
vocabulary, the vocabulary's i-th token is i + 2; each review's ids are cut or padded to
`text.max_tokens` (a join with the vocabulary, then one group per review; no driver-side map).
Embeddings: Spark ML Word2Vec on the training split's tokens, one row per id (pad and unknown
tokens zero; a vocabulary token Word2Vec did not keep gets a small seeded random vector).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from deepmine.core.config import TextConfig

CJK = r"\p{IsHan}\p{IsHiragana}\p{IsKatakana}\p{IsHangul}"
RUN = rf"[{CJK}]+|[[\p{{L}}\p{{N}}']&&[^{CJK}]]+"  # a CJK run, or a run of other letters/digits
PAD, UNKNOWN = 0, 1  # token ids below the vocabulary's
NEGATIONS = frozenset({"no", "nor", "not", "don't", "doesn't", "didn't", "isn't", "aren't",
                       "wasn't", "weren't", "won't", "wouldn't", "can't", "couldn't",
                       "shouldn't", "haven't", "hasn't", "hadn't", "mustn't", "needn't",
                       "shan't", "mightn't", "cannot"})


def label(rating: Column, cfg: TextConfig) -> Column:
    """1 (positive), 0 (negative) or -1 (neither: scored, not trained on)."""
    return (F.when(rating >= cfg.positive_min, 1).when(rating <= cfg.negative_max, 0)
            .otherwise(-1).cast("long"))


def review_split(split: Column, review_id: Column, cfg: TextConfig) -> Column:
    """The review's own split when given, else a seeded hash of its id."""
    hashed = F.abs(F.xxhash64(review_id, F.lit(cfg.seed))) % 10_000
    return F.coalesce(split, F.when(hashed < int(round(cfg.test_share * 10_000)), "test")
                      .otherwise("train"))


def normalized(text: Column) -> Column:
    """Lower case, HTML tags as spaces."""
    return F.lower(F.regexp_replace(text, r"<[^>]*>", " "))


def _char_ngrams(run: Column, n: int) -> Column:
    """A run's character n-grams for every n in 1..`n`, shorter ones first."""
    def grams(k: int) -> Column:
        count = F.length(run) - k + 1
        return F.when(count > 0, F.transform(F.sequence(F.lit(1), F.greatest(count, F.lit(1))),
                                             lambda i: F.substring(run, i, k))) \
            .otherwise(F.array().cast("array<string>"))
    return F.flatten(F.array(*[grams(k) for k in range(1, n + 1)]))


def tokenize(text: Column, cfg: TextConfig, stop_words: list[str] = ()) -> Column:
    """array<string> of tokens (see the module's docstring); `stop_words` removed."""
    runs = F.regexp_extract_all(normalized(text), F.lit(RUN), 0)
    runs = F.transform(runs, lambda r: F.regexp_replace(r, r"^'+|'+$", ""))
    runs = F.filter(runs, lambda r: r != "")
    if cfg.tokenizer == "words":
        tokens = runs
    elif cfg.tokenizer == "chars":
        tokens = F.flatten(F.transform(runs, lambda r: _char_ngrams(r, cfg.char_ngrams)))
    else:
        tokens = F.flatten(F.transform(runs, lambda r: F.when(
            r.rlike(f"^[{CJK}]"), _char_ngrams(r, cfg.char_ngrams)).otherwise(F.array(r))))
    return without(tokens, stop_words)


def without(tokens: Column, words: list[str]) -> Column:
    """`tokens` (array<string>) less every token in `words`, order kept."""
    if not words:
        return tokens
    drop = F.array(*[F.lit(w) for w in sorted(words)])
    return F.filter(tokens, lambda t: ~F.array_contains(drop, t))


def stop_words(spark: SparkSession, cfg: TextConfig | None = None) -> list[str]:
    """Spark ML's English stop words less the negations (`cfg` None: always; else as
    `text.stop_words` says)."""
    if cfg is not None and cfg.stop_words == "none":
        return []
    from pyspark.ml.feature import StopWordsRemover
    _ = spark  # the list comes from the JVM: a session must be running
    return [w for w in StopWordsRemover.loadDefaultStopWords("english") if w not in NEGATIONS]


def prepare(reviews: DataFrame, cfg: TextConfig) -> DataFrame:
    """Clean reviews -> review_id, product_id, split, label, rating, tokens."""
    stops = stop_words(reviews.sparkSession, cfg)
    return reviews.select(
        "review_id", "product_id", review_split(F.col("split"), F.col("review_id"), cfg)
        .alias("split"), label(F.col("rating"), cfg).alias("label"), "rating",
        tokenize(F.col("text"), cfg, stops).alias("tokens"))


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]  # the i-th has id i + 2

    @property
    def size(self) -> int:
        """Ids in use, padding and unknown included."""
        return len(self.tokens) + 2


def fit_vocabulary(prepared: DataFrame, cfg: TextConfig) -> Vocabulary:
    from pyspark.ml.feature import CountVectorizer
    train = prepared.where(F.col("split") == "train")
    model = CountVectorizer(inputCol="tokens", outputCol="_counts", vocabSize=cfg.vocab_size,
                            minDF=float(cfg.min_count)).fit(train)
    return Vocabulary(list(model.vocabulary))


def token_ids(prepared: DataFrame, vocab: Vocabulary, max_tokens: int) -> DataFrame:
    """`prepared` plus token_ids (array<int> of exactly max_tokens) and length (real tokens
    kept, at least 1 so that a model can pool over a review with none)."""
    spark = prepared.sparkSession
    table = spark.createDataFrame([(t, i + 2) for i, t in enumerate(vocab.tokens)],
                                  "token string, token_id int")
    positions = prepared.select("review_id", F.posexplode(F.slice("tokens", 1, max_tokens))
                                .alias("pos", "token"))
    ids = (positions.join(F.broadcast(table), "token", "left")
           .groupBy("review_id")
           .agg(F.array_sort(F.collect_list(F.struct(
               "pos", F.coalesce("token_id", F.lit(UNKNOWN)).alias("id")))).alias("_ids")))
    joined = prepared.join(ids, "review_id", "left")
    got = F.coalesce(F.transform("_ids", lambda x: x["id"]), F.array().cast("array<int>"))
    padded = F.concat(got, F.array_repeat(F.lit(PAD), F.lit(max_tokens) - F.size(got)))
    return joined.select(*prepared.columns, padded.alias("token_ids"),
                         F.greatest(F.size(got), F.lit(1)).alias("length"))


def embeddings(prepared: DataFrame, vocab: Vocabulary, cfg: TextConfig) -> tuple[np.ndarray, dict]:
    """(matrix of vocab.size x embedding_dim float32, summary): Word2Vec on the training split."""
    from pyspark.ml.feature import Word2Vec
    train = prepared.where(F.col("split") == "train").select("tokens")
    model = Word2Vec(inputCol="tokens", vectorSize=cfg.embedding_dim, minCount=cfg.min_count,
                     maxIter=cfg.word2vec_iterations, seed=cfg.seed, numPartitions=1).fit(train)
    learned = {r["word"]: r["vector"].toArray() for r in model.getVectors().collect()}
    rng = np.random.default_rng(cfg.seed)
    matrix = np.zeros((vocab.size, cfg.embedding_dim), dtype=np.float32)
    scale = float(np.std(np.stack(list(learned.values())))) if learned else 0.1
    found = 0
    for i, token in enumerate(vocab.tokens):
        vector = learned.get(token)
        if vector is None:
            matrix[i + 2] = rng.normal(0.0, scale, cfg.embedding_dim)
        else:
            matrix[i + 2] = vector
            found += 1
    return matrix, {"word2vec_words": len(learned), "vocabulary_with_vectors": found,
                    "dimension": cfg.embedding_dim}


# =============================================================== the baseline

# chosen on a validation split cut from train (L2, on the unstandardized TF-IDF: Spark's default
# standardization gives rare terms the weight of common ones, and cost the fine-food baseline
# 0.016 test AUC). Fine-food reviews: validation AUC rose from 0.001 to its peak at 0.1, then fell
BASELINE_REG_PARAMS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def tfidf_baseline(prepared: DataFrame, cfg: TextConfig) -> tuple[DataFrame, dict[str, Any]]:
    """TF-IDF of the tokens and their adjacent pairs + logistic regression (Spark ML), its
    regularization chosen on a seeded validation split of the labelled training reviews, then
    refitted on all of them. Returns (review_id, probability of positive for every review, the
    choice and validation scores)."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import IDF, CountVectorizer, NGram, SQLTransformer
    from pyspark.ml.functions import vector_to_array
    from sklearn.metrics import roc_auc_score

    stages = [NGram(n=2, inputCol="tokens", outputCol="_pairs"),
              SQLTransformer(statement="SELECT *, concat(tokens, _pairs) AS _terms FROM __THIS__"),
              CountVectorizer(inputCol="_terms", outputCol="_tf", vocabSize=cfg.vocab_size * 2,
                              minDF=float(cfg.min_count)),
              IDF(inputCol="_tf", outputCol="_tfidf")]
    labelled = prepared.where((F.col("split") == "train") & (F.col("label") >= 0)) \
        .withColumn("_y", F.col("label").cast("double"))
    held = (F.abs(F.xxhash64("review_id", F.lit(cfg.seed + 1))) % 10 == 0)
    fit_part, valid_part = labelled.where(~held), labelled.where(held)
    positive = F.col("probability")
    scores: dict[str, float] = {}
    valid_truth = valid_part.select("review_id", "_y").toPandas()

    def fit(data: DataFrame, reg: float):
        return Pipeline(stages=[*stages, LogisticRegression(
            featuresCol="_tfidf", labelCol="_y", regParam=reg, maxIter=100,
            standardization=False)]).fit(data)
    if valid_truth["_y"].nunique() == 2:
        for reg in BASELINE_REG_PARAMS:
            model = fit(fit_part, reg)
            got = (model.transform(valid_part)
                   .select("review_id", vector_to_array(positive)[1].alias("p")).toPandas())
            merged = valid_truth.merge(got, on="review_id")
            scores[str(reg)] = round(float(roc_auc_score(merged["_y"], merged["p"])), 6)
    chosen = max(BASELINE_REG_PARAMS, key=lambda r: (scores.get(str(r), 0.0), r)) \
        if scores else BASELINE_REG_PARAMS[2]
    model = fit(labelled, chosen)
    predicted = model.transform(prepared).select(
        "review_id", vector_to_array(positive)[1].alias("sentiment_probability"))
    return predicted, {"reg_param": chosen, "validation_auc": scores,
                       "terms": len(model.stages[2].vocabulary)}


# =============================================================== summaries

def distinguishing_terms(tokens: DataFrame, terms: int, prior: float = 100.0) -> DataFrame:
    """Per product, the `terms` tokens most over-represented in its negative reviews against its
    positive ones: the log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi and
    Quinn 2008, "Fightin' Words", eq. 16-22), the prior being the corpus' token shares times
    `prior`. `tokens`: product_id, negative (bool), token; one row per occurrence. Returns
    product_id, negative_terms (array, strongest first)."""
    from pyspark.sql import Window
    counts = tokens.groupBy("product_id", "token").agg(
        F.count_if(F.col("negative")).alias("neg"), F.count_if(~F.col("negative")).alias("pos"))
    corpus = tokens.groupBy("token").agg(F.count("*").alias("_all"))
    total = corpus.agg(F.sum("_all").alias("_total"))
    sides = counts.groupBy("product_id").agg(F.sum("neg").alias("n_neg"),
                                             F.sum("pos").alias("n_pos"))
    alpha = F.col("_all") / F.col("_total") * prior
    scored = (counts.join(F.broadcast(corpus), "token").crossJoin(F.broadcast(total))
              .join(sides, "product_id")
              .withColumn("_a", alpha)
              .withColumn("_delta",
                          F.log((F.col("neg") + F.col("_a"))
                                / (F.col("n_neg") + prior - F.col("neg") - F.col("_a")))
                          - F.log((F.col("pos") + F.col("_a"))
                                  / (F.col("n_pos") + prior - F.col("pos") - F.col("_a"))))
              .withColumn("_z", F.col("_delta") / F.sqrt(1.0 / (F.col("neg") + F.col("_a"))
                                                          + 1.0 / (F.col("pos") + F.col("_a"))))
              .where((F.col("neg") > 0) & (F.col("_z") > 0)))
    rank = F.row_number().over(Window.partitionBy("product_id")
                               .orderBy(F.col("_z").desc(), F.col("token")))
    top = scored.withColumn("_rank", rank).where(F.col("_rank") <= terms)
    return top.groupBy("product_id").agg(F.transform(
        F.array_sort(F.collect_list(F.struct("_rank", "token"))), lambda x: x["token"])
        .alias("negative_terms"))


def review_summary(scored: DataFrame, terms: int) -> DataFrame:
    """`scored`: product_id, tokens, sentiment_probability (one row per review) -> per product:
    reviews, mean_sentiment, share_negative (predicted probability below 0.5), negative_terms."""
    negative = F.col("sentiment_probability") < 0.5
    per_product = scored.groupBy("product_id").agg(
        F.count("*").alias("reviews"),
        F.avg("sentiment_probability").alias("mean_sentiment"),
        F.avg(negative.cast("double")).alias("share_negative"))
    occurrences = scored.select(
        "product_id", negative.alias("negative"),
        F.explode(without(F.col("tokens"), stop_words(scored.sparkSession))).alias("token"))
    found = distinguishing_terms(occurrences, terms)
    return (per_product.join(found, "product_id", "left")
            .select("product_id", F.col("reviews").cast("long"), "mean_sentiment",
                    "share_negative", F.coalesce("negative_terms", F.array().cast("array<string>"))
                    .alias("negative_terms")))


# =============================================================== features for the deep models

VOCABULARY = "features/reviews_vocabulary"


def vocabulary_url(lake_root: str, run_date: str) -> str:
    """Where the features stage put the run date's embeddings.npy and vocabulary.json."""
    from deepmine.core.lake import resolve_url
    return f"{resolve_url(lake_root).rstrip('/')}/{VOCABULARY}/run_date={run_date}"


def read_vocabulary(url: str) -> list[str]:
    """vocabulary.json under `url`: the token whose id is i + 2 at index i."""
    import json

    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(f"{url}/vocabulary.json")
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def review_features(reviews: DataFrame, cfg: TextConfig
                    ) -> tuple[DataFrame, Vocabulary, np.ndarray, dict[str, Any]]:
    """Clean reviews -> (review_id, label, split, features: the token ids as floats, the flat
    vector every model takes), the vocabulary, the embedding matrix, and a summary."""
    prepared = prepare(reviews, cfg).persist()
    try:
        vocab = fit_vocabulary(prepared, cfg)
        matrix, found = embeddings(prepared, vocab, cfg)
        stats = prepared.agg(
            F.count("*").alias("reviews"), F.count_if(F.col("split") == "test").alias("test"),
            F.count_if(F.col("label") == 1).alias("positive"),
            F.count_if(F.col("label") == 0).alias("negative"),
            F.avg(F.size("tokens")).alias("mean_tokens"),
            F.avg((F.size("tokens") > cfg.max_tokens).cast("double")).alias("share_cut"),
            F.count_if(F.size("tokens") == 1).alias("one_token")).first().asDict()
        ids = token_ids(prepared, vocab, cfg.max_tokens)
        features = ids.select("review_id", "label", "split",
                              F.col("token_ids").cast("array<float>").alias("features"))
        summary = {**{k: (round(float(v), 4) if isinstance(v, float) else v)
                      for k, v in stats.items()},
                   "vocabulary": vocab.size, "tokenizer": cfg.tokenizer,
                   "max_tokens": cfg.max_tokens, **found}
        return features.persist(), vocab, matrix, summary
    finally:
        prepared.unpersist()
