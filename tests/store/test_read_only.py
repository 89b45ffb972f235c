"""Reads that write nothing run without a transaction on PostgreSQL (store.db.read_only), so
psycopg keeps their prepared statements and PostgreSQL stops planning every governed query
afresh (issue 16, P3): a read's ROLLBACK made psycopg forget them all."""

from __future__ import annotations

from sqlalchemy import text

from sharedcare.governance.policy import Access
from sharedcare.store.db import read_only
from sharedcare.store.repository import WriteOp


def _prepared(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one()


def test_a_repeated_governed_search_is_prepared_and_stays_prepared(pg_sc):
    gov = pg_sc.governance
    gov.add_organisation("RPRE1", "Prepared Trust", "acute-trust")
    gov.add_agreement("DSA-P", "prepared", ["RPRE1"], ["direct-care"], ["demographics"], "active")
    pg_sc.store.write([WriteOp("PUT", "Patient", f"p{i}", {
        "resourceType": "Patient", "name": [{"family": f"Prepared{i}"}]}) for i in range(5)],
        source_org="RPRE1")
    access = Access(None, "RPRE1", "system", kind="system", client_id="c",
                    scopes=frozenset({"system/*.rs"}))
    for i in range(30):
        page = gov.search(gov.prepare(access), "Patient", [("name", f"Prepared{i % 5}")])
        assert [s.id for s in page.matches] == [f"p{i % 5}"] and page.total == 1
    # Each pooled connection the searches used has them prepared; none was thrown away.
    assert _prepared(pg_sc.store.reads) > 0


def test_reads_see_every_committed_write_and_never_hold_a_transaction(pg_sc):
    reads = pg_sc.store.reads
    with reads.connect() as conn:
        conn.execute(text("SELECT 1"))
        # Autocommit: no transaction stays open between statements ...
        assert conn.connection.driver_connection.info.transaction_status == 0  # IDLE
        pg_sc.store.write([WriteOp("PUT", "Patient", "later", {"resourceType": "Patient"})])
        # ... so a write committed meanwhile is seen by the next statement.
        assert conn.execute(text("SELECT count(*) FROM resource WHERE id = 'later'")
                            ).scalar_one() == 1


def test_only_postgresql_reads_leave_the_transaction(sc):
    # On SQLite a read's BEGIN is what pins its WAL snapshot: it keeps it.
    assert (read_only(sc.engine) is sc.engine) == (sc.engine.dialect.name == "sqlite")
