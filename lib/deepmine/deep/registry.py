"""Model registry: every training logged to MLflow, every model a registered version, and the
`champion` alias moved only when tonight's version holds up on tonight's data.

MLflow is the tracking and registry that Spark and Databricks users already run. The embedded
default needs no server: a SQLite store under the lake (`<lake.root>/_mlflow/mlflow.db`, a local
lake only) with the run artifacts beside it; a cluster config points `mlflow.tracking_uri` at
the team's server. A version's artifacts are the model's files as the lake holds them
(`models/<name>/run_date=D`: weights, spec, exports, metrics; the lake's URL is its `lake_model`
tag), logged under the run's artifact path `model`, so a champion is loaded from the registry
alone (a server's artifact store must hold them: MLflow refuses a version whose source is a
local path outside its run).

Per training stage, after the quality gate:

1. one MLflow run in the experiment `mlflow.experiment`: the training's parameters (the model
   spec and the TrainArgs that shape it), its per-epoch history as step metrics, the test and
   baseline metrics, the manifest's metrics as a JSON artifact;
2. a version of the registered model `<mlflow.model_prefix><name>`, tagged with the run date,
   its parent version (the champion it started from; none for a full training) and how it was
   trained (`full` or `warm_start`), the stage's status and its validation score;
3. promotion (`promotion`): tonight's version becomes `champion` when there is none, or when its
   score on tonight's held-out split is not below the champion's on the same rows by more than
   `mlflow.promotion_tolerance`, and only when its stage passed its quality gate. Otherwise the
   champion stays and tonight's predictions are the champion's, scored on tonight's features (a
   rollback costs nothing: no retraining).

Warm starts (`warm_start_plan`): a model whose champion comes from an earlier night and has
tonight's spec starts from the champion's weights (`train.warm_started`): a classifier for
`mlflow.warm_start_epochs` epochs; deep clustering skips pretraining and the K-means start,
keeps the champion's centres and self-trains that many DEC epochs. A full training every
`mlflow.full_retrain_every` nights (the champion's `warm_starts_since_full` tag) or when the
drift stage names the stage in `full_retrain`. NCF indexes its users and items afresh each night
and trains in full.

The validation score (`validation_score`) is the CNN's test accuracy and a text model's test AUC.
The champion is scored with its own spec and weights; when its spec differs from tonight's (a
new vocabulary, another feature dimension), its inputs are laid out differently and it cannot be
scored on tonight's rows: tonight's version is then promoted if its gate passed, and the
manifest says why. The autoencoders have no labelled held-out rows, and NCF's lists and user
and item indexes are its own each night: their versions are promoted when their gate passes.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deepmine.core.config import Config, ConfigError
from deepmine.core.lake import resolve_url

CHAMPION = "champion"


def tracking_uri(config: Config) -> str:
    """`mlflow.tracking_uri`, or the SQLite store under a local lake."""
    if config.mlflow.tracking_uri:
        return config.mlflow.tracking_uri
    root = resolve_url(config.lake.root)
    if not root.startswith("file://"):
        raise ConfigError(f"config key 'mlflow.tracking_uri' is empty and the lake ({root}) is "
                          f"not local: point it at the team's MLflow server (http://host:5000)")
    directory = os.path.join(root.removeprefix("file://"), "_mlflow")
    os.makedirs(directory, exist_ok=True)
    return f"sqlite:///{os.path.join(directory, 'mlflow.db')}"


def registered_name(config: Config, name: str) -> str:
    return f"{config.mlflow.model_prefix}{name}"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def promotion(gate_ok: bool, score: float | None, champion_score: float | None,
              has_champion: bool, tolerance: float) -> Decision:
    """Whether tonight's version becomes the champion (higher scores are better)."""
    if not gate_ok:
        return Decision(False, "tonight's model did not pass its quality gate")
    if not has_champion:
        return Decision(True, "first version")
    if champion_score is None or score is None:
        return Decision(True, "the champion cannot be scored on tonight's rows; tonight's "
                              "version passed its gate")
    if score >= champion_score - tolerance:
        return Decision(True, f"validation {score:.4f} against the champion's {champion_score:.4f}"
                              f" on the same rows (tolerance {tolerance:g})")
    return Decision(False, f"validation {score:.4f} falls below the champion's "
                           f"{champion_score:.4f} on the same rows by more than {tolerance:g}")


