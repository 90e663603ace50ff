"""Association rules: Spark FPGrowth (deepmine.mining.rules) against mlxtend's fpgrowth, same baskets.

For each size (number of baskets wanted): generate about 4.5 lines per basket, build the baskets
once with Spark (one per purchase invoice, as the rules stage does) and write them to Parquet;
then time, on those same baskets,
  spark    deepmine.mining.rules.frequent_itemsets + association_rules (mining, capping, every metric),
           results collected
  mlxtend  in a child process with a time limit and a memory cap: read the baskets, one-hot encode
           every product (what mlxtend's TransactionEncoder gives), fpgrowth(max_len) and
           association_rules(num_itemsets)
and report the times, their ratio and whether both found the same itemsets (supports within 1e-9)
and the same number of rules. A child that runs out of time or memory is recorded as such, with the
size, and the larger sizes are not tried with mlxtend; a dense frame that runs out of memory is
tried again as a sparse one (mlxtend takes both) before giving up. Results: a table on stdout and
bench-results/rules.json.

    .venv/bin/python scripts/bench/rules.py --sizes 10000 100000 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import publish

CHILD = "--mlxtend-child"


# --------------------------------------------------------------------------- mlxtend (child)

def mlxtend_child(baskets_path: str, out_path: str, min_support: float, min_confidence: float,
                  max_len: int, memory_gb: float, encoding: str) -> None:
    """Runs in its own process: read baskets, encode, mine, make rules, write a JSON summary.
    `encoding` dense: a bool DataFrame (TransactionEncoder's default); sparse: a pandas sparse
    DataFrame over a CSR matrix (TransactionEncoder's sparse=True), which mlxtend also takes."""
    if memory_gb > 0:
        limit = int(memory_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    from mlxtend.frequent_patterns import association_rules, fpgrowth

    result: dict = {}
    t0 = time.perf_counter()
    baskets = pq.read_table(baskets_path, columns=["items"]).column("items").to_pylist()
    result["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    items = sorted({p for b in baskets for p in b})
    position = {p: j for j, p in enumerate(items)}
    if encoding == "sparse":
        from scipy.sparse import csr_matrix
        columns = [position[p] for b in baskets for p in b]
        offsets = np.cumsum([0] + [len(b) for b in baskets])
        onehot = csr_matrix((np.ones(len(columns), dtype=bool), columns, offsets),
                            shape=(len(baskets), len(items)))
        frame = pd.DataFrame.sparse.from_spmatrix(onehot, columns=items)
    else:
        onehot = np.zeros((len(baskets), len(items)), dtype=bool)
        for i, basket in enumerate(baskets):
            onehot[i, [position[p] for p in basket]] = True
        frame = pd.DataFrame(onehot, columns=items)
    del onehot
    result["encode_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    frequent = fpgrowth(frame, min_support=min_support, use_colnames=True, max_len=max_len)
    result["fpgrowth_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with np.errstate(divide="ignore", invalid="ignore"):
        found = association_rules(frequent, num_itemsets=len(baskets), metric="confidence",
                                  min_threshold=min_confidence)
    result["rules_s"] = time.perf_counter() - t0
    result["itemsets"] = [[sorted(s), float(v)] for s, v in
                          zip(frequent["itemsets"], frequent["support"])]
    result["rules"] = int(len(found))
    Path(out_path).write_text(json.dumps(result))


def run_mlxtend(baskets_path: Path, out_path: Path, args, encoding: str) -> dict:
    """The child, under a wall-clock limit; returns its summary or {'status': why it stopped}."""
    cmd = [sys.executable, __file__, CHILD, str(baskets_path), str(out_path),
           str(args.min_support), str(args.min_confidence), str(args.max_len),
           str(args.mlxtend_memory_gb), encoding]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.mlxtend_timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {args.mlxtend_timeout} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        status = ("out of memory" if "MemoryError" in proc.stderr or proc.returncode == -9
                  else f"failed (exit {proc.returncode})")
        return {"status": f"{status} (cap {args.mlxtend_memory_gb} GB): {tail[0][:200]}"}
    result = json.loads(out_path.read_text())
    result.update(status="ok", wall_s=wall)
    return result


# --------------------------------------------------------------------------- Spark (parent)

def make_baskets(spark, csv_path: Path, out: Path, partitions: int) -> int:
    from pyspark.sql import functions as F

    from deepmine.mining.rules import baskets
    lines = (spark.read.option("header", True)
             .schema("invoice_id string, customer_id string, product_id string, quantity long, "
                     "unit_price double, invoice_ts string, country string")
             .csv(str(csv_path)).withColumn("is_return", F.col("quantity") < 0))
    baskets(lines).repartition(partitions).write.mode("overwrite").parquet(str(out))
    return spark.read.parquet(str(out)).count()


def run_spark(spark, baskets_path: Path, n_baskets: int, args, partitions: int) -> dict:
    from deepmine.mining import rules
    t0 = time.perf_counter()
    basket_df = spark.read.parquet(str(baskets_path)).persist()
    basket_df.count()
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    itemsets = rules.frequent_itemsets(basket_df, n_baskets, args.max_len, args.min_support,
                                       num_partitions=partitions).persist()
    found_sets = [(tuple(r["items"]), r["support"]) for r in itemsets.collect()]
    mine_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_rules = rules.association_rules(itemsets, n_baskets, args.min_confidence).count()
    rules_s = time.perf_counter() - t0
    itemsets.unpersist()
    basket_df.unpersist()
    return {"read_s": read_s, "mine_s": mine_s, "rules_s": rules_s, "itemsets": found_sets,
            "rules": n_rules}


def same_itemsets(ours: list, theirs: list) -> bool:
    a = {tuple(items): s for items, s in ours}
    b = {tuple(items): s for items, s in theirs}
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-9 for k in a)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        path, out, support, confidence, max_len, memory, encoding = sys.argv[2:9]
        mlxtend_child(path, out, float(support), float(confidence), int(max_len), float(memory),
                      encoding)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="baskets wanted per size (about 4.5 generated lines each)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--min-support", type=float, default=0.01)
    parser.add_argument("--min-confidence", type=float, default=0.3)
    parser.add_argument("--max-len", type=int, default=3)
    parser.add_argument("--mlxtend-timeout", type=int, default=1800, help="seconds per size")
    parser.add_argument("--mlxtend-memory-gb", type=float, default=12.0,
                        help="address-space cap of the mlxtend process (0 = none)")
    parser.add_argument("--conf", default="conf/local.yaml")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from deepmine.core.config import load_config
    from deepmine.data.generate import generate_transactions
    from deepmine.core.spark import build_session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deepmine-bench-rules-"))
    config = load_config(args.conf, [f"lake.root={work / 'lake'}", "spark.ui_enabled=false"])
    spark = build_session(config)
    partitions = config.spark.shuffle_partitions
    # warm-up, not reported: the JVM's first FPGrowth pays for class loading and JIT
    warm = work / "warm-up"
    generate_transactions(warm, lines=2000, seed=args.seed)
    n = make_baskets(spark, warm / "transactions.csv", work / "warm-up.parquet", partitions)
    run_spark(spark, work / "warm-up.parquet", n, args, partitions)
    rows = []
    mlxtend_stopped = None
    for wanted in args.sizes:
        data = work / f"gen-{wanted}"
        t0 = time.perf_counter()
        generate_transactions(data, lines=max(1000, int(wanted * 4.5)), seed=args.seed)
        gen_s = time.perf_counter() - t0
        baskets_path = work / f"baskets-{wanted}.parquet"
        n = make_baskets(spark, data / "transactions.csv", baskets_path, partitions)
        ours = run_spark(spark, baskets_path, n, args, partitions)
        spark_s = ours["mine_s"] + ours["rules_s"]
        row = {"baskets": n, "generate_s": round(gen_s, 1), "spark_s": round(spark_s, 2),
               "spark_mine_s": round(ours["mine_s"], 2), "spark_rules_s": round(ours["rules_s"], 2),
               "spark_itemsets": len(ours["itemsets"]), "spark_rules": ours["rules"]}
        if mlxtend_stopped:
            row.update(mlxtend_status=f"not run: {mlxtend_stopped}")
        else:
            theirs = run_mlxtend(baskets_path, work / f"mlxtend-{wanted}.json", args, "dense")
            encoding = "dense"
            if theirs["status"].startswith("out of memory"):
                # what an mlxtend user does next: the sparse one-hot frame, same mining
                row.update(mlxtend_dense_status=theirs["status"])
                theirs = run_mlxtend(baskets_path, work / f"mlxtend-{wanted}.json", args, "sparse")
                encoding = "sparse"
            row.update(mlxtend_encoding=encoding)
            if theirs["status"] == "ok":
                mlx_s = theirs["fpgrowth_s"] + theirs["rules_s"]
                row.update(mlxtend_status="ok", mlxtend_s=round(mlx_s, 2),
                           mlxtend_encode_s=round(theirs["encode_s"], 2),
                           mlxtend_fpgrowth_s=round(theirs["fpgrowth_s"], 2),
                           mlxtend_rules_s=round(theirs["rules_s"], 2),
                           mlxtend_itemsets=len(theirs["itemsets"]),
                           mlxtend_rules=theirs["rules"],
                           mlxtend_over_spark=round(mlx_s / spark_s, 3),
                           itemsets_equal=same_itemsets(ours["itemsets"], theirs["itemsets"]),
                           rules_equal=ours["rules"] == theirs["rules"])
            else:
                mlxtend_stopped = f"{theirs['status']} at {n} baskets"
                row.update(mlxtend_status=theirs["status"])
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(baskets_path, ignore_errors=True)

    publish("rules", rows, meta={
        "spark_master": config.spark.master,
        "shuffle_partitions": partitions, "min_support": args.min_support,
        "min_confidence": args.min_confidence, "max_len": args.max_len,
        "mlxtend_timeout_s": args.mlxtend_timeout, "mlxtend_memory_gb": args.mlxtend_memory_gb,
        "mlxtend_stopped": mlxtend_stopped})
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
