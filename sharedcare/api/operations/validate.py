"""$validate (http://hl7.org/fhir/R4/resource-operation-validate.html): would this resource be
accepted? Every problem, as an OperationOutcome; nothing is written.

    POST /fhir/{type}/$validate         a resource, or Parameters (resource, mode, profile)
    POST /fhir/{type}/{id}/$validate    the same, for an update (mode defaults to update)

The resource is checked as FHIR R4 (the JSON schema, ids, NHS numbers) and against the UK Core
profiles it claims in ``meta.profile`` plus the ``profile`` asked for. The answer is 200 with an
OperationOutcome listing every problem, or a single information issue saying there are none
(plus information notes on codes that could not be checked here, e.g. SNOMED CT). A request that
cannot be validated (no resource, a resource of another type, an unknown profile or mode) is a
400.

Scope: $validate tells a client whether the server would take that write, so it needs the SMART
scope of the write it stands for on the type -- ``c`` for create (the default at type level),
``u`` for update (the default at instance level), ``d`` for delete. A read-only token cannot
probe write rules; no stored record is read, so no care relationship is involved. One audit
event ("validate", an operation) per request; refusals are audited by `Governance.require`.
"""

from __future__ import annotations

from ...fhir import ukcore
from ...fhir.outcome import FHIRError, Issue, operation_outcome
from ...fhir.validation import r4_problems
from .http import fhir_response, json_body

MODES = {"create": "c", "update": "u", "delete": "d"}
CORE_SD = "http://hl7.org/fhir/StructureDefinition/"


def _parameters(body: dict) -> tuple[dict | None, str | None, str | None]:
    """resource, mode, profile from a Parameters body (each at most once)."""
    # not the whole Parameters through the R4 schema: the resource's own problems are the
    # answer (200), not a malformed request (400)
    params = body.get("parameter", [])
    if not isinstance(params, list):
        raise FHIRError.of(400, "structure", "Parameters.parameter must be an array",
                           "Parameters.parameter")
    resource = mode = prof = None
    seen: set[str] = set()
    for i, p in enumerate(params):
        where = f"Parameters.parameter[{i}]"
        name = p.get("name") if isinstance(p, dict) else None
        if not isinstance(name, str):
            raise FHIRError.of(400, "structure", "a parameter needs a name", where)
        if name in seen:
            raise FHIRError.of(400, "invalid", f"$validate takes '{name}' at most once", where)
        seen.add(name)
        if name == "resource":
            resource = p.get("resource")
            if not isinstance(resource, dict):
                raise FHIRError.of(400, "required", "the 'resource' parameter needs a resource",
                                   where)
        elif name == "mode":
            mode = p.get("valueCode") or p.get("valueString")
            if not isinstance(mode, str):
                raise FHIRError.of(400, "required", "mode is a valueCode", where)
        elif name == "profile":
            prof = p.get("valueUri") or p.get("valueCanonical") or p.get("valueString")
            if not isinstance(prof, str):
                raise FHIRError.of(400, "required", "profile is a valueUri", where)
        else:
            raise FHIRError.of(400, "not-supported",
                               f"$validate takes no parameter '{str(name)[:60]}'", where)
    return resource, mode, prof


def handle(api, request, raw: bytes):
    rtype = request.path_params["type"]
    rid = request.path_params.get("id")
    for name in request.query_params:
        if name not in ("mode", "profile"):
            raise FHIRError.of(400, "not-supported", f"$validate takes no parameter "
                               f"'{name[:60]}'", name[:60])
    access = api.gov.authenticate(request)
    body = json_body(raw)
    if body.get("resourceType") == "Parameters" and rtype != "Parameters":
        resource, mode, prof = _parameters(body)
    else:
        resource, mode, prof = body, None, None
    mode = mode or request.query_params.get("mode") or ("update" if rid else "create")
    prof = prof or request.query_params.get("profile")
    if mode not in MODES:
        raise FHIRError.of(400, "not-supported", f"$validate mode '{str(mode)[:40]}' is not "
                           f"supported here (one of {', '.join(MODES)})", "mode")
    if mode != "create" and rid is None:
        raise FHIRError.of(400, "invalid", f"mode {mode} validates an existing resource: "
                           f"POST {rtype}/[id]/$validate", "mode")
    entity = f"{rtype}/{rid}/$validate" if rid else f"{rtype}/$validate"
    api.gov.require(access, rtype, MODES[mode], action="validate", entity=entity)
    profiles = _profiles(rtype, prof)
    if resource is None:
        if mode != "delete":
            raise FHIRError.of(400, "required", f"mode {mode} needs the resource to validate",
                               "resource")
        issues, notes = [], []  # nothing but governance stands in the way of a delete
    else:
        issues, notes, profiles = _check(resource, rtype, rid, mode, profiles)
    api.gov.audit(access, "validate", "0", entity=entity)
    if not issues:
        checked = f" and {', '.join(profiles)}" if profiles else ""
        issues = [Issue("informational", f"no problems found: valid FHIR R4{checked}",
                        severity="information")]
    return fhir_response(operation_outcome(issues + notes))


def _profiles(rtype: str, prof) -> list[str]:
    """The UK Core profile asked for ([] for none or the base R4 definition of the type)."""
    if prof is None:
        return []
    if not isinstance(prof, str) or not prof:
        raise FHIRError.of(400, "invalid", "profile must be a canonical URL", "profile")
    if prof.split("|", 1)[0] == CORE_SD + rtype:
        return []  # the base R4 definition: what r4_problems checks
    if not ukcore.is_known_profile(prof):
        raise FHIRError.of(400, "not-supported", f"the profile {prof[:200]} is not known to "
                           "this server (it knows the UK Core profiles and base FHIR R4)",
                           "profile")
    found = ukcore.profile(prof)
    if found.type != rtype:
        raise FHIRError.of(400, "invalid", f"{found.name} profiles {found.type}, not {rtype}",
                           "profile")
    return [found.url]


def _check(resource: dict, rtype: str, rid: str | None, mode: str, profiles: list[str]
           ) -> tuple[list[Issue], list[Issue], list[str]]:
    """The resource's problems, the notes on what could not be checked, the profiles checked."""
    if resource.get("resourceType") != rtype:
        raise FHIRError.of(400, "invalid", f"POST {rtype}/$validate takes a {rtype} (or "
                           "Parameters with one)", "resourceType")
    issues = r4_problems(resource, rtype)
    if mode == "update" and resource.get("id") != rid:
        issues.append(Issue("invariant", f"an update of {rtype}/{rid} must carry id '{rid}'",
                            f"{rtype}.id"))
    if any("nested too deeply" in i.diagnostics for i in issues):
        return issues, [], []  # the R4 check could not walk it: nor can the profile check
    claimed = ukcore.claimed_profiles(resource)
    wanted = claimed + [p for p in profiles if p not in {c.split("|", 1)[0] for c in claimed}]
    notes: list[Issue] = []
    checked: list[str] = []
    if wanted:
        report = ukcore.check(resource, wanted, rtype)
        issues, notes, checked = issues + report.issues, report.notes, report.profiles
    if rtype == "Bundle":  # each entry against the UK Core profiles it claims, as a write would
        entries = resource.get("entry")
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            inner = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(inner, dict) and ukcore.claimed_profiles(inner):
                report = ukcore.check(inner, where=f"Bundle.entry[{i}].resource")
                issues, notes = issues + report.issues, notes + report.notes
                checked += [p for p in report.profiles if p not in checked]
    return issues, notes, checked