def validation_score(spec: dict, features: DataFrame, predictions: DataFrame,
                     id_column: str) -> float | None:
    """The held-out score promotion compares: the CNN's test accuracy, a text model's test AUC;
    None for a model without labelled held-out rows."""
    test = features.where((F.col("split") == "test") & (F.col("label") >= 0)) \
        .select(id_column, "label") if "split" in features.columns else None
    if spec["kind"] == "cnn":
        rows = test.join(predictions, id_column).select("label", "predicted_label").toPandas()
        return float((rows["label"] == rows["predicted_label"]).mean()) if len(rows) else None
    if spec["kind"] in ("textcnn", "textrnn"):
        from sklearn.metrics import roc_auc_score
        rows = test.join(predictions, id_column).select("label", "sentiment_probability") \
            .toPandas()
        if rows["label"].nunique() < 2:
            return None
        return float(roc_auc_score(rows["label"], rows["sentiment_probability"]))
    return None


_OPEN: dict[tuple[str, str], "Registry"] = {}


def open_registry(config: Config) -> "Registry":
    """The process's Registry for this store and experiment (a client's first connection checks
    the store's schema: seconds, once per nightly rather than twice per stage)."""
    key = (tracking_uri(config), config.mlflow.experiment)
    if key not in _OPEN:
        _OPEN[key] = Registry(config)
    _OPEN[key].config = config
    return _OPEN[key]


