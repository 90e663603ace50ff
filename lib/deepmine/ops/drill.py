"""The multi-day drill: the nightly on consecutive dates over generated data that arrives day by
day, and what each night decided for its models.

`daily_inputs` cuts one generated transactions file (`deepmine generate`, in time order) into
one input per night, as a shop lands them: the first night's holds the history up to the end of
its date, each later night's the lines of its own day (the lake keeps each night's input in its
own `dt` partition, and the stages read the history up to their date). A line whose timestamp
does not parse (a planted `bad_timestamp`) stays where it is in the file, with the lines around
it. The
generator's `products.csv` and `customers_truth.csv` are put beside each night's file (the
customer clustering is scored against the planted groups beside the input it read).

`decision_table` lays the nights' manifests out as one table: per night, what the drift stage
found and asked for, and per training stage how the model trained (full or warm start, and
why), whether its version became the champion (and why) and whose predictions were published
(`deepmine.deep.registry.model_decisions`).

`scripts/drill.py` runs it with `deepmine nightly` per night as a user would;
`tests/test_drill.py` runs a small one in one Spark session.
"""
from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path
from typing import Any

from deepmine.deep.registry import model_decisions

_DAY = re.compile(rb"^(\d{4}-\d{2}-\d{2})")
BESIDE = ("products.csv", "customers_truth.csv", "truth.json")  # copied next to each input


def consecutive_nights(last: str, nights: int) -> list[str]:
    """`nights` dates ending at `last` (YYYY-MM-DD), oldest first."""
    end = dt.date.fromisoformat(last)
    return [(end - dt.timedelta(days=k)).isoformat() for k in range(nights - 1, -1, -1)]


def line_day(line: bytes, column: int) -> str | None:
    """The date (YYYY-MM-DD) the line's timestamp field starts with, or None when that field is
    missing or is not one (quoted commas are not expected in generated files; a line they would
    confuse counts as undated and rides with its neighbours)."""
    fields = line.split(b",")
    if len(fields) <= column:
        return None
    m = _DAY.match(fields[column].strip().strip(b'"'))
    if not m:
        return None
    try:  # a planted 2026-13-05 or 2026-11-45 is no date
        return dt.date.fromisoformat(m.group(1).decode()).isoformat()
    except ValueError:
        return None


def daily_inputs(generated: Path, nights: list[str], out: Path) -> dict[str, Path]:
    """Night -> out/<night>/transactions.csv with the header and the lines that arrived that
    night: for the first night every line up to the end of its date, for each later one the lines
    after the previous night's up to the end of its own (bytes as generated; lines after the last
    night are left out). The cut is by position in the file, which the generator writes in time
    order: a line belongs to the latest date seen up to it (so a planted duplicate of an older
    line, or a line with a broken timestamp, stays with its neighbours)."""
    generated, out = Path(generated), Path(out)
    nights = sorted(nights)
    source = generated / "transactions.csv"
    files, paths = {}, {}
    for night in nights:
        folder = out / night
        folder.mkdir(parents=True, exist_ok=True)
        for name in BESIDE:
            if (generated / name).exists():
                shutil.copyfile(generated / name, folder / name)
        paths[night] = folder / "transactions.csv"
        files[night] = open(paths[night], "wb")
    try:
        with open(source, "rb") as f:
            header = f.readline()
            column = header.rstrip(b"\r\n").split(b",").index(b"invoice_ts")
            for handle in files.values():
                handle.write(header)
            latest = ""
            for line in f:
                day = line_day(line, column)
                if day is not None:
                    latest = max(latest, day)
                night = next((n for n in nights if latest <= n), None)  # the first to hold it
                if night is not None:
                    files[night].write(line)
    finally:
        for handle in files.values():
            handle.close()
    return paths


def decision_table(manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per night and training stage (and one per night for the drift stage)."""
    rows = []
    for night in sorted(manifests):
        stages = manifests[night].get("stages", {})
        drift = stages.get("drift")
        if drift is not None:
            metrics = drift.get("metrics") or {}
            rows.append({"night": night, "stage": "drift", "status": drift.get("status"),
                         "decision": (f"{len(metrics.get('drifted') or [])} column(s) drifted"
                                      + (": full retrain asked of " + ", ".join(
                                          sorted(metrics.get("full_retrain") or {}))
                                         if metrics.get("full_retrain") else "")),
                         "why": ", ".join((metrics.get("drifted") or [])[:6])
                         or metrics.get("note", "")})
        for d in model_decisions(manifests[night]):
            rows.append({"night": night, "stage": d["stage"], "status": d["status"],
                         "decision": (f"{d['training']} training -> version {d['version']}, "
                                      + ("promoted" if d["promoted"] else
                                         f"NOT promoted (champion stays {d['champion']})")),
                         "why": f"{d['training_reason']}; {d['promotion_reason']}",
                         "predictions_from": d["predictions_from"]})
    return rows
