"""The record partitioned by patient (store/partitioning.py, migration 0006_partition_by_patient,
docs/scaling.md "Partitioning and Citus"): the key on both backends, hash partitions on
PostgreSQL when SHAREDCARE_PARTITIONS asks for them (the default, 0, keeps plain tables: the
partitioned layout is 3-5x slower on governed searches today, docs/performance.md)."""

from __future__ import annotations

import re
import threading

import pytest
from sqlalchemy import create_engine, text

from sharedcare.store import migrate
from sharedcare.store.partitioning import (
    ENV_PARTITIONS,
    RECORD_TABLES,
    is_partitioned,
    partition_key,
    partitions,
)
from sharedcare.store.repository import PermitAll, Store, WriteOp

# The record tables copied when a test rebuilds a database at an older revision.
COPIED = ("resource", "resource_version", "compartment", "idx_token", "idx_string", "idx_date",
          "idx_number", "idx_reference", "idx_uri", "person_link")
INDEX = ("idx_token", "idx_string", "idx_date", "idx_number", "idx_reference", "idx_uri")


# The partitioned layout these tests are about (the product's default is plain tables).
PARTITIONS = 16


@pytest.fixture(autouse=True)
def partitioned(monkeypatch):
    """Every database these tests open is migrated with PARTITIONS hash partitions (on
    PostgreSQL; read when the migration runs) unless a test sets the count itself."""
    monkeypatch.setenv(ENV_PARTITIONS, str(PARTITIONS))


def patient(pid, family="Smith"):
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}],
            "identifier": [{"system": "urn:test:mrn", "value": pid}]}


def obs(oid, pid, code="1234"):
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": "2024-05-01",
            "valueQuantity": {"value": 5.5, "unit": "mmol/L"}}


def put(store, *resources):
    return store.write([WriteOp("PUT", r["resourceType"], r["id"], r) for r in resources])


def ids(store, rtype, *params, **kw):
    return sorted(m.id for m in store.search(rtype, list(params), PermitAll(), **kw).matches)


def pg(sc) -> bool:
    return sc.engine.dialect.name == "postgresql"


# ------------------------------------------------------------------ the key
def test_the_key_is_the_patient_record():
    assert partition_key("Patient", "p1", {"p1", "p0"}) == "p1"  # a Patient: its own id
    assert partition_key("Observation", "o1", {"p2", "p1"}) == "p1"  # smallest patient
    assert partition_key("Organization", "org1") == "Organization/org1"


def test_every_record_row_carries_its_key(sc):
    put(sc.store, patient("pa"), obs("oa", "pa"),
        {"resourceType": "Organization", "id": "org", "name": "Trust"})
    with sc.engine.connect() as c:
        keys = dict(c.execute(text("SELECT type || '/' || id, partition_key FROM resource")).all())
        assert keys["Patient/pa"] == "pa" and keys["Observation/oa"] == "pa"
        assert keys["Organization/org"] == "Organization/org"
        for t in ("resource_version", *INDEX):
            assert c.execute(text(f"SELECT count(*) FROM {t} x JOIN resource r "
                                  "ON r.pk = x.resource_pk "
                                  "WHERE x.partition_key <> r.partition_key")).scalar() == 0, t
        assert c.execute(text("SELECT count(*) FROM compartment "
                              "WHERE partition_key <> patient_id")).scalar() == 0


# ------------------------------------------------------------------ PostgreSQL layout
def test_record_tables_are_hash_partitioned_when_asked(pg_sc):
    sc = pg_sc
    with sc.engine.connect() as c:
        assert is_partitioned(c)
        for t in RECORD_TABLES:
            strategy, columns = c.execute(text(
                "SELECT p.partstrat, pg_get_partkeydef(p.partrelid) FROM pg_partitioned_table p "
                "WHERE p.partrelid = CAST(:t AS regclass)"), {"t": t}).one()
            assert strategy == "h" and columns == "HASH (partition_key)", t
            assert len(partitions(c, t)) == PARTITIONS, t
        assert c.execute(text("SELECT to_regclass('resource_key')")).scalar() == "resource_key"


def _partitions_of(c, table, where, params):
    return set(c.execute(text(f"SELECT DISTINCT tableoid::regclass::text FROM {table} "
                              f"WHERE {where}"), params).scalars())


