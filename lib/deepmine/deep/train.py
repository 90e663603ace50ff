"""Train: `deepmine train --model cnn|autoencoder|textcnn|textrnn --target images|customers|reviews`
(and `--model ncf`, the neural recommender: deepmine.deep.ncf, manifest stage `train_ncf`).

One stage per model (manifest names `train_cnn`, `train_textcnn`, `train_textrnn`,
`train_autoencoder_customers`, `train_autoencoder_images`), each doing, for run date D:

1. launch `deepmine.deep.trainer.train` on `train.num_proc` Horovod ranks over the feature table's
   Parquet files (`train.launcher`: `spark` = horovod.spark.run from this session, or
   `horovodrun` = a local horovodrun process, hosts from `train.hosts`); checkpoints every epoch
   in `models/<model>/_checkpoints/run_date=D/`, resumed when the stage is run again;
2. publish `models/<model>/run_date=D/`: `weights.pt` (a state_dict; load with
   `torch.load(..., weights_only=True)` into `deepmine.deep.models.build(spec)`), `spec.json`,
   `metrics.json`, `model.torchscript.pt` and, for the CNN, `model_int8.torchscript.pt`;
3. batch inference over the whole feature table with Spark -> `predictions/<model>/run_date=D`;
4. metrics into the manifest: CNN test accuracy, confusion matrix and int8 accuracy; for deep
   clustering cluster_acc / nmi / ari against the known groups (image labels, or the generator's
   planted customer groups beside the input the run's ingest stage read) beside plain K-means on
   the same vectors, K-means on the pretrained embeddings (DEC's starting point) and, for
   customers, the RFM stage's K-means; how training ended (epochs run, best epoch, stop reason,
   every attempt with its failure);
5. the quality gate: the stage is `degraded` (published, with the reasons in the manifest) when
   training failed on every attempt, when the CNN does not beat the majority class or falls below
   logistic regression on the pixels of the same split, or when deep clustering falls below
   K-means on the raw vectors (or one cluster holds almost every row).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deepmine.core.config import Config, ConfigError
from deepmine.core.lake import Lake, StageRun
from deepmine.deep.loader import parquet_parts, split_urls
from deepmine.deep.trainer import COLLAPSE_SHARE, CheckpointStore, TrainArgs, state_dict_bytes

MODELS = ("autoencoder", "cnn", "textcnn", "textrnn", "ncf")
TEXT_MODELS = ("textcnn", "textrnn")  # sentiment of reviews (deepmine.deep.train_text)
TARGETS = ("customers", "images", "reviews")
CUSTOMER_HIDDEN = (64, 32)
IMAGE_DENSE_HIDDEN = (500, 500, 2000)  # DEC's and N2D's layout (train.image_autoencoder: dense)
PROJECTION_DIM = 64  # the contrastive projection head's output (train.contrastive_weight)


def own_target(model: str, target: str | None) -> str:
    """`target`, or when None the model's own: reviews for the text models, else images."""
    return target or ("reviews" if model in TEXT_MODELS else "images")


def model_name(model: str, target: str | None) -> str:
    """The model's name in the lake (`models/<name>`, `predictions/<name>`); `target` None is
    the model's own (images for the CNN and the autoencoder, reviews for the text models)."""
    if model not in MODELS:
        raise ConfigError(f"--model: expected one of {list(MODELS)}, found {model!r}")
    if model == "ncf":  # learns from interactions (recommend.feedback), not a feature table
        if target is not None:
            raise ConfigError("--model ncf learns from the interactions recommend.feedback names "
                              "(purchases or ratings): leave --target out")
        return "ncf"
    target = own_target(model, target)
    if target not in TARGETS:
        raise ConfigError(f"--target: expected one of {list(TARGETS)}, found {target!r}")
    if model in TEXT_MODELS:
        if target != "reviews":
            raise ConfigError(f"--model {model} classifies reviews: use --target reviews")
        return model
    if target == "reviews":
        raise ConfigError(f"--model {model} does not take reviews: use textcnn or textrnn")
    if model == "cnn":
        if target != "images":
            raise ConfigError("--model cnn classifies images: use --target images")
        return "cnn"
    return f"autoencoder_{target}"


def stage_name(model: str, target: str | None) -> str:
    return f"train_{model_name(model, target)}"


# --------------------------------------------------------------------------- arguments

