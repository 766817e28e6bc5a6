#!/usr/bin/env python3
"""Writes docs/benchmarks-report.md and docs/img/*.png from bench/report's raw results.

usage: bench/report_gen.py OUT_DIR DOCS_DIR

OUT_DIR holds runs/*.json (syncsched-bench --json), gbench/*.json (Google Benchmark),
perf/*.top (perf report excerpts) and meta.txt. Standard library only; plots with gnuplot.
"""
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys

OUT, DOCS = sys.argv[1], sys.argv[2]
IMG = os.path.join(DOCS, "img")
os.makedirs(IMG, exist_ok=True)
DAT = os.path.join(OUT, "plots")
os.makedirs(DAT, exist_ok=True)


def load_runs():
    runs = {}
    for path in sorted(glob.glob(os.path.join(OUT, "runs", "*.json"))):
        name = re.sub(r"\.r\d+\.json$", "", os.path.basename(path))
        try:
            with open(path) as f:
                runs.setdefault(name, []).append(json.load(f))
        except (OSError, ValueError):
            pass
    return runs


RUNS = load_runs()
META = {}
if os.path.exists(os.path.join(OUT, "meta.txt")):
    for line in open(os.path.join(OUT, "meta.txt")):
        k, _, v = line.partition(": ")
        META[k.strip()] = v.strip()


def count(n):
    m = {"k": 1000, "M": 1000000}
    return int(n[:-1]) * m[n[-1]] if n[-1] in m else int(n)


def get(j, path):
    for p in path.split("."):
        j = j[p]
    return j


def med(name, path):
    vals = [get(j, path) for j in RUNS.get(name, [])]
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def steady_rate(j, skip_s=2.0):
    """Runs per second of the window. With a warm-up (--warmup: the window begins after the
    start's runs and one round) the whole window's rate; without one (older results), the rate
    after the window's first skip_s seconds (per-second series)."""
    if j.get("warmup", {}).get("mode", "none") != "none":
        return j["runs_per_second"]
    s = j.get("series", [])
    first = next((e for e in s if e["t"] >= skip_s), None)
    last = s[-1] if s else None
    if not first or not last or last["t"] - first["t"] < 1:
        return j["runs_per_second"]
    return (last["runs"] - first["runs"]) / (last["t"] - first["t"])


def med_fn(name, fn):
    vals = [fn(j) for j in RUNS.get(name, [])]
    return statistics.median(vals) if vals else None


def loads(name):
    ls = [j["machine"].get("loadavg1_begin", -1) for j in RUNS.get(name, [])]
    return "/".join(f"{x:.1f}" for x in ls) if ls else "–"


def fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, int) or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def sizes_of(prefix):
    out = set()
    for name in RUNS:
        if name.startswith(prefix):
            out.add(name.rsplit("-", 1)[1])
    return sorted(out, key=count)


def gnuplot(script):
    subprocess.run(["gnuplot"], input=script, text=True, check=False)


def write_dat(fname, rows):
    path = os.path.join(DAT, fname)
    with open(path, "w") as f:
        for r in rows:
            f.write(" ".join("NaN" if v is None else str(v) for v in r) + "\n")
    return path


TERM = 'set terminal pngcairo size 1000,520 font "DejaVu Sans,11"\n' if subprocess.run(
    ["gnuplot", "-e", "set terminal pngcairo"], capture_output=True).returncode == 0 else \
    'set terminal png size 1000,520\n'


def plot_lines(png, title, xlabel, ylabel, series, logx=True, logy=True, extra=""):
    """series: list of (label, [(x, y), ...])."""
    parts = []
    for i, (label, pts) in enumerate(series):
        pts = [(x, y) for x, y in pts if y is not None and (not logy or y > 0)]
        if not pts:
            continue
        path = write_dat(f"{os.path.splitext(png)[0]}-{i}.dat", pts)
        label = label.replace("'", "’")
        parts.append(f"'{path}' using 1:2 with linespoints lw 2 pt 7 title '{label}'")
    if not parts:
        return False
    gnuplot(TERM + f"set output '{os.path.join(IMG, png)}'\n"
            f"set title '{title}'\nset xlabel '{xlabel}'\nset ylabel '{ylabel}'\n"
            "set grid\nset termoption noenhanced\nset key outside right\n"
            + ("set logscale x\n" if logx else "") + ("set logscale y\n" if logy else "")
            + extra + "plot " + ", ".join(parts) + "\n")
    return True


