#!/usr/bin/env bash
# Runs the pod network benchmark (and, with --all, the pod start benchmark) and prints each pod
# network figure beside its kernel-loopback counterpart, with the ratio.
#
#   benches/compare.sh            # cargo bench --bench pod_network, then the table
#   benches/compare.sh --all      # also cargo bench --bench pod_start
#   benches/compare.sh --report   # no run: the table from the last results in target/criterion
#
# Extra arguments after the options go to the bench binary (e.g. a filter: `-- host_`).
# Ratios are "pod network / kernel loopback": for throughput, pod GiB/s over kernel GiB/s
# (above 1 = the pod network is faster); for latency, pod time over kernel time (below 1 = the
# pod network is faster). Times are criterion's point estimate (slope when criterion has one).
set -euo pipefail

cd "$(dirname "$0")/.."
run=1
all=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --report) run=0; shift ;;
        --all) all=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done

if [[ $run == 1 ]]; then
    if [[ $all == 1 ]]; then
        cargo bench --bench pod_start
    fi
    cargo bench --bench pod_network -- "$@"
fi

crit="${CARGO_TARGET_DIR:-target}/criterion"
command -v python3 >/dev/null || { echo "compare.sh: python3 is needed to read $crit" >&2; exit 1; }

python3 - "$crit" <<'EOF'
import json, os, sys

crit = sys.argv[1]

def load(bench):
    path = os.path.join(crit, bench, "new", "estimates.json")
    try:
        with open(path) as f:
            est = json.load(f)
    except FileNotFoundError:
        return None
    pick = est.get("slope") or est["mean"]
    meta = json.load(open(os.path.join(crit, bench, "new", "benchmark.json")))
    tp = (meta.get("throughput") or {}).get("Bytes")
    return pick["point_estimate"], tp  # ns per iteration, bytes per iteration

def fmt_time(ns):
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.3f} {unit}"
    return f"{ns:.1f} ns"

def fmt(v):
    ns, tp = v
    s = fmt_time(ns)
    if tp:
        s += f" ({tp / (ns / 1e9) / 2**30:.2f} GiB/s)"
    return s

rows = [
    ("host_stream_16MiB", "pod", "kernel", "host tokio stream, 16 MiB"),
    ("host_connect_rtt", "pod", "kernel", "host connect + 1-byte RTT"),
    ("guest_stream_16MiB", "pod_guests", "native_threads", "container->container stream, 16 MiB"),
    ("guest_echo_16MiB", "pod_guests", "native_threads", "container<->container echo+verify, 16 MiB"),
    ("guest_connect_rtt", "pod_guests", "native_threads", "container connect + 1-byte RTT"),
]
print(f"{'figure':<44} {'pod network':>28} {'kernel loopback':>28} {'pod/kernel':>22}")
for group, pod_id, ker_id, label in rows:
    p, k = load(f"{group}/{pod_id}"), load(f"{group}/{ker_id}")
    if not p or not k:
        print(f"{label:<44} {'(no result)':>28}")
        continue
    if p[1]:
        ratio = f"{k[0] / p[0]:.2f}x throughput"
    else:
        ratio = f"{p[0] / k[0]:.2f}x latency"
    print(f"{label:<44} {fmt(p):>28} {fmt(k):>28} {ratio:>22}")

for bench in ("pod_start_three_containers",):
    v = None
    # criterion names the directory after the id with '/' replaced
    for d in (bench, "pod_start/three_containers"):
        v = v or load(d)
    if v:
        print(f"{'pod_start/three_containers':<44} {fmt(v):>28}")
EOF
