#!/usr/bin/env bash
# Calibration of the simulator's CPU model (issue #4 item 8): what a
# supernode of the real driver pays in CPU per attach, resume, ping,
# lookup, publish, signature and relayed frame, measured on loopback by
# crates/net/examples/calibrate.rs. Prints the table and writes it, with
# the machine and this command, to bench/results/calibration-DATE.md.
# The simulator's cost table (crates/sim/src/cpu.rs) is copied from such a
# file by hand, citing it.
#
#   bench/calibrate.sh [calibrate flags]     e.g. --rounds 7 --scale 2 --concurrency 8
#
# Takes about a minute at the defaults (5 rounds). CPU time, not wall time,
# is measured, but a busy machine still shifts the figures (caches, SMT,
# frequency): the table gives each operation's spread over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} nice cargo build --release --quiet -p peerline-net --example calibrate
bin=target/release/examples/calibrate

date=$(date -u +%Y-%m-%d)
out=bench/results/calibration-$date.md
mkdir -p bench/results
table=$(mktemp)
trap 'rm -f "$table"' EXIT

nice "$bin" "$@" | tee "$table"

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
cpu_mhz=$(grep -m1 'cpu MHz' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
cpu_cache=$(grep -m1 'cache size' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
cpus=$(nproc)
{
    echo "# Calibration of the simulator's CPU model, $date"
    echo
    echo "Produced by \`bench/calibrate.sh $*\` at commit \`$(git rev-parse --short HEAD)\`$(git diff --quiet HEAD -- crates/net crates/core crates/proto bench/calibrate.sh || echo ' (with local changes to the measured code)')."
    echo
    echo "Machine: $cpu_model, $cpu_mhz MHz, $cpu_cache cache, $cpus logical CPUs;"
    echo "kernel $(uname -r); $(rustc --version); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "CPU time (user + kernel) of the measured supernode's runtime threads"
    echo "(\`/proc/self/task/*/schedstat\`), per operation; median and range over the rounds."
    echo
    cat "$table"
} >"$out"
echo "wrote $out"