def bend(points):
    """Where a curve bends: the decade over which it grows the most (log-log slope)."""
    pts = [(x, y) for x, y in points if y]
    if len(pts) < 3:
        return None
    slopes = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        slopes.append(((x0, x1), math.log(y1 / y0) / math.log(x1 / x0), y1 / y0))
    best = max(slopes, key=lambda s: s[1])
    flat = min(s[1] for s in slopes)
    return best, flat


def human(n):
    return f"{n // 1000000}M" if n >= 1000000 else f"{n // 1000}k" if n >= 1000 else str(n)


md = []
first = next(iter(RUNS.values()))[0] if RUNS else {"machine": {}}
m = first["machine"]
md.append("# Benchmark report (generated)\n")
md.append("Generated by `bench/report` (`bench/report_gen.py`); do not edit by hand: rerun it. "
          "What the figures mean, where each curve bends and why: `docs/benchmarks.md`, "
          "\"syncsched-bench report\". The tool: `docs/bench-tool.md`.\n")
md.append("| | |\n|---|---|")
md.append(f"| date | {META.get('date', m.get('date', '?'))} |")
md.append(f"| command | `{META.get('command', 'bench/report')}` |")
md.append(f"| commit | {META.get('commit', m.get('commit', '?'))} |")
md.append(f"| machine | {m.get('cpus', '?')} CPUs, {m.get('cpu_model', '?')}, "
          f"{m.get('memory_bytes', 0) / 2**30:.0f} GiB, {m.get('kernel', '?')} |")
md.append(f"| compiler | {m.get('compiler', '?')}, {m.get('build', '?')} |")
md.append(f"| load average (1, 5, 15 min) | begin {META.get('loadavg_begin', '?')}, "
          f"end {META.get('loadavg_end', '?')} |")
md.append("")
md.append("The machine is shared and loaded: absolute figures move from run to run; compare the "
          "ratios, each taken between engines measured in the same run of this script. Each "
          "figure is the median of its repetitions (the `load` column gives the 1-minute load "
          "average at the start of each).\n")

# ---- 1. Cost per fire ----
md.append("## Cost per fire against the number of schedules\n")
md.append("CPU time of the whole process per run (user + system, `cpu_us_per_run`): timer, "
          "dispatch to a worker, the callback (no-op), the outcome, the re-arm. 1-minute "
          "schedules, phase-spread, started at once (their immediate runs count).\n")
md.append("**Virtual time** (`--virtual`: the clock jumps to the next deadline; everything on one "
          "thread; about 1M slots per point, at least 3 periods):\n")
md.append("| schedules | syncsched µs/run | heap µs/run | heap ÷ syncsched | nango µs/run | "
          "nango ÷ syncsched | syncsched runs/s | load |")
md.append("|---|---|---|---|---|---|---|---|")
vsizes = sizes_of("cost-virtual-syncsched-")
cost = {}
for n in vsizes:
    s = med(f"cost-virtual-syncsched-{n}", "cpu.cpu_us_per_run")
    hp = med(f"cost-virtual-heap-{n}", "cpu.cpu_us_per_run")
    ng = med(f"cost-virtual-nango-{n}", "cpu.cpu_us_per_run")
    cost.setdefault("syncsched (virtual)", []).append((count(n), s))
    cost.setdefault("heap (virtual)", []).append((count(n), hp))
    cost.setdefault("nango on SQLite in memory (virtual)", []).append((count(n), ng))
    md.append(f"| {n} | {fmt(s)} | {fmt(hp)} | {ratio(hp, s)} | {fmt(ng)} | {ratio(ng, s)} | "
              f"{fmt(med(f'cost-virtual-syncsched-{n}', 'runs_per_second'))} | "
              f"{loads(f'cost-virtual-syncsched-{n}')} |")
md.append("")
md.append("**Real time**, 50k slots per second whatever the count (the period grows with it: "
          "200 ms at 10k, 20 s at 1M), 2 worker threads:\n")
