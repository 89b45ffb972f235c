"""FHIR R4 XML <-> the JSON form every other module uses (http://hl7.org/fhir/R4/xml.html).

No maintained Python library converts R4 XML on this project's stack: fhir.resources 6.x (the
last R4 one) needs pydantic v1 (it fails to import beside the pydantic 2 that typer and
openapi-spec-validator need), and 7.x/8.x carry R5 and R4B models only -- R4B lacks R4 types
(MedicinalProduct...), and a trial round trip of the 448 official R4 examples through its R4B
models changed 40 of them (decimal 137 -> 137.0, instants and time zones rewritten, narrative
whitespace) and refused one. So the conversion is driven by the official R4 definitions instead:
the JSON schema shipped in `definitions/fhir.schema.json`, whose `properties` follow each type's
element order (the order XML requires), tell for every element whether it is a primitive (and
which JSON type its value takes), a datatype or backbone element, a resource (`ResourceList`:
`contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`, ...) or XHTML. lxml
(libxml2) does the XML itself, parsing with entities unresolved, no DTD loading and no network,
and any DOCTYPE is refused outright (no entity expansion, external entities or billion laughs).

The rules of xml.html followed here:
- primitives are `value` attributes; their `id` and extensions (JSON `_name`) are the element's
  `id` attribute and `extension` children; repeating primitives pair with `null`s in JSON;
- `Element.id` is an attribute, `Resource.id` an element; `Extension.url` is an attribute;
- `Narrative.div` is XHTML in the XHTML namespace (the JSON string is that element serialised);
- resources inside resources are wrapped in their type's element.

Bad input raises `FHIRError` 400 `structure` naming the element (never its value).
"""

from __future__ import annotations

import copy
import html.entities
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from lxml import etree

from .outcome import FHIRError
from .validation import _schema

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_F = "{" + FHIR_NS + "}"
_X = "{" + XHTML_NS + "}"
_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"

# JSON kinds of primitive values
STRING, BOOLEAN, INTEGER, DECIMAL = "string", "boolean", "integer", "decimal"
# kinds of element
PRIMITIVE, COMPLEX, RESOURCE, XHTML = "primitive", "complex", "resource", "xhtml"

_DECIMAL_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_INTEGER_RE = re.compile(r"-?(0|[1-9][0-9]*)")


@dataclass(frozen=True, slots=True)
class Prop:
    name: str
    kind: str  # PRIMITIVE | COMPLEX | RESOURCE | XHTML
    type: str  # the JSON kind of a primitive, the definition name of a complex element
    repeats: bool
    attribute: bool = False  # Element.id and Extension.url are XML attributes


def _parser() -> etree.XMLParser:
    # resolve_entities=False: an entity is never expanded (billion laughs, external entities);
    # load_dtd / no_network: nothing is fetched; huge_tree=False keeps libxml2's size limits.
    return etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True, collect_ids=False)


@cache
def _model() -> tuple[dict[str, dict[str, Prop]], frozenset[str]]:
    """definition name -> its elements in order; and the resource type names."""
    defs = _schema()["definitions"]
    primitives: dict[str, str] = {}
    for name, d in defs.items():
        if "properties" in d or "oneOf" in d or name == "xhtml":
            continue
        primitives[name] = _json_kind(d.get("type"), d.get("pattern", ""))
    resources = frozenset(_schema()["discriminator"]["mapping"])
    model: dict[str, dict[str, Prop]] = {}
    for name, d in defs.items():
        props = d.get("properties")
        if props is None:
            continue
        is_resource = "resourceType" in props
        out: dict[str, Prop] = {}
        for pname, spec in props.items():
            if pname.startswith("_") or pname == "resourceType":
                continue
            repeats = spec.get("type") == "array" and "items" in spec
            item = spec["items"] if repeats else spec
            kind, ptype = _classify(item, primitives)
            attribute = (pname == "id" and not is_resource) or (name == "Extension"
                                                                 and pname == "url")
            out[pname] = Prop(pname, kind, ptype, repeats, attribute)
        model[name] = out
    return model, resources


def _json_kind(jtype: str | None, pattern: str) -> str:
    if jtype == "boolean":
        return BOOLEAN
    if jtype == "number":
        return DECIMAL if "\\." in pattern else INTEGER
    return STRING