class Registry:
    """One MLflow client for the night's trainings (tracking and registry on the same URI)."""

    def __init__(self, config: Config):
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow import MlflowClient
        self.config = config
        self._models: dict[tuple[str, str], tuple[dict, bytes]] = {}
        self.uri = tracking_uri(config)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        found = self.client.get_experiment_by_name(config.mlflow.experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            artifacts = None
            if self.uri.startswith("sqlite:///"):  # artifacts beside the store, under the lake
                artifacts = "file://" + os.path.join(
                    os.path.dirname(self.uri.removeprefix("sqlite:///")), "artifacts")
            self.experiment_id = self.client.create_experiment(config.mlflow.experiment,
                                                               artifact_location=artifacts)

    def champion(self, name: str):
        """The version holding the champion alias, or None."""
        from mlflow.exceptions import MlflowException
        try:
            return self.client.get_model_version_by_alias(registered_name(self.config, name),
                                                          CHAMPION)
        except MlflowException:
            return None

    def log_training(self, stage: str, name: str, run_date: str, params: dict[str, Any],
                     metrics: dict[str, Any], files: dict[str, bytes], tags: dict[str, str]) -> str:
        """One run with the training's params, per-epoch history, scalar metrics and the model's
        files (artifact path `model`), then a registered version of them; returns the version."""
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        client = self.client
        run = client.create_run(self.experiment_id, run_name=f"{stage} {run_date}",
                                tags={"run_date": run_date, "stage": stage, **tags})
        run_id = run.info.run_id
        flat = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        scalars = [Metric(k, float(v), 0, 0) for k, v in sorted(metrics.items())
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and np.isfinite(float(v))]
        for epoch, row in enumerate(metrics.get("history") or []):
            scalars += [Metric(f"epoch_{k}", float(v), 0, epoch) for k, v in sorted(row.items())
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and np.isfinite(float(v))]
        for start in range(0, len(flat), 90):  # the API's limits: 100 params, 1000 metrics
            client.log_batch(run_id, params=flat[start:start + 90])
        for start in range(0, len(scalars), 900):
            client.log_batch(run_id, metrics=scalars[start:start + 900])
        with tempfile.TemporaryDirectory() as tmp:
            for file_name, data in files.items():
                with open(os.path.join(tmp, file_name), "wb") as f:
                    f.write(data)
            client.log_artifacts(run_id, tmp, "model")
        client.set_terminated(run_id)
        model = registered_name(self.config, name)
        try:
            client.create_registered_model(model, description=f"deepmine {stage}")
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        version = client.create_model_version(model, source=f"{run.info.artifact_uri}/model",
                                              run_id=run_id,
                                              tags={"run_date": run_date, **tags})
        return str(version.version)

    def promote(self, name: str, version: str) -> None:
        self.client.set_registered_model_alias(registered_name(self.config, name), CHAMPION,
                                               version)

    def listing(self) -> list[dict[str, Any]]:
        """Every version of every deepmine model: name, version, run date, training, parent,
        status, validation score, aliases."""
        rows = []
        prefix = self.config.mlflow.model_prefix
        for model in self.client.search_registered_models():
            if not model.name.startswith(prefix):
                continue
            aliases: dict[str, list[str]] = {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            for v in self.client.search_model_versions(f"name='{model.name}'"):
                tags = v.tags or {}
                rows.append({"model": model.name, "version": int(v.version),
                             "run_date": tags.get("run_date", ""),
                             "training": tags.get("training", ""),
                             "parent": tags.get("parent_version", ""),
                             "status": tags.get("status", ""),
                             "validation": tags.get("validation_score", ""),
                             "aliases": ",".join(sorted(aliases.get(str(v.version), [])))})
        return sorted(rows, key=lambda r: (r["model"], r["version"]))


    def read_model(self, version) -> tuple[dict, bytes]:
        """A version's spec and weights, from its run's artifacts; downloaded once per version
        (the warm-start plan and the promotion both read the champion's)."""
        key = (version.name, str(version.version))
        if key not in self._models:
            with tempfile.TemporaryDirectory() as tmp:
                local = self.client.download_artifacts(version.run_id, "model", tmp)
                with open(os.path.join(local, "spec.json")) as f:
                    spec = json.load(f)
                with open(os.path.join(local, "weights.pt"), "rb") as f:
                    self._models[key] = (spec, f.read())
        return self._models[key]


def _params(args) -> dict[str, Any]:
    """What shaped the training: the spec's entries and the TrainArgs scalars (no file lists)."""
    import dataclasses
    out = {f"spec.{k}": v for k, v in args.spec.items()}
    out.update({k: v for k, v in dataclasses.asdict(args).items()
                if isinstance(v, (int, float, str, bool)) and k not in ("fingerprint", "log_prefix")})
    return out


def register_and_promote(config: Config, stage: str, name: str, run_date: str, args,
                         metrics: dict[str, Any], files: dict[str, bytes], model_url: str,
                         gate_ok: bool,
                         features: DataFrame, predictions: DataFrame, id_column: str,
                         table: str, plan: dict[str, Any] | None = None
                         ) -> tuple[dict[str, Any], DataFrame | None]:
    """Log tonight's training, register it, decide the champion. Returns the manifest's
    `registry` record and, when the champion stays, its predictions on tonight's features
    (to publish instead of tonight's model's); None when tonight's are the ones to keep."""
    from deepmine.deep.predict import predict
    registry = open_registry(config)
    champion = registry.champion(name)
    # no feature table (the recommender ranks lists of its own): promoted on its gate
    score = validation_score(args.spec, features, predictions, id_column) \
        if features is not None else None
    champion_score, champion_predictions, comparable = None, None, False
    if champion is not None and features is not None:
        spec, weights = registry.read_model(champion)
        comparable = spec == args.spec
        if comparable:
            champion_predictions = predict(features, spec, weights, id_column, table).persist()
            champion_score = validation_score(spec, features, champion_predictions, id_column)
    decision = promotion(gate_ok, score, champion_score, champion is not None,
                         config.mlflow.promotion_tolerance)
    plan = plan or {"training": "full", "reason": "warm starts off"}
    tags = {"training": plan["training"], "parent_version": plan.get("parent_version", ""),
            "warm_starts_since_full": str(plan.get("warm_starts_since_full", 0)),
            "status": "ok" if gate_ok else "degraded",
            "validation_score": "" if score is None else f"{score:.6f}", "lake_model": model_url}
    version = registry.log_training(stage, name, run_date, _params(args), metrics,
                                    {**files, "metrics.json": json.dumps(
                                        metrics, indent=1, default=str).encode()}, tags)
    if decision.promote:
        registry.promote(name, version)
    served = None
    if not decision.promote and champion_predictions is not None:
        served = champion_predictions
    elif champion_predictions is not None:
        champion_predictions.unpersist()
    record = {"registered_model": registered_name(config, name), "version": version,
              "training": plan["training"], "training_reason": plan["reason"],
              "parent_version": plan.get("parent_version") or None,
              "promoted": decision.promote, "reason": decision.reason,
              "champion": version if decision.promote else
              (str(champion.version) if champion else None),
              "validation_score": score, "champion_score": champion_score,
              "champion_comparable": comparable if champion is not None and features is not None
              else None,
              "predictions_from": "tonight" if served is None else f"champion {champion.version}",
              "tracking_uri": registry.uri}
    return record, served


def warm_start_plan(config: Config, name: str, stage: str, run_date: str, spec: dict,
                    manifest: dict[str, Any]) -> dict[str, Any]:
    """How tonight's model trains: `warm_start` from the champion's weights when an earlier
    night's champion has tonight's spec, fewer than `full_retrain_every` - 1 warm starts lie
    since its last full training, and the drift stage asks for no full one; else `full`.
    Returns training, reason, and for a warm start init_weights_url, parent_version and
    warm_starts_since_full."""
    registry = open_registry(config)
    champion = registry.champion(name)
    if champion is None:
        return {"training": "full", "reason": "no champion yet"}
    tags = champion.tags or {}
    if tags.get("run_date", "") >= run_date:
        return {"training": "full", "reason": f"the champion (version {champion.version}) is "
                                              f"tonight's own or later: a re-run trains as the "
                                              f"first run did"}
    if registry.read_model(champion)[0] != spec:
        return {"training": "full", "reason": f"the champion (version {champion.version}) has "
                                              f"another spec"}
    drift = manifest.get("stages", {}).get("drift", {}).get("metrics", {}).get("full_retrain", {})
    if stage in drift:
        return {"training": "full", "reason": f"the drift stage asks for it ({drift[stage]})"}
    since = int(tags.get("warm_starts_since_full") or 0) + 1
    if since >= config.mlflow.full_retrain_every:
        return {"training": "full", "reason": f"scheduled: every {config.mlflow.full_retrain_every}"
                                              f" nights"}
    if not tags.get("lake_model"):
        return {"training": "full", "reason": "the champion's weights are not in the lake"}
    return {"training": "warm_start", "reason": f"from champion version {champion.version} "
                                                f"({tags.get('run_date')})",
            "init_weights_url": f"{tags['lake_model']}/weights.pt",
            "parent_version": str(champion.version), "warm_starts_since_full": since}


def model_decisions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """What one night decided for each model (from its manifest): per training stage with a
    registry record, how it trained and why (a full retrain the drift stage asked for says so),
    whether its version became the champion and why, and whose predictions were published."""
    stages = manifest.get("stages", {})
    rows = []
    for stage, rec in stages.items():
        registry = (rec.get("metrics") or {}).get("registry")
        if not registry:
            continue
        rows.append({"stage": stage, "status": rec.get("status"),
                     "training": registry.get("training"),
                     "training_reason": registry.get("training_reason"),
                     "version": registry.get("version"),
                     "parent_version": registry.get("parent_version"),
                     "promoted": registry.get("promoted"),
                     "promotion_reason": registry.get("reason"),
                     "champion": registry.get("champion"),
                     "predictions_from": registry.get("predictions_from")})
    return rows
