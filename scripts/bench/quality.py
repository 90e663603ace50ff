"""Model quality over seeds: the CNN and image deep clustering on several image sets, each beside
its baseline on the same data, as mean and spread over `--seeds`.

    .venv/bin/python scripts/bench/quality.py [--conf conf/local.yaml] [--seeds 1,2,3]
        [--sets fashion,digits8,shapes16_inverted,strokes28] [--models cnn,autoencoder]
        [--set train.budget_seconds=60 ...]

Each (set, seed) trains through the stage itself (`deepmine.deep.train.run_train`, Horovod ranks from
Spark) on a lake of its own under --dir, with `train.seed` = the seed; `fashion` is Fashion-MNIST
through the features stage (its Debian package; `features.image_limit_*` of the config decide how
many images), the others come from `deepmine.data.imagesets`. The figures are the stage's own
manifest metrics: CNN test accuracy beside the majority class and logistic regression on the
pixels; cluster_acc and NMI beside K-means on the raw pixels; the stage status. With
`--set train.budget_seconds=0` and conf/full.yaml it reruns the README's full-config figures
(about 40 minutes per seed on 2 CPU cores).

The baselines are computed here too, from the feature table, so the script also measures code
from before the quality gates (PYTHONPATH=<old checkout>/lib, with lib/deepmine/data/imagesets.py
copied in).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import numpy as np

from results import publish

D = "2026-11-22"


def _lake_for(spark, conf: str | None, overrides: list[str], root: Path, name: str, seed: int):
    from deepmine.data import imagesets
    from deepmine.core.config import load_config
    if root.exists():
        shutil.rmtree(root)
    side = {"digits8": 8, "shapes16_inverted": 16}.get(name, 28)
    config = load_config(conf, [f"lake.root={root}", "spark.ui_enabled=false",
                                f"images.height={side}", f"images.width={side}",
                                *overrides, f"train.seed={seed}"])
    if name == "fashion":
        from deepmine.deep.features import run_features
        config.features.image_source = "fashion_mnist"
        run_features(spark, config, D)
    else:
        pixels, labels, splits = imagesets.make(name, seed=0)
        imagesets.publish_image_features(spark, config, D, pixels, labels, splits)
    return config


def _baselines(spark, config) -> dict:
    """Majority class, logistic regression on the pixels and K-means on them: the same data."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from deepmine.core.lake import Lake
    from deepmine.core.metrics import clustering_scores
    rows = Lake(spark, config.lake.root).read("features/images", f"run_date={D}") \
        .where("label >= 0").select("row_id", "split", "label", "features").toPandas()
    x = np.stack(rows["features"].to_numpy()).astype(np.float32)
    y = rows["label"].to_numpy()
    train = (rows["split"] == "train").to_numpy() & (rows["row_id"] < 10000).to_numpy()
    test = (rows["split"] == "test").to_numpy()
    values, counts = np.unique(y[train], return_counts=True)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.1)).fit(x[train],
                                                                                      y[train])
    k = config.train.image_clusters
    clusters = KMeans(n_clusters=k, n_init=config.train.kmeans_n_init,
                      random_state=config.train.seed).fit_predict(x.astype(np.float64))
    km = clustering_scores(y, clusters)
    return {"majority": float((y[test] == values[counts.argmax()]).mean()),
            "logistic": float((lr.predict(x[test]) == y[test]).mean()),
            "kmeans_acc": km["cluster_acc"], "kmeans_nmi": km["nmi"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=None)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--sets", default="digits8,shapes16_inverted,strokes28,fashion")
    p.add_argument("--models", default="cnn,autoencoder")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--dir", default="/tmp/deepmine-bench-quality")
    p.add_argument("--label", default="", help="a name for this code version in the results")
    a = p.parse_args()
    from deepmine.core.config import load_config
    from deepmine.core.lake import Lake
    from deepmine.core.spark import build_session
    from deepmine.deep.train import run_train
    spark = build_session(load_config(a.conf, ["spark.ui_enabled=false", *a.overrides]))
    runs = []
    for name in a.sets.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            config = _lake_for(spark, a.conf, a.overrides, Path(a.dir) / name, name, seed)
            base = _baselines(spark, config)
            for model in a.models.split(","):
                stage = "train_cnn" if model == "cnn" else "train_autoencoder_images"
                try:
                    run_train(spark, config, D, model, "images")
                except Exception as e:  # the old code fails on some sets: that is a result too
                    runs.append({"set": name, "model": model, "seed": seed, "status": "failed",
                                 "error": str(e).splitlines()[0][:120], **base})
                    continue
                record = Lake(spark, config.lake.root).read_manifest(D)["stages"][stage]
                m = record["metrics"]
                runs.append({"set": name, "model": model, "seed": seed, "status": record["status"],
                             "score": m.get("accuracy") if model == "cnn" else m.get("cluster_acc"),
                             "nmi": m.get("nmi"), "epochs": m.get("epochs_run"),
                             "retries": m.get("retries"), "seconds": m.get("train_seconds"),
                             **base})
                print(json.dumps(runs[-1]), flush=True)
    rows = []
    for name in a.sets.split(","):
        for model in a.models.split(","):
            mine = [r for r in runs if r["set"] == name and r["model"] == model]
            scores = [r["score"] for r in mine if r.get("score") is not None]
            baseline = "logistic" if model == "cnn" else "kmeans_acc"
            bases = [r[baseline] for r in mine]
            rows.append({
                "set": name, "model": model, "runs": len(mine),
                "score_mean": statistics.mean(scores) if scores else None,
                "score_sd": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "score_min": min(scores, default=None), "score_max": max(scores, default=None),
                "baseline": baseline, "baseline_mean": statistics.mean(bases) if bases else None,
                "majority": statistics.mean(r["majority"] for r in mine) if mine else None,
                "statuses": ",".join(sorted({r["status"] for r in mine}))})
    publish(f"quality{('_' + a.label) if a.label else ''}", rows,
            meta={"conf": a.conf, "overrides": a.overrides, "seeds": a.seeds, "runs": runs})


if __name__ == "__main__":
    main()