def _classify(spec: dict, primitives: dict[str, str]) -> tuple[str, str]:
    ref = spec.get("$ref")
    if ref:
        target = ref.rsplit("/", 1)[1]
        if target == "ResourceList":
            return RESOURCE, ""
        if target == "xhtml":
            return XHTML, ""
        if target in primitives:
            return PRIMITIVE, primitives[target]
        return COMPLEX, target
    if "enum" in spec:
        return PRIMITIVE, STRING
    return PRIMITIVE, _json_kind(spec.get("type"), spec.get("pattern", ""))


def resource_types() -> frozenset[str]:
    return _model()[1]


def _structure(diagnostics: str, expression: str | None = None) -> FHIRError:
    return FHIRError.of(400, "structure", diagnostics, expression)


# ------------------------------------------------------------------ JSON -> XML
def resource_to_xml(resource: dict) -> bytes:
    """A resource (the JSON form, as parsed) as FHIR XML, UTF-8 with an XML declaration."""
    root = _resource_element(resource, "")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _resource_element(resource, path: str) -> etree._Element:
    model, resources = _model()
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    if rtype not in resources:
        raise _structure(f"{path or 'the body'}: not a resource (no known resourceType)", path
                         or None)
    el = etree.Element(_F + rtype, nsmap={None: FHIR_NS})
    _fill(el, model[rtype], resource, f"{path}.{rtype}" if path else rtype)
    return el


def _fill(el, props: dict[str, Prop], obj: dict, path: str) -> None:
    if not isinstance(obj, dict):
        raise _structure(f"{path} must be an object", path)
    for key in obj:
        name = key.removeprefix("_")
        if name not in props and key != "resourceType":
            raise _structure(f"{path}.{key} is not a known element", f"{path}.{key}")
    for prop in props.values():
        value = obj.get(prop.name)
        ext = obj.get("_" + prop.name) if prop.kind == PRIMITIVE else None
        if value is None and ext is None:
            continue
        where = f"{path}.{prop.name}"
        if prop.attribute:
            el.set(prop.name, _lexical(value, prop.type, where))
            continue
        if prop.repeats:
            values = value if isinstance(value, list) else [] if value is None else None
            exts = ext if isinstance(ext, list) else [] if ext is None else None
            if values is None or exts is None:
                raise _structure(f"{where} must be an array", where)
            for i in range(max(len(values), len(exts))):
                _child(el, prop, values[i] if i < len(values) else None,
                       exts[i] if i < len(exts) else None, f"{where}[{i}]")
        else:
            _child(el, prop, value, ext, where)


def _child(el, prop: Prop, value, ext, where: str) -> None:
    model = _model()[0]
    if prop.kind == XHTML:
        el.append(_xhtml_element(value, where))
        return
    child = etree.SubElement(el, _F + prop.name)
    if prop.kind == PRIMITIVE:
        if value is not None:
            child.set("value", _lexical(value, prop.type, where))
        if ext is not None:
            _fill(child, model["Element"], ext, where)
        elif value is None:
            raise _structure(f"{where} has neither a value nor extensions", where)
    elif prop.kind == RESOURCE:
        child.append(_resource_element(value, where))
    else:
        _fill(child, model[prop.type], value, where)


def _lexical(value, kind: str, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _structure(f"{where} is not a finite number", where)
        return repr(value)
    if isinstance(value, str):
        # XML 1.0 cannot carry control characters at all (JSON can): an error message echoing
        # a client's bytes, say. They become U+FFFD rather than a failed answer.
        return _NOT_XML.sub("\ufffd", value)
    if isinstance(value, (int, Decimal)):
        return str(value)
    raise _structure(f"{where} must be a primitive value", where)


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xhtml_element(div, where: str) -> etree._Element:
    if not isinstance(div, str):
        raise _structure(f"{where} must be a string of XHTML", where)
    try:
        el = etree.fromstring(div.encode("utf-8"), _parser())
    except etree.XMLSyntaxError:
        # HTML's named entities (&nbsp;) are not XML's: as numeric references they parse.
        try:
            el = etree.fromstring(_numeric_entities(div).encode("utf-8"), _parser())
        except etree.XMLSyntaxError:
            raise FHIRError.of(406, "not-supported", f"{where} is not well-formed XHTML, so "
                               "this resource cannot be given as XML; ask for JSON",
                               where) from None
    if el.tag != _X + "div":
        raise FHIRError.of(406, "not-supported", f"{where} is not an XHTML div, so this "
                           "resource cannot be given as XML; ask for JSON", where)
    return el


_ENTITY_RE = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}


