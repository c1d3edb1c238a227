#!/usr/bin/env bash
# Bring up the local stack: Prefect server, work pool `lakehouse`, a process worker, and the deployments of
# prefect.yaml. Idempotent: a server that answers and a worker that runs are reused.
set -euo pipefail
# shellcheck source=infra/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LAKEHOUSE_PROJECT_DIR"
mkdir -p "$LAKEHOUSE_RUN_DIR" "$PREFECT_HOME"

healthy() { curl -sf --max-time 2 "$PREFECT_API_URL/health" >/dev/null 2>&1; }
# running PIDFILE: the pid in it is alive and is a prefect process (not a reused pid).
running() { [[ -s "$1" ]] && grep -qa prefect "/proc/$(cat "$1")/cmdline" 2>/dev/null; }

server_pid="$LAKEHOUSE_RUN_DIR/server.pid"
worker_pid="$LAKEHOUSE_RUN_DIR/worker.pid"

if healthy; then
    echo "Prefect server already answers at $PREFECT_UI_URL"
else
    if running "$server_pid"; then
        echo "Prefect server (pid $(cat "$server_pid")) is starting; waiting for it"
    else
        echo "Starting Prefect server on 127.0.0.1:$LAKEHOUSE_PREFECT_PORT (log: $LAKEHOUSE_RUN_DIR/server.log)"
        # Own process group (set -m), so down.sh stops the server and its children with one signal.
        (set -m; nohup prefect server start --host 127.0.0.1 --port "$LAKEHOUSE_PREFECT_PORT" \
            >"$LAKEHOUSE_RUN_DIR/server.log" 2>&1 & echo $! >"$server_pid")
    fi
    for _ in $(seq 120); do
        healthy && break
        if ! running "$server_pid"; then
            echo "Prefect server exited; last lines of $LAKEHOUSE_RUN_DIR/server.log:" >&2
            tail -n 30 "$LAKEHOUSE_RUN_DIR/server.log" >&2
            exit 1
        fi
        sleep 1
    done
    healthy || { echo "Prefect server did not answer within 120s" >&2; exit 1; }
    echo "Prefect server up at $PREFECT_UI_URL"
fi

prefect work-pool create lakehouse --type process --overwrite >/dev/null
echo "Work pool lakehouse (process) ready"
python "$LAKEHOUSE_PROJECT_DIR/infra/zombies.py"

if running "$worker_pid"; then
    echo "Worker already running (pid $(cat "$worker_pid"))"
else
    echo "Starting process worker (log: $LAKEHOUSE_RUN_DIR/worker.log)"
    (set -m; nohup prefect worker start --pool lakehouse --type process --name "lakehouse-$(hostname)" \
        >"$LAKEHOUSE_RUN_DIR/worker.log" 2>&1 & echo $! >"$worker_pid")
fi

prefect --no-prompt deploy --all >"$LAKEHOUSE_RUN_DIR/deploy.log" 2>&1 || {
    cat "$LAKEHOUSE_RUN_DIR/deploy.log" >&2
    exit 1
}
echo "Deployed prefect.yaml: $(prefect deployment ls 2>/dev/null | grep -o 'medallion/[a-z0-9_-]*' | sort -u | tr '\n' ' ')"
