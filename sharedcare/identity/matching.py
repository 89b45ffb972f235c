"""Probabilistic person matching across care partners (Fellegi-Sunter, via splink on DuckDB).

One person is known to the GP, the hospital and the council under slightly different
demographics, often without an NHS number. :class:`Linker` learns how much each agreement or
disagreement (names, date of birth, sex, postcode) says about two records being the same person,
then links records into one identity per person.

Rules layered over the model:

* a *verified* NHS number (valid modulus-11, equal on both records) links outright;
* two *different valid* NHS numbers never link, whatever the demographics say (also enforced when
  forming clusters, so a record without an NHS number cannot bridge two numbered people).

Model state (splink settings with trained m/u parameters, thresholds) round-trips through
:meth:`Linker.to_json` / :meth:`Linker.from_json`.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import re
import threading
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM
from sharedcare.identity import nhs_number as _nhs
from sharedcare.identity.nicknames import canonical as _canonical_given

__all__ = [
    "MATCH_GRADE_EXTENSION_URL",
    "Demographics",
    "Linker",
    "MatchDecision",
    "demographics_from_patient",
    "normalise_name",
    "normalise_postcode",
]

MATCH_GRADE_EXTENSION_URL = "http://hl7.org/fhir/StructureDefinition/match-grade"
_MODEL_FORMAT = "sharedcare.identity.linker/1"
_COLUMNS = (
    "record_id",
    "source",
    "nhs_number",
    "given",
    "given_canon",
    "family",
    "birth_date",
    "sex",
    "postcode",
)


# --------------------------------------------------------------------------------------------
# Demographics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demographics:
    record_id: str
    source: str
    nhs_number: str | None = None
    given: str | None = None
    family: str | None = None
    birth_date: str | None = None  # 'YYYY-MM-DD'
    sex: str | None = None  # 'male' | 'female' | 'other' | 'unknown'
    postcode: str | None = None


@dataclass
class MatchDecision:
    """A scored pair. ``outcome`` is 'link' | 'review' | 'distinct'.

    ``probability`` is the final probability the decision rests on: 1.0 for a verified NHS
    number, 0.0 for conflicting valid NHS numbers, otherwise the model's. ``model_probability``
    keeps the model's own figure (None when the pair was never scored by the model) and
    ``reason`` says which rule decided: 'nhs-number', 'nhs-number-conflict' or 'model'.
    """

    a: str
    b: str
    probability: float
    outcome: str
    reason: str = "model"
    model_probability: float | None = None


def normalise_name(s: str | None) -> str | None:
    """Upper-case A-Z, accents folded, punctuation dropped, hyphens/whitespace as one space."""
    if not s:
        return None
    s = unicodedata.normalize("NFKD", s)
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).upper()
    s = re.sub(r"[-\s]+", " ", s)
    s = re.sub(r"[^A-Z ]", "", s).strip()
    s = re.sub(r" +", " ", s)
    return s or None


_POSTCODE_RE = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}$")


def normalise_postcode(s: str | None) -> str | None:
    """UK postcode upper-cased with one space before the inward code ('ls1 4ab' -> 'LS1 4AB').

    Strings that do not look like a UK postcode are returned upper-cased with spaces removed, so
    they can still match exactly.
    """
    if not s:
        return None
    compact = re.sub(r"[^A-Za-z0-9]", "", s).upper()
    if not compact:
        return None
    if _POSTCODE_RE.match(compact):
        return f"{compact[:-3]} {compact[-3:]}"
    return compact


def _normalise_date(s: str | None) -> str | None:
    if not s or len(s) < 10:
        return None
    try:
        return _dt.date.fromisoformat(s[:10]).isoformat()
    except ValueError:
        return None


def _normalise_sex(s: str | None) -> str | None:
    if not s:
        return None
    s = s.strip().lower()
    if s in ("m",):
        s = "male"
    elif s in ("f",):
        s = "female"
    return s if s in ("male", "female", "other") else None


def _valid_nhs(s: str | None) -> str | None:
    digits = _nhs.normalise(s)
    return digits if digits is not None and _nhs.is_valid(digits) else None


def _pick_name(names: list[dict]) -> dict:
    def current(n: dict) -> bool:
        return not (n.get("period") or {}).get("end")

    for use in ("official", "usual", None):
        for n in names:
            if current(n) and (use is None or n.get("use") == use):
                return n
    return names[0] if names else {}


def _pick_address(addresses: list[dict]) -> dict:
    def current(a: dict) -> bool:
        return not (a.get("period") or {}).get("end") and a.get("use") != "old"

    for use in ("home", None):
        for a in addresses:
            if current(a) and a.get("postalCode") and (use is None or a.get("use") == use):
                return a
    return {}


def demographics_from_patient(patient: dict, source: str) -> Demographics:
    """Demographics of a FHIR R4 Patient resource (dict) as held by ``source``.

    Uses the official (else usual, else first) current name, the first given name, the NHS number
    identifier (system :data:`NHS_NUMBER_SYSTEM`, normalised but not validated), birthDate, gender
    and the current home postcode. ``record_id`` is ``"{source}/{Patient.id}"``.
    """
    name = _pick_name(patient.get("name") or [])
    given_list = name.get("given") or []
    nhs = None
    for ident in patient.get("identifier") or []:
        if ident.get("system") == NHS_NUMBER_SYSTEM and ident.get("value"):
            nhs = _nhs.normalise(ident["value"]) or ident["value"]
            break
    address = _pick_address(patient.get("address") or [])
    return Demographics(
        record_id=f"{source}/{patient.get('id')}",
        source=source,
        nhs_number=nhs,
        given=given_list[0] if given_list else None,
        family=name.get("family"),
        birth_date=patient.get("birthDate"),
        sex=patient.get("gender"),
        postcode=address.get("postalCode"),
    )


def _row(d: Demographics) -> dict[str, Any]:
    given = normalise_name(d.given)
    return {
        "record_id": str(d.record_id),
        "source": d.source,
        "nhs_number": _valid_nhs(d.nhs_number),
        "given": given,
        "given_canon": _canonical_given(given),
        "family": normalise_name(d.family),
        "birth_date": _normalise_date(d.birth_date),
        "sex": _normalise_sex(d.sex),
        "postcode": normalise_postcode(d.postcode),
    }


def _arrow(rows: list[dict[str, Any]]):
    import pyarrow as pa

    schema = pa.schema([(c, pa.string()) for c in _COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


# --------------------------------------------------------------------------------------------
# The splink model
# --------------------------------------------------------------------------------------------


def _comparisons() -> list:
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    given = cl.CustomComparison(
        output_column_name="given",
        comparison_description="Given name",
        comparison_levels=[
            cll.NullLevel("given"),
            cll.ExactMatchLevel("given"),
            cll.ExactMatchLevel("given_canon").configure(
                label_for_charts="Same name after nickname mapping"
            ),
            cll.JaroWinklerLevel("given", 0.92),
            cll.JaroWinklerLevel("given", 0.80),
            cll.ElseLevel(),
        ],
    )
    family = cl.CustomComparison(
        output_column_name="family",
        comparison_description="Family name",
        comparison_levels=[
            cll.NullLevel("family"),
            cll.ExactMatchLevel("family"),
            cll.JaroWinklerLevel("family", 0.92),
            cll.JaroWinklerLevel("family", 0.80),
            cll.ElseLevel(),
        ],
    )
    birth_date = cl.CustomComparison(
        output_column_name="birth_date",
        comparison_description="Date of birth",
        comparison_levels=[
            cll.NullLevel("birth_date"),
            cll.ExactMatchLevel("birth_date"),
            cll.CustomLevel(
                "substr(birth_date_l, 1, 4) = substr(birth_date_r, 1, 4)"
                " AND substr(birth_date_l, 6, 2) = substr(birth_date_r, 9, 2)"
                " AND substr(birth_date_l, 9, 2) = substr(birth_date_r, 6, 2)",
                label_for_charts="Day and month transposed",
            ),
            cll.DamerauLevenshteinLevel("birth_date", 1).configure(
                label_for_charts="One digit wrong or two adjacent digits swapped"
            ),
            cll.AbsoluteDateDifferenceLevel(
                "birth_date", input_is_string=True, threshold=1, metric="year"
            ),
            cll.ElseLevel(),
        ],
    )
    sex = cl.ExactMatch("sex")
    postcode = cl.PostcodeComparison("postcode")
    return [given, family, birth_date, sex, postcode]


def _prediction_blocking_rules() -> list:
    from splink import block_on

    return [
        block_on("nhs_number"),
        block_on("birth_date"),
        block_on("given_canon", "family"),
        block_on("family", "substr(birth_date, 1, 4)"),
        block_on("given_canon", "substr(birth_date, 1, 4)"),
        block_on("postcode", "substr(given, 1, 1)"),
    ]


def _settings_creator(probability_two_random_records_match: float):
    from splink import SettingsCreator

    return SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="record_id",
        comparisons=_comparisons(),
        blocking_rules_to_generate_predictions=_prediction_blocking_rules(),
        probability_two_random_records_match=probability_two_random_records_match,
        additional_columns_to_retain=["source", "nhs_number"],
        retain_matching_columns=True,
        retain_intermediate_calculation_columns=False,
    )


def _records(df) -> list[dict[str, Any]]:
    """A splink result's rows; its table is dropped so a kept linker does not grow."""
    try:
        return df.as_record_list()
    finally:
        df.drop_table_from_database_and_remove_from_cache()


