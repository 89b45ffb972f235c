"""Property test: one person, several Patient records -- every governed read follows the person.

A shared care record holds a person as each partner's own Patient (its own id, MRN, controller),
joined under a FHIR Person. Each hypothesis example is a random care system of 2-4 people with
1-3 Patient records each, one per partner (the same valid test-range NHS number on some of a
person's records, none on others; identity links the numbered ones on the write path and the
world then writes each Person explicitly), relationships, objections, opt-outs, sensitivity
labels, break-glass and declared relationships recorded against any one of the records, and in
some worlds an unlink (a Person dropping a record, or retired) after loading. The store's
`patients_of_person` must agree with the world's Persons; then every (viewer, resource) pair is
checked against the independent oracle through read, decide, search (set and total), paging,
_include/_revinclude, every patient's compartment search of every type, `subject:mdm`, and every
`$everything` page with its total and withheld count, which are per person.

Default: small. SHAREDCARE_PROPERTY_CASES=large for >= 10,000 checks on SQLite and >= 1,000 on
PostgreSQL; a number N for N SQLite worlds (N/4 on PostgreSQL).
"""

from __future__ import annotations

import os
import uuid
from datetime import date

import pytest
from gov_world import Tally, check_world, load, worlds
from hypothesis import HealthCheck, Phase, given, settings
from oracle import Res, Viewer, World
from sqlalchemy import create_engine, text

from sharedcare.app import SharedCare
from sharedcare.fhir.codes import ODS_SYSTEM

CASES = os.environ.get("SHAREDCARE_PROPERTY_CASES", "")
if CASES == "large":
    WORLDS = {"sqlite": 40, "postgresql": 8}
    TARGET = {"sqlite": 10_000, "postgresql": 1_000}
elif CASES.isdigit():
    WORLDS = {"sqlite": int(CASES), "postgresql": max(1, int(CASES) // 4)}
    TARGET = {"sqlite": 0, "postgresql": 0}
else:
    WORLDS = {"sqlite": 6, "postgresql": 2}
    TARGET = {"sqlite": 2_000, "postgresql": 400}
# Shrinking reloads a database per step: SHAREDCARE_PROPERTY_SHRINK=0 reports the first failure.
PHASES = [Phase.explicit, Phase.generate] + (
    [] if os.environ.get("SHAREDCARE_PROPERTY_SHRINK") == "0" else [Phase.shrink])
TALLY: dict[str, Tally] = {}


def fresh(database_url: str, tmp_path) -> SharedCare:
    """A new SharedCare on an empty database (a new SQLite file, or a wiped PG schema)."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / f'person-{uuid.uuid4().hex[:8]}.sqlite'}"
    else:
        url = database_url
        eng = create_engine(url)
        with eng.begin() as c:
            c.execute(text("DROP SCHEMA public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
        eng.dispose()
    return SharedCare.open(url, tmp_path / f"data-{uuid.uuid4().hex[:8]}")


def test_reads_follow_the_person(database_url, tmp_path):
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    tally = TALLY.setdefault(backend, Tally())
    shapes = {"records": 0, "joined": 0, "unlinked": 0}

    @settings(max_examples=WORLDS[backend], deadline=None, derandomize=True, database=None,
              phases=PHASES,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(worlds(n_viewers=(5, 8), persons=(2, 4)))
    def prop(generated):
        world, viewers = generated
        sc = fresh(database_url, tmp_path)
        try:
            load(sc, world, viewers)
            local = Tally()
            check_world(sc, world, viewers, local, persons=True)
            tally.checks.update(local.checks)
            shapes["records"] += sum(r.type == "Patient" for r in world.resources)
            shapes["joined"] += sum(len(r.patients) > 1 for r in world.resources
                                    if r.type == "Person")
            shapes["unlinked"] += world.unlink is not None
            assert not local.problems, "\n".join(local.problems[:25])
        finally:
            sc.engine.dispose()

    prop()
    print(f"\n[{backend}] person oracle checks: {tally.total} ({shapes}) "
          + ", ".join(f"{k}={v}" for k, v in sorted(tally.checks.items())
                      if not k.startswith(("Patient/", "Observation?", "$everything pat"))))
    assert shapes["joined"], "no world joined two partners' records under one Person"
    assert tally.total >= TARGET[backend]


@pytest.mark.xfail(strict=False, reason="product: Governance.decide() permits a patient-"
                   "compartment resource in no patient's compartment (here a Person whose last "
                   "link was dropped; equally an Observation without a subject) that read and "
                   "search refuse a person for want of a legitimate relationship")
def test_a_person_linking_nobody(database_url, tmp_path):
    """The smallest world the property found: one practice, its registered patient, a Person
    the practice controls linking that Patient; the Person then drops its only link (written
    through the API, not by identity, which would retire it). Read and search refuse the
    practice's clinician (a compartment type with no patient has no legitimate relationship);
    decide must say the same."""
    ods = "A81001"
    world = World(today=date.today(), orgs={ods: "gp-practice"})
    world.resources += [
        Res("Organization", f"org-{ods}", {"resourceType": "Organization", "name": "Practice",
                                           "identifier": [{"system": ODS_SYSTEM, "value": ods}]},
            ods, "other"),
        Res("Patient", "pat-1", {"resourceType": "Patient", "id": "pat-1", "generalPractitioner":
                                 [{"reference": f"Organization/org-{ods}"}]},
            ods, "demographics", (), "pat-1"),
        Res("Person", "person-1", {"resourceType": "Person", "id": "person-1",
                                   "link": [{"target": {"reference": "Patient/pat-1"}}]},
            ods, "other", (), None, ("pat-1",))]
    world.unlink = ("person-1", "pat-1")
    viewers = [Viewer(f"clinician.direct-care@{ods}", ods, "clinician")]
    sc = fresh(database_url, tmp_path)
    try:
        load(sc, world, viewers)
        tally = Tally()
        check_world(sc, world, viewers, tally, persons=True)
        assert not tally.problems, "\n".join(tally.problems)
    finally:
        sc.engine.dispose()
