"""Generated data through the nightly: every row accounted for against the planted truth,
stages skipped when done, redone with --force; the CLI's run command prints the manifest."""
from __future__ import annotations

import json

from conftest import skip_all_but

from deepmine.cli import main
from deepmine.generate import generate_transactions
from deepmine.lake import Lake
from deepmine.nightly import run_nightly

DATE = "2026-11-22"


def test_generated_input_every_row_accounted(spark, make_config, tmp_path):
    truth = generate_transactions(tmp_path / "gen", lines=6000, seed=3, dirty_rate=0.1)
    config = make_config(skip_all_but("ingest"))
    result = run_nightly(spark, config, DATE, str(tmp_path / "gen" / "transactions.csv"))
    lake = Lake(spark, config.lake.root)
    assert result.manifest_url == lake.manifest_url(DATE) and "ingest" in result.ran
    counts = lake.read_manifest(DATE)["stages"]["ingest"]["counts"]
    assert counts["rows_read"] == 6000 == counts["rows_clean"] + counts["rows_quarantined"]
    assert counts["quarantined_by_reason"] == {k: v for k, v in sorted(truth["dirty"].items()) if v}
    assert counts["rows_returns"] == truth["counts"]["returns"]


def test_nightly_skips_done_stages_and_force_redoes(spark, make_config, tmp_path, capsys):
    generate_transactions(tmp_path / "gen", lines=500, seed=5)
    config = make_config(f"input.transactions={tmp_path / 'gen' / 'transactions.csv'}",
                         skip_all_but("ingest"))
    lake = Lake(spark, config.lake.root)
    run_nightly(spark, config, DATE)
    first = lake.read_manifest(DATE)["stages"]["ingest"]
    assert run_nightly(spark, config, DATE).skipped[0] == "ingest"
    assert "[ingest] already done for 2026-11-22: skipped" in capsys.readouterr().out
    assert lake.read_manifest(DATE)["stages"]["ingest"] == first
    run_nightly(spark, config, DATE, force=True)
    again = lake.read_manifest(DATE)["stages"]["ingest"]
    assert again["start"] != first["start"] and again["counts"] == first["counts"]


def test_cli_nightly_generates_on_first_use_and_prints_manifest(spark, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)  # the embedded default's relative paths land here
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "local.yaml").write_text(
        "lake:\n  root: lake\ngenerate:\n  lines: 800\n  seed: 1\n  dirty_rate: 0.05\n")
    args = ["nightly", "--date", DATE, "--set", "spark.ui_enabled=false",
            skip_all_but("ingest", "report")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert main(args) == 3
    manifest = tmp_path / "lake" / "runs" / f"run_date={DATE}" / "manifest.json"
    assert f"manifest: file://{manifest}" in out
    truth = json.loads((tmp_path / "data" / "generated" / "truth.json").read_text())
    counts = json.loads(manifest.read_text())["stages"]["ingest"]["counts"]
    assert counts["rows_read"] == 800
    assert counts["rows_quarantined"] == sum(truth["dirty"].values())


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    assert main(["ingest", "--date", DATE, "--input", str(tmp_path / "none.csv"),
                 "--set", f"lake.root={tmp_path / 'lake'}"]) == 2
    assert "deepmine ingest: error: input not found" in capsys.readouterr().err


def test_second_nightly_on_a_locked_lake_exits_at_once(spark, make_config, tmp_path, capsys):
    import os
    import socket
    config = make_config()
    lake = Lake(spark, config.lake.root)
    with lake.lock("someone else"):
        code = main(["nightly", "--date", DATE, "--set", f"lake.root={config.lake.root}",
                     "input.generate_if_missing=false", f"input.transactions={tmp_path}/none.csv"])
    assert code == 75
    assert "another nightly holds the lake lock" in capsys.readouterr().err
    # a lock left by a dead process on this host is taken over
    lake.write_text(lake.lock_url(), json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 7}))
    with lake.lock("me"):
        assert json.loads(lake.read_text(lake.lock_url()))["pid"] == os.getpid()
    assert not lake.exists(lake.lock_url())
