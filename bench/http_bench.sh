#!/usr/bin/env bash
# Requests per second of POST /sync/start on the already-started path (keep-alive, 32
# connections, wrk on loopback), beside a no-op Node.js HTTP server answering 200 to everything,
# measured in the same run. Usage: bench/http_bench.sh [BUILD_DIR] [SECONDS]
# The build dir must hold a release build of syncschedd (default: build-rel).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-rel}
secs=${2:-10}
daemon="$build/src/daemon/syncschedd"
[[ -x "$daemon" ]] || { echo "no $daemon: cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release && cmake --build $build"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
command -v node >/dev/null || { echo "node is missing"; exit 1; }

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
  "api_keys": [{"key": "bench-key", "scopes": ["*"]}],
  "integrations": {
    "github": {
      "syncs": {"issues": {"runs": "every 1h", "auto_start": true, "command": ["/bin/true"]}},
      "connections": ["acme"]
    }
  }
}
JSON
"$daemon" --config "$work/config.json" 2>"$work/daemon.log" &
pids+=($!)
node -e '
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

rps() { wrk -t1 -c32 -d"${secs}s" -s "$work/post.lua" "$1" | tee -a "$work/wrk.txt" | awk '/Requests\/sec/ {print $2}'; }
echo "== syncschedd POST /sync/start (already started)"
d=$(rps "http://127.0.0.1:$port_d/sync/start")
echo "== node no-op server"
n=$(rps "http://127.0.0.1:$port_n/sync/start")
grep -E "Requests/sec|Latency|Non-2xx" "$work/wrk.txt" || true
python3 -c "import sys; d,n=float(sys.argv[1]),float(sys.argv[2]); print(f'syncschedd {d:.0f} req/s, node no-op {n:.0f} req/s, ratio {d/n:.2f}x')" "$d" "$n"
