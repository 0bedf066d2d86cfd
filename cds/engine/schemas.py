"""JSON Schemas of the authoring formats, for editors: completion, hover help and red squiggles.

The schemas are generated from the same pydantic models the loader validates with
(:mod:`cds.engine.pack`, :mod:`cds.engine.knowledge`, :mod:`cds.hooks.services`,
:mod:`cds.testing.cases`) and then given what a model's ``model_validator`` checks but
``model_json_schema()`` cannot see: shape rules (a table join needs ``for_each``, a delete
action needs ``resource_id``, …), the ``hook:``/string-prefetch shorthands of service files, the
JSON Logic operators and engine functions, and the terse test patient (which the test runner
reads from plain dicts, see :mod:`cds.testing.fixtures`).

The schemas help an editor; ``cds packs validate`` stays the authority. Where a schema is
stricter than the loader it flags something the engine would silently ignore (an unknown key in
a terse test patient, in an update ``patch``) or that goes wrong only when a card is rendered (an
``app_context`` on a non-SMART link fails; a suggestion whose resource has no ``resourceType`` is
dropped).

Regenerate the committed copies with ``python -m cds.engine.schemas`` (writes ``docs/schemas/``);
``tests/test_editor_schemas.py`` fails when they are out of date. See docs/authoring.md
("Editor support") for the VS Code set-up.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from cds.context.dosage import TIMING_CODES
from cds.engine.functions import FUNCTIONS
from cds.engine.knowledge import TableMeta
from cds.engine.loader import SEVERITIES
from cds.engine.pack import CardsFile, Manifest, RulesFile
from cds.hooks.models import HOOKS
from cds.hooks.services import TOKEN_FIELDS, USER_TOKENS, ServiceDefinition
from cds.testing.cases import CaseDef, TestFile
from cds.testing.fixtures import ROUTES

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_URI = "https://cdsrules.org/schemas/"

#: Which files each schema is for (globs relative to the repository root), for editor settings.
EDITOR_GLOBS: dict[str, list[str]] = {
    "pack.schema.json": ["rules/**/pack.yaml"],
    "rules.schema.json": ["rules/**/rules.yaml"],
    "cards.schema.json": ["rules/**/cards.yaml"],
    "tests.schema.json": ["rules/**/tests/*.yaml"],
    "knowledge-meta.schema.json": ["knowledge/**/*.meta.yaml"],
    "service.schema.json": ["hooks/*.yaml"],
}


def vscode_settings(schema_dir: str = "docs/schemas") -> dict[str, Any]:
    """The ``yaml.schemas`` setting (VS Code, Red Hat YAML extension) for this repository."""
    return {"yaml.schemas": {f"./{schema_dir}/{name}": globs for name, globs in EDITOR_GLOBS.items()}}


# ---------------------------------------------------------------------------------------------
# Schema-only models for the terse test patient. The test runner reads these keys from plain
# dicts (cds/testing/fixtures.py); the models exist only to describe them to an editor.
# ---------------------------------------------------------------------------------------------


class _T(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_WHEN = "ISO date/date-time, or relative to the case's `now`: -2h, -3d, -1w, -6mo, -5y (also +, min, wk)"
_ID = str | int


class DoseQuantity(_T):
    """A single dose: {value: 400, unit: mg}."""

    value: float
    unit: str


class DoseRange(_T):
    """A dose range: {low: 5, high: 10, unit: mg} (the engine checks the high end)."""

    low: float
    high: float
    unit: str


class TerseMedication(_T):
    """A medication (in patient.medications: active; in orders: a draft order)."""

    id: _ID = Field(default=None, description="Resource id (default med-1, med-2 … / draft-1, draft-2 …); cards and expectations refer to it")
    atc: str = Field(default=None, description="ATC code, e.g. M01AE01")
    rxnorm: _ID = Field(default=None, description="RxNorm code (ingredient or product), e.g. \"197806\"")
    text: str = Field(default=None, description="Medication text as the EHR shows it; also used to recognise uncoded medications by name")
    resourceType: Literal["MedicationRequest", "MedicationStatement"] = Field(
        default="MedicationRequest", description="MedicationStatement doses are not read by the engine (only MedicationRequest.dosageInstruction)"
    )
    status: str = Field(default=None, description="FHIR status (default active for medications, draft for orders); stopped/completed/… medications are not active")
    intent: str = Field(default=None, description="MedicationRequest.intent (default order)")
    authored: str = Field(default=None, description=f"authoredOn: {_WHEN} (default -0d)")
    dose: str | DoseQuantity | DoseRange = Field(default=None, description="'400 mg', '0.4 g', '5-10 mg', or {value, unit} / {low, high, unit}")
    frequency: str | dict[str, Any] = Field(default=None, description="'3/d', '1/8h', '2/12h', '1/wk', or a raw FHIR Timing.repeat object")
    timing_code: str = Field(default=None, description="HL7 timing abbreviation instead of frequency: " + ", ".join(TIMING_CODES))
    route: str = Field(default=None, description="Route keyword (coded as SNOMED CT): " + ", ".join(ROUTES) + "; any other text becomes route.text")
    as_needed: bool = Field(default=None, description="PRN (asNeededBoolean)")
    max_per_day: str = Field(default=None, pattern=r"^\s*[\d.]+\s*\S+\s*$", description="Maximum per day, e.g. '1200 mg' (maxDosePerPeriod per 1 d)")
    dosage: dict[str, Any] = Field(default=None, description="A raw FHIR Dosage object instead of dose/frequency/route (for unusual shapes)")


class TerseCondition(_T):
    """A condition: at least one of icd10, icpc2, snomed."""

    icd10: _ID = Field(default=None, description="ICD-10 code, e.g. E11.9")
    icpc2: _ID = Field(default=None, description="ICPC-2 code, e.g. T90")
    snomed: _ID = Field(default=None, description="SNOMED CT concept id")
    id: _ID = Field(default=None, description="Resource id (default cond-1, cond-2 …)")
    text: str = Field(default=None, description="Condition text")
    status: Literal["active", "recurrence", "relapse", "inactive", "remission", "resolved"] = Field(
        default="active", description="Clinical status; only active, recurrence and relapse reach the rules"
    )
    verification: Literal["unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"] = Field(
        default="confirmed", description="Verification status; refuted and entered-in-error conditions are ignored"
    )
    onset: str = Field(default=None, description=f"onsetDateTime: {_WHEN}")
    abatement: str = Field(default=None, description=f"abatementDateTime (when it ended): {_WHEN}")


class TerseEpisode(_T):
    """An episode of care (EpisodeOfCare), e.g. a cancer patient pathway (pakkeforløp)."""

    system: str = Field(description="Code system of the episode type")
    code: _ID = Field(description="Episode type code")
    display: str = Field(default=None, description="Display text of the code")
    id: _ID = Field(default=None, description="Resource id (default episode-1, episode-2 …)")
    status: Literal["planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"] = Field(
        default="active", description="EpisodeOfCare.status; entered-in-error episodes are ignored"
    )
    start: str = Field(default=None, description=f"period.start: {_WHEN} (default -1d)")
    end: str = Field(default=None, description=f"period.end: {_WHEN}")


class TerseProcedure(_T):
    """A procedure (Procedure)."""

    system: str = Field(description="Code system of the procedure code")
    code: _ID = Field(description="Procedure code")
    id: _ID = Field(default=None, description="Resource id (default procedure-1, procedure-2 …)")
    status: Literal["preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error", "unknown"] = Field(
        default="completed", description="Procedure.status; not-done and entered-in-error procedures are ignored"
    )
    at: str = Field(default=None, description=f"performedDateTime: {_WHEN} (default -1d)")


class TerseObservation(_T):
    """An observation (lab value, vital sign) coded with LOINC, SNOMED CT or both."""

    loinc: _ID = Field(default=None, description="LOINC code, e.g. 2160-0 (creatinine); rules read it as obs.<code>")
    code: _ID = Field(default=None, description="Same as loinc")
    snomed: _ID = Field(
        default=None,
        description="SNOMED CT observable (as Norwegian VKP profiles send it), alone or beside loinc; rules see it under the LOINC key codes/observation-codes maps it to",
    )
    id: _ID = Field(default=None, description="Resource id (default obs-1, obs-2 …)")
    status: Literal["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"] = Field(
        default="final", description="registered, cancelled and entered-in-error observations are ignored"
    )
    display: str = Field(default=None, description="Display text of the code")
    at: str = Field(default=None, description=f"effectiveDateTime: {_WHEN} (default -1h); results after `now` are ignored")
    value: float | str | bool = Field(default=None, description="A number (valueQuantity), a code (valueCodeableConcept) or true/false")
    unit: str = Field(default=None, description="UCUM unit of a numeric value (default '1')")
    value_system: str = Field(default=None, description="Code system of a coded value (default SNOMED CT)")


class WeightKg(_T):
    kg: float
    date: str = Field(default=None, description=f"When it was measured: {_WHEN} (default -1d)")
    at: str = Field(default=None, description="Same as date")


class WeightQuantity(_T):
    value: float
    unit: str = Field(description="UCUM unit: kg, g, [lb_av] …")
    date: str = Field(default=None, description=f"When it was measured: {_WHEN} (default -1d)")
    at: str = Field(default=None, description="Same as date")


class HeightCm(_T):
    cm: float
    date: str = Field(default=None, description=f"When it was measured: {_WHEN} (default -1d)")


class FhirResource(BaseModel):
    """Any FHIR R4 resource, as JSON."""

    model_config = ConfigDict(extra="allow")
    resourceType: str


class TersePatient(_T):
    """The patient, written tersely; the runner turns it into the FHIR resources an EHR would send."""

    id: _ID = Field(default=None, description="Patient id (default test-patient)")
    patient_resource: bool = Field(default=True, description="false: send no Patient resource at all (tests the 'no Patient' data gap)")
    birthDate: str = Field(default=None, description="Date of birth, e.g. 2020-03-01")
    age: str = Field(
        default=None, pattern=r"^-?\d+(?:\.\d+)?\s*(?:min|h|d|w|wk|mo|y)$", description="Age instead of birthDate: 5y, 18mo, 3w, 10d"
    )
    sex: Literal["male", "female", "other", "unknown"] = Field(default=None, description="Administrative gender (Patient.gender)")
    gender: Literal["male", "female", "other", "unknown"] = Field(default=None, description="Same as sex")
    weight: float | WeightKg | WeightQuantity = Field(default=None, description="Body weight (LOINC 29463-7): 20 (kg), {kg: 20, date: -2d} or {value: 44, unit: '[lb_av]'}")
    height: float | HeightCm = Field(default=None, description="Body height (LOINC 8302-2): 110 (cm) or {cm: 110, date: -30d}")
    gestationalAgeWeeks: float = Field(default=None, description="Gestational age at birth in weeks (LOINC 76516-4)")
    medications: list[TerseMedication] = Field(default=None, description="Active medications")
    conditions: list[TerseCondition] = Field(default=None, description="Conditions (problem list), current and past")
    observations: list[TerseObservation] = Field(default=None, description="Observations (LOINC)")
    episodes: list[TerseEpisode] = Field(default=None, description="Episodes of care")
    procedures: list[TerseProcedure] = Field(default=None, description="Procedures")
    resources: list[FhirResource] = Field(default=None, description="Extra FHIR resources, as JSON, sent unchanged")
    fixture_file: str = Field(default=None, description="A FHIR resource or Bundle (JSON) to add, relative to the test file's folder")


class TerseEncounter(_T):
    """The encounter (sent as an Encounter resource and as context.encounterId)."""

    id: _ID = Field(default=None, description="Encounter id (default enc-1)")
    status: str = Field(default=None, description="FHIR Encounter.status (default in-progress)")
    class_: str = Field(default=None, alias="class", description="v3 ActCode: IMP, AMB, EMER … (default IMP)")
    start: str = Field(default=None, description=f"period.start: {_WHEN}")


class PackTestCase(CaseDef):
    """One test case: a patient, a hook call at a moment, and the cards expected."""

    patient: TersePatient = Field(default=None, description="The patient (merged over the fixtures named in `use`)")
    orders: list[TerseMedication] = Field(default=None, description="Draft orders (order-select / order-sign)")
    encounter: TerseEncounter = Field(default=None, description="An encounter for the call")


def _fixture_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, f in PackTestCase.model_fields.items():
        if name in ("name", "use", "matrix"):
            continue  # a fixture names nothing, uses no other fixture and has no matrix
        fields[name] = (f.annotation, Field(default=None, description=f.description))
    return create_model(
        "PackTestFixture",
        __config__=ConfigDict(extra="forbid", title="PackTestFixture"),
        __doc__="Shared case parts; a case's own values win, lists replace, `key+` appends.",
        **fields,
    )


PackTestFixture = _fixture_model()


class PackTestFile(TestFile):
    """A pack test file: defaults for its cases, named fixtures, and the cases."""

    fixtures: dict[str, PackTestFixture] = {}  # type: ignore[valid-type]
    cases: list[PackTestCase] = Field(min_length=1)


# ---------------------------------------------------------------------------------------------
# Descriptions for hover help. Field docstrings in the model classes are used too; the texts
# here win. A name here that the schema does not have is an error (keeps this table honest).
# ---------------------------------------------------------------------------------------------

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "Manifest": {
        "id": "Pack id: lower case letters, digits, - _ . (e.g. interactions.onc). The same id in several folders = several versions.",
        "version": "Semantic version MAJOR.MINOR.PATCH (optionally -pre). Released content never changes: new content, new version.",
        "status": "draft (evaluated only by services with allow_draft and by `cds test`), active, or retired (never evaluated).",
        "effective": "Dates the version may be used: from (inclusive) … to (exclusive), compared with the date of the call.",
        "title": "Pack title (nb and en).",
        "description": "What the pack checks and for whom (nb and en).",
        "authors": "Who wrote and who reviewed the pack (at least one).",
        "references": "Literature the rules cite; a rule's `references` must name ids from this list.",
        "knowledge": "Knowledge tables the rules use, each pinned to a release and the SHA-256 of its CSV (`sha256sum file.csv`).",
        "override_reason_system": "Code system of the override reasons on cards (unless a reason has its own system).",
        "override_reasons": "Reasons a clinician may give for overriding a card; cards list them by code.",
        "min_coverage": "Minimum rule and knowledge-row coverage in percent; `cds test` fails below it.",
        "rules": "Rule files, relative to the pack folder (default rules.yaml).",
        "cards": "The card template file, relative to the pack folder (default cards.yaml).",
        "tests": "Test files (glob patterns), relative to the pack folder (default tests/*.yaml).",
    },
    "Effective": {
        "": "Effective period. The service uses the highest matching version that is active and effective on the day of the call.",
        "from": "First day the version may be used (inclusive), e.g. 2026-01-01.",
        "to": "First day the version may no longer be used (exclusive). Leave out for open-ended.",
    },
    "I18n": {"": "Text in Norwegian bokmål (nb) and English (en); both are required.", "nb": "Norsk bokmål", "en": "English"},
    "KnowledgeRef": {
        "table": "Table id = its path under knowledge/ without .csv, e.g. demo/interaction-pairs.",
        "release": "Must equal `release` in the table's .meta.yaml.",
        "sha256": "SHA-256 of the CSV file, lower-case hex (run `sha256sum knowledge/<id>.csv`). Quote it in YAML.",
    },
    "Reference": {"id": "Short id rules refer to, e.g. onc-2012.", "citation": "Full citation.", "url": "Link to the source."},
    "OverrideReasonDef": {
        "code": "Code cards use in override_reasons, e.g. will-monitor.",
        "display": "Text shown to the clinician (nb and en).",
        "system": "Code system, if not the pack's override_reason_system.",
    },
    "RulesFile": {"rules": "The rules of this file; ids are unique across the pack's rule files."},
    "RuleDef": {
        "": "A rule: for which hooks, over what (plain, for_each [+ table], or pair), when it fires, how severe, which card.",
        "id": "Rule id, unique in the pack (lower case, digits, - _ .). Shown in card provenance.",
        "title": "What the rule checks (nb and en).",
        "description": "Longer explanation for reviewers (nb and en).",
        "hooks": "Hooks the rule runs for.",
        "for_each": "Evaluate once per item of this collection; the item is `item`. meds.focus = the medications the hook is about; conditions = active ones, past_conditions = resolved/inactive ones; episodes = episodes of care.",
        "table": "Join each item with the knowledge-table rows that match its codes; the row is `row`.",
        "pair": "Interaction shape: a focus medication and another medication matching the two columns of one row (`a`, `b`, `row`).",
        "let": "Named intermediate values (JSON Logic), computed in order; read them as let.<name>.",
        "when": "JSON Logic condition; the rule fires when it is true (default true).",
        "severity": "info | warning | critical | none, or JSON Logic giving one (none = no card).",
        "card": "Id of the card template in the pack's cards file.",
        "references": "Ids from pack.yaml references.",
    },
    "TableJoin": {
        "table": "A table declared in pack.yaml knowledge.",
        "column": "The column holding the codes to match (a code, or a ';'-separated list column).",
    },
    "PairMatch": {
        "table": "A table declared in pack.yaml knowledge.",
        "key": "Match ATC codes (hierarchy-aware) or RxNorm ingredient codes.",
        "symmetric": "true: a focus medication may match either column; false: only column `a`.",
    },
    "CardsFile": {"cards": "Card templates by id; rules name them in `card`."},
    "CardTpl": {
        "": "A card template. Placeholders {{ path }} or {{ path | filter }}; filters round0-3, date, lower, upper.",
        "summary": "One line, under 140 characters in the worst case (validation estimates it).",
        "detail": "Markdown detail (nb and en).",
        "source": "Who says so: label (and url) of the source of the advice.",
        "override_reasons": "Codes from pack.yaml override_reasons, in the order shown.",
        "selection_behavior": "at-most-one (default) or any: how many suggestions may be accepted.",
        "suggestions": "Proposed changes; each with actions the EHR can apply.",
        "links": "Links shown on the card.",
    },
    "SourceTpl": {
        "label": "Source label: one text, or nb/en.",
        "url": "Link to the source (placeholders allowed, e.g. {{ row.source_url }}).",
        "icon": "Absolute URL of an icon (100x100 PNG).",
    },
    "SuggestionTpl": {
        "id": "Suggestion id, unique in the card.",
        "label": "Suggestion text (nb and en).",
        "when": "JSON Logic: offer the suggestion only when true (same data as the rule).",
        "recommended": "Mark as the recommended suggestion.",
        "actions": "What to do: delete, create or update a resource.",
    },
    "ActionTpl": {
        "": "delete needs resource_id; create needs resource; update needs resource or patch.",
        "type": "delete | create | update",
        "description": "What the action does (nb and en).",
        "resource_id": "For delete: the resource, e.g. '{{ item.ref }}'.",
        "resource": "For create (or update): the FHIR resource, as a template. A string that is exactly one placeholder keeps the value's type.",
    },
    "LinkTpl": {
        "label": "Link text (nb and en).",
        "url": "Link URL (placeholders allowed).",
        "type": "absolute (default) or smart (a SMART app launch).",
        "app_context": "Only for smart links: appContext passed to the app.",
    },
    "TableMeta": {
        "": "Describes a knowledge table (the .csv next to it): id, release and the type of every column.",
        "id": "Must equal the path under knowledge/ without extension, e.g. demo/interaction-pairs.",
        "title": "What the table holds.",
        "release": "Release label of the content, e.g. 2026.11.0. Packs pin it.",
        "publisher": "Who maintains the table.",
        "description": "Scope, selection criteria, caveats.",
        "columns": "Every CSV column, by header name. A required `source` column is mandatory.",
        "key": "Column identifying a row in `cds packs diff` (default: id).",
    },
    "Column": {
        "type": "text | code | atc | atc_list (';'-separated ATC codes, each checked) | int | decimal | bool | enum | date | list (';'-separated).",
        "required": "An empty cell is an error.",
        "unique": "A value may occur only once in the column.",
        "values": "For enum: the allowed values (exact, case-sensitive).",
        "description": "What the column means, units.",
    },
    "ServiceDefinition": {
        "": "A CDS service: id, hooks, prefetch, and the rule packs it evaluates.",
        "id": "Service id (in the URL /cds-services/<id>): lower case letters, digits, - _ . (max 64).",
        "hooks": "Hooks the service answers (the same id may serve several hooks).",
        "title": "Human-friendly name (discovery).",
        "description": "What the service does (discovery).",
        "usageRequirements": "What the EHR must send or configure (discovery).",
        "locale": "Card language (nb or en) unless the request or client says otherwise.",
        "prefetch": "Prefetch templates by key: a string, or {template, required}. Tokens: {{context.patientId}}, {{context.userId}}, {{context.encounterId}}, {{userPractitionerId}} …",
        "packs": "Rule packs to evaluate, each pinned to a version or a range.",
    },
    "PrefetchSpec": {"template": "FHIR query with prefetch tokens, e.g. Patient/{{context.patientId}}."},
    "PackPin": {"id": "Pack id.", "allow_draft": "Also evaluate draft versions (test environments)."},
    "PackTestFile": {
        "hook": "Default hook for the cases.",
        "now": "Default moment of the call (pin it: tests must not depend on today's date).",
        "locale": "Card language the cases check (default en).",
        "fixtures": "Named, reusable case parts; a case names them in `use`.",
        "cases": "The cases.",
    },
    "PackTestCase": {
        "name": "What the case shows (unique in the file).",
        "hook": "Hook called (overrides the file's).",
        "now": "Moment of the call (overrides the file's).",
        "locale": "Card language (overrides the file's).",
        "use": "Fixture name(s) merged under this case, in order.",
        "selections": "order-select: ids of the selected orders (default: all).",
        "matrix": "Variants: {var: [v1, v2, …]}; every combination is a case, ${var} is replaced in the case.",
        "expect": "What the response must contain.",
        "tags": "Free labels (not used by the runner yet).",
    },
    "PackTestFixture": {
        "hook": "Hook called.",
        "now": "Moment of the call.",
        "locale": "Card language.",
        "selections": "order-select: ids of the selected orders (default: all).",
        "expect": "Expectations shared by the cases (merged key by key).",
        "tags": "Free labels (not used by the runner yet).",
    },
    "Expect": {
        "cards": "Expected cards, matched by rule; each listed card must be there.",
        "unidentified": "Ids of the medications reported as not identified (exactly these).",
        "data_gaps_contain": "Each text must occur in one of the response's data gaps.",
        "rule_errors": "Allow run-time rule errors (otherwise they fail the case).",
    },
    "CardExpect": {
        "rule": "Id of the rule the card comes from.",
        "indicator": "info | warning | critical",
        "pack_version": "Version of the pack that made the card.",
        "summary": "The exact summary.",
        "summary_matches": "A regular expression the summary must match (search).",
        "detail_contains": "Text(s) the detail must contain.",
        "subjects": "Ids of the medications the card is about (order does not matter).",
        "source_label": "The exact source label.",
        "suggestions": "The suggestions, in order (checks their number too).",
        "override_reasons": "The override reason codes, in order.",
        "links": "The link URLs, in order.",
    },
    "SuggestionExpect": {
        "label": "The exact label.",
        "label_contains": "Text the label must contain.",
        "recommended": "Whether it is marked recommended.",
        "actions": "The actions, in order.",
    },
    "ActionExpect": {
        "type": "create | update | delete",
        "resourceId": "For delete: the resource id (a bare id means MedicationRequest/<id>).",
    },
}

JSON_LOGIC_OPERATORS: dict[str, str] = {
    "var": "Read a fact: {var: item.dose.mg}. [path, default]: the default is used only when the path does not exist, not when the value is null (use ??).",
    "==": "Equal (loose: 0 == null and \"\" == null are true). [a, b]",
    "!=": "Not equal (loose). [a, b]",
    "===": "Strictly equal (no type conversion). [a, b]",
    "!==": "Strictly not equal. [a, b]",
    "<": "Less than: [a, b], or between: [low, x, high]. null counts as 0: check presence first.",
    "<=": "Less than or equal: [a, b] or [low, x, high]. null counts as 0.",
    ">": "Greater than. [a, b]. null counts as 0.",
    ">=": "Greater than or equal. [a, b]. null counts as 0.",
    "and": "All true (stops at the first false). [c1, c2, …]",
    "or": "Any true (stops at the first true). [c1, c2, …]",
    "!": "Not: true for false, null, 0, \"\" and []. {\"!\": {var: patient.weight}}",
    "!!": "Truthy: false for false, null, 0, \"\" and []. [x]",
    "if": "[cond1, then1, cond2, then2, …, else]",
    "in": "[x, list]: x is an element of the list (exact); [s, text]: s occurs in the text.",
    "some": "[list, condition]: true if the condition holds for some element ({var: ''} is the element).",
    "all": "[list, condition]: true if it holds for every element (false for an empty list).",
    "none": "[list, condition]: true if it holds for no element.",
    "min": "Smallest of the numbers (an error if one is null).",
    "max": "Largest of the numbers (an error if one is null).",
    "+": "Sum (null counts as 0).",
    "-": "Difference [a, b] (null counts as 0).",
    "*": "Product (null counts as 0).",
    "/": "Quotient [a, b]. Dividing by 0 is a run-time error and by null gives nonsense: use ratio.",
    "??": "First value that is not null: [x, default] (0 and \"\" are kept).",
    "cat": "Join texts: [t1, t2, …].",
}


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def _auto_title(name: str) -> str:
    return name.title().replace("_", " ")


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from ``root`` by field annotations, by class name."""
    out: dict[str, type[BaseModel]] = {}

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in out:
                return
            out[tp.__name__] = tp
            for f in tp.model_fields.values():
                walk(f.annotation)
            return
        for arg in typing.get_args(tp):
            walk(arg)

    walk(root)
    return out


