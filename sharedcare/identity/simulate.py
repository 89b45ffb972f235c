"""Seeded synthetic populations for testing and benchmarking person matching.

Each *person* gets a valid synthetic NHS number (test range) and true demographics; each care
partner (GP, hospital, council) holds zero or more *records* of that person with realistic damage:
typos, nicknames, day/month transposed, a missing or mistyped NHS number, an old address. Decoy
people (twins, namesakes, same-birthday near-namesakes, parent and child of the same name at the
same address) make the task non-trivial.

Everything is drawn from one ``random.Random(seed)`` so a population is reproducible.
"""

from __future__ import annotations

import datetime as _dt
import random
import string
from dataclasses import dataclass, replace

from sharedcare.identity.matching import Demographics
from sharedcare.identity.nhs_number import synthetic
from sharedcare.identity.nicknames import VARIANTS

from ..synthetic import names as _names  # one list of British surnames for demo and simulator

__all__ = [
    "DEFAULT_PARTNERS",
    "PartnerProfile",
    "Person",
    "cluster_pairs",
    "make_people",
    "make_records",
    "pairwise_scores",
    "random_postcode",
    "true_pairs",
    "typo",
]

MALE = [
    "William",
    "James",
    "John",
    "Robert",
    "Thomas",
    "David",
    "Michael",
    "Richard",
    "Daniel",
    "Matthew",
    "Christopher",
    "Andrew",
    "Joseph",
    "Samuel",
    "Benjamin",
    "Edward",
    "Alexander",
    "Peter",
    "Stephen",
    "Anthony",
    "Charles",
    "Henry",
    "Oliver",
    "George",
    "Harry",
    "Jack",
    "Jacob",
    "Noah",
    "Leo",
    "Oscar",
    "Arthur",
    "Freddie",
    "Alfie",
    "Theo",
    "Archie",
    "Lucas",
    "Adam",
    "Mohammed",
    "Ali",
    "Omar",
    "Ravi",
    "Arjun",
    "Kwame",
    "Tomasz",
    "Piotr",
    "Liam",
    "Connor",
    "Callum",
    "Kieran",
    "Rhys",
    "Owen",
    "Dylan",
    "Ethan",
    "Nathan",
    "Ryan",
    "Jamie",
    "Lewis",
    "Aaron",
    "Gareth",
    "Ian",
    "Neil",
    "Graham",
    "Keith",
    "Colin",
    "Barry",
    "Kenneth",
    "Raymond",
    "Ronald",
    "Gerald",
    "Philip",
    "Frederick",
    "Lawrence",
    "Leonard",
    "Terence",
    "Donald",
    "Timothy",
    "Gregory",
    "Nicholas",
    "Patrick",
]
FEMALE = [
    "Elizabeth",
    "Margaret",
    "Catherine",
    "Sarah",
    "Emma",
    "Charlotte",
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Mia",
    "Sophie",
    "Grace",
    "Lily",
    "Emily",
    "Jessica",
    "Hannah",
    "Lucy",
    "Ella",
    "Chloe",
    "Ruby",
    "Poppy",
    "Freya",
    "Isabella",
    "Alice",
    "Evie",
    "Florence",
    "Rebecca",
    "Victoria",
    "Jennifer",
    "Susan",
    "Patricia",
    "Deborah",
    "Christine",
    "Dorothy",
    "Jacqueline",
    "Josephine",
    "Frances",
    "Eleanor",
    "Alexandra",
    "Samantha",
    "Helen",
    "Karen",
    "Julie",
    "Joanne",
    "Nicola",
    "Claire",
    "Louise",
    "Rachel",
    "Amanda",
    "Michelle",
    "Kelly",
    "Gemma",
    "Laura",
    "Natalie",
    "Zoe",
    "Fatima",
    "Aisha",
    "Priya",
    "Anjali",
    "Chipo",
    "Agnieszka",
    "Katarzyna",
    "Siobhan",
    "Niamh",
    "Bethan",
    "Carys",
    "Megan",
    "Rhian",
    "Mary",
    "Anne",
    "Jane",
    "Joan",
    "Pauline",
    "Shirley",
    "Brenda",
]
SURNAMES = list(_names.SURNAMES)
# First names easily confused with one another (different people, not spelling variants).
_CONFUSABLE_PAIRS = (
    ("Jack", "Jake"),
    ("Sophie", "Sophia"),
    ("Ella", "Ellie"),
    ("Ryan", "Bryan"),
    ("Owen", "Owain"),
    ("Megan", "Morgan"),
    ("Claire", "Clara"),
    ("Lewis", "Louis"),
    ("Julie", "Julia"),
    ("Joanne", "Joan"),
    ("Helen", "Helena"),
    ("Karen", "Karin"),
    ("Michelle", "Michaela"),
    ("Gemma", "Emma"),
    ("Laura", "Lara"),
    ("Nicola", "Nicole"),
    ("Aaron", "Darren"),
    ("Colin", "Collins"),
    ("Neil", "Niall"),
    ("Keith", "Kevin"),
    ("Connor", "Conrad"),
    ("Rhys", "Reece"),
    ("Dylan", "Dillon"),
    ("Ethan", "Nathan"),
    ("Lily", "Lilly"),
    ("Mia", "Maya"),
    ("Ava", "Eva"),
    ("Grace", "Gracie"),
    ("Ruby", "Rubie"),
    ("Amelia", "Amalia"),
    ("Isla", "Isra"),
    ("Evie", "Eve"),
    ("Alice", "Alicia"),
)
CONFUSABLE = {a.upper(): b for a, b in _CONFUSABLE_PAIRS} | {
    b.upper(): a for a, b in _CONFUSABLE_PAIRS
}
# Postcode areas (outward-code letters) with plausible district counts.
AREAS = (
    "LS",
    "BD",
    "HX",
    "HD",
    "WF",
    "YO",
    "HG",
    "S",
    "M",
    "B",
    "L",
    "NE",
    "SR",
    "DN",
    "HU",
    "LE",
    "NG",
    "DE",
    "CV",
    "OL",
    "BL",
    "WN",
    "PR",
    "BB",
    "LA",
    "CA",
    "DH",
    "TS",
    "DL",
    "SK",
)
_UNIT_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"


