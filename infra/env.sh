# shellcheck shell=bash
# Environment of the local stack (Prefect server, process worker, demo): `source infra/env.sh`.
# Sourced, so it sets no shell options; every value can be overridden by exporting it first.
# All state stays under the project: .prefect/ (Prefect's database, settings) and .run/ (pids, logs).

LAKEHOUSE_PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LAKEHOUSE_PROJECT_DIR
export LAKEHOUSE_RUN_DIR="${LAKEHOUSE_RUN_DIR:-$LAKEHOUSE_PROJECT_DIR/.run}"
export LAKEHOUSE_ROOT="${LAKEHOUSE_ROOT:-$LAKEHOUSE_PROJECT_DIR/lakehouse-data}"
export LAKEHOUSE_PREFECT_PORT="${LAKEHOUSE_PREFECT_PORT:-4200}"

export PREFECT_HOME="${PREFECT_HOME:-$LAKEHOUSE_PROJECT_DIR/.prefect}"
export PREFECT_UI_URL="http://127.0.0.1:$LAKEHOUSE_PREFECT_PORT"
export PREFECT_API_URL="$PREFECT_UI_URL/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
# The worker polls every second instead of every 10: a run starts within a few seconds.
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-1}"

# Ray's temp dir holds its sockets, and a socket path may not exceed 107 bytes: keep it under .run/ when the checkout's
# path is short enough, else in /tmp (one dir per stack, reused by every run).
if [[ -z "${LAKEHOUSE_RAY_TEMP_DIR:-}" ]]; then
    if [[ ${#LAKEHOUSE_RUN_DIR} -le 32 ]]; then
        LAKEHOUSE_RAY_TEMP_DIR="$LAKEHOUSE_RUN_DIR/ray"
    else
        LAKEHOUSE_RAY_TEMP_DIR="/tmp/lakehouse-ray-$LAKEHOUSE_PREFECT_PORT"
    fi
fi
export LAKEHOUSE_RAY_TEMP_DIR
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=disabled

# The project's virtualenv first, so `prefect` and `lakehouse` are the installed ones.
if [[ -x "$LAKEHOUSE_PROJECT_DIR/.venv/bin/python" && ":$PATH:" != *":$LAKEHOUSE_PROJECT_DIR/.venv/bin:"* ]]; then
    export PATH="$LAKEHOUSE_PROJECT_DIR/.venv/bin:$PATH"
fi
