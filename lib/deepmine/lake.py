"""The lake: where every table lives, how it is read, and how a partition is published.

All file-system work goes through Hadoop's FileSystem API (via the Spark session's JVM), so the
same code serves `file://`, `hdfs://` and `s3a://` lakes.

Publishing a partition is atomic for readers: the data is written to
`<table>/_staging/<partition>.<token>`, then the previous partition (if any) is moved aside to
`<table>/_previous/<partition>.<token>`, the staged one renamed into place, and the old one
deleted. A crash while writing leaves the previous partition untouched; a crash between the two
renames leaves the previous partition in `_previous`, which `recover()` (called by every read and
publish) moves back. Directories starting with `_` are ignored by Spark's partition discovery.

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

from deepmine.schemas import TABLES, check_schema


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
    def has_partition(self, table: str, partition: str) -> bool:
        self.recover(table, partition)
        return self.exists(self.url(table, partition, "_SUCCESS"))

    def read(self, table: str, partition: str | None = None) -> DataFrame:
        """Read one partition (or the whole table) and check it against the table's schema."""
        if partition is not None:
            self.recover(table, partition)
            url = self.partition_url(table, partition)
        else:
            url = self.url(table)
        if not self.exists(url):
            raise FileNotFoundError(f"lake table {table} has no data at {url}")
        df = self.spark.read.parquet(url)
        if table in TABLES:
            check_schema(df, TABLES[table], f"lake table {table} at {url}")
        return df

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
        rows = self.spark.read.parquet(staging).count()
        self._swap(table, partition, staging, token)
        return rows

    def publish_files(self, table: str, partition: str, files: dict[str, bytes]) -> str:
        """Publish a few files (a model's weights and metrics) as `<table>/<partition>`,
        atomically like publish(); returns the partition's URL."""
        self.recover(table, partition)
        token = uuid.uuid4().hex[:12]
        staging = self.url(table, "_staging", f"{partition}.{token}")
        for name, data in {**files, "_SUCCESS": b""}.items():
            self.write_bytes(f"{staging}/{name}", data)
        self._swap(table, partition, staging, token)
        return self.partition_url(table, partition)

    def _swap(self, table: str, partition: str, staging: str, token: str) -> None:
        target = self.partition_url(table, partition)
        previous = self.url(table, "_previous", f"{partition}.{token}")
        if self.exists(target):
            self.rename(target, previous)
        self.rename(staging, target)
        self.delete(previous)

    def recover(self, table: str, partition: str) -> None:
        """Finish or undo a publish that a crash interrupted; clear abandoned staging data."""
        target = self.partition_url(table, partition)
        prefix = f"{partition}."
        previous = [n for n in self.list_dir(self.url(table, "_previous")) if n.startswith(prefix)]
        for name in previous:
            url = self.url(table, "_previous", name)
            if not self.exists(target):
                self.rename(url, target)  # the crash came between the two renames
            else:
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
    """

    def __init__(self, lake: Lake, run_date: str, stage: str, log: Callable[[str], None] = print):
        self.lake, self.run_date, self.stage, self.log = lake, run_date, stage, log
        self.counts: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}
        self.outputs: dict[str, str] = {}
        self.degraded_reasons: list[str] = []

    def degrade(self, reason: str) -> None:
        """Mark the stage `degraded` (published, but not trustworthy) with a reason; logged now."""
        self.degraded_reasons.append(reason)
        self.log(f"[{self.stage}] DEGRADED: {reason}")

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
        self.manifest_url = self.lake.record_stage(self.run_date, self.stage, record)
        status = "FAILED" if exc_type else ("DEGRADED" if self.degraded_reasons else "done")
        summary = " ".join(f"{k}={v}" for k, v in self.counts.items() if not isinstance(v, dict))
        self.log(f"[{self.stage}] {status} in {seconds:.1f}s {summary}".rstrip())
        return False

