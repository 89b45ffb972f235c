"""Every error a FHIR client sees is an OperationOutcome naming each problem and where it is."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Issue:
    code: str  # http://hl7.org/fhir/issue-type, e.g. invalid, not-found, conflict, forbidden
    diagnostics: str
    expression: str | None = None  # FHIRPath-ish location, e.g. "Bundle.entry[3].resource.status"
    severity: str = "error"

    def as_json(self) -> dict:
        out = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


@dataclass
class FHIRError(Exception):
    """An error to return to the client as an OperationOutcome with an HTTP status."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, status: int, code: str, diagnostics: str, expression: str | None = None):
        return cls(status, [Issue(code, diagnostics, expression)])

    def __str__(self) -> str:
        return "; ".join(
            (f"{i.expression}: " if i.expression else "") + i.diagnostics for i in self.issues
        )

    def outcome(self) -> dict:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.as_json() for i in issues]}


def not_found(rtype: str, rid: str) -> FHIRError:
    return FHIRError.of(404, "not-found", f"{rtype}/{rid} is not known")


def invalid(diagnostics: str, expression: str | None = None, status: int = 400) -> FHIRError:
    return FHIRError.of(status, "invalid", diagnostics, expression)
