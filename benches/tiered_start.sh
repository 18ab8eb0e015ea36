#!/usr/bin/env bash
# Tiered start (issue 15), side by side in one run. For each hello http component and round:
#   1. first answer: the time from `wasmpod run` to the first answered request with an EMPTY
#      compile cache, tiered (Winch first, Cranelift in the background) and Cranelift-only,
#      started one after the other (which one first alternates between rounds);
#   2. Winch answers: requests answered before the switch to optimized code (one client,
#      back-to-back requests on new connections), and when the switch came;
#   3. steady state after the switch: both servers stay up; once each is idle (its background
#      compile and cache write done: under 5 % of a core for a second), each gets the same wrk
#      warm-up, then wrk slices alternate between them (A B A B ..., so machine noise lands on
#      both alike): median req/s and median server CPU per request (utime+stime of the wasmpod
#      process over the slice / requests; less sensitive to other load than req/s).
#
#   benches/tiered_start.sh                        # every component that can be built here
#   benches/tiered_start.sh --only js --rounds 2 --slices 5 --duration 5s
#   WASMPOD=/path/to/release/wasmpod benches/tiered_start.sh   # that binary, no cargo build
#
# Components:
#   rust    guests/hello-http (built by cargo's build script)
#   python  a hello handler built with componentize-py (PyPI), installed into $TOOLS
#   js      a hello handler built with componentize-js (npm), installed into $TOOLS
# Built components are kept in $TOOLS/components (delete it to rebuild). A component whose
# tool cannot be installed or fails is reported and skipped.
#
# Needs: cargo, python3 (+venv/pip for Python), node/npm (for JS), wrk (Debian:
# `apt-get install -y wrk`). wrk shares the cores with the server: compare rows as ratios.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TOOLS=${TOOLS:-$TARGET/bench-tools}

rounds=3
duration=5s
slices=5
warmup=3s
connections=32
threads=2
only=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --slices) slices=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "tiered_start.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "tiered_start.sh: $*" >&2; exit 1; }
note() { echo "== $*" >&2; }
command -v wrk >/dev/null || die "wrk is missing: apt-get install -y wrk"
command -v python3 >/dev/null || die "python3 is missing"

if [[ -z ${WASMPOD:-} ]]; then
    note "building wasmpod (cargo build --release; the build script builds the guests)"
    cargo build --release --bin wasmpod >&2
    WASMPOD=$TARGET/release/wasmpod
fi
[[ -x $WASMPOD ]] || die "no $WASMPOD"
RUST_HELLO=$ROOT/guests/target/wasm32-wasip2/release/hello_http.wasm
[[ -f $RUST_HELLO ]] || die "no $RUST_HELLO"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# A copy: a shared target dir may get another checkout's binary while this runs.
cp "$WASMPOD" "$WORK/wasmpod"
WASMPOD=$WORK/wasmpod
mkdir -p "$TOOLS/components"

# The wasi:http WIT that wasmtime-wasi-http 48 serves (from the cargo registry).
wit_dir() {
    local dir
    dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-48.*/wit 2>/dev/null | head -1)
    [[ -n $dir ]] || return 1
    echo "$dir"
}

build_python() {
    local out=$1 wit
    wit=$(wit_dir) || { note "python: no wasi:http WIT found"; return 1; }
    if [[ ! -x $TOOLS/py/bin/componentize-py ]]; then
        python3 -m venv "$TOOLS/py" >&2 && "$TOOLS/py/bin/pip" install -q componentize-py >&2 || return 1
    fi
    local app=$WORK/py-app
    mkdir -p "$app"
    (cd "$app" && "$TOOLS/py/bin/componentize-py" -d "$wit" -w wasi:http/proxy bindings . >&2) || return 1
    cat > "$app/app.py" <<'PY'
from wit_world import exports
from componentize_py_types import Ok
from wit_world.imports.types import (
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
)

class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(b"hello from python\n")
        OutgoingBody.finish(body, None)
PY
    (cd "$app" && "$TOOLS/py/bin/componentize-py" -d "$wit" -w wasi:http/proxy componentize app -o "$out" >&2)
}

