"""Lake publishing: a crash at any point of a publish leaves the previous partition readable."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from deepmine.lake import Lake

TABLE, PART = "demo/numbers", "run_date=2026-11-22"


def _values(lake: Lake) -> list[int]:
    return sorted(r.n for r in lake.read(TABLE, PART).collect())


def test_publish_replaces_and_counts(spark, tmp_path):
    lake = Lake(spark, str(tmp_path / "lake"))
    assert lake.publish(spark.range(5).withColumnRenamed("id", "n"), TABLE, PART) == 5
    assert lake.publish(spark.range(3).withColumnRenamed("id", "n"), TABLE, PART) == 3
    assert _values(lake) == [0, 1, 2]
    assert lake.has_partition(TABLE, PART)
    assert lake.list_dir(lake.url(TABLE, "_staging")) == []


def test_crash_between_the_two_renames_is_recovered(spark, tmp_path, monkeypatch):
    """The process dies after moving the old partition aside, before the new one is in place."""
    lake = Lake(spark, str(tmp_path / "lake"))
    lake.publish(spark.range(4).withColumnRenamed("id", "n"), TABLE, PART)
    real_rename = Lake.rename
    calls = []

    def rename_then_die(self, src, dst):
        real_rename(self, src, dst)
        calls.append(dst)
        raise SystemExit("killed")  # stands for the process dying here

    monkeypatch.setattr(Lake, "rename", rename_then_die)
    with pytest.raises(SystemExit):
        lake.publish(spark.range(9).withColumnRenamed("id", "n"), TABLE, PART)
    monkeypatch.setattr(Lake, "rename", real_rename)
    assert "_previous" in calls[0]
    assert not lake.exists(lake.partition_url(TABLE, PART))  # the moment of the crash
    assert _values(lake) == [0, 1, 2, 3]  # a reader finds the previous partition again
    lake.publish(spark.range(2).withColumnRenamed("id", "n"), TABLE, PART)
    assert _values(lake) == [0, 1]


def test_process_killed_after_staging_leaves_previous_readable(spark, tmp_path):
    """A real process is killed (os._exit) after writing the staged data, before publishing."""
    root = tmp_path / "lake"
    lake = Lake(spark, str(root))
    lake.publish(spark.range(4).withColumnRenamed("id", "n"), TABLE, PART)
    script = textwrap.dedent(f"""
        import os
        from deepmine.config import load_config
        from deepmine.lake import Lake
        from deepmine.spark import build_session
        config = load_config(None, ["lake.root={root}", "spark.ui_enabled=false",
                                    "spark.driver_memory=1g"])
        spark = build_session(config)
        Lake._swap = lambda *args: os._exit(137)
        Lake(spark, config.lake.root).publish(spark.range(100).withColumnRenamed("id", "n"),
                                              "{TABLE}", "{PART}")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 137, proc.stderr[-2000:]
    staged = lake.list_dir(lake.url(TABLE, "_staging"))
    assert len(staged) == 1  # the dead process left its staged data behind
    assert _values(lake) == [0, 1, 2, 3]
    assert lake.list_dir(lake.url(TABLE, "_staging")) == []  # ... which the next reader cleared
    lake.publish(spark.range(2).withColumnRenamed("id", "n"), TABLE, PART)
    assert _values(lake) == [0, 1]


def test_manifest_records_failed_stage(spark, tmp_path):
    from deepmine.lake import StageRun
    lake = Lake(spark, str(tmp_path / "lake"))
    with pytest.raises(ZeroDivisionError):
        with StageRun(lake, "2026-11-22", "demo", log=lambda m: None) as run:
            run.counts["rows_read"] = 3
            1 / 0
    record = lake.read_manifest("2026-11-22")["stages"]["demo"]
    assert record["status"] == "failed" and record["counts"] == {"rows_read": 3}
    assert record["error"].startswith("ZeroDivisionError")


def test_publish_files_replaces_a_partition_of_files(spark, tmp_path):
    lake = Lake(spark, str(tmp_path / "lake"))
    url = lake.publish_files("models/demo", PART, {"weights.pt": b"\x00\x01v1", "metrics.json": b"{}"})
    assert lake.has_partition("models/demo", PART)
    lake.publish_files("models/demo", PART, {"weights.pt": b"\x00\x01v2"})
    # (the local file system keeps hidden .crc checksum files beside each file)
    assert [n for n in lake.list_dir(url) if not n.startswith(".")] == ["_SUCCESS", "weights.pt"]
    fs, path = lake._fs(f"{url}/weights.pt")
    stream = fs.open(path)
    try:
        data = bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()
    assert data == b"\x00\x01v2"
