"""The rule-pack format: manifest, rules and card templates (YAML), as typed models.

See docs/authoring.md for the author's view of every key.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cds.hooks.models import HOOKS

SEMVER = r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$"
Collection = Literal["meds.focus", "meds.draft", "meds.active", "meds.all", "conditions", "past_conditions", "episodes"]
Severity = Literal["info", "warning", "critical", "none"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class I18n(_M):
    nb: str = Field(min_length=1)
    en: str = Field(min_length=1)

    def get(self, locale: str) -> str:
        return self.en if locale == "en" else self.nb


class Effective(_M):
    start: date = Field(alias="from")
    end: date | None = Field(default=None, alias="to")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class KnowledgeRef(_M):
    table: str
    release: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Reference(_M):
    id: str
    citation: str
    url: str | None = None


class OverrideReasonDef(_M):
    code: str
    display: I18n
    system: str | None = None


class ExtractDef(_M):
    """A value pulled out of the patient's FHIR resources with FHIRPath (R4), for what the
    normalised facts do not carry. Rules read it as ``extract.<name>`` (a list of values)."""

    resource: str = Field(pattern=r"^[A-Z][A-Za-z]+$")
    path: str = Field(min_length=1)
    description: str | None = None


class Manifest(_M):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-_.]*$")
    version: str = Field(pattern=SEMVER)
    status: Literal["draft", "active", "retired"]
    effective: Effective
    title: I18n
    description: I18n
    authors: list[str] = Field(min_length=1)
    references: list[Reference] = []
    knowledge: list[KnowledgeRef] = []
    override_reason_system: str = "https://cdsrules.org/fhir/CodeSystem/override-reason"
    override_reasons: list[OverrideReasonDef] = []
    min_coverage: float | None = Field(default=None, ge=0, le=100)
    extract: dict[str, ExtractDef] = {}
    rules: list[str] = ["rules.yaml"]
    cards: str = "cards.yaml"
    tests: list[str] = ["tests/*.yaml"]


class TableJoin(_M):
    table: str
    column: str
    key: Literal["atc", "rxnorm", "code"] = "atc"
    """What of the item is looked up in ``column``: its ATC codes (hierarchy-aware: a row with
    N06AA matches N06AA09), its RxNorm ingredient codes, or (for conditions) any code."""


class PairMatch(_M):
    table: str
    a: str
    """Column with the code(s) of the first drug (or class)."""
    b: str
    """Column with the code(s) of the second drug (or class)."""
    key: Literal["atc", "rxnorm"] = "atc"
    other: Literal["meds.all", "meds.active", "meds.draft"] = "meds.all"
    """Where the second drug is looked for (the first is always one of meds.focus)."""
    symmetric: bool = True


class RuleDef(_M):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-_.]*$")
    title: I18n
    description: I18n | None = None
    hooks: list[Literal[HOOKS]] = Field(min_length=1)  # type: ignore[valid-type]
    for_each: Collection | None = None
    table: TableJoin | None = None
    pair: PairMatch | None = None
    let: dict[str, Any] = {}
    when: Any = True
    severity: Any
    card: str
    dedupe: str | None = None
    """Template of a key; two findings with the same key (across rules and packs) give one card."""
    references: list[str] = []

    @model_validator(mode="after")
    def _shape(self) -> RuleDef:
        if self.pair and (self.for_each or self.table):
            raise ValueError("a pair rule cannot also have for_each or table")
        if self.table and not self.for_each:
            raise ValueError("a table join needs for_each (the items whose codes are looked up)")
        if self.table and self.for_each in ("conditions", "past_conditions") and self.table.key != "code":
            raise ValueError("a table join over conditions looks up condition codes: set table.key to 'code'")
        if self.table and self.for_each == "episodes":
            raise ValueError("episodes cannot be table-joined; read episode codes in `when` instead")
        if self.table and self.for_each and self.for_each.startswith("meds") and self.table.key == "code":
            raise ValueError("a table join over medications looks up 'atc' or 'rxnorm' codes, not 'code'")
        return self


class RulesFile(_M):
    rules: list[RuleDef] = Field(min_length=1)


class SourceTpl(_M):
    label: I18n | str
    url: str | None = None
    icon: str | None = None


class ActionTpl(_M):
    type: Literal["create", "update", "delete"]
    description: I18n
    resource_id: str | None = None
    resource: dict[str, Any] | None = None
    patch: dict[str, Any] | None = None
    """For update: {from: <binding>, set: {<dotted.path>: <template>}} — the draft order, changed."""

    @model_validator(mode="after")
    def _shape(self) -> ActionTpl:
        if self.type == "delete" and not self.resource_id:
            raise ValueError("delete actions need resource_id (e.g. '{{ item.ref }}')")
        if self.type == "create" and not self.resource:
            raise ValueError("create actions need a resource template")
        if self.type == "update" and not (self.resource or self.patch):
            raise ValueError("update actions need a resource or a patch")
        return self


class SuggestionTpl(_M):
    id: str
    label: I18n
    when: Any = True
    recommended: bool = False
    actions: list[ActionTpl] = []


class LinkTpl(_M):
    label: I18n
    url: str
    type: Literal["absolute", "smart"] = "absolute"
    app_context: str | None = None

    @model_validator(mode="after")
    def _resp3(self) -> LinkTpl:
        if self.app_context is not None and self.type != "smart":
            raise ValueError("app_context is only allowed on smart links (CDS Hooks cds-resp-3)")
        return self


class CardTpl(_M):
    summary: I18n
    detail: I18n | None = None
    source: SourceTpl
    override_reasons: list[str] = []
    selection_behavior: Literal["at-most-one", "any"] = "at-most-one"
    suggestions: list[SuggestionTpl] = []
    links: list[LinkTpl] = []


class CardsFile(_M):
    cards: dict[str, CardTpl] = Field(min_length=1)
