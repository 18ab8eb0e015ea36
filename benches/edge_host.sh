#!/usr/bin/env bash
# The edge host at scale (issue 11), side by side in one run of one release `wasmpod host`:
#
#   a. pods     N pods (default 10,000) of 3 idle http containers each (hello-http on 8080,
#               exposed, 8081 and 8082; an idle http container holds no instance) put through
#               the API; the host's RSS after the first and after the last pod (settled), per pod
#   b. apply    the latency of each of those PUTs of a cached pod (components uploaded once,
#               compiled once): p50, p99, max; the same over the last 1,000 (a full host); and
#               a second series with the state directory on tmpfs (/dev/shm), which tells what
#               of the tail is the disk's fsync
#   c. routing  wrk through the shared entrance: every request to a random one of 1,000 pods
#               (Host: p-K.localhost) vs. the same traffic to one pod, interleaved over
#               --rounds rounds (default 6; the first of each pair alternates), the req/s ratio
#               many/one per round, its median and over all rounds, and the host's CPU time
#               per request (steadier than req/s on a shared machine)
#
# wrk runs with 2 threads and 64 connections for 10 s a slice; every request picks its Host in
# a Lua request() in both cases, so the client's work is the same. The host gets
# --max-connections-per-address 0 (all clients come from 127.0.0.1).
#
#   benches/edge_host.sh                 # 10,000 pods, about 10 minutes
#   benches/edge_host.sh --pods 2000 --rps-for 10s
#   benches/edge_host.sh --containers 1     # pods of one http container (RSS per container)
#
# Needs: cargo, curl, python3, wrk. Honours CARGO_TARGET_DIR; WASMPOD=path skips the build.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

pods=10000
routed=1000
rps_for=10s
rounds=6
tmpfs_pods=2000
containers=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --pods) pods=$2; shift 2 ;;
        --routed) routed=$2; shift 2 ;;
        --rps-for) rps_for=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --tmpfs-pods) tmpfs_pods=$2; shift 2 ;;
        --containers) containers=$2; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "edge_host.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
(( routed <= pods )) || routed=$pods

