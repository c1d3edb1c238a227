#!/usr/bin/env bash
# The demo end to end: land TPC-H (SF=${SF:-0.1}) under ROOT, bring up the stack, run the deployment and watch it,
# then preview the gold tables. Rerunnable: landing skips files already there and the run commits nothing new.
set -euo pipefail
# shellcheck source=infra/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LAKEHOUSE_PROJECT_DIR"
mkdir -p "$LAKEHOUSE_RUN_DIR"

ROOT="${ROOT:-$LAKEHOUSE_ROOT}"
SF="${SF:-0.1}"

echo "== Landing TPC-H SF $SF under $ROOT/raw"
lakehouse demo-data --root "$ROOT" --scale-factor "$SF" --cdc-events "${CDC_EVENTS:-2000}"

echo "== Bringing up Prefect (server, worker, deployment)"
"$LAKEHOUSE_PROJECT_DIR/infra/up.sh"

echo "== Running deployment medallion/tpch"
log="$LAKEHOUSE_RUN_DIR/demo-run.log"
status=0
LAKEHOUSE_WATCH_TIMEOUT=1800 "$LAKEHOUSE_PROJECT_DIR/infra/run.sh" medallion/tpch --param root="$ROOT" 2>&1 | tee "$log" \
    || status=$?
run_id="$(grep -oE 'UUID: [0-9a-f-]{36}' "$log" | head -n 1 | cut -d' ' -f2 || true)"
url="$PREFECT_UI_URL/runs/flow-run/$run_id"
if [[ "$status" -ne 0 ]]; then
    echo "The run failed: $url (worker log: $LAKEHOUSE_RUN_DIR/worker.log)" >&2
    exit "$status"
fi

echo
echo "== gold.revenue_by_nation_month: the top nations of the latest months"
lakehouse query --root "$ROOT" "
    SELECT order_month, nation, round(revenue, 2)::DECIMAL(18, 2) AS revenue, order_count, lineitem_count
    FROM gold.revenue_by_nation_month
    ORDER BY order_month DESC, revenue DESC
    LIMIT 10"

echo
echo "== gold.pricing_summary_monthly with Polars"
ROOT="$ROOT" python -c "
import os
import polars as pl
df = pl.read_delta(os.environ['ROOT'] + '/gold/pricing_summary_monthly')
print(df.select('ship_month', 'l_returnflag', 'l_linestatus', 'sum_qty', 'sum_charge', 'avg_disc', 'count_order')
      .sort('ship_month', 'l_returnflag', 'l_linestatus').head())"

echo
echo "== Flow run: $url"
echo "   Stop the stack with: make down"
