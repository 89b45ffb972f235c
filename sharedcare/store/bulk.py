"""Many rows into one table inside the caller's transaction, the fastest way each backend has.

PostgreSQL: ``COPY ... FROM STDIN`` on the transaction's own psycopg connection. The rows of a
500-resource Bundle's search index are ~20,000; as an ``executemany`` of INSERTs they cost the
server one statement each and were 43% of ingest time (pyinstrument, Synthea and demo Bundles);
COPY streams them as one statement. Constraints, defaults (``resource_version.seq``) and
partition routing apply as for INSERT, and a failure (a unique key a concurrent writer took
first, a deadlock) is raised as the same SQLAlchemy exception an INSERT would give, so
``Store.run_write_unit`` still recognises a lost race and does the unit again.

SQLite: the driver's ``executemany`` of one prepared INSERT (the fastest path it has).
"""

from __future__ import annotations

from sqlalchemy import Connection, Table
from sqlalchemy.exc import DBAPIError

_SQL: dict[tuple[str, str, tuple[str, ...]], str] = {}

# Below this many rows an INSERT executemany (one pipelined round trip) is cheaper than a COPY
# (two round trips and its setup): an HL7 v2 message's few resources went 20-40% slower over
# MLLP with COPY for every table (bench/mllp_throughput.py, 1 connection).
COPY_MIN_ROWS = 100


def _columns(table: Table, skip: tuple[str, ...]) -> list[str]:
    return [c.name for c in table.columns if c.name not in skip]


def insert_sql(dialect: str, table: Table, skip: tuple[str, ...] = ()) -> str:
    """INSERT with positional placeholders, columns in table order (less `skip`)."""
    key = (dialect, table.name, skip)
    sql = _SQL.get(key)
    if sql is None:
        mark = "?" if dialect == "sqlite" else "%s"
        cols = _columns(table, skip)
        sql = _SQL[key] = (f"INSERT INTO {table.name} ({', '.join(cols)}) "
                           f"VALUES ({', '.join([mark] * len(cols))})")
    return sql


def insert_rows(conn: Connection, table: Table, rows: list[tuple],
                skip: tuple[str, ...] = ()) -> None:
    """`rows` (tuples in the table's column order, less `skip`) into `table`."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect != "postgresql" or len(rows) < COPY_MIN_ROWS:
        conn.exec_driver_sql(insert_sql(dialect, table, skip), rows)
        return
    copy_rows(conn, table.name, _columns(table, skip), rows)


def copy_rows(conn: Connection, table: str, columns: list[str], rows) -> None:
    """PostgreSQL COPY of `rows` into `table` (`columns`), in `conn`'s transaction."""
    import psycopg

    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cur, cur.copy(sql) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
    except psycopg.Error as e:
        # As an INSERT would fail: IntegrityError, OperationalError (deadlock) ... and a
        # connection the server dropped is not handed out by the pool again.
        lost = raw.closed or raw.broken
        if lost:
            conn.invalidate(e)
        raise DBAPIError.instance(sql, None, e, psycopg.Error,
                                  connection_invalidated=lost) from e
