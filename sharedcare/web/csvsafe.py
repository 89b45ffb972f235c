"""The one CSV writer for every download the pages offer (feedback, adoption, agreements,
audit, break-glass, population panels ...).

CSV files are opened in spreadsheets, which run a cell that starts with = + - @ (or a TAB or
CR before one) as a formula: free text typed into sharedcare by anyone -- feedback, a
break-glass reason, a name -- could then fetch URLs or run commands on the reader's machine.
Following OWASP (CSV injection) and ASVS 1.2.10, such a text cell is written with a leading
single quote, which spreadsheets take as "this is text". Numbers stay numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\0")


def safe_cell(value):
    """A cell value a spreadsheet will show as text, never run as a formula."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_text(columns: Sequence[str], rows: Iterable[Sequence | Mapping], *,
             lineterminator: str = "\r\n", preamble: str = "") -> str:
    """CSV with a header row; each row a sequence in column order, or a mapping by column
    name (other keys ignored). `preamble` (our own comment lines) goes first, as is."""
    buf = io.StringIO()
    buf.write(preamble)
    w = csv.writer(buf, lineterminator=lineterminator)
    w.writerow([safe_cell(c) for c in columns])
    for r in rows:
        values = [r.get(c) for c in columns] if isinstance(r, Mapping) else r
        w.writerow([safe_cell(v) for v in values])
    return buf.getvalue()