def random_postcode(
    rng: random.Random, area: str | None = None, district: int | None = None
) -> str:
    area = area or rng.choice(AREAS)
    district = district if district is not None else rng.randint(1, 29)
    return (
        f"{area}{district} {rng.randint(0, 9)}"
        f"{rng.choice(_UNIT_LETTERS)}{rng.choice(_UNIT_LETTERS)}"
    )


@dataclass
class Person:
    person_id: str
    nhs_number: str
    given: str
    family: str
    birth_date: str
    sex: str
    postcode: str
    old_postcode: str | None = None  # an earlier address some partners still hold
    kind: str = "person"  # 'person' or the kind of decoy


@dataclass
class PartnerProfile:
    name: str
    coverage: float  # share of people the partner knows
    nhs_missing: float  # share of its records without an NHS number
    extra_record: float = 0.15  # chance of a second (and again, third) record for a person
    stale_address: float = 0.15  # chance the record holds the old address after a move
    damage: float = 1.0  # multiplier on typo/nickname/date error rates


DEFAULT_PARTNERS = (
    PartnerProfile("gp", coverage=0.95, nhs_missing=0.02, extra_record=0.10, stale_address=0.05),
    PartnerProfile("hospital", coverage=0.60, nhs_missing=0.30, extra_record=0.25),
    PartnerProfile(
        "council",
        coverage=0.40,
        nhs_missing=0.70,
        extra_record=0.15,
        stale_address=0.25,
        damage=1.5,
    ),
)


def _random_date(rng: random.Random, start_year: int = 1930, end_year: int = 2022) -> str:
    start = _dt.date(start_year, 1, 1).toordinal()
    end = _dt.date(end_year, 12, 31).toordinal()
    return _dt.date.fromordinal(rng.randint(start, end)).isoformat()


def _shift_years(date: str, years: int) -> str:
    d = _dt.date.fromisoformat(date)
    try:
        return d.replace(year=d.year + years).isoformat()
    except ValueError:
        return d.replace(year=d.year + years, day=28).isoformat()


