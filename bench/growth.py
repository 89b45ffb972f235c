"""Read-path growth from N to N x F persons on PostgreSQL (issue 8 P4, issues 14 and 16).

    python bench/growth.py --patients 10000 --factor 10 \
        --json docs/bench-results/growth-postgresql.json      # the real run (~20-30 min)
    python bench/growth.py --quick                            # 30 patients x 3, under a minute

What it does:

1. **Base database** `growth_<N>`: the demo care system of N patients loaded through the product's
   own path (`sharedcare.demo.load.load_demo`, as bench/run.py does: validation, indexing,
   relationships, identity, choices, staff), then ANALYZE. `--reuse` keeps and reuses a base
   that is already loaded (the load of 10,000 takes ~15 min on the 2-core machine).
2. **Large database** `growth_<N>_x<F>`: `CREATE DATABASE ... TEMPLATE growth_<N>` (a file copy),
   then every *record* row is cloned F-1 times **in SQL** (one `INSERT ... SELECT ... CROSS JOIN
   generate_series(1, F-1) AS g(k)` per table). Which rows and which columns is worked out from
   the SQLAlchemy metadata by column name and role (`plan_clone`), not from a list of today's
   columns, so a column added later (e.g. a `partition_key` holding a Patient id or "Type/id")
   is carried over and rewritten too:
     - record rows: every resource in some patient's compartment (Patient, Person and all
       clinical types; Organization / Practitioner / PractitionerRole are shared, not cloned),
       and every row of a table that hangs off `resource.pk` (versions, compartment, the index
       tables, full text), or has a `patient_id` column (care relationships, patient choices,
       break glass, person_link, identity queue) for a cloned patient;
     - `resource.pk` and every column pointing at it: + k x offset; other serial keys: fresh
       from their sequences (sequences moved past the new maximum afterwards);
     - every id-like text column (`id`, `*_id`, `*_key`, `source`, `*reference*`, `partition_key`
       ...): value + "-c<k>" **when the value is a cloned resource's id or "Type/id"** (so
       references to shared resources, usernames, ODS codes are left alone);
     - identifiers: NHS numbers map to other valid modulus-11 test-range numbers, unique per
       (person, copy); other identifiers (MRNs ...) get "-c<k>";
     - Patient birth dates move by k x 13 days (index and JSON), so name + birth date is about
       as selective as in a population 10 times larger, not exactly 10 copies of each match;
     - the stored JSON (`content`): its own id, references to cloned resources, its NHS
       number(s) and birth date are rewritten the same way.
   Not cloned: audit history (append-only hash chain; reads only append to it), the
   notification outbox, search snapshots, configuration (organisations, staff, agreements).
   Non-unique indexes are dropped for the copy and rebuilt after it (much faster than
   maintaining them row by row); FK triggers are off for the copy (`session_replication_role`).
   Then ANALYZE, and a check that the clone is real: row counts x F, a cloned patient's
   `$everything` (through governance) has as many entries as its original, and its new NHS
   number finds the clone's records and no one else's.
3. **Measure**, both databases open side by side, in **alternating rounds** (ABBA order within
   each round, so drift and the other engineers' load fall on both sizes): `$everything` all
   pages as a partner system and as the GP persona, the four GP searches of bench/run.py (P3),
   a read by id, `_history` of a Patient, the patient view page (in process, Starlette
   TestClient, as bench/patient_view.py), and optionally HTTP p50 at c=1 (one `sharedcare serve`
   per database, sequential GETs of the four searches). Samples are patients the viewer may see
   (at the large size: originals and clones). p50/p95 per path and size, ratio large/small
   against P4 (<= 1.3x), and the load average per round, go to --json.

Benchmark tooling only; the product does not import this.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import PG_ADMIN_URL, Server, machine, postgres_reachable, summary
from run import (
    NHS,
    RTYPE,
    SEARCH_KINDS,
    accesses,
    everything_all,
    load,
    plans_for,
    visible_patients,
    warm_validators,
)

TARGET = 1.3
BIRTHDATE_STEP_DAYS = 13
# Tables with per-patient rows that are deliberately not cloned, and why.
NOT_CLONED = {
    "audit_event": "append-only, hash-chained audit history; read paths only append to it",
    "audit_anchor": "the head of the audit chain",
    "notify_event": "outbox of past writes' notifications, not read by read paths",
    "search_result": "transient snapshots of sorted searches",
    "notify_inbox": "users' notification inboxes (derived from past events), not records",
}
SKIPPED: dict[str, str] = {}  # filled by plan_clone
CLONE_SUFFIX = re.compile(r"-c[0-9]+$")
# Text columns whose values are resource ids, patient ids or "Type/id" references.
ID_LIKE = re.compile(r"(^id$|_id$|_key$|^source$|reference|^rid$|^target|^partition)")


def log(msg: str) -> None:
    print(f"[growth] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ------------------------------------------------------------------------------ databases
def _admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://"),
                           autocommit=True)


def db_url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _pg(name: str):
    import psycopg

    return psycopg.connect(db_url(name).replace("postgresql+psycopg://", "postgresql://"))


def db_exists(name: str) -> bool:
    with _admin() as c:
        return c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() \
            is not None


def drop_db(name: str) -> None:
    with _admin() as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_db(name: str, template: str | None = None) -> None:
    with _admin() as c:
        c.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))


def db_size(name: str) -> int:
    with _admin() as c:
        return c.execute("SELECT pg_database_size(%s)", (name,)).fetchone()[0]


def analyze(name: str) -> float:
    t = time.perf_counter()
    with _pg(name) as c:
        c.autocommit = True
        c.execute("ANALYZE")
    return time.perf_counter() - t


# ------------------------------------------------------------------------------ base load
def build_base(name: str, data_dir: Path, patients: int, seed: int, reuse: bool,
               warm: bool = True) -> dict:
    """The base database, loaded through the product's own path (bench/run.py's `load`)."""
    from sharedcare.app import SharedCare
    from sharedcare.demo import generate
    from sharedcare.demo.load import already_loaded

    info_file = data_dir / "base_load.json"
    if reuse and db_exists(name):
        sc = SharedCare.open(db_url(name), data_dir)
        try:
            if already_loaded(sc):
                log(f"reusing {name} (already loaded)")
                info = json.loads(info_file.read_text()) if info_file.exists() else {}
                # opening may have migrated it (new layout, rows moved): fresh statistics
                info["analyze_s"] = analyze(name)
                return {"reused": True, **info}
        finally:
            sc.engine.dispose()
        drop_db(name)
    elif db_exists(name):
        drop_db(name)
    create_db(name)
    data_dir.mkdir(parents=True, exist_ok=True)
    sc = SharedCare.open(db_url(name), data_dir)
    try:
        if warm:  # compile every type's validator first, so the ingest rate is not compile time
            warm_validators()
        log(f"loading {patients:,} demo patients into {name} through load_demo")
        t = time.perf_counter()
        ingest = load(sc, generate(seed, patients), None, "")
        info = {"patients": patients, "seed": seed, "load_s": time.perf_counter() - t,
                "resources": ingest["resources"], "resources_per_s": ingest["resources_per_s"]}
    finally:
        sc.engine.dispose()
    info["analyze_s"] = analyze(name)
    info_file.write_text(json.dumps(info))
    return {"reused": False, **info}


# ------------------------------------------------------------------------------ the clone plan
def product_tables() -> list:
    """Every table the product describes: its MetaData objects (the main one, with every
    package's tables registered, and any other, e.g. a layout-only one such as the partitioned
    layout's `resource_key`), in dependency order, one per name."""
    from sqlalchemy import MetaData

    import sharedcare.app  # noqa: F401 - imports every package's schema
    from sharedcare.store import schema

    out: dict[str, Any] = {}
    for md in [v for v in vars(schema).values() if isinstance(v, MetaData)]:
        for t in md.sorted_tables:
            out.setdefault(t.name, t)
    return list(out.values())


def _points_at_resource_pk(t, c, pk) -> bool:
    """A column holding resource.pk: a foreign key to it, `resource_pk`, or another table's
    `pk` that is not that table's own key (e.g. resource_key.pk)."""
    if c is pk or any(fk.column is pk for fk in c.foreign_keys):
        return True
    if not _is_int(c):
        return False
    return c.name == "resource_pk" or (c.name == "pk" and t.name != "resource"
                                       and not c.primary_key)


def _is_int(col) -> bool:
    from sqlalchemy import BigInteger, Integer

    return isinstance(col.type, Integer | BigInteger)


def _is_text(col) -> bool:
    from sqlalchemy import String, Text

    return isinstance(col.type, String | Text)


def plan_clone(tables: list) -> dict[str, dict]:
    """Per table: how its rows are chosen and how each column is rewritten for copy k. Decided
    by column name and role, so a column added later is carried over (and, if id-like, rewritten)."""
    pk = next(t for t in tables if t.name == "resource").c.pk
    plans: dict[str, dict] = {}
    for t in tables:
        cols = {c.name: c for c in t.columns}
        if t.name in NOT_CLONED:
            continue
        to_pk = [c.name for c in t.columns if _points_at_resource_pk(t, c, pk)]
        if t.name == "resource":
            anchor = ("resource", "pk")
        elif to_pk:
            anchor = ("resource_pk", to_pk[0])
        elif "patient_id" in cols:
            anchor = ("patient", "patient_id")
        else:
            continue  # configuration, not a record
        rules: dict[str, str] = {}
        referenced = {fk.column.name for other in tables for c in other.columns
                      for fk in c.foreign_keys if fk.column.table is t}
        for c in t.columns:
            if c.name in to_pk or c is pk:
                rules[c.name] = "shift"
            elif c.primary_key and _is_int(c) and c.autoincrement is not False and \
                    c.name not in referenced and len(t.primary_key.columns) == 1:
                rules[c.name] = "sequence"
            elif c.name == "content" and _is_text(c) and anchor[0] != "patient":
                rules[c.name] = "json"
            elif t.name.startswith("idx_") or {"param", "system", "code"} <= set(cols):
                if c.name == "code" and {"param", "system"} <= set(cols):
                    rules[c.name] = "identifier"
                elif c.name in ("low", "high") and {"param", "type"} <= set(cols) and _is_text(c):
                    rules[c.name] = "birthdate"
                elif _is_text(c) and ID_LIKE.search(c.name):
                    rules[c.name] = "id"
                else:
                    rules[c.name] = "copy"
            elif _is_text(c) and ID_LIKE.search(c.name):
                rules[c.name] = "id"
            else:
                rules[c.name] = "copy"
        if anchor[0] == "patient" and not all(
                rules[c.name] in ("sequence", "id") for c in t.primary_key.columns):
            # e.g. staff (a patient persona's account): its key would repeat in every copy
            SKIPPED[t.name] = "configuration keyed by something other than the patient"
            continue
        plans[t.name] = {"anchor": anchor, "rules": rules}
    return plans


# ------------------------------------------------------------------------------ NHS numbers
def new_nhs_numbers(existing: set[str], n: int, seed: int) -> list[str]:
    """n valid modulus-11 numbers in the synthetic test range, none of them in `existing`."""
    from sharedcare.fhir import nhs_number

    rng = random.Random(seed)
    stems = list(range(999_000_000, 1_000_000_000))
    rng.shuffle(stems)
    out: list[str] = []
    for stem in stems:
        for d in range(10):
            s = f"{stem}{d}"
            if nhs_number.is_valid(s):
                if s not in existing:
                    out.append(s)
                break
        if len(out) >= n:
            return out
    raise RuntimeError("ran out of synthetic NHS numbers")


# ------------------------------------------------------------------------------ cloning
def clone(name: str, factor: int, seed: int) -> dict:
    """Copies 1..factor-1 of every record row, in SQL, in database `name` (a template copy of the
    base). Returns timings, the plan and the verification counts."""
    plans = plan_clone(product_tables())
    copies = factor - 1
    timings: dict[str, float] = {}
    counts_before: dict[str, int] = {}
    counts_after: dict[str, int] = {}
    cloned_source: dict[str, int] = {}
    t_all = time.perf_counter()
    with _pg(name) as c:
        c.execute("SET work_mem = '256MB'")
        c.execute("SET maintenance_work_mem = '512MB'")
        c.execute("SET session_replication_role = replica")  # no FK triggers for the copy
        c.execute("SET synchronous_commit = off")
        tables = [t for t in plans if c.execute(
            "SELECT to_regclass(%s)", (f"public.{t}",)).fetchone()[0]]
        # Columns in the database that the metadata does not know yet (a migration ahead of
        # the code, or the reverse) are reported, not guessed at.
        extra = {}
        for t in tables:
            have = {r[0] for r in c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema='public' "
                "AND table_name=%s", (t,))}
            known = set(plans[t]["rules"])
            if have - known:
                extra[t] = sorted(have - known)
                for col in have - known:  # carry unknown columns, rewritten if id-like
                    plans[t]["rules"][col] = "id" if ID_LIKE.search(col) else "copy"
            for col in known - have:
                del plans[t]["rules"][col]
        # 1. the clone set: resources in some patient's compartment
        t = time.perf_counter()
        c.execute("""CREATE TEMP TABLE g_res AS
                     SELECT r.pk, r.type, r.id FROM resource r
                     WHERE EXISTS (SELECT 1 FROM compartment m WHERE m.resource_pk = r.pk)""")
        c.execute("CREATE UNIQUE INDEX ON g_res (pk)")
        c.execute("""CREATE TEMP TABLE g_keys AS
                     SELECT id AS key FROM g_res UNION SELECT type || '/' || id FROM g_res""")
        c.execute("CREATE UNIQUE INDEX ON g_keys (key)")
        off = c.execute("SELECT coalesce(max(pk), 0) FROM resource").fetchone()[0]
        off = 10 ** len(str(off))  # pk + k * offset: readable, never collides
        # NHS numbers: one new valid number per (number, copy)
        old = [r[0] for r in c.execute(
            "SELECT DISTINCT code FROM idx_token WHERE system = %s AND code IS NOT NULL "
            "AND resource_pk IN (SELECT pk FROM g_res)", (NHS,))]
        every = {r[0] for r in c.execute(
            "SELECT DISTINCT code FROM idx_token WHERE system = %s", (NHS,))}
        fresh = new_nhs_numbers(every, len(old) * copies, seed)
        c.execute("CREATE TEMP TABLE g_nhs (k int, old text, new text, PRIMARY KEY (k, old))")
        with c.cursor().copy("COPY g_nhs (k, old, new) FROM STDIN") as cp:
            i = 0
            for k in range(1, factor):
                for o in old:
                    cp.write_row((k, o, fresh[i]))
                    i += 1
        # per cloned resource: its NHS number(s) and birth date, for the JSON rewrite
        c.execute(f"""CREATE TEMP TABLE g_pat AS
                      SELECT resource_pk AS pk, array_agg(DISTINCT code) AS nhs FROM idx_token
                      WHERE system = '{NHS}' AND resource_pk IN (SELECT pk FROM g_res)
                      GROUP BY resource_pk""")
        c.execute("CREATE UNIQUE INDEX ON g_pat (pk)")
        c.execute("""CREATE TEMP TABLE g_bd AS
                     SELECT DISTINCT ON (resource_pk) resource_pk AS pk, left(low, 10) AS bd
                     FROM idx_date WHERE type = 'Patient' AND param = 'birthdate'
                     AND low ~ '^\\d{4}-\\d{2}-\\d{2}' ORDER BY resource_pk""")
        c.execute("CREATE UNIQUE INDEX ON g_bd (pk)")
        types = [r[0] for r in c.execute("SELECT DISTINCT type FROM g_res ORDER BY 1")]
        # a type whose every row is cloned: references to it in JSON are rewritten by pattern
        full_types = [ty for ty in types if c.execute(
            "SELECT count(*) FROM resource WHERE type = %s AND pk NOT IN (SELECT pk FROM g_res)",
            (ty,)).fetchone()[0] == 0]
        c.execute("ANALYZE g_res; ANALYZE g_keys; ANALYZE g_nhs; ANALYZE g_pat; ANALYZE g_bd")
        c.commit()
        timings["prepare"] = time.perf_counter() - t
        ref_re = "(\"reference\":\"(?:" + "|".join(full_types) + ")/[A-Za-z0-9.-]+)\""

        def expr(table: str, col: str, rule: str) -> str:
            q = f't."{col}"'
            if rule == "shift":
                return f"{q} + g.k * {off}"
            if rule == "id":
                return f"CASE WHEN {q} IN (SELECT key FROM g_keys) THEN {q} || '-c' || g.k ELSE {q} END"
            if rule == "identifier":
                return (f"CASE WHEN t.param NOT LIKE '%identifier' THEN {q} "
                        f"WHEN t.system = '{NHS}' THEN coalesce((SELECT n.new FROM g_nhs n "
                        f"WHERE n.k = g.k AND n.old = {q}), {q}) ELSE {q} || '-c' || g.k END")
            if rule == "birthdate":
                return (f"CASE WHEN t.type = 'Patient' AND t.param = 'birthdate' AND "
                        f"{q} ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}' THEN to_char(left({q}, 10)::date "
                        f"+ g.k * {BIRTHDATE_STEP_DAYS}, 'YYYY-MM-DD') || substr({q}, 11) "
                        f"ELSE {q} END")
            if rule == "json":
                # the copy-independent work (the pattern match) is done once per source row in
                # `tpl` (below), marking where "-c<k>" goes with chr(1), which JSON text never
                # holds raw; per copy only the marker is replaced
                e = f"replace(t.\"__tpl_{col}\", chr(1), '-c' || g.k)"
                # NHS numbers (a Patient or Person holds one, rarely two) and birth date
                for i in (1, 2):
                    e = (f"CASE WHEN t.__nhs[{i}] IS NULL THEN {e} ELSE replace({e}, "
                         f"'\"' || t.__nhs[{i}] || '\"', '\"' || (SELECT n.new FROM g_nhs n "
                         f"WHERE n.k = g.k AND n.old = t.__nhs[{i}]) || '\"') END")
                e = (f"CASE WHEN t.__bd IS NULL THEN {e} ELSE replace({e}, '\"birthDate\":\"' "
                     f"|| t.__bd || '\"', '\"birthDate\":\"' || to_char(t.__bd::date + g.k * "
                     f"{BIRTHDATE_STEP_DAYS}, 'YYYY-MM-DD') || '\"') END")
                return e
            return q

        def tpl(col: str) -> str:
            """The JSON with its own id and references to cloned resources marked."""
            q = f't."{col}"'
            e = (f"replace({q}, '\"id\":\"' || gr.id || '\"', "
                 f"'\"id\":\"' || gr.id || chr(1) || '\"')")
            return f"regexp_replace({e}, '{ref_re}', '\\1' || chr(1) || '\"', 'g')"

        # 2. drop non-unique indexes of the tables we copy into; rebuilt after
        index_defs: list[tuple[str, str]] = []
        for tname in tables:
            for iname, idef in c.execute(
                    "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
                    "AND i.tablename = %s AND i.indexdef NOT LIKE 'CREATE UNIQUE%%'", (tname,)):
                # a partitioned table's index reads "ON ONLY parent": rebuild it on every partition
                index_defs.append((iname, idef.replace(" ON ONLY ", " ON ")))
                c.execute(f'DROP INDEX "{iname}"')
        c.commit()
        # 3. copy, table by table
        for tname in tables:
            plan = plans[tname]
            kind, acol = plan["anchor"]
            counts_before[tname] = c.execute(f'SELECT count(*) FROM "{tname}"').fetchone()[0]
            cols = [col for col, rule in plan["rules"].items() if rule != "sequence"]
            sel = ", ".join(expr(tname, col, plan["rules"][col]) for col in cols)
            if kind == "resource":
                src = "JOIN g_res gr ON gr.pk = t.pk"
            elif kind == "resource_pk":
                src = f'JOIN g_res gr ON gr.pk = t."{acol}"'
            else:
                src = f'JOIN g_keys gk ON gk.key = t."{acol}"'
            n_src = c.execute(f'SELECT count(*) FROM "{tname}" t {src}').fetchone()[0]
            extras = ""
            json_cols = [col for col, rule in plan["rules"].items() if rule == "json"]
            if json_cols:
                src += " LEFT JOIN g_pat gp ON gp.pk = gr.pk LEFT JOIN g_bd gb ON gb.pk = gr.pk"
                extras = ", gp.nhs AS __nhs, gb.bd AS __bd" + "".join(
                    f', {tpl(col)} AS "__tpl_{col}"' for col in json_cols)
            cloned_source[tname] = n_src
            t = time.perf_counter()
            collist = ", ".join(f'"{x}"' for x in cols)
            # the source rows once (MATERIALIZED: the pattern work is not repeated per copy)
            c.execute(f'WITH src AS MATERIALIZED (SELECT t.*{extras} FROM "{tname}" t {src}) '
                      f'INSERT INTO "{tname}" ({collist}) SELECT {sel} FROM src t '
                      f"CROSS JOIN generate_series(1, {copies}) AS g(k)")
            c.commit()
            timings[f"copy {tname}"] = time.perf_counter() - t
            counts_after[tname] = counts_before[tname] + n_src * copies
            log(f"cloned {tname}: {n_src:,} rows x {copies} in {timings[f'copy {tname}']:.0f} s")
        # 4. sequences past the new maxima, indexes back, statistics
        for tname in tables:
            for col, rule in plans[tname]["rules"].items():
                if rule in ("shift", "sequence"):
                    seq = c.execute("SELECT pg_get_serial_sequence(%s, %s)",
                                    (tname, col)).fetchone()[0]
                    if not seq:  # a sequence the column's default names but does not own
                        d = c.execute(
                            "SELECT column_default FROM information_schema.columns WHERE "
                            "table_schema = 'public' AND table_name = %s AND column_name = %s",
                            (tname, col)).fetchone()
                        m = re.search(r"nextval\('([^']+)'", (d or [""])[0] or "")
                        seq = m.group(1) if m else None
                    if seq:
                        c.execute(f'SELECT setval(%s, (SELECT coalesce(max("{col}"), 1) '
                                  f'FROM "{tname}"))', (seq,))
        c.commit()
        t = time.perf_counter()
        for iname, idef in index_defs:
            c.execute(idef)
            c.commit()
        timings["rebuild indexes"] = time.perf_counter() - t
        c.execute("SET session_replication_role = origin")
        real_after = {tn: c.execute(f'SELECT count(*) FROM "{tn}"').fetchone()[0]
                      for tn in tables}
        c.commit()
    timings["analyze"] = analyze(name)
    timings["total"] = time.perf_counter() - t_all
    return {
        "factor": factor,
        "pk_offset": off,
        "types_cloned": types,
        "tables": {tn: {"anchor": plans[tn]["anchor"][0], "rows_before": counts_before[tn],
                        "source_rows": cloned_source[tn], "rows_after": real_after[tn],
                        "expected_after": counts_after[tn],
                        "rules": {k: v for k, v in plans[tn]["rules"].items() if v != "copy"}}
                   for tn in tables},
        "columns_not_in_metadata": extra,
        "not_cloned": {**NOT_CLONED, **SKIPPED},
        "nhs_numbers": {"originals": len(old), "new": len(old) * copies},
        "seconds": timings,
    }


