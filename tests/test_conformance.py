"""Tests for cds.hooks.conformance: every rule has a minimal payload that breaks
exactly that rule, plus real-world valid payloads (CDS Hooks Sandbox shapes)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from cds.hooks.conformance import (
    assert_conformant_response,
    check_discovery,
    check_feedback,
    check_request,
    check_response,
    is_absolute_uri,
    is_rfc3339_datetime,
    load_schema,
    pointer,
)

JSON = dict[str, Any]
Path = tuple[str | int, ...]

_DELETE: Any = object()  # sentinel: "remove this field" in the payload builders below

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

CARD_UUID = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
CARD2_UUID = "9368d37b-283f-44a0-93ea-547cebab93ed"
SUGG_UUIDS = (
    "e56e1945-20b3-4393-8503-a1a20fd73152",
    "0c0b9b1d-0a7e-4a47-9e38-2f6f5d1d3c11",
    "7d1f2f3a-5b6c-4d7e-8f90-a1b2c3d4e5f6",
)


def problem_path(problem: str) -> Path:
    """Parse the JSON-pointer-like prefix of a problem string back into a path."""
    text = problem.split(": ", 1)[0]
    if text == "/":
        return ()
    parts: list[str | int] = []
    for raw in text[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(token) if token.isdigit() else token)
    return tuple(parts)


def assert_only(problems: list[str], path: str, fragment: str) -> None:
    """Exactly one problem, at ``path``, mentioning ``fragment``."""
    assert len(problems) == 1, f"expected exactly one problem, got {problems}"
    assert problems[0].startswith(f"{path}: "), problems
    assert fragment in problems[0], problems


def assert_reported(problems: list[str], path: str, fragment: str) -> None:
    assert any(p.startswith(f"{path}: ") and fragment in p for p in problems), (
        f"no problem at {path!r} mentioning {fragment!r} in {problems}"
    )


def minimal_card(uuid: str = CARD_UUID, **extra: Any) -> JSON:
    return {"uuid": uuid, "summary": "Check renal function", "indicator": "info", "source": {"label": "Renal rules"}, **extra}


def suggestion(uuid: str = SUGG_UUIDS[0], **extra: Any) -> JSON:
    return {"label": "Order eGFR", "uuid": uuid, **extra}


def card_with_suggestions(*suggestions: JSON, selection: str = "any", **extra: Any) -> JSON:
    return minimal_card(suggestions=list(suggestions), selectionBehavior=selection, **extra)


def response_with(*cards: JSON, **extra: Any) -> JSON:
    return {"cards": list(cards), **extra}


def response_with_action(action: JSON) -> JSON:
    return response_with(card_with_suggestions(suggestion(actions=[action])))


def response_with_link(link: JSON) -> JSON:
    return response_with(minimal_card(links=[link]))


MEDREQ: JSON = {
    "resourceType": "MedicationRequest",
    "id": "rx-1",
    "status": "draft",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975", "display": "metformin 500 MG"}]
    },
    "subject": {"reference": "Patient/pt-1"},
}

FULL_RESPONSE: JSON = {
    "cards": [
        {
            "uuid": CARD_UUID,
            "summary": "Metformin dose exceeds the renal limit for eGFR 28",
            "detail": "eGFR is **28 mL/min/1.73m2**. Reduce the dose or stop metformin.",
            "indicator": "warning",
            "source": {
                "label": "Renal dosing rules",
                "url": "https://example.org/guidelines/renal-dosing",
                "icon": "https://example.org/img/icon-100px.png",
                "topic": {"system": "http://example.org/cds/topics", "code": "renal-dosing", "display": "Renal dosing"},
            },
            "suggestions": [
                {
                    "label": "Reduce to 500 mg daily",
                    "uuid": SUGG_UUIDS[0],
                    "isRecommended": True,
                    "actions": [
                        {"type": "update", "description": "Reduce the dose", "resource": MEDREQ},
                    ],
                },
                {
                    "label": "Cancel the order and order an eGFR",
                    "uuid": SUGG_UUIDS[1],
                    "actions": [
                        {"type": "delete", "description": "Remove the order", "resourceId": "MedicationRequest/rx-1"},
                        {
                            "type": "create",
                            "description": "Order an eGFR",
                            "resource": {
                                "resourceType": "ServiceRequest",
                                "status": "draft",
                                "intent": "order",
                                "code": {"text": "eGFR"},
                                "subject": {"reference": "Patient/pt-1"},
                            },
                        },
                    ],
                },
            ],
            "selectionBehavior": "at-most-one",
            "overrideReasons": [
                {"system": "http://example.org/cds/override", "code": "pt-refused", "display": "Patient refused"},
                {"system": "http://example.org/cds/override", "code": "benefit", "display": "Benefit outweighs risk"},
            ],
            "links": [
                {"label": "Guideline", "url": "https://example.org/guidelines/renal-dosing#metformin", "type": "absolute"},
                {
                    "label": "Renal dosing app",
                    "url": "https://smart.example.org/launch",
                    "type": "smart",
                    "appContext": "{\"rx\":\"rx-1\"}",
                    "autolaunchable": False,
                },
            ],
            "extension": {"org.example.cds.rule": {"pack": "renal", "version": "1.2.0", "tags": []}},
        },
        {
            "uuid": CARD2_UUID,
            "summary": "Patient has a documented penicillin allergy",
            "indicator": "critical",
            "source": {"label": "Allergy rules"},
            "suggestions": [
                {"label": "Acknowledge", "uuid": SUGG_UUIDS[2], "isRecommended": True},
            ],
            "selectionBehavior": "any",
        },
    ],
    "systemActions": [
        {"type": "update", "resource": {**MEDREQ, "note": [{"text": "renal check done"}]}},
    ],
    "extension": {"org.example.cds.trace": {"ruleset": "2026.1"}},
}

# ---------------------------------------------------------------------------------------
# schemas and formats
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["response", "discovery", "request", "feedback"])
def test_schema_is_valid_2020_12_and_loaded_as_package_resource(name: Any) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", ["response", "discovery", "request", "feedback"])
def test_schema_never_forbids_additional_properties(name: Any) -> None:
    def walk(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    assert all(d.get("additionalProperties") is not False for d in walk(load_schema(name)))


def test_load_schema_returns_a_copy() -> None:
    load_schema("response")["required"].append("bogus")
    assert load_schema("response")["required"] == ["cards"]


@pytest.mark.parametrize(
    "value",
    ["https://example.org/x", "http://localhost:8091", "https://example.org/a%20b?q=1#frag", "urn:uuid:4e0a3a1e", "mailto:a@b.org"],
)
def test_absolute_uri_accepted(value: str) -> None:
    assert is_absolute_uri(value)


@pytest.mark.parametrize(
    "value", ["/relative/path", "example.org/x", "https://", "http:///path", "https://exa mple.org", "https://e.org/%zz", ""]
)
def test_absolute_uri_rejected(value: str) -> None:
    assert not is_absolute_uri(value)


@pytest.mark.parametrize(
    "value",
    ["2021-12-11T10:05:31Z", "2026-11-25T20:39:15.843Z", "1985-04-12T23:20:50.52Z", "1996-12-19T16:39:57-08:00",
     "1990-12-31T23:59:60Z", "2020-02-29t00:00:00z"],
)
def test_rfc3339_accepted(value: str) -> None:
    assert is_rfc3339_datetime(value)


@pytest.mark.parametrize(
    "value",
    ["2021-12-11T10:05:31", "2021-12-11 10:05:31Z", "2021-13-11T10:05:31Z", "2021-02-30T10:05:31Z",
     "2021-12-11T25:05:31Z", "2021-12-11T10:05:31+24:00", "2021-12-11", "yesterday", "1639217131"],
)
def test_rfc3339_rejected(value: str) -> None:
    assert not is_rfc3339_datetime(value)


def test_pointer_escapes_and_root() -> None:
    assert pointer(()) == "/"
    assert pointer(("cards", 0, "extension", "a/b~c")) == "/cards/0/extension/a~1b~0c"


# ---------------------------------------------------------------------------------------
# response: valid payloads
# ---------------------------------------------------------------------------------------


def test_full_response_is_conformant() -> None:
    assert check_response(FULL_RESPONSE) == []
    assert_conformant_response(FULL_RESPONSE)


def test_empty_cards_is_conformant() -> None:
    assert check_response({"cards": []}) == []


def test_spec_system_action_example_is_conformant() -> None:
    body = {"cards": [], "systemActions": [{"type": "update", "resource": {"resourceType": "ServiceRequest", "id": "example-MRI-59879846"}}]}
    assert check_response(body) == []


def test_unknown_fields_and_extension_contents_are_tolerated() -> None:
    card = card_with_suggestions(
        suggestion(actionSelectionBehavior="any", futureField={"x": 1}),
        selection="any",
        priority=3,
        extension={"org.example.empty": {"a": [], "b": "", "c": {}}, "org.example.nested": {"extension": {}}},
    )
    assert check_response(response_with(card, futureTopLevel=True)) == []


def test_at_most_one_with_a_single_recommendation_and_any_with_many_are_fine() -> None:
    one = card_with_suggestions(suggestion(SUGG_UUIDS[0], isRecommended=True), suggestion(SUGG_UUIDS[1]), selection="at-most-one")
    many = card_with_suggestions(
        suggestion(SUGG_UUIDS[0], isRecommended=True), suggestion(SUGG_UUIDS[1], isRecommended=True), selection="any"
    )
    assert check_response(response_with(one)) == []
    assert check_response(response_with(many)) == []


def test_summary_of_139_characters_is_fine() -> None:
    assert check_response(response_with(minimal_card(summary="x" * 139))) == []


# ---------------------------------------------------------------------------------------
# response: one rule broken at a time
# ---------------------------------------------------------------------------------------


def _drop(d: JSON, key: str) -> JSON:
    return {k: v for k, v in d.items() if k != key}


RESPONSE_VIOLATIONS: list[tuple[str, Callable[[], Any], str, str]] = [
    # --- schema: structure, required fields, enumerations, formats
    ("cards required", lambda: {}, "/", "'cards' is a required property"),
    ("cards is an array", lambda: {"cards": "none"}, "/cards", "is not of type 'array'"),
    ("card summary required", lambda: response_with(_drop(minimal_card(), "summary")), "/cards/0", "'summary' is a required property"),
    ("card indicator required", lambda: response_with(_drop(minimal_card(), "indicator")), "/cards/0", "'indicator' is a required property"),
    ("card source required", lambda: response_with(_drop(minimal_card(), "source")), "/cards/0", "'source' is a required property"),
    ("indicator enum (1.0-rc hard-stop)", lambda: response_with(minimal_card(indicator="hard-stop")),
     "/cards/0/indicator", "'hard-stop' is not one of ['info', 'warning', 'critical']"),
    ("summary < 140 characters", lambda: response_with(minimal_card(summary="x" * 140)),
     "/cards/0/summary", "summary must be shorter than 140 characters (it has 140)"),
    ("summary is a string", lambda: response_with(minimal_card(summary=42)), "/cards/0/summary", "is not of type 'string'"),
    ("source label required", lambda: response_with(minimal_card(source={"url": "https://example.org"})),
     "/cards/0/source", "'label' is a required property"),
    ("source url absolute", lambda: response_with(minimal_card(source={"label": "x", "url": "/guidelines"})),
     "/cards/0/source/url", "'/guidelines' is not an absolute URL"),
    ("source icon absolute", lambda: response_with(minimal_card(source={"label": "x", "icon": "img/icon.png"})),
     "/cards/0/source/icon", "'img/icon.png' is not an absolute URL"),
    ("topic coding needs system", lambda: response_with(minimal_card(source={"label": "x", "topic": {"code": "t"}})),
     "/cards/0/source/topic", "'system' is a required property"),
    ("topic coding needs code", lambda: response_with(minimal_card(source={"label": "x", "topic": {"system": "http://s"}})),
     "/cards/0/source/topic", "'code' is a required property"),
    ("selectionBehavior enum", lambda: response_with(card_with_suggestions(suggestion(), selection="all")),
     "/cards/0/selectionBehavior", "'all' is not one of ['at-most-one', 'any']"),
    ("suggestion label required", lambda: response_with(card_with_suggestions(_drop(suggestion(), "label"))),
     "/cards/0/suggestions/0", "'label' is a required property"),
    ("isRecommended is boolean", lambda: response_with(card_with_suggestions(suggestion(isRecommended="yes"))),
     "/cards/0/suggestions/0/isRecommended", "'yes' is not of type 'boolean'"),
    ("action type required", lambda: response_with_action({"description": "d", "resourceId": "Task/1"}),
     "/cards/0/suggestions/0/actions/0", "'type' is a required property"),
    ("action type enum", lambda: response_with_action({"type": "modify", "description": "d", "resourceId": "Task/1"}),
     "/cards/0/suggestions/0/actions/0/type", "'modify' is not one of ['create', 'update', 'delete']"),
    ("link label required", lambda: response_with_link({"url": "https://e.org", "type": "absolute"}),
     "/cards/0/links/0", "'label' is a required property"),
    ("link url required", lambda: response_with_link({"label": "l", "type": "absolute"}),
     "/cards/0/links/0", "'url' is a required property"),
    ("link type required", lambda: response_with_link({"label": "l", "url": "https://e.org"}),
     "/cards/0/links/0", "'type' is a required property"),
    ("link type enum", lambda: response_with_link({"label": "l", "url": "https://e.org", "type": "internal"}),
     "/cards/0/links/0/type", "'internal' is not one of ['absolute', 'smart']"),
    ("absolute link url is absolute", lambda: response_with_link({"label": "l", "url": "guidelines.html", "type": "absolute"}),
     "/cards/0/links/0/url", "'guidelines.html' is not an absolute URL"),
    ("autolaunchable is boolean", lambda: response_with_link({"label": "l", "url": "https://e.org", "type": "smart", "autolaunchable": 1}),
     "/cards/0/links/0/autolaunchable", "is not of type 'boolean'"),
    ("extension is an object", lambda: response_with(minimal_card(extension=["x"])), "/cards/0/extension", "is not of type 'object'"),
    ("cds-resp-7 actionSelectionBehavior enum", lambda: response_with(card_with_suggestions(suggestion(actionSelectionBehavior="some"))),
     "/cards/0/suggestions/0/actionSelectionBehavior", "cds-resp-7"),
    # --- JSON rules: no null, no empties (except cards: [] and inside extension)
    ("no null", lambda: response_with(minimal_card(detail=None)), "/cards/0/detail", "null is not allowed"),
    ("no null inside extension", lambda: response_with(minimal_card(extension={"org.example.x": None})),
     "/cards/0/extension/org.example.x", "null is not allowed"),
    ("no null deep inside a FHIR resource", lambda: response_with_action(
        {"type": "create", "description": "d", "resource": {"resourceType": "Task", "status": None}}),
     "/cards/0/suggestions/0/actions/0/resource/status", "null is not allowed"),
    ("no empty string", lambda: response_with(minimal_card(detail="")), "/cards/0/detail", "empty string is not allowed"),
    ("no empty array", lambda: response_with(minimal_card(links=[])), "/cards/0/links", "empty array is not allowed"),
    ("no empty object", lambda: response_with_action(
        {"type": "create", "description": "d", "resource": {"resourceType": "Task", "meta": {}}}),
     "/cards/0/suggestions/0/actions/0/resource/meta", "empty object is not allowed"),
    ("no empty extension object", lambda: response_with(minimal_card(), extension={}), "/extension", "empty object is not allowed"),
    ("no empty systemActions", lambda: response_with(minimal_card(), systemActions=[]), "/systemActions", "empty array is not allowed"),
    # --- this service: uuids
    ("card uuid required", lambda: response_with(_drop(minimal_card(), "uuid")), "/cards/0", "card has no uuid"),
    ("suggestion uuid required", lambda: response_with(card_with_suggestions(_drop(suggestion(), "uuid"))),
     "/cards/0/suggestions/0", "suggestion has no uuid"),
    ("card uuids unique", lambda: response_with(minimal_card(), minimal_card()),
     "/cards/1/uuid", f"duplicate uuid '{CARD_UUID}' (already used at /cards/0/uuid)"),
    ("suggestion uuids unique", lambda: response_with(card_with_suggestions(suggestion(), suggestion())),
     "/cards/0/suggestions/1/uuid", "duplicate uuid"),
    ("card and suggestion uuids unique", lambda: response_with(card_with_suggestions(suggestion(CARD_UUID))),
     "/cards/0/suggestions/0/uuid", "already used at /cards/0/uuid"),
    # --- invariants
    ("cds-resp-6 suggestions => selectionBehavior", lambda: response_with(minimal_card(suggestions=[suggestion()])),
     "/cards/0", "cds-resp-6"),
    ("selectionBehavior only with suggestions", lambda: response_with(minimal_card(selectionBehavior="any")),
     "/cards/0/selectionBehavior", "no suggestions"),
    ("cds-resp-1 at-most-one => <= 1 isRecommended", lambda: response_with(card_with_suggestions(
        suggestion(SUGG_UUIDS[0], isRecommended=True), suggestion(SUGG_UUIDS[1], isRecommended=True), selection="at-most-one")),
     "/cards/0/suggestions", "cds-resp-1"),
    ("cds-resp-4 overrideReasons need display", lambda: response_with(minimal_card(overrideReasons=[{"code": "c", "system": "http://s"}])),
     "/cards/0/overrideReasons/0", "cds-resp-4"),
    ("cds-resp-5 suggestion actions need description", lambda: response_with_action({"type": "delete", "resourceId": "Task/1"}),
     "/cards/0/suggestions/0/actions/0", "cds-resp-5"),
    ("cds-resp-2 delete uses resourceId", lambda: response_with_action({"type": "delete", "description": "d"}),
     "/cards/0/suggestions/0/actions/0", "cds-resp-2"),
    ("delete with a bare id string in resource is deprecated", lambda: response_with_action(
        {"type": "delete", "description": "d", "resourceId": "Task/1", "resource": "Task/1"}),
     "/cards/0/suggestions/0/actions/0/resource", "DEPRECATED"),
    ("resourceId is a relative reference", lambda: response_with_action({"type": "delete", "description": "d", "resourceId": "123"}),
     "/cards/0/suggestions/0/actions/0/resourceId", "relative reference"),
    ("create needs resource", lambda: response_with_action({"type": "create", "description": "d"}),
     "/cards/0/suggestions/0/actions/0", "create action must carry the full FHIR resource"),
    ("update resource needs resourceType", lambda: response_with_action({"type": "update", "description": "d", "resource": {"id": "rx-1"}}),
     "/cards/0/suggestions/0/actions/0/resource", "has no resourceType"),
    ("create resource is an object", lambda: response_with_action({"type": "create", "description": "d", "resource": "Task/1"}),
     "/cards/0/suggestions/0/actions/0/resource", "must be a FHIR resource object, not a string"),
    ("systemAction update needs resource", lambda: response_with(systemActions=[{"type": "update"}]),
     "/systemActions/0", "update action must carry the full FHIR resource"),
    ("systemAction delete uses resourceId", lambda: response_with(systemActions=[{"type": "delete"}]),
     "/systemActions/0", "cds-resp-2"),
    ("cds-resp-3 appContext only on smart links", lambda: response_with_link(
        {"label": "l", "url": "https://e.org", "type": "absolute", "appContext": "x"}),
     "/cards/0/links/0/appContext", "cds-resp-3"),
]


@pytest.mark.parametrize(("build", "path", "fragment"), [c[1:] for c in RESPONSE_VIOLATIONS], ids=[c[0] for c in RESPONSE_VIOLATIONS])
def test_response_violation_is_reported(build: Callable[[], Any], path: str, fragment: str) -> None:
    assert_only(check_response(build()), path, fragment)


def test_null_required_field_is_reported_once() -> None:
    problems = check_response(response_with(minimal_card(summary=None)))
    assert_only(problems, "/cards/0/summary", "null is not allowed")


def test_assert_conformant_response_lists_every_problem() -> None:
    body = response_with(_drop(minimal_card(indicator="hard-stop"), "uuid"))
    with pytest.raises(AssertionError) as excinfo:
        assert_conformant_response(body)
    message = str(excinfo.value)
    assert "2 conformance problem(s)" in message
    assert "/cards/0/indicator: 'hard-stop' is not one of" in message
    assert "/cards/0: card has no uuid" in message


def test_non_object_body_does_not_crash() -> None:
    assert_only(check_response([]), "/", "is not of type 'object'")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# response: property — mutations of a valid response are always reported
# ---------------------------------------------------------------------------------------


def _all_paths(node: Any, path: Path = ()) -> list[Path]:
    out: list[Path] = []
    items: list[tuple[str | int, Any]] = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    for key, value in items:
        out.append(path + (key,))
        out.extend(_all_paths(value, path + (key,)))
    return out


def _strictly_inside_extension(path: Path) -> bool:
    return "extension" in path[:-1]


def _required_paths(resp: JSON) -> list[Path]:
    """Fields whose removal makes FULL_RESPONSE non-conformant (spec or this service's rules)."""
    out: list[Path] = [("cards",)]

    def action(a: JSON, p: Path, in_suggestion: bool) -> None:
        out.append(p + ("type",))
        if in_suggestion:
            out.append(p + ("description",))
        if a["type"] in {"create", "update"}:
            out.extend([p + ("resource",), p + ("resource", "resourceType")])
        if a["type"] == "delete":
            out.append(p + ("resourceId",))

    for i, card in enumerate(resp["cards"]):
        cp: Path = ("cards", i)
        out.extend(cp + (k,) for k in ("uuid", "summary", "indicator", "source"))
        out.append(cp + ("source", "label"))
        if "topic" in card["source"]:
            out.extend([cp + ("source", "topic", "code"), cp + ("source", "topic", "system")])
        if card.get("suggestions"):
            out.append(cp + ("selectionBehavior",))
        for j, sugg in enumerate(card.get("suggestions", [])):
            sp = cp + ("suggestions", j)
            out.extend([sp + ("label",), sp + ("uuid",)])
            for k, act in enumerate(sugg.get("actions", [])):
                action(act, sp + ("actions", k), True)
        for j, _ in enumerate(card.get("overrideReasons", [])):
            out.extend(cp + ("overrideReasons", j, f) for f in ("code", "system", "display"))
        for j, _ in enumerate(card.get("links", [])):
            out.extend(cp + ("links", j, f) for f in ("label", "url", "type"))
    for i, act in enumerate(resp.get("systemActions", [])):
        action(act, ("systemActions", i), False)
    return out


ALL_PATHS = _all_paths(FULL_RESPONSE)
REQUIRED_PATHS = _required_paths(FULL_RESPONSE)
EMPTY_STRING_PATHS = [p for p in ALL_PATHS if not _strictly_inside_extension(p)]


def _mutate(body: JSON, kind: str, path: Path) -> JSON:
    mutated = copy.deepcopy(body)
    parent: Any = mutated
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if kind == "drop":
        del parent[last]
    elif kind == "null":
        parent[last] = None
    else:
        parent[last] = ""
    return mutated


def _assert_mutation_reported(kind: str, path: Path) -> None:
    problems = check_response(_mutate(FULL_RESPONSE, kind, path))
    assert problems, f"{kind} at {pointer(path)} was not reported"
    # The report points at the mutated element or at one of its ancestors.
    assert any(path[: len(problem_path(p))] == problem_path(p) for p in problems), (kind, path, problems)


def test_required_paths_oracle_matches_fixture() -> None:
    assert set(REQUIRED_PATHS) <= set(ALL_PATHS)
    assert len(REQUIRED_PATHS) > 40


MUTATIONS = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(REQUIRED_PATHS)),
    st.tuples(st.just("null"), st.sampled_from(ALL_PATHS)),
    st.tuples(st.just("empty-string"), st.sampled_from(EMPTY_STRING_PATHS)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MUTATIONS)
