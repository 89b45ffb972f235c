"""Static element types of FHIR R4, read from the official JSON schema (fhir.schema.json).

Used by the FHIRPath compiler to know, at compile time, what type each path yields (so the row
converter is chosen once, not per value) and how a choice element ``value[x]`` is spelt in JSON.
"""

from __future__ import annotations

from functools import cached_property

# Types that are specialisations of another (for `is`/`as`/`ofType`).
PARENT = {
    "Age": "Quantity",
    "Count": "Quantity",
    "Distance": "Quantity",
    "Duration": "Quantity",
    "MoneyQuantity": "Quantity",
    "SimpleQuantity": "Quantity",
    "code": "string",
    "id": "string",
    "markdown": "string",
    "url": "uri",
    "canonical": "uri",
    "oid": "uri",
    "uuid": "uri",
    "positiveInt": "integer",
    "unsignedInt": "integer",
}

PRIMITIVES = frozenset(
    {
        "base64Binary",
        "boolean",
        "canonical",
        "code",
        "date",
        "dateTime",
        "decimal",
        "id",
        "instant",
        "integer",
        "markdown",
        "oid",
        "positiveInt",
        "string",
        "time",
        "unsignedInt",
        "uri",
        "url",
        "uuid",
        "xhtml",
    }
)


def is_subtype(t: str, of: str) -> bool:
    while t:
        if t == of:
            return True
        t = PARENT.get(t)
    return False


class Model:
    """element types: model.element(type, name) -> {json_key: type} (several keys for choices)."""

    def __init__(self, schema: dict):
        self._defs = schema["definitions"]
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}
        # 'CodeableConcept' -> 'CodeableConcept', 'DateTime' -> 'dateTime' (choice suffixes)
        self._suffix = {name[0].upper() + name[1:]: name for name in self._defs if "_" not in name}

    @cached_property
    def resource_types(self) -> frozenset[str]:
        refs = self._defs["ResourceList"]["oneOf"]
        return frozenset(r["$ref"].rsplit("/", 1)[1] for r in refs)

    def has_type(self, t: str) -> bool:
        return t in self._defs or t in ("Resource", "DomainResource")

    def _props(self, t: str) -> dict:
        if t in ("Resource", "DomainResource"):
            t = "Patient"  # any resource: the common elements (id, meta, text, ...) are the same
        d = self._defs.get(t)
        return d.get("properties", {}) if d else {}

    @staticmethod
    def _type_of(prop: dict) -> str | None:
        ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
        if ref:
            return ref.rsplit("/", 1)[1]
        if "enum" in prop:
            return "code"
        return None

    def element(self, t: str, name: str) -> dict[str, str] | None:
        """JSON keys and their types for element `name` of type `t`; None if no such element."""
        key = (t, name)
        if key in self._cache:
            return self._cache[key]
        props = self._props(t)
        out: dict[str, str] | None = None
        if name in props and not name.startswith("_"):
            p = props[name]
            et = self._type_of(p)
            if et == "ResourceList":
                et = "Resource"
            if et is None:
                et = "string"
            out = {name: et}
        else:
            choices = {}
            for k, p in props.items():
                if k.startswith(name) and len(k) > len(name) and k[len(name)].isupper():
                    suffix = k[len(name) :]
                    if suffix in self._suffix:
                        choices[k] = self._suffix[suffix]
            out = choices or None
        self._cache[key] = out
        return out