def make_people(
    n: int,
    rng: random.Random,
    seeds: list[dict] | None = None,
    decoy_share: float = 0.12,
) -> list[Person]:
    """``n`` people: ``seeds`` (dicts with given/family/birth_date/sex) first, then generated ones;
    about ``decoy_share`` of generated people are decoys modelled on an earlier person."""
    used_nhs: set[str] = set()

    def nhs() -> str:
        while True:
            x = synthetic(rng)
            if x not in used_nhs:
                used_nhs.add(x)
                return x

    people: list[Person] = []

    def add(given, family, birth_date, sex, postcode, kind="person"):
        pid = f"P{len(people):05d}"
        people.append(Person(pid, nhs(), given, family, birth_date, sex, postcode, kind=kind))

    for s in seeds or []:
        if len(people) >= n:
            break
        add(s["given"], s["family"], s["birth_date"], s["sex"], random_postcode(rng))
    while len(people) < n:
        if people and rng.random() < decoy_share:
            base = rng.choice(people)
            kind = rng.choice(("twin", "namesake", "near-namesake", "birthday", "junior"))
            if kind == "twin":  # same family, birthday and address; different first name
                sex = rng.choice(("male", "female"))
                pool = MALE if sex == "male" else FEMALE
                given = rng.choice([g for g in pool if g.upper() != base.given.upper()])
                add(given, base.family, base.birth_date, sex, base.postcode, kind)
            elif kind == "namesake":  # same name, different birthday and address
                add(
                    base.given, base.family, _random_date(rng), base.sex, random_postcode(rng), kind
                )
            elif kind == "near-namesake":  # a confusable first name, same family, same birth year
                given = CONFUSABLE.get(base.given.upper())
                if given is None:
                    continue
                year = int(base.birth_date[:4])
                add(
                    given,
                    base.family,
                    _random_date(rng, year, year),
                    base.sex,
                    random_postcode(rng),
                    kind,
                )
            elif kind == "birthday":  # same first name and birthday, different family name
                add(
                    base.given,
                    rng.choice(SURNAMES),
                    base.birth_date,
                    base.sex,
                    random_postcode(rng),
                    kind,
                )
            else:  # parent/child with the same name at the same address
                years = rng.choice((-1, 1)) * rng.randint(20, 35)
                add(
                    base.given,
                    base.family,
                    _shift_years(base.birth_date, years),
                    base.sex,
                    base.postcode,
                    kind,
                )
            continue
        sex = "male" if rng.random() < 0.5 else "female"
        given = rng.choice(MALE if sex == "male" else FEMALE)
        add(given, rng.choice(SURNAMES), _random_date(rng), sex, random_postcode(rng))
    for p in people:
        if rng.random() < 0.20:  # moved house; some partners may still hold the old address
            p.old_postcode = p.postcode
            same_district = rng.random() < 0.5
            area, district = re_outward(p.postcode)
            p.postcode = random_postcode(
                rng, area if same_district else None, district if same_district else None
            )
    return people


def re_outward(postcode: str) -> tuple[str, int]:
    outward = postcode.split(" ")[0]
    letters = "".join(ch for ch in outward if ch.isalpha())
    digits = "".join(ch for ch in outward if ch.isdigit())
    return letters, int(digits or 1)


def typo(s: str, rng: random.Random) -> str:
    """One random keyboard-style edit: substitute, delete, insert or swap adjacent letters."""
    if len(s) < 2:
        return s + rng.choice(string.ascii_lowercase)
    i = rng.randrange(1, len(s))  # keep the first letter (errors there are rarer)
    op = rng.choice(("sub", "del", "ins", "swap"))
    letter = rng.choice(string.ascii_lowercase)
    if op == "sub":
        return s[:i] + letter + s[i + 1 :]
    if op == "del" and len(s) > 3:
        return s[:i] + s[i + 1 :]
    if op == "swap" and i < len(s) - 1:
        return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
    return s[:i] + letter + s[i:]


def _nickname(given: str, rng: random.Random) -> str | None:
    variants = VARIANTS.get(given.upper())
    if not variants:
        return None
    return rng.choice(variants).title()


