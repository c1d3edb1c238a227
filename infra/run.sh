#!/usr/bin/env bash
# Run a deployment and watch it to the end: `infra/run.sh medallion/tpch --param root=/data/lake`.
# A Prefect API that does not answer fails within LAKEHOUSE_PREFECT_TIMEOUT seconds (infra/env.sh, default 15),
# naming the address and what to check, instead of Prefect's client waiting minutes. Exit code: the run's.
set -euo pipefail
# shellcheck source=infra/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if [[ $# -lt 1 ]]; then
    echo "usage: infra/run.sh DEPLOYMENT [--param key=value ...]" >&2
    exit 2
fi
prefect_answers || exit 1
status=0
prefect deployment run "$@" --watch --watch-timeout "${LAKEHOUSE_WATCH_TIMEOUT:-7200}" || status=$?
if [[ "$status" -ne 0 ]]; then
    # the API went away during the run, or the run failed: say which
    prefect_answers || true
fi
exit "$status"
