import random

import nhs_number as lib
import pytest

from sharedcare.identity.nhs_number import (
    SYNTHETIC_END,
    SYNTHETIC_START,
    is_valid,
    normalise,
    synthetic,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("9434765919", "9434765919"),
        ("943 476 5919", "9434765919"),
        ("943-476-5919", "9434765919"),
        ("  943 476 5919 ", "9434765919"),
        ("943 - 476 - 5919", "9434765919"),
        (9434765919, "9434765919"),
        ("943476591", None),  # 9 digits
        ("94347659190", None),  # 11 digits
        ("943476591X", None),
        ("", None),
        (None, None),
        ("９４３４７６５９１９", None),  # full-width digits are not an NHS number
    ],
)
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def test_known_examples():
    # Cross-checked against the nhs-number package itself.
    assert lib.is_valid("9434765919") is True
    assert lib.is_valid("9434765918") is False
    assert is_valid("9434765919")
    assert is_valid("943 476 5919")
    assert is_valid("943-476-5919")
    assert not is_valid("9434765918")
    assert not is_valid("943476591")
    assert not is_valid(None)
    assert not is_valid("abcdefghij")


def test_check_digit_ten_is_never_valid():
    # 999000001x: find a stem whose modulus-11 check digit would be 10 and confirm no suffix passes.
    rng = random.Random(0)
    for _ in range(1000):
        stem = str(rng.randint(100_000_000, 999_999_999))
        if lib.calculate_checksum(stem) == 10:
            assert not any(is_valid(stem + str(d)) for d in range(10))
            return
    pytest.fail("no stem with check digit 10 found")


def test_agrees_with_library_on_random_numbers():
    rng = random.Random(42)
    for _ in range(2000):
        s = f"{rng.randint(0, 9_999_999_999):010d}"
        assert is_valid(s) == lib.is_valid(s)


def test_synthetic_numbers_valid_and_in_test_range():
    rng = random.Random(1)
    numbers = [synthetic(rng) for _ in range(2000)]
    for n in numbers:
        assert len(n) == 10 and n.isdigit()
        assert SYNTHETIC_START <= int(n) <= SYNTHETIC_END
        assert n.startswith("999")
        assert is_valid(n) and lib.is_valid(n)
    assert len(set(numbers)) > 1990  # spread over the range


def test_synthetic_is_deterministic():
    a = [synthetic(random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    r1, r2 = random.Random(5), random.Random(5)
    assert [synthetic(r1) for _ in range(20)] == [synthetic(r2) for _ in range(20)]
