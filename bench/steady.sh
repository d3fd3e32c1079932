#!/usr/bin/env bash
# The million-node benchmark of issue #2: `steady` at 1,000,000 clients and
# 2,500 supernodes for 30 virtual minutes. Prints wall time, events/s, peak
# RSS, state per node and the overlay figures, next to a 100,000-client
# baseline run on the same machine in the same invocation (so the scaling
# ratio does not depend on how busy the machine is).
#
#   bench/steady.sh [SEED] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1}
out=${2:-bench-out}
cargo build --release --quiet
bin=target/release/peerline

run() {
    local clients=$1 supernodes=$2 dir=$3
    "$bin" sim steady --clients "$clients" --supernodes "$supernodes" --duration 30m \
        --seed "$seed" --out "$dir" --quiet || true
}

run 100000 250 "$out/100k"
run 1000000 2500 "$out/1m"

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = []
for name in ["100k", "1m"]:
    r = json.load(open(f"{out}/{name}/report.json"))
    rows.append((name, r))
keys = ["clients", "supernodes", "crypto_mode", "wall_s", "events", "events_per_s", "peak_rss_bytes",
        "state_bytes_per_node", "lookup_success_ratio", "lookup_hops_median", "lookup_hops_p99",
        "lookup_latency_ms_median", "lookup_latency_ms_p99", "lookup_fallback_ratio",
        "attached_ratio_min", "attached_ratio_mean", "supernode_load_max_ratio", "passed"]
print(f"{'key':28}" + "".join(f"{n:>22}" for n, _ in rows))
for k in keys:
    print(f"{k:28}" + "".join(f"{str(round(r[k], 4) if isinstance(r[k], float) else r[k]):>22}" for _, r in rows))
a, b = rows[0][1], rows[1][1]
print(f"\nscaling: 10x clients -> {b['wall_s'] / a['wall_s']:.1f}x wall time, "
      f"{b['events'] / a['events']:.1f}x events, events/s ratio {b['events_per_s'] / a['events_per_s']:.2f}")
PY