def test_property_mutations_of_a_valid_response_are_reported(mutation: tuple[str, Path]) -> None:
    _assert_mutation_reported(*mutation)


def test_every_single_mutation_of_the_full_response_is_reported() -> None:
    """Exhaustive companion of the property test (the fixture is small enough)."""
    for path in REQUIRED_PATHS:
        _assert_mutation_reported("drop", path)
    for path in ALL_PATHS:
        _assert_mutation_reported("null", path)
    for path in EMPTY_STRING_PATHS:
        _assert_mutation_reported("empty-string", path)


# ---------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------

VALID_DISCOVERY: JSON = {
    "services": [
        {
            "hook": "patient-view",
            "title": "Renal dosing",
            "description": "Checks renal dosing of active medications.",
            "id": "renal-dosing",
            "prefetch": {
                "patient": "Patient/{{context.patientId}}",
                "egfr": "Observation?patient={{context.patientId}}&code=http://loinc.org|62238-1&_sort=-date&_count=1",
                "user": "PractitionerRole?_id={{userPractitionerRoleId}}",
                "practitioner": "Practitioner/{{userPractitionerId}}",
                "me": "{{context.userId}}",
            },
            "usageRequirements": "Needs eGFR results.",
        },
        {
            "hook": "order-sign",
            "description": "Same rule pack, re-evaluated at signing.",
            "id": "renal-dosing",
            "prefetch": {"encounter": "Encounter/{{context.encounterId}}"},
        },
        {
            "hook": "org.example.patient-transmogrify",
            "description": "An organisation-specific hook with its own context field.",
            "id": "transmogrify",
            "prefetch": {"thing": "Basic?subject={{ context.thingId }}&author={{userPatientId}}|{{userRelatedPersonId}}"},
            "extension": {"org.example.owner": "team-a"},
        },
    ]
}


