"""UK Core validation: resources that claim a UK Core profile are checked against the UK Core
StructureDefinitions bundled in ``definitions/ukcore`` (HL7 UK, Apache-2.0, see its LICENSE.md).

UK Core profiles constrain base R4 resources, whose structure the R4 JSON schema already enforces
(`validation.py`); this module walks each claimed profile's *differential* (and those of the UK
Core profiles it derives from) against the resource:

- cardinality (``min``/``max``) on elements and on slices: extension slices by ``url``, other
  slices by their discriminator (``value``/``pattern`` on a path such as ``system``), taken from
  the profile or, for a derived profile, from its UK Core parent; a slice whose discriminator value
  cannot be determined is not checked rather than guessed;
- ``fixed[x]`` / ``pattern[x]`` values;
- ``required`` bindings: the code must be in the bound ValueSet, expanded from its
  ``compose.include`` (listed concepts, whole CodeSystems bundled here, or, for a whole system that
  is not bundled, the ValueSet's own published expansion). A code from a system that cannot be
  expanded here (SNOMED CT, filters, ValueSets that are not bundled) is not failed: a note says it
  was not checked;
- choice types: ``value[x]`` must be one of the types the element allows;
- every UK Core extension anywhere in the resource (``Extension-UKCore-*``): its url must be a
  known UK Core extension, it is validated against that Extension StructureDefinition (value
  type, sub-extensions of complex extensions, bindings) and it must be used where its
  ``context`` allows.

The definitions are the official XML, read here with the standard library's ElementTree on first
use (about 60 ms for all of them) and cached; each profile's element tree is built once. Keeping
the files byte-for-byte as HL7 UK publishes them means a UK Core upgrade is a copy of the new
release, with no generated JSON to keep in step and no general XML converter needed: only the
handful of definitional fields read below.

Problems are `ProfileIssue`s (an `Issue`: severity error, a code from ``structure``,
``required``, ``value``, ``code-invalid``, ``extension``, a message naming the constraint and the
profile - never the value found, which may be patient data - and the FHIRPath location). Resources
that claim no UK Core profile cost one dictionary lookup.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .outcome import Issue

UKCORE = Path(__file__).parent / "definitions" / "ukcore"
SD_BASE = "https://fhir.hl7.org.uk/StructureDefinition/"
PROFILE_PREFIX = SD_BASE + "UKCore-"
EXTENSION_PREFIX = SD_BASE + "Extension-UKCore-"
_NS = "{http://hl7.org/fhir}"
# FHIR R4 primitive types: value[x] keys carry them capitalised (valueDateTime -> dateTime)
PRIMITIVES = ("boolean", "integer", "string", "decimal", "uri", "url", "canonical",
              "base64Binary", "instant", "date", "dateTime", "time", "code", "oid", "id",
              "markdown", "unsignedInt", "positiveInt", "uuid")
_TYPE_OF_SUFFIX = {p[0].upper() + p[1:]: p for p in PRIMITIVES}


@dataclass
class ProfileIssue(Issue):
    """An issue found against a profile (HTTP 422 on write, where an R4 problem is a 400)."""


# ------------------------------------------------------------------ reading the definitions

def _local(tag: str) -> str:
    return tag.removeprefix(_NS)


def _val(el: ET.Element | None, name: str) -> str | None:
    child = el.find(_NS + name) if el is not None else None
    return child.get("value") if child is not None else None


def _vals(el: ET.Element, name: str) -> list[str]:
    return [c.get("value") for c in el.findall(_NS + name) if c.get("value") is not None]


@cache
def _resources() -> dict[str, ET.Element]:
    """Every bundled StructureDefinition, ValueSet and CodeSystem, by canonical url."""
    out: dict[str, ET.Element] = {}
    for folder in ("structuredefinitions", "valuesets", "codesystems"):
        for path in sorted((UKCORE / folder).glob("*.xml")):
            root = ET.parse(path).getroot()
            url = _val(root, "url")
            if url:
                out[url] = root
    return out


def _canonical(url: str) -> str:
    return url.split("|", 1)[0]


def _definition(url: str) -> ET.Element | None:
    root = _resources().get(_canonical(url))
    return root if root is not None and _local(root.tag) == "StructureDefinition" else None


@cache
def profile_urls() -> tuple[str, ...]:
    """Every bundled UK Core resource profile."""
    return tuple(sorted(u for u, r in _resources().items()
                  if _local(r.tag) == "StructureDefinition" and u.startswith(PROFILE_PREFIX)))


@cache
def extension_urls() -> tuple[str, ...]:
    """Every bundled UK Core Extension definition."""
    return tuple(sorted(u for u, r in _resources().items()
                  if _local(r.tag) == "StructureDefinition" and u.startswith(EXTENSION_PREFIX)))


def is_known_profile(url: str) -> bool:
    return _canonical(url) in profile_urls()


def _fixed_value(el: ET.Element):
    """A fixed[x]/pattern[x] value: a primitive is its string form; a complex one a dict of
    lists of such values (enough to compare with FHIR JSON, see `_matches`)."""
    if el.get("value") is not None and len(el) == 0:
        return el.get("value")
    out: dict[str, list] = {}
    for child in el:
        out.setdefault(_local(child.tag), []).append(_fixed_value(child))
    return out


@dataclass
class ElementDef:
    id: str
    min: int | None = None
    max: int | None = None  # None: unbounded or unchanged
    max_set: bool = False
    types: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    fixed: object = None
    fixed_kind: str | None = None  # "fixed" | "pattern"
    binding: tuple[str, str] | None = None  # (strength, valueSet)
    discriminators: list[tuple[str, str]] | None = None
    closed: bool = False

    @classmethod
    def parse(cls, el: ET.Element) -> ElementDef:
        d = cls(el.get("id") or _val(el, "path") or "")
        if (m := _val(el, "min")) is not None:
            d.min = int(m)
        if (m := _val(el, "max")) is not None:
            d.max_set, d.max = True, None if m == "*" else int(m)
        for t in el.findall(_NS + "type"):
            if (code := _val(t, "code")) is not None:
                d.types.append(code)
            d.profiles.extend(_vals(t, "profile"))
        for child in el:
            name = _local(child.tag)
            for kind in ("fixed", "pattern"):
                if name.startswith(kind) and name[len(kind):][:1].isupper():
                    d.fixed, d.fixed_kind = _fixed_value(child), kind
        binding = el.find(_NS + "binding")
        if binding is not None and _val(binding, "valueSet"):
            d.binding = (_val(binding, "strength") or "", _val(binding, "valueSet"))
        slicing = el.find(_NS + "slicing")
        if slicing is not None:
            d.discriminators = [(_val(x, "type") or "", _val(x, "path") or "")
                                for x in slicing.findall(_NS + "discriminator")]
            d.closed = _val(slicing, "rules") == "closed"
        return d


@dataclass
class Node:
    """One element of a profile's differential as a tree: children by name, slices by name."""

    id: str
    name: str
    el: ElementDef | None = None
    children: dict[str, Node] = field(default_factory=dict)
    slices: dict[str, Node] = field(default_factory=dict)
    # each slice's discriminator (path, value) pairs, None when undeterminable; worked out on
    # first use (they depend only on the profile) -- see _Walk.sliced
    keys: dict[str, list | None] | None = None
    closed: bool = False


