"""`deepmine <command>`: one entry for every stage and helper; jobs/*.py call `main` too.

Exit codes (EXIT_*; README "Exit codes"):
  0   done
  1   a stage failed (its cause printed; the nightly still ran what did not need it, and the report)
  2   bad usage or bad input: arguments, config, input header/format, products file (the message
      names the file, column or key); a failed nightly whose every failure was bad input
  3   nothing to do (every stage already done for the date)
  4   done, but some stage is degraded: it published output that did not beat its baseline (the
      manifest's `degraded_reasons` say why); 1 wins over 4
  75  another process holds the lake's lock (a live holder); an error while taking the lock is 1
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Callable

from deepmine.core.config import ConfigError, load_config

DEFAULT_CONF = "conf/local.yaml"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOTHING_TO_DO, EXIT_DEGRADED, EXIT_LOCKED = \
    0, 1, 2, 3, 4, 75


def input_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad usage or bad input (exit 2); any other is a failure (exit 1)."""
    from deepmine.data.ingest import IngestError
    from deepmine.mining.rules import RulesInputError
    from deepmine.data.samples import SampleFormatError
    from deepmine.core.schemas import SchemaError
    return ConfigError, IngestError, SchemaError, RulesInputError, SampleFormatError

# Stages that read the lake and write the lake: `deepmine.<name>.run_<name>(spark, config, date)`.
MINING_STAGES = {
    "rfm": "RFM scores, named segments and K-means clusters per customer",
    "churn": "churn risk and next-period spend per customer (Spark ML, validated on D - horizon)",
    "forecast": "demand forecasts per product, category or in total (statsforecast per series)",
    "rules": "FP-growth frequent itemsets and association rules with mlxtend's metrics",
    "recommend": "ALS top-N recommendations with evaluation against a popularity baseline",
    "report": "the run's HTML report with plots, next to its manifest",
    "features": "customer feature vectors, image tables and review token ids, laid out as "
                "Petastorm shards",
    "drift": "PSI and KS test of tonight's customer features, RFM values and churn scores "
             "against their model's last full training snapshot",
    "review_summary": "per product: reviews, mean predicted sentiment, share negative and the "
                      "terms that set its negative reviews apart",
}


def run_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, found {text!r}") from None


