"""The search-index extractor: resource -> rows of the search index tables."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...fhir.compartment import secured_reference
from .convert import infer_type, make_sink
from .fhirpath import Compiler, Unsupported, parse, reference_type, root_name, split_union
from .model import Model

__all__ = ["DEFAULT_DEFINITIONS", "SUPPORTED_TYPES", "IndexRows", "Indexer", "SearchParam"]

DEFAULT_DEFINITIONS = Path(__file__).resolve().parents[2] / "fhir" / "definitions"

SUPPORTED_TYPES = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Encounter",
    "EpisodeOfCare",
    "Condition",
    "Observation",
    "DiagnosticReport",
    "Procedure",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationDispense",
    "MedicationAdministration",
    "Medication",
    "AllergyIntolerance",
    "Immunization",
    "CarePlan",
    "CareTeam",
    "DocumentReference",
    "Composition",
    "Flag",
    "ServiceRequest",
    "Appointment",
    "Consent",
    "Provenance",
    "AuditEvent",
    "RelatedPerson",
    "Questionnaire",
    "QuestionnaireResponse",
    "List",
    "Task",
    "Goal",
    "Group",
    "Device",
    "Claim",
    "ExplanationOfBenefit",
    "Coverage",
    "ImagingStudy",
    "SupplyDelivery",
    "HealthcareService",
    "Endpoint",
    "Basic",
    "Communication",
    "Media",
    "Specimen",
    "FamilyMemberHistory",
    "ClinicalImpression",
    "RiskAssessment",
    "DetectedIssue",
    "NutritionOrder",
    "DeviceRequest",
)

# Kept by the store as columns, not index rows.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})
_COMMON_BASES = ("Resource", "DomainResource")


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str  # number|date|string|token|reference|quantity|uri|composite|special
    base: str  # resource type (one SearchParam object per base type)
    expression: str  # the FHIRPath for this base only
    targets: tuple[str, ...]
    modifiers: tuple[str, ...]
    comparators: tuple[str, ...]
    url: str
    description: str


@dataclass(slots=True)
class IndexRows:
    # (param, system, code, text); text = normalized display / CodeableConcept.text (for :text)
    tokens: list = field(default_factory=list)
    # (param, normalized, exact)
    strings: list = field(default_factory=list)
    # (param, low, high): inclusive canonical UTC 'YYYY-MM-DDTHH:MM:SS'
    dates: list = field(default_factory=list)
    # (param, low, high, value, system, code, unit) -- number and quantity params
    numbers: list = field(default_factory=list)
    # (param, target_type, target_id, url)
    references: list = field(default_factory=list)
    # (param, uri)
    uris: list = field(default_factory=list)
    # logical ids of the Patients whose compartment holds this resource
    compartments: set = field(default_factory=set)


# ------------------------------------------------------------------------- closure chains


def _get(key: str, nxt: Callable) -> Callable:
    def get(node, root, out):
        if node.__class__ is dict:
            v = node.get(key)
            if v is not None:
                if v.__class__ is list:
                    for x in v:
                        nxt(x, root, out)
                else:
                    nxt(v, root, out)

    return get


def _where(pred: Callable, nxt: Callable) -> Callable:
    def where(node, root, out):
        if pred(node, root):
            nxt(node, root, out)

    return where


def _entry(nxt: Callable) -> Callable:
    """Takes the (already fetched) value of the branch's first JSON key."""

    def entry(v, root, out):
        if v.__class__ is list:
            for x in v:
                nxt(x, root, out)
        else:
            nxt(v, root, out)

    return entry


def _chain(steps: tuple, sink: Callable) -> Callable:
    fn = sink
    for kind, arg in reversed(steps):
        fn = _get(arg, fn) if kind == "get" else _where(arg, fn)
    return fn


def _collect(node, root, out):
    out.append(node)


class _Plan:
    __slots__ = ("always", "by_key", "comp_params", "is_patient", "nodes")

    def __init__(self):
        self.by_key: dict[str, list[Callable]] = {}
        self.always: list[Callable] = []
        self.comp_params: frozenset[str] = frozenset()
        self.is_patient = False
        # code -> list of fn(resource) -> nodes (compiled extraction, for tests / debugging)
        self.nodes: dict[str, list[Callable]] = {}


def fhirpathpy_options(resource_types, holder) -> dict:
    """fhirpathpy options adding the two functions the R4 definitions use that it lacks:
    resolve() (type from the reference string; contained references against `holder.root`, the
    resource being evaluated) and hasExtension(url)."""
    from fhirpathpy.engine.nodes import ResourceNode

    def resolve(inputs):
        out = []
        root = getattr(holder, "root", None) or {}
        for n in inputs:
            t = reference_type(n, root, resource_types) if isinstance(n, (dict, str)) else None
            if t:
                out.append(ResourceNode.create_node({"resourceType": t}, t))
        return out

    def has_extension(inputs, url):
        return [
            any(
                isinstance(n, dict) and any(e.get("url") == url for e in n.get("extension", ()))
                for n in inputs
            )
        ]

    return {
        "userInvocationTable": {
            "resolve": {"fn": resolve, "arity": {0: []}},
            "hasExtension": {"fn": has_extension, "arity": {1: ["String"]}},
        }
    }