@functools.lru_cache(maxsize=None)
def _module_field_docs(module: str) -> dict[str, dict[str, str]]:
    """Class name → field → docstring (``field: T`` followed by a string literal), for one module."""
    try:
        src = inspect.getsource(sys.modules[module])
    except (KeyError, OSError, TypeError):
        return {}
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out.setdefault(node.name, {})
        for stmt, nxt in zip(node.body, node.body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return out


def _field_docstrings(cls: type[BaseModel]) -> dict[str, str]:
    """Field docstrings of the class and its bases (a subclass's own win)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if isinstance(klass, type) and issubclass(klass, BaseModel) and klass is not BaseModel:
            docs.update(_module_field_docs(klass.__module__).get(klass.__name__, {}))
    return docs


def _describe(schema: dict[str, Any], root: type[BaseModel]) -> None:
    """Drop pydantic's auto titles on properties; add descriptions (docstrings, then DESCRIPTIONS)."""
    models = _models(root)
    nodes: dict[str, dict[str, Any]] = dict(schema.get("$defs", {}))
    nodes[root.__name__] = schema
    for name, node in nodes.items():
        cls = models.get(name)
        props = node.get("properties", {})
        for pname, p in props.items():
            if p.get("title") == _auto_title(pname):
                del p["title"]
        docs = _field_docstrings(cls) if cls is not None else {}
        for pname, text in docs.items():
            if pname in props:
                props[pname]["description"] = text
        for pname, text in DESCRIPTIONS.get(name, {}).items():
            if pname == "":
                node["description"] = text
            elif pname in props:
                props[pname]["description"] = text
            else:
                raise KeyError(f"DESCRIPTIONS[{name!r}] names {pname!r}, which the schema does not have")


def _json_logic_defs() -> dict[str, Any]:
    ops = {name: {"description": text} for name, text in JSON_LOGIC_OPERATORS.items()}
    for name, (_, text) in FUNCTIONS.items():
        ops[name] = {"description": f"Engine function: {text}"}
    ops["band"] = {"description": "Engine function: [table, parameter, value] → points of the row of a banded table "
                   "(columns parameter, low, high, points) with low <= value <= high, or null"}
    ops["classify"] = {"description": "Engine function: [table, items] → the classes (column class) whose codes (columns "
                       "system, code) match any of the items: conditions by icd10/icpc2/snomed, medications by atc/rxnorm"}
    return {
        "JsonLogicOperation": {
            "description": "A JSON Logic operation: {operator: [arguments]}. See docs/authoring.md (JSON Logic primer).",
            "type": "object",
            "properties": ops,
        },
        "JsonLogic": {
            "description": "JSON Logic: an operation ({operator: [arguments]}) or a literal value.",
            "anyOf": [
                {"$ref": "#/$defs/JsonLogicOperation"},
                {"type": ["array", "string", "number", "boolean", "null"]},
            ],
        },
    }


def _patch_rules(s: dict[str, Any]) -> None:
    s["$defs"].update(_json_logic_defs())
    rule = s["$defs"]["RuleDef"]
    p = rule["properties"]
    p["let"]["additionalProperties"] = {"$ref": "#/$defs/JsonLogic"}
    p["when"] = {"$ref": "#/$defs/JsonLogic", "default": True, "description": p["when"]["description"]}
    p["severity"] = {
        "anyOf": [{"enum": sorted(SEVERITIES)}, {"$ref": "#/$defs/JsonLogicOperation"}],
        "description": p["severity"]["description"],
    }
    rule["allOf"] = [
        {  # RuleDef._shape
            "if": {"required": ["pair"], "properties": {"pair": {"type": "object"}}},
            "then": {"properties": {"for_each": {"type": "null"}, "table": {"type": "null"}}},
        },
        {
            "if": {"required": ["table"], "properties": {"table": {"type": "object"}}},
            "then": {"required": ["for_each"], "properties": {"for_each": {"type": "string"}}},
        },
    ]


def _patch_cards(s: dict[str, Any]) -> None:
    s["$defs"].update(_json_logic_defs())
    d = s["$defs"]
    sugg = d["SuggestionTpl"]["properties"]
    sugg["when"] = {"$ref": "#/$defs/JsonLogic", "default": True, "description": sugg["when"]["description"]}
    act = d["ActionTpl"]
    ap = act["properties"]
    resource = {"type": "object", "required": ["resourceType"], "minProperties": 1}
    ap["resource"]["anyOf"] = [resource if b.get("type") == "object" else b for b in ap["resource"]["anyOf"]]
    ap["patch"] = {
        "anyOf": [
            {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "from": {
                        "type": "string",
                        "default": "item",
                        "description": "The binding whose draft order is changed: item (default), a or b.",
                    },
                    "set": {
                        "type": "object",
                        "description": "Dotted paths (with [i] for list items) → value templates, e.g. "
                        "\"dosageInstruction[0].doseAndRate[0].doseQuantity\": {value: \"{{ let.dose }}\", unit: mg}",
                    },
                },
            },
            {"type": "null"},
        ],
        "default": None,
        "description": "For update: take the medication order of a binding and change it (the suggestion is dropped if a value is missing).",
    }
    act["allOf"] = [  # ActionTpl._shape
        {
            "if": {"properties": {"type": {"const": "delete"}}},
            "then": {"required": ["resource_id"], "properties": {"resource_id": {"type": "string", "minLength": 1}}},
        },
        {
            "if": {"properties": {"type": {"const": "create"}}},
            "then": {"required": ["resource"], "properties": {"resource": resource}},
        },
        {
            "if": {"properties": {"type": {"const": "update"}}},
            "then": {
                "anyOf": [
                    {"required": ["resource"], "properties": {"resource": resource}},
                    {"required": ["patch"], "properties": {"patch": {"type": "object", "minProperties": 1}}},
                ]
            },
        },
    ]
    d["LinkTpl"]["allOf"] = [  # cds-resp-3, enforced when the card is built
        {
            "if": {"required": ["app_context"], "properties": {"app_context": {"type": "string"}}},
            "then": {"required": ["type"], "properties": {"type": {"const": "smart"}}},
        }
    ]


