"""Lake publishing: a crash at any point of a publish leaves the previous partition readable."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from deepmine.core.lake import Lake

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
        from deepmine.core.config import load_config
        from deepmine.core.lake import Lake
        from deepmine.core.spark import build_session
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
    from deepmine.core.lake import StageRun
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


# ------------------------------------------------------------------ object stores (no atomic rename)
# No S3-compatible Hadoop client can be installed here (hadoop-aws comes from Maven), so the crash
# windows of a non-atomic directory rename are made on the local file system: a partition half
# copied (data files without `_SUCCESS`), and the object-store protocol run on file://.

def _half_copy(lake: Lake, table: str, partition: str, keep_files: int) -> None:
    """Turn `<table>/<partition>` into what a crash mid-copy leaves: some data files, no marker."""
    url = lake.partition_url(table, partition)
    parts = [n for n in lake.list_dir(url) if n.startswith("part-")]
    assert len(parts) > keep_files
    lake.delete(f"{url}/_SUCCESS")
    for name in parts[keep_files:]:
        lake.delete(f"{url}/{name}")


def _half_copied_new_version(lake: Lake, spark, old_rows: int) -> None:
    """The moment of a crash mid-copy on an object store: the old partition complete in
    `_previous`, the partition in place holding one of the new version's files and no marker."""
    lake.publish(spark.range(old_rows).withColumnRenamed("id", "n").repartition(2), TABLE, PART)
    target = lake.partition_url(TABLE, PART)
    lake._copy_files(target, lake.url(TABLE, "_previous", f"{PART}.a1b2c3"))
    lake.write_bytes(lake.url(TABLE, "_previous", f"{PART}.a1b2c3", "_SUCCESS"), b"")
    lake.publish(spark.range(100, 160).withColumnRenamed("id", "n").repartition(3), "demo/new", PART)
    lake.delete(target)
    lake._copy_files(lake.partition_url("demo/new", PART), target)
    _half_copy(lake, TABLE, PART, keep_files=1)


def test_half_copied_partition_falls_back_to_the_complete_previous(spark, tmp_path):
    """A crash mid-copy on an object store: the partition in place has some of the new files and
    no `_SUCCESS`, the old one is complete in `_previous`. Readers get the old rows (never the
    partial new ones), and recover() puts the complete copy back instead of deleting it."""
    lake = Lake(spark, str(tmp_path / "lake"))
    _half_copied_new_version(lake, spark, old_rows=4)
    assert _values(lake) == [0, 1, 2, 3]
    assert lake.list_dir(lake.url(TABLE, "_previous")) == []
    assert lake.has_partition(TABLE, PART)
    assert lake.read(TABLE).count() == 4  # the whole-table read sees the restored partition


def test_incomplete_partition_without_a_complete_copy_is_refused(spark, tmp_path):
    """A partition without its marker and nothing complete to fall back to: read() raises
    IncompletePartition (partition and whole table) instead of returning part of the rows, and
    the partial files are left in place."""
    from deepmine.core.lake import IncompletePartition
    lake = Lake(spark, str(tmp_path / "lake"))
    lake.publish(spark.range(30).withColumnRenamed("id", "n").repartition(3), TABLE, PART)
    lake.publish(spark.range(5).withColumnRenamed("id", "n"), TABLE, "run_date=2026-11-21")
    _half_copy(lake, TABLE, PART, keep_files=1)
    with pytest.raises(IncompletePartition, match="no _SUCCESS"):
        lake.read(TABLE, PART)
    with pytest.raises(IncompletePartition, match=r"\['run_date=2026-11-22'\]"):
        lake.read(TABLE)
    assert not lake.has_partition(TABLE, PART)
    assert lake.exists(lake.partition_url(TABLE, PART))  # nothing deleted
    lake.publish(spark.range(2).withColumnRenamed("id", "n"), TABLE, PART)  # a re-run mends it
    assert _values(lake) == [0, 1]


def test_object_store_publish_keeps_a_complete_copy_at_every_step(spark, tmp_path, monkeypatch):
    """The object-store protocol (copy, then marker, then delete) on file://, the process dying
    after each of its nine file-system steps in turn: every crash leaves the old or the new rows
    readable in full, and the next publish completes."""
    lake = Lake(spark, str(tmp_path / "lake"))
    lake.atomic_rename = False
    real = {name: getattr(Lake, name) for name in ("_copy_files", "write_bytes", "delete")}
    seen = set()
    for crash_at in range(9):
        table = f"demo/crash{crash_at}"
        lake.publish(spark.range(4).withColumnRenamed("id", "n").repartition(2), table, PART)
        steps = []

        def dying(name):
            def step(self, *args):
                real[name](self, *args)
                steps.append(name)
                if len(steps) > crash_at:
                    raise SystemExit(f"killed after {name}")
            return step
        for name in real:
            monkeypatch.setattr(Lake, name, dying(name))
        with pytest.raises(SystemExit):
            lake.publish(spark.range(100, 106).withColumnRenamed("id", "n"), table, PART)
        for name, fn in real.items():
            monkeypatch.setattr(Lake, name, fn)
        values = sorted(r.n for r in lake.read(table, PART).collect())
        assert values in (list(range(4)), list(range(100, 106))), (crash_at, steps)
        seen.add(values[0])
        lake.publish(spark.range(2).withColumnRenamed("id", "n"), table, PART)
        assert sorted(r.n for r in lake.read(table, PART).collect()) == [0, 1]
        assert lake.list_dir(lake.url(table, "_previous")) == []
    assert seen == {0, 100}  # crashes before the new marker keep the old rows, after it the new
