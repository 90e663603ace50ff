"""The whole nightly at several sizes: per stage seconds, lines per second, µs per line per core
and peak memory, with each stage's fixed cost and cost per line fitted from the sizes.

For each size: `deepmine generate --lines N --seed S --dirty-rate R` (not timed), then
`deepmine nightly --input <it>` on a fresh lake, as a user runs it (one process, the config's
Spark master), with the process tree's resident memory sampled every 0.5 s. The stage seconds
come from the run's manifest (what the stages themselves measured); `process_s` is the command's
wall time, so `process_s` minus the sum of the stages is session start-up and exit. Image stages
read a fixed number of images whatever the size (`features.image_limit_*`), so they show as
fixed cost.

The fit is least squares of seconds = fixed + per_line * lines over the sizes (two sizes: the line
through both). With fewer than two sizes no fit is printed.

    .venv/bin/python scripts/bench/nightly.py --sizes 20000 1000000 [--conf conf/local.yaml]
        [--skip train_autoencoder_images train_cnn] [--skip-from 10000000 --skip-large train_ncf]
        [--set key=value ...] [--dir DIR]

Results: a table per size and the fit on stdout, bench-results/nightly.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from results import publish

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lib"))
from deepmine.nightly import STAGES  # noqa: E402  (the pipeline's order, for the table)

DEEPMINE = [sys.executable, "-m", "deepmine.cli"]
DATE = "2026-11-22"


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], env: dict, log: Path) -> tuple[float, int, int]:
    """(wall seconds, peak resident bytes of the process tree, exit code)."""
    peak = [0]
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        proc = psutil.Process(child.pid)

        def sample():
            while child.poll() is None:
                try:
                    peak[0] = max(peak[0], _tree_rss(proc))
                except psutil.Error:
                    pass
                time.sleep(0.5)
        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        code = child.wait()
        watcher.join()
    return time.perf_counter() - start, peak[0], code


def fit(sizes: list[int], seconds: list[float]) -> tuple[float, float] | None:
    """(fixed seconds, µs per line) of seconds = fixed + per_line * lines; None below two sizes."""
    if len(set(sizes)) < 2:
        return None
    per_line, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)
    return float(fixed), float(per_line * 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 1_000_000])
    ap.add_argument("--conf", default="conf/local.yaml")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dirty-rate", type=float, default=0.02)
    ap.add_argument("--skip", nargs="*", default=[], help="stages to skip (nightly.skip_stages)")
    ap.add_argument("--skip-from", type=int, default=0,
                    help="from this many lines on, also skip the --skip-large stages")
    ap.add_argument("--skip-large", nargs="*", default=[],
                    help="stages skipped only at sizes of --skip-from lines or more")
    ap.add_argument("--set", nargs="*", default=[], help="further config overrides")
    ap.add_argument("--dir", default=None, help="work folder (default: a fresh temporary one)")
    args = ap.parse_args()

    work = Path(args.dir or f"/tmp/deepmine-bench-nightly-{os.getpid()}")
    cores = os.cpu_count() or 1
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
           "PYTHONPATH": str(REPO / "lib")}
    rows, per_stage = [], {}
    for lines in args.sizes:
        folder = work / f"n{lines}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        subprocess.run([*DEEPMINE, "generate", "--out", str(folder / "gen"), "--lines", str(lines),
                        "--seed", str(args.seed), "--dirty-rate", str(args.dirty_rate)],
                       check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
        generate_s = time.perf_counter() - started
        overrides = [f"lake.root={folder / 'lake'}",
                     f"input.products={folder / 'gen' / 'products.csv'}", *args.set]
        skip = [*args.skip, *(args.skip_large if args.skip_from and lines >= args.skip_from
                              else [])]
        if skip:
            overrides.append("nightly.skip_stages=[" + ",".join(skip) + "]")
        cmd = [*DEEPMINE, "nightly", "--conf", args.conf, "--date", DATE,
               "--input", str(folder / "gen" / "transactions.csv"), "--set", *overrides]
        wall, peak, code = run_measured(cmd, env, folder / "nightly.log")
        manifest = json.loads((folder / "lake" / "runs" / f"run_date={DATE}" / "manifest.json")
                              .read_text())
        print(f"{lines} lines: generated in {generate_s:.1f} s, nightly exit {code} in "
              f"{wall:.1f} s, peak {peak / 2**30:.2f} GiB (log {folder / 'nightly.log'})",
              flush=True)
        stages = manifest.get("stages", {})
        order = [s.name for s in STAGES]
        total = 0.0
        for name, rec in sorted(stages.items(), key=lambda kv: (order.index(kv[0])
                                                                 if kv[0] in order else len(order))):
            seconds = float(rec.get("seconds") or 0.0)
            total += seconds
            per_stage.setdefault(name, {})[lines] = seconds
            rows.append({"lines": lines, "stage": name, "status": rec.get("status"),
                         "seconds": seconds, "lines_per_s": lines / seconds if seconds else None,
                         "us_per_line_core": seconds * cores / lines * 1e6})
        rows.append({"lines": lines, "stage": "(all stages)", "status": f"exit {code}",
                     "seconds": total, "lines_per_s": lines / total if total else None,
                     "us_per_line_core": total * cores / lines * 1e6})
        rows.append({"lines": lines, "stage": "(process)", "status": f"peak {peak / 2**30:.2f} GiB",
                     "seconds": wall, "lines_per_s": lines / wall,
                     "us_per_line_core": wall * cores / lines * 1e6, "peak_gib": peak / 2**30})
    publish("nightly", rows, meta={"sizes": args.sizes, "conf": args.conf, "seed": args.seed,
                                   "dirty_rate": args.dirty_rate, "skip": args.skip,
                                   "skip_large": args.skip_large, "skip_from": args.skip_from,
                                   "set": args.set, "date": DATE})
    fits = []
    for name, by_size in per_stage.items():
        got = fit(list(by_size), list(by_size.values()))
        if got:
            fits.append({"stage": name, "fixed_s": got[0], "us_per_line": got[1],
                         "us_per_line_core": got[1] * cores})
    if fits:
        publish("nightly_fit", fits, meta={"sizes": args.sizes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
