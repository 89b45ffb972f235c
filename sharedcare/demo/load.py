"""Load a generated care system into a sharedcare database: organisations, staff and roles,
agreements, every partner's records, patient choices, break-glass and audit history."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import orjson
from sqlalchemy import insert, select, update

from ..api import bundle as bundles
from ..fhir.codes import NHS_NUMBER_SYSTEM
from ..governance.policy import Access
from ..governance.schema import break_glass, organisation, staff
from ..identity.hook import dequeue
from ..identity.schema import identity_queue
from ..identity.service import IdentityService
from ..programme.engagement import seed_examples
from ..store.repository import instant
from ..store.schema import idx_token, resource, resource_version
from . import CareSystem

DEMO_MARKER = "demo-loaded"


def _ts(dt) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")


def patient_ids_by_nhs_number(sc, numbers: list[str]) -> dict[str, str]:
    """NHS number -> the GP practice's Patient for that person (every partner keeps its own
    Patient; the practice's is the registration, and the one the demo's choices are recorded
    against)."""
    out: dict[str, str] = {}
    with sc.engine.connect() as conn:
        for i in range(0, len(numbers), 500):
            chunk = numbers[i: i + 500]
            for code, rid in conn.execute(
                    select(idx_token.c.code, resource.c.id)
                    .join(resource, resource.c.pk == idx_token.c.resource_pk)
                    .join(organisation, organisation.c.ods == resource.c.source_org)
                    .where(idx_token.c.type == "Patient", idx_token.c.param == "identifier",
                           idx_token.c.system == NHS_NUMBER_SYSTEM, idx_token.c.code.in_(chunk),
                           organisation.c.kind == "gp-practice")
                    .order_by(resource.c.pk)):
                out.setdefault(code, rid)
    return out


def resolve_identities(sc) -> Counter:
    """What the server's identity worker would do in its first seconds, done now so the demo
    starts joined up: every Patient the store hook queued (a partner's record without a valid
    NHS number) is matched by the splink model -- certain matches join that person, possible
    ones become review Tasks for the IG lead. Returns the outcomes counted."""
    with sc.engine.connect() as conn:
        queued = list(conn.execute(
            select(identity_queue.c.patient_id).where(identity_queue.c.status == "pending")
            .order_by(identity_queue.c.patient_id)).scalars())
    identity = IdentityService.of(sc)
    outcomes: Counter = Counter()
    for pid in queued:
        outcomes[identity.resolve(pid).outcome] += 1
    with sc.store.begin_write() as conn, conn.begin():
        dequeue(conn, queued)
    return outcomes


def backdate_care_plans(sc) -> int:
    """Partners' care plans arrive through their feeds today, but were last changed in their
    own systems when written: show that date as the plan's "updated" (version 1), so a plan
    never reads "version 1, updated today" beside "written six months ago"."""
    rows = []
    with sc.engine.connect() as conn:
        for pk, content in conn.execute(
                select(resource.c.pk, resource.c.content)
                .where(resource.c.type == "CarePlan", resource.c.version == 1,
                       resource.c.deleted.is_(False))):
            res = orjson.loads(content)
            created = res.get("created")
            if not created:
                continue
            stamp = created[:19].replace("Z", "") + ".000000"
            res["meta"]["lastUpdated"] = instant(stamp)
            rows.append((pk, stamp, orjson.dumps(res).decode()))
    with sc.store.begin_write() as conn, conn.begin():
        for pk, stamp, content in rows:
            conn.execute(update(resource).where(resource.c.pk == pk)
                         .values(last_updated=stamp, content=content))
            conn.execute(update(resource_version).where(resource_version.c.resource_pk == pk,
                                                        resource_version.c.version == 1)
                         .values(last_updated=stamp, content=content))
    return len(rows)


def load_demo(sc, cs: CareSystem, progress: Callable[[str, int], None] | None = None) -> dict:
    """Everything the demo needs, in dependency order. Returns counts."""
    gov = sc.governance
    say = progress or (lambda what, n: None)
    for o in cs.organisations:
        gov.add_organisation(o.ods, o.name, o.kind, postcode=o.postcode,
                             go_live=o.go_live.isoformat() if o.go_live else None,
                             registered_population=o.registered_population)
    say("organisations", len(cs.organisations))
    for a in cs.agreements:
        gov.add_agreement(a.id, a.title, a.parties, a.purposes, a.categories, a.status,
                          a.effective.isoformat() if a.effective else None,
                          a.end.isoformat() if a.end else None,
                          signatures=[(o, u, _ts(t)) for o, u, t in a.signatures])
    say("agreements", len(cs.agreements))
    loaded = 0
    for b in cs.bundles(500):
        result = bundles.process(sc.store, b, "")
        loaded += len(result["entry"])
        say("resources", loaded)
    outcomes = resolve_identities(sc)
    say("patients matched by the identity model", sum(outcomes.values()))
    backdate_care_plans(sc)
    ids = patient_ids_by_nhs_number(sc, cs.nhs_numbers())
    patient_persona = {p.username: p for p in cs.personas if p.nhs_number}
    for s in cs.staff:
        gov.add_staff(s.username, s.display_name, s.roles, s.password, sds_id=s.sds_id)
    for username, p in patient_persona.items():
        gov.add_staff(username, p.description.split(" (")[0], [], p.password,
                      patient_id=ids.get(p.nhs_number))
    say("staff", len(cs.staff) + len(patient_persona))
    for nhs, scope, ods in cs.objections:
        if nhs in ids:
            gov.record_choice(ids[nhs], {"all": "objection-all", "from-org": "objection-from",
                                         "to-org": "objection-to"}[scope], ods)
    for nhs in cs.national_opt_outs:
        if nhs in ids:
            gov.record_choice(ids[nhs], "national-opt-out")
    with sc.engine.begin() as conn:
        rows = [{"username": g["username"], "ods": g["org"], "role": g["role"],
                 "patient_id": ids[g["nhs_number"]], "reason": g.get("reason") or "",
                 "started": _ts(g["when"]), "expires": _ts(g["when"] + timedelta(hours=4)),
                 "reviewed_by": None}
                for g in cs.break_glass_history if g["nhs_number"] in ids]
        if rows:
            conn.execute(insert(break_glass), rows)
    # Past use, oldest first, so the hash chain runs in time order.
    history = sorted(cs.audit_history, key=lambda e: e["when"])
    with sc.engine.connect().execution_options(write=True) as conn, conn.begin():
        for e in history:
            access = Access(e["username"], e["org"], e["role"], e.get("purpose", "direct-care"))
            gov.audit_trail.record(
                access, e["action"], "0" if e["outcome"] == "permitted" else "4",
                patient_id=ids.get(e["nhs_number"]), reason=e.get("reason"),
                glass=e["action"] == "break-glass", conn=conn, recorded=_ts(e["when"]))
    say("audit events", len(history))
    # Illustrative feedback, readiness assessments and champions for the programme pages.
    seed_examples(sc.engine, cs.as_of)
    with sc.engine.begin() as conn:
        conn.execute(insert(staff), [{"username": DEMO_MARKER, "display_name": "demo seed marker",
                                      "active": False, "failed_logins": 0,
                                      "sds_id": f"{cs.seed}:{cs.patients_count}"}])
    return {"organisations": len(cs.organisations), "resources": loaded,
            "staff": len(cs.staff), "audit": len(history), "identity": dict(outcomes)}


def already_loaded(sc) -> str | None:
    with sc.engine.connect() as conn:
        return conn.execute(select(staff.c.sds_id).where(staff.c.username == DEMO_MARKER)).scalar()
