"""The lake: where every table lives, how it is read, and how a partition is published.

All file-system work goes through Hadoop's FileSystem API (via the Spark session's JVM), so the
same code serves `file://`, `hdfs://` and `s3a://` lakes.

A partition is complete when its `_SUCCESS` marker is there; the marker is always the last thing
to arrive. Readers require it: `read()` never returns a partition without it (it falls back to the
last complete version, or raises), and a whole-table read refuses a table with an incomplete one.

Publishing: the data is written to `<table>/_staging/<partition>.<token>`; the complete partition
in place (if any) is moved aside to `<table>/_previous/<partition>.<token>`, the staged one moved
into place, and only then is the previous one deleted. Directories starting with `_` are ignored by
Spark's partition discovery. `recover()` (called by every read and publish) finishes a publish
that a crash interrupted: when the partition in place is complete it clears `_previous` and
`_staging`; when it is missing or incomplete it puts back the newest complete `_previous` copy; it
never deletes a complete copy unless the partition in place is complete.

How a directory is moved depends on the store. Where rename is atomic (`file://`, `hdfs://`) a
move is one rename. On object stores (`s3a://` and any other scheme) a directory rename is a copy
of every object followed by deletes, in listing order, which puts `_SUCCESS` first: a crash in the
middle leaves both sides partial, the moved one possibly with its marker. There a move is: copy the
data files, then write the marker on the copy, then delete the marker of the source, then the
source. So at every moment the partition in place or a `_previous` copy is complete and marked
(the price: the previous partition is copied once per publish instead of renamed).

The run manifest `<root>/runs/run_date=D/manifest.json` records every stage of a run: start, end,
seconds, status, counts and metrics.
The run manifest `<root>/runs/run_date=D/manifest.json` records every stage of a run: start, end,
seconds, status, counts and metrics.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from deepmine.core.schemas import TABLES, check_schema


SUCCESS = "_SUCCESS"  # a partition's completeness marker, written last
ATOMIC_RENAME_SCHEMES = {"file", "hdfs", "viewfs"}  # stores whose directory rename is one step


class IncompletePartition(FileNotFoundError):
    """A partition without its `_SUCCESS` marker and no complete earlier version to fall back to."""


def resolve_url(root: str) -> str:
    """A lake root as a URL: URLs pass through, plain paths become absolute file:// URLs."""
    if "://" in root:
        return root
    if root.startswith("file:"):
        return root
    return Path(root).expanduser().resolve().as_uri()


