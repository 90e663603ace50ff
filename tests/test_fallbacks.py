"""Fallbacks are said where the operator looks, and the same missing input behaves the same in
every stage: synthetic images in place of an image set are a warning in the log, the manifest and
the report; a products file that is named but missing stops `features` as it stops `rules`; the
sample configs do not inherit the synthetic catalogue's products file."""
from __future__ import annotations

from pathlib import Path

import pytest

from deepmine.core.config import ConfigError, load_config

D = "2026-11-22"
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("sample", sorted(p.stem for p in (CONF / "samples").glob("*.yaml")))
def test_sample_configs_do_not_name_the_synthetic_products_file(sample):
    config = load_config(str(CONF / "samples" / f"{sample}.yaml"))
    assert config.input.products == ""


def test_missing_products_file_stops_features_as_it_stops_rules(spark, tmp_path):
    from deepmine.deep.features import read_products
    from deepmine.mining.rules import RulesInputError, read_categories
    missing = str(tmp_path / "no-such-products.csv")
    with pytest.raises(ConfigError, match=r"input.products .*no-such-products.csv: file not found"):
        read_products(spark, missing)
    with pytest.raises(RulesInputError, match=r"no-such-products.csv \(input.products\)"):
        read_categories(spark, missing, "category")
    assert read_products(spark, "") is None  # none configured: no category shares, said in the log


def test_synthetic_image_fallback_is_a_warning_in_log_manifest_and_report(spark, make_config,
                                                                          capsys, monkeypatch):
    from deepmine.data import samples
    from deepmine.deep.features import run_features
    from deepmine.core.lake import Lake
    from deepmine.ops.report import report_url, run_report

    def not_installed(name):
        raise samples.SampleUnavailable(name, "apt-get install -y dataset-fashion-mnist",
                                        "not installed")
    monkeypatch.setattr(samples, "source_paths", not_installed)
    config = make_config("input.transactions=", "features.synthetic_images=70",
                         "features.row_groups=2")
    run_features(spark, config, D)
    assert "[features] WARNING: no image set found" in capsys.readouterr().out
    lake = Lake(spark, config.lake.root)
    record = lake.read_manifest(D)["stages"]["features"]
    assert record["status"] == "ok" and record["metrics"]["images"]["source"] == "synthetic"
    assert any("70 synthetic shapes" in w for w in record["warnings"])
    lake.record_stage(D, "train_cnn", {"status": "ok", "metrics": {"accuracy": 0.5}})
    run_report(spark, config, D)
    page = lake.read_text(report_url(lake, D))
    assert "features: warning</span>: no image set found" in page
    assert "trained on images from <b>synthetic</b> (synthetic shapes: not product photos)" in page