def train_args(config: Config, name: str, parts, run_date: str, checkpoint_dir: str) -> TrainArgs:
    """The ranks' arguments for model `name` over the feature table's `parts`."""
    t = config.train
    if t.num_proc < 1:
        raise ConfigError(f"config key 'train.num_proc': expected >= 1, found {t.num_proc}")
    for key in ("pretrain_noise", "customer_pretrain_noise", "augment_shift", "contrastive_weight",
                "dec_warm_epochs", "customer_dec_warm_epochs"):
        if getattr(t, key) < 0:
            raise ConfigError(f"config key 'train.{key}': expected >= 0, found {getattr(t, key)}")
    for prefix in ("", "customer_"):
        warm, most = getattr(t, f"{prefix}dec_warm_epochs"), getattr(t, f"{prefix}dec_max_epochs")
        if warm and warm >= most:
            raise ConfigError(f"config key 'train.{prefix}dec_warm_epochs': {warm} leaves no DEC "
                              f"epoch within train.{prefix}dec_max_epochs ({most}); expected fewer")
    rows = sum(p.rows for p in parts)
    row_groups = sum(1 for p in parts for n in p.row_group_rows if n)
    if not 0 <= t.validation_fraction < 1:
        raise ConfigError("config key 'train.validation_fraction': expected a share in [0, 1), "
                          f"found {t.validation_fraction}")
    for key in ("patience", "max_retries", "budget_seconds"):
        if getattr(t, key) < 0:
            raise ConfigError(f"config key 'train.{key}': expected >= 0, found {getattr(t, key)}")
    common = dict(name=name, checkpoint_dir=checkpoint_dir, batch_size=t.batch_size, lr=t.lr,
                  seed=t.seed, device=t.device, reader_pool=t.reader_pool,
                  shuffle_buffer=t.shuffle_buffer, log_prefix=f"[train_{name}]",
                  patience=t.patience, min_delta=t.min_delta,
                  validation_fraction=t.validation_fraction, budget_seconds=t.budget_seconds,
                  max_retries=t.max_retries, recovery_lr_factor=t.recovery_lr_factor)
    h, w = config.images.height, config.images.width
    if name in TEXT_MODELS:
        from deepmine.deep.train_text import text_spec
        train_files, test_files = split_urls(parts, "train"), split_urls(parts, "test")
        args = TrainArgs(task="cnn", spec=text_spec(config, name, run_date),
                         train_urls=train_files, eval_urls=test_files, epochs=t.epochs, **common)
        needed = len(train_files)
    elif name == "cnn":
        train_files, test_files = split_urls(parts, "train"), split_urls(parts, "test")
        n_classes = _class_count(train_files)
        args = TrainArgs(task="cnn", spec={"kind": "cnn", "height": h, "width": w,
                                           "n_classes": n_classes},
                         train_urls=train_files, eval_urls=test_files, epochs=t.epochs, **common)
        needed = len(train_files)
    else:
        customers = name.endswith("customers")
        if customers:
            dim = _vector_length(parts)
            spec = {"kind": "dense_dec", "in_dim": dim, "hidden": list(CUSTOMER_HIDDEN),
                    "embedding_dim": t.customer_embedding_dim, "n_clusters": t.customer_clusters,
                    "alpha": t.dec_alpha}
        else:
            spec = image_autoencoder_spec(config, *input_stats(split_urls(parts)))
        if customers:
            common["batch_size"] = t.customer_batch_size
        args = TrainArgs(
            task="dec", spec=spec, train_urls=split_urls(parts), n_rows=rows,
            pretrain_epochs=t.customer_pretrain_epochs if customers else t.pretrain_epochs,
            pretrain_noise=t.customer_pretrain_noise if customers else t.pretrain_noise,
            augment_shift=0 if customers else t.augment_shift,
            contrastive_weight=0.0 if customers else t.contrastive_weight,
            dec_init=t.customer_dec_init if customers else t.dec_init,
            dec_init_choice=t.customer_dec_init_choice if customers else t.dec_init_choice,
            dec_warm_epochs=t.customer_dec_warm_epochs if customers else t.dec_warm_epochs,
            dec_max_epochs=t.customer_dec_max_epochs if customers else t.dec_max_epochs,
            dec_variant=t.dec_variant, dec_gamma=t.dec_gamma, dec_tolerance=t.dec_tolerance,
            kmeans_n_init=t.kmeans_n_init, **common)
        needed = row_groups
    # small data: a smaller batch, so that an epoch still takes MIN_STEPS_PER_EPOCH steps per rank
    # (1,500 images on 2 ranks at 128 a batch made 6 steps an epoch: a budget spent on epochs'
    # fixed costs instead of learning)
    trained_rows = sum(p.rows for p in parts if p.split in (None, "train"))
    args.batch_size = batch_for(args.batch_size, trained_rows, t.num_proc)
    if needed < t.num_proc:
        raise ValueError(f"{name}: {needed} row groups for {t.num_proc} ranks; Petastorm gives "
                         "each rank whole row groups: raise features.row_groups and re-run features")
    if needed % t.num_proc:
        print(f"[train_{name}] warning: {needed} row groups do not split evenly over "
              f"{t.num_proc} ranks (set features.row_groups to a multiple of train.num_proc)")
    return fingerprinted(args, parts, run_date)


