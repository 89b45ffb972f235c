"""Governed extracts: the one door through which care records leave for secondary use.

Direct care reads go through ``Governance`` and ``ResourcePolicy``, which deliberately return
only directory data for any other purpose. Planning and research go through *this module*
instead, which applies the rules for secondary use itself, as one SQL predicate over the
store's ``resource`` and ``compartment`` tables (nothing outside it is fetched):

1. **Purpose.** ``access.purpose`` must be ``planning`` or ``research``, and at least one
   *active* sharing agreement (status active, today within effective..end) to which the
   requesting organisation is a party must cover that purpose -- otherwise the extract is
   refused (403, audited).
2. **Controllers.** A resource is in scope when its controller (``source_org``) is the
   requesting organisation itself, or is a party to such an agreement that shares the
   resource's data category for the purpose (``governance.policy.active_agreements``).
   Directory data (Organization, Practitioner, Location ...) is about no patient and is open.
3. **Sensitive data** (any sensitivity label) from other organisations is never extracted.
4. **Objections.** A patient's objection to sharing (``objection-all``, ``objection-from`` the
   controller, ``objection-to`` the requester) removes the other organisations' data about them.
5. **National data opt-out.** A ``national-opt-out`` choice removes the patient entirely: the
   Patient resource and every resource in their compartment, whoever controls it.

The rows are then de-identified (``pseudonym.Pseudonymiser``: keyed pseudonyms per project,
names/addresses/telecom dropped, dates coarsened if asked) and only then evaluated by the
SQL-on-FHIR views, materialised into an embedded DuckDB file (``extract.duckdb``) and one
Parquet file per view. ``extract.json`` beside them records project, purpose, agreements,
controllers, coarsening and row counts. One audit event (action ``export``) records who ran it,
for what purpose, under which agreements.

    result = run_extract(sc, access, ["patient_demographics", "conditions"],
                         project="mltc-2026", coarsen_dates="month", out_dir=Path("out"))
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
from sqlalchemy import Connection, and_, false, func, not_, or_, select, union
from sqlalchemy.sql.elements import ColumnElement

from ..fhir.categories import DIRECTORY_TYPES
from ..fhir.outcome import FHIRError
from ..governance.auth import forbidden
from ..governance.policy import Access, active_agreements, one_person
from ..governance.schema import agreement, agreement_party, patient_choice
from ..store.schema import compartment, person_link, resource
from . import viewdef
from .pseudonym import COARSENING, Pseudonymiser, load_key

SECONDARY_PURPOSES = ("planning", "research")
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass
class Scope:
    """What a secondary-use request may draw on."""

    ods: str
    purpose: str
    agreements: list[str]  # ids of the active agreements covering the purpose
    shared: dict[str, frozenset[str]]  # controller ODS -> data categories shared for purpose


@dataclass
class ExtractResult:
    project: str
    purpose: str
    requester: str  # ODS code of the requesting organisation
    agreements: list[str]
    controllers: list[str]  # organisations whose data could be included
    coarsen_dates: str
    out_dir: Path
    duckdb_path: Path
    parquet: dict[str, Path]
    rows: dict[str, int]
    resources: int  # de-identified resources read (per view, summed)
    created: str
    audit_seq: int | None = None
    manifest_path: Path | None = None
    tables: list[str] = field(default_factory=list)


def covering_agreements(conn: Connection, ods: str, purpose: str,
                        today: str | None = None) -> list[str]:
    """Ids of the active agreements with `ods` as a party that cover `purpose` today (the same
    conditions as ``active_agreements``)."""
    today = today or date.today().isoformat()
    mine = select(agreement_party.c.agreement_id).where(agreement_party.c.ods == ods)
    rows = conn.execute(
        select(agreement.c.id, agreement.c.purposes)
        .where(agreement.c.id.in_(mine), agreement.c.status == "active",
               or_(agreement.c.effective.is_(None), agreement.c.effective <= today),
               or_(agreement.c.end.is_(None), agreement.c.end >= today))
        .order_by(agreement.c.id)).all()
    return [aid for aid, purposes in rows if purpose in purposes.split()]


# Secondary use is the programme's and IG's business, not a clinician's in the course of care.
EXTRACT_ROLES = frozenset({"programme-lead", "ig-lead", "system"})


def secondary_scope(conn: Connection, access: Access) -> Scope:
    """The agreements and controllers a planning/research request may use; 403 if none."""
    if access.purpose not in SECONDARY_PURPOSES:
        raise forbidden(f"extracts are for planning or research, not '{access.purpose}'",
                        ["ask for a token issued for the planning or research purpose"])
    if not access.ods:
        raise forbidden("an extract is made for an organisation: the token names none")
    if access.role not in EXTRACT_ROLES:
        raise forbidden(f"the {access.role} role cannot run population extracts",
                        ["extracts are run by the programme lead, the IG lead, or a partner "
                         "system with an agreement for the purpose"])
    ids = covering_agreements(conn, access.ods, access.purpose)
    if not ids:
        raise forbidden(
            f"no active sharing agreement covers {access.purpose} for {access.ods}",
            [(f"secondary use needs an active agreement to which {access.ods} is a party and "
             f"whose purposes include '{access.purpose}'")])
    shared = active_agreements(conn, access.ods, access.purpose)
    return Scope(access.ods, access.purpose, ids, shared)


def secondary_filter(scope: Scope) -> ColumnElement:
    """The SQL predicate over ``resource`` for secondary use under `scope` (rules 2-5 above)."""
    r = resource.c
    own = r.source_org == scope.ods
    partners = [and_(r.source_org == src, r.category.in_(sorted(cats)))
                for src, cats in sorted(scope.shared.items()) if src != scope.ods and cats]
    controller_ok = or_(own, *partners)
    not_sensitive = or_(own, r.sensitivity == "")

    oc = compartment.alias("xc")
    oo = patient_choice.alias("xo")
    # A choice recorded against any of the person's Patient records covers all of them.
    objected = (select(oc.c.resource_pk).select_from(oc)
                .join(oo, one_person(oo.c.patient_id, oc.c.patient_id))
                .where(or_(oo.c.kind == "objection-all",
                           and_(oo.c.kind == "objection-from", oo.c.ods == r.source_org),
                           and_(oo.c.kind == "objection-to", oo.c.ods == scope.ods))))
    no_objection = or_(own, r.pk.not_in(objected))

    recorded = select(patient_choice.c.patient_id).where(
        patient_choice.c.kind == "national-opt-out")
    mine, theirs = person_link.alias("om"), person_link.alias("ot")
    opted_out = union(recorded, select(theirs.c.patient_id).join(
        mine, mine.c.person_key == theirs.c.person_key).where(mine.c.patient_id.in_(recorded)))
    nc = compartment.alias("nc")
    not_opted_out = and_(
        r.pk.not_in(select(nc.c.resource_pk).where(nc.c.patient_id.in_(opted_out))),
        not_(and_(r.type == "Patient", r.id.in_(opted_out))))

    patient_data = and_(controller_ok, not_sensitive, no_objection, not_opted_out)
    return and_(r.deleted == false(),
                or_(r.type.in_(sorted(DIRECTORY_TYPES)), patient_data))


def iter_governed(conn_factory, scope: Scope, rtype: str, window: int = 10_000
                  ) -> Iterator[dict]:
    """The raw (identifiable) resources of one type in scope, in row order. Internal to this
    module: callers get them only through a Pseudonymiser. Read in row-key windows, so each
    query is an index range scan and the whole read stays linear in the store's size."""
    pred = secondary_filter(scope)
    with conn_factory() as conn:
        lo, hi = conn.execute(select(func.min(resource.c.pk), func.max(resource.c.pk))
                              .where(resource.c.type == rtype)).one()
    if lo is None:
        return
    start = lo - 1
    while start < hi:
        end = start + window
        with conn_factory() as conn:
            rows = conn.execute(select(resource.c.content)
                                .where(pred, resource.c.type == rtype, resource.c.pk > start,
                                       resource.c.pk <= end)
                                .order_by(resource.c.pk)).all()
        for (content,) in rows:
            yield orjson.loads(content)
        start = end


