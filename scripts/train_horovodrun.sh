#!/usr/bin/env bash
# Standalone training with horovodrun, no Spark: every rank runs deepmine.deep.trainer.train on the
# arguments in ARGS.json (a deepmine.deep.trainer.TrainArgs as JSON; `deepmine train` builds them, and
# `--set train.launcher=horovodrun` makes the stage itself call this same command).
#
#   scripts/train_horovodrun.sh ARGS.json [NUM_PROC] [HOSTS]
#   e.g. scripts/train_horovodrun.sh /tmp/args.json 2              # 2 ranks on this machine
#        scripts/train_horovodrun.sh /tmp/args.json 8 h1:4,h2:4    # 8 ranks on two hosts
#
# Gloo carries the collectives on CPU; on GPU hosts a Horovod built with NCCL uses it for the
# tensors on the GPU. A killed run started again with the same ARGS.json resumes from its last
# checkpoint (checkpoint_dir in ARGS.json).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
args=${1:?usage: $0 ARGS.json [NUM_PROC] [HOSTS]}
np=${2:-2}
hosts=${3:-}
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
exec "$repo/.venv/bin/python" - "$args" "$np" "$hosts" <<'PY'
import subprocess, sys
from deepmine.deep.train import horovodrun_command
sys.exit(subprocess.call(horovodrun_command(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
PY
