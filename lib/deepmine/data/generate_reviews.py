"""Synthetic product reviews with planted sentiment, in English or Chinese (`deepmine generate
--reviews N --language en|zh`).

Planted truth. Each product has a quality q_p ~ N(0, 1) and one flaw (a phrase its unhappy buyers
name); each customer a leniency l_c ~ N(0, 0.5). A review's satisfaction is
s = q_p + l_c + N(0, 0.7); its stars are s cut at the planted thresholds (-1.2, -0.4, 0.4, 1.2)
into 1..5. Its text is 2-6 sentences, each positive with probability sigmoid(2 s) and negative
otherwise, drawn from phrase lists (some positive phrases are negated negatives, "not bad", and
some negative ones negated positives, "not fresh", so word counts alone mislead), with neutral
filler between; a negative sentence names the product's flaw with probability 0.5. One review in
ten puts a line break between sentences (a quoted line break in the CSV). The Chinese phrases are
written without spaces, as Chinese is.

Product and customer ids are those `deepmine generate` gives transactions (P00001.., C000001..), so
reviews written beside transactions are about the same products and by the same customers.

Files: reviews.csv (review_id, product_id, customer_id, rating, text, review_ts; no split: the
ingest's seeded hash picks it), reviews_truth.csv (review_id, satisfaction, positive_sentences,
sentences) and reviews_truth.json (per product: quality and flaw; the star thresholds).
"""
from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np

THRESHOLDS = (-1.2, -0.4, 0.4, 1.2)

PHRASES = {
    "en": {
        "positive": ["great taste", "i love it", "really fresh", "would buy again",
                     "excellent value", "delicious", "my kids enjoy it", "not bad at all",
                     "never disappointed", "works perfectly", "highly recommended"],
        "negative": ["tastes awful", "not fresh", "would not buy again", "waste of money",
                     "very disappointed", "not good", "arrived damaged", "never again",
                     "poor quality", "returned it"],
        "neutral": ["arrived on tuesday", "bought it for my family", "the package was a box",
                    "i use it every morning", "compared it with the store brand",
                    "ordered two of them"],
        "flaws": ["stale", "leaking", "too salty", "bitter aftertaste", "broken seal",
                  "soggy", "rancid smell", "melted", "moldy", "crushed"],
        "join": ". ",
        "flaw_sentence": "it was {flaw}",
    },
    "zh": {
        "positive": ["很好吃", "非常新鲜", "还会再买", "性价比很高", "味道不错", "孩子很喜欢",
                     "一点也不差", "质量很好", "物流很快", "强烈推荐"],
        "negative": ["太难吃了", "不新鲜", "不会再买", "浪费钱", "很失望", "不好吃", "包装破损",
                     "质量很差", "已经退货", "再也不买"],
        "neutral": ["昨天收到", "给家人买的", "每天早上吃", "和超市的比较了一下", "买了两包",
                    "快递送到门口"],
        "flaws": ["太咸", "漏了", "发苦", "过期", "受潮", "有异味", "化了", "发霉", "压碎了",
                  "不脆"],
        "join": "。",
        "flaw_sentence": "{flaw}",
    },
}


def stars(satisfaction: np.ndarray) -> np.ndarray:
    return 1 + np.searchsorted(np.asarray(THRESHOLDS), satisfaction)


def generate_reviews(out: str | Path, reviews: int, seed: int, language: str = "en",
                     products: int = 0, customers: int = 0,
                     start: dt.date = dt.date(2025, 11, 23), days: int = 365) -> dict:
    """Write reviews.csv and the truth files under `out`; returns counts."""
    if language not in PHRASES:
        raise ValueError(f"language {language!r}: expected one of {sorted(PHRASES)}")
    words = PHRASES[language]
    rng = np.random.default_rng(seed)
    products = products or max(5, reviews // 40)
    customers = customers or max(10, reviews // 4)
    quality = rng.normal(0.0, 1.0, products)
    flaws = [words["flaws"][i % len(words["flaws"])] for i in rng.permutation(products)]
    leniency = rng.normal(0.0, 0.5, customers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    truth_rows = []
    with open(out / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["review_id", "product_id", "customer_id", "rating", "text", "review_ts"])
        for i in range(reviews):
            p, c = int(rng.integers(products)), int(rng.integers(customers))
            s = quality[p] + leniency[c] + rng.normal(0.0, 0.7)
            n = int(rng.integers(2, 7))
            positive = rng.random(n) < 1.0 / (1.0 + np.exp(-2.0 * s))
            sentences = []
            for good in positive:
                if good:
                    sentences.append(words["positive"][rng.integers(len(words["positive"]))])
                elif rng.random() < 0.5:
                    sentences.append(words["flaw_sentence"].format(flaw=flaws[p]))
                else:
                    sentences.append(words["negative"][rng.integers(len(words["negative"]))])
                if rng.random() < 0.4:
                    sentences.append(words["neutral"][rng.integers(len(words["neutral"]))])
            joiner = "\n" if rng.random() < 0.1 else words["join"]
            text = joiner.join(sentences) + words["join"].strip()
            when = dt.datetime.combine(start, dt.time()) + dt.timedelta(
                seconds=int(rng.integers(days * 86400)))
            review_id = f"R{i:07d}"
            writer.writerow([review_id, f"P{p + 1:05d}", f"C{c + 1:06d}", int(stars(np.array([s]))[0]),
                             text, when.strftime("%Y-%m-%d %H:%M:%S")])
            truth_rows.append((review_id, round(float(s), 6), int(positive.sum()), n))
    with open(out / "reviews_truth.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["review_id", "satisfaction", "positive_sentences", "sentences"])
        writer.writerows(truth_rows)
    truth = {"language": language, "seed": seed, "thresholds": list(THRESHOLDS),
             "products": {f"P{p + 1:05d}": {"quality": round(float(quality[p]), 6), "flaw": flaws[p]}
                          for p in range(products)}}
    (out / "reviews_truth.json").write_text(json.dumps(truth, indent=1, ensure_ascii=False))
    return {"reviews": reviews, "products": products, "customers": customers,
            "language": language, "path": str(out / "reviews.csv")}
