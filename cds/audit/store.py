"""The audit store interface used by the API, the CLI and analytics."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cds.audit.models import EvaluationRecord, FeedbackItem

__all__ = ["AuditStore"]


@runtime_checkable
class AuditStore(Protocol):
    """Asynchronous, loss-free audit trail.

    Write methods only enqueue: they are cheap, never block on I/O and never raise to the
    caller (a failure is logged on the ``cds.audit`` logger and reported by :meth:`health`).
    A background writer makes the records durable; :meth:`flush` waits for it.
    """

    def start(self) -> None:
        """Open/migrate the storage and start the background writer. Idempotent."""
        ...

    def record_evaluation(self, rec: EvaluationRecord) -> None:
        """Enqueue an evaluation with its packs and cards. Non-blocking, never raises."""
        ...

    def record_feedback(self, items: list[FeedbackItem]) -> None:
        """Enqueue feedback items (kept in order after earlier evaluations). Never raises."""
        ...

    def flush(self, timeout: float = 5.0) -> None:
        """Block until everything enqueued before the call is durably written.

        Raises ``TimeoutError`` if that did not happen within ``timeout`` seconds.
        """
        ...

    def close(self) -> None:
        """Flush everything still queued, then stop the writer. Never loses a queued row."""
        ...

    # --- queries (short-lived read connections) -------------------------------------------

    def evaluations(self, limit: int = 100, service_id: str | None = None) -> list[dict[str, Any]]:
        """Most recent evaluations first, each with its ``packs`` and ``card_count``."""
        ...

    def cards_for(self, hook_instance: str) -> list[dict[str, Any]]:
        """Cards of every attempt of ``hook_instance``, in answer order."""
        ...

    def feedback(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Most recent feedback first, with ``known_card`` and the linked ``hook_instance``/``rule_id``."""
        ...

    def analytics(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Per service + pack version + rule: cards shown, accepted, overridden, reasons, rate."""
        ...

    def health(self) -> dict[str, Any]:
        """Queue depth, rows written, last error, db path, ..."""
        ...
