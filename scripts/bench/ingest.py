"""Ingest throughput: the Spark ingest job against two single-node peers, side by side.

For each size: generate N lines (2% dirty), then time
  spark    deepmine's run_ingest (text lines, record layout, from_csv, checks, duplicates in one
           shuffle, two Parquet partitions, counts observed while writing)
  pyarrow  one process doing the same parse, checks, exact-duplicate removal and Parquet writes
           with pyarrow.csv + pyarrow.compute (no quarantine reasons beyond the same checks)
  duckdb   DuckDB's read_csv (all fields as text, rejected rows kept by store_rejects), the same
           checks in SQL, the two outputs written as Parquet (its own threads: all cores)
and report wall seconds, CPU seconds (this process and its children: the JVM), rows/s,
microseconds per row per core, peak memory (resident set of the process and its children,
sampled) and the ratios, of wall time and of CPU time (the CPU ratio holds up better on a busy
machine). Results: a table on stdout and bench-results/ingest.json.

    .venv/bin/python scripts/bench/ingest.py --sizes 1000000 4000000 10000000
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from results import publish

COLUMNS = ["invoice_id", "customer_id", "product_id", "quantity", "unit_price", "invoice_ts", "country"]
CORES = os.cpu_count() or 1


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its children (the Spark JVM) so far."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


class PeakMemory:
    """The largest resident set of this process and its children (the Spark JVM) while open,
    and the CPU seconds they spent (less sensitive than wall time to a busy machine)."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self.cpu_s = 0.0

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakMemory":
        self._cpu0 = _cpu_seconds()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = _cpu_seconds() - self._cpu0


def timed(fn, *args):
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        result = fn(*args)
        seconds = time.perf_counter() - t0
    return result, seconds, memory.peak / 2**30, memory.cpu_s


def pyarrow_ingest(path: Path, out: Path) -> dict:
    """The baseline: same checks as deepmine's ingest, in one process with pyarrow."""
    bad_shape = []

    def on_invalid(row):
        bad_shape.append(row.text)
        return "skip"

    table = pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(column_names=COLUMNS, skip_rows=1, block_size=64 << 20),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(column_types={c: pa.binary() for c in COLUMNS}))
    rows_read = table.num_rows + len(bad_shape)
    # pyarrow has no per-row UTF-8 check: the generated data is ASCII, so any byte >= 0x80 is bad
    utf8_ok = None
    for c in COLUMNS:
        ok = pc.invert(pc.match_substring_regex(table[c], r"[\x80-\xff]"))
        utf8_ok = ok if utf8_ok is None else pc.and_(utf8_ok, ok)
    strings = {c: pc.cast(pc.if_else(utf8_ok, table[c], pa.scalar(b"", pa.binary())), pa.string())
               for c in COLUMNS}
    q_ok = pc.match_substring_regex(strings["quantity"], r"^-?[0-9]+$")
    quantity = pc.cast(pc.if_else(q_ok, strings["quantity"], "0"), pa.int64())
    p_ok = pc.match_substring_regex(strings["unit_price"], r"^[0-9]+(\.[0-9]+)?$")
    price = pc.cast(pc.if_else(p_ok, strings["unit_price"], "0"), pa.float64())
    ts = pc.strptime(strings["invoice_ts"], format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True)
    valid = pc.and_(utf8_ok, pc.and_(q_ok, p_ok))
    valid = pc.and_(valid, pc.and_(pc.not_equal(quantity, 0), pc.greater(price, 0)))
    valid = pc.and_(valid, pc.is_valid(ts))
    for c in ("invoice_id", "customer_id", "product_id"):
        valid = pc.and_(valid, pc.not_equal(strings[c], ""))
    typed = pa.table({"invoice_id": strings["invoice_id"], "customer_id": strings["customer_id"],
                      "product_id": strings["product_id"], "quantity": quantity,
                      "unit_price": price, "invoice_ts": ts, "country": strings["country"]})
    candidates = typed.filter(valid)
    clean = candidates.group_by(candidates.column_names).aggregate([])  # exact duplicates out
    clean = clean.append_column("is_return", pc.less(clean["quantity"], 0))
    refused = table.filter(pc.invert(valid))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(clean, out / "clean.parquet")
    pq.write_table(refused, out / "quarantine.parquet")
    duplicates = candidates.num_rows - clean.num_rows
    return {"rows_read": rows_read, "rows_clean": clean.num_rows,
            "rows_quarantined": refused.num_rows + len(bad_shape) + duplicates}


