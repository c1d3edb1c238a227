#!/usr/bin/env bash
# The README's picture of a quality report: land a small TPC-H lake with some bad input, run the deployment on the
# local stack, and take a screenshot of the run's `medallion-quality-report` artifact in the Prefect UI with headless
# Chromium (Debian's package, installed here if missing). Writes docs/quality-report.png.
set -euo pipefail
# shellcheck source=infra/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LAKEHOUSE_PROJECT_DIR"
mkdir -p "$LAKEHOUSE_RUN_DIR" docs

if ! command -v chromium >/dev/null; then
    echo "== Installing Debian's chromium"
    apt-get install -y --no-install-recommends chromium >/dev/null
fi

ROOT="${ROOT:-$LAKEHOUSE_RUN_DIR/screenshot-lake}"
rm -rf "$ROOT"
echo "== Landing TPC-H SF 0.01 (6 months) under $ROOT/raw, plus bad input"
lakehouse demo-data --root "$ROOT" --scale-factor 0.01 --months 6 >/dev/null
mkdir -p "$ROOT/raw/orders/drop" "$ROOT/raw/lineitem/drop"
cat >"$ROOT/raw/orders/drop/bad.csv" <<'CSV'
o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,o_comment
9000001,99999999,O,100.50,1992-06-10,1-URGENT,Clerk#000000001,0,a customer nobody knows
9000002,1,O,not enough fields
9000003,1,O,-5.00,1992-06-11,1-URGENT,Clerk#000000001,0,a negative price
9000004,1,O,12;50,1992-06-12,1-URGENT,Clerk#000000001,0,a price that is not a number
CSV
cat >"$ROOT/raw/lineitem/drop/discounts.csv" <<'CSV'
l_orderkey,l_partkey,l_suppkey,l_linenumber,l_quantity,l_extendedprice,l_discount,l_tax,l_returnflag,l_linestatus,l_shipdate,l_commitdate,l_receiptdate,l_shipinstruct,l_shipmode,l_comment
1,1,1,91,1,100.00,0.15,0.02,N,O,1992-06-20,1992-06-20,1992-06-20,NONE,AIR,an unusual discount
1,1,1,92,1,100.00,1.50,0.02,N,O,1992-06-20,1992-06-20,1992-06-20,NONE,AIR,an impossible discount
CSV

"$LAKEHOUSE_PROJECT_DIR/infra/up.sh"
echo "== Running deployment medallion/tpch on $ROOT"
prefect deployment run medallion/tpch --param root="$ROOT" --watch --watch-timeout 600 \
    | tee "$LAKEHOUSE_RUN_DIR/screenshot-run.log"
run_id="$(grep -oE 'UUID: [0-9a-f-]{36}' "$LAKEHOUSE_RUN_DIR/screenshot-run.log" | head -n 1 | cut -d' ' -f2)"

artifact="$(python - "$run_id" <<'PY'
import asyncio, sys
from uuid import UUID
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

async def main() -> None:
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(sys.argv[1])]),
            key=ArtifactFilterKey(any_=["medallion-quality-report"])))
        print(found[0].id)

asyncio.run(main())
PY
)"
url="$PREFECT_UI_URL/artifacts/artifact/$artifact"
echo "== Screenshot of $url"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,2200 \
    --virtual-time-budget=20000 --screenshot="$LAKEHOUSE_PROJECT_DIR/docs/quality-report.png" "$url" 2>/dev/null
echo "Wrote docs/quality-report.png"
