"""Generated data through the nightly: every row accounted for against the planted truth,
stages skipped when done, redone with --force; the CLI's run command prints the manifest."""
from __future__ import annotations

import json

from conftest import skip_all_but

from deepmine.cli import main
from deepmine.data.generate import generate_transactions
from deepmine.core.lake import Lake
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
    assert "another process holds the lake lock" in capsys.readouterr().err
    # a lock left by a dead process on this host is taken over
    lake.write_text(lake.lock_url(), json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 7}))
    with lake.lock("me"):
        assert json.loads(lake.read_text(lake.lock_url()))["pid"] == os.getpid()
    assert not lake.exists(lake.lock_url())


# ------------------------------------------------------------------ failed and degraded nights

def _cli_args(tmp_path, *keep: str) -> list[str]:
    generate_transactions(tmp_path / "gen", lines=400, seed=4)
    return ["nightly", "--date", DATE, "--set", f"lake.root={tmp_path / 'lake'}",
            "spark.ui_enabled=false", f"input.transactions={tmp_path / 'gen' / 'transactions.csv'}",
            f"input.products={tmp_path / 'gen' / 'products.csv'}", "input.generate_if_missing=false",
            "rfm.k_max=3", "rfm.n_init=1", skip_all_but(*keep)]


def _degrading_rules(spark, config, run_date):
    """Stands for a rules stage that published but did not beat its baseline."""
    from deepmine.core.lake import StageRun
    with StageRun(Lake(spark, config.lake.root), run_date, "rules") as run:
        run.degrade("lift of the top rule 0.9 is below 1")
    return run.counts


def test_failed_stage_skips_what_needs_it_runs_the_rest_and_the_report(spark, tmp_path, capsys,
                                                                       monkeypatch):
    """rfm fails for an internal reason: features (which needs rfm) is skipped and recorded so,
    rules (which does not) and the report still run, the report shows the failure, exit 1."""
    import deepmine.mining.rfm

    def broken_rfm(spark, config, run_date):
        raise ValueError("boom inside rfm")
    monkeypatch.setattr(deepmine.mining.rfm, "run_rfm", broken_rfm)
    args = _cli_args(tmp_path, "ingest", "rfm", "rules", "features", "report")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "stage rfm failed: ValueError: boom inside rfm" in err
    assert "skipped because a stage they need failed: features" in err
    lake_dir = tmp_path / "lake" / "runs" / f"run_date={DATE}"
    stages = json.loads((lake_dir / "manifest.json").read_text())["stages"]
    assert {n: s["status"] for n, s in stages.items()} == {
        "ingest": "ok", "rfm": "failed", "rules": "ok", "features": "skipped", "report": "ok"}
    assert stages["features"]["skipped_because"] == ["rfm"]
    assert stages["rfm"]["error"] == "ValueError: boom inside rfm"
    page = (lake_dir / "report.html").read_text()
    assert "<span class='status-failed'>failed</span>" in page
    assert "<span class='status-skipped'>skipped</span>" in page
    assert "ValueError: boom inside rfm" in page


def test_degraded_stage_exits_4_and_a_failure_wins(spark, tmp_path, capsys, monkeypatch):
    """A degraded stage lets the night go on and the CLI exits 4 (nightly and the stage's own
    command); with a failed stage as well, 1 wins."""
    import deepmine.mining.rfm
    import deepmine.mining.rules
    monkeypatch.setattr(deepmine.mining.rules, "run_rules", _degrading_rules)
    args = _cli_args(tmp_path, "ingest", "rules", "report")
    assert main(args) == 4
    err = capsys.readouterr().err
    assert "done, but degraded: rules" in err
    page = (tmp_path / "lake" / "runs" / f"run_date={DATE}" / "report.html").read_text()
    assert "<span class='status-degraded'>degraded</span>" in page
    assert "lift of the top rule 0.9 is below 1" in page
    stage_args = ["rules", *args[1:-1]]
    assert main(stage_args) == 4
    assert "lift of the top rule 0.9 is below 1" in capsys.readouterr().err

    def broken_rfm(spark, config, run_date):
        raise FileNotFoundError("an internal scratch file vanished")
    monkeypatch.setattr(deepmine.mining.rfm, "run_rfm", broken_rfm)
    assert main([*_cli_args(tmp_path, "ingest", "rfm", "rules", "report"), "--force"]) == 1