def _steps(element_id: str) -> list[str]:
    return element_id.split(".")[1:]


@dataclass
class Profile:
    url: str
    name: str  # the StructureDefinition id, for messages
    type: str
    root: Node
    elements: dict[str, ElementDef]
    contexts: list[str]
    parent: Profile | None

    def chain(self):
        p = self
        while p is not None:
            yield p
            p = p.parent

    def element(self, element_id: str) -> ElementDef | None:
        """The element with this id here or in the UK Core profile this one derives from; else
        what a slice inherits from its base element (``component:SystolicBP.code.coding:loinc
        .system`` from ``component.code.coding:loinc.system``), as a snapshot would have it."""
        steps = element_id.split(".")
        candidates = [element_id] + [
            ".".join([*steps[:i], step.split(":", 1)[0], *steps[i + 1:]])
            for i, step in enumerate(steps[:-1]) if ":" in step]
        for candidate in candidates:
            for p in self.chain():
                if candidate in p.elements:
                    return p.elements[candidate]
        return None


@cache
def profile(url: str) -> Profile | None:
    """The compiled StructureDefinition at `url` (built once), or None when not bundled."""
    root = _definition(url)
    if root is None:
        return None
    rtype = _val(root, "type") or ""
    tree = Node(rtype, rtype)
    elements: dict[str, ElementDef] = {}
    diff = root.find(_NS + "differential")
    for el in (diff.findall(_NS + "element") if diff is not None else []):
        d = ElementDef.parse(el)
        elements[d.id] = d
        node = tree
        for step in _steps(d.id):
            name, _, slice_name = step.partition(":")
            base = node.children.get(name)
            if base is None:
                base = node.children[name] = Node(f"{node.id}.{name}", name)
            if slice_name:
                sliced = base.slices.get(slice_name)
                if sliced is None:
                    sliced = base.slices[slice_name] = Node(f"{base.id}:{slice_name}", name)
                node = sliced
            else:
                node = base
        if node is not tree:
            node.el = d
    contexts = [_val(c, "expression") for c in root.findall(_NS + "context")]
    base_url = _val(root, "baseDefinition") or ""
    parent = profile(base_url) if base_url.startswith(SD_BASE) and base_url != url else None
    return Profile(_canonical(url), _val(root, "id") or url, rtype, tree, elements,
                   [c for c in contexts if c], parent)