def _stage_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--conf", default=DEFAULT_CONF, help=f"config file (default {DEFAULT_CONF})")
    p.add_argument("--date", required=True, type=run_date, help="run date, YYYY-MM-DD")
    p.add_argument("--set", action="append", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="override config values; repeatable, several pairs per --set")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = _stage_parser(sub, "ingest", "clean one raw input into clean/ and quarantine/")
    p.add_argument("--input", required=True, help="input file or directory (path or URL)")
    p.add_argument("--entity", default="transactions",
                   choices=["transactions", "ratings", "images", "reviews"])
    p.add_argument("--format", default=None, help="csv, json or parquet (default: ingest.format; "
                   "parquet for images)")
    p.set_defaults(handler=_ingest)

    p = _stage_parser(sub, "nightly", "run every stage for one date, skipping what is done")
    p.add_argument("--input", default=None, help="transactions input (default: input.transactions)")
    p.add_argument("--force", action="store_true", help="redo stages already done for the date")
    p.set_defaults(handler=_nightly)

    for name, text in MINING_STAGES.items():
        p = _stage_parser(sub, name, text)
        p.set_defaults(handler=_mining_stage)

    p = _stage_parser(sub, "train", "Horovod training of a model on the feature tables, batch "
                      "inference with Spark, metrics")
    p.add_argument("--model", required=True,
                   choices=["autoencoder", "cnn", "textcnn", "textrnn", "ncf"],
                   help="autoencoder: deep clustering (DEC/IDEC); cnn: image classifier; "
                   "textcnn, textrnn: review sentiment; ncf: neural collaborative filtering "
                   "(recommendations, no --target)")
    p.add_argument("--target", default=None, choices=["customers", "images", "reviews"],
                   help="what the model learns from (default: images, reviews for the text "
                   "models; the CNN takes images only)")
    p.set_defaults(handler=_train)

    p = sub.add_parser("generate", help="synthetic transactions with planted truth")
    p.add_argument("--out", required=True)
    p.add_argument("--lines", required=True, type=int)
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--dirty-rate", type=float, default=0.0)
    p.add_argument("--start-date", type=run_date, default="2025-11-23")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--customers", type=int, default=0, help="0 = derived from --lines")
    p.add_argument("--products", type=int, default=0, help="0 = derived from --lines")
    p.add_argument("--shift-date", type=run_date, default=None,
                   help="plant a behaviour shift from this day: the at_risk group comes back "
                        "for one purchase each (truth.json behaviour_shift)")
    p.add_argument("--reviews", type=int, default=0,
                   help="also write N product reviews with planted sentiment (reviews.csv)")
    p.add_argument("--language", choices=["en", "zh"], default="en",
                   help="the reviews' language (zh: Chinese, written without spaces)")
    p.set_defaults(handler=_generate)

    p = sub.add_parser("submit", help="run a stage's job on a cluster with spark-submit",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)  # main() hands these to deepmine.ops.submit

    p = sub.add_parser("doctor", help="where driver and executors find Python, deepmine and the stack")
    p.add_argument("--conf", default=DEFAULT_CONF)
    p.add_argument("--date", default=None, type=run_date, help="ignored; accepted like every job")
    p.add_argument("--set", action="append", nargs="+", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(handler=_doctor)

    p = sub.add_parser("models", help="the model registry: every version, its run date, how it "
                       "was trained, its validation score and aliases (champion)")
    p.add_argument("--conf", default=DEFAULT_CONF)
    p.add_argument("--set", action="append", nargs="+", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(handler=_models)

    p = sub.add_parser("samples", help="real datasets from installed packages, in input format")
    p.add_argument("--out", required=True)
    p.add_argument("--only", default=None, help="comma-separated names (default: all available)")
    p.set_defaults(handler=_samples)
    return parser


# Commands that write the lake: each holds the lake's lock while it runs (as the nightly does), so
# that a stage run by hand or by a scheduler's per-stage task never publishes beside a nightly.
WRITES_LAKE = {"ingest", "train", *MINING_STAGES}


def _with_session(args, work: Callable) -> int:
    config = load_config(args.conf, [x for group in args.set for x in group])
    from deepmine.core.spark import build_session
    spark = build_session(config)
    if args.command not in WRITES_LAKE:
        return work(spark, config)
    from deepmine.core.lake import Lake
    with Lake(spark, config.lake.root).lock(f"{args.command} run_date={args.date}"):
        return work(spark, config)


def _stage_exit(spark, config, run_date: str, stage: str) -> int:
    """After one stage's command: 4 when the stage ended degraded (its reasons printed), else 0."""
    from deepmine.core.lake import Lake
    lake = Lake(spark, config.lake.root)
    record = lake.read_manifest(run_date)["stages"].get(stage, {})
    print(f"manifest: {lake.manifest_url(run_date)}")
    if record.get("status") == "degraded":
        print(f"deepmine {stage}: done, but degraded: "
              f"{'; '.join(record.get('degraded_reasons', []))}", file=sys.stderr)
        return EXIT_DEGRADED
    return EXIT_OK


def _ingest(args) -> int:
    from deepmine.data.ingest import run_ingest, stage_name

    def work(spark, config):
        counts = run_ingest(spark, config, args.date, args.input, args.entity, args.format)
        return _stage_exit(spark, config, args.date, stage_name(args.entity)) if counts \
            else EXIT_FAILED
    return _with_session(args, work)


def _nightly(args) -> int:
    from deepmine.nightly import run_nightly

    def work(spark, config):
        result = run_nightly(spark, config, args.date, args.input, args.force)
        print(f"manifest: {result.manifest_url}")
        from deepmine.core.lake import Lake
        from deepmine.ops.report import report_url
        lake = Lake(spark, config.lake.root)
        if lake.exists(report_url(lake, args.date)):
            print(f"report: {report_url(lake, args.date)}")
        if result.failed:
            for name, error in result.errors.items():
                print(f"deepmine nightly: stage {name} failed: {type(error).__name__}: {error}",
                      file=sys.stderr)
            if result.blocked:
                print(f"deepmine nightly: skipped because a stage they need failed: "
                      f"{', '.join(result.blocked)}", file=sys.stderr)
            bad_input = all(isinstance(e, input_errors()) for e in result.errors.values())
            return EXIT_BAD_INPUT if bad_input else EXIT_FAILED
        if result.degraded:
            print(f"deepmine nightly: done, but degraded: {', '.join(result.degraded)} "
                  f"(see degraded_reasons in {result.manifest_url})", file=sys.stderr)
            return EXIT_DEGRADED
        if not result.ran:
            print(f"nothing to do for {args.date}: every stage is done (use --force to redo)")
            return EXIT_NOTHING_TO_DO
        return EXIT_OK
    return _with_session(args, work)


def _mining_stage(args) -> int:
    from deepmine.nightly import STAGES

    def work(spark, config):
        stage = next(s for s in STAGES if s.name == args.command)
        stage.run(spark, config, args.date, None)
        from deepmine.core.lake import Lake
        lake = Lake(spark, config.lake.root)
        outputs = lake.read_manifest(args.date)["stages"][args.command].get("outputs", {})
        for name, url in outputs.items():
            print(f"{name}: {url}")
        return _stage_exit(spark, config, args.date, args.command)
    return _with_session(args, work)


def _doctor(args) -> int:
    def work(spark, config):
        import json
        from deepmine.ops.doctor import run_doctor
        print(json.dumps(run_doctor(spark), indent=2))
        return 0
    return _with_session(args, work)


def _models(args) -> int:
    from deepmine.deep.registry import Registry
    config = load_config(args.conf, [x for group in args.set for x in group])
    registry = Registry(config)
    rows = registry.listing()
    print(f"registry: {registry.uri}")
    if not rows:
        print("no registered model yet")
        return EXIT_OK
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))
    return EXIT_OK


