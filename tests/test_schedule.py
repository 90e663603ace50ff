"""Scheduling files stay in step with the nightly: the Airflow DAG has one task per stage in the
nightly's order (ingest of ratings/images left out, as its docstring says), and the cron line and
systemd unit call the real CLI with options it accepts."""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

from deepmine.cli import build_parser
from deepmine.nightly import STAGES

SCHEDULE = Path(__file__).resolve().parents[1] / "scripts" / "schedule"


def test_airflow_dag_tasks_follow_the_nightly_stages():
    tree = ast.parse((SCHEDULE / "airflow_dag.py").read_text())
    assigned = {node.targets[0].id: node.value for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    dag_stages = ast.literal_eval(assigned["STAGES"])
    assert dag_stages == [s.name for s in STAGES if not s.name.startswith("ingest_")]


def test_cron_and_systemd_commands_parse():
    cron = [line for line in (SCHEDULE / "deepmine.cron").read_text().splitlines()
            if line and not line.startswith("#") and "=" not in line.split()[0]]
    unit = (SCHEDULE / "deepmine-nightly.service").read_text()
    commands = [cron[0].split("&&", 1)[1].split(">>")[0],
                re.search(r"exec (.*)'", unit).group(1)]
    for command in commands:
        words = shlex.split(command.replace("$(date -u -d yesterday +\\%F)", "2026-11-21")
                            .replace("$(date -u -d yesterday +%%F)", "2026-11-21"))
        cli = words[words.index(".venv/bin/deepmine") + 1:]
        args = build_parser().parse_args(cli)
        assert args.command == "nightly" and args.date == "2026-11-21"
