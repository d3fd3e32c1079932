#!/usr/bin/env bash
# A scenario at a million clients next to the same scenario at 100,000, in
# one invocation (so the scaling ratios do not depend on how busy the
# machine is that day). Issue #2's benchmark is `steady`; issue #3's figures
# are the outage scenarios at 1M.
#
#   bench/scale.sh [SCENARIO] [SEED] [OUT_DIR]
#
# SCENARIO: steady (default), supernode-crash, restart-storm or partition.
# Each 1M run needs ~14-19 GiB of memory and 30-60 minutes here: run one
# at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-steady}
seed=${2:-1}
out=${3:-bench-out/$scenario}
case "$scenario" in
steady | supernode-crash | restart-storm | partition) ;;
*)
    echo "bench/scale.sh: unknown scenario '$scenario' (steady, supernode-crash, restart-storm or partition)" >&2
    exit 2
    ;;
esac
cargo build --release --quiet
bin=target/release/peerline

run() {
    local clients=$1 supernodes=$2 dir=$3
    # A run that misses a figure exits 1 and still writes its report: the
    # table below shows which (`passed`).
    "$bin" sim "$scenario" --clients "$clients" --supernodes "$supernodes" \
        --seed "$seed" --out "$dir" --quiet || true
}

run 100000 250 "$out/100k"
run 1000000 2500 "$out/1m"

python3 - "$out" "$scenario" <<'PY'
import json, sys
out, scenario = sys.argv[1], sys.argv[2]
rows = [(name, json.load(open(f"{out}/{name}/report.json"))) for name in ["100k", "1m"]]
keys = ["clients", "supernodes", "virtual_duration_s", "crypto_mode", "wall_s", "events", "events_per_s",
        "peak_rss_bytes", "state_bytes_per_node", "lookup_success_ratio", "lookup_hops_median",
        "lookup_hops_p99", "lookup_latency_ms_median", "lookup_latency_ms_p99", "lookup_fallback_ratio",
        "attached_ratio_min", "attached_ratio_mean", "supernode_load_max_ratio"]
reattach = ["outage_crashes", "reattach_affected", "reattach_ratio_within_300s",
            "reattach_s_median", "reattach_s_p99", "reattach_never", "promotions"]
outage = {
    "supernode-crash": reattach,
    "restart-storm": reattach,
    "partition": ["attached_ratio_partition_min", "attached_ratio_partition_min_raw",
                  "lookups_after_heal", "lookup_success_after_heal", "promotions"],
}
if scenario in outage:
    keys += outage[scenario] + [
        "busy_answers", "supernode_over_capacity_events", "messages_sent", "messages_delivered",
        "messages_delivered_ratio", "messages_lost", "messages_duplicated", "messages_out_of_order",
        "mailbox_backlog_max", "backlog_drain_s", "cpu_load_max_ratio", "cpu_dropped"]
keys += ["passed", "digest"]
def show(v):
    if isinstance(v, float):
        return str(round(v, 5))
    if isinstance(v, str) and len(v) > 20:
        return v[:8] + "…" + v[-4:]
    return str(v)
print(f"{'key':32}" + "".join(f"{n:>22}" for n, _ in rows))
for k in keys:
    print(f"{k:32}" + "".join(f"{show(r.get(k)):>22}" for _, r in rows))
a, b = rows[0][1], rows[1][1]
print(f"\nscaling: 10x clients -> {b['wall_s'] / a['wall_s']:.1f}x wall time, "
      f"{b['events'] / a['events']:.1f}x events, events/s ratio {b['events_per_s'] / a['events_per_s']:.2f}")
PY