def _views(view_names_or_defs: Sequence[str | dict]) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for v in view_names_or_defs:
        view = viewdef.load_view(v) if isinstance(v, str) else v
        name = view.get("name") if isinstance(view, dict) else None
        if not isinstance(name, str) or not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", name):
            raise ValueError(f"every view needs a table-safe name, got {name!r}")
        if name in seen:
            raise ValueError(f"two views are called {name!r}")
        seen.add(name)
        viewdef.compile_view(view)  # validate before any data is read
        out.append((name, view))
    if not out:
        raise ValueError("name at least one view")
    return out


def run_extract(sc, access: Access, view_names_or_defs: Sequence[str | dict], *, project: str,
                coarsen_dates: str = "none", out_dir: Path) -> ExtractResult:
    """Run the views over the governed, de-identified data for `access` (module docstring)."""
    import duckdb

    if coarsen_dates not in COARSENING:
        raise ValueError(f"coarsen_dates must be one of {COARSENING}")
    if not isinstance(project, str) or not _PROJECT_RE.match(project):
        raise ValueError("project must be 1-64 letters, digits, '.', '_' or '-'")
    views = _views(view_names_or_defs)
    gov = sc.governance
    entity = f"extract {project}: " + ", ".join(n for n, _ in views)
    try:
        with sc.engine.connect() as conn:
            scope = secondary_scope(conn, access)
    except FHIRError as e:
        gov.audit(access, "export", "4", entity=entity[:400], reason=str(e)[:1000])
        raise

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pseudo = Pseudonymiser(load_key(sc.data_dir), project, coarsen_dates)
    db_path = out_dir / "extract.duckdb"
    if db_path.exists():
        db_path.unlink()
    counts: dict[str, int] = {}
    parquet: dict[str, Path] = {}
    seen = 0

    def deidentified(rtype: str) -> Iterator[dict]:
        nonlocal seen
        for res in iter_governed(sc.engine.connect, scope, rtype):
            seen += 1
            yield pseudo.resource(res)

    con = duckdb.connect(str(db_path))
    try:
        for name, view in views:
            cv = viewdef.compile_view(view)
            counts[name] = viewdef.materialise_duckdb(cv, deidentified(cv.resource), con, name)
            path = out_dir / f"{name}.parquet"
            viewdef.write_parquet(cv, deidentified(cv.resource), path)
            parquet[name] = path
        con.execute("CREATE OR REPLACE TABLE extract_info AS SELECT ? AS project, ? AS purpose, "
                    "? AS agreements, ? AS requester, ? AS coarsen_dates, ? AS created",
                    [project, scope.purpose, " ".join(scope.agreements), scope.ods,
                     coarsen_dates, created])
    finally:
        con.close()

    controllers = sorted({scope.ods, *(s for s, c in scope.shared.items() if c)})
    seq = gov.audit(access, "export", "0", entity=entity[:400],
                    reason=f"purpose {scope.purpose} under agreement(s) "
                           f"{', '.join(scope.agreements)}; coarsen dates: {coarsen_dates}")
    result = ExtractResult(
        project=project, purpose=scope.purpose, requester=scope.ods,
        agreements=list(scope.agreements), controllers=controllers,
        coarsen_dates=coarsen_dates, out_dir=out_dir, duckdb_path=db_path, parquet=parquet,
        rows=counts, resources=seen, created=created, audit_seq=seq,
        tables=[n for n, _ in views])
    manifest = {
        "project": project, "purpose": scope.purpose, "requester": scope.ods,
        "agreements": scope.agreements, "controllers": controllers,
        "coarsen_dates": coarsen_dates, "created": created,
        "tables": {n: {"rows": counts[n], "parquet": parquet[n].name} for n, _ in views},
        "duckdb": db_path.name,
        "deidentification": "keyed pseudonyms per project (HMAC-SHA256); names, telecom, "
                            "narrative and notes removed; addresses reduced to postcode "
                            "district; national data opt-outs removed",
    }
    result.manifest_path = out_dir / "extract.json"
    result.manifest_path.write_text(json.dumps(manifest, indent=2))
    return result


__all__ = [
    "SECONDARY_PURPOSES",
    "ExtractResult",
    "Scope",
    "covering_agreements",
    "run_extract",
    "secondary_filter",
    "secondary_scope",
]