# ------------------------------------------------------------------------------ verification
def verify(small_sc, big_sc, factor: int, acc_big, rng: random.Random) -> dict:
    """The clone is real: counts x factor; a clone's $everything equals its original's; a clone's
    NHS number finds its own records (exactly one where the original's finds one)."""
    from sqlalchemy import func, select

    from sharedcare.store.schema import compartment, idx_token, person_link, resource

    out: dict[str, Any] = {}
    with small_sc.engine.connect() as a, big_sc.engine.connect() as b:
        for label, q in {
            "Patient": select(func.count()).select_from(resource).where(resource.c.type == "Patient"),
            "record resources": select(func.count()).select_from(resource).where(
                resource.c.pk.in_(select(compartment.c.resource_pk))),
            "persons (person_link keys)": select(func.count(person_link.c.person_key.distinct())),
            "NHS numbers": select(func.count(idx_token.c.code.distinct())).where(
                idx_token.c.system == NHS),
        }.items():
            x, y = a.execute(q).scalar_one(), b.execute(q).scalar_one()
            out[label] = {"small": x, "large": y, "ratio": y / x if x else None,
                          "ok": y == factor * x}
    gov = big_sc.governance
    system = acc_big["system"]["access"]
    pats = visible_patients(big_sc, system)
    originals = [p for p in pats if not CLONE_SUFFIX.search(p)]
    rng.shuffle(originals)
    checks = []
    for pid in originals[:5]:
        k = rng.randrange(1, factor)
        e0, _ = everything_all(gov, system, pid, 100)
        e1, _ = everything_all(gov, system, f"{pid}-c{k}", 100)
        checks.append({"everything_original": e0, "everything_clone": e1, "ok": e0 == e1 and e0 > 0})
    out["everything_clone_equals_original"] = checks
    # NHS number of a clone: finds exactly the clone's records
    nhs_checks = []
    with big_sc.engine.connect() as conn:
        for pid in originals[:60]:
            k = rng.randrange(1, factor)
            code = conn.execute(select(idx_token.c.code).join(
                resource, resource.c.pk == idx_token.c.resource_pk).where(
                resource.c.type == "Patient", resource.c.id == f"{pid}-c{k}",
                idx_token.c.system == NHS)).scalar()
            orig = conn.execute(select(idx_token.c.code).join(
                resource, resource.c.pk == idx_token.c.resource_pk).where(
                resource.c.type == "Patient", resource.c.id == pid,
                idx_token.c.system == NHS)).scalar()
            if not code or not orig:
                continue
            from sharedcare.fhir import nhs_number

            p0 = gov.search(gov.prepare(system), "Patient", [("identifier", f"{NHS}|{orig}")])
            p1 = gov.search(gov.prepare(system), "Patient", [("identifier", f"{NHS}|{code}")])
            ids0 = sorted(s.id for s in p0.matches)
            ids1 = sorted(s.id for s in p1.matches)
            nhs_checks.append({
                "matches_original": len(ids0), "matches_clone": len(ids1),
                "valid_mod11": nhs_number.is_valid(code), "differs": code != orig,
                "ok": nhs_number.is_valid(code) and code != orig and len(ids1) == len(ids0)
                and all(i.endswith(f"-c{k}") for i in ids1)})
            if len(nhs_checks) >= 8 and any(x["matches_original"] == 1 for x in nhs_checks):
                break
    out["nhs_search"] = nhs_checks
    out["one_match_checked"] = any(x["matches_clone"] == 1 for x in nhs_checks)
    out["ok"] = (all(v["ok"] for v in out.values() if isinstance(v, dict) and "ok" in v)
                 and all(x["ok"] for x in checks) and bool(nhs_checks)
                 and all(x["ok"] for x in nhs_checks))
    return out


