#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets, tests/fuzz/corpus/<target>/, from the test
suite's examples (tests/core/frequency_test.cc, tests/daemon/*_test.cc,
examples/daemon/syncschedd.json) and Nango's OpenAPI description of POST /sync/start (the
request shapes it documents: syncs as names and as {name, variant} objects). Each seed is a
small file named after a hash of its content; rerunning the script rewrites the same files.
libFuzzer adds what it finds to a corpus directory of its own (scripts/fuzz.sh), not here."""
import hashlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def cpp_strings(path):
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    out = []
    for m in re.finditer(r'R"\((.*?)\)"', text, re.S):
        out.append(m.group(1))
    for m in re.finditer(r'(?<![R\w])"((?:[^"\\\n]|\\.)*)"', text):
        try:
            out.append(bytes(m.group(1), "utf-8").decode("unicode_escape"))
        except UnicodeDecodeError:
            pass
    return out


# ---- frequency: every string of the frequency tests that looks like a frequency ----
freq = set()
for s in cpp_strings("tests/core/frequency_test.cc"):
    if 0 < len(s) <= 64 and "not understood" not in s and "out of range" not in s:
        freq.add(s)
freq |= {"every 30min", "every hour", "every half day", "every quarter hour", "every month",
         "1.5h", "2w", "every 1 week", "30 SECONDS", "0.0005s", "9223372036854775807ms"}
for s in sorted(freq):
    put("frequency", s)

# ---- codec: request bodies (Nango's shapes) and queries ----
bodies = [
    # POST /sync/start and /sync/pause (Nango's OpenAPI: names, or {name, variant} objects)
    {"provider_config_key": "github", "connection_id": "acme", "syncs": ["github-issues"]},
    {"provider_config_key": "github", "syncs": [{"name": "github-issues", "variant": "custom-variant"}]},
    {"provider_config_key": "github", "syncs": []},
    {"provider_config_key": "github", "connection_id": None, "syncs": ["issues::v1", {"name": "prs"}]},
    # POST /sync/trigger
    {"provider_config_key": "github", "connection_id": "acme", "syncs": ["issues"],
     "opts": {"reset": True, "emptyCache": False}},
    {"provider_config_key": "github", "syncs": ["issues"], "sync_mode": "full_refresh_and_clear_cache"},
    {"provider_config_key": "github", "syncs": ["issues"], "full_resync": True},
    # PUT /sync/update-connection-frequency
    {"provider_config_key": "github", "connection_id": "acme", "sync_name": "issues",
     "sync_variant": "v1", "frequency": "every 2h"},
    {"provider_config_key": "github", "connection_id": "acme", "sync_name": "issues", "frequency": None},
    # POST /connections, POST|DELETE /sync/{name}/variant/{variant}
    {"provider_config_key": "a~b:c.d@e f_g-h", "connection_id": "conn \u00e9\u00e8"},
]
for b in bodies:
    put("codec", json.dumps(b))
for s in cpp_strings("tests/daemon/codec_test.cc"):
    s = s.strip()
    if s.startswith("{") or s.startswith("["):
        put("codec", s)
for q in ["provider_config_key=github&connection_id=acme&syncs=*",
          "provider_config_key=github&syncs=issues,prs::v1",
          "hours=24&provider_config_key=github", "hours=168",
          "provider_config_key=a%20b+c&connection_id=%C3%A9"]:
    put("codec", q)

# ---- url: request targets ----
for t in ["/sync/status?provider_config_key=github&connection_id=acme&syncs=*",
          "/sync/issues/variant/v1", "/connections/acme%2Fbeta?provider_config_key=github",
          "/schedules/forecast?hours=24", "/a//b/", "/%41%42+c?a=1&&b=&c&d=%2B+x",
          "/health", "/?=", "/bad%zz", "/nul%00"]:
    put("url", t)
for s in cpp_strings("tests/daemon/url_test.cc"):
    if 0 < len(s) <= 200 and ("/" in s or "=" in s or "%" in s):
        put("url", s)

# ---- config ----
put("config", open(os.path.join(ROOT, "examples/daemon/syncschedd.json"), encoding="utf-8").read())
put("config", json.dumps({"database": ":memory:"}))
put("config", json.dumps({
    "listen": "[::1]:0", "database": "x.db", "frequency_bounds": {"min": "1s", "max": "1w"},
    "api_keys": [{"key": "k", "scopes": ["environment:syncs:read"]}],
    "worker_threads": 2, "http_threads": 1, "max_concurrent_runs": 3, "catch_up_per_second": 0.5,
    "default_run_timeout": "2h", "shutdown_grace": "5s", "kill_grace": "1s", "log_level": "debug",
    "limits": {"max_body_bytes": 2048, "max_header_bytes": 1024, "max_connections": 10,
               "max_json_depth": 4, "read_timeout": "10s", "idle_timeout": "1m"},
    "integrations": {"g": {"max_concurrency": 1, "connections": ["a", "b"],
                           "syncs": {"s": {"runs": "every 1.5h", "command": ["/bin/true"],
                                           "heartbeat_timeout": "10s", "timeout": "1h",
                                           "retry": {"max": 3}, "overlap": "skip",
                                           "spread": False, "auto_start": False}}}}}))
for s in cpp_strings("tests/daemon/config_test.cc"):
    s = s.strip()
    if s.startswith("{") and len(s) < 4000:
        put("config", s)

# ---- http: raw requests on one connection ----
def req(method, target, body=None, key="fuzz-admin", extra=""):
    h = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
    if key:
        h += f"Authorization: Bearer {key}\r\n"
    h += extra
    if body is not None:
        b = json.dumps(body) if not isinstance(body, str) else body
        h += f"Content-Type: application/json\r\nContent-Length: {len(b.encode())}\r\n\r\n{b}"
    else:
        h += "\r\n"
    return h

put("http", req("GET", "/health", key=None))
put("http", req("GET", "/metrics", key="fuzz-read"))
put("http", req("POST", "/sync/start", bodies[0]) + req("POST", "/sync/pause", bodies[1]))
put("http", req("POST", "/sync/trigger", bodies[4]))
put("http", req("GET", "/sync/status?provider_config_key=github&connection_id=acme&syncs=*", key="fuzz-read"))
put("http", req("GET", "/schedules/forecast?hours=24&provider_config_key=github"))
put("http", req("PUT", "/sync/update-connection-frequency", bodies[7]))
put("http", req("POST", "/sync/issues/variant/v1", {"provider_config_key": "github", "connection_id": "acme"})
    + req("DELETE", "/sync/issues/variant/v1", {"provider_config_key": "github", "connection_id": "acme"}))
put("http", req("POST", "/connections", {"provider_config_key": "github", "connection_id": "beta"})
    + req("DELETE", "/connections/beta?provider_config_key=github"))
put("http", req("POST", "/sync/start", bodies[0], key=None))
put("http", req("POST", "/sync/start", bodies[0], key="fuzz-read"))
put("http", req("DELETE", "/sync/start"))
put("http", req("POST", "/sync/pause", "{\"provider_config_key\":", extra="Connection: close\r\n"))
put("http", "POST /sync/start HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-admin\r\n"
    "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pro\r\n0\r\n\r\n")
put("http", "GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /health HTTP/1.0\r\n\r\n")
put("http", "POST /sync/start HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    "Content-Length: 2\r\n\r\n{}")
print("corpus written to", OUT, file=sys.stderr)