def _numeric_entities(text: str) -> str:
    def sub(m):
        name = m.group(1)
        if name in _XML_ENTITIES or name not in html.entities.name2codepoint:
            return m.group(0)
        return f"&#{html.entities.name2codepoint[name]};"

    return _ENTITY_RE.sub(sub, text)


# ------------------------------------------------------------------ XML -> JSON
def xml_to_resource(data: bytes, *, parse_decimal=None) -> dict:
    """FHIR XML (a resource) as the JSON form. Decimals become int or float as JSON parsers
    give them; with `parse_decimal` (e.g. `decimal.Decimal`, to keep every digit, as
    `json.loads(parse_float=Decimal)` does) those with a fraction or exponent go through it."""
    if not data or not data.strip():
        raise FHIRError.of(400, "invalid", "the request has no body")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise _structure("the XML has a DOCTYPE: DTDs and entity declarations are not "
                         "allowed in FHIR XML")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        raise _structure(f"the body is not well-formed XML: {_syntax_message(e)}") from None
    except ValueError as e:  # e.g. a str with an encoding declaration
        raise _structure(f"the body is not well-formed XML: {e}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise _structure("the XML has a DOCTYPE: DTDs and entity declarations are not "
                         "allowed in FHIR XML")
    return _read_resource(root, "", parse_decimal)


def _syntax_message(e: etree.XMLSyntaxError) -> str:
    # libxml2's message names the problem and where (line, column); no document content.
    msg = (e.msg or str(e)).strip()
    return msg[:300]


def _local(el) -> tuple[str | None, str]:
    q = etree.QName(el)
    return q.namespace, q.localname


def _read_resource(el, path: str, parse_decimal) -> dict:
    model, resources = _model()
    ns, rtype = _local(el)
    if ns != FHIR_NS:
        raise _structure(f"{path or 'the root element'}: <{rtype}> is not in the FHIR namespace "
                         f"({FHIR_NS})", path or None)
    if rtype not in resources:
        raise _structure(f"{path or 'the root element'}: '{rtype[:60]}' is not a FHIR R4 "
                         "resource type", path or None)
    where = f"{path}.{rtype}" if path else rtype
    for attr in el.attrib:
        if not attr.startswith(_XSI):  # xsi:schemaLocation is allowed and means nothing here
            raise _structure(f"{where}: unexpected attribute '{_attr_name(attr)}' on a "
                             "resource", where)
    out = {"resourceType": rtype}
    out.update(_read(el, model[rtype], where, parse_decimal))
    return out


def _attr_name(attr: str) -> str:
    return etree.QName(attr).localname[:60] if attr.startswith("{") else attr[:60]


