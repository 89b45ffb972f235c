"""One identity per person, kept in the store.

Every source ``Patient`` (one per partner record) is linked from exactly one ``Person``:

* a Patient with a *valid* NHS number joins the Person of that number (id derived from the number,
  so two writers cannot create two Persons for one number), ``assurance = level4``;
* a Patient without one is scored against the store's other patients by the splink
  :class:`~sharedcare.identity.matching.Linker` (trained on the store's own patients): a *certain*
  match joins that patient's Person (``level3``); a *possible* one gets a Person of its own and a
  review ``Task`` naming the candidate; anything else gets a Person of its own (``level1``).

``Patient/$match`` (FHIR R4 / IHE PDQm) is :meth:`IdentityService.match`; the HTTP handler the
FHIR API wires is :func:`match_handler`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, select

from ..fhir.codes import BASE, NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM
from ..fhir.outcome import FHIRError
from ..logsafe import log_failure
from ..store.repository import PermitAll, Store, WriteOp, instant, now_utc
from . import nhs_number as nhs
from .matching import (
    MATCH_GRADE_EXTENSION_URL,
    Demographics,
    Linker,
    demographics_from_patient,
    normalise_name,
)

log = logging.getLogger(__name__)

_NS = uuid.UUID("6f0d2b8e-5d43-4f59-9a55-1f7a3c2b9e01")
TASK_CODE_SYSTEM = f"{BASE}/CodeSystem/task-code"
IDENTITY_REVIEW = "identity-review"
GRADE_ORDER = {"certain": 3, "probable": 2, "possible": 1, "certainly-not": 0}
MAX_CANDIDATES = 500


def person_id_for_nhs(number: str) -> str:
    return str(uuid.uuid5(_NS, f"nhs|{number}"))


def person_id_for_patient(patient_id: str) -> str:
    return str(uuid.uuid5(_NS, f"patient|{patient_id}"))


def valid_nhs_number(patient: dict) -> str | None:
    for ident in patient.get("identifier") or []:
        if ident.get("system") == NHS_NUMBER_SYSTEM:
            digits = nhs.normalise(ident.get("value"))
            if digits and nhs.is_valid(digits):
                return digits
    return None


def _source_of(res: dict) -> str:
    for tag in (res.get("meta") or {}).get("tag") or ():
        if tag.get("system") == SOURCE_ORG_SYSTEM:
            return tag.get("code") or "unknown"
    return "unknown"


@dataclass
class Resolution:
    patient_id: str
    outcome: str  # nhs-number | link | review | new | already-linked
    person_id: str
    probability: float | None = None
    candidate: str | None = None
    task_id: str | None = None


class IdentityService:
    """Person links over the store. Thread-safe; one per :class:`SharedCare` (see :meth:`of`)."""

    _instances: dict[int, IdentityService] = {}

    def __init__(self, sc, linker: Linker | None = None, retrain_growth: float = 1.5,
                 min_training_records: int = 10):
        self.sc = sc
        self.store: Store = sc.store
        self._linker = linker
        self._fixed_linker = linker is not None
        self._trained_on = 0
        self.retrain_growth = retrain_growth
        self.min_training_records = min_training_records
        self._lock = threading.Lock()

    @classmethod
    def of(cls, sc) -> IdentityService:
        inst = cls._instances.get(id(sc))
        if inst is None or inst.sc is not sc:
            inst = cls._instances[id(sc)] = cls(sc)
        return inst

    # ------------------------------------------------------------------ the model
    def linker(self, refresh: bool = False) -> Linker | None:
        """The splink model, trained on the store's current patients (retrained as they grow)."""
        with self._lock:
            if self._fixed_linker and self._linker is not None:
                return self._linker
            count = self._patient_count()
            stale = self._linker is None or count >= self._trained_on * self.retrain_growth
            if (refresh or stale) and count >= self.min_training_records:
                records = [demographics_from_patient(s.json(), _source_of(s.json()))
                           for s in self.store.iter_current(PermitAll(), ["Patient"])]
                try:
                    model = Linker()
                    model.train(records)
                    self._linker, self._trained_on = model, count
                except Exception as e:  # noqa: BLE001 - tiny populations cannot be trained
                    log_failure(log, f"identity model could not be trained on {count} patients",
                                e)
            return self._linker

    def _patient_count(self) -> int:
        from sqlalchemy import false, func

        from ..store.schema import resource

        with self.store.engine.connect() as c:
            return c.execute(select(func.count()).select_from(resource).where(
                resource.c.type == "Patient", resource.c.deleted == false())).scalar_one()

    def score(self, query: dict, candidates: list[dict]) -> list[tuple[dict, float, str]]:
        """(candidate Patient, probability, match grade), best first."""
        if not candidates:
            return []
        q = demographics_from_patient(query, "query")
        demo = [demographics_from_patient(c, f"c{i}") for i, c in enumerate(candidates)]
        demo = [Demographics(**{**d.__dict__, "record_id": f"c/{i}"}) for i, d in enumerate(demo)]
        model = self.linker()
        if model is not None:
            scored = model.score(Demographics(**{**q.__dict__, "record_id": "q"}), demo)
            out = [(candidates[int(d.record_id.split("/")[1])], p, g) for d, p, g in scored]
        else:
            out = [(c, p, _fallback_grade(p)) for c, p in
                   ((c, _fallback_probability(q, d)) for c, d in zip(candidates, demo))]
            out.sort(key=lambda t: -t[1])
        return out

    # ------------------------------------------------------------------ linking
    def persons_linking(self, patient_id: str, conn: Connection | None = None) -> list[str]:
        return self.store.match_ids("Person", f"link=Patient/{patient_id}", conn, limit=20)

    def _read(self, rtype: str, rid: str, conn) -> dict | None:
        try:
            return self.store.read(rtype, rid, PermitAll(), conn).json()
        except FHIRError:
            return None

    def link_ops(self, conn: Connection, patient_id: str, person_id: str, assurance: str,
                 identifier: dict | None = None, pending: dict | None = None) -> list[WriteOp]:
        """Write operations putting ``patient_id`` into Person ``person_id`` (created if need be)
        and out of any other Person. ``pending`` holds Persons already changed in this unit of
        work (id -> resource), so several patients of one message compose."""
        pending = pending if pending is not None else {}
        ops: list[WriteOp] = []
        ref = f"Patient/{patient_id}"

        def load(pid: str) -> dict | None:
            if pid in pending:
                return pending[pid]
            return self._read("Person", pid, conn)

        for other in self.persons_linking(patient_id, conn):
            if other == person_id:
                continue
            res = load(other)
            if res is None:
                continue
            links = [lk for lk in res.get("link") or []
                     if (lk.get("target") or {}).get("reference") != ref]
            if links:
                res = {**res, "link": links}
                pending[other] = res
                ops.append(WriteOp("PUT", "Person", other, res))
            else:
                pending[other] = None
                ops.append(WriteOp("DELETE", "Person", other, None))
        person = load(person_id)
        if person is None:
            person = {"resourceType": "Person", "id": person_id, "active": True, "link": []}
            if identifier:
                person["identifier"] = [identifier]
        person = dict(person)
        links = list(person.get("link") or [])
        existing = next((lk for lk in links if (lk.get("target") or {}).get("reference") == ref),
                        None)
        if existing is not None and existing.get("assurance") == assurance and not ops:
            return []
        if existing is not None:
            links = [lk for lk in links if lk is not existing]
        links.append({"target": {"reference": ref}, "assurance": assurance})
        person["link"] = links
        pending[person_id] = person
        ops.append(WriteOp("PUT", "Person", person_id, person))
        return ops

    def nhs_link_ops(self, conn: Connection, patients: list[tuple[str, dict]],
                     pending: dict | None = None) -> list[WriteOp]:
        """Inside a feed's write transaction: each patient with a valid NHS number joins the
        Person of that number. Patients without one are left for :meth:`resolve`."""
        pending = {} if pending is None else pending
        ops: list[WriteOp] = []
        for pid, res in patients:
            number = valid_nhs_number(res)
            if number:
                ops += self.link_ops(conn, pid, person_id_for_nhs(number), "level4",
                                     {"system": NHS_NUMBER_SYSTEM, "value": number}, pending)
        return _squash(ops)

    def resolve(self, patient_id: str) -> Resolution:
        """Give one patient its identity (see module doc). Idempotent."""
        patient = self._read("Patient", patient_id, None)
        if patient is None:
            raise FHIRError.of(404, "not-found", f"Patient/{patient_id} is not known")
        number = valid_nhs_number(patient)
        if number:
            person = person_id_for_nhs(number)
            self._write_ops(lambda conn: self.link_ops(
                conn, patient_id, person, "level4", {"system": NHS_NUMBER_SYSTEM, "value": number}))
            return Resolution(patient_id, "nhs-number", person)
        linked = self.persons_linking(patient_id)
        if linked:
            return Resolution(patient_id, "already-linked", linked[0])
        candidates = [c for c in self.candidates(patient, PermitAll()) if c.get("id") != patient_id
                      and c.get("active", True) is not False]
        best = self.score(patient, candidates)[:1]
        own = person_id_for_patient(patient_id)
        if best and best[0][2] == "certain":
            cand, p, _ = best[0]
            target = self._person_of(cand)
            self._write_ops(lambda conn: self.link_ops(conn, patient_id, target, "level3"))
            return Resolution(patient_id, "link", target, p, cand["id"])
        if best and best[0][2] in ("probable", "possible"):
            cand, p, grade = best[0]
            task_id = str(uuid.uuid5(_NS, f"review|{patient_id}|{cand['id']}"))
            task = review_task(task_id, patient, cand, p, grade)

            def ops(conn):
                return self.link_ops(conn, patient_id, own, "level1") + [
                    WriteOp("PUT", "Task", task_id, task)]
            self._write_ops(ops)
            return Resolution(patient_id, "review", own, p, cand["id"], task_id)
        self._write_ops(lambda conn: self.link_ops(conn, patient_id, own, "level1"))
        return Resolution(patient_id, "new", own)

    def _person_of(self, patient: dict) -> str:
        """The Person of an existing patient, giving it one first if it has none."""
        linked = self.persons_linking(patient["id"])
        if linked:
            return linked[0]
        own = person_id_for_patient(patient["id"])
        number = valid_nhs_number(patient)
        if number:
            own = person_id_for_nhs(number)
        self._write_ops(lambda conn: self.link_ops(conn, patient["id"], own,
                                                   "level4" if number else "level1"))
        return own

    def unlinked_patients(self) -> list[str]:
        linked: set[str] = set()
        for s in self.store.iter_current(PermitAll(), ["Person"]):
            for lk in s.json().get("link") or []:
                ref = (lk.get("target") or {}).get("reference") or ""
                if ref.startswith("Patient/"):
                    linked.add(ref.split("/", 1)[1])
        return [s.id for s in self.store.iter_current(PermitAll(), ["Patient"])
                if s.id not in linked]

    def resolve_pending(self) -> list[Resolution]:
        """Resolve every patient that no Person links yet (after a feed load, or a crash)."""
        return [self.resolve(pid) for pid in self.unlinked_patients()]

    def decide_review(self, task_id: str, same_person: bool) -> None:
        """Close a review Task: link the two records (same person) or record that they differ."""
        task = self._read("Task", task_id, None)
        if task is None:
            raise FHIRError.of(404, "not-found", f"Task/{task_id} is not known")
        patient_id = task["for"]["reference"].split("/", 1)[1]
        cand = next(i["valueReference"]["reference"].split("/", 1)[1]
                    for i in task.get("input") or [] if "valueReference" in i)
        done = {**task, "status": "completed",
                "businessStatus": {"text": "same person" if same_person else "different people"}}

        def ops(conn):
            out = []
            if same_person:
                target = self.persons_linking(cand, conn)
                target_id = target[0] if target else person_id_for_patient(cand)
                if not target:
                    out += self.link_ops(conn, cand, target_id, "level1")
                out += self.link_ops(conn, patient_id, target_id, "level3")
            return _squash(out) + [WriteOp("PUT", "Task", task_id, done)]
        self._write_ops(ops)

    def _write_ops(self, make) -> None:
        with self.store.begin_write() as conn, conn.begin():
            ops = make(conn)
            if ops:
                self.store.write(_squash(ops), conn)

    # ------------------------------------------------------------------ $match
    def candidates(self, patient: dict, policy) -> list[dict]:
        """Blocking: current patients sharing the NHS number, birth date, family name or postcode."""
        queries: list[list[tuple[str, str]]] = []
        number = valid_nhs_number(patient)
        if number:
            queries.append([("identifier", f"{NHS_NUMBER_SYSTEM}|{number}")])
        if patient.get("birthDate"):
            queries.append([("birthdate", patient["birthDate"][:10])])
        for name in patient.get("name") or []:
            if name.get("family"):
                queries.append([("family:exact", name["family"])])
                fam = normalise_name(name["family"])
                if fam and fam != name["family"]:
                    queries.append([("family", fam)])
        for addr in patient.get("address") or []:
            if addr.get("postalCode"):
                queries.append([("address-postalcode", addr["postalCode"])])
        seen: dict[str, dict] = {}
        for q in queries:
            try:
                page = self.store.search("Patient", q + [("_count", str(MAX_CANDIDATES))], policy,
                                         lenient=True)
            except FHIRError:
                continue
            for s in page.matches:
                seen.setdefault(s.id, s.json())
            if len(seen) >= MAX_CANDIDATES:
                break
        return list(seen.values())

    def match(self, patient: dict, count: int | None = None, only_certain: bool = False,
              policy=None) -> dict:
        """Patient/$match: a searchset Bundle of candidates, best first, each with
        ``search.score`` and the match-grade extension; grades below 'possible' are left out."""
        if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
            raise FHIRError.of(400, "invalid", "$match needs a Patient resource", "resource")
        policy = policy or PermitAll()
        scored = self.score(patient, self.candidates(patient, policy))
        keep = [(c, p, g) for c, p, g in scored
                if GRADE_ORDER[g] >= (3 if only_certain else 1)]
        if only_certain and len(keep) > 1:
            keep = []  # PDQm: onlyCertainMatches returns one certain match or none
        if count:
            keep = keep[:count]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(keep),
            "meta": {"lastUpdated": instant(now_utc())},
            "entry": [{
                "fullUrl": f"Patient/{c['id']}",
                "resource": c,
                "search": {
                    "extension": [{"url": MATCH_GRADE_EXTENSION_URL, "valueCode": g}],
                    "mode": "match",
                    "score": round(p, 6),
                },
            } for c, p, g in keep],
        }


