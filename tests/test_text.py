"""Reviews as text: tokens, ids, labels and splits compared whole; the baseline and the summaries
against the sentiment and flaws planted by the review generator, in English and in Chinese."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from pyspark.sql import functions as F

from deepmine.core.config import TextConfig
from deepmine.data.generate_reviews import generate_reviews
from deepmine.deep.text import (Vocabulary, distinguishing_terms, label, prepare, review_split,
                           stop_words, tokenize, token_ids)


def _tokens(spark, texts, cfg, stops=()):
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i int, text string")
    return [r["t"] for r in frame.orderBy("i").select(tokenize(F.col("text"), cfg, list(stops))
                                                      .alias("t")).collect()]


def test_tokens_for_spaced_and_unspaced_languages(spark):
    cfg = TextConfig(stop_words="english")
    assert stop_words(spark, TextConfig()) == []  # the default keeps every token
    stops = stop_words(spark, cfg)
    assert "not" not in stops and "the" in stops and "don't" not in stops
    got = _tokens(spark, [
        "The tea was NOT fresh.<br /><br />Don't buy it -- 'really'!",
        "这个茶叶太苦了，不推荐",
        "iPhone手机 很好",
        "",
    ], cfg, stops)
    assert got[0] == ["tea", "not", "fresh", "don't", "buy", "really"]
    # Chinese: characters and character pairs, never the whole sentence as one token
    assert got[1] == ["这", "个", "茶", "叶", "太", "苦", "了", "这个", "个茶", "茶叶", "叶太",
                      "太苦", "苦了", "不", "推", "荐", "不推", "推荐"]
    assert got[2] == ["iphone", "手", "机", "手机", "很", "好", "很好"]
    assert got[3] == []
    words = _tokens(spark, ["Fresh tea, 很好吃"], replace(cfg, tokenizer="words"))
    assert words == [["fresh", "tea", "很好吃"]]
    chars = _tokens(spark, ["ab 很好"], replace(cfg, tokenizer="chars", char_ngrams=3))
    assert chars == [["a", "b", "ab", "很", "好", "很好"]]


def test_token_ids_pad_cut_and_mark_unknown_tokens(spark):
    prepared = spark.createDataFrame(
        [("r1", ["good", "tea", "zzz"]), ("r2", ["tea"] * 5), ("r3", [])],
        "review_id string, tokens array<string>")
    got = {r["review_id"]: (r["token_ids"], r["length"]) for r in
           token_ids(prepared, Vocabulary(["tea", "good"]), 4).collect()}
    assert got == {"r1": ([3, 2, 1, 0], 3), "r2": ([2, 2, 2, 2], 4), "r3": ([0, 0, 0, 0], 1)}


def test_labels_and_seeded_splits(spark):
    cfg = TextConfig(test_share=0.3)
    frame = spark.createDataFrame([(f"r{i}", float(1 + i % 5), "test" if i == 0 else None)
                                   for i in range(2000)],
                                  "review_id string, rating double, split string")
    rows = frame.select("review_id", "rating", label(F.col("rating"), cfg).alias("label"),
                        review_split(F.col("split"), F.col("review_id"), cfg).alias("s")).collect()
    assert {r["rating"]: r["label"] for r in rows} == {1.0: 0, 2.0: 0, 3.0: -1, 4.0: 1, 5.0: 1}
    assert rows[0]["s"] == "test"
    share = np.mean([r["s"] == "test" for r in rows[1:]])
    assert 0.27 < share < 0.33
    again = frame.select(review_split(F.col("split"), F.col("review_id"), cfg).alias("s")).collect()
    assert [r["s"] for r in again] == [r["s"] for r in rows]


def _generated(tmp_path, language, reviews=1500, seed=3):
    info = generate_reviews(tmp_path / language, reviews, seed, language)
    with open(info["path"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    truth = json.loads((tmp_path / language / "reviews_truth.json").read_text())
    return rows, truth


def test_generated_reviews_follow_the_planted_satisfaction(tmp_path):
    rows, truth = _generated(tmp_path, "en")
    with open(tmp_path / "en" / "reviews_truth.csv", newline="") as f:
        planted = {r["review_id"]: r for r in csv.DictReader(f)}
    stars = np.array([int(r["rating"]) for r in rows])
    satisfaction = np.array([float(planted[r["review_id"]]["satisfaction"]) for r in rows])
    assert set(stars) == {1, 2, 3, 4, 5}
    # the stars are the satisfaction cut at the planted thresholds
    np.testing.assert_array_equal(stars, 1 + np.searchsorted(truth["thresholds"], satisfaction))
    assert any("\n" in r["text"] for r in rows)  # quoted line breaks in the CSV
    zh, _ = _generated(tmp_path, "zh")
    assert all(" " not in r["text"] for r in zh)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_negative_reviews_name_their_products_planted_flaw(spark, tmp_path, language):
    """The log-odds terms of each product's negative against its positive reviews start with its
    planted flaw (one of its tokens), for most products with enough reviews of both kinds."""
    rows, truth = _generated(tmp_path, language, reviews=3000)
    cfg = TextConfig(stop_words="english")  # as review_summary leaves them out of its terms
    reviews = spark.createDataFrame([(r["review_id"], r["product_id"], float(r["rating"]),
                                      r["text"], None) for r in rows],
                                    "review_id string, product_id string, rating double, "
                                    "text string, split string")
    prepared = prepare(reviews, cfg)
    occurrences = prepared.where(F.col("label") >= 0).select(
        "product_id", (F.col("label") == 0).alias("negative"), F.explode("tokens").alias("token"))
    found = {r["product_id"]: r["negative_terms"]
             for r in distinguishing_terms(occurrences, 3).collect()}
    sides = {r["product_id"]: (r["neg"], r["pos"]) for r in prepared.groupBy("product_id").agg(
        F.count_if(F.col("label") == 0).alias("neg"),
        F.count_if(F.col("label") == 1).alias("pos")).collect()}
    checked = [p for p, (neg, pos) in sides.items() if neg >= 8 and pos >= 8]
    assert len(checked) >= 10
    flaw_tokens = {p: set(_tokens(spark, [truth["products"][p]["flaw"]], cfg,
                                  stop_words(spark))[0]) for p in checked}
    hits = [bool(found.get(p) and found[p][0] in flaw_tokens[p]) for p in checked]
    assert np.mean(hits) >= 0.8, [(p, found.get(p), flaw_tokens[p]) for p in checked]


def _manifest_stage(spark, config, date, stage):
    from deepmine.core.lake import Lake
    return Lake(spark, config.lake.root).read_manifest(date)["stages"][stage]


@pytest.mark.parametrize("model,language", [("textcnn", "en"), ("textrnn", "zh")])
def test_text_model_learns_the_planted_sentiment(spark, tmp_path, make_config, model, language):
    """Generated reviews -> ingest -> features (token ids, Word2Vec) -> 2 Horovod ranks -> the
    model's sentiment probability ranks the reviews by their planted satisfaction, and the stage
    reports it beside the TF-IDF baseline on the same test reviews (ok only when it reaches it)."""
    from scipy.stats import spearmanr

    from deepmine.deep.features import run_features
    from deepmine.data.ingest import run_ingest
    from deepmine.core.lake import Lake
    from deepmine.deep.train import run_train
    date = "2026-11-22"
    info = generate_reviews(tmp_path / "in", 1600, 5, language)
    config = make_config("features.images=false", "features.row_groups=2",
                         "train.epochs=8", "train.patience=2", "text.max_tokens=40",
                         "text.embedding_dim=32", "input.transactions=")
    run_ingest(spark, config, date, info["path"], entity="reviews")
    run_features(spark, config, date)
    prep = _manifest_stage(spark, config, date, "features")["metrics"]["reviews"]
    assert prep["one_token"] == 0 and prep["mean_tokens"] > 8  # never a sentence per token
    run_train(spark, config, date, model)
    record = _manifest_stage(spark, config, date, f"train_{model}")
    m = record["metrics"]
    assert {"accuracy", "auc", "baseline_accuracy", "baseline_auc"} <= set(m)
    assert m["test_reviews"] > 100 and m["epochs_run"] >= 2
    if record["status"] == "ok":
        assert m["auc"] >= m["baseline_auc"] - config.train.gate_tolerance
    assert m["auc"] > 0.85 and m["accuracy"] > m["majority_accuracy"], m
    lake = Lake(spark, config.lake.root)
    predicted = {r["review_id"]: r["sentiment_probability"]
                 for r in lake.read(f"predictions/{model}", f"run_date={date}").collect()}
    with open(tmp_path / "in" / "reviews_truth.csv", newline="") as f:
        planted = {r["review_id"]: float(r["satisfaction"]) for r in csv.DictReader(f)}
    assert set(predicted) == set(planted)
    ids = sorted(planted)
    rho = spearmanr([predicted[i] for i in ids], [planted[i] for i in ids]).statistic
    assert rho > 0.6, rho
    if model == "textrnn":
        # the attention examples: the real tokens' weights sum to 1 and the report shows them
        examples = m["attention_examples"]
        assert len(examples) == 3 and {e["label"] for e in examples} <= {0, 1}
        for e in examples:
            assert sum(w for _, w, _ in e["tokens"]) == pytest.approx(1.0, abs=0.01)
            assert sum(top for _, _, top in e["tokens"]) == min(8, len(e["tokens"]))
        from deepmine.ops.report import report_url, run_report
        run_report(spark, config, date)
        page = lake.read_text(report_url(lake, date))
        assert "Reviews and sentiment" in page and examples[0]["review_id"] in page
        return
    # the per-product summary, from the model when it ended ok: mean sentiment follows the
    # planted product quality
    from deepmine.mining.review_summary import run_review_summary
    out = run_review_summary(spark, config, date)
    assert out["source"] == ("predictions/textcnn" if record["status"] == "ok"
                             else "predictions/review_baseline")
    summary = {r["product_id"]: r for r in
               lake.read("mining/review_summary", f"run_date={date}").collect()}
    truth = json.loads((tmp_path / "in" / "reviews_truth.json").read_text())["products"]
    reviewed = sorted(p for p in truth if p in summary)
    assert sum(summary[p]["reviews"] for p in reviewed) == 1600
    assert all(0 <= summary[p]["share_negative"] <= 1 for p in reviewed)
    quality = spearmanr([summary[p]["mean_sentiment"] for p in reviewed],
                        [truth[p]["quality"] for p in reviewed]).statistic
    assert quality > 0.7, quality
