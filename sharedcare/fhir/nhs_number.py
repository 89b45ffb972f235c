"""NHS numbers: normalisation, modulus-11 validation and synthetic test numbers (the FHIR model
layer: validation of NHS-number identifiers uses it; `sharedcare.identity.nhs_number` re-exports it).

Validation is delegated to the ``nhs-number`` package (modulus-11 check digit). Synthetic numbers
are drawn from 999 000 0000 - 999 999 9999, a block inside the range NHS England reserves for
test patients and never issues to real people.
"""

from __future__ import annotations

import random
import re

import nhs_number as _nhs

__all__ = ["SYNTHETIC_END", "SYNTHETIC_START", "is_valid", "normalise", "synthetic"]

SYNTHETIC_START = 9_990_000_000
SYNTHETIC_END = 9_999_999_999

_SEPARATORS = re.compile(r"[\s\-]+")


def normalise(s: str | int | None) -> str | None:
    """Strip spaces and dashes; return the 10-digit string, or None if it is not 10 digits.

    ``normalise("943 476 5919") == "9434765919"``. The check digit is *not* verified here.
    """
    if s is None or isinstance(s, bool):
        return None
    if isinstance(s, int):
        s = str(s).zfill(10)
    if not isinstance(s, str):
        return None
    digits = _SEPARATORS.sub("", s)
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        return None
    return digits


def is_valid(s: str | int | None) -> bool:
    """True if ``s`` normalises to 10 digits with a correct modulus-11 check digit."""
    digits = normalise(s)
    if digits is None:
        return False
    return bool(_nhs.is_valid(digits))


def synthetic(rng: random.Random) -> str:
    """A valid NHS number in the test range 999 000 0000 - 999 999 9999, drawn from ``rng``.

    Deterministic for a seeded ``rng``. Stems whose check digit would be 10 (not issuable) are
    redrawn.
    """
    while True:
        stem = str(rng.randint(SYNTHETIC_START // 10, SYNTHETIC_END // 10))
        check = _nhs.calculate_checksum(stem)
        if check is not None and check < 10:
            return stem + str(check)