build_js() {
    local out=$1 wit
    wit=$(wit_dir) || { note "js: no wasi:http WIT found"; return 1; }
    command -v npm >/dev/null || { note "js: npm is missing"; return 1; }
    local pkg=$TOOLS/js/node_modules/@bytecodealliance/componentize-js
    if [[ ! -d $pkg ]]; then
        mkdir -p "$TOOLS/js"
        (cd "$TOOLS/js" && npm init -y >/dev/null && npm install -s @bytecodealliance/componentize-js >&2) || return 1
    fi
    # componentize-js's StarlingMonkey exports wasi:http at the version it was built with
    # (0.2.10 for componentize-js 0.23): give it the same WIT under that version.
    local version
    version=$(grep -ao 'wasi:http/incoming-handler@0\.2\.[0-9]*' "$pkg/lib/starlingmonkey_embedding.wasm" | head -1 | cut -d@ -f2)
    [[ -n $version ]] || { note "js: cannot tell which wasi:http StarlingMonkey exports"; return 1; }
    local app=$WORK/js-app
    mkdir -p "$app/wit/deps"
    cp "$wit"/deps/*.wit "$app/wit/deps/"
    local own
    own=$(sed -n 's/^package wasi:http@\(.*\);/\1/p' "$wit/deps/http.wit")
    sed -i "s/${own//./\\.}/$version/g" "$app"/wit/deps/*.wit
    printf 'package local:hello;\n\nworld hello {\n  include wasi:http/proxy@%s;\n}\n' "$version" > "$app/wit/world.wit"
    cat > "$app/app.js" <<'JS'
addEventListener("fetch", (event) =>
  event.respondWith(new Response("hello from javascript\n", { headers: { "content-type": "text/plain" } })),
);
JS
    # jco's CLI runs wasm-tools sandboxed and cannot see the WIT here; the library API can.
    # Paths relative to the app: componentize-js resolves the source against the cwd.
    cat > "$TOOLS/js/build.mjs" <<'MJS'
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
const [source, wit, world, out] = process.argv.slice(2);
const { component } = await componentize({ sourcePath: source, witPath: wit, worldName: world });
await writeFile(out, component);
MJS
    (cd "$app" && node "$TOOLS/js/build.mjs" app.js wit hello "$out" >&2)
}

declare -a NAMES=() FILES=()
want() { [[ -z $only || ",$only," == *",$1,"* ]]; }
# build_cached NAME BUILDER: the component built by BUILDER, kept in $TOOLS/components.
build_cached() {
    local name=$1 builder=$2 out=$TOOLS/components/hello-$1.wasm
    if [[ ! -s $out ]]; then
        note "building the $name hello"
        "$builder" "$out.tmp" && mv "$out.tmp" "$out" || { rm -f "$out.tmp"; return 1; }
    fi
    echo "$out"
}
if want rust; then NAMES+=(rust); FILES+=("$RUST_HELLO"); fi
if want python; then
    if file=$(build_cached python build_python); then NAMES+=(python); FILES+=("$file")
    else note "python: SKIPPED (componentize-py failed, see above)"; fi
fi
if want js; then
    if file=$(build_cached js build_js); then NAMES+=(js); FILES+=("$file")
    else note "js: SKIPPED (componentize-js failed, see above)"; fi
fi
[[ ${#NAMES[@]} -gt 0 ]] || die "no component to measure"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One client, back-to-back GET / requests (one process, keep-alive off), from the moment
# `wasmpod run` is started (detached: it outlives the client): prints "first_ms winch_answers
# switch_ms" once the first answer came (cranelift) or once the switch to optimized code is
# announced in the log (tiered); the requests counted as Winch answers are those answered
# before that line appeared.
CLIENT=$(cat <<'PY'
import http.client, subprocess, sys, time, os
port, log, mode, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
start = time.monotonic()
proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
print(proc.pid, file=open(log + ".pid", "w"), flush=True)
first = None; served = 0
def switched():
    with open(log) as f:
        return "now serving optimized" in f.read()
while time.monotonic() - start < 300:
    if proc.poll() is not None:
        sys.exit("wasmpod exited:\n" + open(log).read())
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/"); r = c.getresponse(); r.read(); c.close()
        ok = r.status == 200
    except OSError:
        ok = False
    if not ok:
        time.sleep(0.01); continue
    now = time.monotonic()
    if first is None:
        first = now
    if mode != "tiered":
        print(round((first - start) * 1000), 0, "-"); break
    if switched():
        print(round((first - start) * 1000), served, round((now - start) * 1000)); break
    served += 1
else:
    sys.exit("no answer / no switch within 300 s")
PY
)

# CPU seconds (utime + stime) the process PID has used.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

# Waits until PID uses under 5 % of a core over a second (its background compile and cache
# write are done), at most 120 s; prints the seconds waited.
settle() {
    local pid=$1 waited=0 before after
    while (( waited < 120 )); do
        before=$(cpu_of "$pid"); sleep 1; after=$(cpu_of "$pid"); waited=$((waited + 1))
        awk -v a="$after" -v b="$before" 'BEGIN { exit !(a - b < 0.05) }' && break
    done
    echo "$waited"
}

# wrk_slice PORT PID LENGTH -> "req/s cpu_us_per_request"
wrk_slice() {
    local port=$1 pid=$2 length=$3 out before after
    before=$(cpu_of "$pid")
    out=$(wrk -t"$threads" -c"$connections" -d"$length" "http://127.0.0.1:$port/" 2>&1 || true)
    after=$(cpu_of "$pid")
    local rps requests
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v r="${rps:-0}" -v n="${requests:-0}" -v a="$after" -v b="$before" \
        'BEGIN { printf "%.0f %.0f\n", r, (n > 0 ? (a - b) * 1e6 / n : 0) }'
}

# start_one NAME FILE MODE -> starts `wasmpod run`, prints "pid port first_ms winch_answers switch_ms"
start_one() {
    local name=$1 file=$2 mode=$3
    local dir=$WORK/run-$name-$mode-$round port cache log
    mkdir -p "$dir"
    cache=$dir/cache
    mkdir -p "$cache"
    port=$(free_port)
    cat > "$dir/pod.toml" <<TOML
name = "tiered-$name-$mode-$round-$$"
[expose]
port = 8080
[[containers]]
name = "hello"
component = "$file"
ports = [8080]
TOML
    log=$dir/out.log
    local timing
    timing=$(WASMPOD_CACHE_DIR=$cache WASMPOD_COMPILER=$mode python3 -c "$CLIENT" "$port" "$log" "$mode" \
        "$WASMPOD" run --no-color --listen "127.0.0.1:$port" "$dir/pod.toml") || die "$name/$mode: $timing"
    echo "$(cat "$log.pid") $port $timing"
}

stop_pid() {
    local pid=$1
    # SIGTERM, not SIGINT: `wasmpod run` can miss a Ctrl-C that lands between two output lines.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }

note "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%F %T') UTC"
printf '\n%-7s %-10s %5s %9s %8s %9s %7s %9s %9s %8s\n' component compiler round first_ms winch_ans switch_ms settle_s "req/s" cpu_us/req load
for (( round = 1; round <= rounds; round++ )); do
    for i in "${!NAMES[@]}"; do
        name=${NAMES[$i]} file=${FILES[$i]}
        if (( round % 2 )); then modes=(tiered cranelift); else modes=(cranelift tiered); fi
        declare -A PID=() PORT=() LINE=() RPS=() CPU=()
        for mode in "${modes[@]}"; do
            read -r pid port first winch switched < <(start_one "$name" "$file" "$mode")
            [[ -n ${switched:-} ]] || die "$name/$mode: no timing (see above)"
            PIDS+=("$pid"); PID[$mode]=$pid; PORT[$mode]=$port
            settled=$(settle "$pid")
            LINE[$mode]="$first $winch $switched $settled"
        done
        for mode in "${modes[@]}"; do wrk_slice "${PORT[$mode]}" "${PID[$mode]}" "$warmup" >/dev/null; done
        load=$(cut -d' ' -f1 /proc/loadavg)
        for (( s = 0; s < slices; s++ )); do
            for mode in "${modes[@]}"; do
                read -r rps cpu < <(wrk_slice "${PORT[$mode]}" "${PID[$mode]}" "$duration")
                RPS[$mode]+="$rps "; CPU[$mode]+="$cpu "
            done
        done
        load="$load-$(cut -d' ' -f1 /proc/loadavg)"
        for mode in tiered cranelift; do
            read -r first winch switched settled <<<"${LINE[$mode]}"
            printf '%-7s %-10s %5s %9s %8s %9s %7s %9s %9s %8s\n' "$name" "$mode" "$round" "$first" "$winch" \
                "$switched" "$settled" "$(median <<<"${RPS[$mode]}")" "$(median <<<"${CPU[$mode]}")" "$load"
            echo "#   $name $mode round $round slices req/s: ${RPS[$mode]}| cpu us/req: ${CPU[$mode]}" >&2
        done
        for mode in "${modes[@]}"; do stop_pid "${PID[$mode]}"; done
        unset PID PORT LINE RPS CPU
    done
done
for i in "${!NAMES[@]}"; do
    ls -lL "${FILES[$i]}" | awk -v n="${NAMES[$i]}" '{printf "%s component: %.1f MiB\n", n, $5/1048576}'
done
