"""Config: defaults, the embedded default file, overrides, and clear errors."""
from __future__ import annotations

import pytest

from deepmine.core.config import Config, ConfigError, load_config


def test_embedded_default_loads_and_matches_the_documented_values():
    config = load_config("conf/local.yaml")
    assert isinstance(config, Config)
    assert config.spark.master == "local[2]"
    assert config.lake.root == "lake"
    assert config.generate.start_date == "2025-11-23"  # YAML's date becomes the text it was


def test_overrides_repeated_and_several_per_set():
    config = load_config("conf/local.yaml", ["lake.root=file:///tmp/x spark.shuffle_partitions=8",
                                             "ingest.column_map.InvoiceNo=invoice_id",
                                             "generate.dirty_rate=0"])
    assert config.lake.root == "file:///tmp/x"
    assert config.spark.shuffle_partitions == 8
    assert config.ingest.column_map == {"InvoiceNo": "invoice_id"}
    assert config.generate.dirty_rate == 0.0 and isinstance(config.generate.dirty_rate, float)


@pytest.mark.parametrize("text, message", [
    ("spark:\n  masterr: local[1]\n", "unknown config key 'spark.masterr'"),
    ("nosuch:\n  a: 1\n", "unknown config key 'nosuch'"),
    ("spark:\n  shuffle_partitions: many\n", "config key 'spark.shuffle_partitions': expected int"),
    ("ingest:\n  format: xml\n", "config key 'ingest.format': expected one of"),
    ("ingest:\n  timestamp_formats: yyyy\n", "config key 'ingest.timestamp_formats': expected a list"),
    ("- a\n- b\n", "expected a mapping of sections"),
])
def test_bad_files_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path)


def test_bad_overrides_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'lake.rooot'"):
        load_config(None, ["lake.rooot=x"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["lake.root"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_config(None, ["spark.ui_enabled=maybe"])


def test_config_is_data_never_evaluated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lake:\n  root: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_override_of_a_mapping_key_with_dots():
    config = load_config(None, ["spark.options.spark.ui.port=14040"])
    assert config.spark.options == {"spark.ui.port": "14040"}


@pytest.mark.parametrize("path", sorted(str(p) for p in __import__("pathlib").Path("conf").rglob("*.yaml")))
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), Config)
