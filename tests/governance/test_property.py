"""Property test: every governed read path agrees with the independent oracle.

Each hypothesis example is a random care system (2-5 organisations, agreements in every state and
date window, patients with every kind of relationship, closed encounters, objections, opt-outs,
sensitivity labels, break-glass and declared relationships) loaded through the real product onto
a real database; then every (viewer, resource) pair is checked through read, decide, search (result
set and total), keyset paging, _include/_revinclude and every $everything page.
"""

from __future__ import annotations

import os

from gov_world import Tally, check_world, fresh, load, worlds
from hypothesis import HealthCheck, given, settings
from oracle import DIRECT_CARE, Oracle
from starlette.testclient import TestClient

from sharedcare.app import create_app

TALLY: dict[str, Tally] = {}
EXAMPLES = {"sqlite": int(os.environ.get("GOV_EXAMPLES", "24")),
            "postgresql": int(os.environ.get("GOV_PG_EXAMPLES", "4"))}


def test_governed_reads_match_the_oracle(database_url, tmp_path):
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    tally = TALLY.setdefault(backend, Tally())

    @settings(max_examples=EXAMPLES[backend], deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(worlds())
    def prop(generated):
        world, viewers = generated
        sc = fresh(database_url, tmp_path)
        try:
            load(sc, world, viewers)
            local = Tally()
            check_world(sc, world, viewers, local)
            tally.checks.update(local.checks)
            assert not local.problems, "\n".join(local.problems[:25])
        finally:
            sc.engine.dispose()

    prop()
    print(f"\n[{backend}] oracle checks: {tally.total} "
          + ", ".join(f"{k}={v}" for k, v in sorted(tally.checks.items())))
    assert tally.total >= (10_000 if backend == "sqlite" else 1_000)


HTTP_EXAMPLES = {"sqlite": int(os.environ.get("GOV_HTTP_EXAMPLES", "3")), "postgresql": 2}


def test_fhir_api_matches_the_oracle(database_url, tmp_path):
    """The same worlds through the real HTTP API with real tokens: every GET Type/id, every
    type's search (all pages, and total) and every $everything page."""
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    checks = {"n": 0}

    @settings(max_examples=HTTP_EXAMPLES[backend], deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(worlds(n_viewers=(5, 8)))
    def prop(generated):
        world, viewers = generated
        sc = fresh(database_url, tmp_path)
        problems = []
        try:
            load(sc, world, viewers, staff=True)
            gov, oracle = sc.governance, Oracle(world)
            types = sorted({r.type for r in world.resources})
            with TestClient(create_app(sc), base_url="http://testserver") as c:
                for v in viewers:
                    if v.kind == "system":
                        tok = gov.issue_system_token(f"sys-{v.ods}", v.ods, purpose=v.purpose)
                    else:
                        tok = gov.issue_token(v.username, v.ods, v.role, purpose=v.purpose)
                    h = {"Authorization": f"Bearer {tok}"}
                    visible = {r.ref for r in world.resources if oracle.may_see(v, r)}
                    for r in world.resources:
                        status = c.get(f"/fhir/{r.ref}", headers=h).status_code
                        checks["n"] += 1
                        if status != (200 if r.ref in visible else 403):
                            problems.append(f"GET {r.ref} by {v}: {status} "
                                            f"({oracle.verdict(v, r)})")
                    for t in types:
                        url, got, total = f"/fhir/{t}?_count=3", set(), None
                        while url:
                            b = c.get(url, headers=h).json()
                            total = b.get("total") if total is None else total
                            got |= {f"{t}/{e['resource']['id']}" for e in b["entry"]
                                    if e["search"]["mode"] == "match"}
                            url = next((lk["url"] for lk in b["link"]
                                        if lk["relation"] == "next"), None)
                        exp = {r.ref for r in world.resources if r.type == t} & visible
                        checks["n"] += sum(r.type == t for r in world.resources)
                        if got != exp or total != len(exp):
                            problems.append(f"search {t} by {v}: extra {got - exp}, missing "
                                            f"{exp - got}, total {total}")
                    if v.purpose != DIRECT_CARE:
                        continue
                    for p in [r for r in world.resources if r.type == "Patient"]:
                        url, got = f"/fhir/Patient/{p.id}/$everything?_count=2", set()
                        while url:
                            resp = c.get(url, headers=h)
                            if resp.status_code != 200:
                                break
                            b = resp.json()
                            got |= {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                                    for e in b["entry"] if e["search"]["mode"] == "match"}
                            url = next((lk["url"] for lk in b["link"]
                                        if lk["relation"] == "next"), None)
                        comp = {r.ref for r in world.resources if r.patient == p.id}
                        checks["n"] += len(comp)
                        if got - visible:
                            problems.append(f"$everything {p.id} by {v} DISCLOSED "
                                            f"{got - visible}")
                        if resp.status_code == 200 and got != comp & visible:
                            problems.append(f"$everything {p.id} by {v} missing "
                                            f"{(comp & visible) - got}")
            assert not problems, "\n".join(problems[:25])
        finally:
            sc.engine.dispose()

    prop()
    print(f"\n[{backend}] HTTP oracle checks: {checks['n']}")
