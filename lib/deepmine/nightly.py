"""The nightly: every stage that exists, in order, for one run date.

A stage already done for the date (status ok or degraded in the manifest and its output
published) is skipped unless `force`. Stages are listed once, in STAGES; later stages add
themselves there, naming in `needs` the stages whose output they read.

A stage that fails does not stop the night: its failure is in the manifest (status `failed`, the
error), the stages that need it (directly or through another stage) are recorded as `skipped`
with the reason and not run, the stages that do not need it still run, and the report always runs.
`run_nightly` returns what failed; the CLI turns that into exit code 1.
"""
from __future__ import annotations

import dataclasses
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pyspark.sql import SparkSession

from deepmine.core.config import Config, ConfigError
from deepmine.data.ingest import run_ingest, stage_name
from deepmine.core.lake import Lake, _now


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[SparkSession, Config, str, "NightlyInputs"], dict]
    outputs: tuple[str, ...]  # lake tables the stage may publish, a partition per date
    partition_key: str = "run_date"
    applies: Callable[[Config, "NightlyInputs"], bool] = lambda config, inputs: True
    summarizes: bool = False  # redone whenever an earlier stage ran (the report)
    # stages whose output this one reads: when one of them fails (or is skipped because its own
    # dependency failed) in this run, this stage is skipped, not run on stale or missing input
    needs: tuple[str, ...] = ()
    # the outputs whose partition for the date proves the stage done, when not all of them
    # (tables it publishes only for some configs and inputs)
    proof: Callable[[Config, "NightlyInputs"], tuple[str, ...]] | None = None

    def published(self, config: Config, inputs: "NightlyInputs") -> tuple[str, ...]:
        """The tables this stage publishes tonight."""
        return self.outputs if self.proof is None else self.proof(config, inputs)


@dataclass(frozen=True)
class NightlyInputs:
    transactions: str
    ratings: str = ""
    images: str = ""
    reviews: str = ""


def resolve_inputs(config: Config, transactions: str | None = None) -> NightlyInputs:
    """Where tonight's raw input is; synthetic transactions are made on first use if configured."""
    path = transactions or config.input.transactions
    if path and not transactions and config.input.generate_if_missing and not Path(path).exists():
        from deepmine.data.generate import generate_transactions
        g = config.generate
        out = Path(path).parent
        print(f"[nightly] no input at {path}: generating {g.lines} synthetic lines into {out}")
        generate_transactions(out, lines=g.lines, seed=g.seed, dirty_rate=g.dirty_rate,
                              start_date=g.start_date, days=g.days, customers=g.customers,
                              products=g.products)
    return NightlyInputs(path, config.input.ratings, config.input.images, config.input.reviews)


def _ingest(entity: str) -> Callable[[SparkSession, Config, str, NightlyInputs], dict]:
    def run(spark: SparkSession, config: Config, run_date: str, inputs: NightlyInputs) -> dict:
        return run_ingest(spark, config, run_date, getattr(inputs, entity), entity)
    return run


def _lake_stage(module_name: str) -> Callable[[SparkSession, Config, str, NightlyInputs], dict]:
    """A stage that reads the lake only: `deepmine.<group>.<name>.run_<name>(spark, config, run_date)`."""
    def run(spark: SparkSession, config: Config, run_date: str, inputs: NightlyInputs) -> dict:
        import importlib
        module = importlib.import_module(f"deepmine.{module_name}")
        return getattr(module, f"run_{module_name.rsplit('.', 1)[-1]}")(spark, config, run_date)
    return run


def _training(model: str, target: str | None
              ) -> Callable[[SparkSession, Config, str, NightlyInputs], dict]:
    def run(spark: SparkSession, config: Config, run_date: str, inputs: NightlyInputs) -> dict:
        from deepmine.deep.train import run_train
        return run_train(spark, config, run_date, model, target)
    return run


