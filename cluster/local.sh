#!/usr/bin/env bash
# A local Ray head with the dashboard, for `ray job submit` and `serve run` against a cluster.
#   cluster/local.sh start   # ray start --head (dashboard on http://127.0.0.1:8265)
#   cluster/local.sh stop    # stops the Ray sessions under RAY_TEMP_DIR (others keep running)
# The head runs with this project's .venv first on its PATH: a submitted job's `python` is
# that environment's, whatever shell submits it. Ray >= 2.60 enables token authentication
# for local clusters: `ray start` writes the token to ~/.ray/auth_token; `ray job submit`
# sends it when RAY_AUTH_MODE=token is set.
# Settings (environment): NUM_CPUS, RAY_PORT (6379), DASHBOARD_PORT (8265),
# RAY_TEMP_DIR (/tmp/ray, Ray's own), RAY_START_ARGS (more `ray start` options, e.g. ports).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="$(pwd)/.venv/bin"
RAY="${RAY:-$VENV_BIN/ray}"
NUM_CPUS="${NUM_CPUS:-$(nproc)}"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
RAY_TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray}"
if [ ! -x "$RAY" ]; then
  echo "cluster/local.sh: $RAY not found: run 'make install' first" >&2
  exit 1
fi
case "${1:-start}" in
  start)
    export PATH="$VENV_BIN:$PATH"
    # shellcheck disable=SC2086  # RAY_START_ARGS is a list of options
    "$RAY" start --head --port "$RAY_PORT" --num-cpus "$NUM_CPUS" --temp-dir "$RAY_TEMP_DIR" \
      --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" --disable-usage-stats \
      ${RAY_START_ARGS:-}
    echo "dashboard: http://127.0.0.1:$DASHBOARD_PORT"
    echo "export RAY_AUTH_MODE=token   # the job CLI then sends ~/.ray/auth_token"
    echo "submit: $RAY job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . -- python -m jobs.quickstart --config configs/quickstart.yaml"
    ;;
  stop)
    # the head's processes name its session folder; other Ray sessions are left alone
    pkill -TERM -f "$RAY_TEMP_DIR/session_" || true
    for _ in $(seq 20); do
      pgrep -f "$RAY_TEMP_DIR/session_" > /dev/null || break
      sleep 0.5
    done
    pkill -KILL -f "$RAY_TEMP_DIR/session_" || true
    echo "stopped the Ray head in $RAY_TEMP_DIR"
    ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