def warm_started(args: TrainArgs, weights_url: str, epochs: int) -> TrainArgs:
    """`args` for a warm start from the weights at `weights_url` with `epochs` of training: a
    classifier trains that many epochs; deep clustering skips pretraining and the K-means start,
    keeps the weights' centres and self-trains that many DEC epochs."""
    if args.task == "dec":
        return dataclasses.replace(args, init_weights_url=weights_url, pretrain_epochs=0,
                                   dec_init="weights", dec_warm_epochs=0, dec_max_epochs=epochs)
    return dataclasses.replace(args, init_weights_url=weights_url, epochs=epochs)


def fingerprinted(args: TrainArgs, parts, run_date: str) -> TrainArgs:
    """`args` with the fingerprint of its inputs and settings (a checkpoint of others is not
    resumed)."""
    described = {k: v for k, v in dataclasses.asdict(args).items()
                 if k not in ("checkpoint_dir", "log_prefix", "fingerprint")}
    described["parts"] = [(p.url, p.row_group_rows) for p in parts]
    described["run_date"] = run_date
    args.fingerprint = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return args


MIN_STEPS_PER_EPOCH = 25
MIN_BATCH = 16


def batch_for(batch_size: int, rows: int, ranks: int) -> int:
    """The configured batch size per rank, made smaller (down to MIN_BATCH) where the rows
    would give a rank fewer than MIN_STEPS_PER_EPOCH steps an epoch."""
    return max(min(batch_size, MIN_BATCH), min(batch_size, rows // max(ranks * MIN_STEPS_PER_EPOCH, 1)))


def image_autoencoder_spec(config: Config, input_shift: float = 0.0,
                           input_scale: float = 1.0) -> dict:
    """The image deep-clustering model's spec (`models.build`), by `train.image_autoencoder`.
    Both kinds carry the image size: the augmentations need it; with `train.contrastive_weight`
    the model carries a projection head for the pretraining's consistency loss. Both standardize
    their input by the training data's mean and standard deviation (`input_stats`) and
    reconstruct through a linear output (models/autoencoder.py says why)."""
    t, images = config.train, config.images
    spec = {"height": images.height, "width": images.width, "embedding_dim": t.embedding_dim,
            "n_clusters": t.image_clusters, "alpha": t.dec_alpha,
            "input_shift": round(float(input_shift), 6), "input_scale": round(float(input_scale), 6)}
    if t.contrastive_weight:
        spec["projection_dim"] = PROJECTION_DIM
    if t.image_autoencoder == "dense":
        return {"kind": "dense_dec", "in_dim": images.height * images.width,
                "hidden": list(IMAGE_DENSE_HIDDEN), **spec}
    return {"kind": "conv_dec", "output": "linear", **spec}


def input_stats(urls: list[str]) -> tuple[float, float]:
    """(mean, standard deviation) of every value of the `features` column in `urls` (pyarrow, one
    row group at a time); the standard deviation is at least 1e-3 (a constant image set)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    total = squares = count = 0.0
    for url in urls:
        fs, path = pafs.FileSystem.from_uri(url)
        with fs.open_input_file(path) as f:
            pfile = pq.ParquetFile(f)
            for g in range(pfile.num_row_groups):
                values = pfile.read_row_group(g, columns=["features"]).column(0).combine_chunks()
                flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
                total, squares, count = total + flat.sum(), squares + (flat ** 2).sum(), \
                    count + flat.size
    if not count:
        return 0.0, 1.0
    mean = total / count
    return mean, max(float(np.sqrt(max(squares / count - mean ** 2, 0.0))), 1e-3)


def _class_count(urls: list[str]) -> int:
    """Classes the CNN predicts: the largest label of the training files + 1 (at least 2; -1,
    unknown, does not count). No labelled training image is an error: there is nothing to learn."""
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    largest = -1
    for url in urls:
        fs, path = pafs.FileSystem.from_uri(url)
        with fs.open_input_file(path) as f:
            top = pc.max(pq.ParquetFile(f).read(columns=["label"]).column(0)).as_py()
        largest = max(largest, -1 if top is None else int(top))
    if largest < 0:
        raise ValueError("--model cnn: no labelled training image (every label is -1, unknown); "
                         "the CNN needs labels: cluster unlabelled images with --model autoencoder")
    return max(largest + 1, 2)


def _vector_length(parts) -> int:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    for p in parts:
        if p.rows:
            fs, path = pafs.FileSystem.from_uri(p.url)
            with fs.open_input_file(path) as f:
                first = pq.ParquetFile(f).read_row_group(0, columns=["features"]).column(0)[0]
            return len(first.as_py())
    raise ValueError("the feature table has no rows")


# --------------------------------------------------------------------------- launching

def launch(args: TrainArgs, config: Config) -> None:
    """Run `train(args)` on `train.num_proc` ranks with the configured launcher."""
    t = config.train
    if t.launcher == "spark":
        from deepmine.deep.launch import run_on_spark
        from deepmine.deep.trainer import train
        run_on_spark(train, num_proc=t.num_proc, args=(dataclasses.asdict(args),),
                     start_timeout=t.start_timeout)
    else:
        run_horovodrun(args, t.num_proc, t.hosts, t.start_timeout)


def horovodrun_command(args_path: str, num_proc: int, hosts: str = "") -> list[str]:
    """The horovodrun command line that runs `python -m deepmine.deep.trainer ARGS.json` on each rank."""
    runner = Path(sys.executable).with_name("horovodrun")
    command = [str(runner) if runner.exists() else "horovodrun", "-np", str(num_proc),
               "-H", hosts or f"localhost:{num_proc}", "--gloo"]
    if not hosts:
        command += ["--network-interface", "lo"]  # one machine: rendezvous on loopback only
    return command + [sys.executable, "-m", "deepmine.deep.trainer", args_path]


def run_horovodrun(args: TrainArgs, num_proc: int, hosts: str = "", start_timeout: int = 120) -> None:
    with tempfile.TemporaryDirectory(prefix="deepmine-train-") as tmp:
        path = os.path.join(tmp, "train_args.json")
        Path(path).write_text(args.to_json())
        command = horovodrun_command(path, num_proc, hosts)
        env = {**os.environ, "HOROVOD_START_TIMEOUT": str(start_timeout)}
        done = subprocess.run(command, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"horovodrun exited with {done.returncode}: {' '.join(command)}")


# --------------------------------------------------------------------------- artifacts

def publish_model_files(lake: Lake, name: str, run_date: str, files: dict[str, bytes]) -> str:
    """Write `models/<name>/run_date=D/` atomically through the lake."""
    return lake.publish_files(f"models/{name}", f"run_date={run_date}", files)


def customer_truth_path(config: Config, manifest: dict) -> str:
    """The planted groups of the customers actually trained on: `train.customer_truth` when set,
    else the generator's customers_truth.csv beside the input this run's ingest stage read (its
    `input` count in the manifest); "" when there is none. Never the file beside
    `input.transactions`: a run fed another input with --input would be scored against groups
    of customers it never saw."""
    if config.train.customer_truth:
        return config.train.customer_truth
    ingested = str(manifest.get("stages", {}).get("ingest", {}).get("counts", {}).get("input") or "")
    if not ingested or "://" in ingested.replace("file://", ""):
        return ""  # nothing ingested for the run, or not a local file: no truth to read
    local = Path(ingested[7:] if ingested.startswith("file://") else
                 ingested[5:] if ingested.startswith("file:") else ingested)
    candidate = (local if local.is_dir() else local.parent) / "customers_truth.csv"
    return str(candidate) if candidate.exists() else ""


# --------------------------------------------------------------------------- stage

def run_train(spark: SparkSession, config: Config, run_date: str, model: str = "cnn",
              target: str | None = None) -> dict:
    """Train `model` on the `target` feature table for `run_date`; publish the model, the
    predictions and the metrics."""
    name = model_name(model, target)
    if name == "ncf":
        from deepmine.deep.ncf import run_train_ncf
        return run_train_ncf(spark, config, run_date)
    target = own_target(model, target)
    lake = Lake(spark, config.lake.root)
    partition = f"run_date={run_date}"
    table = f"features/{target}"
    with StageRun(lake, run_date, f"train_{name}") as run:
        if not lake.has_partition(table, partition):
            raise FileNotFoundError(f"no {table} for {run_date} at {lake.partition_url(table, partition)}:"
                                    f" run `deepmine features --date {run_date}` first")
        parts = parquet_parts(lake.partition_url(table, partition))
        checkpoints = lake.url("models", name, "_checkpoints", partition)
        args = train_args(config, name, parts, run_date, checkpoints)
        plan = None
        if config.mlflow.enabled and config.mlflow.warm_start:
            from deepmine.deep.registry import warm_start_plan
            plan = warm_start_plan(config, name, run.stage, run_date, args.spec,
                                   lake.read_manifest(run_date))
            run.log(f"[{run.stage}] {plan['training']} training: {plan['reason']}")
            if plan["training"] == "warm_start":
                args = fingerprinted(warm_started(args, plan["init_weights_url"],
                                                  config.mlflow.warm_start_epochs), parts, run_date)
        launch(args, config)
        final = CheckpointStore(checkpoints).load_latest()
        if final is None or final.get("fingerprint") != args.fingerprint:
            raise RuntimeError(f"training {name} left no checkpoint in {checkpoints}")
        weights = state_dict_bytes(final["model"])
        history = list(final["history"])

        from deepmine.deep.predict import predict
        id_column = {"customers": "customer_id", "reviews": "review_id"}.get(target, "image_id")
        features = lake.read(table, partition)
        predictions = predict(features, args.spec, weights, id_column, f"predictions/{name}")
        rows = lake.publish(predictions, f"predictions/{name}", partition)
        published = lake.read(f"predictions/{name}", partition)

        summary = final.get("summary", {})
        if name in TEXT_MODELS:
            from deepmine.deep.train_text import text_metrics
            metrics, extra_files, reasons = text_metrics(args, final, features, published, config,
                                                         lake, partition)
        elif name == "cnn":
            metrics, extra_files, reasons = _cnn_metrics(args, final, features, published, config)
            names = (lake.read_manifest(run_date)["stages"].get("features", {}).get("metrics", {})
                     .get("images", {}).get("class_names"))
            if names and len(names) == args.spec["n_classes"]:  # the confusion matrix's labels
                metrics["class_names"] = names
            if config.prune.sparsity > 0:
                pruned_metrics, pruned_files = _pruned_cnn(args, final, features, config, lake,
                                                           name, run_date, parts)
                metrics["pruning"] = pruned_metrics
                extra_files.update(pruned_files)
        else:
            manifest = lake.read_manifest(run_date)
            metrics, extra_files, reasons = _clustering_metrics(
                args, final, features, published, config, lake, partition, target, manifest)
        if summary.get("failure"):
            tried = summary.get("attempts", [])
            reasons.insert(0, f"training failed ({summary['failure']}) on all {len(tried)} "
                              f"attempts: " + "; ".join(
                                  f"lr {a['lr']:g} seed {a['seed']}: {a.get('failure')}"
                                  for a in tried))
        for reason in reasons:
            run.degrade(reason)
        train_seconds = sum(h.get("seconds", 0.0) for h in history)
        train_samples = sum(h.get("samples", 0) for h in history)
        metrics.update(
            spec=args.spec, epochs_run=len(history), ranks=config.train.num_proc,
            batch_size=args.batch_size,
            launcher=config.train.launcher,
            best_epoch=summary.get("best_epoch"), stop_reason=summary.get("stop_reason"),
            pretrain_stop_reason=summary.get("pretrain_stop_reason"),
            failure=summary.get("failure"), retries=max(len(summary.get("attempts", [])) - 1, 0),
            attempts=summary.get("attempts", []),
            budget_seconds=config.train.budget_seconds,
            train_seconds=round(train_seconds, 3),
            train_samples_per_s=round(train_samples / train_seconds, 1) if train_seconds else None,
            history=history)
        if args.task == "dec":
            metrics["pretrain_epochs_run"] = summary.get("pretrain_epochs_run")
            if summary.get("init_choice"):  # what each K-means restart scored, which one started DEC
                metrics["dec_init_restarts"] = summary["init_choice"]
        else:
            metrics.pop("pretrain_stop_reason")
        files = {"weights.pt": weights, "spec.json": json.dumps(args.spec, indent=1).encode(),
                 "metrics.json": json.dumps(metrics, indent=1, default=float).encode(),
                 **extra_files}
        model_url = publish_model_files(lake, name, run_date, files)
        if config.mlflow.enabled:
            rows = keep_fresh(run, lake, config, name, run_date, args, metrics, files,
                               model_url, features, published, id_column, partition, rows, plan)
        run.counts.update(rows_trained=max((int(h.get("samples", 0)) for h in history), default=0),
                          predictions=rows)
        run.metrics.update(metrics)
        run.outputs.update(model=model_url,
                           predictions=lake.partition_url(f"predictions/{name}", partition),
                           checkpoints=checkpoints)
    return {**run.counts, "metrics": run.metrics}


def keep_fresh(run: StageRun, lake: Lake, config: Config, name: str, run_date: str, args,
                metrics: dict, files: dict, model_url: str, features, published, id_column: str,
                partition: str, rows: int, plan: dict | None) -> int:
    """Register tonight's model and move the champion alias (deepmine.deep.registry); when the
    champion stays, its predictions on tonight's features replace tonight's model's. Returns
    the predictions' row count. A registry that cannot be reached degrades the stage (tonight's
    model and predictions stay published) instead of losing the night."""
    from deepmine.deep.registry import register_and_promote
    table = f"predictions/{name}"
    try:
        record, served = register_and_promote(
            config, run.stage, name, run_date, args, metrics, files, model_url,
            not run.degraded_reasons, features, published, id_column, table, plan)
    except Exception as e:  # noqa: BLE001 - the registry is beside the night's work, not in it
        run.degrade(f"model registry ({config.mlflow.tracking_uri or 'local store'}): "
                    f"{type(e).__name__}: {e}")
        return rows
    run.metrics["registry"] = record
    if served is not None:
        rows = lake.publish(served, table, partition)
        served.unpersist()
        run.warn(f"champion version {record['champion']} kept ({record['reason']}): "
                 f"{table} holds its predictions")
    return rows


BASELINE_TRAIN_ROWS = 10000  # training rows the pixel baseline fits on (the first by row_id: seeded)


def pixel_baselines(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                    test_y: np.ndarray, seed: int) -> dict[str, Any]:
    """Test accuracy of the two baselines a CNN must beat on the same split: the majority class of
    the training labels, and multinomial logistic regression on the standardized pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    labels, counts = np.unique(train_y, return_counts=True)
    majority = labels[counts.argmax()]
    out: dict[str, Any] = {"majority_class": round(float((test_y == majority).mean()), 6),
                           "baseline_train_rows": int(len(train_y))}
    if len(labels) > 1:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.1,
                                                                   random_state=seed))
        model.fit(train_x, train_y)
        out["logistic_pixels"] = round(float((model.predict(test_x) == test_y).mean()), 6)
    return out


