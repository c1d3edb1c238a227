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
# No silent hangs on a Prefect API that does not answer: each request gives up after LAKEHOUSE_PREFECT_TIMEOUT
# seconds and is tried twice more (Prefect's defaults, 60 s and 5 more tries, wait 6 minutes and more).
export LAKEHOUSE_PREFECT_TIMEOUT="${LAKEHOUSE_PREFECT_TIMEOUT:-15}"
export PREFECT_API_REQUEST_TIMEOUT="${PREFECT_API_REQUEST_TIMEOUT:-$LAKEHOUSE_PREFECT_TIMEOUT}"
export PREFECT_CLIENT_MAX_RETRIES="${PREFECT_CLIENT_MAX_RETRIES:-2}"
# prefect_answers: is the API up? If not, say so on stderr, naming it and what to check.
prefect_answers() {
    if curl -sf --max-time "$LAKEHOUSE_PREFECT_TIMEOUT" "$PREFECT_API_URL/health" >/dev/null 2>&1; then
        return 0
    fi
    echo "error: the Prefect API at $PREFECT_API_URL did not answer within ${LAKEHOUSE_PREFECT_TIMEOUT}s" \
        "(LAKEHOUSE_PREFECT_TIMEOUT): start the local server with 'make up' (infra/up.sh) and see" \
        "$LAKEHOUSE_RUN_DIR/server.log, or point PREFECT_API_URL at a server that runs" >&2
    return 1
}
# Flow runs send a heartbeat every 30 s; infra/zombies.py marks one silent for LAKEHOUSE_ZOMBIE_SECONDS Crashed.
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"
export LAKEHOUSE_ZOMBIE_SECONDS="${LAKEHOUSE_ZOMBIE_SECONDS:-90}"

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