md.append("| schedules | syncsched µs/run | asio µs/run | asio ÷ syncsched | heap µs/run | "
          "heap ÷ syncsched | syncsched runs/s | load |")
md.append("|---|---|---|---|---|---|---|---|")
for n in sizes_of("cost-real-syncsched-"):
    s = med(f"cost-real-syncsched-{n}", "cpu.cpu_us_per_run")
    a = med(f"cost-real-asio-{n}", "cpu.cpu_us_per_run")
    hp = med(f"cost-real-heap-{n}", "cpu.cpu_us_per_run")
    cost.setdefault("syncsched (real time)", []).append((count(n), s))
    cost.setdefault("asio: a steady_timer each (real time)", []).append((count(n), a))
    cost.setdefault("heap (real time)", []).append((count(n), hp))
    md.append(f"| {n} | {fmt(s)} | {fmt(a)} | {ratio(a, s)} | {fmt(hp)} | {ratio(hp, s)} | "
              f"{fmt(med(f'cost-real-syncsched-{n}', 'runs_per_second'))} | "
              f"{loads(f'cost-real-syncsched-{n}')} |")
md.append("")
if plot_lines("cost-per-fire.png", "CPU per run against schedules (lower is better)",
              "schedules", "CPU µs per run", list(cost.items())):
    md.append("![cost per fire](img/cost-per-fire.png)\n")
bends = []
for label, pts in cost.items():
    b = bend(pts)
    if b:
        (x0, x1), slope, growth = b[0]
        bends.append(f"- {label}: grows most between {human(x0)} and {human(x1)} "
                     f"(×{growth:.2f}, log-log slope {slope:.2f}; flattest segment "
                     f"{b[1]:.2f})")
if bends:
    md.append("Where each curve grows most (computed from the points above):\n")
    md += bends
    md.append("")

# ---- 2. Lateness ----
md.append("## Lateness under load: syncsched and the Nango design\n")
lat = [n for n in RUNS if n.startswith("lateness-")]
if lat:
    md.append("Schedules every minute, phase-spread, on a SQLite file, callbacks of exponential "
              "duration (mean 20 ms), real time; lateness = callback start − slot, over the "
              "scheduled runs (the start's immediate runs excluded).\n")
    md.append("| engine | schedules | runs measured | p50 ms | p90 ms | p99 ms | p99.9 ms | "
              "max ms | CPU µs/run | load |")
    md.append("|---|---|---|---|---|---|---|---|---|---|")
    cdf_series = []
    for name in sorted(lat):
        j = RUNS[name][0]
        lm = j["lateness_ms"]
        md.append(f"| {j['engine']} | {j['config']['schedules']:,} | {lm['count']:,} | "
                  f"{lm['p50']} | {lm['p90']} | {lm['p99']} | {lm['p999']} | {lm['max']} | "
                  f"{fmt(j['cpu']['cpu_us_per_run'])} | {loads(name)} |")
        total = sum(c for _, c in j["lateness_histogram_ms"])
        acc, pts = 0, []
        for lo, c in j["lateness_histogram_ms"]:
            acc += c
            pts.append((lo + 1, acc / total))
        cdf_series.append((f"{j['engine']} ({j['config']['schedules']:,} schedules)", pts))
    md.append("")
    if plot_lines("lateness-cdf.png", "Lateness under load: fraction of runs started within x",
                  "lateness + 1 ms (log scale)", "fraction of runs", cdf_series, logx=True,
                  logy=False, extra="set key bottom right\nset yrange [0:1.02]\n"):
        md.append("![lateness](img/lateness-cdf.png)\n")

# ---- 3. Memory ----
md.append("## Memory per schedule\n")
md.append("Resident memory once the start's immediate runs have all finished, minus before the "
          "setup, per schedule, each read after `malloc_trim(0)` for every engine alike (RSS: what "
          "the host pays, allocator slack included; syncsched's own count of its heap bytes, "
          "`Engine::MemoryBytes`, read at the same moment, beside it).\n")
md.append("| schedules | syncsched RSS B | syncsched engine B | heap B | asio B | nango (SQLite in "
          "memory) B | asio ÷ syncsched |")
