"""CDS Hooks 2.0.1 wire models (pydantic v2).

Inbound models (requests, feedback) are tolerant: unknown fields are kept, real-client quirks
(a draftOrders Bundle without ``type``, a MedicationRequest without ``intent``) are accepted.
Outbound models (cards, responses, discovery) are strict and enforce the spec's invariants
(cds-resp-1…6) so a non-conformant card cannot be built; they serialise with OPTIONAL fields
omitted, never ``null`` or empty.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
USER_REF = re.compile(r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$")
REL_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")

HOOKS = (
    "patient-view",
    "order-select",
    "order-sign",
    "encounter-start",
    "encounter-discharge",
    "appointment-book",
)


def prune(v: Any) -> Any:
    """Drop nulls and empty strings/lists/objects (CDS Hooks: OPTIONAL values are omitted)."""
    if isinstance(v, dict):
        out = {k: prune(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x is not None and x != {} and x != [] and x != ""}
    if isinstance(v, list):
        items = [prune(x) for x in v]
        return [x for x in items if x is not None and x != {} and x != [] and x != ""]
    return v


class _In(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def wire(self) -> dict[str, Any]:
        """JSON-ready dict with OPTIONAL fields omitted (no null, no empty lists)."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


# --------------------------------------------------------------------------- inbound


class FhirAuthorization(_In):
    # repr=False: the token never appears in a repr, a log line or a validation error echo.
    access_token: str = Field(min_length=1, repr=False)
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None


class HookRequest(_In):
    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1, max_length=256)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @field_validator("fhirServer")
    @classmethod
    def _server_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^https?://[^\s/?#]+", v):
            raise ValueError("fhirServer must be an absolute http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _invariants(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("cds-r-1: fhirAuthorization requires fhirServer")
        auth = self.fhirAuthorization
        if auth is not None and "patient/" in auth.scope and not auth.patient:
            raise ValueError("cds-r-2: patient/ scopes require fhirAuthorization.patient")
        return self


class BundleIn(_In):
    resourceType: Literal["Bundle"]
    type: str | None = None  # the Sandbox omits it
    entry: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("entry")
    @classmethod
    def _entries(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, e in enumerate(v):
            res = e.get("resource")
            if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
                raise ValueError(f"entry[{i}].resource must be a FHIR resource with resourceType")
        return v

    def resources(self) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.entry]


class _BaseContext(_In):
    userId: str
    patientId: str
    encounterId: str | None = None

    @field_validator("userId")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_REF.match(v):
            raise ValueError("userId must be Practitioner|PractitionerRole|Patient|RelatedPerson/<id>")
        return v

    @field_validator("patientId", "encounterId")
    @classmethod
    def _fhir_id(cls, v: str | None) -> str | None:
        if v is not None and not FHIR_ID.match(v):
            raise ValueError("must be a FHIR id ([A-Za-z0-9-.]{1,64})")
        return v


class PatientViewContext(_BaseContext):
    pass


class OrderSignContext(_BaseContext):
    draftOrders: BundleIn


class OrderSelectContext(_BaseContext):
    selections: list[str] = Field(min_length=1)
    draftOrders: BundleIn

    @model_validator(mode="after")
    def _selections_in_bundle(self) -> OrderSelectContext:
        refs = {
            f"{r['resourceType']}/{r.get('id')}" for r in self.draftOrders.resources() if r.get("id")
        }
        for s in self.selections:
            if not REL_REF.match(s):
                raise ValueError(f"selection {s!r} is not a relative reference Type/id")
            if s not in refs:
                raise ValueError(f"selection {s!r} is not in draftOrders")
        return self


class EncounterContext(_BaseContext):
    encounterId: str  # REQUIRED for encounter-start and encounter-discharge


class AppointmentBookContext(_BaseContext):
    appointments: BundleIn


CONTEXT_MODELS: dict[str, type[_BaseContext]] = {
    "patient-view": PatientViewContext,
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
    "encounter-start": EncounterContext,
    "encounter-discharge": EncounterContext,
    "appointment-book": AppointmentBookContext,
}


class CodingIn(_In):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class OverrideReasonIn(_In):
    reason: CodingIn | None = None
    userComment: str | None = None

    @model_validator(mode="after")
    def _fb3(self) -> OverrideReasonIn:
        if self.reason is None and not self.userComment:
            raise ValueError("cds-fb-3: overrideReason needs reason or userComment")
        if self.reason is not None and not (self.reason.code and self.reason.system):
            raise ValueError("overrideReason.reason needs system and code")
        return self


class AcceptedSuggestion(_In):
    id: str = Field(min_length=1)


class FeedbackEntry(_In):
    card: str = Field(min_length=1, max_length=256)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReasonIn | None = None
    outcomeTimestamp: datetime

    @field_validator("outcomeTimestamp")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("outcomeTimestamp must carry a UTC offset (RFC 3339)")
        return v

    @model_validator(mode="after")
    def _fb2(self) -> FeedbackEntry:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("cds-fb-2: accepted feedback requires acceptedSuggestions")
        return self


class FeedbackRequest(_In):
    feedback: list[FeedbackEntry] = Field(min_length=1, max_length=1000)


# --------------------------------------------------------------------------- outbound


class Coding(_Out):
    system: str
    code: str
    display: str | None = None


class Source(_Out):
    label: str = Field(min_length=1)
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: str = Field(min_length=1)
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Action:
        if self.type == "delete":
            if not self.resourceId or self.resource is not None:
                raise ValueError("cds-resp-2: delete actions use resourceId")
        elif not self.resource or "resourceType" not in self.resource:
            raise ValueError(f"{self.type} action needs a resource")
        return self


class Suggestion(_Out):
    label: str = Field(min_length=1)
    uuid: str
    isRecommended: bool | None = None
    actions: list[Action] | None = None

    @field_validator("actions")
    @classmethod
    def _none_if_empty(cls, v: list[Action] | None) -> list[Action] | None:
        return v or None


class Link(_Out):
    label: str = Field(min_length=1)
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _resp3(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("cds-resp-3: appContext only for smart links")
        return self


class Card(_Out):
    uuid: str
    summary: str = Field(min_length=1, max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _invariants(self) -> Card:
        self.suggestions = self.suggestions or None
        self.overrideReasons = self.overrideReasons or None
        self.links = self.links or None
        self.detail = self.detail or None
        if self.suggestions and not self.selectionBehavior:
            raise ValueError("cds-resp-6: suggestions require selectionBehavior")
        if not self.suggestions:
            self.selectionBehavior = None
        if self.selectionBehavior == "at-most-one" and self.suggestions:
            if sum(1 for s in self.suggestions if s.isRecommended) > 1:
                raise ValueError("cds-resp-1: at-most-one allows one recommended suggestion")
        for c in self.overrideReasons or []:
            if not c.display:
                raise ValueError("cds-resp-4: override reasons need display")
        return self


class CdsResponse(_Out):
    cards: list[Card]
    systemActions: list[Action] | None = None
    extension: dict[str, Any] | None = None

    def wire(self) -> dict[str, Any]:
        out = super().wire()
        out.setdefault("cards", [])  # {"cards": []} is the one empty value the spec allows
        return out


class ServiceDescriptor(_Out):
    hook: str
    title: str | None = None
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None
    extension: dict[str, Any] | None = None