class Lake:
    def __init__(self, spark: SparkSession, root: str):
        self.spark = spark
        self.root = resolve_url(root).rstrip("/")
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self._hconf = spark.sparkContext._jsc.hadoopConfiguration()
        # how a directory is moved (see the module's docstring); tests set it to exercise both
        self.atomic_rename = self.root.split(":", 1)[0].lower() in ATOMIC_RENAME_SCHEMES

    # ------------------------------------------------------------------ locations
    def url(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def partition_url(self, table: str, partition: str) -> str:
        return self.url(table, partition)

    def _fs(self, url: str):
        path = self._Path(url)
        return path.getFileSystem(self._hconf), path

    def exists(self, url: str) -> bool:
        fs, path = self._fs(url)
        return bool(fs.exists(path))

    def delete(self, url: str) -> None:
        fs, path = self._fs(url)
        if fs.exists(path):
            fs.delete(path, True)

    def rename(self, src: str, dst: str) -> None:
        fs, src_path = self._fs(src)
        dst_path = self._Path(dst)
        fs.mkdirs(dst_path.getParent())
        if not fs.rename(src_path, dst_path):
            raise OSError(f"could not rename {src} to {dst}")

    def list_dir(self, url: str) -> list[str]:
        fs, path = self._fs(url)
        if not fs.exists(path):
            return []
        return sorted(str(s.getPath().getName()) for s in fs.listStatus(path))

    def read_text(self, url: str) -> str:
        fs, path = self._fs(url)
        stream = fs.open(path)
        try:
            jvm = self.spark.sparkContext._jvm
            return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()

    def write_text(self, url: str, text: str) -> None:
        """Write a small file atomically: a temporary sibling, then a rename over the target."""
        fs, path = self._fs(url)
        tmp = f"{url}.tmp-{uuid.uuid4().hex}"
        self.write_bytes(tmp, text.encode("utf-8"))
        if fs.exists(path):
            fs.delete(path, False)
        if not fs.rename(self._Path(tmp), path):
            raise OSError(f"could not write {url}")

    def write_bytes(self, url: str, data: bytes) -> None:
        fs, path = self._fs(url)
        stream = fs.create(path, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    # ------------------------------------------------------------------ tables
    def is_complete(self, url: str) -> bool:
        """A partition (or a staged or previous copy of one) whose `_SUCCESS` marker is there."""
        return self.exists(f"{url}/{SUCCESS}")

    def has_partition(self, table: str, partition: str) -> bool:
        self.recover(table, partition)
        return self.is_complete(self.partition_url(table, partition))

    def read(self, table: str, partition: str | None = None) -> DataFrame:
        """Read one complete partition (or the whole table, every partition complete) and check it
        against the table's schema. FileNotFoundError when there is nothing; IncompletePartition
        when a partition lacks its marker and no complete version of it is left."""
        if partition is not None:
            self.recover(table, partition)
            url = self.partition_url(table, partition)
            if not self.exists(url):
                raise FileNotFoundError(f"lake table {table} has no data at {url}")
            if not self.is_complete(url):
                raise IncompletePartition(
                    f"lake table {table}: {url} is incomplete (no {SUCCESS}: a publish was "
                    f"interrupted) and no complete earlier version is left in {table}/_previous; "
                    "re-run the stage that writes it")
            df = self.spark.read.parquet(url)
        else:
            url = self.url(table)
            partitions = self.partitions(table)
            if not partitions:
                raise FileNotFoundError(f"lake table {table} has no data at {url}")
            incomplete = [p for p, complete in partitions.items() if not complete]
            if incomplete:
                raise IncompletePartition(
                    f"lake table {table}: partition(s) {incomplete} at {url} are incomplete (no "
                    f"{SUCCESS}: a publish was interrupted) with no complete earlier version left; "
                    "re-run the stages that write them")
            df = self.spark.read.option("basePath", url).parquet(
                *[self.url(table, p) for p in partitions])
        if table in TABLES:
            check_schema(df, TABLES[table], f"lake table {table} at {url}")
        return df

    def partitions(self, table: str) -> dict[str, bool]:
        """Every partition directory of `table` (name -> complete), after recovering those that a
        crash left mid-publish."""
        pending = {n.rsplit(".", 1)[0] for folder in ("_previous", "_staging")
                   for n in self.list_dir(self.url(table, folder)) if "." in n}
        for partition in sorted(pending):
            self.recover(table, partition)
        fs, path = self._fs(self.url(table))
        if not fs.exists(path):
            return {}
        marked = {str(s.getPath().getParent().getName())
                  for s in (fs.globStatus(self._Path(self.url(table, "*", SUCCESS))) or [])}
        return {name: name in marked for name in self.list_dir(self.url(table))
                if "=" in name and not name.startswith(("_", "."))}

    def read_history(self, table: str, run_date: str, key: str = "dt") -> DataFrame:
        """Every partition of `table` up to and including `run_date` (each dt holds that day's input)."""
        df = self.read(table)
        return df.where(F.col(key).cast("string") <= F.lit(run_date))

    def publish(self, df: DataFrame, table: str, partition: str) -> int:
        """Write `df` as `<table>/<partition>` atomically; returns the number of rows written."""
        if table in TABLES:
            check_schema(df, TABLES[table], f"writing lake table {table}")
            df = df.select(*[f.name for f in TABLES[table].fields])
        self.recover(table, partition)
        token = uuid.uuid4().hex[:12]
        staging = self.url(table, "_staging", f"{partition}.{token}")
        df.write.mode("overwrite").parquet(staging)
        if not self.is_complete(staging):  # a committer configured not to write the marker
            self.write_bytes(f"{staging}/{SUCCESS}", b"")
        rows = self.spark.read.parquet(staging).count()
        self._swap(table, partition, staging, token)
        return rows

    def publish_files(self, table: str, partition: str, files: dict[str, bytes]) -> str:
        """Publish a few files (a model's weights and metrics) as `<table>/<partition>`,
        atomically like publish(); returns the partition's URL."""
        self.recover(table, partition)
        token = uuid.uuid4().hex[:12]
        staging = self.url(table, "_staging", f"{partition}.{token}")
        for name, data in {**files, SUCCESS: b""}.items():  # the marker last
            self.write_bytes(f"{staging}/{name}", data)
        self._swap(table, partition, staging, token)
        return self.partition_url(table, partition)

    def _swap(self, table: str, partition: str, staging: str, token: str) -> None:
        """Put the complete `staging` in place; the complete partition there is kept in
        `_previous` until the new one is complete, then deleted."""
        target = self.partition_url(table, partition)
        previous = self.url(table, "_previous", f"{partition}.{token}")
        if self.is_complete(target):
            self._move_complete(target, previous)
        elif self.exists(target):
            self.delete(target)  # remains without a marker; recover() found no complete copy
        self._move_complete(staging, target)
        self.delete(previous)

    def _move_complete(self, src: str, dst: str) -> None:
        """Move a complete directory so that `dst` has its marker only once all of it is there,
        and `src` keeps its own until then (see the module's docstring)."""
        if self.atomic_rename:
            self.rename(src, dst)
            return
        self._copy_files(src, dst)
        self.write_bytes(f"{dst}/{SUCCESS}", b"")
        self.delete(f"{src}/{SUCCESS}")
        self.delete(src)

    def _copy_files(self, src: str, dst: str) -> None:
        """Copy every file under `src` to `dst` except the top-level marker (object by object)."""
        jvm = self.spark.sparkContext._jvm
        fs, src_path = self._fs(src)
        dst_path = self._Path(dst)
        fs.mkdirs(dst_path)
        for status in fs.listStatus(src_path):
            name = str(status.getPath().getName())
            if name == SUCCESS or name.startswith("."):  # the marker; local checksum files
                continue
            jvm.org.apache.hadoop.fs.FileUtil.copy(fs, status.getPath(), fs,
                                                   self._Path(f"{dst}/{name}"), False, self._hconf)

    def _modified(self, url: str) -> int:
        fs, path = self._fs(url)
        return int(fs.getFileStatus(path).getModificationTime())

    def recover(self, table: str, partition: str) -> None:
        """Finish or undo a publish that a crash interrupted; clear abandoned staging data.

        With the partition in place complete: every `_previous` and `_staging` copy of it goes.
        Without (missing, or no marker): the newest complete `_previous` copy is put back in its
        place; when there is none, nothing that could hold the last data is deleted (`read()`
        then says the partition is incomplete)."""
        target = self.partition_url(table, partition)
        prefix = f"{partition}."
        previous = [self.url(table, "_previous", n)
                    for n in self.list_dir(self.url(table, "_previous")) if n.startswith(prefix)]
        if previous and not self.is_complete(target):
            complete = [p for p in previous if self.is_complete(p)]
            if complete:  # the crash came while the new partition was on its way in
                newest = max(complete, key=lambda p: self._modified(f"{p}/{SUCCESS}"))
                if self.exists(target):
                    self.delete(target)
                self._move_complete(newest, target)
        if self.is_complete(target):
            for url in previous:
                self.delete(url)
        for name in self.list_dir(self.url(table, "_staging")):
            if name.startswith(prefix):
                self.delete(self.url(table, "_staging", name))

    # ------------------------------------------------------------------ lock
    def lock_url(self) -> str:
        return self.url("_lock", "nightly.lock")

    @contextlib.contextmanager
    def lock(self, holder: str):
        """Hold the lake's lock; LakeLocked at once if another live process holds it.

        The lock is a file created with create-if-absent semantics. A lock left by a process
        that died on this same host is taken over; one from another host must be removed by hand
        (its content says who and since when). Only an existing lock file means "locked": any
        other failure while creating or reading it (permissions, storage down) is LakeLockError,
        with the cause.
        """
        fs, path = self._fs(self.lock_url())
        text = json.dumps({"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": _now()})
        try:
            fs.mkdirs(path.getParent())
        except Exception as e:  # noqa: BLE001 - py4j wraps the Java IOException
            raise LakeLockError(f"could not take the lake lock {self.lock_url()}: "
                                f"{_java_message(e)}") from None
        if not self._create_new(fs, path, text):
            current = self._read_lock()
            if current is not None and current.get("host") == socket.gethostname() \
                    and not _pid_alive(current.get("pid")):
                fs.delete(path, False)  # its owner died here without releasing it
                current = None
            if current is None:  # released (or taken over) since: try once more
                if not self._create_new(fs, path, text):
                    current = self._read_lock() or {}
            if current is not None:
                raise LakeLocked(f"another process holds the lake lock {self.lock_url()}: "
                                 f"{json.dumps(current)}")
        try:
            yield
        finally:
            fs.delete(path, False)

    def _create_new(self, fs, path, text: str) -> bool:
        """Create the lock file; False if it already exists, LakeLockError on any other failure."""
        try:
            stream = fs.create(path, False)  # overwrite=False: fails if the file exists
        except Exception as e:  # noqa: BLE001 - py4j wraps FileAlreadyExistsException
            if "FileAlreadyExistsException" in _java_class(e) or fs.exists(path):
                return False
            raise LakeLockError(f"could not take the lake lock {self.lock_url()}: "
                                f"{_java_message(e)}") from None
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

    def _read_lock(self) -> dict | None:
        """The lock's content; None when it vanished (released since); LakeLockError when it
        cannot be read. Content that is not JSON (a holder that died mid-write) is shown raw."""
        try:
            fs, path = self._fs(self.lock_url())
            if not fs.exists(path):
                return None
            text = self.read_text(self.lock_url())
        except Exception as e:  # noqa: BLE001
            if "FileNotFoundException" in _java_class(e):
                return None
            raise LakeLockError(f"could not read the lake lock {self.lock_url()}: "
                                f"{_java_message(e)}") from None
        try:
            return json.loads(text)
        except ValueError:
            return {"content": text}

    # ------------------------------------------------------------------ manifest
    def manifest_url(self, run_date: str) -> str:
        return self.url("runs", f"run_date={run_date}", "manifest.json")

    def read_manifest(self, run_date: str) -> dict[str, Any]:
        url = self.manifest_url(run_date)
        if not self.exists(url):
            return {"run_date": run_date, "lake_root": self.root, "stages": {}}
        return json.loads(self.read_text(url))

    def run_dates(self, before: str | None = None) -> list[str]:
        """The run dates with a run folder, oldest first; only those before `before` if given."""
        if not self.exists(self.url("runs")):
            return []
        dates = (n.split("=", 1)[1] for n in self.list_dir(self.url("runs"))
                 if n.startswith("run_date="))
        return sorted(d for d in dates if before is None or d < before)

    def record_stage(self, run_date: str, stage: str, record: dict[str, Any]) -> str:
        """Merge one stage's record into the run's manifest; returns the manifest's URL."""
        manifest = self.read_manifest(run_date)
        manifest["stages"][stage] = record
        manifest["updated"] = _now()
        url = self.manifest_url(run_date)
        self.write_text(url, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        return url


class LakeLocked(RuntimeError):
    """Another live process holds the lake's lock (exit code 75)."""


class LakeLockError(RuntimeError):
    """The lake's lock could not be created or read (exit code 1): an error, not a held lock."""


def _java_class(e: BaseException) -> str:
    """The Java exception's class name behind a py4j error ('' for a Python exception)."""
    java = getattr(e, "java_exception", None)
    try:
        return str(java.getClass().getName()) if java is not None else type(e).__name__
    except Exception:  # noqa: BLE001
        return type(e).__name__


def _java_message(e: BaseException) -> str:
    java = getattr(e, "java_exception", None)
    if java is not None:
        try:
            return f"{java.getClass().getName()}: {java.getMessage()}"
        except Exception:  # noqa: BLE001
            pass
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class StageRun:
    """Times one stage and records it in the manifest, whether it succeeds or fails.

    with StageRun(lake, run_date, "ingest") as run:
        run.counts.update(rows_read=...)
        if model_lost_to_baseline:
            run.degrade("accuracy 0.41 is below the majority-class baseline's 0.52")

    Status: `failed` when the block raises; `degraded` when it finished and published but called
    `degrade()` (a model that does not beat its baseline, a clustering that collapsed, ...): the
    reasons go to the manifest's `degraded_reasons` and the log; `ok` otherwise.
    `warn()` records what the operator should know about an `ok` stage (a fallback it took: the
    synthetic images standing in for a missing image set) in the manifest's `warnings`, the log
    and the report.
    """

    def __init__(self, lake: Lake, run_date: str, stage: str, log: Callable[[str], None] = print):
        self.lake, self.run_date, self.stage, self.log = lake, run_date, stage, log
        self.counts: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}
        self.outputs: dict[str, str] = {}
        self.degraded_reasons: list[str] = []
        self.warnings: list[str] = []

    def degrade(self, reason: str) -> None:
        """Mark the stage `degraded` (published, but not trustworthy) with a reason; logged now."""
        self.degraded_reasons.append(reason)
        self.log(f"[{self.stage}] DEGRADED: {reason}")

    def warn(self, message: str) -> None:
        """Record a fallback or oddity the operator should see (manifest `warnings`, log, report)."""
        self.warnings.append(message)
        self.log(f"[{self.stage}] WARNING: {message}")

    @property
    def status(self) -> str:
        return "degraded" if self.degraded_reasons else "ok"

    def __enter__(self) -> "StageRun":
        self._start = dt.datetime.now(dt.timezone.utc)
        self.log(f"[{self.stage}] start run_date={self.run_date}")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        end = dt.datetime.now(dt.timezone.utc)
        seconds = round((end - self._start).total_seconds(), 3)
        record = {
            "start": self._start.isoformat(timespec="milliseconds"),
            "end": end.isoformat(timespec="milliseconds"),
            "seconds": seconds,
            "status": "failed" if exc_type else self.status,
            "counts": self.counts,
            "metrics": self.metrics,
            "outputs": self.outputs,
        }
        if exc_type:
            record["error"] = f"{exc_type.__name__}: {exc}"
        if self.degraded_reasons:
            record["degraded_reasons"] = list(self.degraded_reasons)
        if self.warnings:
            record["warnings"] = list(self.warnings)
        self.manifest_url = self.lake.record_stage(self.run_date, self.stage, record)
        status = "FAILED" if exc_type else ("DEGRADED" if self.degraded_reasons else "done")
        summary = " ".join(f"{k}={v}" for k, v in self.counts.items() if not isinstance(v, dict))
        self.log(f"[{self.stage}] {status} in {seconds:.1f}s {summary}".rstrip())
        return False

