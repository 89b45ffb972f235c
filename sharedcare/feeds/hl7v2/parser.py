"""Tolerant HL7 v2 parsing: text clean-up, envelope (MSH) checks, field access, dates.

python-hl7 does the segment/field split (``parse`` returns an ``hl7.Message``); this module adds
what a feed needs on top: strict MSH checks with HL7 error locations, 1-based access to
repetitions/components/sub-components with escape sequences decoded, and DTM parsing into FHIR
date/dateTime strings.  Only the standard encoding characters (``|^~\\&``, optionally ``#``) are
accepted: every partner system we know of sends them, and a message that declares others is far
more likely corrupted than exotic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import hl7

from .errors import HL7Error

FIELD_SEP = "|"
REP_SEP = "~"
COMP_SEP = "^"
SUB_SEP = "&"
ESCAPE = "\\"
STANDARD_ENCODING = ("^~\\&", "^~\\&#")

# Timestamps without a UTC offset are read as local time of the (UK) sending system.
DEFAULT_TZ = ZoneInfo("Europe/London")

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_ESCAPES = {"F": FIELD_SEP, "S": COMP_SEP, "T": SUB_SEP, "R": REP_SEP, "E": ESCAPE}
_ESCAPE_SEQ = re.compile(r"\\([^\\]*)\\")


def unescape(text: str) -> str:
    """Decode HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\ \\Xhh\\); drop formatting ones."""
    if ESCAPE not in text:
        return text

    def repl(m: re.Match) -> str:
        body = m.group(1)
        if body in _ESCAPES:
            return _ESCAPES[body]
        if body == ".br":
            return "\n"
        if body.startswith("X") and len(body) > 1:
            try:
                return bytes.fromhex(body[1:]).decode("utf-8", "replace")
            except ValueError:
                return ""
        return ""  # \H\ \N\ .sp .in ... : formatting, not content

    return _ESCAPE_SEQ.sub(repl, text)


def escape(text: str) -> str:
    """Encode text for use as an HL7 field value."""
    out = text.replace(ESCAPE, "\\E\\")
    for char, code in ((FIELD_SEP, "F"), (COMP_SEP, "S"), (SUB_SEP, "T"), (REP_SEP, "R")):
        out = out.replace(char, f"\\{code}\\")
    return out.replace("\r", "\\.br\\").replace("\n", "\\.br\\")


class Rep:
    """One repetition of a field: 1-based components and sub-components, unescaped and stripped."""

    __slots__ = ("raw",)

    def __init__(self, raw: str):
        self.raw = raw

    def c(self, comp: int = 1, sub: int = 1) -> str:
        comps = self.raw.split(COMP_SEP)
        if comp > len(comps):
            return ""
        subs = comps[comp - 1].split(SUB_SEP)
        if sub > len(subs):
            return ""
        return unescape(subs[sub - 1]).strip()

    def subs(self, comp: int) -> list[str]:
        comps = self.raw.split(COMP_SEP)
        if comp > len(comps):
            return []
        return [unescape(s).strip() for s in comps[comp - 1].split(SUB_SEP)]

    def text(self) -> str:
        """The whole repetition as text (for ST/TX/FT values that contain no structure)."""
        return unescape(self.raw).strip()

    @property
    def empty(self) -> bool:
        return not self.raw.replace(COMP_SEP, "").replace(SUB_SEP, "").strip()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Rep({self.raw!r})"


class Seg:
    """A segment with HL7 field numbering (MSH-3 is ``seg.get(3)`` as for any other segment)."""

    __slots__ = ("_fields", "id", "index")

    def __init__(self, segment: hl7.Segment, index: int):
        self.id = str(segment[0])
        self.index = index  # 1-based position in the message
        # python-hl7 already numbers MSH with MSH-1 ('|') and MSH-2 as fields 1 and 2.
        self._fields = [str(f) for f in segment]

    @classmethod
    def of(cls, fields: list[str], index: int) -> Seg:
        """From the segment's field strings (MSH with '|' as field 1, as python-hl7 numbers it)."""
        seg = cls.__new__(cls)
        seg.id = fields[0]
        seg.index = index
        seg._fields = fields
        return seg

    def raw(self, n: int) -> str:
        return self._fields[n] if n < len(self._fields) else ""

    def reps(self, n: int) -> list[Rep]:
        raw = self.raw(n)
        if not raw.strip():
            return []
        return [Rep(r) for r in raw.split(REP_SEP) if not Rep(r).empty]

    def rep(self, n: int) -> Rep:
        reps = self.reps(n)
        return reps[0] if reps else Rep("")

    def get(self, n: int, comp: int = 1, sub: int = 1) -> str:
        return self.rep(n).c(comp, sub)

    def has(self, n: int) -> bool:
        return bool(self.reps(n))

    def __repr__(self) -> str:  # pragma: no cover
        return f"Seg({self.id}#{self.index})"


def to_text(raw: str | bytes) -> str:
    """Decode and normalise a message: BOM/MLLP framing stripped, segments separated by CR."""
    if isinstance(raw, (bytes, bytearray)):
        data = bytes(raw)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")  # 8859/1, the other character set partners use
    elif isinstance(raw, str):
        text = raw
    else:
        raise HL7Error("AR", "100", "MSH", "Message is neither text nor bytes")
    text = text.lstrip("\ufeff\x0b").rstrip("\x1c")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = [ln.rstrip() for ln in text.split("\r")]
    lines = [ln.lstrip("\ufeff") for ln in lines if ln.strip()]
    return "\r".join(lines)


