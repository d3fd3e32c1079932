#!/usr/bin/env bash
# The relay throughput benchmark of issue #4: one traffic generator offers
# the same loads to a plain tokio UDP forwarder (the practical limit), a
# peerline supernode's relay and coturn (TURN ChannelData), and prints
# delivered packets/s and loss at each load for 170- and 1200-byte
# payloads, with the ratios peerline/plain and peerline/coturn. About 3
# minutes; the report goes to stdout and bench/results/relay-DATE.md.
#
#   bench/relay.sh [relay-bench flags]      e.g. --rates-per-s 50000,100000 --step-ms 1000
#
# Installs coturn when it is missing (needs root and Debian's packages),
# starts it on 127.0.0.1 with a config of its own in a temporary folder, and
# stops it on every way out. Run it on an otherwise idle machine: the
# relays and the generator share its cores.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v turnserver >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "coturn is missing: install it (apt-get install coturn) or run this as root" >&2
        exit 1
    fi
    echo "installing coturn" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn >/dev/null
fi
coturn_version=$(turnserver --version 2>/dev/null | head -n 1)

cargo build --release --quiet -p peerline-bench
bin=target/release/relay-bench

port=${TURN_PORT:-34780}
port_hex=$(printf '%04X' "$port")
if grep -q ":$port_hex " /proc/net/udp; then
    echo "UDP port $port is taken: set TURN_PORT to a free one" >&2
    exit 1
fi

work=$(mktemp -d)
turn_pid=
bench_pid=
stop_coturn() {
    if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
        kill "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
    if [ -n "$turn_pid" ] && kill -0 "$turn_pid" 2>/dev/null; then
        kill "$turn_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$turn_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$turn_pid" 2>/dev/null || true
        wait "$turn_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop_coturn EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$work/turnserver.conf" <<CONF
listening-ip=127.0.0.1
listening-port=$port
relay-ip=127.0.0.1
min-port=49152
max-port=65535
realm=peerline.bench
lt-cred-mech
user=bench:$password
no-tls
no-dtls
no-tcp
no-tcp-relay
allow-loopback-peers
no-multicast-peers
no-cli
no-stdout-log
simple-log
log-file=$work/turnserver.log
pidfile=$work/turnserver.pid
CONF
turnserver -c "$work/turnserver.conf" >/dev/null 2>&1 &
turn_pid=$!

# Wait until coturn listens (its UDP socket shows in /proc/net/udp).
for _ in $(seq 50); do
    grep -q "0100007F:$port_hex " /proc/net/udp && break
    kill -0 "$turn_pid" 2>/dev/null || { echo "coturn exited; its log:" >&2; cat "$work"/turnserver*.log >&2 || true; exit 1; }
    sleep 0.1
done
grep -q "0100007F:$port_hex " /proc/net/udp || { echo "coturn does not listen on 127.0.0.1:$port after 5 s" >&2; exit 1; }

mkdir -p bench/results
"$bin" \
    --turn-server "127.0.0.1:$port" --turn-username bench --turn-password "$password" \
    --turn-pid "$turn_pid" \
    --out "bench/results/relay-$(date -u +%F).md" \
    --command "bench/relay.sh${*:+ $*}" \
    --note "coturn $coturn_version (Debian package), started by the script: UDP on 127.0.0.1:$port, long-term credentials, no TLS/DTLS/TCP, loopback peers allowed, CLI off, default relay threads." \
    "$@" &
# In the background and waited for, so that SIGTERM to this script stops the
# benchmark and coturn at once (bash runs traps only between commands).
bench_pid=$!
wait "$bench_pid"
