"""Search-value normalisation shared by indexing and searching.

The same functions are used when a resource is indexed and when a search value is parsed, so a
value matches itself by construction.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache

__all__ = ["MAX_DATE", "MIN_DATE", "date_range", "normalize_string", "number_range"]

MIN_DATE = "0001-01-01T00:00:00"
MAX_DATE = "9999-12-31T23:59:59"

_WS = re.compile(r"\s+")


@lru_cache(maxsize=65536)
def normalize_string(s: str) -> str:
    """Lower-case, strip accents/diacritics (NFKD, combining marks dropped), collapse whitespace."""
    if s.isascii():
        return _WS.sub(" ", s).strip().lower()
    d = unicodedata.normalize("NFKD", s)
    d = "".join(c for c in d if not unicodedata.combining(c))
    # casefold handles e.g. German sharp s; NFKD again so case folding cannot reintroduce marks
    return _WS.sub(" ", d).strip().casefold()


# FHIR date / dateTime / instant (plus minute precision, which search values may use).
_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(y: int, mo: int) -> int:
    # calendar.monthrange showed up at ~10% of ingest; this is the same answer.
    if mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0):
        return 29
    return _DAYS[mo - 1]


def _fmt(y: int, mo: int, d: int, h: int, mi: int, s: int) -> str:
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"


def _to_utc(y, mo, d, h, mi, s, tz) -> str:
    if tz is None or tz == "Z" or tz == "+00:00" or tz == "-00:00":
        return _fmt(y, mo, d, h, mi, s)
    sign = 1 if tz[0] == "+" else -1
    oh, om = int(tz[1:3]), int(tz[4:6])
    if oh > 14 or om > 59:
        raise ValueError(f"invalid time-zone offset {tz!r}")
    try:
        dt = datetime(y, mo, d, h, mi, s) - sign * timedelta(hours=oh, minutes=om)
    except OverflowError:
        return MIN_DATE if sign > 0 else MAX_DATE
    return _fmt(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)


@lru_cache(maxsize=65536)
def date_range(value: str) -> tuple[str, str]:
    """The inclusive UTC range ('YYYY-MM-DDTHH:MM:SS', second precision) a FHIR date covers.

    '2020' -> ('2020-01-01T00:00:00', '2020-12-31T23:59:59'); a dateTime without a zone is taken
    as UTC; fractional seconds are truncated. Raises ValueError with the reason on bad input.
    """
    if not isinstance(value, str):
        raise ValueError(f"date must be a string, not {type(value).__name__}")  # noqa: TRY004
    m = _DATE_RE.fullmatch(value)
    if m is None:
        raise ValueError(
            f"not a FHIR date/dateTime: {value!r} (expected YYYY[-MM[-DD[Thh:mm[:ss[.f]][Z|+hh:mm]]]])"
        )
    g = m.group
    y = int(g("y"))
    if y < 1:
        raise ValueError(f"year out of range in {value!r}")
    if g("m") is None:
        return _fmt(y, 1, 1, 0, 0, 0), _fmt(y, 12, 31, 23, 59, 59)
    mo = int(g("m"))
    if not 1 <= mo <= 12:
        raise ValueError(f"month {mo} out of range in {value!r}")
    last = _days_in_month(y, mo)
    if g("d") is None:
        return _fmt(y, mo, 1, 0, 0, 0), _fmt(y, mo, last, 23, 59, 59)
    d = int(g("d"))
    if not 1 <= d <= last:
        raise ValueError(f"day {d} out of range in {value!r}")
    if g("H") is None:
        return _fmt(y, mo, d, 0, 0, 0), _fmt(y, mo, d, 23, 59, 59)
    h, mi = int(g("H")), int(g("M"))
    if h > 23:
        raise ValueError(f"hour {h} out of range in {value!r}")
    if mi > 59:
        raise ValueError(f"minute {mi} out of range in {value!r}")
    tz = g("tz")
    if g("S") is None:
        lo = _to_utc(y, mo, d, h, mi, 0, tz)
        return lo, lo[:17] + "59"
    s = int(g("S"))
    if s > 60:
        raise ValueError(f"second {s} out of range in {value!r}")
    if s == 60:  # leap second
        s = 59
    v = _to_utc(y, mo, d, h, mi, s, tz)
    return v, v


_NUM_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def number_range(value) -> tuple[float, float, float]:
    """Implied-precision range of a decimal: '5.4' -> (5.35, 5.45, 5.4); '100' -> (99.5, 100.5, 100.0).

    The range is value +/- half a unit of the last significant digit ('1e2' -> 50..150, '1.0e2'
    -> 95..105). ints/floats are taken as their shortest decimal text. ValueError on bad input.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")  # noqa: TRY004
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        text = repr(value)
    elif isinstance(value, Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
        if not _NUM_RE.fullmatch(text):
            raise ValueError(f"not a decimal number: {value!r}")
    else:
        raise ValueError(f"not a number: {value!r}")  # noqa: TRY004
    try:
        dec = Decimal(text)
    except InvalidOperation:  # pragma: no cover - regex guards this
        raise ValueError(f"not a decimal number: {value!r}") from None
    exp = dec.as_tuple().exponent
    half = Decimal(5).scaleb(exp - 1)
    v = float(dec)
    if v in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {value!r}")
    return float(dec - half), float(dec + half), v