def service(**fields: Any) -> JSON:
    return {"hook": "patient-view", "description": "d", "id": "svc", **fields}


def test_discovery_valid_examples() -> None:
    assert check_discovery(VALID_DISCOVERY) == []
    assert check_discovery({"services": []}) == []


DISCOVERY_VIOLATIONS: list[tuple[str, Callable[[], Any], str, str]] = [
    ("services required", lambda: {}, "/", "'services' is a required property"),
    ("hook required", lambda: {"services": [_drop(service(), "hook")]}, "/services/0", "'hook' is a required property"),
    ("id required", lambda: {"services": [_drop(service(), "id")]}, "/services/0", "'id' is a required property"),
    ("description required", lambda: {"services": [_drop(service(), "description")]},
     "/services/0", "'description' is a required property"),
    ("id non-empty", lambda: {"services": [service(id="")]}, "/services/0/id", "empty string is not allowed"),
    ("id is a path segment", lambda: {"services": [service(id="renal/v2")]}, "/services/0/id", "single URL path segment"),
    ("(id, hook) unique", lambda: {"services": [service(), service(description="again")]},
     "/services/1", "duplicate service: id 'svc' is already registered for hook 'patient-view' at /services/0"),
    ("no null title", lambda: {"services": [service(title=None)]}, "/services/0/title", "null is not allowed"),
    ("no empty prefetch", lambda: {"services": [service(prefetch={})]}, "/services/0/prefetch", "empty object is not allowed"),
    ("prefetch template is a string", lambda: {"services": [service(prefetch={"p": {"url": "Patient/1"}})]},
     "/services/0/prefetch/p", "is not of type 'string'"),
    ("dotted context token", lambda: {"services": [service(hook="order-select", prefetch={"m": "Medication/{{context.medication.id}}"})]},
     "/services/0/prefetch/m", "{{context.medication.id}} is not valid in CDS Hooks 2.0"),
    ("FHIRPath token (3.0 only)", lambda: {"services": [service(hook="order-sign", prefetch={
        "m": "Medication?_id={{context.draftOrders.entry.resource.ofType(MedicationRequest).medication.resolve().id}}"})]},
     "/services/0/prefetch/m", "not valid in CDS Hooks 2.0"),
    ("CRD-style token", lambda: {"services": [service(hook="order-sign", prefetch={
        "m": "MedicationRequest?_id={{context.draftOrders.MedicationRequest.id}}"})]},
     "/services/0/prefetch/m", "not valid in CDS Hooks 2.0"),
    ("today() token (3.0 only)", lambda: {"services": [service(prefetch={"o": "Observation?date=gt{{today() - 90 days}}"})]},
     "/services/0/prefetch/o", "{{today() - 90 days}} is not valid in CDS Hooks 2.0"),
    ("unknown bare token", lambda: {"services": [service(prefetch={"u": "Practitioner/{{userId}}"})]},
     "/services/0/prefetch/u", "{{userId}} is not valid in CDS Hooks 2.0"),
    ("non-token context field of a standard hook", lambda: {"services": [service(hook="order-sign", prefetch={
        "d": "MedicationRequest?_id={{context.draftOrders}}"})]},
     "/services/0/prefetch/d", "context.draftOrders is not a prefetch-token field of hook 'order-sign'"),
    ("selections is not a token of order-select", lambda: {"services": [service(hook="order-select", prefetch={
        "s": "{{context.selections}}"})]},
     "/services/0/prefetch/s", "context.selections is not a prefetch-token field"),
    ("unbalanced braces", lambda: {"services": [service(prefetch={"p": "Patient/{{context.patientId"})]},
     "/services/0/prefetch/p", "unbalanced"),
]