def _patch_knowledge(s: dict[str, Any]) -> None:
    col = s["$defs"]["Column"]
    col["allOf"] = [
        {
            "if": {"required": ["type"], "properties": {"type": {"const": "enum"}}},
            "then": {"required": ["values"], "properties": {"values": {"type": "array", "minItems": 1}}},
        }
    ]
    cols = s["properties"]["columns"]
    cols["properties"] = {
        "source": {
            "allOf": [
                {"$ref": "#/$defs/Column"},
                {"required": ["required"], "properties": {"required": {"const": True}}},
            ],
            "description": "Where the row's facts come from (mandatory, required: true). When sources disagree, name "
            "the one chosen and the alternative.",
        }
    }
    cols["required"] = ["source"]


def _token_pattern() -> str:
    fields = sorted({f for fs in TOKEN_FIELDS.values() for f in fs})
    toks = [r"context\." + f for f in fields] + list(USER_TOKENS)
    tok = r"\{\{\s*(?:" + "|".join(toks) + r")\s*\}\}"
    return r"^(?:[^{}]|\{(?!\{)|\}(?!\})|" + tok + r")*$"


def _patch_service(s: dict[str, Any]) -> None:
    p = s["properties"]
    p["hook"] = {"enum": list(HOOKS), "description": "Shorthand for hooks: [<hook>] (one hook)."}
    s["required"] = [r for r in s["required"] if r != "hooks"]
    s["oneOf"] = [{"required": ["hooks"]}, {"required": ["hook"]}]
    pattern = _token_pattern()
    tpl = s["$defs"]["PrefetchSpec"]["properties"]["template"]
    tpl["pattern"] = pattern
    p["prefetch"]["additionalProperties"] = {
        "anyOf": [
            {"type": "string", "pattern": pattern, "description": "Prefetch template (required: true)."},
            {"$ref": "#/$defs/PrefetchSpec"},
        ]
    }