def _splink_linker(rows: list[dict[str, Any]], settings: Any, validate: bool = True,
                   engine: str = "duckdb"):
    from splink import Linker as SplinkLinker

    if engine == "spark":
        # A whole population's training and prediction on a cluster engine; the same model,
        # SQL and comparisons as DuckDB (splink renders them in each dialect).
        from pyspark.sql.types import StringType, StructField, StructType
        from splink.backends.spark import SparkAPI

        from ..spark import spark_session

        spark = spark_session()
        db_api = SparkAPI(spark_session=spark, break_lineage_method="parquet")
        frame = spark.createDataFrame(
            [tuple(r.get(c) for c in _COLUMNS) for r in rows],
            schema=StructType([StructField(c, StringType(), True) for c in _COLUMNS]))
        # splink names the view itself: Spark's session (one per process) outlives this linker,
        # and only splink's own names may be replaced.
        df = db_api.register(frame)
    else:
        from splink import DuckDBAPI

        db_api = DuckDBAPI()
        df = db_api.register(_arrow(rows), table_name="sharedcare_identity_records")
    # Scoring reuses settings validated when the model was trained: checking them again on
    # every score (parsing each comparison's SQL) cost more than the scoring itself.
    return SplinkLinker(df, settings, log_level=None, validate_settings=validate)