@pytest.mark.parametrize(("build", "path", "fragment"), [c[1:] for c in DISCOVERY_VIOLATIONS], ids=[c[0] for c in DISCOVERY_VIOLATIONS])
def test_discovery_violation_is_reported(build: Callable[[], Any], path: str, fragment: str) -> None:
    assert_only(check_discovery(build()), path, fragment)


# ---------------------------------------------------------------------------------------
# request
# ---------------------------------------------------------------------------------------

SBX_PATIENT_VIEW: JSON = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "hook": "patient-view",
    "fhirServer": "http://localhost:8091",
    "context": {"patientId": "pt-1", "userId": "Practitioner/COREPRACTITIONER1"},
    "prefetch": {
        "patient": {
            "resourceType": "Patient",
            "id": "pt-1",
            "gender": "female",
            "birthDate": "1961-04-02",
            "name": [{"given": ["Ann"], "family": "Example"}],
        },
        "conds": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
    },
}

SBX_ORDER_SELECT: JSON = {
    "hookInstance": "0d1e3c41-3ac0-4c87-9e3c-8cda4bb8a9a7",
    "hook": "order-select",
    "fhirServer": "http://localhost:8091",
    "context": {
        "patientId": "pt-1",
        "userId": "Practitioner/COREPRACTITIONER1",
        "selections": ["MedicationRequest/request-123"],
        "draftOrders": {
            "resourceType": "Bundle",
            "entry": [
                {
                    "resource": {
                        "resourceType": "MedicationRequest",
                        "id": "request-123",
                        "status": "draft",
                        "subject": {"reference": "Patient/pt-1"},
                    }
                }
            ],
        },
    },
}