MATRIX_VAR = "MatrixVariable"


def _any_string(node: dict[str, Any]) -> bool:
    return node.get("type") == "string" and not {"enum", "pattern", "const", "format"} & node.keys()


def _allow_matrix(prop: dict[str, Any]) -> dict[str, Any]:
    """Let a value be a ${var} placeholder (replaced from the case's matrix)."""
    ref = {"$ref": f"#/$defs/{MATRIX_VAR}"}
    for key in ("items", "additionalProperties"):
        sub = prop.get(key)
        if isinstance(sub, dict) and sub:
            prop[key] = _allow_matrix(sub)
    for branch in prop.get("anyOf", []):
        if isinstance(branch.get("items"), dict):
            branch["items"] = _allow_matrix(branch["items"])
    if _any_string(prop) or any(_any_string(b) for b in prop.get("anyOf", [])) or ref in prop.get("anyOf", []):
        return prop
    meta = {k: prop.pop(k) for k in ("description", "default") if k in prop}
    if set(prop) == {"anyOf"}:
        return {"anyOf": [*prop["anyOf"], ref], **meta}
    return {"anyOf": [prop, ref], **meta}


def _drop_null_defaults(node: Any) -> None:
    if isinstance(node, dict):
        for p in node.get("properties", {}).values():
            if "default" in p and p["default"] is None:
                del p["default"]
        for v in node.values():
            _drop_null_defaults(v)
    elif isinstance(node, list):
        for v in node:
            _drop_null_defaults(v)


