#!/usr/bin/env bash
# The test suite: set-up if needed, then pytest on one local[2] Spark session, loopback only.
# Extra arguments go to pytest (e.g. -k ingest, -x).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
export SPARK_LOCAL_IP=127.0.0.1
exec .venv/bin/python -m pytest --durations=15 "$@"