AUTHORIZED_REQUEST: JSON = {
    "hook": "order-sign",
    "hookInstance": "4a74b1d0-4fee-4d18-b76f-7f3bd361e4bc",
    "fhirServer": "https://ehr.example.org/fhir",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/Patient.read patient/Observation.read",
        "subject": "cds-service4",
        "patient": "1288992",
    },
    "context": {"userId": "PractitionerRole/123", "patientId": "1288992", "draftOrders": {"resourceType": "Bundle", "type": "collection"}},
    "prefetch": {"patient": None, "orders": {"resourceType": "Bundle", "type": "searchset", "total": 0}},
}


def test_request_valid_examples() -> None:
    assert check_request(SBX_PATIENT_VIEW) == []
    assert check_request(SBX_ORDER_SELECT) == []
    assert check_request(AUTHORIZED_REQUEST) == []
    user_scopes = copy.deepcopy(AUTHORIZED_REQUEST)
    user_scopes["fhirAuthorization"]["scope"] = "user/Patient.read user/Observation.read launch/patient"
    del user_scopes["fhirAuthorization"]["patient"]
    assert check_request(user_scopes) == []


def _request(**changes: Any) -> JSON:
    body = copy.deepcopy(AUTHORIZED_REQUEST)
    for key, value in changes.items():
        if value is _DELETE:
            del body[key]
        else:
            body[key] = value
    return body