# ------------------------------------------------------------------------------ measurement
def clone_plan(params: list, k: int, nhs_map: dict) -> list:
    """A search plan of an original patient, for its copy k."""
    if k == 0:
        return list(params)
    out = []
    for name, value in params:
        if name == "patient":
            value = f"{value}-c{k}"
        elif name == "identifier" and value.startswith(NHS + "|"):
            new = nhs_map.get((k, value.split("|", 1)[1]))
            if new is None:
                return None
            value = f"{NHS}|{new}"
        elif name == "birthdate":
            from datetime import date, timedelta

            value = (date.fromisoformat(value[:10]) + timedelta(days=k * BIRTHDATE_STEP_DAYS)
                     ).isoformat() + value[10:]
        out.append((name, value))
    return out


class Size:
    """One database, opened with the product, and everything needed to sample its read paths."""

    def __init__(self, label: str, name: str, data_dir: Path, cs, persons: int):
        from sharedcare.app import SharedCare

        self.label, self.name, self.persons = label, name, persons
        self.url = db_url(name)
        self.data_dir = data_dir
        self.sc = SharedCare.open(self.url, data_dir)
        self.sc.governance.forget_agreements()
        self.acc = accesses(self.sc, cs)
        self.visible = {k: visible_patients(self.sc, v["access"]) for k, v in self.acc.items()}
        self.visible_set = {k: set(v) for k, v in self.visible.items()}
        self.samples: dict[str, list[float]] = {}
        self.client = None
        self.server = None
        self.token = None

    def record(self, path: str, ms: float) -> None:
        self.samples.setdefault(path, []).append(ms)

    def close(self) -> None:
        if self.client is not None:
            self.client.__exit__(None, None, None)
        if self.server is not None:
            self.server.__exit__(None, None, None)
        self.sc.engine.dispose()


