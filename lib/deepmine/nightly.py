"""The nightly: every stage that exists, in order, for one run date.

A stage already done for the date (status ok in the manifest and its output published) is
skipped unless `force`. Stages are listed once, in STAGES; later stages add themselves there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyspark.sql import SparkSession

from deepmine.config import Config
from deepmine.ingest import run_ingest, stage_name
from deepmine.lake import Lake


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[SparkSession, Config, str, "NightlyInputs"], dict]
    outputs: tuple[str, ...]  # lake tables whose partition for the date proves the stage done
    partition_key: str = "run_date"
    applies: Callable[[Config, "NightlyInputs"], bool] = lambda config, inputs: True
    summarizes: bool = False  # redone whenever an earlier stage ran (the report)


@dataclass(frozen=True)
class NightlyInputs:
    transactions: str
    ratings: str = ""
    images: str = ""


def resolve_inputs(config: Config, transactions: str | None = None) -> NightlyInputs:
    """Where tonight's raw input is; synthetic transactions are made on first use if configured."""
    path = transactions or config.input.transactions
    if path and not transactions and config.input.generate_if_missing and not Path(path).exists():
        from deepmine.generate import generate_transactions
        g = config.generate
        out = Path(path).parent
        print(f"[nightly] no input at {path}: generating {g.lines} synthetic lines into {out}")
        generate_transactions(out, lines=g.lines, seed=g.seed, dirty_rate=g.dirty_rate,
                              start_date=g.start_date, days=g.days, customers=g.customers,
                              products=g.products)
    return NightlyInputs(path, config.input.ratings, config.input.images)


def _ingest(entity: str) -> Callable[[SparkSession, Config, str, NightlyInputs], dict]:
    def run(spark: SparkSession, config: Config, run_date: str, inputs: NightlyInputs) -> dict:
        return run_ingest(spark, config, run_date, getattr(inputs, entity), entity)
    return run


def _mining(name: str) -> Callable[[SparkSession, Config, str, NightlyInputs], dict]:
    """A stage that reads the lake only: `deepmine.<name>.run_<name>(spark, config, run_date)`."""
    def run(spark: SparkSession, config: Config, run_date: str, inputs: NightlyInputs) -> dict:
        import importlib
        module = importlib.import_module(f"deepmine.{name}")
        return getattr(module, f"run_{name}")(spark, config, run_date)
    return run


def _training(model: str, target: str) -> Callable[[SparkSession, Config, str, NightlyInputs], dict]:
    def run(spark: SparkSession, config: Config, run_date: str, inputs: NightlyInputs) -> dict:
        from deepmine.train import run_train
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
    Stage("rfm", _mining("rfm"), ("mining/rfm", "mining/rfm_segments"),
          applies=lambda config, inputs: bool(inputs.transactions)),
    Stage("rules", _mining("rules"), ("mining/itemsets", "mining/rules"),
          applies=lambda config, inputs: bool(inputs.transactions)),
    # implicit feedback learns from purchases, explicit from ratings
    Stage("recommend", _mining("recommend"), ("mining/recommendations",),
          applies=lambda config, inputs: bool(inputs.ratings if config.recommend.feedback == "explicit"
                                              else inputs.transactions)),
    # features and training: images always (Fashion-MNIST or synthetic when none were ingested),
    # customers where there are transactions
    Stage("features", _mining("features"), ("features/images",)),
    Stage("train_autoencoder_customers", _training("autoencoder", "customers"),
          ("models/autoencoder_customers", "predictions/autoencoder_customers"),
          applies=lambda config, inputs: bool(inputs.transactions)),
    Stage("train_autoencoder_images", _training("autoencoder", "images"),
          ("models/autoencoder_images", "predictions/autoencoder_images")),
    Stage("train_cnn", _training("cnn", "images"), ("models/cnn", "predictions/cnn")),
    Stage("report", _mining("report"), (), summarizes=True),
]


def is_done(lake: Lake, stage: Stage, run_date: str) -> bool:
    record = lake.read_manifest(run_date)["stages"].get(stage.name)
    # a degraded stage published its outputs: done (its reasons stay in the manifest)
    if not record or record.get("status") not in ("ok", "degraded"):
        return False
    partition = f"{stage.partition_key}={run_date}"
    return all(lake.has_partition(table, partition) for table in stage.outputs)


@dataclass(frozen=True)
class NightlyResult:
    manifest_url: str
    ran: tuple[str, ...]
    skipped: tuple[str, ...]


def run_nightly(spark: SparkSession, config: Config, run_date: str,
                transactions: str | None = None, force: bool = False) -> NightlyResult:
    """Run every applicable stage for `run_date` under the lake's lock (LakeLocked if held)."""
    lake = Lake(spark, config.lake.root)
    unknown = sorted(set(config.nightly.skip_stages) - {stage.name for stage in STAGES})
    if unknown:
        raise ValueError(f"nightly.skip_stages names unknown stage(s) {unknown}; the stages are "
                         f"{[stage.name for stage in STAGES]}")
    ran, skipped = [], []
    with lake.lock(f"nightly run_date={run_date}"):
        inputs = resolve_inputs(config, transactions)
        for stage in STAGES:
            if stage.name in config.nightly.skip_stages or not stage.applies(config, inputs):
                continue
            if not force and not (stage.summarizes and ran) and is_done(lake, stage, run_date):
                print(f"[{stage.name}] already done for {run_date}: skipped (use --force to redo)")
                skipped.append(stage.name)
                continue
            stage.run(spark, config, run_date, inputs)
            ran.append(stage.name)
    return NightlyResult(lake.manifest_url(run_date), tuple(ran), tuple(skipped))
