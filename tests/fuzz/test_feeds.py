"""Fuzz: the partner feeds.

HL7 v2: real sample messages (tests/data/hl7v2) with segments and fields deleted, repeated,
swapped, truncated, overlong, with stray separators, escape sequences, NUL and non-ASCII
characters, broken MSH encoding characters and line endings. The answer is always an ACK whose
MSA says AA, AE or AR, never an exception; the store stays usable.

CSV: the council care-packages example (examples/) with rows mutated against its mapping: bad
dates, NHS numbers, codes, missing and extra fields, stray quotes, overlong cells, NUL, BOM,
non-UTF-8 bytes, blank lines. validate() and load() never raise; every rejected row is reported
with its line and a reason; rows are either loaded or reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_support import EXAMPLES, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from sharedcare.feeds import csv_feed
from sharedcare.feeds.service import FeedService
from sharedcare.store.repository import PermitAll
from tests.conftest import data_dir

ROOT = Path(__file__).resolve().parents[2]
ODS = "RFUZZ"
FEED = "fuzz-adt"


def _samples() -> list[str]:
    out = []
    for f in sorted(data_dir("hl7v2").glob("*.hl7")):
        text = f.read_bytes().decode("utf-8", "replace").lstrip("\ufeff")
        text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
        if text.startswith("MSH|"):
            out.append(text)
    assert len(out) >= 50, "the HL7 v2 samples are missing from tests/data"
    return out


SAMPLES = _samples()
FIELD_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "|", "^", "~", "\\", "&", "^^^^", "~~~", "\\F\\", "\\X41\\", "\\E\\",
                     "\\Zxyz\\", "\\", "\x00", "\x0b", "\x1c", "\x1c\r", "é", "𝄞", "\ufeff",
                     "99999999999999999999", "20241301", "20240230", "2024", "19000101000000",
                     "-1", "0", "A" * 70_000, "MSH|^~\\&", "\r\r", "\n"]))


@st.composite
def hl7_message(draw) -> str:
    segs = [s.split("|") for s in draw(st.sampled_from(SAMPLES)).split("\r")]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["field", "field", "field", "drop-seg", "dup-seg", "swap-seg",
                                   "drop-field", "add-fields", "msh-enc", "msh-sep", "msh-type",
                                   "repeat", "truncate", "bom", "newlines"]))
        n = draw(st.integers(0, len(segs) - 1)) if segs else 0
        if op == "field" and segs:
            seg = segs[n]
            i = draw(st.integers(1, max(1, len(seg) - 1 + 3)))
            seg.extend([""] * (i + 1 - len(seg)))
            seg[i] = draw(FIELD_VALUES)
        elif op == "drop-seg" and segs:
            segs.pop(n)
        elif op == "dup-seg" and segs:
            segs.insert(n, list(segs[n]))
        elif op == "swap-seg" and len(segs) > 1:
            m = draw(st.integers(0, len(segs) - 1))
            segs[n], segs[m] = segs[m], segs[n]
        elif op == "drop-field" and segs and len(segs[n]) > 1:
            segs[n].pop(draw(st.integers(1, len(segs[n]) - 1)))
        elif op == "add-fields" and segs:
            segs[n].extend(draw(st.lists(FIELD_VALUES, max_size=5)))
        elif op == "msh-enc" and segs and len(segs[0]) > 1:
            segs[0][1] = draw(st.sampled_from(["", "^", "^~", "^~\\", "~^\\&", "^~\\&#", "ABCD",
                                               "^~\\&^~\\&", "\x00"]))
        elif op == "msh-sep" and segs:
            segs[0][0] = draw(st.sampled_from(["MSH", "MSh", "", "MSH^", "FHS", "BHS", "XXX"]))
        elif op == "msh-type" and segs:
            segs[0].extend([""] * (12 - len(segs[0])))
            segs[0][8] = draw(st.sampled_from(["ADT^A01", "ADT^A08^ADT_A01", "ORU^R01", "ACK",
                                               "ADT", "^A01", "ADT^A99", "ZZZ^Z01", "", "ADT^A40",
                                               "ADT^A01^ADT_A01^extra"]))
            segs[0][11] = draw(st.sampled_from(["2.5", "2.3", "2.8", "9.9", "", "x", "2.5.1"]))
        elif op == "repeat" and segs:
            seg = segs[n]
            i = draw(st.integers(1, max(1, len(seg) - 1)))
            seg.extend([""] * (i + 1 - len(seg)))
            seg[i] = "~".join([seg[i] or "x"] * draw(st.integers(2, 3000)))
    text = "\r".join("|".join(s) for s in segs)
    if draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    if draw(st.integers(0, 8)) == 0:
        text = "\ufeff" + text
    if draw(st.integers(0, 6)) == 0:
        text = text.replace("\r", draw(st.sampled_from(["\n", "\r\n", "\n\r", "\r\r"])))
    return text


def ack_code(ack: str) -> str | None:
    segs = ack.split("\r")
    if not segs or not segs[0].startswith("MSH|"):
        return None
    msa = next((s.split("|") for s in segs if s.startswith("MSA|")), None)
    return msa[1] if msa and len(msa) > 1 else None


def test_fuzzed_hl7v2_messages_are_always_acknowledged(sc):
    service = FeedService(sc)
    service.add_feed(ODS, FEED, "hl7v2", status="live")
    codes = {}

    @fuzz_settings(sc=sc)
    @given(hl7_message())
    def prop(raw):
        try:
            ack = service.ingest_hl7(raw, FEED)
        except Exception as e:  # the property: never an exception
            raise AssertionError(f"ingest_hl7 raised {type(e).__name__}: {e!s:.300} for "
                                 f"{raw[:400]!r}") from e
        code = ack_code(ack) if isinstance(ack, str) else None
        assert code in ("AA", "AE", "AR"), f"not an ACK with AA/AE/AR: {ack!r:.400} for " \
                                           f"{raw[:400]!r}"
        if code != "AA":
            assert "\rERR|" in ack, f"a negative ACK without an ERR segment: {ack!r:.400}"
        codes[code] = codes.get(code, 0) + 1
        # The store stays usable after every message.
        assert sc.store.search("Patient", [("_count", "1")], PermitAll()) is not None

    prop()
    assert codes.get("AA") and (codes.get("AE") or codes.get("AR")), codes


# ---------------------------------------------------------------------------------------- CSV
MAPPING_FILE = ROOT / "examples" / "council-care-packages.mapping.json"
CSV_FILE = ROOT / "examples" / "council-care-packages.csv"
CELLS = st.one_of(
    st.text(max_size=15),
    st.sampled_from(["", " ", '"', '""', '"x', 'x"', ",", "\n", "\r\n", "\r", "\x00", "\ufeff",
                     "é", "𝄞", "=cmd|' /C calc'!A0", "9434765919", "9434765918", "1234567890",
                     "943 476 5919", "0000000000", "31/02/2024", "01/13/2024", "1/1/24",
                     "2024-01-01", "00/00/0000", "01/01/10000", "Home care", "home care",
                     "Gardening", "M", "F", "X", "m", "x" * 200_000]))


@st.composite
def csv_bytes(draw) -> bytes:
    lines = CSV_FILE.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    rows = draw(st.lists(st.sampled_from(rows), min_size=0, max_size=8)) if draw(
        st.booleans()) else [list(r) for r in rows]
    rows = [list(r) for r in rows]
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["cell", "cell", "cell", "drop-cell", "add-cell", "blank",
                                   "header", "dup"]))
        if op == "header":
            i = draw(st.integers(0, len(header) - 1))
            header[i] = draw(st.sampled_from(["", "client_id", "CLIENT_ID", " dob", "x", "dob"]))
            continue
        if not rows:
            continue
        r = rows[draw(st.integers(0, len(rows) - 1))]
        if op == "cell" and r:
            r[draw(st.integers(0, len(r) - 1))] = draw(CELLS)
        elif op == "drop-cell" and r:
            r.pop(draw(st.integers(0, len(r) - 1)))
        elif op == "add-cell":
            r.append(draw(CELLS))
        elif op == "blank":
            rows.insert(draw(st.integers(0, len(rows))), [""])
        elif op == "dup":
            rows.append(list(r))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = newline.join(",".join(r) for r in [header, *rows]) + draw(st.sampled_from(["", newline]))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 6)) == 0:
        data = b"\xef\xbb\xbf" + data
    # Bytes from another encoding (cp1252) are test_csv_with_a_byte_that_is_not_utf8_...'s.
    if draw(st.integers(0, 15)) == 0:  # cut short, on a character boundary
        data = text[: draw(st.integers(0, len(text)))].encode("utf-8", "surrogatepass")
    return data


def _check_report(errors, nlines: int, where: str) -> None:
    for e in errors:
        assert isinstance(e.line, int) and 0 <= e.line <= max(nlines, 1), \
            f"{where}: line {e.line} outside the file ({nlines} lines): {e}"
        assert isinstance(e.reason, str) and e.reason.strip(), f"{where}: no reason: {e!r}"


@pytest.mark.parametrize("how", ["validate", "load"])
def test_fuzzed_csv_rows_are_reported_never_raised(sc, tmp_path, how):
    mapping = csv_feed.read_mapping(MAPPING_FILE)
    service = FeedService(sc)
    service.add_feed("RCOUNCIL", "council-care", "csv", mapping=mapping, status="live")
    counter = {"n": 0}

    @fuzz_settings(EXAMPLES if how == "validate" else max(20, EXAMPLES // 2), sc=sc)
    @given(csv_bytes())
    def prop(data):
        counter["n"] += 1
        path = tmp_path / f"packages-{counter['n']}.csv"
        path.write_bytes(data)
        nlines = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n") + 1
        shown = f"{how} of {data[:300]!r}"
        try:
            if how == "validate":
                errors = csv_feed.validate(path, mapping)
                _check_report(errors, nlines, shown)
                return
            report = csv_feed.load(path, mapping, "council-care", service=service)
        except Exception as e:  # the property: never an exception
            raise AssertionError(f"{how} raised {type(e).__name__}: {e!s:.300} for "
                                 f"{data[:300]!r}") from e
        _check_report(report.rejected, nlines, shown)
        rejected_rows = {e.line for e in report.rejected if e.line > 1}
        if not report.duplicate and not any(e.line <= 1 for e in report.rejected):
            # Every data row is either loaded or reported (with its line).
            assert report.loaded_rows + len(rejected_rows) == report.rows, \
                f"{shown}: {report.rows} rows, {report.loaded_rows} loaded, rejected lines " \
                f"{sorted(rejected_rows)}"
        assert sc.store.search("Patient", [("_count", "1")], PermitAll()) is not None

    prop()


def test_csv_with_a_byte_that_is_not_utf8_is_reported_not_raised(sc, tmp_path):
    """A council export saved as Windows-1252 ('é' as the single byte 0xE9), or a file cut off
    in the middle of a character, must be a reported problem (which line, what is wrong), never
    a UnicodeDecodeError out of validate() or load() (found by the fuzzer: feeds/csv_feed.py
    _rows decoded the whole file at once)."""
    mapping = csv_feed.read_mapping(MAPPING_FILE)
    service = FeedService(sc)
    service.add_feed("RCOUNCIL", "council-care", "csv", mapping=mapping, status="live")
    data = CSV_FILE.read_bytes()
    for damage, damaged in (("cp1252", data.replace(b"Jane", b"Ren\xe9e")),
                            ("cut-mid-character", data + "Zo\u00eb".encode()[:-1])):
        path = tmp_path / f"{damage}.csv"
        path.write_bytes(damaged)
        errors = csv_feed.validate(path, mapping)
        assert errors and all(e.reason and e.line >= 1 for e in errors), damage
        report = csv_feed.load(path, mapping, "council-care", service=service)
        assert report.rejected, damage