def _patch_tests(s: dict[str, Any]) -> None:
    d = s["$defs"]
    terse = [n for n in d if n.startswith("Terse") or n in ("DoseQuantity", "DoseRange", "WeightKg", "WeightQuantity", "HeightCm", "FhirResource")]
    for n in terse + ["PackTestCase", "PackTestFixture"]:
        _drop_null_defaults(d[n])
    # key+ appends to the fixture's list instead of replacing it
    tp = d["TersePatient"]["properties"]
    for key in [k for k, v in tp.items() if v.get("type") == "array"]:
        tp[f"{key}+"] = {**copy.deepcopy(tp[key]), "description": f"Append to the fixture's {key} (instead of replacing them)."}
    d["TerseCondition"]["anyOf"] = [{"required": ["icd10"]}, {"required": ["icpc2"]}, {"required": ["snomed"]}]
    d["TerseObservation"]["anyOf"] = [{"required": ["loinc"]}, {"required": ["code"]}, {"required": ["snomed"]}]
    d["TersePatient"]["not"] = {"required": ["birthDate", "age"]}
    d[MATRIX_VAR] = {
        "description": "A matrix variable, e.g. ${dose} or ${case.dose}: replaced by the value (keeping its type).",
        "type": "string",
        "pattern": r"^\$\{[A-Za-z_][\w.]*\}$",
    }
    # The runner checks a case against its model *before* it substitutes ${var}, so a variable can
    # stand for a value only inside the free-form parts (patient, orders, encounter) or in text.
    for n in terse:
        props = d[n].get("properties", {})
        for pname in list(props):
            props[pname] = _allow_matrix(props[pname])


