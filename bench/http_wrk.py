"""Governed FHIR searches over HTTP, measured with `wrk` (issue 16, P3).

    python bench/http_wrk.py --quick                          # 60 patients, c=1 and 16, 5 s each
    python bench/http_wrk.py --patients 1000 --duration 20 --json docs/bench-results/http-wrk.json
    python bench/http_wrk.py --viewer clinician --profile     # + py-spy of the server under c=16

Builds a fresh database (PostgreSQL by default, `--backend sqlite` for the embedded store), loads
the demo care system through the product's own path, starts `sharedcare serve` as a subprocess
and drives it with Debian's `wrk` (C, one thread per two connections), so the load generator
costs the server almost nothing. The mix is bench/run.py's four clinician searches (NHS number,
name + birthdate, Observation patient + code + date range, Encounter patient + date), round robin
from a Lua script, as a partner system (system token of the broadest direct-care agreement's
first party) or as the GP persona (a user token: relationship-checked). Every request is
governed and audited; the script checks the audit trail grew by exactly one event a request.

`--mix clinicians` is issue 16's R5 instead: 50 clinicians at once (`--concurrency 50`, three
minutes with `--duration 180`), each a wrk connection that waits a random 0-1 s (`--think-ms`)
before each request, the GP persona's user token, a mix per visible patient of find the patient
by NHS number, the patient view page (`/patients/{id}`, the session cookie), `$everything` and
the Observation search. wrk's latency excludes the think time.

`--profile` samples the server with py-spy (`pip install py-spy`; not a project dependency)
holding the GIL only, and prints the functions with the largest inclusive share.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import Server, fresh_backend, machine
from run import accesses, http_spec, load, plans_for, visible_patients, warm_validators

LUA = """local paths = {%s}
local i = 0
wrk.headers["Authorization"] = "Bearer %s"
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format("p95_us %%d\\n", latency:percentile(95)))
end
"""

# R5: each connection is a clinician who thinks 0..N ms before each request.
THINK = """wrk.headers["Cookie"] = "%s=%s"
math.randomseed(os.time())
delay = function()
  return math.random(0, %d)
end
"""


def clinician_paths(plans: dict[str, list], limit: int) -> list[str]:
    """Per patient: find them by NHS number, open their page, their `$everything`, then the
    Observation search -- a clinician's round, patients interleaved."""
    from urllib.parse import urlencode

    out = []
    for j, obs in enumerate(plans.get("observation_code_date", [])[:limit]):
        pid = dict(obs)["patient"].split("/", 1)[1]
        nhs = plans["patient_nhs"][j % len(plans["patient_nhs"])]
        out += [f"/fhir/Patient?{urlencode(nhs)}", f"/patients/{pid}",
                f"/fhir/Patient/{pid}/$everything", f"/fhir/Observation?{urlencode(obs)}"]
    return out


def wrk(script: Path, base: str, connections: int, seconds: int) -> dict:
    out = subprocess.run(
        ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(script), base], capture_output=True, text=True, check=True).stdout
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def ms(text: str) -> float:
        value, u = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return round(float(value) * unit[u], 2)

    lat = {f"p{q}": ms(v) for q, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE)}
    p95 = re.search(r"^p95_us (\d+)", out, re.MULTILINE)
    if p95:
        lat["p95"] = round(int(p95.group(1)) / 1000, 2)
    done = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"connections": connections, "requests": done,
            "req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "latency_ms": lat, "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else None}


def cpu_seconds(root: int, db_pids: set[int]) -> dict:
    """CPU time used so far (user + system) by the server (the process and its children, so
    `--workers` counts) and by the PostgreSQL backends serving this database and its WAL
    writer: with the load generator, the database and other work sharing two cores, CPU per
    request is the figure that load moves least."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for pid, raw in proc_files("stat"):
        f = raw[raw.rindex(")") + 2:].split()  # the fields after the command name
        stats[pid] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)  # ppid, utime + stime
    family = {root}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in stats.items() if ppid in family} - family
        family |= more
        grew = bool(more)
    server = sum(stats[p][1] for p in family if p in stats)
    return {"server": server, **{p: stats[p][1] for p in db_pids if p in stats}}


def proc_files(name: str):
    """(pid, text of /proc/PID/<name>) for every process still there to be read."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                yield int(d.name), (d / name).read_text()
            except OSError:
                continue