def _train(args) -> int:
    from deepmine.deep.train import model_name, run_train

    def work(spark, config):
        run_train(spark, config, args.date, args.model, args.target)
        return _stage_exit(spark, config, args.date, f"train_{model_name(args.model, args.target)}")
    return _with_session(args, work)


def _generate(args) -> int:
    from deepmine.data.generate import generate_transactions
    truth = generate_transactions(args.out, lines=args.lines, seed=args.seed,
                                  dirty_rate=args.dirty_rate, start_date=args.start_date,
                                  days=args.days, customers=args.customers,
                                  products=args.products, progress=sys.stderr.isatty(),
                                  shift_date=args.shift_date)
    counts = truth.get("counts", {})
    print(f"wrote {args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()
                                            if not isinstance(v, dict)))
    if args.reviews:
        from deepmine.data.generate_reviews import generate_reviews
        info = generate_reviews(args.out, args.reviews, args.seed, args.language,
                                products=int(counts.get("products", 0) or 0),
                                customers=int(counts.get("customers", 0) or 0),
                                start=dt.date.fromisoformat(args.start_date), days=args.days)
        print(f"wrote {info['path']}: reviews={info['reviews']}, products={info['products']}, "
              f"language={info['language']}")
    return 0


def _samples(args) -> int:
    from deepmine.data.samples import write_samples
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    result = write_samples(args.out, only)
    for name, info in result.items():
        if "unavailable" in info:
            print(f"{name}: not installed; install with: {info['unavailable']}")
        else:
            print(f"{name}: {info['rows']} rows -> {info['path']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["submit"]:  # its options are spark-submit's business, not argparse's here
        from deepmine.ops.submit import main as submit_main
        return submit_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (2), or --help (0)
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    from deepmine.core.lake import LakeLocked, LakeLockError
    try:
        return args.handler(args)
    except LakeLocked as e:
        print(f"deepmine {args.command}: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except LakeLockError as e:  # the lock could not be taken: an error, not "locked"
        print(f"deepmine {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except input_errors() as e:
        print(f"deepmine {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - a failure inside a stage: its trace, then its cause
        import traceback
        traceback.print_exception(e, file=sys.stderr)
        print(f"deepmine {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