def _damage_date(date: str, rng: random.Random, rate: float) -> str | None:
    y, m, d = date.split("-")
    r = rng.random()
    if r < 0.03 * rate and int(d) <= 12 and d != m:
        return f"{y}-{d}-{m}"  # US-style entry: day and month transposed
    if r < 0.05 * rate:  # one digit mistyped in the day or in the last two digits of the year
        digits = list(y + m + d)
        pos = rng.choice((2, 3, 6, 7))
        for _ in range(20):
            digits[pos] = rng.choice("0123456789")
            cand = "".join(digits)
            try:
                out = _dt.date(int(cand[:4]), int(cand[4:6]), int(cand[6:])).isoformat()
            except ValueError:
                continue
            if out != date:
                return out
        return date
    if r < 0.06 * rate:
        return None
    return date


def _record(p: Person, partner: PartnerProfile, n: int, rng: random.Random) -> Demographics:
    k = partner.damage
    given = p.given
    r = rng.random()
    if r < 0.10 * k:
        given = _nickname(given, rng) or given
    elif r < 0.17 * k:
        given = typo(given, rng)
    family = typo(p.family, rng) if rng.random() < 0.06 * k else p.family
    if rng.random() < 0.01 * k:
        family = family.upper()
    birth_date = _damage_date(p.birth_date, rng, k)
    sex = p.sex if rng.random() > 0.02 * k else "unknown"
    postcode: str | None = p.postcode
    if p.old_postcode and rng.random() < partner.stale_address:
        postcode = p.old_postcode
    if rng.random() < 0.04 * k:
        postcode = None
    elif postcode and rng.random() < 0.3:
        postcode = postcode.replace(" ", "").lower() if rng.random() < 0.5 else postcode
    nhs: str | None = p.nhs_number
    if rng.random() < partner.nhs_missing:
        nhs = None
    elif rng.random() < 0.01:  # mistyped: fails the modulus-11 check, so unusable
        nhs = nhs[:-1] + str((int(nhs[-1]) + 1) % 10)
    elif rng.random() < 0.2:
        nhs = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}"
    return Demographics(
        record_id=f"{partner.name}-{p.person_id}-{n}",
        source=partner.name,
        nhs_number=nhs,
        given=given,
        family=family,
        birth_date=birth_date,
        sex=sex,
        postcode=postcode,
    )


def make_records(
    people: list[Person],
    rng: random.Random,
    partners: tuple[PartnerProfile, ...] = DEFAULT_PARTNERS,
) -> tuple[list[Demographics], dict[str, str]]:
    """Partner records for ``people``; returns (records, truth mapping record_id -> person_id).

    Record ids are opaque to the linker (shuffled order) though they embed the person id so the
    bench can report on them; the linker only ever sees the demographic fields.
    """
    records: list[Demographics] = []
    truth: dict[str, str] = {}
    for p in people:
        for partner in partners:
            if rng.random() >= partner.coverage:
                continue
            count = 1
            while count < 3 and rng.random() < partner.extra_record:
                count += 1
            for i in range(count):
                rec = _record(p, partner, i, rng)
                records.append(rec)
                truth[rec.record_id] = p.person_id
    rng.shuffle(records)
    # Opaque ids: the model must not be able to read the person out of the id.
    opaque: list[Demographics] = []
    opaque_truth: dict[str, str] = {}
    for i, rec in enumerate(records):
        rid = f"{rec.source}/{i:06d}"
        opaque.append(replace(rec, record_id=rid))
        opaque_truth[rid] = truth[rec.record_id]
    return opaque, opaque_truth


def true_pairs(truth: dict[str, str]) -> set[tuple[str, str]]:
    by_person: dict[str, list[str]] = {}
    for rid, pid in truth.items():
        by_person.setdefault(pid, []).append(rid)
    pairs = set()
    for ids in by_person.values():
        ids.sort()
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                pairs.add((a, b))
    return pairs


def cluster_pairs(clusters: list[set[str]]) -> set[tuple[str, str]]:
    pairs = set()
    for c in clusters:
        ids = sorted(c)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                pairs.add((a, b))
    return pairs


def pairwise_scores(predicted: set[tuple[str, str]], truth_pairs: set[tuple[str, str]]) -> dict:
    tp = len(predicted & truth_pairs)
    fp = len(predicted - truth_pairs)
    fn = len(truth_pairs - predicted)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall}