# ------------------------------------------------------------------ terminology

@dataclass
class ValueSet:
    codes: set[tuple[str, str]]
    unchecked: set[str]  # systems whose codes cannot be checked here


def _concepts(el: ET.Element):
    for c in el.findall(_NS + "concept"):
        if (code := _val(c, "code")) is not None:
            yield code
        yield from _concepts(c)


def _expansion(vs: ET.Element, system: str) -> set[str] | None:
    exp = vs.find(_NS + "expansion")
    if exp is None:
        return None
    contains = exp.findall(_NS + "contains")
    total = _val(exp, "total")
    if total is None or int(total) != len(contains):
        return None  # a partial expansion cannot say a code is not in the set
    return {_val(c, "code") for c in contains if _val(c, "system") == system}


@cache
def valueset(url: str) -> ValueSet | None:
    """The codes of a bundled ValueSet, expanded from its compose (None when not bundled)."""
    vs = _resources().get(_canonical(url))
    if vs is None or _local(vs.tag) != "ValueSet":
        return None
    out = ValueSet(set(), set())
    compose = vs.find(_NS + "compose")
    if compose is None:
        return out
    for inc in compose.findall(_NS + "include"):
        for ref in _vals(inc, "valueSet"):
            inner = valueset(ref)
            if inner is None:
                out.unchecked.add(f"ValueSet {ref}")
            else:
                out.codes |= inner.codes
                out.unchecked |= inner.unchecked
        system = _val(inc, "system")
        if not system:
            continue
        listed = list(_concepts(inc))
        if listed:
            out.codes |= {(system, c) for c in listed}
        elif inc.find(_NS + "filter") is not None:
            out.unchecked.add(system)
        else:
            cs = _resources().get(system)
            if cs is not None and _local(cs.tag) == "CodeSystem" \
                    and _val(cs, "content") == "complete":
                out.codes |= {(system, c) for c in _concepts(cs)}
            elif (published := _expansion(vs, system)) is not None and published:
                out.codes |= {(system, c) for c in published}
            else:
                out.unchecked.add(system)
    for exc in compose.findall(_NS + "exclude"):
        system = _val(exc, "system")
        out.codes -= {(system, c) for c in _concepts(exc)}
    return out


def _in_valueset(vs: ValueSet, system: str | None, code) -> str:
    """'ok', 'bad' or 'unchecked'."""
    if not isinstance(code, str):
        return "bad"
    if not isinstance(system, str):
        system = None  # not a system: the R4 check says so; look the code up on its own
    if system is None:
        if any(c == code for _, c in vs.codes):
            return "ok"
        return "unchecked" if vs.unchecked else "bad"
    if (system, code) in vs.codes:
        return "ok"
    return "unchecked" if system in vs.unchecked or any(
        u.startswith("ValueSet ") for u in vs.unchecked) else "bad"


# ------------------------------------------------------------------ walking a resource

@cache
def _element_types(dtype: str) -> dict[str, str]:
    """name -> type of each element of an R4 type or backbone element (from the R4 schema)."""
    from .validation import _schema  # the same layer; validation imports this module

    props = (_schema()["definitions"].get(dtype) or {}).get("properties") or {}
    out = {}
    for name, prop in props.items():
        ref = prop.get("$ref") or (prop.get("items") or {}).get("$ref") or ""
        out[name] = ref.rsplit("/", 1)[-1]
    return out