STAGES: list[Stage] = [
    # each input is ingested only where the config names one
    Stage(stage_name("transactions"), _ingest("transactions"),
          ("clean/transactions", "quarantine/transactions"), "dt",
          applies=lambda config, inputs: bool(inputs.transactions)),
    Stage(stage_name("ratings"), _ingest("ratings"), ("clean/ratings", "quarantine/ratings"), "dt",
          applies=lambda config, inputs: bool(inputs.ratings)),
    Stage(stage_name("images"), _ingest("images"), ("clean/images", "quarantine/images"), "dt",
          applies=lambda config, inputs: bool(inputs.images)),
    Stage(stage_name("reviews"), _ingest("reviews"), ("clean/reviews", "quarantine/reviews"),
          "dt", applies=lambda config, inputs: bool(inputs.reviews)),
    Stage("rfm", _lake_stage("mining.rfm"), ("mining/rfm", "mining/rfm_segments"),
          applies=lambda config, inputs: bool(inputs.transactions), needs=("ingest",)),
    Stage("churn", _lake_stage("mining.churn"), ("mining/churn",),
          applies=lambda config, inputs: bool(inputs.transactions), needs=("ingest",)),
    Stage("forecast", _lake_stage("mining.forecast"), ("mining/forecast",),
          applies=lambda config, inputs: bool(inputs.transactions), needs=("ingest",)),
    Stage("rules", _lake_stage("mining.rules"), ("mining/itemsets", "mining/rules"),
          applies=lambda config, inputs: bool(inputs.transactions), needs=("ingest",)),
    # implicit feedback learns from purchases, explicit from ratings
    Stage("recommend", _lake_stage("mining.recommend"), ("mining/recommendations",),
          applies=lambda config, inputs: bool(inputs.ratings if config.recommend.feedback == "explicit"
                                              else inputs.transactions),
          needs=("ingest", "ingest_ratings")),
    # the neural recommender beside ALS, on the same interactions (recommend.feedback); it reads
    # the clean input only, so a failed ALS stage does not stop it
    Stage("train_ncf", _training("ncf", None), ("models/ncf", "predictions/ncf"),
          applies=lambda config, inputs: bool(inputs.ratings if config.recommend.feedback == "explicit"
                                              else inputs.transactions),
          needs=("ingest", "ingest_ratings")),
    # features and training: images (Fashion-MNIST or synthetic when none were ingested) unless
    # no image model trains tonight, customers where there are transactions (RFM values from
    # mining/rfm when it ran), reviews where there are reviews
    Stage("features", _lake_stage("deep.features"),
          ("features/images", "features/customers", "features/customer_values",
           "features/reviews"),
          needs=("ingest", "ingest_images", "ingest_reviews", "rfm"),
          proof=lambda config, inputs: (
              ("features/images",) * config.features.images
              + ("features/customers", "features/customer_values") * bool(inputs.transactions)
              + ("features/reviews",) * bool(inputs.reviews))),
    # tonight's customer features, RFM values and churn scores against the snapshot their model
    # was last fully trained on (before the trainings, so that a drift can ask for a full one)
    Stage("drift", _lake_stage("ops.drift"), ("mining/drift",),
          applies=lambda config, inputs: bool(inputs.transactions), needs=("features",)),
    Stage("train_autoencoder_customers", _training("autoencoder", "customers"),
          ("models/autoencoder_customers", "predictions/autoencoder_customers"),
          applies=lambda config, inputs: bool(inputs.transactions), needs=("features",)),
    # the image models, unless the image table is left out (features.images: false)
    Stage("train_autoencoder_images", _training("autoencoder", "images"),
          ("models/autoencoder_images", "predictions/autoencoder_images"),
          applies=lambda config, inputs: config.features.images, needs=("features",)),
    Stage("train_cnn", _training("cnn", "images"), ("models/cnn", "predictions/cnn"),
          applies=lambda config, inputs: config.features.images, needs=("features",)),
    # review sentiment where reviews were ingested, then the per-product summary
    *[Stage(f"train_{m}", _training(m, "reviews"), (f"models/{m}", f"predictions/{m}"),
            applies=lambda config, inputs: bool(inputs.reviews), needs=("features",))
      for m in ("textcnn", "textrnn")],
    Stage("review_summary", _lake_stage("mining.review_summary"), ("mining/review_summary",),
          applies=lambda config, inputs: bool(inputs.reviews), needs=("ingest_reviews",)),
    # the report needs nothing: on a failed night it is the page that shows what failed
    Stage("report", _lake_stage("ops.report"), (), summarizes=True),
]


IMAGE_TRAININGS = ("train_autoencoder_images", "train_cnn")  # the readers of features/images


