"""The multi-day drill: `deepmine nightly` on consecutive dates, as a user runs it, over generated
purchases that arrive day by day, with a planted behaviour shift and a deliberately broken night;
prints what each night decided for its models and writes it as JSON.

    .venv/bin/python scripts/drill.py [--lines 20000] [--seed 7] [--nights 5]
        [--broken-night 3] [--shift-nights 1] [--conf conf/local.yaml] [--dir DIR]
        [--set key=value ...]

1. `deepmine generate --lines N --seed S --dirty-rate 0.02 --shift-date X`: a year of purchases
   ending the day before as_of (2026-11-23 by default), the at_risk group coming back for one
   purchase each from X on (the last `--shift-nights` nights; truth.json `behaviour_shift`).
2. `deepmine.ops.drill.daily_inputs`: night D's input holds the lines up to the end of D.
3. For each of the last `--nights` dates, `deepmine nightly --date D --input <its file>` on one
   lake (image trainings included unless skipped), night `--broken-night` (1-based) with
   `train.lr=10 train.max_retries=0`: a model that must not become the champion.
4. The decisions (`deepmine.ops.drill.decision_table`): per night the drift stage's findings
   and, per training stage, full or warm start and why, the version, promoted or not and why,
   whose predictions were published. Each night's report shows the same ("Models kept fresh",
   "Drift"). Results: a table on stdout, bench-results/drill.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "scripts" / "bench"))
from deepmine.ops.drill import consecutive_nights, daily_inputs, decision_table  # noqa: E402
from results import publish  # noqa: E402

DEEPMINE = [sys.executable, "-m", "deepmine.cli"]
START, DAYS = "2025-11-23", 365  # the generator's defaults: as_of 2026-11-23
BROKEN = ["train.lr=10", "train.max_retries=0"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--nights", type=int, default=5)
    ap.add_argument("--broken-night", type=int, default=3, help="1-based; 0 = none")
    ap.add_argument("--shift-nights", type=int, default=1,
                    help="the shift covers the last N nights' days")
    ap.add_argument("--conf", default="conf/local.yaml")
    ap.add_argument("--skip", nargs="*", default=[], help="stages to skip (nightly.skip_stages)")
    ap.add_argument("--set", nargs="*", default=[], help="further config overrides")
    ap.add_argument("--dir", default=None, help="work folder (default: a fresh temporary one)")
    args = ap.parse_args()
    if not 1 <= args.shift_nights < args.nights:
        ap.error("--shift-nights must leave at least one night before the shift")

    work = Path(args.dir or f"/tmp/deepmine-drill-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
           "PYTHONPATH": str(REPO / "lib")}
    as_of = dt.date.fromisoformat(START) + dt.timedelta(days=DAYS)
    nights = consecutive_nights((as_of - dt.timedelta(days=1)).isoformat(), args.nights)
    shift_date = nights[-args.shift_nights]
    subprocess.run([*DEEPMINE, "generate", "--out", str(work / "gen"), "--lines", str(args.lines),
                    "--seed", str(args.seed), "--dirty-rate", "0.02", "--start-date", START,
                    "--days", str(DAYS), "--shift-date", shift_date],
                   check=True, cwd=REPO, env=env)
    inputs = daily_inputs(work / "gen", nights, work / "nights")
    lake = work / "lake"
    common = [f"lake.root={lake}", f"input.products={work / 'gen' / 'products.csv'}", *args.set]
    if args.skip:
        common.append("nightly.skip_stages=[" + ",".join(args.skip) + "]")
    for k, night in enumerate(nights, start=1):
        overrides = [*common, *(BROKEN if k == args.broken_night else [])]
        started = time.perf_counter()
        with open(work / f"nightly-{night}.log", "w") as log:
            code = subprocess.run([*DEEPMINE, "nightly", "--conf", args.conf, "--date", night,
                                   "--input", str(inputs[night]), "--set", *overrides],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                                  ).returncode
        print(f"night {k} {night}: exit {code} in {time.perf_counter() - started:.0f} s"
              f"{' (broken on purpose: ' + ' '.join(BROKEN) + ')' if k == args.broken_night else ''}"
              f"{' (after the shift began ' + shift_date + ')' if night >= shift_date else ''}",
              flush=True)
    manifests = {n: json.loads((lake / "runs" / f"run_date={n}" / "manifest.json").read_text())
                 for n in nights}
    publish("drill", decision_table(manifests),
            meta={"lines": args.lines, "seed": args.seed, "nights": nights,
                  "shift_date": shift_date, "broken_night": args.broken_night,
                  "conf": args.conf, "set": args.set, "skip": args.skip, "lake": str(lake)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