def sign_in_gp(sc, gp):
    from starlette.testclient import TestClient

    from sharedcare.app import create_app

    client = TestClient(create_app(sc))
    client.__enter__()
    client.get("/sign-in")
    client.post("/sign-in", data={"username": gp.username, "password": gp.password,
                                  "csrf": client.cookies.get("sc_csrf"), "next": "/"})
    if "sc_pending" in client.cookies:
        client.post("/choose-role", data={"role": f"{gp.org}:clinician",
                                          "csrf": client.cookies.get("sc_csrf"), "next": "/"})
    return client


def registered_with(sc, ods: str) -> list[str]:
    from sqlalchemy import select

    from sharedcare.governance.schema import care_relationship

    with sc.engine.connect() as conn:
        return sorted({p for (p,) in conn.execute(select(care_relationship.c.patient_id).where(
            care_relationship.c.ods == ods, care_relationship.c.kind == "registered"))})


PATHS = [
    ("everything_system", "$everything, all pages, partner system"),
    ("everything_gp", "$everything, all pages, GP persona"),
    *[(f"search_{k}", f"search: {label} (GP)") for k, label in SEARCH_KINDS],
    ("read_patient", "read Patient by id (GP)"),
    ("history_patient", "Patient _history (GP)"),
    ("patient_view", "patient view page, whole HTML (GP, in process)"),
    ("http_c1", "HTTP searches round robin, c=1, client-side (partner system)"),
]


