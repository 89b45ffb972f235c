"""One identity per person, kept in the store.

Every source ``Patient`` (one per partner record) is linked from exactly one ``Person``:

* a Patient with a *valid* NHS number joins the Person of that number (id derived from the number,
  so two writers cannot create two Persons for one number), ``assurance = level4`` -- done by the
  store write hook (:mod:`sharedcare.identity.hook`) in the writer's own transaction;
* a Patient without one is queued by that hook, and the worker the server runs
  (:mod:`sharedcare.identity.worker`) calls :meth:`IdentityService.resolve`: it is scored against
  the store's other patients by the splink :class:`~sharedcare.identity.matching.Linker` (trained
  on the store's own patients): a *certain* match joins that patient's Person (``level3``); a
  *possible* one gets a Person of its own and a review ``Task`` naming the candidate with the
  evidence (fields that agreed, match weight); anything else gets a Person of its own
  (``level1``).

A person's decisions -- :meth:`IdentityService.link`, :meth:`~IdentityService.unlink`,
:meth:`~IdentityService.confirm`, :meth:`~IdentityService.reject` -- are audited (one
``AuditEvent`` in the same transaction as the change), carry their reason on the link, and are
reversible. A partner's own merge (ADT A40) is the partner's record (``Patient.link``
replaced-by); a link across partners is only ever a Person link.

``Patient/$match`` (FHIR R4 / IHE PDQm) is :meth:`IdentityService.match`; the HTTP handler the
FHIR API wires is :func:`match_handler`.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

import orjson
from sqlalchemy import Connection, false, func, select

from ..fhir.codes import BASE, NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM
from ..fhir.outcome import FHIRError
from ..logsafe import log_failure
from ..store.repository import PermitAll, Store, WriteOp, instant, now_utc
from ..store.schema import idx_token, resource
from . import nhs_number as nhs
from .hook import dequeue
from .links import (
    LinkPlan,
    link_basis,
    link_reason,
    make_link,
    person_id_for_nhs,
    person_id_for_patient,
    read_current,
    valid_nhs_number,
)
from .matching import (
    MATCH_GRADE_EXTENSION_URL,
    Demographics,
    Linker,
    demographics_from_patient,
    normalise_name,
    normalise_postcode,
)
from .nicknames import canonical as _canonical

log = logging.getLogger(__name__)

_NS = uuid.UUID("6f0d2b8e-5d43-4f59-9a55-1f7a3c2b9e01")
TASK_CODE_SYSTEM = f"{BASE}/CodeSystem/task-code"
IDENTITY_REVIEW = "identity-review"
GRADE_ORDER = {"certain": 3, "probable": 2, "possible": 1, "certainly-not": 0}
MAX_CANDIDATES = 500
MIN_REASON = 10
FIELDS = ("given", "family", "birth_date", "sex", "postcode")


def _source_of(res: dict) -> str:
    for tag in (res.get("meta") or {}).get("tag") or ():
        if tag.get("system") == SOURCE_ORG_SYSTEM:
            return tag.get("code") or "unknown"
    return "unknown"


@dataclass
class Resolution:
    patient_id: str
    outcome: str  # nhs-number | link | review | new | already-linked | changed
    person_id: str
    probability: float | None = None
    candidate: str | None = None
    task_id: str | None = None


@dataclass
class Review:
    """One open identity review: the records, and the evidence the model gave."""

    task_id: str
    patient_id: str
    candidate_id: str
    patient_source: str
    candidate_source: str
    probability: float | None
    match_weight: float | None
    grade: str | None
    fields: dict[str, str] = field(default_factory=dict)  # field -> "agree: <label>"
    authored: str | None = None


class IdentityService:
    """Person links over the store. Thread-safe; one per :class:`SharedCare` (see :meth:`of`)."""

    _instances: ClassVar[dict[int, IdentityService]] = {}

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
                    # Training reads every patient: on a large system, a Spark cluster.
                    model = Linker(engine=os.environ.get("SHAREDCARE_LINKAGE_ENGINE", "duckdb"))
                    model.train(records)
                    self._linker, self._trained_on = model, count
                except Exception as e:  # noqa: BLE001 - tiny populations cannot be trained
                    log_failure(log, f"identity model could not be trained on {count} patients",
                                e)
            return self._linker

    def _patient_count(self) -> int:
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

    def explain(self, patient: dict, candidate: dict) -> dict:
        """The evidence for a pair: match weight, probability, grade and, per field, whether it
        agreed (see :meth:`Linker.explain`). Falls back to exact agreement before training."""
        q = demographics_from_patient(patient, "q")
        c = demographics_from_patient(candidate, "c")
        model = self.linker()
        if model is not None and model.trained:
            return model.explain(q, c)
        p = _fallback_probability(q, c)
        fields = {}
        for f in FIELDS:
            a, b = _norm_field(q, f), _norm_field(c, f)
            if not a or not b:
                fields[f] = {"level": "missing", "label": "missing on one or both records",
                             "weight": 0.0}
            else:
                fields[f] = {"level": "agree" if a == b else "disagree",
                             "label": "exact match" if a == b else "different", "weight": 0.0}
        import math

        weight = math.log2(p / (1 - p)) if 0 < p < 1 else (99.0 if p >= 1 else -99.0)
        return {"probability": p, "match_weight": round(weight, 3),
                "grade": _fallback_grade(p), "fields": fields}

    # ------------------------------------------------------------------ reading links
    def persons_linking(self, patient_id: str, conn: Connection | None = None) -> list[str]:
        from .links import persons_of

        if conn is not None:
            return persons_of(conn, [patient_id]).get(patient_id, [])
        with self.store.engine.connect() as c:
            return persons_of(c, [patient_id]).get(patient_id, [])

    def _read(self, rtype: str, rid: str, conn) -> dict | None:
        try:
            return self.store.read(rtype, rid, PermitAll(), conn).json()
        except FHIRError:
            return None

    def _patient(self, patient_id: str, conn) -> dict:
        res = self._read("Patient", patient_id, conn)
        if res is None:
            raise FHIRError.of(404, "not-found", f"Patient/{patient_id} is not known")
        return res

    # ------------------------------------------------------------------ the model's decisions
    def resolve(self, patient_id: str) -> Resolution:
        """Give one patient its identity (see module doc). Idempotent: a patient already linked
        (other than by an NHS number it no longer has) keeps its Person."""
        patient = self._patient(patient_id, None)
        version = (patient.get("meta") or {}).get("versionId")
        number = valid_nhs_number(patient)
        if number:
            person = person_id_for_nhs(number)
            self._write(lambda conn, plan: plan.move(
                patient_id, person, make_link(patient_id, "level4", "nhs-number"),
                {"system": NHS_NUMBER_SYSTEM, "value": number}) and None)
            return Resolution(patient_id, "nhs-number", person)
        with self.store.engine.connect() as c:
            plan = LinkPlan(c)
            current = plan.person_of(patient_id)
            link = plan.link_of(patient_id)
        if current and link_basis(link) != "nhs-number":
            return Resolution(patient_id, "already-linked", current)
        rejected = self._rejected_pairs(patient_id)
        candidates = [c for c in self.candidates(patient, PermitAll())
                      if c.get("id") != patient_id and c.get("active", True) is not False
                      and c.get("id") not in rejected]
        best = self.score(patient, candidates)[:1]
        own = person_id_for_patient(patient_id)

        def unchanged(conn) -> bool:
            # The patient may have been rewritten (an NHS number added) since it was scored:
            # then the write hook has already placed it, and this decision is void.
            now = self._read("Patient", patient_id, conn)
            return now is not None and (now.get("meta") or {}).get("versionId") == version

        if best and best[0][2] == "certain":
            cand, p, _ = best[0]

            def link_it(conn, plan):
                if not unchanged(conn):
                    return "changed"
                target = self._person_for(plan, cand)
                plan.move(patient_id, target, make_link(
                    patient_id, "level3", "match", f"splink match probability {p:.4f} with "
                    f"Patient/{cand['id']}"))
                return target
            target = self._write(link_it)
            if target == "changed":
                return Resolution(patient_id, "changed", "")
            return Resolution(patient_id, "link", target, p, cand["id"])
        if best and best[0][2] in ("probable", "possible"):
            cand, p, grade = best[0]
            # One review per pair, whichever record was resolved first.
            task_id = str(uuid.uuid5(_NS, "review|" + "|".join(sorted((patient_id, cand["id"])))))
            task = review_task(task_id, patient, cand, p, grade, self.explain(patient, cand))

            def review_it(conn, plan):
                if not unchanged(conn):
                    return "changed"
                plan.move(patient_id, own, make_link(patient_id, "level1", "own"))
                if self._read("Task", task_id, conn) is None:
                    return [WriteOp("PUT", "Task", task_id, task)]
                return None  # already proposed (or decided): never reopened by the model
            if self._write(review_it) == "changed":
                return Resolution(patient_id, "changed", "")
            return Resolution(patient_id, "review", own, p, cand["id"], task_id)

        def own_it(conn, plan):
            if not unchanged(conn):
                return "changed"
            plan.move(patient_id, own, make_link(patient_id, "level1", "own"))
            return None
        if self._write(own_it) == "changed":
            return Resolution(patient_id, "changed", "")
        return Resolution(patient_id, "new", own)

    def _person_for(self, plan: LinkPlan, patient: dict) -> str:
        """The Person of an existing patient, giving it one first (in the same plan) if none."""
        current = plan.person_of(patient["id"])
        if current:
            return current
        number = valid_nhs_number(patient)
        if number:
            own = person_id_for_nhs(number)
            plan.move(patient["id"], own, make_link(patient["id"], "level4", "nhs-number"),
                      {"system": NHS_NUMBER_SYSTEM, "value": number})
        else:
            own = person_id_for_patient(patient["id"])
            plan.move(patient["id"], own, make_link(patient["id"], "level1", "own"))
        return own

    def _rejected_pairs(self, patient_id: str) -> set[str]:
        """Candidates a person has already said are someone else (a rejected review)."""
        out = set()
        for task in self._review_tasks(patient_id, statuses=("completed",)):
            if (task.get("businessStatus") or {}).get("text") == "different people":
                a, b = _task_pair(task)
                out.add(b if a == patient_id else a)
        return out

    def unlinked_patients(self) -> list[str]:
        from .links import persons_of

        out = []
        batch: list[str] = []

        def flush():
            with self.store.engine.connect() as c:
                found = persons_of(c, batch)
            out.extend(p for p in batch if p not in found)
            batch.clear()
        for s in self.store.iter_current(PermitAll(), ["Patient"]):
            batch.append(s.id)
            if len(batch) >= 500:
                flush()
        if batch:
            flush()
        return out

    def resolve_pending(self) -> list[Resolution]:
        """Resolve every patient that no Person links yet (an operator's catch-up)."""
        return [self.resolve(pid) for pid in self.unlinked_patients()]

    def _write(self, make):
        """One transaction: ``make(conn, plan)`` moves links in the plan and may return extra
        write operations (a list) or a value to hand back."""
        with self.store.begin_write() as conn, conn.begin():
            plan = LinkPlan(conn)
            out = make(conn, plan)
            if out == "changed":
                return out
            extra = out if isinstance(out, list) else []
            ops = plan.ops() + extra
            if ops:
                self.store.write(ops, conn)
            # Whoever placed them, these patients no longer wait for the worker.
            dequeue(conn, list(plan.current))
            return None if isinstance(out, list) else out

    # ------------------------------------------------------------------ a person's decisions
    def _audit(self, access, action: str, conn, patient_id: str, entity: str,
               reason: str) -> None:
        self.sc.governance.audit(access, action, "0", patient_id=patient_id, entity=entity,
                                 reason=reason, conn=conn)

    @staticmethod
    def _reason(reason: str | None) -> str:
        reason = (reason or "").strip()
        if len(reason) < MIN_REASON:
            raise FHIRError.of(400, "required", f"a reason is required (at least {MIN_REASON} "
                               "characters): it is kept with the link and in the audit trail")
        return reason

    def link(self, access, patient_a: str, patient_b: str, reason: str) -> str:
        """A person's decision that two records are one person: ``patient_b`` joins the Person of
        ``patient_a`` (or the other way round when only ``patient_b`` has a valid NHS number).
        Refused for two different valid NHS numbers. Returns the Person id."""
        reason = self._reason(reason)
        if patient_a == patient_b:
            raise FHIRError.of(400, "invalid", "a patient cannot be linked to itself")
        who = access.username or access.client_id or "operator"
        with self.store.begin_write() as conn, conn.begin():
            a, b = self._patient(patient_a, conn), self._patient(patient_b, conn)
            na, nb = valid_nhs_number(a), valid_nhs_number(b)
            if na and nb and na != nb:
                raise FHIRError.of(409, "conflict", f"Patient/{patient_a} and Patient/{patient_b}"
                                   " have different valid NHS numbers: they are different people "
                                   "(correct the NHS number at its source if it is wrong)")
            if nb and not na:
                a, b, na, nb = b, a, nb, na
            plan = LinkPlan(conn)
            target = self._person_for(plan, a)
            if plan.person_of(b["id"]) == target:
                raise FHIRError.of(409, "duplicate", f"Patient/{patient_a} and Patient/"
                                   f"{patient_b} are already one person (Person/{target})")
            if nb:  # same valid NHS number: already in that number's Person
                raise FHIRError.of(409, "duplicate", "both records carry the same NHS number")
            plan.move(b["id"], target, make_link(b["id"], "level3", "operator",
                                                 f"linked by {who} to Patient/{a['id']}: "
                                                 f"{reason}"))
            self.store.write(plan.ops(), conn)
            self._audit(access, "identity-link", conn, b["id"], f"Person/{target}",
                        f"linked to Patient/{a['id']}: {reason}")
        return target

    def unlink(self, access, patient_id: str, reason: str) -> str:
        """A person's decision that a record is not the person it is linked to: it gets a Person
        of its own (and the model will not put it back: it stays linked, by a person). Refused for
        a record whose valid NHS number places it. Returns the new Person id."""
        reason = self._reason(reason)
        who = access.username or access.client_id or "operator"
        with self.store.begin_write() as conn, conn.begin():
            patient = self._patient(patient_id, conn)
            if valid_nhs_number(patient):
                raise FHIRError.of(409, "conflict", f"Patient/{patient_id} carries a valid NHS "
                                   "number, which places it in that number's Person: correct the "
                                   "NHS number at its source instead")
            plan = LinkPlan(conn)
            current = plan.person_of(patient_id)
            if current is not None and plan.members(current) == [patient_id]:
                raise FHIRError.of(409, "conflict", f"Patient/{patient_id} is not linked to any "
                                   "other record: there is nothing to unlink")
            own = person_id_for_patient(patient_id)
            if own == current or plan.members(own):
                own = str(uuid.uuid4())
            plan.move(patient_id, own, make_link(
                patient_id, "level1", "operator",
                f"unlinked by {who} from Person/{current}: {reason}"))
            self.store.write(plan.ops(), conn)
            self._audit(access, "identity-unlink", conn, patient_id, f"Person/{current}",
                        f"unlinked to Person/{own}: {reason}")
        return own

    def _review_tasks(self, patient_id: str, statuses: tuple[str, ...] = ("requested",)
                      ) -> list[dict]:
        """Identity reviews naming a patient (as the record or the candidate)."""
        return [t for t in self._all_tasks([("code", f"{TASK_CODE_SYSTEM}|{IDENTITY_REVIEW}"),
                                            ("status", ",".join(statuses)), ("_count", "1000")])
                if patient_id in _task_pair(t)]

    def _all_tasks(self, params) -> list[dict]:
        out, cursor = [], None
        while True:
            page = self.store.search("Task", params + ([("_cursor", cursor)] if cursor else []),
                                     PermitAll(), lenient=True)
            out += [s.json() for s in page.matches]
            cursor = page.next_cursor
            if not cursor:
                return out

    def review_queue(self, offset: int = 0, limit: int | None = None) -> list[Review]:
        """Open reviews, oldest first, each with its evidence; a page of them with offset and
        limit (the page reads only its own Tasks)."""
        stmt = (select(resource.c.content).where(*self._open_reviews())
                .order_by(resource.c.pk).offset(offset))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.store.engine.connect() as c:
            tasks = [orjson.loads(content) for (content,) in c.execute(stmt)]
        srcs = read_current_sources(self.store, {p for t in tasks for p in _task_pair(t)})
        out = []
        for task in tasks:
            a, b = _task_pair(task)
            values = {i["type"]["text"]: next((v for k, v in i.items() if k.startswith("value")),
                                              None) for i in task.get("input") or []}
            fields = {k.split(":", 1)[1]: v for k, v in values.items()
                      if k.startswith("agreement:")}
            out.append(Review(task["id"], a, b, srcs.get(a, "?"), srcs.get(b, "?"),
                              values.get("match-probability"), values.get("match-weight"),
                              values.get("match-grade"), fields, task.get("authoredOn")))
        return out

    def review_count(self) -> int:
        with self.store.engine.connect() as c:
            return c.execute(select(func.count()).select_from(resource)
                             .where(*self._open_reviews())).scalar_one()

    @staticmethod
    def _open_reviews() -> list:
        """Identity review Tasks still waiting for a person, through the store's token index."""
        def token(param: str, code: str, system: str | None = None):
            cond = [idx_token.c.type == "Task", idx_token.c.param == param,
                    idx_token.c.code == code]
            if system:
                cond.append(idx_token.c.system == system)
            return resource.c.pk.in_(select(idx_token.c.resource_pk).where(*cond))

        return [resource.c.type == "Task", resource.c.deleted == false(),
                token("code", IDENTITY_REVIEW, TASK_CODE_SYSTEM), token("status", "requested")]

    def _decide(self, access, task_id: str, same_person: bool, reason: str | None) -> str | None:
        with self.store.begin_write() as conn, conn.begin():
            task = self._read("Task", task_id, conn)
            if task is None or (task.get("code") or {}).get("coding", [{}])[0].get("code") != \
                    IDENTITY_REVIEW:
                raise FHIRError.of(404, "not-found", f"Task/{task_id} is not an identity review")
            if task.get("status") != "requested":
                raise FHIRError.of(409, "conflict", f"Task/{task_id} was already decided "
                                   f"({(task.get('businessStatus') or {}).get('text')})")
            patient_id, cand = _task_pair(task)
            who = access.username or access.client_id or "operator"
            verdict = "same person" if same_person else "different people"
            done = {**task, "status": "completed", "businessStatus": {"text": verdict},
                    "lastModified": instant(now_utc())}
            if reason:
                done["note"] = [*(task.get("note") or []), {"text": f"{who}: {reason}"[:1000]}]
            plan = LinkPlan(conn)
            target = None
            if same_person:
                p, c = self._patient(patient_id, conn), self._patient(cand, conn)
                np_, nc = valid_nhs_number(p), valid_nhs_number(c)
                if np_ and nc and np_ != nc:
                    raise FHIRError.of(409, "conflict", "the two records have different valid "
                                       "NHS numbers: they are different people")
                if np_ and not nc:
                    p, c = c, p
                target = self._person_for(plan, c)
                plan.move(p["id"], target, make_link(
                    p["id"], "level3", "review",
                    f"confirmed by {who} (Task/{task_id})" + (f": {reason}" if reason else "")))
            self.store.write(plan.ops() + [WriteOp("PUT", "Task", task_id, done)], conn)
            self._audit(access, "identity-confirm" if same_person else "identity-reject", conn,
                        patient_id, f"Task/{task_id}",
                        f"{verdict} as Patient/{cand}" + (f": {reason}" if reason else ""))
            return target

    def confirm(self, access, task_id: str, reason: str | None = None) -> str:
        """Close a review as *same person*: the records share one Person. Returns its id."""
        return self._decide(access, task_id, True, reason)

    def reject(self, access, task_id: str, reason: str | None = None) -> None:
        """Close a review as *different people*: nothing is linked, and the model will not
        propose the pair again."""
        self._decide(access, task_id, False, reason)

    def decide_review(self, task_id: str, same_person: bool, access=None) -> None:
        """Close a review Task (the system's own decision unless ``access`` says whose)."""
        from ..governance.policy import Access

        access = access or self.sc.governance.prepare(Access("identity-service", None, "sysadmin"))
        self._decide(access, task_id, same_person, None)

    def explain_link(self, patient_id: str) -> dict:
        """How a patient is linked: its Person, and each member with how and why it joined."""
        with self.store.engine.connect() as c:
            plan = LinkPlan(c)
            person = plan.person_of(patient_id)
            if person is None:
                return {"patient": patient_id, "person": None, "members": []}
            members = [{"patient": ref.split("/", 1)[1], "assurance": lk.get("assurance"),
                        "basis": link_basis(lk), "reason": link_reason(lk)}
                       for ref, lk in plan.links[person].items()]
        return {"patient": patient_id, "person": person, "members": members}

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


def _task_pair(task: dict) -> tuple[str, str]:
    patient = (task.get("for") or {}).get("reference", "").split("/", 1)[-1]
    cand = next((i["valueReference"]["reference"].split("/", 1)[1]
                 for i in task.get("input") or [] if "valueReference" in i), "")
    return patient, cand


def read_current_sources(store: Store, patient_ids) -> dict[str, str]:
    with store.engine.connect() as c:
        return {pid: _source_of(res) for pid, res in read_current(c, "Patient",
                                                                    patient_ids).items()}


def _person_resource(conn, patient_id: str) -> dict | None:
    plan = LinkPlan(conn)
    person = plan.person_of(patient_id)
    return plan.persons.get(person) if person else None


def _norm_field(d: Demographics, f: str) -> str | None:
    v = getattr(d, f)
    if f in ("given", "family"):
        return normalise_name(v)
    if f == "postcode":
        return normalise_postcode(v)
    return v or None


def review_task(task_id: str, patient: dict, candidate: dict, probability: float,
                grade: str, evidence: dict | None = None) -> dict:
    inputs = [
        {"type": {"text": "candidate"},
         "valueReference": {"reference": f"Patient/{candidate['id']}"}},
        {"type": {"text": "match-probability"}, "valueDecimal": round(probability, 6)},
        {"type": {"text": "match-grade"}, "valueCode": grade},
    ]
    if evidence:
        inputs.append({"type": {"text": "match-weight"},
                       "valueDecimal": round(float(evidence["match_weight"]), 3)})
        for name, f in evidence["fields"].items():
            inputs.append({"type": {"text": f"agreement:{name}"},
                           "valueString": f"{f['level']}: {f['label']} (weight {f['weight']})"})
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
        "input": inputs,
    }


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
    if a[0] and b[0] and _canonical(a[0]) != _canonical(b[0]):
        # Given names that disagree outright (twins share everything else): a person decides,
        # as the trained model's given-name guard does.
        return min({5: 0.995, 4: 0.9, 3: 0.6}.get(agree, 0.05), 0.9)
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