md.append("|---|---|---|---|---|---|---|")
mem = {}
allsizes = sorted(set(vsizes) | set(sizes_of("cost-real-syncsched-")), key=count)
for n in allsizes:
    s = med(f"cost-virtual-syncsched-{n}", "bytes_per_schedule") or \
        med(f"cost-real-syncsched-{n}", "bytes_per_schedule")
    se = med(f"cost-virtual-syncsched-{n}", "memory.engine_bytes_per_schedule")
    hp = med(f"cost-virtual-heap-{n}", "bytes_per_schedule")
    a = med(f"cost-real-asio-{n}", "bytes_per_schedule")
    ng = med(f"cost-virtual-nango-{n}", "bytes_per_schedule")
    for label, v in (("syncsched (RSS)", s), ("syncsched (engine heap count)", se), ("heap", hp),
                     ("asio", a), ("nango, SQLite in memory", ng)):
        mem.setdefault(label, []).append((count(n), v))
    md.append(f"| {n} | {fmt(s)} | {fmt(se)} | {fmt(hp)} | {fmt(a)} | {fmt(ng)} | {ratio(a, s)} |")
md.append("")
if plot_lines("memory-per-schedule.png", "Memory per schedule", "schedules", "bytes per schedule",
              list(mem.items())):
    md.append("![memory](img/memory-per-schedule.png)\n")

# ---- 4. Durable runs/s ----
md.append("## Durable runs per second against the number of schedules\n")
md.append("Phase-spread schedules with a period of N / 400k seconds (a demand of ~400k slots/s, "
          "more than any engine here sustains, so the figure is each one's ceiling), no-op "
          "callbacks; the window (10 s, 30 s at 1M) begins once the start's immediate runs have "
          "finished, one more period has passed and a scheduled run has started "
          "(`--warmup round`, at most `--warmup-limit 120s`: the steady state, not the start's "
          "burst). "
          "syncsched on a SQLite file commits every run's dispatch and outcome; the same in memory "
          "is its ceiling; nango on a SQLite file is the Nango design's.\n")
md.append("| schedules | syncsched file runs/s | syncsched memory runs/s | file ÷ memory | "
          "nango file runs/s | syncsched file ÷ nango | load |")
md.append("|---|---|---|---|---|---|---|")
dur = {}
for n in sizes_of("durable-syncsched-file-"):
    f = med_fn(f"durable-syncsched-file-{n}", steady_rate)
    mm = med_fn(f"durable-syncsched-memory-{n}", steady_rate)
    ng = med_fn(f"durable-nango-file-{n}", steady_rate)
    dur.setdefault("syncsched, SQLite file", []).append((count(n), f))
    dur.setdefault("syncsched, memory (its ceiling)", []).append((count(n), mm))
    dur.setdefault("nango design, SQLite file", []).append((count(n), ng))
    md.append(f"| {n} | {fmt(f)} | {fmt(mm)} | {ratio(f, mm)} | {fmt(ng)} | {ratio(f, ng)} | "
              f"{loads(f'durable-syncsched-file-{n}')} |")
md.append("")
if plot_lines("durable-runs-per-second.png", "Durable runs per second (saturated)", "schedules",
              "runs per second", list(dur.items())):
    md.append("![durable runs per second](img/durable-runs-per-second.png)\n")

# ---- 5. Start and recovery ----
md.append("## Start and recovery time against the number of schedules\n")
md.append("From the durable runs above: `start` is the Start command(s) over every paused schedule, "
          "committed (syncsched), or the insert of every schedule row (nango); `recovery` reopens "
          "the file after the run (syncsched: `Engine::Open` re-arming every schedule; nango: "
          "open and count, its scheduler keeps no memory).\n")
md.append("| schedules | syncsched start ms | syncsched recovery ms | nango start ms | "
          "nango recovery ms |")
