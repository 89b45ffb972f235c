"""Synthetic NHS numbers: the 999 test range with a valid modulus-11 check digit."""

from __future__ import annotations

from collections.abc import Iterator

_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def check_digit(first_nine: str) -> int | None:
    """Modulus-11 check digit of the first nine digits; None when the number is not issuable
    (remainder gives 10)."""
    if len(first_nine) != 9 or not first_nine.isdigit():
        raise ValueError(f"need nine digits, got {first_nine!r}")
    total = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS))
    check = 11 - (total % 11)
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid_nhs_number(value: str) -> bool:
    if len(value) != 10 or not value.isdigit():
        return False
    check = check_digit(value[:9])
    return check is not None and check == int(value[9])


# A bijection on 0..999_999 (multiplier coprime with 10**6) walks the test range in a
# seed-dependent order without repeats.
_RANGE = 1_000_000
_MULTIPLIER = 387_433


def synthetic_nhs_numbers(seed: int) -> Iterator[str]:
    """Distinct valid NHS numbers 999xxxxxxx in a seed-dependent order (~909,000 in all)."""
    offset = (seed * 7_919 + 12_345) % _RANGE
    for j in range(_RANGE):
        k = (j * _MULTIPLIER + offset) % _RANGE
        nine = f"999{k:06d}"
        check = check_digit(nine)
        if check is not None:
            yield nine + str(check)
