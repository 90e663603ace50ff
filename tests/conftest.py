"""One local[2] Spark session for the whole suite, built the way deepmine builds it."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def session_lake(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("lake"))


@pytest.fixture(scope="session")
def spark(session_lake):
    from deepmine.core.config import load_config
    from deepmine.core.spark import build_session
    config = load_config(None, [f"lake.root={session_lake}", "spark.ui_enabled=false",
                                "spark.driver_memory=2g"])
    session = build_session(config)
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path):
    """A config for one test: its own lake under tmp_path, plus any overrides."""
    from deepmine.core.config import load_config

    def make(*overrides: str, path: str | None = None):
        return load_config(path, [f"lake.root={tmp_path / 'lake'}", "spark.ui_enabled=false",
                                  *overrides])
    return make


def in_ci() -> bool:
    """CI sets CI=true (as GitHub Actions, GitLab and .ci/run do)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_sample(name: str, command: str) -> None:
    """A real dataset's package is not installed: the test is skipped on a developer's machine,
    and fails in CI, where scripts/setup.sh installs every sample (a green CI must mean that the
    real-data checks ran)."""
    message = f"sample {name!r} is not installed; install it with: {command}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing sample is a failure, not a skip)")
    pytest.skip(reason=message)


def sample_or_skip(out_dir, name: str) -> dict:
    """`deepmine samples` for one real dataset into `out_dir` (its write_samples entry), or the
    test is skipped with the command that installs the dataset's package (fails under CI=true)."""
    from deepmine.data.samples import SampleUnavailable, write_samples
    try:
        return write_samples(out_dir, only=[name])[name]
    except SampleUnavailable as e:
        missing_sample(name, e.command)


def skip_all_but(*keep: str) -> str:
    """A `nightly.skip_stages=[...]` override that leaves only the stages named in `keep`."""
    from deepmine.nightly import STAGES
    return "nightly.skip_stages=[" + ",".join(s.name for s in STAGES if s.name not in keep) + "]"




@pytest.fixture(scope="session")
def nightly_run(spark, tmp_path_factory):
    """One nightly (ingest, mining and report; features and training have their own tests) on
    generated data, shared by the
    tests that inspect a whole run: the report, the repeat-run drill and the cluster comparison."""
    from deepmine.core.config import load_config
    from deepmine.data.generate import generate_transactions
    from deepmine.core.lake import Lake
    from deepmine.nightly import run_nightly
    root = tmp_path_factory.mktemp("nightly")
    generate_transactions(root / "gen", lines=2500, seed=9, dirty_rate=0.05)
    overrides = [f"lake.root={root / 'lake'}", "spark.ui_enabled=false",
                 f"input.transactions={root / 'gen' / 'transactions.csv'}",
                 f"input.products={root / 'gen' / 'products.csv'}",
                 "input.generate_if_missing=false", "rfm.k_max=4", "rfm.n_init=1",
                 skip_all_but("ingest", "rfm", "rules", "recommend", "report")]
    config = load_config(None, overrides)
    result = run_nightly(spark, config, "2026-11-22")
    return {"config": config, "overrides": overrides, "lake": Lake(spark, config.lake.root),
            "result": result, "input": root / "gen" / "transactions.csv", "date": "2026-11-22"}