md.append("|---|---|---|---|---|")
sr = {}
for n in sizes_of("durable-syncsched-file-"):
    a = med(f"durable-syncsched-file-{n}", "timing.start_ms")
    b = med(f"durable-syncsched-file-{n}", "timing.recovery_ms")
    c = med(f"durable-nango-file-{n}", "timing.start_ms")
    d = med(f"durable-nango-file-{n}", "timing.recovery_ms")
    sr.setdefault("syncsched start", []).append((count(n), a))
    sr.setdefault("syncsched recovery", []).append((count(n), b))
    sr.setdefault("nango start (insert rows)", []).append((count(n), c))
    sr.setdefault("nango recovery (open)", []).append((count(n), d))
    md.append(f"| {n} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {fmt(d)} |")
md.append("")
if plot_lines("start-recovery.png", "Start and recovery time", "schedules", "milliseconds",
              list(sr.items())):
    md.append("![start and recovery](img/start-recovery.png)\n")

# ---- 6. Google Benchmark ----
gb = {}
for path in glob.glob(os.path.join(OUT, "gbench", "*.json")):
    try:
        for b in json.load(open(path)).get("benchmarks", []):
            gb[b["name"]] = b
    except (OSError, ValueError):
        pass
if gb:
    md.append("## Google Benchmark suites (same run)\n")
    md.append("| benchmark | figure | baseline | figure | ratio |")
    md.append("|---|---|---|---|---|")

    def find(prefix):
        return next((b for k, b in sorted(gb.items()) if k.startswith(prefix)), None)

    for n in ("10000", "1000000"):
        w = find(f"BM_WheelFireRearm/{n}/")
        a = find(f"BM_AsioTimerFireRearm/{n}/")
        if w and a:
            md.append(f"| `BM_WheelFireRearm/{n}` | {w['per_fire'] * 1e9:.1f} ns/fire | "
                      f"`BM_AsioTimerFireRearm/{n}` | {a['per_fire'] * 1e9:.1f} ns/fire | "
                      f"{a['per_fire'] / w['per_fire']:.1f}× |")
    e = find("BM_EngineSteadyFire")
    a = find("BM_AsioTimerSteadyFire")
    if e and a:
        md.append(f"| `BM_EngineSteadyFire/1000000` | {e['items_per_second'] / 1e3:,.0f}k runs/s | "
                  f"`BM_AsioTimerSteadyFire/1000000` (timer only) | "
                  f"{a['items_per_second'] / 1e3:,.0f}k fires/s | "
                  f"{e['items_per_second'] / a['items_per_second']:.2f}× |")
    f1 = find("BM_DurableFire/1/1/")  # on a file, with page checksums
    f0 = find("BM_DurableFire/0/0/")
    if f1 and f0:
        md.append(f"| `BM_DurableFire/1` (file) | {f1['items_per_second'] / 1e3:,.0f}k runs/s | "
                  f"`BM_DurableFire/0` (memory) | {f0['items_per_second'] / 1e3:,.0f}k runs/s | "
                  f"{f1['items_per_second'] / f0['items_per_second']:.2f}× |")
    s1 = find("BM_DurableFireSpread/100000/1/")
    s0 = find("BM_DurableFireSpread/100000/0/")
    if s1 and s0:
        md.append(f"| `BM_DurableFireSpread/100000/1` (file) | "
                  f"{s1['items_per_second'] / 1e3:,.0f}k runs/s | `BM_DurableFireSpread/100000/0` "
                  f"| {s0['items_per_second'] / 1e3:,.0f}k runs/s | "
                  f"{s1['items_per_second'] / s0['items_per_second']:.2f}× |")
    md.append("")

# ---- 7. Profiles ----
tops = sorted(glob.glob(os.path.join(OUT, "perf", "*.top")))
if tops:
    md.append("## Where the time goes at the bends (`perf record -e cpu-clock`)\n")
    md.append("Hardware counters (cache misses) are not available on this VM; these are sampled "
              "CPU profiles of the whole process (the top symbols, self time).\n")
    for t in tops:
        name = os.path.basename(t)[:-4]
        lines = [l for l in open(t).read().splitlines() if l.strip()][:12]
        md.append(f"**{name}**\n\n```\n" + "\n".join(l[:140] for l in lines) + "\n```\n")

with open(os.path.join(DOCS, "benchmarks-report.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("wrote", os.path.join(DOCS, "benchmarks-report.md"))
