"""Review summary: `mining/review_summary/run_date=D`, per product: reviews, mean predicted
sentiment, share predicted negative, and the terms that most set its negative reviews apart
from its positive ones (deepmine.deep.text.review_summary).

The predictions come from the text model with the best test AUC among tonight's text stages
that ended `ok` (train_textcnn, train_textrnn); when neither did, from the TF-IDF + logistic
regression baseline, and the manifest says which (`source`)."""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deepmine.core.config import Config
from deepmine.core.lake import Lake, StageRun
from deepmine.deep.features import latest_versions
from deepmine.deep.text import prepare, review_summary
from deepmine.deep.train_text import BASELINE, baseline_predictions

TEXT_STAGES = ("train_textcnn", "train_textrnn")


def chosen_source(stages: dict) -> tuple[str, float | None]:
    """The predictions table to summarize, and its test AUC (None for the baseline)."""
    ok = [(s["metrics"].get("auc") or 0.0, name) for name, s in stages.items()
          if name in TEXT_STAGES and s.get("status") == "ok"]
    if not ok:
        return BASELINE, None
    auc, name = max(ok)
    return f"predictions/{name.removeprefix('train_')}", auc


def run_review_summary(spark: SparkSession, config: Config, run_date: str) -> dict:
    lake = Lake(spark, config.lake.root)
    partition = f"run_date={run_date}"
    with StageRun(lake, run_date, "review_summary") as run:
        source, auc = chosen_source(lake.read_manifest(run_date)["stages"])
        predicted = (baseline_predictions(lake, config, partition) if source == BASELINE
                     else lake.read(source, partition))
        if source == BASELINE:
            run.warn("no text model ended ok tonight: the summary uses the TF-IDF baseline's "
                     "predictions")
        reviews = prepare(latest_versions(lake.read_history("clean/reviews", run_date),
                                          "review_id"), config.text)
        scored = reviews.join(predicted, "review_id").select("product_id", "tokens",
                                                             "sentiment_probability")
        rows = lake.publish(review_summary(scored, config.text.summary_terms),
                            "mining/review_summary", partition)
        top = (lake.read("mining/review_summary", partition)
               .orderBy(F.col("reviews").desc(), F.col("product_id")).limit(1).collect())
        run.counts["products"] = rows
        run.metrics.update(source=source, source_auc=auc)
        if top:
            run.metrics["most_reviewed"] = top[0].asDict()
        run.outputs["review_summary"] = lake.partition_url("mining/review_summary", partition)
    return {**run.counts, **run.metrics}