def _auth(**changes: Any) -> JSON:
    auth = copy.deepcopy(AUTHORIZED_REQUEST["fhirAuthorization"])
    for key, value in changes.items():
        if value is _DELETE:
            del auth[key]
        else:
            auth[key] = value
    return _request(fhirAuthorization=auth)


REQUEST_VIOLATIONS: list[tuple[str, Callable[[], Any], str, str]] = [
    ("hook required", lambda: _request(hook=_DELETE), "/", "'hook' is a required property"),
    ("hookInstance required", lambda: _request(hookInstance=_DELETE), "/", "'hookInstance' is a required property"),
    ("context required", lambda: _request(context=_DELETE), "/", "'context' is a required property"),
    ("hookInstance is a UUID", lambda: _request(hookInstance="call-1"), "/hookInstance", "'call-1' is not a 'uuid'"),
    ("fhirServer is a URL", lambda: _request(fhirServer="ehr.example.org/fhir"), "/fhirServer", "is not an absolute URL"),
    ("context is an object", lambda: _request(context=["patientId"]), "/context", "is not of type 'object'"),
    ("no empty context", lambda: _request(context={}), "/context", "empty object is not allowed"),
    ("prefetch value is a resource or null", lambda: _request(prefetch={"p": "Patient/1"}), "/prefetch/p", "is not of type 'object', 'null'"),
    ("prefetch resource has resourceType", lambda: _request(prefetch={"p": {"id": "1"}}), "/prefetch/p", "'resourceType' is a required property"),
    ("no null fhirServer", lambda: _request(fhirServer=None), "/fhirServer", "null is not allowed"),
    ("expires_in is an integer", lambda: _auth(expires_in="300"), "/fhirAuthorization/expires_in", "is not of type 'integer'"),
    ("token_type is Bearer", lambda: _auth(token_type="bearer"), "/fhirAuthorization/token_type", "token_type must be 'Bearer'"),
    ("cds-r-1 fhirAuthorization => fhirServer", lambda: _request(fhirServer=_DELETE), "/", "cds-r-1"),
    ("cds-r-2 patient scopes => patient", lambda: _auth(patient=_DELETE), "/fhirAuthorization", "cds-r-2"),
]
REQUEST_VIOLATIONS += [
    (f"fhirAuthorization.{field} required", (lambda f=field: _auth(**{f: _DELETE})), "/fhirAuthorization",
     f"'{field}' is a required property")
    for field in ("access_token", "token_type", "expires_in", "scope", "subject")
]


