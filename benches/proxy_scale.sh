#!/usr/bin/env bash
# The front proxy at edge scale (issue 16): wrk against examples/hello-http through the front
# proxy of a release `wasmpod run`, all on loopback.
#
#   1. idle      10,000 keep-alive connections that send about one request each (10,000 in
#                all, at once) and then stay idle for 20 s: the growth of the server's RSS (sampled every 2 s) over the warm idle
#                server, divided by 10,000, is the cost of an idle keep-alive client
#   1b. held     10,000 concurrent keep-alive connections for 60 s, each sending a request
#                every 1-3 s (wrk's delay(): about 5,000 req/s offered, so the connections are
#                open and active without all 10,000 requests being in flight at once); peak RSS
#                growth over the warm server, divided by 10,000, per active connection
#   2. rps       full speed (no delay) at 32 connections and at 10,000 connections, 20 s each
#   3. million   1,000,000 requests at 1,000 connections (each wrk thread stops after its half)
#
# wrk runs with 2 threads and a 30 s timeout; the server gets --max-connections-per-address 0
# because every wrk connection comes from 127.0.0.1 (the default cap is 1,024 per address).
# The soft open-file limit is raised to the hard limit for wrk (wasmpod raises its own).
#
#   benches/proxy_scale.sh                    # everything, about 4 minutes
#   benches/proxy_scale.sh --held-for 20s --million 200000
#
# Needs: cargo, curl, python3, wrk (Debian: `apt-get install -y wrk`). Honours CARGO_TARGET_DIR;
# WASMPOD=path skips the build. wrk shares the cores with the server: on a 2-core machine read
# the rps as a ratio between runs of this script, not as the server's ceiling.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

held_for=60s
held=10000
rps_for=20s
million=1000000
million_connections=1000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --held-for) held_for=$2; shift 2 ;;
        --held) held=$2; shift 2 ;;
        --rps-for) rps_for=$2; shift 2 ;;
        --million) million=$2; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "proxy_scale.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "proxy_scale.sh: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is missing: apt-get install -y wrk"
command -v curl >/dev/null || die "curl is missing: apt-get install -y curl"
command -v python3 >/dev/null || die "python3 is missing"

if [[ -z ${WASMPOD:-} ]]; then
    echo "== cargo build --release --bin wasmpod" >&2
    cargo build --release --bin wasmpod >&2
    WASMPOD=${CARGO_TARGET_DIR:-$ROOT/target}/release/wasmpod
fi
[[ -x $WASMPOD ]] || die "no $WASMPOD"
[[ -f $ROOT/guests/target/wasm32-wasip2/release/hello_http.wasm ]] || die "the guests are not built (cargo build builds them)"

ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) > held + 100 )) || die "open-file limit $(ulimit -n) is too low for $held connections"

work=$(mktemp -d)
server=
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/held.lua" <<'EOF'
-- Every connection sends one request every 1 to 3 seconds.
function delay()
    return math.random(1000, 3000)
end
EOF
cat >"$work/idle.lua" <<EOF
-- wrk asks delay() before every request, a connection's first one included: each thread lets
-- as many requests go at once as it has connections (about one per connection; a quick one may
-- take two while another takes none), then nothing more during the run.
local asked = 0
function delay()
    asked = asked + 1
    if asked <= $held / 2 then
        return 0
    end
    return 600000
end
EOF
cat >"$work/million.lua" <<EOF
-- Each of wrk's 2 threads stops after its half of the requests.
local answered = 0
local stop_after = $million / 2
function response(status, headers, body)
    answered = answered + 1
    if answered >= stop_after then
        wrk.thread:stop()
    end
end
EOF

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port/
echo "== $(date -u), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
WASMPOD_RUNTIME_DIR=$work/run "$WASMPOD" run --no-color --listen "127.0.0.1:$port" \
    --max-connections-per-address 0 examples/hello-http/wasmpod.toml >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
    curl -sf "$url" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; die "wasmpod exited"; }
    sleep 0.1
