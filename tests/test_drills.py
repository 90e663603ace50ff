"""Reliability drills. Each test's docstring says what it proves."""
from __future__ import annotations

import ipaddress
import os
import json
import random
import re
import subprocess
import sys
import textwrap

import pytest

from deepmine.data.generate import generate_transactions
from deepmine.data.ingest import IngestError, run_ingest
from deepmine.core.lake import Lake
from deepmine.nightly import STAGES, resolve_inputs, run_nightly

from csv_reference import reference_records, scan

DATE = "2026-11-22"
LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def data_records(raw: bytes, max_record_lines: int = 100) -> int:
    """Records after the header, by the rule ingest documents (tests/csv_reference.py), over the
    lines as Hadoop's line reader splits them (\\n, \\r, \\r\\n)."""
    if not raw:
        return 0
    parts = LINE_BREAK.split(raw)
    if parts[-1] == b"":
        parts = parts[:-1]
    lines = [p.decode("latin-1") for p in parts]  # one character per byte: quotes stay quotes
    columns = scan(lines[0], False)[1]
    return len(reference_records(lines, max_record_lines, columns))


def corrupt(lines: list[bytes], rng: random.Random) -> list[bytes]:
    """Apply one random corruption per chosen line; the header (line 0) is kept."""
    out = list(lines)
    for i in rng.sample(range(1, len(out)), k=max(1, len(out) // 10)):
        kind = rng.choice(["truncate", "garbage", "huge", "delimiter", "drop_field", "extra_field",
                           "empty", "quote", "nul", "header_again", "line_break", "open_quote"])
        line = out[i]
        if kind == "truncate":
            out[i] = line[: rng.randrange(0, max(1, len(line)))]
        elif kind == "garbage":
            out[i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        elif kind == "huge":
            out[i] = line + b"," + b"x" * rng.randrange(2000, 200000)
        elif kind == "delimiter":
            out[i] = line.replace(b",", rng.choice([b";", b"\t", b"|"]))
        elif kind == "drop_field":
            fields = line.split(b",")
            del fields[rng.randrange(len(fields))]
            out[i] = b",".join(fields)
        elif kind == "extra_field":
            out[i] = line + b",extra"
        elif kind == "empty":
            out[i] = b""
        elif kind == "quote":
            out[i] = b'"' + line
        elif kind == "line_break":  # a valid record whose last field holds line breaks
            fields = line.split(b",")
            fields[-1] = b'"' + fields[-1] + b"\n" * rng.randrange(1, 4) + b'Break ""Land"""'
            out[i] = b",".join(fields)
        elif kind == "open_quote":  # a quote that opens a field and never closes
            fields = line.split(b",")
            k = rng.randrange(len(fields))
            fields[k] = b'"' + fields[k]
            out[i] = b",".join(fields)
        elif kind == "nul":
            out[i] = line.replace(b",", b"\x00,", 1)
        else:
            out[i] = lines[0]
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_generated_and_real_files_never_crash_ingest(spark, make_config, tmp_path, seed):
    """Random corruptions (truncated lines, binary garbage, huge fields, wrong delimiters, missing
    and extra fields, stray and unbalanced quotes, quoted line breaks, NULs, repeated headers,
    empty and header-only files) of a generated file and of the real CDNOW sample: ingest
    completes and every record is accounted for (read = records in the files by the documented
    rule = clean + quarantined)."""
    rng = random.Random(seed)
    generate_transactions(tmp_path / "gen", lines=1500, seed=seed, dirty_rate=0.05)
    sources = [(tmp_path / "gen" / "transactions.csv").read_bytes()]
    try:
        from deepmine.data.samples import write_samples
        info = write_samples(tmp_path / "samples", only=["cdnow"])["cdnow"]
        sources.append(b"\n".join(open(info["path"], "rb").read().splitlines()[:1500]) + b"\n")
    except Exception as e:  # the package is installed by scripts/setup.sh; say so if it is not
        pytest.fail(f"CDNOW sample unavailable: {e}")
    folder = tmp_path / "fuzz"
    folder.mkdir()
    expected = 0
    for n, raw in enumerate(sources):
        header = raw.splitlines()[0]
        lines = corrupt(LINE_BREAK.split(raw.rstrip(b"\n")), rng)
        fuzzed = b"\n".join(lines) + b"\n"
        if n == 1:
            (tmp_path / "cdnow_fuzzed.csv").write_bytes(fuzzed)
            counts = run_ingest(spark, make_config(), DATE, str(tmp_path / "cdnow_fuzzed.csv"))
            assert counts["rows_read"] == data_records(fuzzed)
            assert counts["rows_read"] == counts["rows_clean"] + counts["rows_quarantined"]
            continue
        (folder / "a.csv").write_bytes(fuzzed)
        expected += data_records(fuzzed)
        (folder / "b_empty.csv").write_bytes(b"")
        (folder / "c_header_only.csv").write_bytes(header + b"\r\n")
    config = make_config()
    counts = run_ingest(spark, config, DATE, str(folder))
    assert counts["rows_read"] == expected
    assert counts["rows_read"] == counts["rows_clean"] + counts["rows_quarantined"]
    assert counts["rows_quarantined"] >= 150  # the planted 5% plus about a tenth fuzzed


def test_missing_and_extra_header_columns_are_clear_errors(spark, make_config, tmp_path):
    """A header with a missing or an unexpected column stops ingest with an error naming the file
    and the columns, before anything is written (exit code 2 from the CLI)."""
    path = tmp_path / "h.csv"
    path.write_text("invoice_id,customer_id,product_id,quantity,invoice_ts,country,colour\n")
    with pytest.raises(IngestError, match=r"h.csv: wrong header .*unexpected column\(s\) \['colour'\]"):
        run_ingest(spark, make_config(), DATE, str(path))


def _table_rows(lake: Lake, table: str, partition: str) -> list:
    df = lake.read(table, partition)
    return sorted(tuple(str(v) for v in row) for row in df.collect())


def published_tables(lake: Lake, run_date: str) -> dict[str, str]:
    """Every table a nightly stage published for the date -> its partition."""
    found = {}
    for stage in STAGES:
        for table in stage.outputs:
            partition = f"{stage.partition_key}={run_date}"
            if lake.has_partition(table, partition):
                found[table] = partition
    return found


def test_crash_during_each_stage_publish_then_next_run_completes(spark, nightly_run, monkeypatch):
    """For every stage of the nightly, dying in the middle of its publish (after the old
    partition was moved aside, before the new one is in place) leaves the previous output
    readable, and the next nightly completes with the same rows."""
    config, lake, date = nightly_run["config"], nightly_run["lake"], nightly_run["date"]
    inputs = resolve_inputs(config)
    tables = published_tables(lake, date)
    before = {t: _table_rows(lake, t, p) for t, p in tables.items()}
    real_rename = Lake.rename
    crashed = []
    for stage in STAGES:
        table = next((t for t in stage.outputs if t in tables), None)
        if table is None:
            continue

        def dying_rename(self, src, dst, table=table):
            real_rename(self, src, dst)
            if f"/{table}/_previous/" in dst:
                raise SystemExit(f"killed while publishing {table}")
        monkeypatch.setattr(Lake, "rename", dying_rename)
        with pytest.raises(SystemExit, match=f"killed while publishing {table}"):
            stage.run(spark, config, date, inputs)
        monkeypatch.setattr(Lake, "rename", real_rename)
        assert _table_rows(lake, table, tables[table]) == before[table]
        crashed.append(stage.name)
    assert {"ingest", "rfm", "rules", "recommend"} <= set(crashed)
    run_nightly(spark, config, date, force=True)
    assert {t: _table_rows(lake, t, p) for t, p in tables.items()} == before


def test_nightly_twice_for_a_date_gives_identical_outputs(spark, nightly_run):
    """Running the nightly again for the same date (--force) gives the same rows in every
    published table (compared as sorted rows)."""
    config, lake, date = nightly_run["config"], nightly_run["lake"], nightly_run["date"]
    tables = published_tables(lake, date)
    first = {t: _table_rows(lake, t, p) for t, p in tables.items()}
    result = run_nightly(spark, config, date, force=True)
    assert "rules" in result.ran and "clean/transactions" in tables and "mining/rules" in tables
    assert published_tables(lake, date) == tables
    assert {t: _table_rows(lake, t, p) for t, p in tables.items()} == first


def test_task_failing_once_is_retried_with_the_same_result(tmp_path):
    """A Spark task that fails on its first attempt (injected in the ingest's input partitions)
    is retried by Spark (local[2,2]: up to 2 attempts) and the ingest's output is unchanged."""
    generate_transactions(tmp_path / "gen", lines=2000, seed=6, dirty_rate=0.05)
    script = textwrap.dedent(f"""
        import json
        from pyspark import TaskContext
        from pyspark.sql import functions as F
        from deepmine.data import ingest
        from deepmine.core.config import load_config
        from deepmine.core.lake import Lake
        from deepmine.core.spark import build_session

        def rows(name):
            config = load_config(None, [f"lake.root={tmp_path}/{{name}}", "spark.ui_enabled=false",
                                        "spark.master=local[2,2]", "spark.driver_memory=1g"])
            spark = build_session(config)
            counts = ingest.run_ingest(spark, config, "{DATE}", "{tmp_path}/gen/transactions.csv")
            lake = Lake(spark, config.lake.root)
            clean = sorted(map(str, lake.read("clean/transactions", "dt={DATE}").collect()))
            return counts, clean

        plain = rows("plain")
        real_lines_to_records = ingest.lines_to_records

        @F.udf("boolean")
        def fail_first_attempt(partition):
            ctx = TaskContext.get()
            if ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
                raise RuntimeError("injected task failure")
            return True

        def flaky(lines, *args):  # the rows stay in the JVM; only the partition id meets Python
            return real_lines_to_records(lines.where(fail_first_attempt(F.spark_partition_id())),
                                         *args)

        ingest.lines_to_records = flaky
        injected = rows("injected")
        print(json.dumps({{"same": plain == injected, "read": injected[0]["rows_read"]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "injected task failure" in proc.stderr  # the failure happened and was logged ...
    assert proc.stdout.strip().splitlines()[-1] == '{"same": true, "read": 2000}'  # ... and retried


def test_spark_ui_binds_to_loopback_in_local_mode(tmp_path):
    """With the UI enabled, the local-mode driver's UI and RPC listen on 127.0.0.1 only."""
    script = textwrap.dedent(f"""
        import json
        from deepmine.core.config import load_config
        from deepmine.core.spark import build_session
        config = load_config(None, ["lake.root={tmp_path}/lake", "spark.ui_enabled=true",
                                    "spark.options.spark.ui.port=14040", "spark.driver_memory=1g"])
        spark = build_session(config)
        print(spark.sparkContext.uiWebUrl)
        import psutil, time
        jvm = [p for p in psutil.Process().children(recursive=True) if "java" in p.name()][0]
        listening = {{c.laddr.ip for c in jvm.net_connections(kind="tcp") if c.status == "LISTEN"}}
        print(json.dumps(sorted(listening)))
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "CI"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    url, listening = proc.stdout.strip().splitlines()[-2:]
    assert url.startswith("http://127.0.0.1:")
    addresses = [ipaddress.ip_address(a) for a in json.loads(listening)]
    assert addresses and all((getattr(a, "ipv4_mapped", None) or a).is_loopback for a in addresses), \
        addresses


class _Exploit:
    """Unpickling this would run a command; a weights-only loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_model_loading_is_weights_only(tmp_path):
    """A checkpoint file that carries a pickled object (here one whose unpickling would run a
    shell command) is refused by the trainer's checkpoint loader, and the command never runs."""
    import pickle

    from deepmine.deep.trainer import CheckpointStore
    marker = tmp_path / "pwned"
    store = CheckpointStore(tmp_path.as_uri())
    (tmp_path / "epoch-0001.pt").write_bytes(pickle.dumps({"model": _Exploit(marker)}))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        store.load(1)
    assert not marker.exists()