@pytest.mark.parametrize(("build", "path", "fragment"), [c[1:] for c in REQUEST_VIOLATIONS], ids=[c[0] for c in REQUEST_VIOLATIONS])
def test_request_violation_is_reported(build: Callable[[], Any], path: str, fragment: str) -> None:
    assert_only(check_request(build()), path, fragment)


# ---------------------------------------------------------------------------------------
# feedback
# ---------------------------------------------------------------------------------------

SBX_ACCEPTED: JSON = {
    "feedback": [
        {
            "card": CARD_UUID,
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": SUGG_UUIDS[0]}],
            "outcomeTimestamp": "2026-11-25T20:39:15.843Z",
        }
    ]
}
SBX_OVERRIDDEN: JSON = {
    "feedback": [
        {
            "card": CARD_UUID,
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-25T20:40:02.117Z",
            "overrideReason": {"reason": {"code": "pt-refused", "system": "http://example.org/or"}},
        }
    ]
}


def _feedback(**fields: Any) -> JSON:
    item: JSON = {"card": CARD_UUID, "outcome": "overridden", "outcomeTimestamp": "2021-12-11T10:05:31Z"}
    for key, value in fields.items():
        if value is _DELETE:
            del item[key]
        else:
            item[key] = value
    return {"feedback": [item]}