def _labelled(frame, split: str, limit: int = 0):
    rows = frame.where((F.col("split") == split) & (F.col("label") >= 0))
    if limit:
        rows = rows.where(F.col("row_id") < limit)  # row_ids are in a seeded hash order
    pdf = rows.select("features", "label").toPandas()
    x = np.stack(pdf["features"].to_numpy()).astype(np.float32) if len(pdf) else np.zeros((0, 0))
    return x, pdf["label"].to_numpy()


def _cnn_metrics(args: TrainArgs, final: dict, features, predictions, config: Config):
    """(metrics, extra files, degrade reasons): test accuracy, the confusion matrix, the int8
    model, and the quality gate: the CNN must beat the majority class and match logistic
    regression on the pixels of the same split."""
    import torch
    from deepmine.deep.export import accuracy, quantize_int8, torchscript_bytes
    from deepmine.core.metrics import confusion_matrix
    from deepmine.deep.models import build

    n_classes = args.spec["n_classes"]
    joined = (predictions.join(features.select("image_id", "label", "split"), "image_id")
              .where(F.col("label") >= 0))
    test = joined.where(F.col("split") == "test").select("label", "predicted_label").toPandas()
    train_acc = joined.where(F.col("split") == "train").agg(
        F.avg((F.col("label") == F.col("predicted_label")).cast("double"))).first()[0]
    metrics: dict[str, Any] = {
        "accuracy": round(float((test["label"] == test["predicted_label"]).mean()), 6)
        if len(test) else None,
        "train_accuracy": round(float(train_acc), 6) if train_acc is not None else None,
        "test_images": int(len(test)),
        "n_classes": n_classes,
        "confusion_matrix": confusion_matrix(test["label"], test["predicted_label"], n_classes)
        if len(test) else [],
    }
    model = build(args.spec)
    model.load_state_dict(final["model"])
    model.eval()
    example = torch.zeros(2, args.spec["height"] * args.spec["width"])
    files = {"model.torchscript.pt": torchscript_bytes(model, example)}
    reasons: list[str] = []
    if not len(test):
        metrics["gate"] = "no labelled test image: accuracy and the baselines not measured"
        reasons.append("no labelled test image: the CNN's accuracy is unmeasured")
        return metrics, files, reasons
    x, y = _labelled(features, "test")
    train_x, train_y = _labelled(features, "train", BASELINE_TRAIN_ROWS)
    baselines = pixel_baselines(train_x, train_y, x, y, config.train.seed)
    metrics["baselines"] = baselines
    accuracy_now = metrics["accuracy"]
    metrics["gate"] = "accuracy above the majority class and at least logistic regression's"
    if accuracy_now <= baselines["majority_class"]:
        reasons.append(f"CNN test accuracy {accuracy_now:.4f} does not beat the majority "
                       f"class's {baselines['majority_class']:.4f}")
    if "logistic_pixels" in baselines and accuracy_now < (baselines["logistic_pixels"]
                                                         - config.train.gate_tolerance):
        reasons.append(f"CNN test accuracy {accuracy_now:.4f} is below logistic regression on "
                       f"the pixels ({baselines['logistic_pixels']:.4f}, same split)")
    if config.train.quantize:
        int8 = quantize_int8(model)
        metrics["accuracy_float_driver"] = round(accuracy(model, x, y), 6)
        metrics["accuracy_int8"] = round(accuracy(int8, x, y), 6)
        files["model_int8.torchscript.pt"] = torchscript_bytes(int8, example)
        metrics["bytes_float"] = len(files["model.torchscript.pt"])
        metrics["bytes_int8"] = len(files["model_int8.torchscript.pt"])
    return metrics, files, reasons


