#!/usr/bin/env bash
# A Spark standalone cluster on this machine (a master and N workers on loopback), from pyspark's
# own scripts (sbin/spark-daemon.sh); for trying cluster submission and for the cluster test.
#   scripts/standalone_cluster.sh start [WORKDIR]   -> prints the master URL
#   scripts/standalone_cluster.sh stop  [WORKDIR]
# Ports: DEEPMINE_MASTER_PORT (17077), DEEPMINE_MASTER_UI_PORT (18080); workers: 1 core, 1g each.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
action=${1:?start or stop}
work=${2:-$repo/build/standalone}
workers=${DEEPMINE_WORKERS:-2}
port=${DEEPMINE_MASTER_PORT:-17077}
ui_port=${DEEPMINE_MASTER_UI_PORT:-18080}
python=${PYTHON:-$repo/.venv/bin/python}
SPARK_HOME=$("$python" -c "import os, pyspark; print(os.path.dirname(pyspark.__file__))")
export SPARK_HOME SPARK_LOCAL_IP=127.0.0.1 SPARK_LOG_DIR="$work/logs" SPARK_PID_DIR="$work/pids"
export SPARK_WORKER_DIR="$work/work" SPARK_IDENT_STRING=deepmine
daemon="$SPARK_HOME/sbin/spark-daemon.sh"
master_url="spark://127.0.0.1:$port"
mkdir -p "$work"

case "$action" in
start)
  bash "$daemon" start org.apache.spark.deploy.master.Master 1 \
    --host 127.0.0.1 --port "$port" --webui-port "$ui_port" >/dev/null
  for i in $(seq 1 "$workers"); do
    bash "$daemon" start org.apache.spark.deploy.worker.Worker "$i" --host 127.0.0.1 \
      --webui-port $((ui_port + i)) --cores 1 --memory 1g "$master_url" >/dev/null
  done
  # ready when the master reports every worker ALIVE
  for _ in $(seq 1 60); do
    alive=$(curl -s "http://127.0.0.1:$ui_port/json/" 2>/dev/null | grep -o '"state" *: *"ALIVE"' | wc -l || true)
    [ "${alive:-0}" -ge "$workers" ] && { echo "$master_url"; exit 0; }
    sleep 1
  done
  echo "standalone cluster did not come up; logs in $SPARK_LOG_DIR" >&2
  exit 1 ;;
stop)
  for i in $(seq 1 "$workers"); do
    bash "$daemon" stop org.apache.spark.deploy.worker.Worker "$i" >/dev/null || true
  done
  bash "$daemon" stop org.apache.spark.deploy.master.Master 1 >/dev/null || true ;;
*) echo "usage: $0 start|stop [WORKDIR]" >&2; exit 2 ;;
esac