def _in_dialect(model: dict[str, Any], engine: str) -> dict[str, Any]:
    """The trained model with its SQL rendered for ``engine``.

    A saved splink model holds SQL in the dialect it was trained in (DuckDB's ``epoch()`` for
    the date comparison, say), so a model trained on DuckDB cannot run on Spark as saved. Our
    comparisons are built by code, so render them afresh for the target dialect and carry the
    trained m and u over level by level (the same creators give the same levels in order)."""
    dialect = _DIALECTS[engine]
    if model.get("sql_dialect") == dialect:
        return model
    fresh = _settings_creator(model["probability_two_random_records_match"]).create_settings_dict(
        dialect)
    fresh["sql_dialect"] = dialect
    for key in ("retain_matching_columns", "retain_intermediate_calculation_columns"):
        fresh[key] = model.get(key, fresh[key])
    for new_comp, old_comp in zip(fresh["comparisons"], model["comparisons"], strict=True):
        levels = zip(new_comp["comparison_levels"], old_comp["comparison_levels"], strict=True)
        for new_level, old_level in levels:
            for key in ("m_probability", "u_probability"):
                if key in old_level:
                    new_level[key] = old_level[key]
    return fresh


_DIALECTS = {"duckdb": "duckdb", "spark": "spark"}  # engine -> splink's SQL dialect
ENGINES = tuple(_DIALECTS)
_M_FLOOR = 0.001  # no level is impossible among true matches (a real record can say anything)
_U_FLOOR = 1e-5