def _read(el, props: dict[str, Prop], path: str, parse_decimal, primitive=False) -> dict:
    """The JSON object for an element's attributes and children, in definition order (for a
    primitive: its id and extensions, the `value` attribute being read by the caller)."""
    values: dict[str, list] = {}
    exts: dict[str, list] = {}
    for attr, text in el.attrib.items():
        if (primitive and attr == "value") or attr.startswith(_XSI):
            continue
        prop = props.get(attr)
        if prop is None or not prop.attribute:
            raise _structure(f"{path}: unexpected attribute '{_attr_name(attr)}'", path)
        values[attr] = [text]
    if el.text and el.text.strip():
        raise _structure(f"{path}: text is not allowed here (FHIR XML puts values in "
                         "'value' attributes)", path)
    counts: dict[str, int] = {}
    for child in el:
        if not isinstance(child.tag, str):  # comments, processing instructions
            continue
        if child.tail and child.tail.strip():
            raise _structure(f"{path}: text is not allowed here (FHIR XML puts values in "
                             "'value' attributes)", path)
        ns, name = _local(child)
        prop = props.get(name)
        if prop is None and ns == XHTML_NS and name == "div":
            prop = props.get("div")
        if prop is None or prop.attribute or (prop.kind == XHTML) != (ns == XHTML_NS) or (
                prop.kind != XHTML and ns != FHIR_NS):
            shown = name if ns in (FHIR_NS, XHTML_NS) else f"{{{ns}}}{name}"
            raise _structure(f"{path}.{shown[:80]} is not a known element",
                             f"{path}.{name[:60]}")
        i = counts.get(name, 0)
        counts[name] = i + 1
        if i and not prop.repeats:
            raise _structure(f"{path}.{name} appears more than once but does not repeat",
                             f"{path}.{name}")
        where = f"{path}.{name}[{i}]" if prop.repeats else f"{path}.{name}"
        value, ext = _read_child(child, prop, where, parse_decimal)
        values.setdefault(name, []).append(value)
        exts.setdefault(name, []).append(ext)
    out: dict = {}
    for prop in props.values():
        if prop.name not in values:
            continue
        vals, ex = values[prop.name], exts.get(prop.name, [])
        if prop.attribute:
            out[prop.name] = vals[0]
        elif prop.repeats:
            if any(v is not None for v in vals):
                out[prop.name] = vals
            if any(e is not None for e in ex):
                out["_" + prop.name] = ex
        else:
            if vals[0] is not None:
                out[prop.name] = vals[0]
            if ex and ex[0] is not None:
                out["_" + prop.name] = ex[0]
    return out


def _read_child(child, prop: Prop, where: str, parse_decimal):
    model = _model()[0]
    if prop.kind == XHTML:
        return _xhtml_string(child), None
    if prop.kind == RESOURCE:
        inner = [c for c in child if isinstance(c.tag, str)]
        if len(inner) != 1 or child.attrib:
            raise _structure(f"{where} must hold exactly one resource element", where)
        if child.text and child.text.strip():
            raise _structure(f"{where}: text is not allowed here", where)
        return _read_resource(inner[0], where, parse_decimal), None
    if prop.kind == COMPLEX:
        obj = _read(child, model[prop.type], where, parse_decimal)
        if not obj:
            raise _structure(f"{where} is empty (FHIR elements need a value or children)", where)
        return obj, None
    # a primitive: the value attribute; id and extensions go to the JSON `_name`
    text = child.get("value")
    ext = _read(child, model["Element"], where, parse_decimal, primitive=True)
    value = None if text is None else _typed(text, prop.type, where, parse_decimal)
    if value is None and not ext:
        raise _structure(f"{where} has neither a value attribute nor extensions", where)
    return value, ext or None


def _typed(text: str, kind: str, where: str, parse_decimal):
    if kind == STRING:
        return text
    if kind == BOOLEAN:
        if text in ("true", "false"):
            return text == "true"
        raise _structure(f"{where}: a boolean value must be true or false", where)
    if kind == INTEGER:
        if not _INTEGER_RE.fullmatch(text):
            raise _structure(f"{where}: the value is not an integer", where)
        return int(text)
    if not _DECIMAL_RE.fullmatch(text):
        raise _structure(f"{where}: the value is not a decimal", where)
    if "." not in text and "e" not in text.lower():
        return int(text)  # as a JSON parser reads 137
    if parse_decimal is not None:
        return parse_decimal(text)
    number = float(text)
    if not math.isfinite(number):
        raise _structure(f"{where}: the value is out of range", where)
    return number


_VOID = frozenset({"area", "base", "br", "col", "hr", "img", "input", "link", "meta", "param",
                   "source", "track", "wbr"})


def _xhtml_string(div) -> str:
    # A copy on its own drops the FHIR document's namespace declarations the div does not use.
    el = copy.deepcopy(div)
    el.tail = None
    etree.cleanup_namespaces(el)
    # <td></td>, not <td/>: narrative is shown as HTML, where only void elements self-close.
    for e in el.iter():
        if isinstance(e.tag, str) and e.text is None and not len(e) and \
                etree.QName(e).localname not in _VOID:
            e.text = ""
    return etree.tostring(el, encoding="unicode", with_tail=False)


__all__ = ["FHIR_NS", "XHTML_NS", "resource_to_xml", "xml_to_resource"]
