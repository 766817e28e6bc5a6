"""Slowloris from one client against a built syncschedd: before/after figures for
docs/reliability.md ("Daemon under attack").

    python3 tests/daemon/attack/slowloris.py build/src/daemon/syncschedd [read_timeout]

Starts the daemon (default limits, read_timeout as given, 30s by default), opens 2,000
connections from 127.0.0.2 each with a header it never finishes, then asks GET /health 20 times
from 127.0.0.1 on new connections, and prints: the statuses of those, how many attack
connections were held and refused, when the held ones were cut, and the refusal log lines.
Needs ~2,100 open files (ulimit -n) and a loopback that answers 127.0.0.2 (Linux does).
"""
import json, os, socket, subprocess, sys, time, tempfile
binary = sys.argv[1]
d = tempfile.mkdtemp()
cfg = {"listen": "127.0.0.1:0", "database": ":memory:", "api_keys": [{"key": "k", "scopes": ["*"]}],
       "limits": {"read_timeout": sys.argv[2] if len(sys.argv) > 2 else "30s"}}
open(d + "/c.json", "w").write(json.dumps(cfg))
log = open(d + "/log", "w")
p = subprocess.Popen([binary, "--config", d + "/c.json"], stderr=log)
port = None
for _ in range(200):
    for line in open(d + "/log"):
        j = json.loads(line)
        if j.get("msg") == "listening": port = j["port"]
    if port: break
    time.sleep(0.05)
def health():
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    try:
        while True:
            c = s.recv(4096)
            if not c: break
            data += c
    except Exception as e:
        pass
    s.close()
    return data[9:12].decode() if data else "none"
t0 = time.time()
socks = []
for i in range(2000):
    s = socket.socket(); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    socks.append(s)
time.sleep(1)
res = [health() for _ in range(20)]
print("health from 127.0.0.1 during the attack:", {k: res.count(k) for k in set(res)})
# time until held sockets are cut
import select
held = []
for s in socks:
    s.setblocking(False)
    try:
        d0 = s.recv(4096)
        if not d0: continue
    except BlockingIOError:
        held.append(s); continue
    except ConnectionResetError:
        continue
print("held:", len(held), "refused/answered:", 2000 - len(held))
deadline = time.time() + 90
open_ = set(held)
poller = select.poll()
byfd = {s.fileno(): s for s in held}
for s in held: poller.register(s, select.POLLIN)
while open_ and time.time() < deadline:
    for fd, ev in poller.poll(1000):
        s = byfd[fd]
        try:
            if not s.recv(4096): open_.discard(s); poller.unregister(fd)
        except Exception:
            open_.discard(s); poller.unregister(fd)
print("held sockets cut after %.1f s (%d still open)" % (time.time() - t0, len(open_)))
p.terminate(); p.wait()
lines = [json.loads(l) for l in open(d + "/log")]
print("log lines:", len(lines), "refusal lines:", sum(1 for l in lines if l.get("msg") == "connections refused"))