def database_pids(sc) -> set[int]:
    """The PostgreSQL processes working for this database (its backends, the WAL writer)
    (this query's own backend too: it is idle while the load runs)."""
    if sc.engine.dialect.name != "postgresql":
        return set()
    with sc.engine.connect() as conn:
        return set(conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "OR backend_type = 'walwriter'").scalars())


def audit_count(sc) -> int:
    from sqlalchemy import func, select

    from sharedcare.governance.schema import audit_event

    with sc.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(audit_event)).scalar()


def profile_summary(raw: Path, top: int) -> list[tuple[float, str]]:
    """Inclusive share of each function in py-spy's raw (collapsed) stacks."""
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0]
            where = frame.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
            key = f"{name} [{where}]"
            if key not in seen:
                seen.add(key)
                inclusive[key] += int(n)
    return [(round(100 * v / max(total, 1), 1), k) for k, v in inclusive.most_common(top)]


def write_scripts(folder: Path, paths: list[str], token: str, think_ms: int | None = None
                  ) -> tuple[Path, Path]:
    """The wrk script for `paths` round robin with the token, and a warm-up script. With
    `think_ms` (the clinicians mix) the session cookie is sent too (the patient view is a page)
    and each connection waits 0..think_ms before a request; the warm-up does not wait."""
    script = folder / "mix.lua"
    script.write_text(LUA % (",".join(json.dumps(p) for p in paths), token))
    if think_ms is None:
        return script, script
    from sharedcare.web.core import SESSION_COOKIE

    warm = folder / "warm.lua"
    warm.write_text(script.read_text() + THINK % (SESSION_COOKIE, token, 0))
    with script.open("a") as f:
        f.write(THINK % (SESSION_COOKIE, token, think_ms))
    return script, warm


