"""Reviews as text: tokens, ids, labels and splits compared whole; the baseline and the summaries
against the sentiment and flaws planted by the review generator, in English and in Chinese."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from pyspark.sql import functions as F

from deepmine.config import TextConfig
from deepmine.generate_reviews import generate_reviews
from deepmine.text import (Vocabulary, distinguishing_terms, label, prepare, review_split,
                           stop_words, tokenize, token_ids)


def _tokens(spark, texts, cfg, stops=()):
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i int, text string")
    return [r["t"] for r in frame.orderBy("i").select(tokenize(F.col("text"), cfg, list(stops))
                                                      .alias("t")).collect()]


def test_tokens_for_spaced_and_unspaced_languages(spark):
    cfg = TextConfig()
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
    cfg = TextConfig()
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
                                  stop_words(spark, cfg))[0]) for p in checked}
    hits = [bool(found.get(p) and found[p][0] in flaw_tokens[p]) for p in checked]
    assert np.mean(hits) >= 0.8, [(p, found.get(p), flaw_tokens[p]) for p in checked]
