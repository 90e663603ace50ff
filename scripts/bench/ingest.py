"""Ingest throughput: the Spark ingest job against a single-process pyarrow baseline, side by side.

For each size: generate N lines (2% dirty), then time
  spark    deepmine's run_ingest (text read, split, parse, checks, dedupe, two Parquet partitions)
  pyarrow  one process doing the same parse, checks, exact-duplicate removal and Parquet writes
           with pyarrow.csv + pyarrow.compute (no quarantine reasons beyond the same checks)
and report rows/s and the ratio. Results: a table on stdout and bench-results/ingest.json.

    .venv/bin/python scripts/bench/ingest.py --sizes 1000000 4000000
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from results import publish

COLUMNS = ["invoice_id", "customer_id", "product_id", "quantity", "unit_price", "invoice_ts", "country"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from deepmine.config import load_config
    from deepmine.generate import generate_transactions
    from deepmine.ingest import run_ingest
    from deepmine.spark import build_session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deepmine-bench-ingest-"))
    config = load_config("conf/local.yaml", [f"lake.root={work / 'lake'}", "spark.ui_enabled=false"])
    spark = build_session(config)
    rows = []
    for n in args.sizes:
        data = work / f"gen-{n}"
        t0 = time.perf_counter()
        generate_transactions(data, lines=n, seed=args.seed, dirty_rate=0.02)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = run_ingest(spark, config, "2026-11-22", str(data / "transactions.csv"))
        spark_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = pyarrow_ingest(data / "transactions.csv", work / f"pyarrow-{n}")
        base_s = time.perf_counter() - t0
        rows.append({"lines": n, "generate_s": round(gen_s, 2),
                     "spark_s": round(spark_s, 2), "spark_rows_per_s": round(n / spark_s),
                     "pyarrow_s": round(base_s, 2), "pyarrow_rows_per_s": round(n / base_s),
                     "spark_over_pyarrow": round(base_s / spark_s, 3),
                     "spark_clean": counts["rows_clean"], "pyarrow_clean": base["rows_clean"],
                     "spark_read": counts["rows_read"], "pyarrow_read": base["rows_read"]})
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(work / f"pyarrow-{n}", ignore_errors=True)
    publish("ingest", rows, meta={"spark_master": config.spark.master})
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