def duckdb_ingest(path: Path, out: Path) -> dict:
    """The second peer: DuckDB reads the CSV (rejects kept), checks and dedupes in SQL."""
    import duckdb
    con = duckdb.connect()
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS) + "}"
    con.execute(f"""CREATE TABLE raw AS SELECT * FROM read_csv('{path}', header = true,
        delim = ',', quote = '"', escape = '"', columns = {columns}, store_rejects = true,
        ignore_errors = true, strict_mode = false)""")
    rejected = con.execute("SELECT count(DISTINCT (file_id, line)) FROM reject_errors").fetchone()[0]
    con.execute(r"""CREATE TABLE typed AS SELECT *,
        TRY_CAST(quantity AS BIGINT) AS q, TRY_CAST(unit_price AS DOUBLE) AS p,
        TRY_STRPTIME(invoice_ts, '%Y-%m-%d %H:%M:%S') AS ts FROM raw""")
    valid = """q IS NOT NULL AND q <> 0 AND p IS NOT NULL AND p > 0 AND ts IS NOT NULL
        AND coalesce(invoice_id, '') <> '' AND coalesce(customer_id, '') <> ''
        AND coalesce(product_id, '') <> ''"""
    out.mkdir(parents=True, exist_ok=True)
    con.execute(f"""COPY (SELECT DISTINCT invoice_id, customer_id, product_id, q AS quantity,
        p AS unit_price, ts AS invoice_ts, country, q < 0 AS is_return FROM typed WHERE {valid})
        TO '{out / "clean.parquet"}' (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT * FROM raw WHERE rowid NOT IN
        (SELECT rowid FROM typed WHERE {valid})) TO '{out / "quarantine.parquet"}' (FORMAT parquet)""")
    clean = con.execute(f"SELECT count(*) FROM '{out / 'clean.parquet'}'").fetchone()[0]
    read = con.execute("SELECT count(*) FROM raw").fetchone()[0] + rejected
    return {"rows_read": read, "rows_clean": clean, "rows_quarantined": read - clean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from deepmine.core.config import load_config
    from deepmine.data.generate import generate_transactions
    from deepmine.data.ingest import run_ingest
    from deepmine.core.spark import build_session
    try:
        import duckdb  # noqa: F401
        engines = ["spark", "pyarrow", "duckdb"]
    except ImportError:
        print("duckdb is not installed (pip install duckdb==2.0.1): measuring spark and pyarrow")
        engines = ["spark", "pyarrow"]

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deepmine-bench-ingest-"))
    config = load_config("conf/local.yaml", [f"lake.root={work / 'lake'}", "spark.ui_enabled=false"])
    spark = build_session(config)
    rows = []
    for n in args.sizes:
        data = work / f"gen-{n}"
        t0 = time.perf_counter()
        generate_transactions(data, lines=n, seed=args.seed, dirty_rate=0.02)
        row = {"lines": n, "generate_s": round(time.perf_counter() - t0, 2)}
        source = data / "transactions.csv"
        runs = {
            "spark": lambda: run_ingest(spark, config, "2026-11-22", str(source)),
            "pyarrow": lambda: pyarrow_ingest(source, work / f"pyarrow-{n}"),
            "duckdb": lambda: duckdb_ingest(source, work / f"duckdb-{n}"),
        }
        for engine in engines:
            counts, seconds, peak_gib, cpu_s = timed(runs[engine])
            row.update({f"{engine}_s": round(seconds, 2), f"{engine}_cpu_s": round(cpu_s, 2),
                        f"{engine}_rows_per_s": round(n / seconds),
                        f"{engine}_us_per_row_core": round(seconds * CORES * 1e6 / n, 2),
                        f"{engine}_peak_gib": round(peak_gib, 2),
                        f"{engine}_clean": counts["rows_clean"], f"{engine}_read": counts["rows_read"]})
        row["spark_over_pyarrow"] = round(row["pyarrow_s"] / row["spark_s"], 3)
        row["spark_over_pyarrow_cpu"] = round(row["pyarrow_cpu_s"] / row["spark_cpu_s"], 3)
        if "duckdb" in engines:
            row["spark_over_duckdb"] = round(row["duckdb_s"] / row["spark_s"], 3)
            row["spark_over_duckdb_cpu"] = round(row["duckdb_cpu_s"] / row["spark_cpu_s"], 3)
        rows.append(row)
        for d in (data, work / f"pyarrow-{n}", work / f"duckdb-{n}"):
            shutil.rmtree(d, ignore_errors=True)
    publish("ingest", rows, meta={"spark_master": config.spark.master, "cores": CORES})
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
