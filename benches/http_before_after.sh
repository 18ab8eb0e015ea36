#!/usr/bin/env bash
# Two wasmpod binaries serving examples/hello-http through the front proxy, measured alternately
# with the same wrk load (loopback only): requests/s and the server's own CPU time per request
# (utime+stime from /proc, which other load on the machine disturbs less than req/s).
#
#   benches/http_before_after.sh OLD_BINARY NEW_BINARY [ROUNDS] [DURATION] [CONNECTIONS]
#
# Needs wrk (Debian: `apt-get install -y wrk`), python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 rounds=${3:-3} duration=${4:-10s} connections=${5:-32}
spec=examples/hello-http/wasmpod.toml
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
measure() {
    local bin=$1 port pid
    port=$(free_port)
    "$bin" run --listen "127.0.0.1:$port" "$spec" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.05; done
    wrk -t2 -c"$connections" -d2s "http://127.0.0.1:$port/" >/dev/null
    local before after out requests
    before=$(cpu_ticks "$pid")
    out=$(wrk -t2 -c"$connections" -d"$duration" --latency "http://127.0.0.1:$port/")
    after=$(cpu_ticks "$pid")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    python3 - "$requests" "$before" "$after" "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
        "$(echo "$out" | awk '$1=="99%" {print $2}')" <<'PY'
import os, sys
requests, before, after, rps, p99 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
tick = os.sysconf("SC_CLK_TCK")
print(f"{rps} req/s, p99 {p99}, server CPU {1e6 * (after - before) / tick / requests:.0f} us/request")
PY
}
for round in $(seq 1 "$rounds"); do
    echo "round $round  old: $(measure "$old")"
    echo "round $round  new: $(measure "$new")"
done