def test_exit_codes_1_for_internal_failures_2_only_for_usage_and_input(spark, tmp_path, capsys,
                                                                       monkeypatch):
    """Through deepmine.cli.main: a ValueError or FileNotFoundError raised inside a stage for an
    internal reason is 1 with its cause; bad usage (argparse) and a bad config are 2. (0 and 3:
    test_cli_nightly_generates_on_first_use_and_prints_manifest; 2 for bad input:
    test_cli_reports_bad_input_with_exit_code_2; 4: test_degraded_stage_exits_4_and_a_failure_wins;
    75: test_second_nightly_on_a_locked_lake_exits_at_once.)"""
    import deepmine.mining.rfm
    base = ["--date", DATE, "--set", f"lake.root={tmp_path / 'lake'}", "spark.ui_enabled=false"]
    for error in (ValueError("cluster centres came back empty"),
                  FileNotFoundError("scratch/centres.npy")):
        def broken_rfm(spark, config, run_date, error=error):
            raise error
        monkeypatch.setattr(deepmine.mining.rfm, "run_rfm", broken_rfm)
        assert main(["rfm", *base]) == 1
        err = capsys.readouterr().err
        assert f"deepmine rfm: failed: {type(error).__name__}: {error}" in err
    assert main(["rfm"]) == 2  # argparse: --date is required
    assert "the following arguments are required: --date" in capsys.readouterr().err
    assert main(["rfm", "--date", "22/11/2026"]) == 2
    assert main(["rfm", *base, "rfm.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_an_error_taking_the_lock_is_1_not_locked(spark, tmp_path, capsys):
    """The lock's folder cannot be made (a file stands where it should be, as a broken or
    read-only store would refuse): exit 1 with the cause, not 75 "locked"."""
    (tmp_path / "lake").mkdir()
    (tmp_path / "lake" / "_lock").write_text("not a folder")
    code = main(["nightly", "--date", DATE, "--set", f"lake.root={tmp_path / 'lake'}",
                 "spark.ui_enabled=false", "input.generate_if_missing=false",
                 f"input.transactions={tmp_path}/none.csv"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "could not take the lake lock" in err and "_lock/nightly.lock" in err
    assert "holds the lake lock" not in err


def test_lock_errors_other_than_an_existing_lock_are_errors(spark, tmp_path, monkeypatch):
    """Storage that fails while the lock is created or read raises LakeLockError (the cause in
    its message); only an existing lock of a live holder is LakeLocked."""
    import pytest

    from deepmine.core.lake import LakeLocked, LakeLockError
    lake = Lake(spark, str(tmp_path / "lake"))
    real_fs = Lake._fs

    class Down:
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            if name in ("create", "open"):
                def fail(*args):
                    raise OSError("storage unavailable: connection refused")
                return fail
            return getattr(self.fs, name)

    monkeypatch.setattr(Lake, "_fs", lambda self, url: (Down(real_fs(self, url)[0]),
                                                        real_fs(self, url)[1]))
    with pytest.raises(LakeLockError, match="connection refused"):
        with lake.lock("me"):
            pass
    monkeypatch.setattr(Lake, "_fs", real_fs)
    with lake.lock("a live holder"):
        monkeypatch.setattr(Lake, "_fs", lambda self, url: (Down(real_fs(self, url)[0]),
                                                            real_fs(self, url)[1]))
        with pytest.raises(LakeLockError, match="could not .*connection refused"):
            with lake.lock("me"):
                pass
        monkeypatch.setattr(Lake, "_fs", real_fs)
        with pytest.raises(LakeLocked, match="a live holder"):
            with lake.lock("me"):
                pass


def test_stage_commands_that_write_take_the_lock(spark, tmp_path, capsys):
    """Each stage command that writes the lake (what the Airflow DAG's tasks run) holds the lake's
    lock: beside a running nightly it exits 75 before touching the lake."""
    lake = Lake(spark, str(tmp_path / "lake"))
    base = ["--date", DATE, "--set", f"lake.root={tmp_path / 'lake'}", "spark.ui_enabled=false"]
    with lake.lock("nightly run_date=2026-11-22"):
        for command in (["ingest", "--input", str(tmp_path / "none.csv")], ["rfm"], ["rules"],
                        ["recommend"], ["features"], ["report"], ["train", "--model", "cnn"]):
            assert main([*command, *base]) == 75, command
            assert "nightly run_date=2026-11-22" in capsys.readouterr().err
        assert lake.read_manifest(DATE)["stages"] == {}
    from deepmine.cli import WRITES_LAKE, build_parser
    stages = set(build_parser()._subparsers._group_actions[0].choices)  # every command
    assert WRITES_LAKE == stages - {"nightly", "generate", "samples", "submit", "doctor", "models"}


def test_image_table_and_models_follow_features_images():
    """features.images false leaves the image trainings out of the nightly and the image table
    out of the features stage's proof; skipping both image trainings turns it off for the night,
    skipping one does not."""
    from deepmine.core.config import load_config
    from deepmine.nightly import STAGES, NightlyInputs, night_config
    stages = {s.name: s for s in STAGES}
    inputs = NightlyInputs("tx.csv", reviews="reviews.csv")
    default, off = load_config(None, []), load_config(None, ["features.images=false"])
    for name in ("train_cnn", "train_autoencoder_images"):
        assert stages[name].applies(default, inputs) and not stages[name].applies(off, inputs)
    assert stages["features"].published(default, inputs) == (
        "features/images", "features/customers", "features/customer_values", "features/reviews")
    assert stages["features"].published(off, NightlyInputs("", reviews="r.csv")) == \
        ("features/reviews",)
    both = load_config(None, ["nightly.skip_stages=[train_cnn,train_autoencoder_images]"])
    one = load_config(None, ["nightly.skip_stages=[train_cnn]"])
    assert (night_config(both).features.images, night_config(one).features.images,
            night_config(default).features.images) == (False, True, True)
    assert both.features.images  # the config itself is left as it was
