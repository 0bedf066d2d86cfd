"""Prefetch template rendering and resource extraction (cds.context.prefetch), as units."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cds.context.prefetch import render_template, resources_of
from cds.hooks.services import USER_TOKENS

CTX: dict[str, Any] = {
    "userId": "Practitioner/123",
    "patientId": "pat-1",
    "encounterId": "enc.9",
    "draftOrders": {"resourceType": "Bundle", "entry": []},
    "selections": ["MedicationRequest/1"],
    "count": 5,
}


class TestRenderTemplate:
    def test_context_token(self) -> None:
        assert render_template("Patient/{{context.patientId}}", CTX) == "Patient/pat-1"

    def test_whitespace_inside_braces(self) -> None:
        assert render_template("Patient/{{ context.patientId }}", CTX) == "Patient/pat-1"

    def test_several_tokens(self) -> None:
        t = "Encounter?patient={{context.patientId}}&_id={{context.encounterId}}&_count={{context.count}}"
        assert render_template(t, CTX) == "Encounter?patient=pat-1&_id=enc.9&_count=5"

    def test_no_tokens(self) -> None:
        assert render_template("Medication?code=123", CTX) == "Medication?code=123"
        assert render_template("", CTX) == ""

    def test_user_practitioner(self) -> None:
        assert render_template("Practitioner/{{userPractitionerId}}", CTX) == "Practitioner/123"

    def test_user_patient(self) -> None:
        ctx = {**CTX, "userId": "Patient/abc"}
        assert render_template("Patient/{{userPatientId}}", ctx) == "Patient/abc"
        assert render_template("Practitioner/{{userPractitionerId}}", ctx) is None  # the user is not a practitioner

    @pytest.mark.parametrize(
        "user,token,out",
        [
            ("PractitionerRole/r1", "userPractitionerRoleId", "r1"),
            ("RelatedPerson/rp-2", "userRelatedPersonId", "rp-2"),
            ("PractitionerRole/r1", "userPractitionerId", None),
            ("Practitioner/123", "userPatientId", None),
        ],
    )
    def test_user_kinds(self, user: str, token: str, out: str | None) -> None:
        assert render_template("{{%s}}" % token, {**CTX, "userId": user}) == out

    @pytest.mark.parametrize("token", USER_TOKENS)
    def test_user_token_without_user(self, token: str) -> None:
        assert render_template("X/{{%s}}" % token, {"patientId": "p"}) is None

    @pytest.mark.parametrize(
        "template",
        [
            "Bundle/{{context.draftOrders}}",  # object-valued context field
            "X?ids={{context.selections}}",  # array-valued context field
            "Patient/{{context.missing}}",  # no such field
            "Patient/{{patientId}}",  # not a 2.0 token (missing "context.")
            "Patient/{{context.patientId}}/{{nonsense}}",  # one bad token fails the whole template
            "Patient/{{}}",
        ],
    )
    def test_unresolved_is_none(self, template: str) -> None:
        assert render_template(template, CTX) is None

    def test_null_context_value_is_unresolved(self) -> None:
        assert render_template("Encounter/{{context.encounterId}}", {**CTX, "encounterId": None}) is None

    def test_empty_context(self) -> None:
        assert render_template("Patient/{{context.patientId}}", {}) is None
        assert render_template("Patient", {}) == "Patient"


class TestResourcesOf:
    def test_bundle(self) -> None:
        a = {"resourceType": "Observation", "id": "a"}
        b = {"resourceType": "Condition", "id": "b"}
        bundle = {
            "resourceType": "Bundle",
            "entry": [
                {"resource": a},
                {"fullUrl": "urn:uuid:1"},  # no resource
                {"resource": {"id": "no-type"}},
                {"resource": {"resourceType": 7}},
                {"resource": "Observation/a"},
                None,
                "garbage",
                {"resource": b},
            ],
        }
        assert resources_of(bundle) == [a, b]

    def test_empty_bundles(self) -> None:
        assert resources_of({"resourceType": "Bundle"}) == []
        assert resources_of({"resourceType": "Bundle", "entry": None}) == []
        assert resources_of({"resourceType": "Bundle", "entry": []}) == []

    def test_single_resource(self) -> None:
        p = {"resourceType": "Patient", "id": "p1"}
        assert resources_of(p) == [p]

    def test_not_found_marker(self) -> None:
        assert resources_of({"resourceType": "_NotFound"}) == []

    @pytest.mark.parametrize("value", [None, "Patient/1", 5, 1.5, True, [], [{"resourceType": "Patient"}], {}, {"id": "x"}, {"resourceType": None}, {"resourceType": 3}])
    def test_garbage(self, value: Any) -> None:
        assert resources_of(value) == []

    @pytest.mark.parametrize("entry", [5, 1.5, True])
    def test_bundle_with_non_list_entry(self, entry: Any) -> None:
        assert resources_of({"resourceType": "Bundle", "entry": entry}) == []


# --------------------------------------------------------------------------- properties

CONTEXT_FIELDS = ["patientId", "encounterId", "userId", "draftOrders", "selections", "appointments", "x"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10))
json_value = st.one_of(json_leaf, st.lists(json_leaf, max_size=2), st.dictionaries(st.sampled_from(["a", "resourceType"]), json_leaf, max_size=2))
user_id = st.one_of(
    st.builds(lambda k, i: f"{k}/{i}", st.sampled_from(["Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Device", ""]), st.text(max_size=8)),
    st.text(max_size=12),
)
contexts = st.builds(
    lambda d, u: {**d, **({"userId": u} if u is not None else {})},
    st.dictionaries(st.sampled_from([f for f in CONTEXT_FIELDS if f != "userId"]), json_value, max_size=5),
    st.one_of(st.none(), user_id),
)
token_names = st.one_of(
    st.sampled_from([*USER_TOKENS, *(f"context.{f}" for f in CONTEXT_FIELDS)]),
    st.text(max_size=12),
)
pieces = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["{", "}", "{{", "}}", "{{ ", " }}", "/", "?", "&"]),
    st.builds(lambda t: "{{" + t + "}}", token_names),
)
templates = st.builds("".join, st.lists(pieces, max_size=8))

# brace-free literal text and well-formed tokens only: what services.yaml should contain
literal = st.text(alphabet="abcXYZ019/?&=_.-", max_size=8)
good_token = st.sampled_from([*USER_TOKENS, *(f"context.{f}" for f in CONTEXT_FIELDS)]).map(lambda t: "{{" + t + "}}")
good_templates = st.builds("".join, st.lists(st.one_of(literal, good_token), max_size=6))


@settings(max_examples=200, deadline=None)
@given(templates, contexts)
def test_render_template_never_raises(template: str, context: dict[str, Any]) -> None:
    out = render_template(template, context)
    assert out is None or isinstance(out, str)


@settings(max_examples=200, deadline=None)
@given(good_templates, contexts)
def test_well_formed_template_renders_completely_or_not_at_all(template: str, context: dict[str, Any]) -> None:
    out = render_template(template, context)
    if out is not None:
        assert "{{" not in out or any("{{" in str(v) for v in context.values())
        # every token was replaced by a primitive value of the context
        for tok in ("{{context.patientId}}", "{{context.encounterId}}"):
            if tok in template:
                assert str(context[tok[10:-2]]) in out


@settings(max_examples=200, deadline=None)
@given(templates, contexts)
@example("Patient/{{context.patientId", {"patientId": "p1"})
@example("Observation?patient={{ context.patientId }}&code={{x}y}}", {"patientId": "p1"})
def test_render_template_never_leaves_braces(template: str, context: dict[str, Any]) -> None:
    out = render_template(template, context)
    if out is not None:
        assert "{{" not in out or any("{{" in str(v) for v in context.values())
