"""Keyed pseudonyms and de-identification of FHIR resources for secondary use.

    key = load_key(sc.data_dir)                    # data/keys/pseudonym.key, made on first use
    p = Pseudonymiser(key, project="asthma-2026", coarsen_dates="month")
    p.value("9990677786")                          # 'k3v...' (24 base32 characters)
    p.resource(patient_json)                       # a de-identified copy

The pseudonym of a value is ``base32(HMAC-SHA256(key, project + ":" + value))`` truncated to
120 bits (24 lower-case characters): the same value gives the same pseudonym within a project
(so tables of one extract still join), and unrelated pseudonyms in another project (so two
projects' outputs cannot be linked without the key). The key is 32 random bytes held by the
system beside the database (``<data dir>/keys/pseudonym.key``, mode 0600); it is never written
to any output.

What :meth:`Pseudonymiser.resource` does to one resource (the *de-identification rules*):

* ``id``: pseudonymised, except for directory resources (Organization, Practitioner, Location,
  Medication ... -- reference data about no patient), which keep theirs.
* references ``Type/id`` (relative, absolute or ``urn:uuid:``): the id is pseudonymised exactly
  as the target's own ``id`` is, so ``getReferenceKey()`` still joins to ``getResourceKey()``;
  references to directory types are kept. ``display`` is dropped from every reference except
  to Organization / Location / HealthcareService / Medication (it may carry a person's name).
* identifiers (NHS number, local MRNs, SDS ids ...): ``value`` pseudonymised, ``system`` kept;
  ODS organisation codes are kept (they identify organisations, not people).
* names, telecom, photos, contacts, narrative (``text.div``), notes (``note``), attachment
  content (``data``/``url``) are dropped everywhere; addresses of people (Patient,
  RelatedPerson, Person, Practitioner) are reduced to the postcode district (outward code,
  e.g. ``M19``), which the neighbourhood figures need and which covers ~10,000 households.
* dates (any ``YYYY-MM-DD...`` value, ``meta.lastUpdated`` included) are coarsened to the month
  (``YYYY-MM``) or year (``YYYY``) when asked; partial FHIR dates stay valid FHIR.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any

from ..fhir.categories import DIRECTORY_TYPES
from ..fhir.codes import ODS_SYSTEM

KEY_FILE = "pseudonym.key"
COARSENING = ("none", "month", "year")
PERSON_TYPES = frozenset({"Patient", "RelatedPerson", "Person", "Practitioner"})
DISPLAY_KEPT = frozenset({"Organization", "Location", "HealthcareService", "Medication"})
DROP_EVERYWHERE = frozenset({"telecom", "photo", "note"})
DROP_IN_PEOPLE = frozenset({"name", "contact"})
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})(-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?)?$")
_REF_RE = re.compile(r"^(?:(?P<base>.*/))?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
                     r"(?P<hist>/_history/[A-Za-z0-9\-.]+)?$")


def load_key(data_dir: Path) -> bytes:
    """The system's pseudonymisation key (made on first use), from ``<data_dir>/keys``."""
    folder = Path(data_dir) / "keys"
    path = folder / KEY_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
        finally:
            os.close(fd)
    key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"{path} is too short to be a pseudonymisation key")
    return key