@dataclass
class Item:
    value: object  # the JSON value (a primitive or an object)
    shadow: dict | None  # the primitive's "_name" object (its id and extensions)
    loc: str
    type: str | None = None  # the type of a choice element (value[x]), from its JSON name


def _children(item: Item, name: str) -> tuple[list[Item], str]:
    """The items of element `name` under `item`, and the location the element has."""
    obj = item.value if isinstance(item.value, dict) else item.shadow
    loc = f"{item.loc}.{name}"
    if not isinstance(obj, dict):
        return [], loc
    if name.endswith("[x]"):
        prefix = name[:-3]
        out = []
        for key in obj:
            suffix = key[len(prefix):]
            if key.startswith(prefix) and suffix[:1].isupper():
                shadow = obj.get("_" + key)
                out.append(Item(obj[key], shadow if isinstance(shadow, dict) else None, loc,
                                _TYPE_OF_SUFFIX.get(suffix, suffix)))
        for key in obj:
            suffix = key[len(prefix) + 1:]
            if key.startswith("_" + prefix) and suffix[:1].isupper() and key[1:] not in obj:
                out.append(Item(None, obj[key] if isinstance(obj[key], dict) else None, loc,
                                _TYPE_OF_SUFFIX.get(suffix, suffix)))
        return out, loc
    value, shadow = obj.get(name), obj.get("_" + name)
    if isinstance(value, list) or isinstance(shadow, list):
        values = value if isinstance(value, list) else []
        shadows = shadow if isinstance(shadow, list) else []
        n = max(len(values), len(shadows))
        out = []
        for i in range(n):
            v = values[i] if i < len(values) else None
            s = shadows[i] if i < len(shadows) else None
            if v is not None or s is not None:
                out.append(Item(v, s if isinstance(s, dict) else None, f"{loc}[{i}]"))
        return out, loc
    if value is None and shadow is None:
        return [], loc
    return [Item(value, shadow if isinstance(shadow, dict) else None, loc)], loc


