"""Two writers linking records to one Person at the same time keep both links.

The identity hook reads the Person before the write unit locks its rows (PostgreSQL runs writers
side by side; SQLite's BEGIN IMMEDIATE serialises them before the hook reads). If another writer
changes the Person in that window, the unit is done again on top of it (WriteOp.read_version ->
StaleRead -> Store.run_write_unit) instead of writing a Person built from the stale read, which
would drop the other writer's link."""

from __future__ import annotations

from sharedcare.fhir.nhs_number import is_valid
from sharedcare.identity.links import person_id_for_nhs
from sharedcare.store.repository import PermitAll, WriteOp

NHS = "9434765919"
assert is_valid(NHS)


def patient(pid: str, org: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Race"}],
            "meta": {"tag": [{"system": "https://fhir.sharedcare.org.uk/source-organisation",
                              "code": org}]},
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}]}




def linked(store) -> set[str]:
    person = store.read("Person", person_id_for_nhs(NHS), PermitAll()).json()
    return {lk["target"]["reference"] for lk in person.get("link", [])}


def write_during_the_window(store, pid: str, org: str, meanwhile) -> None:
    """Write Patient `pid`; once, after the identity hook has read the Person and before the
    unit locks it, run `meanwhile` (another writer, its own transaction, committed)."""
    fired = []

    def interloper(conn, ops):
        if not fired and any(op.rtype == "Patient" and op.rid == pid for op in ops):
            fired.append(True)
            meanwhile()
        return []

    store.before_write.append(interloper)  # after the identity hook: it has read the Person
    try:
        store.write([WriteOp("PUT", "Patient", pid, patient(pid, org))])
    finally:
        store.before_write.remove(interloper)
    assert fired


def test_a_link_made_meanwhile_is_kept(pg_sc):
    store = pg_sc.store
    store.write([WriteOp("PUT", "Patient", "gp-1", patient("gp-1", "A81001"))])
    assert linked(store) == {"Patient/gp-1"}
    write_during_the_window(
        store, "acute-1", "RXA",
        lambda: store.write([WriteOp("PUT", "Patient", "mh-1", patient("mh-1", "RXB"))]))
    assert linked(store) == {"Patient/gp-1", "Patient/acute-1", "Patient/mh-1"}
    # one version per change, none lost: created, + mh-1, + acute-1 (done again on top)
    history = store.history(PermitAll(), "Person", person_id_for_nhs(NHS))
    assert len(history[0]) == 3