die() { echo "edge_host.sh: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is missing: apt-get install -y wrk"
command -v curl >/dev/null || die "curl is missing: apt-get install -y curl"
command -v python3 >/dev/null || die "python3 is missing"

if [[ -z ${WASMPOD:-} ]]; then
    echo "== cargo build --release --bin wasmpod" >&2
    cargo build --release --bin wasmpod >&2
    WASMPOD=${CARGO_TARGET_DIR:-$ROOT/target}/release/wasmpod
fi
[[ -x $WASMPOD ]] || die "no $WASMPOD"
guests=$ROOT/guests/target/wasm32-wasip2/release
[[ -f $guests/hello_http.wasm ]] || die "the guests are not built (cargo build builds them)"
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
shm=
host=
cleanup() {
    [[ -n $host ]] && kill "$host" 2>/dev/null && wait "$host" 2>/dev/null
    rm -rf "$work"
    [[ -n $shm ]] && rm -rf "$shm"
}
trap cleanup EXIT
mkdir -m 700 "$work/run"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

{
    printf 'name = "p-0"\ntermination_grace_period = "1s"\n[expose]\nport = 8080\n'
    for ((c = 0; c < containers; c++)); do
        printf '[[containers]]\nname = "web-%d"\ncomponent = "%s"\nports = [%d]\n' "$c" "$guests/hello_http.wasm" $((8080 + c))
    done
} >"$work/seed.toml"
# The seed as `apply` puts it: the component by digest (the host has it after the first apply).
digest=$(sha256sum "$guests/hello_http.wasm" | cut -d' ' -f1)
sed "s|component = \".*\"|component = \"sha256:$digest\"|" "$work/seed.toml" >"$work/seed-by-digest.toml"

# Starts a host on state dir $1, waits until it serves; sets $host, $socket, $http.
start_host() {
    local state=$1
    socket=$work/host-$RANDOM.sock
    local port
    port=$(free_port)
    http=127.0.0.1:$port
    WASMPOD_RUNTIME_DIR=$work/run "$WASMPOD" host --state-dir "$state" --socket "$socket" \
        --http "$http" --max-connections-per-address 0 >"$work/host.log" 2>&1 &
    host=$!
    for _ in $(seq 1 600); do
        grep -q 'wasmpod host: ready' "$work/host.log" && return 0
        kill -0 "$host" 2>/dev/null || { cat "$work/host.log"; die "wasmpod host exited"; }
        sleep 0.1
    done
    die "the host did not start"
}
stop_host() { kill "$host"; wait "$host" 2>/dev/null || true; host=; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$host/status"; }

# PUTs pods p-$1 .. p-$2 (the seed's stored text, renamed) over the socket; prints the
# latencies in ms, one per line, to $3.
put_pods() {
    python3 - "$socket" "$work/seed-by-digest.toml" "$1" "$2" "$3" <<'EOF'
import http.client, socket, sys, time

sock_path, seed, first, last, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

text = open(seed).read()
times = []
for i in range(first, last + 1):
    body = text.replace('name = "p-0"', f'name = "p-{i}"').encode()
    conn = UnixConnection(sock_path)
    started = time.perf_counter()
    conn.request("PUT", f"/v1/pods/p-{i}", body=body, headers={"Content-Type": "application/toml"})
    response = conn.getresponse()
    answer = response.read()
    times.append((time.perf_counter() - started) * 1000)
    conn.close()
    if response.status != 201:
        sys.exit(f"PUT p-{i}: {response.status} {answer!r}")
with open(out, "w") as f:
    f.write("\n".join(f"{t:.3f}" for t in times) + "\n")
EOF
}

percentiles() {
    python3 - "$1" "${2:-0}" <<'EOF'
import sys
times = [float(l) for l in open(sys.argv[1]) if l.strip()]
skip = int(sys.argv[2])
times = sorted(times[skip:])
pick = lambda q: times[min(len(times) - 1, int(len(times) * q))]
print(f"n {len(times)}, p50 {pick(0.50):.2f} ms, p90 {pick(0.90):.2f} ms, p99 {pick(0.99):.2f} ms, max {times[-1]:.2f} ms")
EOF
}

echo "== $(date -u), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
echo "== state dir on $(df --output=source,fstype "$work" | tail -1)"

# --- a + b: N pods through the API, on the disk.
state_dir=$work/state
start_host "$state_dir"
rss_empty=$(rss_kib)
WASMPOD_RUNTIME_DIR=$work/run "$WASMPOD" apply -f "$work/seed.toml" --host "$socket" >/dev/null
curl -sf -H 'Host: p-0.localhost' "http://$http/" >/dev/null || die "p-0 does not answer"
rss_one=$(rss_kib)
echo "== a/b. PUT p-1 .. p-$((pods - 1))"
started=$(date +%s.%N)
put_pods 1 $((pods - 1)) "$work/apply.txt"
took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
sleep 5
rss_all=$(rss_kib)
ready=$(curl -sf --unix-socket "$socket" http://localhost/v1/pods | python3 -c 'import json, sys; pods = json.load(sys.stdin); print(sum(1 for p in pods if p["phase"] == "Running"), "running of", len(pods))')
echo "pods: $ready; $pods pods put in $took s"
echo "pods: host RSS empty $rss_empty KiB, 1 pod $rss_one KiB, $pods pods $rss_all KiB ($(( rss_all / 1024 )) MiB): $(( (rss_all - rss_one) / (pods - 1) )) KiB per pod"
echo "apply (disk), all:            $(percentiles "$work/apply.txt")"
echo "apply (disk), last 1,000:     $(percentiles "$work/apply.txt" $(( pods > 1001 ? pods - 1001 : 0 )))"

# --- c: routing across $routed pods vs one, interleaved, in the same host.
cat >"$work/many.lua" <<EOF
local names = {}
for i = 0, $((routed - 1)) do names[#names + 1] = "p-" .. i .. ".localhost" end
request = function()
    return wrk.format(nil, "/", { Host = names[math.random(#names)] })
end
EOF
cat >"$work/one.lua" <<'EOF'
local names = { "p-0.localhost" }
request = function()
    return wrk.format(nil, "/", { Host = names[math.random(#names)] })
end
EOF
summary() {
    awk '
        /requests in/ { requests = $1 }
        /Socket errors/ { errors = $0 }
        /Non-2xx/ { non2xx = $NF }
        /Requests\/sec/ { rps = $2 }
        /Latency/ { latency = $2 }
        END { printf "requests %s, req/s %s, mean latency %s, non-2xx %s, %s\n", requests, rps, latency, (non2xx == "" ? 0 : non2xx), (errors == "" ? "socket errors 0" : errors) }
    ' "$1"
}
# The host's CPU time (user + system) in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$host/stat"; }
# Runs wrk with script $1 for $rps_for into $2, and the host's CPU ticks over it into $2.cpu.
measure() {
    local before
    before=$(cpu_ticks)
    wrk -t2 -c64 -d"$rps_for" -s "$1" "http://$http/" >"$2"
    echo $(( $(cpu_ticks) - before )) >"$2.cpu"
}
echo "== c. wrk -t2 -c64 -d$rps_for through the shared entrance: 1 pod vs $routed pods, $rounds rounds"
wrk -t2 -c64 -d5s -s "$work/many.lua" "http://$http/" >/dev/null   # warm-up: every routed pod served once
for ((round = 1; round <= rounds; round++)); do
    # Alternate which goes first, so a trend in the machine's load lands on both alike.
    if (( round % 2 )); then order="one many"; else order="many one"; fi
    for which in $order; do
        measure "$work/$which.lua" "$work/$which-$round.txt"
        label=$([[ $which == one ]] && echo "1 pod" || echo "$routed pods")
        echo "round $round, $label: $(summary "$work/$which-$round.txt"), host CPU ticks $(cat "$work/$which-$round.txt.cpu")"
    done
done
python3 - "$work" "$rounds" "$(getconf CLK_TCK)" <<'EOF'
import re, statistics, sys
work, rounds, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def read(which, r):
    text = open(f"{work}/{which}-{r}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    ticks = int(open(f"{work}/{which}-{r}.txt.cpu").read())
    return rps, ticks / tck / requests * 1e6
one = [read("one", r) for r in range(1, rounds + 1)]
many = [read("many", r) for r in range(1, rounds + 1)]
ratios = [m[0] / o[0] for o, m in zip(one, many)]
print("routing: req/s many/one per round " + ", ".join(f"{r:.2f}" for r in ratios)
      + f"; median {statistics.median(ratios):.2f}; over all rounds {sum(m[0] for m in many) / sum(o[0] for o in one):.2f}")
cpu_one, cpu_many = statistics.median(o[1] for o in one), statistics.median(m[1] for m in many)
print(f"routing: host CPU per request, median: 1 pod {cpu_one:.1f} us, many {cpu_many:.1f} us; one/many {cpu_one / cpu_many:.2f}")
EOF
stop_host

# --- b on tmpfs: how much of the tail is fsync.
if [[ -d /dev/shm && $tmpfs_pods -gt 1 ]]; then
    shm=$(mktemp -d -p /dev/shm)
    state_dir=$shm/state
    start_host "$state_dir"
    WASMPOD_RUNTIME_DIR=$work/run "$WASMPOD" apply -f "$work/seed.toml" --host "$socket" >/dev/null
    put_pods 1 $((tmpfs_pods - 1)) "$work/apply-shm.txt"
    echo "apply (tmpfs, $tmpfs_pods pods): $(percentiles "$work/apply-shm.txt")"
    stop_host
fi
grep -i 'warning' "$work/host.log" | head -5 || true
