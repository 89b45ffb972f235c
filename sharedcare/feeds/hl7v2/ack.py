"""ACK / NACK messages (original acknowledgement mode)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import hl7

from .errors import ERROR_TEXT, HL7Error
from .parser import escape, to_text

_LOCATION = re.compile(r"^([A-Z][A-Z0-9]{2})(?:-(\d+))?$")


def _msh_fields(raw) -> list[str]:
    """MSH fields by HL7 number (index 0 unused), read leniently: an ACK must be possible even for
    a message parse() rejects.  Returns [] when there is no usable MSH."""
    if isinstance(raw, hl7.Message):
        raw = str(raw)
    try:
        text = to_text(raw)
    except HL7Error:
        return []
    first = text.split("\r", 1)[0]
    if not first.startswith("MSH|"):
        return []
    parts = first.split("|")
    # parts[0]='MSH', parts[1]=MSH-2, parts[n-1]=MSH-n  ->  shift so fields[n] is MSH-n
    return ["MSH", "|"] + parts[1:]


def _field(fields: list[str], n: int) -> str:
    value = fields[n] if n < len(fields) else ""
    # Only copy values that cannot break the ACK's own structure.
    return value if all(c not in value for c in "\r\n") else ""


def _component(value: str, n: int) -> str:
    parts = value.split("^")
    return parts[n - 1] if n <= len(parts) else ""


def build_ack(raw_or_message, ack_code: str = "AA", error: HL7Error | None = None) -> str:
    """ACK for a message: MSH with sender and receiver swapped, MSA (code + original control id),
    and for errors an ERR segment (ERR-2 location, ERR-3 table 0357 code, ERR-4 severity,
    ERR-8 text).  Segments are separated by CR, as on the wire."""
    if error is not None and ack_code == "AA":
        ack_code = error.ack_code
    if ack_code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise ValueError(f"invalid acknowledgement code {ack_code!r}")
    fields = _msh_fields(raw_or_message)
    encoding_ok = _field(fields, 2) in ("^~\\&", "^~\\&#")
    get = (lambda n: _field(fields, n)) if encoding_ok else (lambda n: "")
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    event = _component(get(9), 2)
    msh = [
        "MSH",
        "^~\\&",
        get(5),
        get(6),  # sending = original receiver
        get(3),
        get(4),  # receiving = original sender
        now,
        "",
        f"ACK^{event}^ACK" if event else "ACK",
        uuid.uuid4().hex[:20],
        get(11) or "P",
        get(12) or "2.5",
    ]
    segments = ["|".join(msh), f"MSA|{ack_code}|{get(10)}"]
    if error is not None:
        location = ""
        m = _LOCATION.match(error.location or "")
        if m:
            location = m.group(1) + ("^1^" + m.group(2) if m.group(2) else "")
        code = f"{error.error_code}^{ERROR_TEXT[error.error_code]}^HL70357"
        err = ["ERR", "", location, code, "E", "", "", "", escape(error.text)]
        segments.append("|".join(err))
    return "\r".join(segments) + "\r"