def measure_level(sc, server, script: Path, connections: int, seconds: int,
                  spy_to: Path | None = None) -> dict:
    """One wrk run against `server`: throughput and latency (wrk's), CPU a request of the
    server and its database, and whether every request left exactly one audit event."""
    base = server.base.rsplit("/fhir", 1)[0]
    before = audit_count(sc)
    spy = None
    if spy_to is not None:
        spy = subprocess.Popen(
            [shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
             "record", "-p", str(server.pid), "-d", str(seconds),
             "-r", "200", "--gil", "-f", "raw", "-o", str(spy_to)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    cpu0 = cpu_seconds(server.pid, database_pids(sc))
    level = wrk(script, base, connections, seconds)
    # Backends opened during the level count from their start; none closes (the server's
    # pool keeps them), so none is lost.
    cpu1 = cpu_seconds(server.pid, database_pids(sc))
    per = max(level["requests"], 1) / 1000
    level["cpu_ms_per_request"] = {
        "server": round((cpu1.pop("server") - cpu0.pop("server")) / per, 2),
        "postgres": round(sum(t - cpu0.get(p, 0.0) for p, t in cpu1.items()) / per, 2)}
    if spy:
        spy.wait()
        level["profile_top"] = profile_summary(spy_to, 80)
    time.sleep(1)  # requests still in flight are answered and audited
    level["audit_events"] = audit_count(sc) - before
    # wrk stops with up to c requests in flight: the server still answers and audits them,
    # but wrk does not count them.
    level["one_audit_event_a_request"] = (
        level["requests"] <= level["audit_events"] <= level["requests"] + connections)
    level["load_avg_1m"] = round(os.getloadavg()[0], 2)
    level["server_peak_rss_mb"] = peak_rss_mb(server.pid)
    return level


def peak_rss_mb(root: int) -> float:
    """The largest resident set the server's processes have had so far (VmHWM), in MB."""
    peak = 0
    for pid, status in proc_files("status"):
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if pid == root or int(fields.get("PPid", "0").strip() or 0) == root:
            peak = max(peak, int(fields.get("VmHWM", "0 kB").split()[0]))
    return round(peak / 1024, 1)


def describe(level: dict) -> str:
    lat, c = level["latency_ms"], level["connections"]
    return (f"c={c:<3} {level['req_s']:8.1f} req/s  p50 {lat.get('p50')} ms  "
            f"p90 {lat.get('p90')} ms  p95 {lat.get('p95')} ms  p99 {lat.get('p99')} ms  "
            f"non-2xx {level['non_2xx']}  audit events {level['audit_events']} "
            f"for {level['requests']} requests "
            f"(+{c} in flight at most: {level['one_audit_event_a_request']})  "
            f"load {level['load_avg_1m']}  CPU ms a request: server "
            f"{level['cpu_ms_per_request']['server']}, "
            f"PostgreSQL {level['cpu_ms_per_request']['postgres']}  "
            f"server peak RSS {level['server_peak_rss_mb']} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="postgresql", choices=["postgresql", "sqlite"])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--duration", type=int, default=10, help="seconds per concurrency level")
    ap.add_argument("--viewer", default="system", choices=["system", "clinician"])
    ap.add_argument("--mix", default="searches", choices=["searches", "clinicians"],
                    help="clinicians: issue 16's R5 (GP persona, think time, view + $everything)")
    ap.add_argument("--think-ms", type=int, default=1000, help="--mix clinicians: max think time")
    ap.add_argument("--only", help="only the requests whose path contains this (one kind)")
    ap.add_argument("--workers", type=int, default=1, help="sharedcare serve --workers")
    ap.add_argument("--profile", action="store_true", help="py-spy the server at the last level")
    ap.add_argument("--quick", action="store_true", help="60 patients, 5 s a level")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.patients, args.duration = 60, 5
    if args.mix == "clinicians":
        args.viewer = "clinician"
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    levels = [int(c) for c in args.concurrency.split(",")]
    from sharedcare.app import SharedCare
    from sharedcare.demo import generate

    rng = random.Random(args.seed)
    result: dict = {"machine": machine(), "backend": args.backend, "patients": args.patients,
                    "viewer": args.viewer, "workers": args.workers, "mix": args.mix,
                    "levels": []}
    with fresh_backend(args.backend) as be, tempfile.TemporaryDirectory() as tmp:
        sc = SharedCare.open(be.url, be.data_dir)
        warm_validators()
        cs = generate(args.seed, args.patients)
        acc = accesses(sc, cs)
        load(sc, cs, None, acc["system"]["access"].ods)
        if args.backend == "postgresql":
            with sc.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
        sc.governance.forget_agreements()
        acc = accesses(sc, cs)
        viewer = acc[args.viewer]["access"]
        result["who"] = acc[args.viewer]["describe"]
        plans = plans_for(cs, set(visible_patients(sc, viewer)), 30, rng)
        if args.viewer == "system":
            token = sc.governance.issue_system_token("bench-wrk", viewer.ods)
        else:
            token = sc.governance.issue_token(viewer.username, viewer.ods, viewer.role)
        extra = ("--workers", str(args.workers)) if args.workers > 1 else ()
        with Server(be.url, be.data_dir, extra_args=extra) as server:
            spec = http_spec(server.base, token, plans, 30)
            paths = ([r["path"] for r in spec["requests"]] if args.mix == "searches"
                     else clinician_paths(plans, 30))
            paths = [p for p in paths if not args.only or args.only in p]
            script, warm = write_scripts(Path(tmp), paths, token,
                                         args.think_ms if args.mix == "clinicians" else None)
            if os.environ.get("BENCH_KEEP_LUA"):
                shutil.copy(script, os.environ["BENCH_KEEP_LUA"])
            wrk(warm, spec["base"], 2, 2)  # warm the server's caches and connections
            time.sleep(1)  # let the warm-up's last requests be answered and audited
            for c in levels:
                spy = Path(tmp) / "spy.txt" if args.profile and c == levels[-1] else None
                level = measure_level(sc, server, script, c, args.duration, spy)
                result["levels"].append(level)
                print(describe(level))
                for share, name in level.get("profile_top", [])[:80]:
                    print(f"    {share:5.1f}%  {name}")
        sc.engine.dispose()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
