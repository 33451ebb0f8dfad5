#!/usr/bin/env bash
# A local Ray head with the dashboard, for `ray job submit` and `serve run` against a cluster.
#   cluster/local.sh start   # ray start --head (dashboard on http://127.0.0.1:8265)
#   cluster/local.sh stop
# Ray >= 2.60 enables token authentication for local clusters: `ray start` writes the token
# to ~/.ray/auth_token; `ray job submit` sends it when RAY_AUTH_MODE=token is set.
set -euo pipefail
cd "$(dirname "$0")/.."
RAY="${RAY:-.venv/bin/ray}"
NUM_CPUS="${NUM_CPUS:-$(nproc)}"
case "${1:-start}" in
  start)
    "$RAY" start --head --num-cpus "$NUM_CPUS" --dashboard-host 127.0.0.1 --dashboard-port 8265
    echo "dashboard: http://127.0.0.1:8265"
    echo "export RAY_AUTH_MODE=token   # the job CLI then sends ~/.ray/auth_token"
    echo "submit:    $RAY job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.quickstart --config configs/quickstart.yaml --ray.address auto"
    ;;
  stop) "$RAY" stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