def review_task(task_id: str, patient: dict, candidate: dict, probability: float,
                grade: str) -> dict:
    return {
        "resourceType": "Task",
        "id": task_id,
        "meta": {"tag": [{"system": SOURCE_ORG_SYSTEM, "code": _source_of(patient)}]},
        "status": "requested",
        "intent": "proposal",
        "priority": "routine",
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": IDENTITY_REVIEW,
                             "display": "Review a possible duplicate person"}]},
        "description": f"Possible match ({grade}, p={probability:.3f}): are these one person?",
        "focus": {"reference": f"Patient/{patient['id']}"},
        "for": {"reference": f"Patient/{patient['id']}"},
        "authoredOn": instant(now_utc()),
        "input": [
            {"type": {"text": "candidate"},
             "valueReference": {"reference": f"Patient/{candidate['id']}"}},
            {"type": {"text": "match-probability"}, "valueDecimal": round(probability, 6)},
            {"type": {"text": "match-grade"}, "valueCode": grade},
        ],
    }


def _squash(ops: list[WriteOp]) -> list[WriteOp]:
    """Keep the last write per (type, id): a unit of work may touch one Person twice."""
    last: dict[tuple[str, str], WriteOp] = {}
    for op in ops:
        last.pop((op.rtype, op.rid), None)
        last[(op.rtype, op.rid)] = op
    return list(last.values())


