"""The text models' part of `deepmine train --model textcnn|textrnn` (reviews): their spec, and
their metrics beside the TF-IDF + logistic regression baseline on the same test reviews.

Training itself is the classification loop every classifier here shares (deepmine.deep.trainer, task
"cnn": Horovod ranks over the Petastorm shards of features/reviews, a seeded validation split of
the labelled training reviews, early stopping, checkpoints and resume, retries on failure); the
reviews labelled neither positive nor negative (-1) are left out of the loss as unlabelled
images are. The embedding layer starts from the Word2Vec vectors of
features/reviews_vocabulary (`text.embeddings`: fine_tune trains them further, static keeps them).

Metrics on the labelled test reviews: accuracy (threshold 0.5), ROC AUC and the ROC curve, beside
the baseline's (`baseline_accuracy`, `baseline_auc`) and the majority class's accuracy. The
baseline is fitted once per run date and its predictions kept in predictions/review_baseline (the
second text stage reads them). The stage is degraded when the model's AUC falls below the
baseline's by more than train.gate_tolerance, or its accuracy does not beat the majority class.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deepmine.core.config import Config
from deepmine.core.lake import Lake
from deepmine.core.metrics import roc_points
from deepmine.deep.text import VOCABULARY, read_vocabulary, vocabulary_url

BASELINE = "predictions/review_baseline"


def text_spec(config: Config, name: str, run_date: str) -> dict[str, Any]:
    """The model's spec; the vocabulary size and the embeddings' URL come from the features
    stage's files for the run date."""
    vocabulary = vocabulary_url(config.lake.root, run_date)
    return {"kind": name, "vocab_size": len(read_vocabulary(vocabulary)) + 2,
            "embedding_dim": config.text.embedding_dim, "n_classes": 2,
            "max_tokens": config.text.max_tokens,
            "freeze_embeddings": config.text.embeddings == "static",
            "embeddings_url": f"{vocabulary}/embeddings.npy"}


def baseline_predictions(lake: Lake, config: Config, partition: str) -> DataFrame:
    """predictions/review_baseline for the run date: made (and published) on first use."""
    if not lake.has_partition(BASELINE, partition):
        from deepmine.deep.features import latest_versions
        from deepmine.deep.text import prepare, tfidf_baseline
        run_date = partition.split("=", 1)[1]
        reviews = latest_versions(lake.read_history("clean/reviews", run_date), "review_id")
        predicted, _ = tfidf_baseline(prepare(reviews, config.text), config.text)
        lake.publish(predicted, BASELINE, partition)
    return lake.read(BASELINE, partition)


def scores(score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score
    both = len(set(label.tolist())) == 2
    return {"accuracy": round(float(np.mean((score >= 0.5) == (label == 1))), 6),
            "auc": round(float(roc_auc_score(label, score)), 6) if both else None}


ATTENTION_EXAMPLES = 3  # test reviews shown with their most attended tokens
ATTENDED_TOKENS = 8


def attention_examples(model, lake: Lake, features: DataFrame, scored, partition: str
                       ) -> list[dict[str, Any]]:
    """The most positive, the most negative and the least certain test review, each with its
    tokens in order and their attention weights (the ATTENDED_TOKENS heaviest marked)."""
    import torch
    vocabulary = read_vocabulary(lake.partition_url(VOCABULARY, partition))
    order = scored.sort_values(["sentiment_probability", "review_id"])
    picks = [order.iloc[-1], order.iloc[0],
             order.iloc[int((order["sentiment_probability"] - 0.5).abs().to_numpy().argmin())]]
    ids = [p["review_id"] for p in picks[:ATTENTION_EXAMPLES]]
    rows = {r["review_id"]: r["features"] for r in features
            .where(F.col("review_id").isin(ids)).select("review_id", "features").collect()}
    out = []
    for pick in picks[:ATTENTION_EXAMPLES]:
        x = torch.tensor([rows[pick["review_id"]]], dtype=torch.float32)
        with torch.no_grad():
            weights = model.attention(x)[0].numpy()
        tokens = [("<unk>" if int(i) == 1 else vocabulary[int(i) - 2])
                  for i in rows[pick["review_id"]] if int(i) != 0]
        top = set(np.argsort(-weights[:len(tokens)])[:ATTENDED_TOKENS].tolist())
        out.append({"review_id": pick["review_id"], "label": int(pick["label"]),
                    "sentiment_probability": round(float(pick["sentiment_probability"]), 4),
                    "tokens": [[t, round(float(weights[i]), 4), i in top]
                               for i, t in enumerate(tokens)]})
    return out


def text_metrics(args, final: dict, features: DataFrame, published: DataFrame, config: Config,
                 lake: Lake, partition: str) -> tuple[dict[str, Any], dict[str, bytes], list[str]]:
    """(metrics, extra files, degrade reasons) of a trained text model; `features` is the run
    date's features/reviews."""
    import torch
    from deepmine.deep.export import quantize_int8, torchscript_bytes
    from deepmine.deep.models import build

    test = features.where((F.col("split") == "test") & (F.col("label") >= 0)) \
        .select("review_id", "label")
    baseline = baseline_predictions(lake, config, partition)
    joined = (test.join(published, "review_id")
              .join(baseline.withColumnRenamed("sentiment_probability", "_baseline"), "review_id")
              .toPandas())
    label = joined["label"].to_numpy()
    model_scores = scores(joined["sentiment_probability"].to_numpy(), label)
    base = scores(joined["_baseline"].to_numpy(), label)
    majority = float(max(np.mean(label == 1), np.mean(label == 0))) if len(label) else None
    metrics: dict[str, Any] = {
        **model_scores, "baseline_accuracy": base["accuracy"], "baseline_auc": base["auc"],
        "majority_accuracy": round(majority, 6) if majority is not None else None,
        "test_reviews": int(len(label)), "baseline": "TF-IDF (tokens and pairs) + logistic "
        "regression, Spark ML", "gate": "AUC at least the baseline's (within "
        "train.gate_tolerance), accuracy above the majority class'"}
    reasons: list[str] = []
    if len(label) and model_scores["auc"] is not None:
        metrics["roc"] = roc_points(joined["sentiment_probability"].to_numpy(), label)
        metrics["baseline_roc"] = roc_points(joined["_baseline"].to_numpy(), label)
        if model_scores["auc"] < base["auc"] - config.train.gate_tolerance:
            reasons.append(f"{args.name} test AUC {model_scores['auc']:.4f} is below the TF-IDF "
                           f"+ logistic regression baseline's ({base['auc']:.4f}, same reviews)")
        if model_scores["accuracy"] <= majority:
            reasons.append(f"{args.name} test accuracy {model_scores['accuracy']:.4f} does not "
                           f"beat the majority class's {majority:.4f}")
    else:
        reasons.append("no test review labelled both ways: the text model's AUC is unmeasured")
    model = build(args.spec)
    model.load_state_dict(final["model"])
    model.eval()
    if hasattr(model, "attention") and len(label):
        metrics["attention_examples"] = attention_examples(model, lake, features, joined,
                                                           partition)
    example = torch.tensor([list(range(2, 2 + args.spec["max_tokens"]))] * 2, dtype=torch.float32)
    example[:, args.spec["max_tokens"] // 2:] = 0
    files = {"model.torchscript.pt": torchscript_bytes(model, example)}
    if config.train.quantize:
        files["model_int8.torchscript.pt"] = torchscript_bytes(quantize_int8(model), example)
        metrics["bytes_float"] = len(files["model.torchscript.pt"])
        metrics["bytes_int8"] = len(files["model_int8.torchscript.pt"])
    return metrics, files, reasons
