"""How every benchmark reports: a Markdown table on stdout and bench-results/<name>.json.

    from results import publish
    publish("rules", rows, meta={"cores": 2, ...})

`rows` is a list of flat dicts; the table's columns are their keys in first-seen order (or
`columns`), floats shown with `digits` significant digits. The JSON keeps the full values, the
machine's description and `meta`, so a later run can be compared with this one.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path("bench-results")


def _cell(value, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> str:
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    columns = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def publish(name: str, rows: list[dict], meta: dict | None = None,
            columns: list[str] | None = None, digits: int = 4) -> Path:
    """Prints the table and writes bench-results/<name>.json; returns the JSON's path."""
    print(markdown_table(rows, columns, digits), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    machine = {"cores": os.cpu_count(), "machine": platform.machine(),
               "python": platform.python_version()}
    path.write_text(json.dumps({"benchmark": name,
                                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                **machine, **(meta or {}), "rows": rows},
                               indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path