def parse(raw: str | bytes) -> hl7.Message:
    """Parse one HL7 v2 message (\\r, \\n or \\r\\n separated).  Raises HL7Error."""
    text = _checked_text(raw)
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises assorted errors on malformed input
        raise HL7Error("AR", "100", "MSH", "Message could not be split into segments") from exc
    _check_msh(Seg(message[0], 1))
    return message


def parse_segments(raw: str | bytes) -> list[Seg]:
    """``segments(parse(raw))`` without building python-hl7's containers (which Seg turned
    straight back into field strings): the same checks and the same fields, split once.
    Raises HL7Error."""
    text = _checked_text(raw)
    segs = []
    for index, line in enumerate(text.split("\r"), start=1):
        fields = line.split(FIELD_SEP)
        if index == 1:
            fields.insert(1, FIELD_SEP)  # MSH-1 is the separator itself, MSH-2 the encoding
        segs.append(Seg.of(fields, index))
    _check_msh(segs[0])
    return segs


def _checked_text(raw: str | bytes) -> str:
    text = to_text(raw)
    if not text.startswith("MSH"):
        raise HL7Error("AR", "100", "MSH", "Message does not start with an MSH segment")
    if len(text) < 8 or text[3] != FIELD_SEP:
        raise HL7Error("AR", "102", "MSH-1", "Field separator in MSH-1 must be '|'")
    end = text.find(FIELD_SEP, 4)
    enc = text[4:end] if end != -1 else text[4:].split("\r", 1)[0]
    if enc not in STANDARD_ENCODING:
        raise HL7Error(
            "AR", "102", "MSH-2", "Encoding characters in MSH-2 must be '^~\\&' (or '^~\\&#')"
        )
    for n, line in enumerate(text.split("\r"), start=1):
        seg_id = line.split(FIELD_SEP, 1)[0]
        if not _SEGMENT_ID.match(seg_id):
            raise HL7Error(
                "AE", "100", f"segment {n}", f"Segment {n} is truncated or has no valid segment ID"
            )
        if n > 1 and seg_id in ("MSH", "BHS", "FHS"):
            raise HL7Error("AE", "100", f"segment {n}", "More than one message in one payload")
    return text


def _check_msh(msh: Seg) -> None:
    if not msh.get(7):
        raise HL7Error("AR", "101", "MSH-7", "Message date/time (MSH-7) is missing")
    parse_dtm(msh.get(7), "MSH-7", ack_code="AR")
    if not msh.get(9, 1):
        raise HL7Error("AR", "101", "MSH-9", "Message type (MSH-9) is missing")
    if not msh.get(10):
        raise HL7Error("AR", "101", "MSH-10", "Message control ID (MSH-10) is missing")


def segments(message: hl7.Message) -> list[Seg]:
    return [Seg(s, i) for i, s in enumerate(message, start=1)]


# --- dates -------------------------------------------------------------------------------------

_DTM = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)


@dataclass(frozen=True)
class Dtm:
    """A parsed HL7 DTM.  ``fhir`` is a valid FHIR dateTime; ``date`` a valid FHIR date (may be
    year or year-month only); ``when`` is an aware datetime when the value had a time part."""

    fhir: str
    date: str
    when: datetime | None

    def instant(self) -> str:
        """A FHIR instant (seconds and offset required); date-only values become local midnight."""
        when = self.when or _local_midnight(self.date)
        return when.isoformat(timespec="seconds") if not when.microsecond else when.isoformat()

    def utc(self) -> datetime:
        return (self.when or _local_midnight(self.date)).astimezone(UTC)


def _local_midnight(date: str) -> datetime:
    parts = [int(p) for p in date.split("-")] + [1, 1]
    return datetime(parts[0], parts[1], parts[2], tzinfo=DEFAULT_TZ)


def parse_dtm(value: str, location: str, *, ack_code: str = "AE") -> Dtm:
    """Parse an HL7 DT/DTM/TS value (TS: first component).  Raises HL7Error('102') if invalid."""
    value = value.strip()
    m = _DTM.match(value)
    bad = HL7Error(ack_code, "102", location, f"{location} is not a valid HL7 date/time")
    if not m:
        raise bad
    year, month, day, hour, minute, second, frac, offset = m.groups()
    try:
        y = int(year)
        mo = int(month) if month else 1
        d = int(day) if day else 1
        datetime(y, mo, d)  # validates the calendar date
        if y < 1 or (month and not 1 <= mo <= 12):
            raise ValueError
    except ValueError:
        raise bad from None
    date = year + (f"-{month}" if month else "") + (f"-{day}" if day else "")
    if hour is None:
        return Dtm(fhir=date, date=date, when=None)
    if not day:
        raise bad  # a time needs a full date
    try:
        micro = int((frac or "0").ljust(6, "0")[:6])
        naive = datetime(y, mo, d, int(hour), int(minute or 0), int(second or 0), micro)
        if offset:
            sign = 1 if offset[0] == "+" else -1
            oh, om = int(offset[1:3]), int(offset[3:5])
            if om >= 60 or oh > 14:
                raise ValueError
            tz = timezone(sign * timedelta(hours=oh, minutes=om))
            when = naive.replace(tzinfo=tz)
        else:
            when = naive.replace(tzinfo=DEFAULT_TZ)
    except ValueError:
        raise bad from None
    spec = "microseconds" if frac else "seconds"
    fhir = when.isoformat(timespec=spec)
    if frac:  # keep the sender's precision, not python's padding
        head, _, tail = fhir.partition(".")
        digits, rest = tail[:6], tail[6:]
        fhir = f"{head}.{digits[: len(frac)]}{rest}"
    return Dtm(fhir=fhir, date=date, when=when)