done
curl -sf "$url" >/dev/null || die "wasmpod does not answer on $url"

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$server/status"; }
summary() {
    # wrk's output → requests, errors, non-2xx, req/s on one line.
    awk '
        /requests in/ { requests = $1 }
        /Socket errors/ { errors = $0 }
        /Non-2xx/ { non2xx = $NF }
        /Requests\/sec/ { rps = $2 }
        END { printf "requests %s, req/s %s, non-2xx %s, %s\n", requests, rps, (non2xx == "" ? 0 : non2xx), (errors == "" ? "socket errors 0" : errors) }
    ' "$1"
}

wrk -t2 -c32 -d5s "$url" >/dev/null   # warm-up: compiled, instances pooled
idle_rss=$(rss_kib)
echo "== idle server RSS: $idle_rss KiB"

echo "== 1. idle: wrk -t2 -c$held -d20s --timeout 30s -s idle.lua"
before=$idle_rss
: >"$work/rss"
( while kill -0 "$server" 2>/dev/null; do rss_kib >>"$work/rss"; sleep 2; done ) &
sampler=$!
wrk -t2 -c"$held" -d20s --timeout 30s -s "$work/idle.lua" "$url" >"$work/idle.txt"
kill "$sampler" 2>/dev/null || true
peak=$(sort -n "$work/rss" | tail -1)
echo "idle: $(summary "$work/idle.txt")"
echo "idle: server RSS before $before KiB, peak $peak KiB: $(( (peak - before) * 1024 / held )) bytes per idle connection"

echo "== 1b. held: wrk -t2 -c$held -d$held_for --timeout 30s -s held.lua"
: >"$work/rss"
( while kill -0 "$server" 2>/dev/null; do rss_kib >>"$work/rss"; sleep 2; done ) &
sampler=$!
wrk -t2 -c"$held" -d"$held_for" --timeout 30s -s "$work/held.lua" "$url" >"$work/held.txt"
kill "$sampler" 2>/dev/null || true
peak=$(sort -n "$work/rss" | tail -1)
cat "$work/held.txt"
echo "held: $(summary "$work/held.txt")"
echo "held: server RSS idle $idle_rss KiB, peak $peak KiB: $(( (peak - idle_rss) * 1024 / held )) bytes per connection"

echo "== 2. rps: wrk -t2 -c32 -d$rps_for, then -c$held"
wrk -t2 -c32 -d"$rps_for" --timeout 30s "$url" >"$work/rps32.txt"
wrk -t2 -c"$held" -d"$rps_for" --timeout 30s "$url" >"$work/rpsmany.txt"
echo "rps at 32:      $(summary "$work/rps32.txt")"
echo "rps at $held: $(summary "$work/rpsmany.txt")"

echo "== 3. million: wrk -t2 -c$million_connections -d600s --timeout 30s -s million.lua"
wrk -t2 -c"$million_connections" -d600s --timeout 30s -s "$work/million.lua" "$url" >"$work/million.txt" &
client=$!
# wrk's main thread sleeps for the whole -d; once both worker threads stopped (each after its
# half), SIGINT ends that sleep and wrk prints the results over the time actually taken.
running=0
while kill -0 "$client" 2>/dev/null; do
    threads=$(awk '/^Threads/ { print $2 }' "/proc/$client/status" 2>/dev/null || echo 0)
    if (( ${threads:-0} > 1 )); then
        running=1
    elif (( running )); then
        kill -INT "$client"
        break
    fi
    sleep 0.2
done
wait "$client"
cat "$work/million.txt"
echo "million: $(summary "$work/million.txt")"

echo "== server warnings (front proxy lines: $(grep -c 'front proxy' "$work/server.log" || true))"
grep -i 'warning\|front proxy\|open-file' "$work/server.log" | head -20 || true
