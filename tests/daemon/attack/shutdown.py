"""Clients during a shutdown, against a built syncschedd: before/after figures for
docs/reliability.md ("Daemon under attack").

    python3 tests/daemon/attack/shutdown.py build/src/daemon/syncschedd [trials]

Each trial starts the daemon with a run that ignores SIGTERM (so the shutdown grace lasts),
sends SIGTERM, and 0.3 s later connects 20 clients asking GET /health with a 1 s timeout:
each is refused, answered or hung. A second SIGTERM ends the trial.
"""
import json, os, signal, socket, subprocess, sys, time, tempfile
binary = sys.argv[1]
d = tempfile.mkdtemp()
cfg = {"listen": "127.0.0.1:0", "database": d + "/db", "api_keys": [{"key": "k", "scopes": ["*"]}],
       "shutdown_grace": "20s", "kill_grace": "1s",
       "integrations": {"g": {"syncs": {"hold": {"runs": "every 1h", "command": ["/bin/sh", "-c", "trap '' TERM; sleep 60"]}},
                              "connections": ["acme"]}}}
open(d + "/c.json", "w").write(json.dumps(cfg))
results = {"refused": 0, "answered": 0, "hung": 0}
for trial in range(int(sys.argv[2]) if len(sys.argv) > 2 else 5):
    log = open(d + "/log", "w")
    if os.path.exists(d + "/db"): os.remove(d + "/db")
    p = subprocess.Popen([binary, "--config", d + "/c.json"], stderr=log)
    port = None
    for _ in range(400):
        for line in open(d + "/log"):
            j = json.loads(line)
            if j.get("msg") == "listening": port = j["port"]
            if j.get("msg") == "run started": started = True
        if port and "run started" in open(d + "/log").read(): break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    for i in range(20):
        s = socket.socket(); s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(100)
            results["answered" if data else "refused"] += 1
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
            results["refused"] += 1
        except socket.timeout:
            results["hung"] += 1
        s.close()
    p.send_signal(signal.SIGTERM); p.wait()
print(results)