def _sanitise_parameters(model: dict[str, Any]) -> None:
    """Floor and renormalise m and u over each comparison's non-null levels.

    Training can leave a level unobserved (m or u of 0 or missing), which would give it an
    infinite weight: e.g. with NHS-number labels no true match may happen to disagree on sex,
    and the model would then treat any sex disagreement as proof of two people.
    """
    for comparison in model.get("comparisons", []):
        levels = [
            lv for lv in comparison.get("comparison_levels", []) if not lv.get("is_null_level")
        ]
        for key, floor in (("m_probability", _M_FLOOR), ("u_probability", _U_FLOOR)):
            values = []
            for lv in levels:
                v = lv.get(key)
                values.append(floor if v is None or math.isnan(v) or v < floor else float(v))
            total = sum(values)
            for lv, v in zip(levels, values):
                lv[key] = v / total


# --------------------------------------------------------------------------------------------
# Linker
# --------------------------------------------------------------------------------------------


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class Linker:
    """One identity per person across care partners.

    >>> linker = Linker()
    >>> linker.train(records)            # doctest: +SKIP
    >>> linker.clusters(records)         # doctest: +SKIP
    """

    def __init__(
        self,
        link_threshold: float = 0.99,
        review_threshold: float = 0.80,
        *,
        possible_threshold: float = 0.50,
        seed: int = 20240601,
        report_threshold: float = 0.05,
        given_name_guard: bool = True,
        engine: str = "duckdb",
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        if not 0.0 <= possible_threshold <= review_threshold <= link_threshold <= 1.0:
            raise ValueError("need 0 <= possible <= review <= link <= 1")
        self.link_threshold = link_threshold
        self.review_threshold = review_threshold
        self.possible_threshold = possible_threshold
        self.seed = seed
        self.report_threshold = report_threshold
        self.given_name_guard = given_name_guard
        # Where train() and predict() run over many records. Scoring a few candidates for
        # $match always runs in process on DuckDB: a cluster round trip would cost more.
        self.engine = engine
        self._model: dict[str, Any] | None = None
        self.training_info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._scorers: dict[bool, tuple[Any, Any]] = {}  # explain? -> (model, splink linker)

    # ---------------------------------------------------------------- state

    @property
    def trained(self) -> bool:
        return self._model is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _MODEL_FORMAT,
            "link_threshold": self.link_threshold,
            "review_threshold": self.review_threshold,
            "possible_threshold": self.possible_threshold,
            "report_threshold": self.report_threshold,
            "seed": self.seed,
            "given_name_guard": self.given_name_guard,
            "training_info": self.training_info,
            "splink_model": self._model,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=None, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Linker:
        if data.get("format") != _MODEL_FORMAT:
            raise ValueError(f"not a {_MODEL_FORMAT} model")
        linker = cls(
            data["link_threshold"],
            data["review_threshold"],
            possible_threshold=data.get("possible_threshold", 0.5),
            seed=data.get("seed", 20240601),
            report_threshold=data.get("report_threshold", 0.05),
            given_name_guard=data.get("given_name_guard", True),
        )
        linker._model = data.get("splink_model")
        linker.training_info = data.get("training_info") or {}
        return linker

    @classmethod
    def from_json(cls, s: str) -> Linker:
        return cls.from_dict(json.loads(s))

    # ---------------------------------------------------------------- training

    def train(
        self,
        records: Sequence[Demographics],
        *,
        m_method: str = "auto",
        max_pairs: float = 2e6,
        min_label_pairs: int = 50,
    ) -> None:
        """Estimate the model from unlabelled records.

        * lambda (prior probability two random records match): from the records carrying valid NHS
          numbers (share of their pairs with equal numbers); if there are none, from a
          deterministic rule (same names and date of birth) with an assumed recall of 0.6;
        * u: random sampling of record pairs (seeded, so training is reproducible);
        * m: ``m_method='labels'`` uses pairs that share a valid NHS number as true matches;
          ``'em'`` uses expectation maximisation blocked on date of birth and on names;
          ``'auto'`` (default) uses labels when there are at least ``min_label_pairs`` such pairs,
          otherwise EM.
        """
        if m_method not in ("auto", "labels", "em"):
            raise ValueError("m_method must be 'auto', 'labels' or 'em'")
        rows = [_row(r) for r in records]
        if len(rows) < 2:
            raise ValueError("need at least two records to train")
        if len({r["record_id"] for r in rows}) != len(rows):
            raise ValueError("record_id must be unique")

        by_nhs: dict[str, int] = defaultdict(int)
        for r in rows:
            if r["nhs_number"]:
                by_nhs[r["nhs_number"]] += 1
        n_nhs = sum(by_nhs.values())
        label_pairs = sum(c * (c - 1) // 2 for c in by_nhs.values())
        lam = None
        if label_pairs > 0 and n_nhs > 1:
            lam = label_pairs / (n_nhs * (n_nhs - 1) / 2)

        use_labels = m_method == "labels" or (m_method == "auto" and label_pairs >= min_label_pairs)
        if m_method == "labels" and label_pairs == 0:
            raise ValueError("no records share a valid NHS number: cannot train from labels")

        from splink import block_on

        linker = _splink_linker(rows, _settings_creator(lam or 1e-4), engine=self.engine)
        if lam is None:
            linker.training.estimate_probability_two_random_records_match(
                [block_on("given", "family", "birth_date")], recall=0.6
            )
        linker.training.estimate_u_using_random_sampling(
            max_pairs=max_pairs, seed=self.seed, min_count_per_level=None, num_chunks=1
        )
        if use_labels:
            linker.training.estimate_m_from_label_column("nhs_number")
        else:
            linker.training.estimate_parameters_using_expectation_maximisation(
                block_on("birth_date"), estimate_without_term_frequencies=True
            )
            linker.training.estimate_parameters_using_expectation_maximisation(
                block_on("given_canon", "family"), estimate_without_term_frequencies=True
            )
        model = copy.deepcopy(linker.misc.save_model_to_json())
        _sanitise_parameters(model)
        self._model = model
        self.training_info = {
            "records": len(rows),
            "records_with_valid_nhs_number": n_nhs,
            "nhs_labelled_pairs": label_pairs,
            "m_method": "labels" if use_labels else "em",
            "probability_two_random_records_match": model["probability_two_random_records_match"],
        }

    def _require_model(self) -> dict[str, Any]:
        if self._model is None:
            raise RuntimeError("Linker is not trained: call train() or load with from_json()")
        return self._model

    # ---------------------------------------------------------------- decisions

    def _capped(self, p: float, gamma_given: Any) -> float:
        """Given-name guard: a pair whose given names are both present and disagree outright
        (not equal, not nickname-equivalent, Jaro-Winkler < 0.8) is never linked on the model
        alone -- the classic overlay is twins (same family name, birthday and address), which
        agreement-independence scores as near-certain. Such pairs are capped just below
        ``link_threshold`` (so they go to review instead)."""
        if self.given_name_guard and gamma_given == 0 and p >= self.link_threshold:
            return min(p, max(self.review_threshold, self.link_threshold - 1e-6))
        return p

    def _outcome(self, p: float) -> str:
        if p >= self.link_threshold:
            return "link"
        if p >= self.review_threshold:
            return "review"
        return "distinct"

    def predict(self, records: Sequence[Demographics]) -> list[MatchDecision]:
        """Scored candidate pairs among ``records``.

        Returns every pair sharing a valid NHS number (outcome 'link'), and every pair found by
        the blocking rules whose model probability is at least ``report_threshold`` (pairs with
        conflicting valid NHS numbers are 'distinct'). Pairs not returned are 'distinct'.
        """
        model = self._require_model()
        rows = [_row(r) for r in records]
        if len({r["record_id"] for r in rows}) != len(rows):
            raise ValueError("record_id must be unique")
        nhs_of = {r["record_id"]: r["nhs_number"] for r in rows}

        scored: dict[tuple[str, str], float] = {}
        if len(rows) >= 2:
            settings = copy.deepcopy(_in_dialect(model, self.engine))
            settings["retain_intermediate_calculation_columns"] = True
            linker = _splink_linker(rows, settings, engine=self.engine)
            df = linker.inference.predict(
                threshold_match_probability=self.report_threshold, warning_mode="never"
            )
            for rec in df.as_record_list():
                scored[_pair(rec["record_id_l"], rec["record_id_r"])] = self._capped(
                    float(rec["match_probability"]), rec.get("gamma_given")
                )

        decisions: dict[tuple[str, str], MatchDecision] = {}
        groups: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            if r["nhs_number"]:
                groups[r["nhs_number"]].append(r["record_id"])
        for ids in groups.values():
            ids = sorted(ids)
            for i, a in enumerate(ids):
                for b in ids[i + 1 :]:
                    decisions[(a, b)] = MatchDecision(
                        a, b, 1.0, "link", "nhs-number", scored.get((a, b))
                    )
        for (a, b), p in scored.items():
            if (a, b) in decisions:
                continue
            na, nb = nhs_of[a], nhs_of[b]
            if na and nb and na != nb:
                decisions[(a, b)] = MatchDecision(a, b, 0.0, "distinct", "nhs-number-conflict", p)
            else:
                decisions[(a, b)] = MatchDecision(a, b, p, self._outcome(p), "model", p)
        return sorted(decisions.values(), key=lambda d: (-d.probability, d.a, d.b))

    def clusters(
        self,
        records: Sequence[Demographics],
        decisions: Iterable[MatchDecision] | None = None,
    ) -> list[set[str]]:
        """Connected components of 'link' decisions (every record appears in one set).

        Links are applied strongest first; a link that would put two different valid NHS numbers
        in one cluster is skipped. Pass ``decisions`` from :meth:`predict` to avoid re-scoring.
        """
        rows = [_row(r) for r in records]
        if decisions is None:
            decisions = self.predict(records)
        parent = {r["record_id"]: r["record_id"] for r in rows}
        nhs_sets = {r["record_id"]: ({r["nhs_number"]} if r["nhs_number"] else set()) for r in rows}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        links = [d for d in decisions if d.outcome == "link"]
        links.sort(key=lambda d: (d.reason != "nhs-number", -d.probability, d.a, d.b))
        for d in links:
            ra, rb = find(d.a), find(d.b)
            if ra == rb:
                continue
            na, nb = nhs_sets[ra], nhs_sets[rb]
            if na and nb and na != nb:
                continue
            if rb < ra:
                ra, rb = rb, ra
            parent[rb] = ra
            nhs_sets[ra] = na | nb
        comps: dict[str, set[str]] = defaultdict(set)
        for rid in parent:
            comps[find(rid)].add(rid)
        return sorted(comps.values(), key=lambda s: (-len(s), min(s)))

    # ---------------------------------------------------------------- $match

    def grade(self, probability: float) -> str:
        """FHIR match-grade code for a probability ('certain'|'probable'|'possible'|'certainly-not')."""
        if probability >= self.link_threshold:
            return "certain"
        if probability >= self.review_threshold:
            return "probable"
        if probability >= self.possible_threshold:
            return "possible"
        return "certainly-not"

    def score(
        self, query: Demographics, candidates: Sequence[Demographics]
    ) -> list[tuple[Demographics, float, str]]:
        """Score ``candidates`` against ``query`` for Patient/$match (IHE PDQm).

        Returns ``(candidate, probability, grade)`` sorted by probability, highest first; grade is
        a code of the FHIR match-grade extension (:data:`MATCH_GRADE_EXTENSION_URL`). An equal
        valid NHS number scores 1.0 ('certain'); a different valid NHS number scores 0.0
        ('certainly-not'); otherwise the model's probability decides.
        """
        model = self._require_model()
        if not candidates:
            return []
        q = _row(query)
        q["record_id"] = "__query__"
        cand_rows = []
        for i, c in enumerate(candidates):
            row = _row(c)
            row["record_id"] = f"__candidate__{i}"
            cand_rows.append(row)
        with self._lock:
            df = self._scorer(model, [q, *cand_rows]).inference.score_pairs([q], cand_rows)
            probs = {
                rec["record_id_r"]: self._capped(
                    float(rec["match_probability"]), rec.get("gamma_given")
                )
                for rec in _records(df)
            }
        out = []
        for i, c in enumerate(candidates):
            row = cand_rows[i]
            if q["nhs_number"] and row["nhs_number"]:
                p = 1.0 if q["nhs_number"] == row["nhs_number"] else 0.0
            else:
                p = probs[row["record_id"]]
            out.append((c, p, self.grade(p)))
        out.sort(key=lambda t: -t[1])
        return out

    def _scorer(self, model: dict[str, Any], rows: list[dict[str, Any]], explain: bool = False):
        """A splink linker kept for scoring with this model: building one (a DuckDB database,
        the settings, the SQL) took ~0.3 s, far more than scoring a record against its
        candidates. The model has no term-frequency adjustments, so the rows it was built with
        do not change any score. Call with the lock held."""
        kept = self._scorers.get(explain)
        if kept is None or kept[0] is not model:
            settings = copy.deepcopy(_in_dialect(model, "duckdb"))  # a model trained on Spark too
            if explain:
                settings["retain_intermediate_calculation_columns"] = True
            kept = self._scorers[explain] = (model, _splink_linker(rows, settings, validate=False))
        return kept[1]

    # ---------------------------------------------------------------- evidence

    def explain(self, query: Demographics, candidate: Demographics) -> dict[str, Any]:
        """Why the model scores a pair as it does, for a person reviewing it: the match weight
        (log2 Bayes factor, prior included), the probability, and for each compared field the
        level reached (``agree`` / ``partial`` / ``disagree`` / ``missing``), its label and its
        partial match weight. Holds no names or values."""
        model = self._require_model()
        q, c = _row(query), _row(candidate)
        q["record_id"], c["record_id"] = "__query__", "__candidate__"
        with self._lock:
            rec = _records(self._scorer(model, [q, c], explain=True).inference.score_pairs(
                [q], [c]))[0]
        fields: dict[str, dict[str, Any]] = {}
        for comp in model["comparisons"]:
            name = comp["output_column_name"]
            levels = [lv for lv in comp["comparison_levels"] if not lv.get("is_null_level")]
            gamma = rec.get(f"gamma_{name}")
            if gamma is None or gamma < 0:
                fields[name] = {"level": "missing", "label": "missing on one or both records",
                                "weight": 0.0}
                continue
            index = len(levels) - 1 - int(gamma)
            fields[name] = {
                "level": "agree" if index == 0 else "disagree" if index == len(levels) - 1
                else "partial",
                "label": levels[index].get("label_for_charts") or f"level {gamma}",
                "weight": round(float(rec.get(f"mw_{name}") or 0.0), 3),
            }
        p = self._capped(float(rec["match_probability"]), rec.get("gamma_given"))
        weight = float(rec["match_weight"])
        if p < float(rec["match_probability"]):
            weight = math.log2(p / (1 - p))
        return {"probability": p, "match_weight": round(weight, 3), "grade": self.grade(p),
                "fields": fields}
