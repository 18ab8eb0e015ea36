#!/usr/bin/env bash
# Tiered start (issue 15), side by side in one run: for each hello http component, the time
# from `wasmpod run` to the first answered request with an EMPTY compile cache, tiered (Winch
# first, Cranelift in the background) vs Cranelift-only; how many requests Winch code answered
# before the switch (one client, back-to-back requests); and steady-state req/s after the
# tier-up vs Cranelift-only (wrk, loopback only).
#
#   benches/tiered_start.sh                        # every component that can be built here
#   benches/tiered_start.sh --only rust --duration 5s --rounds 1
#
# Components:
#   rust    guests/hello-http (built by cargo's build script)
#   python  a hello handler built with componentize-py (PyPI), installed into $TOOLS
#   js      a hello handler built with componentize-js (npm), installed into $TOOLS
# A component whose tool cannot be installed or fails is reported and skipped.
#
# Needs: cargo, python3 (+venv/pip for Python), node/npm (for JS), curl, wrk (Debian:
# `apt-get install -y wrk`). wrk shares the cores with the server: compare rows as ratios.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TOOLS=${TOOLS:-$TARGET/bench-tools}

rounds=3
duration=10s
connections=32
threads=2
only=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "tiered_start.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "tiered_start.sh: $*" >&2; exit 1; }
note() { echo "== $*" >&2; }
command -v wrk >/dev/null || die "wrk is missing: apt-get install -y wrk"
command -v curl >/dev/null || die "curl is missing"
command -v python3 >/dev/null || die "python3 is missing"

note "building wasmpod (cargo build --release; the build script builds the guests)"
cargo build --release >&2
WASMPOD=$TARGET/release/wasmpod
[[ -x $WASMPOD ]] || die "no $WASMPOD after cargo build --release"
RUST_HELLO=$ROOT/guests/target/wasm32-wasip2/release/hello_http.wasm
[[ -f $RUST_HELLO ]] || die "no $RUST_HELLO"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$TOOLS"

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
if want rust; then NAMES+=(rust); FILES+=("$RUST_HELLO"); fi
if want python; then
    note "building the Python hello (componentize-py)"
    if build_python "$WORK/hello-python.wasm"; then NAMES+=(python); FILES+=("$WORK/hello-python.wasm")
    else note "python: SKIPPED (componentize-py failed, see above)"; fi
fi
if want js; then
    note "building the JavaScript hello (componentize-js)"
    if build_js "$WORK/hello-js.wasm"; then NAMES+=(js); FILES+=("$WORK/hello-js.wasm")
    else note "js: SKIPPED (componentize-js failed, see above)"; fi
fi
[[ ${#NAMES[@]} -gt 0 ]] || die "no component to measure"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One client, back-to-back GET / requests (one process, keep-alive off), from the moment
# `wasmpod run` is started: prints "first_ms winch_answers switch_ms" once the first answer came
# (cranelift) or once the switch to optimized code is announced in the log (tiered); the
# requests counted as Winch answers are those answered before that line appeared.
CLIENT=$(cat <<'PY'
import http.client, subprocess, sys, time, os
port, log, mode, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
start = time.monotonic()
proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
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

# run_one NAME FILE MODE -> prints "first_ms winch_answers switch_ms req_s"
run_one() {
    local name=$1 file=$2 mode=$3
    local dir=$WORK/run-$name-$mode port cache log pid
    mkdir -p "$dir"
    cache=$(mktemp -d)
    port=$(free_port)
    cat > "$dir/pod.toml" <<TOML
name = "tiered-$name-$mode-$$"
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
    pid=$(cat "$log.pid")
    wrk -t"$threads" -c"$connections" -d"$duration" "http://127.0.0.1:$port/" > "$dir/wrk.txt" 2>&1 || true
    local rps
    rps=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt")
    # SIGTERM, not SIGINT: `wasmpod run` can miss a Ctrl-C that lands between two output lines.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -rf "$cache"
    echo "$timing ${rps:-?}"
}

printf '\n%-8s %-10s %6s %14s %12s %14s %10s\n' component compiler round first_answer_ms winch_answers switch_at_ms "req/s" 
declare -A RESULTS
for (( round = 1; round <= rounds; round++ )); do
    for i in "${!NAMES[@]}"; do
        for mode in tiered cranelift; do
            read -r first baseline switched rps < <(run_one "${NAMES[$i]}" "${FILES[$i]}" "$mode")
            printf '%-8s %-10s %6s %14s %12s %14s %10s\n' "${NAMES[$i]}" "$mode" "$round" "$first" "$baseline" "$switched" "$rps"
            RESULTS[${NAMES[$i]},$mode,$round]="$first $rps"
        done
    done
done
for i in "${!NAMES[@]}"; do
    ls -l "${FILES[$i]}" | awk -v n="${NAMES[$i]}" '{printf "%s component: %.1f MB\n", n, $5/1048576}'
done