def _own_description(desc: str, rt: str) -> str:
    """Multi-base definitions describe each base on a '* [Type](type.html): text' line."""
    marker = f"* [{rt}]("
    for line in desc.splitlines():
        if line.startswith(marker):
            return line.split("): ", 1)[-1].strip()
    return desc


class Indexer:
    """Computes search-index rows for FHIR R4 resources from the official SearchParameters.

    Attributes after construction:
      skipped     -- [(base, code, reason)] parameters that are not indexed
      fallbacks   -- [(base, code, expression, reason)] expressions evaluated with fhirpathpy
      unconverted -- [(base, code, element type)] branches whose values have no row form
                     (e.g. SampledData in value-quantity)
    """

    def __init__(self, definitions_dir: Path | None = None):
        d = Path(definitions_dir) if definitions_dir is not None else DEFAULT_DEFINITIONS
        with open(d / "fhir.schema.json", "rb") as f:
            self.model = Model(json.load(f))
        with open(d / "search-parameters-r4.json", "rb") as f:
            bundle = json.load(f)
        with open(d / "CompartmentDefinition-patient.json", "rb") as f:
            comp = json.load(f)
        self._rtypes = self.model.resource_types
        self._ext_value_types = self.model.element("Extension", "value") or {}
        self._compiler = Compiler(self.model)
        self._compartment = {r["code"]: tuple(r.get("param", ())) for r in comp.get("resource", ())}
        self.skipped: list[tuple[str, str, str]] = []
        self.fallbacks: list[tuple[str, str, str, str]] = []
        self.unconverted: list[tuple[str, str, str]] = []
        self._params: dict[str, dict[str, SearchParam]] = {}
        self._raw = [e.get("resource", {}) for e in bundle.get("entry", ())]
        self._plans: dict[str, _Plan] = {}
        self._skipped_keys: set[tuple[str, str]] = set()
        for t in SUPPORTED_TYPES:
            self._plan(t)

    # ------------------------------------------------------------------ catalogue
    def supported_types(self) -> list[str]:
        return list(SUPPORTED_TYPES)

    def params_for(self, resource_type: str) -> dict[str, SearchParam]:
        """code -> SearchParam for this type (incl. Resource/DomainResource ones, minus _id and
        _lastUpdated). Includes parameters listed in `skipped` (composite, special, no expression)."""
        if resource_type not in self._params:
            if resource_type not in self._rtypes:
                raise ValueError(f"unknown FHIR R4 resource type {resource_type!r}")
            self._params[resource_type] = self._build_params(resource_type)
        return self._params[resource_type]

    def is_indexed(self, resource_type: str, code: str) -> bool:
        return (
            code in self.params_for(resource_type)
            and (resource_type, code) not in self._skipped_keys
        )

    def _build_params(self, rt: str) -> dict[str, SearchParam]:
        out: dict[str, SearchParam] = {}
        for r in self._raw:
            if r.get("resourceType") != "SearchParameter":
                continue
            bases = r.get("base") or ()
            code = r.get("code")
            if not code or code in COLUMN_PARAMS:
                continue
            if rt in bases:
                own = rt
            elif any(b in bases for b in _COMMON_BASES):
                own = next(b for b in _COMMON_BASES if b in bases)
            else:
                continue
            expr = r.get("expression") or ""
            if expr:
                parts = []
                for p in split_union(expr):
                    try:
                        root = root_name(parse(p))
                    except Unsupported:
                        root = None
                    if root in (own, None) or (own in _COMMON_BASES and root in _COMMON_BASES):
                        if own in _COMMON_BASES and root in _COMMON_BASES:
                            p = rt + p[p.index(root) + len(root) :] if p.startswith(root) else p
                        parts.append(p)
                expr = " | ".join(parts)
            if code in out:  # first definition wins (no clashes in R4 core for these types)
                continue
            out[code] = SearchParam(
                code=code,
                type=r.get("type", ""),
                base=rt,
                expression=expr,
                targets=tuple(r.get("target", ())),
                modifiers=tuple(r.get("modifier", ())),
                comparators=tuple(r.get("comparator", ())),
                url=r.get("url", ""),
                description=_own_description(r.get("description", ""), rt),
            )
        return out

    # ------------------------------------------------------------------ compilation
    def _plan(self, rt: str) -> _Plan:
        plan = self._plans.get(rt)
        if plan is not None:
            return plan
        plan = _Plan()
        params = self.params_for(rt)
        for code, sp in params.items():
            reason = None
            if sp.type in ("composite", "special"):
                reason = f"{sp.type} parameter: not indexed"
            elif not sp.expression:
                reason = "no FHIRPath expression in the R4 definitions"
            if reason:
                self.skipped.append((rt, code, reason))
                self._skipped_keys.add((rt, code))
                continue
            try:
                branches = self._compiler.compile(sp.expression, rt)
            except Unsupported as e:
                self._add_fallback(plan, sp, str(e))
                continue
            plan.nodes[code] = []
            for b in branches:
                self._add_branch(plan, sp, b)
        plan.is_patient = rt == "Patient"
        cp = self._compartment.get(rt, ())
        plan.comp_params = frozenset(p for p in cp if p in params)
        self._plans[rt] = plan
        return plan

    def _add_branch(self, plan: _Plan, sp: SearchParam, b) -> None:
        element = next((a for k, a in reversed(b.steps) if k == "get"), None)
        sink = make_sink(sp.type, b.type, sp.code, self._rtypes, self._ext_value_types, element)
        if sink is None and (sp.base, sp.code, b.type) not in self.unconverted:
            self.unconverted.append((sp.base, sp.code, b.type))
        if b.generic is not None:
            gen = b.generic

            def run_generic(root, out, _g=gen, _s=sink):
                for v in _g([root], root):
                    _s(v, root, out)

            if sink is not None:
                plan.always.append(run_generic)
            plan.nodes[sp.code].append(lambda r, _g=gen: list(_g([r], r)))
            return
        steps = b.steps
        if not steps or steps[0][0] != "get":
            if sink is not None:
                chain = _chain(steps, sink)
                plan.always.append(lambda r, out, _c=chain: _c(r, r, out))
            collect = _chain(steps, _collect)
        else:
            key = steps[0][1]
            if sink is not None:
                plan.by_key.setdefault(key, []).append(_entry(_chain(steps[1:], sink)))
            collect = _chain(steps, _collect)

        def nodes(r, _c=collect):
            out = []
            _c(r, r, out)
            return out

        plan.nodes[sp.code].append(nodes)

    def _add_fallback(self, plan: _Plan, sp: SearchParam, reason: str) -> None:
        import fhirpathpy
        from fhirpathpy.models import models

        self.fallbacks.append((sp.base, sp.code, sp.expression, reason))
        holder = threading.local()
        compiled = fhirpathpy.compile(
            sp.expression, models["r4"], fhirpathpy_options(self._rtypes, holder)
        )
        sinks: dict[str, Callable | None] = {}

        def fn(root):
            holder.root = root
            try:
                return compiled(copy.deepcopy(root))  # fhirpathpy may annotate its input
            finally:
                holder.root = None

        def run(root, out):
            for v in fn(root):
                t = infer_type(v)
                if t is None:
                    continue
                if t not in sinks:
                    sinks[t] = make_sink(sp.type, t, sp.code, self._rtypes, self._ext_value_types)
                s = sinks[t]
                if s is not None:
                    s(v, root, out)

        plan.always.append(run)
        plan.nodes[sp.code] = [lambda r: list(fn(r))]

    # ------------------------------------------------------------------ indexing
    def index(self, resource: dict) -> IndexRows:
        """All index rows for one resource (references must already be resolved to Type/id for
        compartments to be found; urn:uuid references are kept as urls)."""
        rt = resource.get("resourceType")
        plan = self._plans.get(rt)
        if plan is None:
            if rt not in self._rtypes:
                raise ValueError(f"not a FHIR R4 resource type: {rt!r}")
            plan = self._plan(rt)
        rows = IndexRows([], [], [], [], [], [], set())
        by_key = plan.by_key
        for k, v in resource.items():
            fns = by_key.get(k)
            if fns is not None:
                for fn in fns:
                    fn(v, resource, rows)
        for fn in plan.always:
            fn(resource, rows)
        # FHIRPath unions and repeated codings can yield the same row twice
        if len(rows.tokens) > 1:
            rows.tokens = list(dict.fromkeys(rows.tokens))
        if len(rows.strings) > 1:
            rows.strings = list(dict.fromkeys(rows.strings))
        if len(rows.dates) > 1:
            rows.dates = list(dict.fromkeys(rows.dates))
        if len(rows.numbers) > 1:
            rows.numbers = list(dict.fromkeys(rows.numbers))
        if len(rows.references) > 1:
            rows.references = list(dict.fromkeys(rows.references))
        if len(rows.uris) > 1:
            rows.uris = list(dict.fromkeys(rows.uris))
        comp = plan.comp_params
        if comp:
            c = rows.compartments
            for p, t, i, _u in rows.references:
                if t == "Patient" and i is not None and p in comp:
                    c.add(i)
        if plan.is_patient:
            pid = resource.get("id")
            if pid:
                rows.compartments.add(pid)
        elif rt == "Binary":
            # fhir/compartment.py: a Binary secured by a Patient is in that patient's record
            target = secured_reference(resource)
            if target is not None and target[0] == "Patient":
                rows.compartments.add(target[1])
        return rows

    def extract(self, resource: dict, code: str) -> list:
        """The nodes the compiled expression of `code` selects (what fhirpathpy would return)."""
        plan = self._plan(resource["resourceType"])
        out = []
        for fn in plan.nodes.get(code, ()):
            out.extend(fn(resource))
        return out