def is_done(lake: Lake, stage: Stage, run_date: str, config: Config,
            inputs: NightlyInputs) -> bool:
    record = lake.read_manifest(run_date)["stages"].get(stage.name)
    # a degraded stage published its outputs: done (its reasons stay in the manifest)
    if not record or record.get("status") not in ("ok", "degraded"):
        return False
    partition = f"{stage.partition_key}={run_date}"
    return all(lake.has_partition(table, partition)
               for table in stage.published(config, inputs))


def night_config(config: Config) -> Config:
    """The config as tonight's stages use it: features/images only when an image model
    trains (features.images false when both are in nightly.skip_stages)."""
    if set(IMAGE_TRAININGS) <= set(config.nightly.skip_stages) and config.features.images:
        return dataclasses.replace(
            config, features=dataclasses.replace(config.features, images=False))
    return config


@dataclass(frozen=True)
class NightlyResult:
    manifest_url: str
    ran: tuple[str, ...]  # stages run tonight (failed ones included)
    skipped: tuple[str, ...]  # already done for the date
    failed: tuple[str, ...] = ()  # stages that raised; their errors are in `errors` and the manifest
    blocked: tuple[str, ...] = ()  # not run because a stage they need failed tonight
    degraded: tuple[str, ...] = ()  # ran and published, but ended `degraded` (see the manifest)
    errors: dict[str, BaseException] = field(default_factory=dict, compare=False, repr=False)


def run_nightly(spark: SparkSession, config: Config, run_date: str,
                transactions: str | None = None, force: bool = False) -> NightlyResult:
    """Run every applicable stage for `run_date` under the lake's lock (LakeLocked if held).

    A stage's exception is caught, logged with its traceback and returned in the result; the
    stages that need it are skipped (recorded `skipped` in the manifest with the reason); the
    others and the report still run. Only BaseExceptions that are not Exceptions (SystemExit,
    KeyboardInterrupt) stop the night."""
    lake = Lake(spark, config.lake.root)
    names = [stage.name for stage in STAGES]
    unknown = sorted(set(config.nightly.skip_stages) - set(names))
    if unknown:
        raise ConfigError(f"nightly.skip_stages names unknown stage(s) {unknown}; the stages are "
                          f"{names}")
    config = night_config(config)
    ran, skipped, failed, blocked, degraded = [], [], [], [], []
    errors: dict[str, BaseException] = {}
    with lake.lock(f"nightly run_date={run_date}"):
        inputs = resolve_inputs(config, transactions)
        for stage in STAGES:
            if stage.name in config.nightly.skip_stages or not stage.applies(config, inputs):
                continue
            broken = [n for n in stage.needs if n in failed or n in blocked]
            if broken:
                reason = f"skipped: needs {', '.join(broken)}, which " + \
                    ("failed" if all(n in failed for n in broken) else "did not run") + " tonight"
                print(f"[{stage.name}] {reason}")
                lake.record_stage(run_date, stage.name, {
                    "status": "skipped", "skipped_because": broken, "error": reason,
                    "end": _now(), "seconds": 0.0, "counts": {}, "metrics": {}, "outputs": {}})
                blocked.append(stage.name)
                continue
            summarize = stage.summarizes and (ran or blocked)
            if not force and not summarize and is_done(lake, stage, run_date, config, inputs):
                print(f"[{stage.name}] already done for {run_date}: skipped (use --force to redo)")
                skipped.append(stage.name)
                continue
            ran.append(stage.name)
            try:
                stage.run(spark, config, run_date, inputs)
            except Exception as e:  # noqa: BLE001 - recorded, reported, and the night goes on
                failed.append(stage.name)
                errors[stage.name] = e
                error = f"{type(e).__name__}: {e}"
                if lake.read_manifest(run_date)["stages"].get(stage.name, {}).get("error") != error:
                    # it failed before its StageRun could record it (a config check, say)
                    lake.record_stage(run_date, stage.name, {
                        "status": "failed", "error": error, "end": _now(), "seconds": 0.0,
                        "counts": {}, "metrics": {}, "outputs": {}})
                print(f"[{stage.name}] FAILED: {type(e).__name__}: {e}", file=sys.stderr)
                traceback.print_exception(e, file=sys.stderr)
                continue
            record = lake.read_manifest(run_date)["stages"].get(stage.name, {})
            if record.get("status") == "degraded":
                degraded.append(stage.name)
    return NightlyResult(lake.manifest_url(run_date), tuple(ran), tuple(skipped), tuple(failed),
                         tuple(blocked), tuple(degraded), errors)
