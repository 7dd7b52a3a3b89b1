#!/usr/bin/env bash
# A Prefect work pool + process worker for embedlake's scheduled deployments.
#   PREFECT_API_URL=http://127.0.0.1:4200/api infra/prefect-worker.sh [POOL] [-- embedlake deploy options]
# Registers every deployment of flows/deployments.py with POOL (default: embedlake), then runs a
# worker for it in the foreground (Ctrl-C stops it). S3 credentials: export EMBEDLAKE_S3_BLOCK=NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
pool=${1:-embedlake}; shift || true
[ "${1:-}" = "--" ] && shift
: "${PREFECT_API_URL:?set PREFECT_API_URL (e.g. python -m embedlake.infra.local start prefect && source /tmp/embedlake-local/env.sh)}"
bin=${VENV:-.venv}/bin
"$bin/embedlake" deploy --pool "$pool" "$@"
exec "$bin/embedlake" worker --pool "$pool"