def _pruned_cnn(args: TrainArgs, final: dict, features, config: Config, lake: Lake, name: str,
                run_date: str, parts) -> tuple[dict, dict[str, bytes]]:
    """Prune the trained CNN to `prune.sparsity` and fine-tune it through the trainer from the
    trained weights (deepmine.deep.prune), then quantize it; (the float / pruned / pruned+int8
    comparison for the manifest, their TorchScript files)."""
    import dataclasses as dc
    import torch
    from deepmine.deep import prune
    from deepmine.deep.export import accuracy, quantize_int8, torchscript_bytes
    from deepmine.deep.models import build

    cfg = config.prune
    partition = f"run_date={run_date}"
    dense_url = lake.url("models", name, "_checkpoints", f"dense_{partition}.pt")
    lake.write_bytes(dense_url, state_dict_bytes(final["model"]))
    tuned_dir = lake.url("models", name, "_checkpoints", f"pruned_{partition}")
    tuned_args = fingerprinted(dc.replace(args, init_weights_url=dense_url, epochs=cfg.epochs,
                                          prune_sparsity=cfg.sparsity, checkpoint_dir=tuned_dir,
                                          log_prefix=f"{args.log_prefix} pruned"), parts, run_date)
    launch(tuned_args, config)
    tuned = CheckpointStore(tuned_dir).load_latest()
    if tuned is None or tuned.get("fingerprint") != tuned_args.fingerprint:
        raise RuntimeError(f"pruning {name} left no checkpoint in {tuned_dir}")
    dense, pruned = build(args.spec), build(args.spec)
    dense.load_state_dict(final["model"])
    pruned.load_state_dict(prune.dense_state(tuned["model"]))
    int8 = quantize_int8(pruned)
    x, y = _labelled(features, "test")
    example = torch.zeros(2, args.spec["height"] * args.spec["width"])
    files = {"model_pruned.torchscript.pt": torchscript_bytes(pruned, example),
             "model_pruned_int8.torchscript.pt": torchscript_bytes(int8, example)}
    out: dict[str, Any] = {"sparsity": cfg.sparsity, "epochs_run": len(tuned["history"]),
                           "method": "global L1 unstructured over conv and linear weights"}
    for label, model, size in (("float", dense, prune.state_bytes(dense)),
                               ("pruned", pruned, prune.state_bytes(pruned)),
                               ("pruned_int8", int8, files["model_pruned_int8.torchscript.pt"])):
        out[label] = {"accuracy": round(accuracy(model, x, y), 6) if len(y) else None,
                      "nonzero_share": round(prune.nonzero_share(model), 4),
                      "gzip_bytes": prune.gzip_bytes(size),
                      "ms_per_image": round(prune.ms_per_image(model, x[:1024]), 4) if len(y)
                      else None}
    if out["float"]["accuracy"] is not None:
        out["accuracy_drop"] = round(out["float"]["accuracy"] - out["pruned"]["accuracy"], 6)
    return out, files