def measure(args, small: Size, large: Size, factor: int, cs, nhs_map: dict) -> dict:
    import httpx

    from sharedcare.fhir.outcome import FHIRError

    rng = random.Random(args.seed)
    gp = next(p for p in cs.personas if p.role == "GP")
    base_plans = plans_for(cs, small.visible_set["clinician"], args.search_patients, rng)
    http_plans = plans_for(cs, small.visible_set["system"], args.search_patients, rng)
    for size in (small, large):
        size.registered = registered_with(size.sc, gp.org)
        size.client = sign_in_gp(size.sc, gp) if not args.no_view else None
        if not args.no_http:
            size.server = Server(size.url, size.data_dir).__enter__()
            size.token = size.sc.governance.issue_system_token(
                "bench-growth", size.acc["system"]["access"].ods)
            size.http = httpx.Client(headers={"Authorization": f"Bearer {size.token}"},
                                     timeout=30)

    def pick_copy(size: Size, who: str, pid: str | None = None) -> int:
        if size is small:
            return 0
        for _ in range(20):
            k = rng.randrange(factor)
            if pid is None or (f"{pid}-c{k}" if k else pid) in size.visible_set[who]:
                return k
        return 0

    def timed(size: Size, path: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except FHIRError as e:
            size.errors = getattr(size, "errors", 0) + 1
            log(f"{size.label} {path}: {e.status}")
            return
        size.record(path, (time.perf_counter() - t0) * 1000)

    def one(size: Size, path: str, j: int) -> None:
        gov = size.sc.governance
        if path in ("everything_system", "everything_gp"):
            who = "system" if path == "everything_system" else "clinician"
            pid = rng.choice(size.visible[who])
            access = size.acc[who]["access"]
            timed(size, path, lambda: everything_all(gov, access, pid, args.page_size))
        elif path.startswith("search_"):
            kind = path[len("search_"):]
            plan = base_plans.get(kind) or []
            if not plan:
                return
            params = plan[rng.randrange(len(plan))]
            pid = next((v.split("/", 1)[1] for n, v in params if n == "patient"), None)
            k = pick_copy(size, "clinician", pid)
            params = clone_plan(params, k, nhs_map) or params
            access = size.acc["clinician"]["access"]
            timed(size, path, lambda: gov.search(gov.prepare(access), RTYPE[kind], params))
        elif path == "read_patient":
            pid = rng.choice(size.visible["clinician"])
            access = size.acc["clinician"]["access"]
            timed(size, path, lambda: gov.read(gov.prepare(access), "Patient", pid))
        elif path == "history_patient":
            pid = rng.choice(size.visible["clinician"])
            access = size.acc["clinician"]["access"]
            timed(size, path, lambda: gov.history(gov.prepare(access), "Patient", pid, None,
                                                  100, None))
        elif path == "patient_view" and size.client is not None:
            pid = rng.choice(size.registered)

            def view():
                r = size.client.get(f"/patients/{pid}")
                if r.status_code != 200:
                    raise RuntimeError(f"patient view {r.status_code}")
            timed(size, path, view)
        elif path == "http_c1" and size.server is not None:
            kind, _ = SEARCH_KINDS[j % len(SEARCH_KINDS)]
            plan = http_plans.get(kind) or []
            if not plan:
                return
            params = plan[rng.randrange(len(plan))]
            pid = next((v.split("/", 1)[1] for n, v in params if n == "patient"), None)
            k = pick_copy(size, "system", pid)
            params = clone_plan(params, k, nhs_map) or params
            url = f"{size.server.base}/{RTYPE[kind]}"

            def get():
                r = size.http.get(url, params=params)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}")
            timed(size, path, get)

    paths = [p for p, _ in PATHS]
    # untimed warm-up on both sizes (validators, templates, caches, connection pools)
    for size in (small, large):
        for path in paths:
            for j in range(args.warmup):
                one(size, path, j)
        size.samples.clear()
    rounds = []
    for r in range(args.rounds):
        order = (small, large) if r % 2 == 0 else (large, small)
        t0 = time.perf_counter()
        la0 = loadavg()
        for path in paths:
            for size in order:
                for j in range(args.samples):
                    one(size, path, j)
        rounds.append({"round": r + 1, "first": order[0].label, "seconds":
                       round(time.perf_counter() - t0, 1), "loadavg_start": la0,
                       "loadavg_end": loadavg()})
        log(f"round {r + 1}/{args.rounds} done in {rounds[-1]['seconds']} s, "
            f"load {rounds[-1]['loadavg_end']}")
    out: dict[str, Any] = {"rounds": rounds, "paths": {}}
    for path, label in PATHS:
        a, b = small.samples.get(path), large.samples.get(path)
        if not a or not b:
            continue
        sa, sb = summary(a), summary(b)
        r50 = sb["p50_ms"] / sa["p50_ms"] if sa["p50_ms"] else None
        r95 = sb["p95_ms"] / sa["p95_ms"] if sa["p95_ms"] else None
        out["paths"][path] = {
            "label": label, "small": sa, "large": sb, "ratio_p50": r50, "ratio_p95": r95,
            "met_p50": r50 is not None and r50 <= TARGET,
            "met_p95": r95 is not None and r95 <= TARGET,
        }
    # search hit counts at each size (selectivity changes are growth too)
    out["errors"] = {s.label: getattr(s, "errors", 0) for s in (small, large)}
    return out


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000, help="base size (demo patients)")
    ap.add_argument("--factor", type=int, default=10, help="large = base x factor (default 10)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--samples", type=int, default=25, help="per path, size and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--search-patients", type=int, default=100)
    ap.add_argument("--page-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="keys per database live in DIR/<database> (default: a temp dir)")
    ap.add_argument("--prefix", default="growth")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse an already loaded base and clone (default: build afresh)")
    ap.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--no-view", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="30 patients x 3, 2 rounds of 3 samples, no HTTP; databases dropped")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.patients, args.factor, args.rounds, args.samples = 30, 3, 2, 3
        args.warmup, args.search_patients, args.no_http = 1, 10, True
        args.prefix = f"{args.prefix}_quick_{os.getpid()}"
    why = postgres_reachable()
    if why:
        log(f"PostgreSQL is not reachable ({why}): nothing to measure")
        return 2
    from sharedcare.demo import generate

    started = datetime.now(UTC).isoformat(timespec="seconds")
    meta: dict[str, Any] = {"started": started, "machine_start": machine(), "pid": os.getpid(),
                            "command": "python bench/growth.py " + " ".join(
                                argv if argv is not None else sys.argv[1:])}
    tmp = Path(tempfile.mkdtemp(prefix="sharedcare-growth-"))
    data_root = (args.data_dir or tmp).resolve()
    small_name = f"{args.prefix}_{args.patients}"
    large_name = f"{small_name}_x{args.factor}"
    small_dir, large_dir = data_root / small_name, data_root / large_name
    small = large = None
    try:
        t = time.perf_counter()
        meta["base"] = build_base(small_name, small_dir, args.patients, args.seed, args.reuse,
                                  warm=not args.quick)
        meta["base"]["seconds_this_run"] = time.perf_counter() - t
        cs = generate(args.seed, args.patients)
        if args.reuse and db_exists(large_name) and (large_dir / "clone.json").exists():
            log(f"reusing {large_name}")
            meta["clone"] = json.loads((large_dir / "clone.json").read_text())
            meta["clone"]["reused"] = True
        else:
            drop_db(large_name)
            log(f"{large_name}: template copy of {small_name}")
            t = time.perf_counter()
            create_db(large_name, template=small_name)
            template_s = time.perf_counter() - t
            shutil.rmtree(large_dir, ignore_errors=True)
            shutil.copytree(small_dir, large_dir)  # the same keys: the audit anchor's MAC
            log(f"cloning x{args.factor} in SQL")
            meta["clone"] = clone(large_name, args.factor, args.seed)
            meta["clone"]["seconds"]["template_copy"] = template_s
            (large_dir / "clone.json").write_text(json.dumps(meta["clone"]))
        meta["sizes_bytes"] = {small_name: db_size(small_name), large_name: db_size(large_name)}
        # the NHS number map, for clones' search plans
        with _pg(large_name) as c:
            nhs_map = {}
            for k, old, new in c.execute(
                    "SELECT g.k, o.code, n.code FROM generate_series(1, %s) g(k) "
                    "JOIN idx_token o ON o.system = %s AND o.type = 'Patient' "
                    "AND o.param = 'identifier' AND o.resource_pk < %s "
                    "JOIN idx_token n ON n.resource_pk = o.resource_pk + g.k * %s "
                    "AND n.system = o.system AND n.param = o.param",
                    (args.factor - 1, NHS, meta["clone"]["pk_offset"],
                     meta["clone"]["pk_offset"])):
                nhs_map[(k, old)] = new
        small = Size("small", small_name, small_dir, cs, args.patients)
        large = Size("large", large_name, large_dir, cs, args.patients * args.factor)
        log("verifying the clone")
        meta["verify"] = verify(small.sc, large.sc, args.factor, large.acc, random.Random(7))
        if not meta["verify"]["ok"]:
            log("the clone is not real: " + json.dumps(meta["verify"])[:2000])
        meta["visible_patients"] = {s.label: {k: len(v) for k, v in s.visible.items()}
                                    for s in (small, large)}
        log(f"measuring: {args.rounds} rounds x {args.samples} samples per path and size")
        result = measure(args, small, large, args.factor, cs, nhs_map)
    finally:
        for s in (small, large):
            if s is not None:
                s.close()
        if not args.keep:
            for n in (small_name, large_name):
                drop_db(n)
        shutil.rmtree(tmp, ignore_errors=True)
    meta["machine_end"] = machine()
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    out = {"meta": meta, "sizes": {"small": args.patients, "large": args.patients * args.factor},
           "target": f"every read path <= {TARGET}x", **result}
    worst = [(v["ratio_p50"], k) for k, v in result["paths"].items() if v["ratio_p50"]]
    out["worst_ratio_p50"] = max(worst) if worst else None
    print_table(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0 if meta["verify"]["ok"] else 1


def print_table(out: dict) -> None:
    a, b = out["sizes"]["small"], out["sizes"]["large"]
    print(f"read-path growth {a:,} -> {b:,} persons, PostgreSQL "
          f"({len(out['rounds'])} alternating rounds; target <= {TARGET}x)")
    print(f"{'path':58} {'p50 small':>9} {'p95 small':>9} {'p50 large':>9} {'p95 large':>9} "
          f"{'x p50':>6} {'x p95':>6}")
    for v in out["paths"].values():
        s, l_ = v["small"], v["large"]
        print(f"{v['label'][:58]:58} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f} {l_['p50_ms']:9.1f} "
              f"{l_['p95_ms']:9.1f} {v['ratio_p50']:6.2f} {v['ratio_p95']:6.2f} "
              f"{'met' if v['met_p50'] and v['met_p95'] else 'MISSED'}")
    v = out["meta"]["verify"]
    print(f"clone verified: {v['ok']} (counts x{out['meta']['clone']['factor']}, "
          f"$everything equal, NHS number finds the clone's own records)")


if __name__ == "__main__":
    sys.exit(main())