def _prim(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _matches(pattern, value) -> bool:
    """Does the JSON `value` carry the fixed/pattern value (every part of it, for complex)?"""
    if isinstance(pattern, str):
        return value is not None and not isinstance(value, (dict, list)) and _prim(value) == pattern
    if not isinstance(value, dict):
        return False
    for key, wanted in pattern.items():
        got = value.get(key)
        got = got if isinstance(got, list) else [] if got is None else [got]
        if not all(any(_matches(w, g) for g in got) for w in wanted):
            return False
    return True


def _path_values(value, path: str) -> list:
    values = [value]
    for part in path.split("."):
        nxt = []
        for v in values:
            if isinstance(v, dict):
                got = v.get(part)
                nxt.extend(got if isinstance(got, list) else [] if got is None else [got])
        values = nxt
    return values


def _has(value, path: str, wanted) -> bool:
    """Does `value` carry `wanted` at `path` (a discriminator: "url", "system", "code.text")?"""
    if path == "$this":
        return _matches(wanted, value)
    if "." not in path and isinstance(wanted, str):  # the common case: one primitive
        got = value.get(path) if isinstance(value, dict) else None
        if not isinstance(got, list):
            return got is not None and not isinstance(got, dict) and _prim(got) == wanted
    return any(_matches(wanted, got) for got in _path_values(value, path))


class _Walk:
    """One validation of one resource: collects issues and notes."""

    def __init__(self) -> None:
        self.issues: list[ProfileIssue] = []
        self.notes: list[ProfileIssue] = []
        self._seen: set[tuple] = set()

    def error(self, code: str, message: str, loc: str) -> None:
        key = (code, message, loc)
        if key not in self._seen:
            self._seen.add(key)
            self.issues.append(ProfileIssue(code, message, loc))

    def note(self, message: str, loc: str) -> None:
        key = ("note", message, loc)
        if key not in self._seen:
            self._seen.add(key)
            self.notes.append(ProfileIssue("informational", message, loc, "information"))

    # -- one element (its base node and its slices) against the items found for it
    def element(self, prof: Profile, node: Node, items: list[Item], loc: str,
                in_ext: bool) -> None:
        label = f"{prof.name}: {node.id}"
        if node.el is not None:
            self.cardinality(node.el, len(items), loc, label)
        for item in items:
            self.item(prof, node, item, in_ext)
        if node.slices:
            self.sliced(prof, node, items, loc, in_ext)

    def cardinality(self, el: ElementDef, count: int, loc: str, label: str) -> None:
        if el.min and count < el.min:
            self.error("required", f"{label} requires at least {el.min}, found {count}", loc)
        if el.max_set and el.max is not None and count > el.max:
            self.error("structure", f"{label} allows at most {el.max}, found {count}"
                       if el.max else f"{label} is not allowed here", loc)

    def item(self, prof: Profile, node: Node, item: Item, in_ext: bool) -> None:
        el = node.el
        label = f"{prof.name}: {node.id}"
        if el is not None:
            if item.type is not None and el.types and item.type not in el.types:
                self.error("extension" if in_ext else "structure",
                           f"{label} must be of type {' or '.join(el.types)}, not {item.type}",
                           item.loc)
            if el.fixed is not None and not _matches(el.fixed, item.value):
                shown = el.fixed if isinstance(el.fixed, str) else "the profile's value"
                verb = "must be exactly" if el.fixed_kind == "fixed" else "must match"
                self.error("value", f"{label} {verb} '{shown}'", item.loc)
            if el.binding and el.binding[0] == "required":
                self.binding(el.binding[1], item, label)
        for name, child in node.children.items():
            kids, loc = _children(item, name)
            self.element(prof, child, kids, loc, in_ext)

    def binding(self, vs_url: str, item: Item, label: str) -> None:
        vs = valueset(vs_url)
        if vs is None:
            self.note(f"{label}: code not checked, ValueSet {vs_url} is not bundled", item.loc)
            return
        value = item.value
        if isinstance(value, str):
            pairs = [(None, value)]
        elif isinstance(value, dict) and "coding" in value:
            codings = value["coding"] if isinstance(value["coding"], list) else []
            pairs = [(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)]
        elif isinstance(value, dict) and "code" in value:
            pairs = [(value.get("system"), value.get("code"))]
        elif isinstance(value, dict):
            pairs = []
        else:
            return
        results = [_in_valueset(vs, s, c) for s, c in pairs]
        if "ok" in results:
            return
        if "unchecked" in results:
            self.note(f"{label}: code not checked, its code system cannot be expanded here "
                      f"(ValueSet {vs_url})", item.loc)
            return
        self.error("code-invalid", f"{label} needs a code from the required ValueSet {vs_url}",
                   item.loc)

    # -- slices
    def _discriminator_value(self, prof: Profile, base: Node, sl: Node, path: str):
        if path == "url" and sl.el is not None and sl.el.profiles:
            return _canonical(sl.el.profiles[0])
        if path == "$this":
            el = sl.el
        else:
            el = prof.element(f"{sl.id}.{path}")
        return el.fixed if el is not None else None

    def _inferred(self, prof: Profile, sl: Node) -> list[tuple[str, object]]:
        found = []

        def walk(node: Node, prefix: str) -> None:
            for name, child in node.children.items():
                path = f"{prefix}{name}"
                if child.el is not None and child.el.fixed is not None:
                    found.append((path, child.el.fixed))
                walk(child, path + ".")
        walk(sl, "")
        return found

    def _slice_keys(self, prof: Profile, node: Node) -> dict[str, list | None]:
        base_el = prof.element(node.id)
        discriminators = base_el.discriminators if base_el and base_el.discriminators else None
        if discriminators is None and node.name in ("extension", "modifierExtension"):
            discriminators = [("value", "url")]
        keys: dict[str, list | None] = {}
        for sl_name, sl in node.slices.items():
            if discriminators is not None:
                wanted = []
                for dtype, path in discriminators:
                    v = self._discriminator_value(prof, node, sl, path) \
                        if dtype in ("value", "pattern") else None
                    if v is None:
                        wanted = None
                        break
                    wanted.append((path, v))
            else:
                wanted = self._inferred(prof, sl) or None
            keys[sl_name] = wanted or None
        node.closed = bool(base_el is not None and base_el.closed)
        return keys

    def sliced(self, prof: Profile, node: Node, items: list[Item], loc: str,
               in_ext: bool) -> None:
        if node.keys is None:
            node.keys = self._slice_keys(prof, node)
        matched: set[int] = set()
        for sl_name, sl in node.slices.items():
            wanted = node.keys[sl_name]
            if wanted is None:
                continue  # not guessed: this slice's members cannot be told apart
            members = []
            for i, item in enumerate(items):
                if all(_has(item.value, p, v) for p, v in wanted):
                    members.append(item)
                    matched.add(i)
            if sl.el is not None:
                self.cardinality(sl.el, len(members), loc,
                                 f"{prof.name}: {node.id} slice '{sl_name}'")
            for item in members:
                self.item(prof, sl, item, in_ext)
        if node.closed and None not in node.keys.values():
            for i, item in enumerate(items):
                if i not in matched:
                    self.error("structure", f"{prof.name}: {node.id} is closed to anything "
                               "but its slices", item.loc)

    # -- UK Core extensions anywhere in the resource
    def extensions(self, value, loc: str, rpath: str, dtype: str, parent: str, last: str,
                   resource_root: bool) -> None:
        if isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, (dict, list)):
                    self.extensions(v, f"{loc}[{i}]", rpath, dtype, parent, last, resource_root)
            return
        if isinstance(value.get("resourceType"), str) and not resource_root:
            rt = value["resourceType"]
            return self.extensions(value, loc, rt, rt, "", "", True)
        types = _element_types(dtype)
        for key, child in value.items():
            if not isinstance(child, (dict, list)):
                continue
            name = key.removeprefix("_")
            if key in ("extension", "modifierExtension") and isinstance(child, list):
                for i, ext in enumerate(child):
                    self.extension(ext, f"{loc}.{key}[{i}]", rpath, dtype, parent, last,
                                   resource_root)
            ctype = "Element" if key.startswith("_") else types.get(name, "")
            self.extensions(child, f"{loc}.{key}", f"{rpath}.{name}", ctype, dtype, name, False)

    def extension(self, ext, loc: str, rpath: str, dtype: str, parent: str, last: str,
                  resource_root: bool) -> None:
        if not isinstance(ext, dict) or not isinstance(ext.get("url"), str):
            return
        url = ext["url"]
        if not url.startswith(EXTENSION_PREFIX):
            return
        prof = profile(url)
        if prof is None:
            self.error("extension", f"{_canonical(url)} is not a known UK Core extension",
                       f"{loc}.url")
            return
        if prof.contexts:
            where = {rpath, dtype, f"{parent}.{last}"} | (
                {"Resource", "DomainResource"} if resource_root else set())
            if not where & set(prof.contexts) and "Element" not in prof.contexts:
                self.error("extension", f"{prof.name} may be used on "
                           f"{', '.join(prof.contexts)}, not on {rpath}", loc)
        for p in prof.chain():
            self.item(p, p.root, Item(ext, None, loc), True)