def _fallback_probability(q: Demographics, c: Demographics) -> float:
    """Before the model can be trained (a nearly empty store): exact-agreement rule."""
    fields = ("given", "family", "birth_date", "sex", "postcode")
    a = [normalise_name(getattr(q, f)) if f in ("given", "family") else getattr(q, f)
         for f in fields]
    b = [normalise_name(getattr(c, f)) if f in ("given", "family") else getattr(c, f)
         for f in fields]
    qn, cn = nhs.normalise(q.nhs_number), nhs.normalise(c.nhs_number)
    if qn and cn and nhs.is_valid(qn) and nhs.is_valid(cn):
        return 1.0 if qn == cn else 0.0
    agree = sum(1 for x, y in zip(a, b) if x and y and x == y)
    if a[1] and a[1] == b[1] and a[2] and a[2] == b[2] and agree >= 4:
        return 0.995
    return {5: 0.995, 4: 0.9, 3: 0.6}.get(agree, 0.05)


def _fallback_grade(p: float) -> str:
    return "certain" if p >= 0.99 else "probable" if p >= 0.8 else "possible" if p >= 0.5 \
        else "certainly-not"


def match_handler(sc, access, body: dict) -> dict:
    """POST /fhir/Patient/$match: ``body`` is a Parameters (resource, count, onlyCertainMatches)
    or a bare Patient. Scope-checked, policy inside every candidate query, one audit event."""
    if not isinstance(body, dict):
        raise FHIRError.of(400, "invalid", "expected a Parameters resource")
    patient, count, only_certain = None, None, False
    if body.get("resourceType") == "Patient":
        patient = body
    elif body.get("resourceType") == "Parameters":
        for p in body.get("parameter") or []:
            name = p.get("name")
            if name == "resource":
                patient = p.get("resource")
            elif name == "count":
                count = p.get("valueInteger")
            elif name == "onlyCertainMatches":
                only_certain = bool(p.get("valueBoolean"))
    else:
        raise FHIRError.of(400, "invalid", "expected a Parameters resource")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise FHIRError.of(400, "required", "parameter 'resource' (a Patient) is required",
                           "Parameters.parameter")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise FHIRError.of(400, "invalid", "count must be a positive integer",
                           "Parameters.parameter")
    gov = sc.governance
    gov.require(access, "Patient", "s")
    try:
        bundle = IdentityService.of(sc).match(patient, count, only_certain, access.policy)
    except FHIRError as e:
        gov.audit(access, "match", "4", entity="Patient/$match", reason=str(e))
        raise
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    gov.audit(access, "match", "0", entity="Patient/$match",
              patient_id=ids[0] if len(ids) == 1 else None)
    return bundle
