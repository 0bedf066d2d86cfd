"""Audit records: what we answered (evaluations + cards) and what the EHR told us back (feedback).

These are plain frozen dataclasses so that building one in the request path is cheap.
Treat a record as immutable once it has been handed to an ``AuditStore``: the store keeps a
reference and serialises it later on its writer thread, so do not mutate the lists afterwards.

Deliberately, there is no field for access tokens, ``fhirAuthorization`` or any other credential:
the audit trail stores *references* (``"Patient/123"``), never secrets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

__all__ = [
    "FEEDBACK_OUTCOMES",
    "CardRecord",
    "EvaluationRecord",
    "FeedbackItem",
    "FeedbackResult",
    "PackRef",
    "utc_now",
    "to_utc_iso",
]

FeedbackOutcome = Literal["accepted", "overridden"]
FEEDBACK_OUTCOMES: frozenset[str] = frozenset({"accepted", "overridden"})


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def to_utc_iso(value: datetime) -> str:
    """Canonical storage form: ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``.

    Naive datetimes are taken to be UTC already. The fixed width makes the strings sort
    chronologically, which the SQL ``since`` filters rely on.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    else:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _parse_dt(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class PackRef:
    """A rule pack that took part in an evaluation (``shadow``: evaluated but its cards not shown)."""

    id: str
    version: str
    content_hash: str
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class CardRecord:
    """One card we produced. ``shadow`` cards were computed by a shadow pack and not returned."""

    uuid: str
    rule_id: str
    pack_id: str
    pack_version: str
    indicator: str
    summary: str
    suggestion_uuids: list[str]
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class EvaluationRecord:
    """One answered (or refused) ``POST /cds-services/{id}`` call."""

    hook_instance: str
    service_id: str
    hook: str
    client_iss: str | None
    tenant: str | None
    patient_ref: str | None  # "Patient/123" -- a reference, never a token
    user_ref: str | None  # "Practitioner/abc"
    encounter_ref: str | None  # "Encounter/xyz"
    packs: list[PackRef]
    cards: list[CardRecord]
    status: int  # HTTP status we answered with
    outcome: str  # "ok" | "precondition-failed" | "bad-request" | "error" | ...
    detail: str | None  # short reason for non-ok outcomes
    duration_ms: float
    received_at: datetime  # UTC

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["received_at"] = to_utc_iso(self.received_at)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationRecord:
        values = dict(data)
        values["packs"] = [PackRef(**p) for p in values.get("packs") or []]
        values["cards"] = [CardRecord(**c) for c in values.get("cards") or []]
        values["received_at"] = _parse_dt(values["received_at"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """One element of the ``feedback`` array of ``POST /cds-services/{id}/feedback``."""

    service_id: str
    card_uuid: str
    outcome: str  # "accepted" | "overridden"
    accepted_suggestions: list[str]
    reason_system: str | None
    reason_code: str | None
    reason_display: str | None
    user_comment: str | None
    outcome_timestamp: str  # as sent by the EHR
    client_iss: str | None
    tenant: str | None
    received_at: datetime

    def __post_init__(self) -> None:
        if self.outcome not in FEEDBACK_OUTCOMES:
            raise ValueError(f"feedback outcome must be one of {sorted(FEEDBACK_OUTCOMES)}, got {self.outcome!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["received_at"] = to_utc_iso(self.received_at)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeedbackItem:
        values = dict(data)
        values["received_at"] = _parse_dt(values["received_at"])
        return cls(**values)

    @classmethod
    def from_cds(
        cls,
        service_id: str,
        item: Mapping[str, Any],
        *,
        client_iss: str | None = None,
        tenant: str | None = None,
        received_at: datetime | None = None,
    ) -> FeedbackItem:
        """Build from one (already schema-validated) CDS Hooks 2.0.1 feedback item::

            {"card": "<uuid>", "outcome": "overridden", "acceptedSuggestions": [{"id": "..."}],
             "overrideReason": {"reason": {"system": ..., "code": ..., "display": ...},
                                "userComment": "..."},
             "outcomeTimestamp": "2020-12-11T00:00:00Z"}
        """
        override = item.get("overrideReason") or {}
        reason = override.get("reason") or {}
        return cls(
            service_id=service_id,
            card_uuid=str(item["card"]),
            outcome=str(item["outcome"]),
            accepted_suggestions=[str(s["id"]) for s in item.get("acceptedSuggestions") or []],
            reason_system=reason.get("system"),
            reason_code=reason.get("code"),
            reason_display=reason.get("display"),
            user_comment=override.get("userComment"),
            outcome_timestamp=str(item["outcomeTimestamp"]),
            client_iss=client_iss,
            tenant=tenant,
            received_at=received_at or utc_now(),
        )


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What happened to one feedback item once the writer handled it.

    ``stored`` is False for a duplicate (or while not yet written); ``known_card`` is None
    until the item has been written.
    """

    card_uuid: str
    stored: bool
    known_card: bool | None = None
