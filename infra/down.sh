#!/usr/bin/env bash
# Stop the worker and the server that up.sh started. Idempotent: nothing running is not an error.
set -euo pipefail
# shellcheck source=infra/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# stop NAME PIDFILE: SIGTERM the process group up.sh started, SIGKILL it if still there after 20s.
stop() {
    local name="$1" pidfile="$2" pid
    if [[ ! -s "$pidfile" ]]; then
        echo "$name: not running"
        return 0
    fi
    pid="$(cat "$pidfile")"
    if ! grep -qa prefect "/proc/$pid/cmdline" 2>/dev/null; then
        echo "$name: not running (stale pid $pid)"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "$name: stopped (pid $pid)"
}

stop worker "$LAKEHOUSE_RUN_DIR/worker.pid"
stop server "$LAKEHOUSE_RUN_DIR/server.pid"
# A server started by `prefect server start --background` keeps its own pid file under PREFECT_HOME.
if [[ -s "$PREFECT_HOME/server.pid" ]] && command -v prefect >/dev/null; then
    prefect server stop >/dev/null 2>&1 || true
fi
