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
    from deepmine.config import load_config
    from deepmine.spark import build_session
    config = load_config(None, [f"lake.root={session_lake}", "spark.ui_enabled=false",
                                "spark.driver_memory=2g"])
    session = build_session(config)
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path):
    """A config for one test: its own lake under tmp_path, plus any overrides."""
    from deepmine.config import load_config

    def make(*overrides: str, path: str | None = None):
        return load_config(path, [f"lake.root={tmp_path / 'lake'}", "spark.ui_enabled=false",
                                  *overrides])
    return make