def test_feedback_valid_examples() -> None:
    assert check_feedback(SBX_ACCEPTED) == []
    assert check_feedback(SBX_OVERRIDDEN) == []
    # override without any reason is valid; a userComment alone is enough
    assert check_feedback(_feedback()) == []
    assert check_feedback(_feedback(overrideReason={"userComment": "Discussed with the patient."})) == []
    assert check_feedback(_feedback(outcomeTimestamp="1996-12-19T16:39:57-08:00")) == []
    assert check_feedback({"feedback": SBX_ACCEPTED["feedback"] + SBX_OVERRIDDEN["feedback"]}) == []


FEEDBACK_VIOLATIONS: list[tuple[str, Callable[[], Any], str, str]] = [
    ("feedback required", lambda: {}, "/", "'feedback' is a required property"),
    ("feedback non-empty", lambda: {"feedback": []}, "/feedback", "empty array is not allowed"),
    ("card required", lambda: _feedback(card=_DELETE), "/feedback/0", "'card' is a required property"),
    ("outcome required", lambda: _feedback(outcome=_DELETE), "/feedback/0", "'outcome' is a required property"),
    ("outcomeTimestamp required", lambda: _feedback(outcomeTimestamp=_DELETE), "/feedback/0", "'outcomeTimestamp' is a required property"),
    ("cds-fb-1 outcome enum", lambda: _feedback(outcome="ignored"), "/feedback/0/outcome", "cds-fb-1"),
    ("cds-fb-2 accepted => acceptedSuggestions", lambda: _feedback(outcome="accepted"), "/feedback/0", "cds-fb-2"),
    ("acceptedSuggestion id required", lambda: _feedback(outcome="accepted", acceptedSuggestions=[{"uuid": SUGG_UUIDS[0]}]),
     "/feedback/0/acceptedSuggestions/0", "'id' is a required property"),
    ("cds-fb-3 overrideReason has reason or userComment", lambda: _feedback(overrideReason={"extension": {"org.example.x": 1}}),
     "/feedback/0/overrideReason", "cds-fb-3"),
    ("override reason Coding needs code", lambda: _feedback(overrideReason={"reason": {"system": "http://example.org/or"}}),
     "/feedback/0/overrideReason/reason", "'code' is a required property"),
    ("no null userComment", lambda: _feedback(overrideReason={"reason": {"code": "c", "system": "http://s"}, "userComment": None}),
     "/feedback/0/overrideReason/userComment", "null is not allowed"),
]
FEEDBACK_VIOLATIONS += [
    (f"outcomeTimestamp RFC 3339 ({value})", (lambda v=value: _feedback(outcomeTimestamp=v)), "/feedback/0/outcomeTimestamp",
     "is not an RFC 3339 date-time")
    for value in ("2021-12-11T10:05:31", "2021-12-11 10:05:31Z", "2021-13-11T10:05:31Z", "yesterday")
]


@pytest.mark.parametrize(("build", "path", "fragment"), [c[1:] for c in FEEDBACK_VIOLATIONS], ids=[c[0] for c in FEEDBACK_VIOLATIONS])
def test_feedback_violation_is_reported(build: Callable[[], Any], path: str, fragment: str) -> None:
    assert_only(check_feedback(build()), path, fragment)


def test_accepted_with_empty_acceptedsuggestions_reports_both_rules() -> None:
    problems = check_feedback(_feedback(outcome="accepted", acceptedSuggestions=[]))
    assert_reported(problems, "/feedback/0/acceptedSuggestions", "empty array is not allowed")
    assert_reported(problems, "/feedback/0", "cds-fb-2")


def test_empty_override_reason_reports_cds_fb_3() -> None:
    problems = check_feedback(_feedback(overrideReason={}))
    assert_reported(problems, "/feedback/0/overrideReason", "cds-fb-3")


def test_fixtures_are_json_serialisable() -> None:
    for body in (FULL_RESPONSE, VALID_DISCOVERY, SBX_PATIENT_VIEW, SBX_ORDER_SELECT, AUTHORIZED_REQUEST, SBX_ACCEPTED, SBX_OVERRIDDEN):
        assert json.loads(json.dumps(body)) == body
