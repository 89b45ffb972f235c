"""Public API of sharedcare.population.viewdef beyond the conformance suite."""

from __future__ import annotations

import pytest

import sharedcare.population.viewdef_fhirpath as fp
from sharedcare.population.viewdef import (
    Column,
    CompiledView,
    ViewDefinitionError,
    ViewEvaluationError,
    compile_view,
    evaluate,
)
from sharedcare.population.viewdef_fhirpath import reference_key


def _view(*select, **extra):
    return {
        "resourceType": "ViewDefinition",
        "resource": "Patient",
        "select": list(select),
        **extra,
    }


ID = {"column": [{"name": "id", "path": "id", "type": "id"}]}


@pytest.mark.parametrize(
    "view,message",
    [
        (_view(ID, {"column": [{"name": "x"}]}), "select[1].column[0]: path is required"),
        (_view({"column": [{"path": "id"}]}), "select[0].column[0]: name is required"),
        (_view({"column": [{"name": "1bad", "path": "id"}]}), "select[0].column[0]: name '1bad'"),
        (_view(ID, {"column": [{"name": "id", "path": "id"}]}), "duplicate column name 'id'"),
        (
            _view({"forEach": "name", "forEachOrNull": "name", "column": ID["column"]}),
            "select[0]: only one of forEach/forEachOrNull/repeat",
        ),
        (_view({"colum": []}), "select[0]: unknown element(s) ['colum']"),
        (
            _view({"select": [{"forEach": "name.where(", "column": ID["column"]}]}),
            "select[0].select[0].forEach: invalid FHIRPath",
        ),
        (
            _view({"column": [{"name": "a", "path": "name.where(use = %nope)"}]}),
            "select[0].column[0].path: undefined constant %nope",
        ),
        (
            _view({"column": [{"name": "a", "path": "id", "collection": "yes"}]}),
            "select[0].column[0]: collection must be a boolean",
        ),
        (_view(ID, where=[{"path": "active and"}]), "where[0].path: invalid FHIRPath"),
        (
            _view(ID, constant=[{"name": "c", "valueString": "a", "valueCode": "b"}]),
            "constant[0]: constant 'c' needs exactly one value[x]",
        ),
        ({"resource": "Patient", "select": []}, "select: is required"),
        (
            {"resource": "patient", "select": [ID]},
            "resource: is required and must be a FHIR resource type",
        ),
    ],
)
def test_invalid_views_name_problem_and_location(view, message):
    with pytest.raises(ViewDefinitionError) as err:
        compile_view(view)
    assert message in str(err.value)
    assert not isinstance(err.value, ViewEvaluationError)  # caught before any data is seen


def test_columns_and_rows():
    cv = compile_view(
        _view(
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()", "type": "id"},
                    {"name": "given", "path": "name.given", "type": "string", "collection": True},
                ]
            },
            {"forEachOrNull": "telecom", "column": [{"name": "tel", "path": "value"}]},
        )
    )
    assert isinstance(cv, CompiledView) and cv.resource == "Patient"
    assert cv.columns == [
        Column("id", "id", False),
        Column("given", "string", True),
        Column("tel", None, False),
    ]
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "name": [{"given": ["A", "B"]}, {"given": ["C"]}],
        "telecom": [{"value": "1"}, {"value": "2"}],
    }
    assert cv.rows(patient) == [
        {"id": "p", "given": ["A", "B", "C"], "tel": "1"},
        {"id": "p", "given": ["A", "B", "C"], "tel": "2"},
    ]
    assert cv.rows({"resourceType": "Observation", "id": "o"}) == []
    assert list(
        cv.evaluate([{"resourceType": "Patient", "id": "q"}, {"resourceType": "Group"}])
    ) == [{"id": "q", "given": [], "tel": None}]
    assert evaluate(cv, [patient]) == cv.rows(patient)


def test_expressions_are_compiled_once(monkeypatch):
    cv = compile_view(_view(ID, where=[{"path": "active"}]))

    def boom(expr):
        raise AssertionError(f"re-parsed {expr!r}")

    monkeypatch.setattr(fp, "parse_strict", boom)
    rows = evaluate(
        cv, [{"resourceType": "Patient", "id": str(i), "active": True} for i in range(5)]
    )
    assert len(rows) == 5


def test_primitive_extensions_do_not_count_as_values():
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
    }
    view = _view({"column": [{"name": "bd", "path": "birthDate", "type": "date"}]})
    assert evaluate(view, [patient]) == [{"bd": "1970-01-01"}]


def test_multiple_values_without_collection_is_an_error_naming_the_column():
    view = _view({"column": [{"name": "g", "path": "name.given"}]})
    with pytest.raises(ViewEvaluationError, match=r"select\[0\]\.column\[0\].*Patient/p"):
        evaluate(view, [{"resourceType": "Patient", "id": "p", "name": [{"given": ["a", "b"]}]}])


@pytest.mark.parametrize(
    "reference,type_name,key",
    [
        ({"reference": "Patient/123"}, None, "123"),
        ({"reference": "Patient/123"}, "Patient", "123"),
        ({"reference": "Patient/123"}, "Group", None),
        ({"reference": "https://fhir.example.org/r4/Patient/123/_history/4"}, "Patient", "123"),
        ({"reference": "urn:uuid:5e0b"}, "Patient", "5e0b"),
        ({"reference": "urn:uuid:5e0b", "type": "Practitioner"}, "Patient", None),
        ({"reference": "#contained"}, None, None),
        ({"display": "no reference"}, None, None),
    ],
)
def test_reference_key(reference, type_name, key):
    assert reference_key(reference, type_name) == key


def test_get_reference_key_in_views():
    view = {
        "resource": "Observation",
        "select": [
            {
                "column": [
                    {"name": "pt", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                    {"name": "any", "path": "subject.getReferenceKey()", "type": "string"},
                    {"name": "grp", "path": "subject.getReferenceKey(Group)", "type": "string"},
                ]
            }
        ],
    }
    obs = {"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p9"}}
    assert evaluate(view, [obs]) == [{"pt": "p9", "any": "p9", "grp": None}]


def test_repeat_and_row_index():
    qr = {
        "resourceType": "QuestionnaireResponse",
        "id": "q",
        "item": [{"linkId": "1", "item": [{"linkId": "1.1"}]}, {"linkId": "2"}],
    }
    view = {
        "resource": "QuestionnaireResponse",
        "select": [
            {
                "repeat": ["item"],
                "column": [
                    {"name": "link", "path": "linkId", "type": "string"},
                    {"name": "ix", "path": "%rowIndex", "type": "integer"},
                ],
            }
        ],
    }
    assert evaluate(view, [qr]) == [
        {"link": "1", "ix": 0},
        {"link": "1.1", "ix": 1},
        {"link": "2", "ix": 2},
    ]