_SPECS: list[tuple[str, type[BaseModel], str, str, Any]] = [
    (
        "pack.schema.json",
        Manifest,
        "CDS rule pack manifest (pack.yaml)",
        "Identity, version, status and effective period of a rule pack version; its references, pinned knowledge "
        "tables, override reasons and coverage minimum. See docs/authoring.md.",
        None,
    ),
    (
        "rules.schema.json",
        RulesFile,
        "CDS rule pack rules (rules.yaml)",
        "The rules of a pack: hooks, shape (plain, for_each [+ table], pair), let, when, severity, card. "
        "`cds packs validate` also checks names, JSON Logic, tables and cards. See docs/authoring.md.",
        _patch_rules,
    ),
    (
        "cards.schema.json",
        CardsFile,
        "CDS rule pack cards (cards.yaml)",
        "Card templates: summary, detail, source, suggestions with actions, override reasons, links. "
        "See docs/authoring.md.",
        _patch_cards,
    ),
    (
        "knowledge-meta.schema.json",
        TableMeta,
        "CDS knowledge table metadata (<table>.meta.yaml)",
        "Id, release and column types of a knowledge table (the CSV file next to it). See docs/authoring.md.",
        _patch_knowledge,
    ),
    (
        "service.schema.json",
        ServiceDefinition,
        "CDS service definition (hooks/*.yaml)",
        "A CDS Hooks service: id, hooks, prefetch templates and the rule packs (versions or ranges) it evaluates. "
        "See docs/authoring.md.",
        _patch_service,
    ),
    (
        "tests.schema.json",
        PackTestFile,
        "CDS rule pack tests (tests/*.yaml)",
        "Test cases for a pack: fixtures, cases with a terse patient, orders, matrix variants and expected cards. "
        "See docs/authoring.md (Testing a pack).",
        _patch_tests,
    ),
]


def editor_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas (draft 2020-12) of the authoring formats, by file name."""
    out: dict[str, dict[str, Any]] = {}
    for filename, model, title, description, patch in _SPECS:
        schema = model.model_json_schema(by_alias=True)
        schema.setdefault("$defs", {})
        _describe(schema, model)
        if patch is not None:
            patch(schema)
        if not schema["$defs"]:
            del schema["$defs"]
        schema["$schema"] = DIALECT
        schema["$id"] = BASE_URI + filename
        schema["title"] = title
        schema["description"] = description
        out[filename] = schema
    return out


def dumps(schema: dict[str, Any]) -> str:
    """The committed form: 2-space indent, sorted keys, UTF-8 text, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_editor_schemas(out_dir: Path) -> list[Path]:
    """Write every schema into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, schema in editor_schemas().items():
        path = out_dir / filename
        path.write_text(dumps(schema), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("docs/schemas")
    for p in write_editor_schemas(out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
