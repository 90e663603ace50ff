#!/usr/bin/env bash
# Submit a stage (default: the nightly) to a cluster: packs lib/deepmine as a zip for --py-files,
# ships the config with --files, and runs jobs/<stage>.py with spark-submit. See `deepmine submit -h`.
#   scripts/submit.sh --master spark://host:7077 --conf conf/cluster.yaml --date 2026-11-22
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
exec "$repo/.venv/bin/deepmine" submit "$@"