@dataclass
class Report:
    issues: list[ProfileIssue]  # errors: the resource does not conform
    notes: list[ProfileIssue]  # information: what could not be checked here
    profiles: list[str]  # the UK Core profiles checked


def claimed_profiles(resource) -> list[str]:
    meta = resource.get("meta") if isinstance(resource, dict) else None
    claimed = meta.get("profile") if isinstance(meta, dict) else None
    if not isinstance(claimed, list):
        return []
    return [p for p in claimed if isinstance(p, str) and p.startswith(PROFILE_PREFIX)]


def check(resource: dict, profiles: list[str] | None = None, where: str | None = None) -> Report:
    """Validate `resource` against `profiles` (default: the UK Core profiles it claims)."""
    urls = claimed_profiles(resource) if profiles is None else profiles
    walk = _Walk()
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    root = where or (rtype if isinstance(rtype, str) else "resource")
    if not urls or not isinstance(rtype, str):
        return Report([], [], [])
    for url in urls:
        prof = profile(url)
        if prof is None:
            walk.error("structure", f"{_canonical(url)} is not a known UK Core profile",
                       f"{root}.meta.profile")
            continue
        if prof.type != rtype:
            walk.error("structure", f"{prof.name} profiles {prof.type}, not {rtype}", root)
            continue
        for p in prof.chain():
            walk.item(p, p.root, Item(resource, None, root), False)
    walk.extensions(resource, root, rtype, rtype, "", "", True)
    return Report(walk.issues, walk.notes, [_canonical(u) for u in urls])


def problems(resource, where: str | None = None) -> list[Issue]:
    """The UK Core problems of a resource that claims UK Core profiles (none otherwise)."""
    if not isinstance(resource, dict):
        return []
    meta = resource.get("meta")
    if not isinstance(meta, dict) or "profile" not in meta:
        return []
    if not claimed_profiles(resource):
        return []
    return list(check(resource, where=where).issues)