def test_one_patients_record_sits_in_one_partition(pg_sc):
    sc = pg_sc
    put(sc.store, patient("pb"), obs("ob1", "pb"), obs("ob2", "pb", "999"))
    put(sc.store, obs("ob1", "pb", "777"))  # a second version
    with sc.engine.connect() as c:
        pks = c.execute(text("SELECT pk FROM resource WHERE partition_key = 'pb'")
                        ).scalars().all()
        assert len(pks) == 3
        where, params = "resource_pk = ANY(:pks)", {"pks": pks}
        homes = _partitions_of(c, "resource", "pk = ANY(:pks)", params)
        assert len(homes) == 1
        (home,) = homes
        suffix = home.rsplit("_", 1)[1]  # resource_p7 -> p7: the same remainder everywhere
        for t in ("resource_version", *INDEX, "resource_text"):
            found = _partitions_of(c, t, where, params)
            assert found <= {f"{t}_{suffix}"}, (t, found)
        assert _partitions_of(c, "resource_version", where, params) == {
            f"resource_version_{suffix}"}
        assert _partitions_of(c, "compartment", "patient_id = 'pb'", {}) == {
            f"compartment_{suffix}"}


def test_a_compartment_lookup_reads_one_partition(pg_sc):
    """EXPLAIN of the compartment lookup behind $everything and Patient/x/* searches: the key
    in the predicate leaves one partition of compartment (docs/scaling.md shows this plan)."""
    sc = pg_sc
    from sqlalchemy import select

    from sharedcare.store.repository import in_compartments
    from sharedcare.store.schema import resource

    put(sc.store, patient("pc"), obs("oc", "pc"))
    stmt = select(resource.c.pk).where(resource.c.pk.in_(in_compartments(["pc"])))
    with sc.engine.connect() as c:
        sql = str(stmt.compile(c, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(c.exec_driver_sql("EXPLAIN (COSTS OFF) " + sql).scalars())
    scanned = set(re.findall(r" on (compartment_p\d+)\b", plan))
    assert len(scanned) == 1, plan
    assert sc.store.everything("pc", PermitAll())[1] == 2


def test_a_read_by_id_reads_one_partition(pg_sc):
    """resource_key gives the partition; PostgreSQL prunes the others as the statement runs."""
    sc = pg_sc
    from sqlalchemy import select

    from sharedcare.store.schema import resource

    put(sc.store, patient("pg1"), obs("og1", "pg1"), patient("pg2"), obs("og2", "pg2"))
    stmt = select(resource.c.pk).where(*sc.store._by_id("Observation", "og1"))
    with sc.engine.connect() as c:
        sql = str(stmt.compile(c, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(c.exec_driver_sql(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql).scalars())
    scans = re.findall(r" on (resource_p\d+) .*\((never executed|actual rows=\d+)", plan)
    assert len(scans) == PARTITIONS, plan
    assert len([s for s in scans if s[1] != "never executed"]) == 1, plan
    assert sc.store.read("Observation", "og1", PermitAll()).version == 1


def test_moving_a_resource_to_another_patient_moves_its_rows(sc):
    put(sc.store, patient("pd"), patient("pe"), obs("od", "pd"))
    put(sc.store, obs("od", "pe", "4321"))  # the subject corrected to another patient
    with sc.engine.connect() as c:
        pk, key = c.execute(text("SELECT pk, partition_key FROM resource "
                                 "WHERE type = 'Observation' AND id = 'od'")).one()
        assert key == "pe"
        assert set(c.execute(text("SELECT partition_key FROM resource_version "
                                  "WHERE resource_pk = :pk"), {"pk": pk}).scalars()) == {"pe"}
        for t in INDEX:
            assert set(c.execute(text(f"SELECT partition_key FROM {t} WHERE resource_pk = :pk"),
                                 {"pk": pk}).scalars()) <= {"pe"}, t
        if pg(sc):
            assert c.execute(text("SELECT partition_key FROM resource_key "
                                  "WHERE type = 'Observation' AND id = 'od'")).scalar() == "pe"
            pe = _partitions_of(c, "resource", "id = 'pe'", {})
            assert _partitions_of(c, "resource", "id = 'od'", {}) == pe
            suffix = next(iter(pe)).rsplit("_", 1)[1]
            assert _partitions_of(c, "resource_version", "resource_pk = :pk", {"pk": pk}) == {
                f"resource_version_{suffix}"}
    assert ids(sc.store, "Observation", ("subject", "Patient/pe")) == ["od"]
    assert ids(sc.store, "Observation", ("subject", "Patient/pd")) == []
    assert ids(sc.store, "Observation", ("code", "4321")) == ["od"]
    assert [s.version for _m, s, _t in sc.store.history(PermitAll(), "Observation", "od")[0]
            ] == [2, 1]
    assert sc.store.vread("Observation", "od", 1, PermitAll()).json()["subject"] == {
        "reference": "Patient/pd"}
    assert [m.id for m in sc.store.everything("pe", PermitAll())[0]] == ["pe", "od"]
    # a deletion keeps the key; the tombstone answers 410
    sc.store.write([WriteOp("DELETE", "Observation", "od", None)])
    with pytest.raises(Exception) as e:
        sc.store.read("Observation", "od", PermitAll())
    assert getattr(e.value, "status", None) == 410


def test_a_binary_secured_by_a_document_joins_its_patients_partition(sc):
    """Governance puts such a Binary in the document's patients' compartment after the store
    indexed it (policy.secure_binaries); it moves to that record's partition as well."""
    put(sc.store, patient("pf"), {
        "resourceType": "DocumentReference", "id": "df", "status": "current",
        "subject": {"reference": "Patient/pf"},
        "content": [{"attachment": {"contentType": "application/pdf"}}]})
    put(sc.store, {"resourceType": "Binary", "id": "bf", "contentType": "application/pdf",
                   "securityContext": {"reference": "DocumentReference/df"}, "data": "JVBERg=="})
    with sc.engine.connect() as c:
        pk, key = c.execute(text("SELECT pk, partition_key FROM resource "
                                 "WHERE type = 'Binary' AND id = 'bf'")).one()
        assert key == "pf"
        assert set(c.execute(text("SELECT partition_key FROM resource_version "
                                  "WHERE resource_pk = :pk"), {"pk": pk}).scalars()) == {"pf"}
        assert set(c.execute(text("SELECT partition_key FROM compartment "
                                  "WHERE resource_pk = :pk"), {"pk": pk}).scalars()) == {"pf"}
        if pg(sc):
            assert c.execute(text("SELECT partition_key FROM resource_key "
                                  "WHERE type = 'Binary' AND id = 'bf'")).scalar() == "pf"
            assert _partitions_of(c, "resource", "pk = :pk", {"pk": pk}) == \
                _partitions_of(c, "resource", "id = 'pf'", {})
    assert sc.store.read("Binary", "bf", PermitAll()).version == 1
    assert "bf" in [m.id for m in sc.store.everything("pf", PermitAll())[0]]
    put(sc.store, {"resourceType": "Binary", "id": "bf", "contentType": "application/pdf",
                   "securityContext": {"reference": "DocumentReference/df"}, "data": "JVBERi0="})
    assert sc.store.read("Binary", "bf", PermitAll()).version == 2
    with sc.engine.connect() as c:
        assert c.execute(text("SELECT partition_key FROM resource "
                              "WHERE type = 'Binary' AND id = 'bf'")).scalar() == "pf"


def test_concurrent_creates_of_one_id_end_with_one_resource(sc):
    """Without a unique (type, id) on the partitioned table, resource_key's primary key is what
    makes the second create of the same id fail and be done again as an update."""
    barrier = threading.Barrier(2)
    errors = []

    def create(n):
        try:
            barrier.wait(5)
            put(sc.store, patient("twin", f"Writer{n}"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with sc.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM resource WHERE type = 'Patient' "
                              "AND id = 'twin'")).scalar() == 1
        assert sorted(c.execute(text(
            "SELECT v.version FROM resource_version v JOIN resource r ON r.pk = v.resource_pk "
            "WHERE r.id = 'twin'")).scalars()) == [1, 2]
    assert sc.store.read("Patient", "twin", PermitAll()).version == 2


# ------------------------------------------------------------------ settings and upgrades
@pytest.fixture
def pg_url(pg_database):
    """The run's PostgreSQL database with a clean schema, migrated by the test itself (the
    conftest fixture fails under CI=true when PostgreSQL is unreachable)."""
    from tests.conftest import _clean_schema

    return _clean_schema(pg_database)


def round_trip(store: Store) -> None:
    put(store, patient("rt"), obs("rt-o", "rt"))
    assert store.read("Observation", "rt-o", PermitAll()).version == 1
    put(store, obs("rt-o", "rt", "5678"))
    assert ids(store, "Observation", ("code", "5678")) == ["rt-o"]
    assert ids(store, "Observation", ("patient", "rt")) == ["rt-o"]
    assert [m.id for m in store.everything("rt", PermitAll())[0]] == ["rt", "rt-o"]
    assert store.vread("Observation", "rt-o", 1, PermitAll()).version == 1


@pytest.mark.parametrize("setting", [None, "0"])
def test_plain_tables_by_default_and_with_zero(pg_url, monkeypatch, setting):
    if setting is None:
        monkeypatch.delenv(ENV_PARTITIONS, raising=False)
    else:
        monkeypatch.setenv(ENV_PARTITIONS, setting)
    engine = create_engine(pg_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as c:
            assert not is_partitioned(c)
            assert partitions(c, "resource") == []
            assert c.execute(text("SELECT to_regclass('resource_key')")).scalar() is None
        round_trip(Store(engine))
    finally:
        engine.dispose()


def test_a_partition_count_is_a_setting(pg_url, monkeypatch):
    monkeypatch.setenv(ENV_PARTITIONS, "3")
    engine = create_engine(pg_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as c:
            assert len(partitions(c, "resource")) == 3
            assert len(partitions(c, "idx_token")) == 3
        round_trip(Store(engine))
    finally:
        engine.dispose()


def rebuild_before(engine, revisions: set[str]) -> None:
    """Put the database back as it was before `revisions` (and whatever follows them) ran,
    holding the record it holds now: the record tables are read out, the schema is remade at
    the older revisions and the rows are put back (without the columns the older schema lacks).
    Then `migrate.upgrade` is what a deployment holding data would run."""
    from alembic.script import ScriptDirectory

    with engine.connect() as c:
        saved = {}
        for t in COPIED:
            result = c.exec_driver_sql(f"SELECT * FROM {t}")
            saved[t] = (list(result.keys()), result.all())
    if engine.dialect.name == "postgresql":
        with engine.begin() as c:
            c.exec_driver_sql("DROP SCHEMA public CASCADE")
            c.exec_driver_sql("CREATE SCHEMA public")
    else:
        from pathlib import Path

        engine.dispose()
        path = Path(engine.url.database)
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            f.unlink(missing_ok=True)
    script = ScriptDirectory.from_config(migrate.config(engine))
    targets = set()
    for head in script.get_heads():
        rev = script.get_revision(head)
        while rev is not None and any(
                r.revision in revisions for r in script.iterate_revisions(rev.revision, "base")):
            rev = script.get_revision(rev.down_revision) if rev.down_revision else None
        if rev is not None:
            targets.add(rev.revision)
    for target in sorted(targets):
        migrate.upgrade(engine, target)
    with engine.begin() as c:
        for t in COPIED:
            have = {col["name"] for col in _columns(c, t)}
            names, rows = saved[t]
            keep = [i for i, n in enumerate(names) if n in have]
            if not rows:
                continue
            cols = [names[i] for i in keep]
            mark = "%s" if c.dialect.name == "postgresql" else "?"
            c.exec_driver_sql(f"INSERT INTO {t} ({', '.join(cols)}) VALUES "
                              f"({', '.join([mark] * len(cols))})",
                              [tuple(r[i] for i in keep) for r in rows])
        if c.dialect.name == "postgresql":
            for t, col in (("resource", "pk"), ("resource_version", "seq")):
                c.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{t}', '{col}'), "
                                  f"(SELECT max({col}) FROM {t}))")


def _columns(conn, table):
    from sqlalchemy import inspect

    return inspect(conn).get_columns(table)


def test_upgrading_a_store_that_holds_data(sc):
    """Migration 0006 on a database already holding a record (every running deployment):
    every resource stays readable, searchable and in its patient's partition."""
    put(sc.store, patient("up1"), patient("up2"), obs("uo1", "up1"), obs("uo2", "up2", "42"),
        {"resourceType": "Organization", "id": "uorg", "name": "Upgrade Trust"})
    put(sc.store, obs("uo1", "up1", "43"))
    sc.store.write([WriteOp("DELETE", "Observation", "uo2", None)])
    rebuild_before(sc.engine, {"0006_partition_by_patient"})
    with sc.engine.connect() as c:
        assert "partition_key" not in {col["name"] for col in _columns(c, "resource")}
    migrate.upgrade(sc.engine)
    store = Store(sc.engine)
    with sc.engine.connect() as c:
        assert is_partitioned(c) == pg(sc)
        keys = dict(c.execute(text("SELECT id, partition_key FROM resource")).all())
    assert keys["up1"] == "up1" and keys["uo1"] == "up1" and keys["uorg"] == "Organization/uorg"
    assert store.read("Observation", "uo1", PermitAll()).version == 2
    assert store.vread("Observation", "uo1", 1, PermitAll()).version == 1
    assert ids(store, "Observation", ("code", "43")) == ["uo1"]
    assert ids(store, "Patient", ("family", "Smith")) == ["up1", "up2"]
    assert ids(store, "Organization", ("name", "Upgrade")) == ["uorg"]
    assert [m.id for m in store.everything("up1", PermitAll())[0]] == ["up1", "uo1"]
    with pytest.raises(Exception) as e:
        store.read("Observation", "uo2", PermitAll())
    assert getattr(e.value, "status", None) == 410
    # and it keeps working: new keys continue after the copied rows, updates version on
    round_trip(store)
    put(store, obs("uo1", "up2", "44"))
    assert ids(store, "Observation", ("patient", "up2")) == ["uo1"]
