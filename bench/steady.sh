#!/usr/bin/env bash
# The million-node benchmark of issue #2: `steady` at 1,000,000 clients and
# 2,500 supernodes for 30 virtual minutes, next to a 100,000-client baseline
# run in the same invocation (see bench/scale.sh).
#
#   bench/steady.sh [SEED] [OUT_DIR]
set -euo pipefail
exec "$(dirname "$0")/scale.sh" steady "${1:-1}" "${2:-bench-out}"
