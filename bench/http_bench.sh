#!/usr/bin/env bash
# Requests per second of POST /sync/start on the already-started path (keep-alive, 32
# connections, wrk on loopback), beside a no-op Node.js HTTP server answering 200 to everything,
# measured in the same run. Usage: bench/http_bench.sh [BUILD_DIR] [SECONDS]
# The build dir must hold a release build of syncschedd (default: build-rel).
#
# Environment: HTTP_THREADS (default 1, not the daemon's default of 2: the server gets one core
# here, and a second HTTP thread on it only adds wake-ups between the two threads); WARMUP seconds of load on each server
# before its measured run (default 2: Node's JIT warms up, and so do both servers' caches); PIN=0
# to leave placement to the scheduler.
#
# Placement: with 2 CPUs or more, wrk runs on CPU 0 and the server under test on CPU 1 (taskset),
# the same for both servers. Unpinned, the scheduler sometimes puts the server on wrk's core for a
# while, which makes the figures of both servers vary from run to run; pinned, each server has one
# core to itself and wrk the other, so the comparison is of what each server does with one core.
# Node stays a plain http.createServer (its helper threads share its core; in our runs Node was
# not slower pinned than unpinned). The warm-up favours Node (its JIT): ~10% more requests/s.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-rel}
secs=${2:-10}
daemon="$build/src/daemon/syncschedd"
[[ -x "$daemon" ]] || { echo "no $daemon: cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release && cmake --build $build"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
command -v node >/dev/null || { echo "node is missing"; exit 1; }

pin_server=()
pin_wrk=()
if [[ ${PIN:-1} != 0 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
  pin_wrk=(taskset -c 0)
  pin_server=(taskset -c 1)
fi
warmup=${WARMUP:-2}

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_d=$(free_port)
port_n=$(free_port)

cat > "$work/config.json" <<JSON
{
  "listen": "127.0.0.1:$port_d",
  "database": "$work/bench.db",
  "http_threads": ${HTTP_THREADS:-1},
  "api_keys": [{"key": "bench-key", "scopes": ["*"]}],
  "integrations": {
    "github": {
      "syncs": {"issues": {"runs": "every 1h", "auto_start": true, "command": ["/bin/true"]}},
      "connections": ["acme"]
    }
  }
}
JSON
"${pin_server[@]}" "$daemon" --config "$work/config.json" 2>"$work/daemon.log" &
pids+=($!)
"${pin_server[@]}" node -e '
  require("http").createServer((req, res) => {
    req.resume();
    req.on("end", () => { res.writeHead(200, {"content-type": "application/json"}); res.end("{\"success\":true}"); });
  }).listen(Number(process.argv[1]), "127.0.0.1");' "$port_n" &
pids+=($!)

for port in "$port_d" "$port_n"; do
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
  done
done

body='{"provider_config_key":"github","connection_id":"acme","syncs":["issues"]}'
status=$(curl -s -o "$work/first.json" -w '%{http_code}' -X POST "http://127.0.0.1:$port_d/sync/start" \
  -H 'Authorization: Bearer bench-key' -H 'Content-Type: application/json' -d "$body")
[[ "$status" == 200 ]] || { echo "start failed: $status $(cat "$work/first.json")"; exit 1; }

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
LUA

# User and system CPU seconds a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print $14 / hz, $15 / hz}' "/proc/$1/stat"; }
# Runs wrk against URL; prints "requests/s user-us/request system-us/request" of the server.
measure() {
  local url=$1 pid=$2 before after out
  if ((warmup > 0)); then "${pin_wrk[@]}" wrk -t1 -c32 -d"${warmup}s" -s "$work/post.lua" "$url" >/dev/null; fi
  before=$(cpu "$pid")
  out=$("${pin_wrk[@]}" wrk -t1 -c32 -d"${secs}s" -s "$work/post.lua" "$url")
  after=$(cpu "$pid")
  echo "$out" >>"$work/wrk.txt"
  local rps total
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  python3 -c "import sys; r,t=float(sys.argv[1]),float(sys.argv[6]); b=list(map(float,sys.argv[2:4])); a=list(map(float,sys.argv[4:6])); print(r, 1e6*(a[0]-b[0])/t, 1e6*(a[1]-b[1])/t)" \
    "$rps" $before $after "$total"
}
echo "http_threads ${HTTP_THREADS:-1}; warm-up ${warmup}s; $( ((${#pin_wrk[@]})) && echo "wrk on CPU 0, server on CPU 1" || echo "unpinned")"
echo "== syncschedd POST /sync/start (already started)"
read -r d d_user d_sys < <(measure "http://127.0.0.1:$port_d/sync/start" "${pids[0]}")
echo "== node no-op server"
read -r n n_user n_sys < <(measure "http://127.0.0.1:$port_n/sync/start" "${pids[1]}")
grep -E "Requests/sec|Latency|Non-2xx" "$work/wrk.txt" || true
python3 - "$d" "$d_user" "$d_sys" "$n" "$n_user" "$n_sys" <<'PY'
import sys
d, du, ds, n, nu, ns = map(float, sys.argv[1:])
print(f"syncschedd {d:.0f} req/s; CPU per request: {du:.1f} us user + {ds:.1f} us kernel")
print(f"node no-op {n:.0f} req/s; CPU per request: {nu:.1f} us user + {ns:.1f} us kernel")
print(f"ratios: throughput {d / n:.2f}x; user CPU per request {nu / du:.2f}x less; "
      f"total CPU per request {(nu + ns) / (du + ds):.2f}x less")
PY