SILHOUETTE_ROWS = 5000  # rows the internal measure is computed on (a seeded sample)


def _clustering_metrics(args: TrainArgs, final: dict, features, predictions, config: Config,
                        lake: Lake, partition: str, target: str, manifest: dict):
    """(metrics, extra files, degrade reasons). Where known groups exist (image labels; the
    generator's planted customer groups beside the ingested input) the deep clustering is scored
    against them beside plain K-means on the raw vectors, and must reach K-means' cluster_acc.
    Without them, the silhouette (raw vectors, both clusterings) is recorded; it is not a gate:
    K-means optimizes compactness in that very space, so it would win by construction."""
    import pandas as pd
    import torch
    from deepmine.deep.export import torchscript_bytes
    from deepmine.core.metrics import clustering_scores, kmeans_baseline
    from deepmine.deep.models import build

    t = config.train
    id_column = "customer_id" if target == "customers" else "image_id"
    n_clusters = args.spec["n_clusters"]
    metrics: dict[str, Any] = {"n_clusters": n_clusters, "variant": args.dec_variant,
                               "converged": any(h.get("converged") for h in final["history"])}
    changed = [h["assignments_changed"] for h in final["history"] if "assignments_changed" in h]
    if changed:
        metrics["last_assignments_changed"] = changed[-1]
    sizes = predictions.groupBy("cluster").count().collect()
    metrics["cluster_sizes"] = {str(r["cluster"]): int(r["count"]) for r in sorted(sizes)}
    reasons: list[str] = []
    total = sum(metrics["cluster_sizes"].values())
    largest = max(metrics["cluster_sizes"].values(), default=0)
    if n_clusters > 1 and total and largest / total > COLLAPSE_SHARE:
        reasons.append(f"one cluster holds {largest / total:.1%} of the {total} rows")

    everything = features.select(id_column, "row_id", "features",
                                 *(["label"] if target == "images" else [])).toPandas()
    rows = everything
    if target == "images":
        rows = rows[rows["label"] >= 0]
        truth_note = "image labels"
    else:
        path = customer_truth_path(config, manifest)
        if not path or not Path(path).exists():
            rows = rows.iloc[0:0]
            truth_note = ("no planted customer groups beside the ingested input "
                          f"({path or 'none found; train.customer_truth unset'}): no truth metrics")
        else:
            truth = pd.read_csv(path, usecols=["customer_id", "group"], dtype=str)
            rows = rows.merge(truth.rename(columns={"group": "label"}), on="customer_id")
            truth_note = f"planted groups from {path}"
    metrics["truth"] = truth_note
    metrics["scored_rows"] = int(len(rows))
    pred = predictions.select(id_column, "cluster").toPandas()
    if len(rows):
        scored = rows.merge(pred, on=id_column)
        metrics.update(clustering_scores(scored["label"], scored["cluster"]))
        vectors = np.stack(rows["features"].to_numpy())
        metrics["kmeans_baseline"] = kmeans_baseline(vectors, rows["label"], n_clusters, t.seed,
                                                     t.kmeans_n_init)
        metrics["gate"] = "cluster_acc at least K-means' on the raw vectors (same rows, same k)"
        if metrics["cluster_acc"] < (metrics["kmeans_baseline"]["cluster_acc"]
                                     - t.gate_tolerance):
            reasons.append(f"deep clustering cluster_acc {metrics['cluster_acc']:.4f} is below "
                           f"K-means on the raw vectors "
                           f"({metrics['kmeans_baseline']['cluster_acc']:.4f})")
        init = final.get("init_assign")
        if init is not None:
            init = init.numpy()
            # the partition DEC started from, on the pretrained embeddings: K-means (ae_kmeans)
            # or the Gaussian mixture on their UMAP manifold (ae_umap)
            metrics[f"ae_{args.dec_init}"] = clustering_scores(rows["label"],
                                                              init[rows["row_id"].to_numpy()])
        if target == "customers" and lake.has_partition("mining/rfm", partition):
            rfm = lake.read("mining/rfm", partition).select("customer_id", "cluster").toPandas()
            both = rows.merge(rfm, on="customer_id")
            metrics["rfm_kmeans"] = {**clustering_scores(both["label"], both["cluster"]),
                                     "k": int(both["cluster"].nunique())}
    elif len(everything) > n_clusters:
        metrics.update(_silhouettes(everything.merge(pred, on=id_column), n_clusters, t))
        metrics["gate"] = ("no known groups: only collapse is checked; silhouettes recorded, "
                           "not compared (K-means optimizes the raw-space one)")
    model = build(args.spec)
    model.load_state_dict(final["model"])
    dim = args.spec.get("in_dim") or args.spec["height"] * args.spec["width"]
    files = {"model.torchscript.pt": torchscript_bytes(model, torch.zeros(2, dim))}
    return metrics, files, reasons


def _silhouettes(scored, n_clusters: int, t) -> dict[str, Any]:
    """Silhouette on the raw vectors of the deep clusters and of K-means' (a seeded sample)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    sample = scored.sample(min(len(scored), SILHOUETTE_ROWS), random_state=t.seed)
    vectors = np.stack(sample["features"].to_numpy()).astype(np.float64)
    kmeans = KMeans(n_clusters=n_clusters, n_init=t.kmeans_n_init,
                    random_state=t.seed).fit_predict(vectors)

    def silhouette(labels) -> float | None:
        return round(float(silhouette_score(vectors, labels)), 6) \
            if 1 < len(set(labels)) < len(labels) else None
    return {"silhouette": silhouette(sample["cluster"].to_numpy()),
            "kmeans_baseline": {"silhouette": silhouette(kmeans)}}
