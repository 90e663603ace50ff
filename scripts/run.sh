#!/usr/bin/env bash
# The main job on the embedded default: set-up if needed, then the nightly for a run date
# (default: today) on local Spark with a file:// lake under the repository; synthetic input is
# generated on first use. Extra arguments go to `deepmine nightly` (e.g. --date, --force, --set).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
args=("$@")
case " ${args[*]-} " in *" --date "*|*" --date="*) ;; *) args+=(--date "$(date -u +%F)") ;; esac
exec .venv/bin/deepmine nightly --conf conf/local.yaml "${args[@]}"