def pseudonym(key: bytes, project: str, value: str) -> str:
    """HMAC-SHA256(key, project + ':' + value), first 120 bits, base32 lower-case (24 chars)."""
    if not project:
        raise ValueError("a pseudonym needs a project")
    digest = hmac.new(key, f"{project}:{value}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:15]).decode().lower()


def postcode_district(postcode: str | None) -> str | None:
    """The outward code of a UK postcode ('M19 3SF' -> 'M19', 'SK43AB' -> 'SK4')."""
    if not postcode:
        return None
    pc = postcode.strip().upper()
    if " " in pc:
        return pc.split()[0]
    return pc[:-3] if len(pc) > 4 else pc


def coarsen(value: str, level: str) -> str:
    """'2024-02-23T17:08:00Z' -> '2024-02' (month) or '2024' (year); other strings unchanged."""
    if level == "none":
        return value
    m = _DATE_RE.match(value)
    if not m:
        return value
    return m.group(1) if level == "year" else f"{m.group(1)}-{m.group(2)}"


class Pseudonymiser:
    """De-identifies resources for one project under the rules in the module docstring."""

    def __init__(self, key: bytes, project: str, coarsen_dates: str = "none"):
        if coarsen_dates not in COARSENING:
            raise ValueError(f"coarsen_dates must be one of {COARSENING}, not {coarsen_dates!r}")
        if not project or not isinstance(project, str):
            raise ValueError("a project name is required")
        self._key = key
        self.project = project
        self.coarsen_dates = coarsen_dates
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymiser(project={self.project!r}, coarsen_dates={self.coarsen_dates!r})"

    def value(self, value: str) -> str:
        hit = self._cache.get(value)
        if hit is None:
            hit = pseudonym(self._key, self.project, value)
            if len(self._cache) < 500_000:
                self._cache[value] = hit
        return hit

    # ------------------------------------------------------------------ resources
    def resource(self, res: dict, contained: bool = False) -> dict:
        rtype = res.get("resourceType", "")
        out = self._walk(res, rtype, top=True)
        if rtype not in DIRECTORY_TYPES and isinstance(res.get("id"), str) and not contained:
            out["id"] = self.value(res["id"])
        if rtype in PERSON_TYPES and res.get("address"):
            out["address"] = self._districts(res["address"])
        return out

    def _districts(self, addresses: list) -> list:
        home = [a for a in addresses if isinstance(a, dict) and a.get("use") in (None, "home")]
        district = postcode_district((home or addresses)[0].get("postalCode")) \
            if (home or addresses) and isinstance((home or addresses)[0], dict) else None
        return [{"use": "home", "postalCode": district}] if district else []

    def reference(self, ref: str) -> str:
        if ref.startswith("urn:uuid:"):
            return "urn:uuid:" + self.value(ref[9:])
        if ref.startswith("#"):
            return ref
        m = _REF_RE.match(ref)
        if not m:
            # Not a resolvable FHIR reference (e.g. an external URL): keep only a pseudonym.
            return "urn:pseudonym:" + self.value(ref)
        rtype, rid = m.group("type"), m.group("id")
        if rtype in DIRECTORY_TYPES:
            return f"{rtype}/{rid}"
        return f"{rtype}/{self.value(rid)}"

    def _identifier(self, ident: dict, rtype: str) -> dict:
        out = self._walk(ident, rtype)
        if ident.get("system") == ODS_SYSTEM or rtype in DIRECTORY_TYPES:
            return out
        if isinstance(ident.get("value"), str):
            out["value"] = self.value(ident["value"])
        return out

    def _walk(self, node: Any, rtype: str, top: bool = False, key: str = "") -> Any:
        if isinstance(node, dict):
            out = {}
            is_ref = isinstance(node.get("reference"), str)
            ref_type = None
            if is_ref:
                m = _REF_RE.match(node["reference"])
                ref_type = m.group("type") if m else None
            elif isinstance(node.get("type"), str) and ("identifier" in node
                                                        or "display" in node):
                ref_type = node["type"]  # a logical Reference (identifier + type)
            for k, v in node.items():
                if k in DROP_EVERYWHERE:
                    continue
                if top and rtype in PERSON_TYPES and k in DROP_IN_PEOPLE:
                    continue
                if k == "text" and isinstance(v, dict):  # Narrative
                    continue
                if k in ("data", "url") and key in ("attachment", "presentedForm", "content",
                                                    "photo"):
                    continue
                if k == "display" and (is_ref or ref_type) and ref_type not in DISPLAY_KEPT:
                    continue
                if k == "reference" and is_ref:
                    out[k] = self.reference(v)
                elif k == "identifier":
                    if isinstance(v, list):
                        out[k] = [self._identifier(i, rtype) if isinstance(i, dict) else i
                                  for i in v]
                    elif isinstance(v, dict):
                        out[k] = self._identifier(v, ref_type if ref_type in DIRECTORY_TYPES
                                                  else rtype)
                    else:
                        out[k] = v
                elif k == "contained" and isinstance(v, list):
                    out[k] = [self.resource(c, contained=True) if isinstance(c, dict) else c for c in v]
                else:
                    out[k] = self._walk(v, rtype, key=k)
            return out
        if isinstance(node, list):
            return [self._walk(v, rtype, key=key) for v in node]
        if isinstance(node, str) and self.coarsen_dates != "none":
            return coarsen(node, self.coarsen_dates)
        return node


__all__ = ["COARSENING", "KEY_FILE", "Pseudonymiser", "coarsen", "load_key", "postcode_district",
           "pseudonym"]
