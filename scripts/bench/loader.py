"""Loader throughput: the Petastorm path training uses against the practical ceiling.

    .venv/bin/python scripts/bench/loader.py [--rows 2000000] [--dim 64] [--batch 1024]

Writes a feature table like features/customers (row_id + a list<float> vector, equal row groups)
with pyarrow under --dir, then reads it for one epoch:
  petastorm   deepmine.deep.loader.open_loader (make_batch_reader, batches sliced in order), as
              one rank reading every row group, with the dummy pool (reads in the caller's
              thread), the read-ahead thread (training's default: the same order), the thread
              pool (order not fixed), and Petastorm's own list-column conversion
              (columnar=False) for comparison
  ceiling     pyarrow.dataset batches turned straight into torch tensors (no Petastorm)
and prints rows/s and the share of the ceiling (goal: >= 80% for the read-ahead path).
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from results import publish


def write_table(path: Path, rows: int, dim: int, row_groups: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = -(-rows // row_groups)
    for g in range(row_groups):
        start, stop = g * per, min(rows, (g + 1) * per)
        if start >= stop:
            break
        values = rng.standard_normal((stop - start) * dim, dtype=np.float32)
        offsets = pa.array(np.arange(0, (stop - start) * dim + 1, dim, dtype=np.int32))
        table = pa.table({"row_id": pa.array(np.arange(start, stop, dtype=np.int64)),
                          "features": pa.ListArray.from_arrays(offsets, pa.array(values))})
        pq.write_table(table, path / f"part-{g:05d}.parquet", row_group_size=stop - start)


def petastorm_epoch(urls: list[str], batch: int, pool: str,
                    columnar: bool = True) -> tuple[int, float]:
    from deepmine.deep.loader import open_loader
    rows, t0 = 0, time.perf_counter()
    with open_loader(urls, 0, 1, ["row_id", "features"], batch, seed=1, pool=pool,
                     columnar=columnar) as loader:
        for b in loader:
            rows += len(b["row_id"])
            b["features"].sum()  # touch the data
    return rows, time.perf_counter() - t0


def ceiling_epoch(path: Path, batch: int, dim: int) -> tuple[int, float]:
    rows, t0 = 0, time.perf_counter()
    for rb in pads.dataset(path, format="parquet").to_batches(batch_size=batch):
        ids = torch.from_numpy(rb.column(0).to_numpy())
        flat = rb.column(1).flatten().to_numpy()
        x = torch.from_numpy(flat.reshape(-1, dim))
        rows += len(ids)
        x.sum()
    return rows, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--row-groups", type=int, default=32)
    p.add_argument("--dir", default="/tmp/deepmine-bench-loader")
    p.add_argument("--repeat", type=int, default=3, help="epochs per path; the fastest is kept")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    path = Path(a.dir) / f"rows{a.rows}_dim{a.dim}"
    if not path.exists():
        write_table(path, a.rows, a.dim, a.row_groups)
    urls = [f.as_uri() for f in sorted(path.glob("*.parquet"))]
    paths = {
        "ceiling (pyarrow -> torch)": lambda: ceiling_epoch(path, a.batch, a.dim),
        "open_loader, dummy pool (reads in the caller's thread)": lambda: petastorm_epoch(urls, a.batch, "dummy"),
        "open_loader, read-ahead thread (training's default: the same order)":
            lambda: petastorm_epoch(urls, a.batch, "read_ahead"),
        "open_loader, thread pool (order not fixed)": lambda: petastorm_epoch(urls, a.batch,
                                                                              "thread"),
        "petastorm, its own list conversion (dummy pool)": lambda: petastorm_epoch(
            urls, a.batch, "dummy", columnar=False),
    }
    # rounds interleave the paths, so a busy moment of the machine falls on all of them; the
    # fastest epoch of each path is kept
    results: dict[str, tuple[int, float]] = {}
    for _ in range(a.repeat):
        for name, epoch in paths.items():
            n, s = epoch()
            if name not in results or s < results[name][1]:
                results[name] = (n, s)
    ceiling = results["ceiling (pyarrow -> torch)"][0] / results["ceiling (pyarrow -> torch)"][1]
    print(f"{a.rows} rows x {a.dim} float32, batch {a.batch}, {a.row_groups} row groups")
    rows = [{"path": name, "rows": n, "seconds": round(s, 2), "rows_per_s": round(n / s),
             "of_ceiling": round(n / s / ceiling, 3)} for name, (n, s) in results.items()]
    publish("loader", rows, meta={"rows": a.rows, "dim": a.dim, "batch": a.batch,
                                  "row_groups": a.row_groups, "repeat": a.repeat})


if __name__ == "__main__":
    main()
