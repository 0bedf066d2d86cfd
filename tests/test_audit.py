"""Audit store tests: real SQLite files under tmp_path."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds.audit.models import (
    CardRecord,
    EvaluationRecord,
    FeedbackItem,
    FeedbackResult,
    PackRef,
)
from cds.audit.sqlite import MIGRATIONS, Migration, SQLiteAuditStore, feedback_dedup_key
from cds.audit.store import AuditStore

T0 = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)
SNOMED = "http://snomed.info/sct"


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


def card(uuid: str, rule_id: str = "rule-a", pack_version: str = "1.0.0", *, shadow: bool = False,
         pack_id: str = "pack-main", suggestions: list[str] | None = None) -> CardRecord:
    return CardRecord(
        uuid=uuid,
        rule_id=rule_id,
        pack_id=pack_id,
        pack_version=pack_version,
        indicator="warning",
        summary=f"summary for {rule_id}",
        suggestion_uuids=suggestions if suggestions is not None else [f"{uuid}-s1", f"{uuid}-s2"],
        shadow=shadow,
    )


def evaluation(hook_instance: str, cards: list[CardRecord] | None = None, *, service_id: str = "med-alerts",
               received_at: datetime = T0, status: int = 200, outcome: str = "ok",
               detail: str | None = None) -> EvaluationRecord:
    return EvaluationRecord(
        hook_instance=hook_instance,
        service_id=service_id,
        hook="order-sign",
        client_iss="https://ehr.example.org",
        tenant="tenant-1",
        patient_ref="Patient/123",
        user_ref="Practitioner/7",
        encounter_ref="Encounter/9",
        packs=[PackRef("pack-main", "1.0.0", "sha256:abc"), PackRef("pack-shadow", "2.0.0-rc1", "sha256:def", shadow=True)],
        cards=cards if cards is not None else [],
        status=status,
        outcome=outcome,
        detail=detail,
        duration_ms=12.5,
        received_at=received_at,
    )


def fb(card_uuid: str, outcome: str = "accepted", *, accepted: list[str] | None = None,
       code: str | None = None, display: str | None = None, comment: str | None = None,
       ts: str = "2026-01-15T12:00:05Z", service_id: str = "med-alerts") -> FeedbackItem:
    overridden = outcome == "overridden"
    return FeedbackItem(
        service_id=service_id,
        card_uuid=card_uuid,
        outcome=outcome,
        accepted_suggestions=accepted if accepted is not None else [],
        reason_system=SNOMED if overridden and code else None,
        reason_code=code if overridden else None,
        reason_display=display if overridden else None,
        user_comment=comment,
        outcome_timestamp=ts,
        client_iss="https://ehr.example.org",
        tenant="tenant-1",
        received_at=T0 + timedelta(seconds=5),
    )


def raw_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "audit.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteAuditStore]:
    s = SQLiteAuditStore(db_path, retry_initial=0.005, retry_max=0.05)
    s.start()
    yield s
    s.close()


# --------------------------------------------------------------------------------------------
# basics
# --------------------------------------------------------------------------------------------


def test_store_satisfies_protocol(store: SQLiteAuditStore) -> None:
    assert isinstance(store, AuditStore)


def test_start_creates_parent_dirs_wal_and_schema(db_path: Path, store: SQLiteAuditStore) -> None:
    assert db_path.exists()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"schema_version", "evaluation", "evaluation_pack", "card", "feedback"} <= tables
    assert {"ix_card_uuid", "ux_evaluation_hook_instance", "ix_card_service_rule", "ix_evaluation_received_at"} <= indexes


def test_evaluation_and_cards_queryable_after_flush(store: SQLiteAuditStore) -> None:
    store.record_evaluation(evaluation("hi-1", [card("c1", "rule-a"), card("c2", "rule-b", shadow=True)]))
    store.record_evaluation(evaluation("hi-2", [], service_id="other", status=412, outcome="precondition-failed",
                                       detail="prefetch missing: patient"))
    store.flush()

    evals = store.evaluations()
    assert [e["hook_instance"] for e in evals] == ["hi-2", "hi-1"]  # most recent first
    first = evals[1]
    assert first["service_id"] == "med-alerts" and first["hook"] == "order-sign"
    assert first["patient_ref"] == "Patient/123" and first["attempt"] == 1
    assert first["status"] == 200 and first["outcome"] == "ok" and first["card_count"] == 2
    assert first["received_at"] == "2026-01-15T12:00:00.000000+00:00"
    assert first["packs"] == [
        {"id": "pack-main", "version": "1.0.0", "content_hash": "sha256:abc", "shadow": False},
        {"id": "pack-shadow", "version": "2.0.0-rc1", "content_hash": "sha256:def", "shadow": True},
    ]
    refused = store.evaluations(service_id="other")
    assert len(refused) == 1
    assert (refused[0]["status"], refused[0]["outcome"], refused[0]["detail"]) == (
        412, "precondition-failed", "prefetch missing: patient")
    assert store.evaluations(limit=1)[0]["hook_instance"] == "hi-2"

    cards = store.cards_for("hi-1")
    assert [(c["uuid"], c["rule_id"], c["shadow"]) for c in cards] == [("c1", "rule-a", False), ("c2", "rule-b", True)]
    assert cards[0]["suggestion_uuids"] == ["c1-s1", "c1-s2"]
    assert cards[0]["pack_id"] == "pack-main" and cards[0]["pack_version"] == "1.0.0"
    assert store.cards_for("nope") == []


def test_naive_and_non_utc_datetimes_are_normalised_to_utc(store: SQLiteAuditStore) -> None:
    from datetime import timezone
    plus2 = timezone(timedelta(hours=2))
    store.record_evaluation(evaluation("tz-1", received_at=datetime(2026, 1, 15, 14, 0, tzinfo=plus2)))
    store.record_evaluation(evaluation("tz-2", received_at=datetime(2026, 1, 15, 12, 0)))
    store.flush()
    assert {e["received_at"] for e in store.evaluations()} == {"2026-01-15T12:00:00.000000+00:00"}


def test_repeated_hook_instance_is_another_attempt(store: SQLiteAuditStore) -> None:
    store.record_evaluation(evaluation("retry-me", [card("r1")]))
    store.record_evaluation(evaluation("retry-me", [card("r2")]))
    store.record_evaluation(evaluation("retry-me", [card("r3")]))
    store.flush()
    assert sorted(e["attempt"] for e in store.evaluations()) == [1, 2, 3]
    assert [(c["attempt"], c["uuid"]) for c in store.cards_for("retry-me")] == [(1, "r1"), (2, "r2"), (3, "r3")]
    assert store.health()["last_error"] is None


def test_records_enqueued_before_start_are_written(db_path: Path) -> None:
    s = SQLiteAuditStore(db_path)
    s.record_evaluation(evaluation("early"))
    s.start()
    s.flush()
    assert s.counts()["evaluation"] == 1
    s.record_evaluation(evaluation("late"))
    s.close()
    unstarted = SQLiteAuditStore(db_path)
    unstarted.record_evaluation(evaluation("never-started"))
    unstarted.close()  # close() starts the writer rather than lose the queued row
    assert raw_count(db_path, "evaluation") == 3


# --------------------------------------------------------------------------------------------
# feedback
# --------------------------------------------------------------------------------------------


def test_feedback_is_linked_to_its_card(store: SQLiteAuditStore) -> None:
    store.record_evaluation(evaluation("hi-fb", [card("card-1", "rule-x", "3.1.0")]))
    store.record_feedback([fb("card-1", "accepted", accepted=["card-1-s1"])])  # no flush in between: FIFO
    store.flush()
    rows = store.feedback()
    assert len(rows) == 1
    row = rows[0]
    assert row["known_card"] is True
    assert (row["rule_id"], row["hook_instance"], row["pack_version"]) == ("rule-x", "hi-fb", "3.1.0")
    assert row["outcome"] == "accepted" and row["accepted_suggestions"] == ["card-1-s1"]
    assert row["tenant"] == "tenant-1" and row["client_iss"] == "https://ehr.example.org"
    assert store.health()["feedback_written"] == 1


def test_reposting_the_same_feedback_adds_nothing(db_path: Path, store: SQLiteAuditStore) -> None:
    store.record_evaluation(evaluation("hi", [card("card-1")]))
    item = fb("card-1", "overridden", code="123", display="Not relevant", comment="seen before")
    store.record_feedback([item])
    store.record_feedback([item])
    store.record_feedback([dataclasses.replace(item, received_at=T0 + timedelta(hours=1))])  # retried later
    store.flush()
    assert raw_count(db_path, "feedback") == 1

    # the order of acceptedSuggestions does not make it different feedback either
    acc = fb("card-1", "accepted", accepted=["b", "a"], ts="2026-01-15T12:09:00Z")
    results = store.record_feedback_wait([acc, dataclasses.replace(acc, accepted_suggestions=["a", "b"])])
    assert results == [FeedbackResult("card-1", stored=True, known_card=True),
                       FeedbackResult("card-1", stored=False, known_card=True)]
    assert raw_count(db_path, "feedback") == 2
    assert store.health()["feedback_duplicates"] == 3


def test_different_feedback_for_the_same_card_adds_a_row(db_path: Path, store: SQLiteAuditStore) -> None:
    store.record_evaluation(evaluation("hi", [card("card-1")]))
    store.record_feedback([fb("card-1", "accepted", accepted=["card-1-s1"], ts="2026-01-15T12:00:05Z")])
    store.flush()
    assert raw_count(db_path, "feedback") == 1
    # the user changed their mind
    store.record_feedback([fb("card-1", "overridden", code="42", ts="2026-01-15T12:03:00Z")])
    store.flush()
    assert raw_count(db_path, "feedback") == 2
    assert [r["outcome"] for r in store.feedback()] == ["overridden", "accepted"]


def test_feedback_for_unknown_card_is_kept_and_flagged(store: SQLiteAuditStore) -> None:
    results = store.record_feedback_wait([fb("ghost-card", "overridden", code="99")])
    assert results == [FeedbackResult("ghost-card", stored=True, known_card=False)]
    [row] = store.feedback()
    assert row["card_uuid"] == "ghost-card" and row["known_card"] is False
    assert row["rule_id"] is None and row["hook_instance"] is None
    assert store.health()["feedback_unknown_card"] == 1

    # the card shows up later (e.g. written by another worker): the flag is not rewritten,
    # but the query-time link now resolves
    store.record_evaluation(evaluation("late-hi", [card("ghost-card", "rule-late")]))
    store.flush()
    [row] = store.feedback()
    assert row["known_card"] is False
    assert (row["rule_id"], row["hook_instance"]) == ("rule-late", "late-hi")


def test_feedback_from_cds_payload() -> None:
    item = FeedbackItem.from_cds(
        "med-alerts",
        {
            "card": "abc",
            "outcome": "overridden",
            "overrideReason": {"reason": {"system": SNOMED, "code": "x1", "display": "Patient declined"},
                               "userComment": "asked twice"},
            "outcomeTimestamp": "2026-01-15T12:00:00Z",
        },
        client_iss="https://ehr", tenant="t",
        received_at=T0,
    )
    assert (item.card_uuid, item.outcome, item.reason_code, item.reason_display, item.user_comment) == (
        "abc", "overridden", "x1", "Patient declined", "asked twice")
    assert item.accepted_suggestions == []
    accepted = FeedbackItem.from_cds("s", {"card": "c", "outcome": "accepted",
                                           "acceptedSuggestions": [{"id": "s1"}, {"id": "s2"}],
                                           "outcomeTimestamp": "2026-01-15T12:00:00Z"})
    assert accepted.accepted_suggestions == ["s1", "s2"] and accepted.reason_code is None
    with pytest.raises(ValueError):
        fb("c", outcome="ignored")


@given(
    suggestions=st.lists(st.text(min_size=1, max_size=8), max_size=5, unique=True),
    data=st.data(),
)
def test_dedup_key_ignores_suggestion_order_and_receipt_time(suggestions: list[str], data: st.DataObject) -> None:
    item = fb("c", "accepted", accepted=suggestions)
    shuffled = data.draw(st.permutations(suggestions))
    same = dataclasses.replace(item, accepted_suggestions=list(shuffled), received_at=T0 + timedelta(days=1))
    assert feedback_dedup_key(same) == feedback_dedup_key(item)
    for change in ({"outcome_timestamp": "2026-02-01T00:00:00Z"}, {"user_comment": "changed"},
                   {"card_uuid": "other"}, {"accepted_suggestions": [*suggestions, "extra-suggestion!"]}):
        assert feedback_dedup_key(dataclasses.replace(item, **change)) != feedback_dedup_key(item)


# --------------------------------------------------------------------------------------------
# durability, schema
# --------------------------------------------------------------------------------------------


def test_close_flushes_everything_enqueued(db_path: Path) -> None:
    s = SQLiteAuditStore(db_path)
    s.start()
    for i in range(5000):
        s.record_evaluation(evaluation(f"bulk-{i}", [card(f"bulk-card-{i}")]))
    s.close()  # immediately

    reopened = SQLiteAuditStore(db_path)
    reopened.start()
    try:
        counts = reopened.counts()
        assert counts["evaluation"] == 5000
        assert counts["card"] == 5000
        assert counts["evaluation_pack"] == 10000
    finally:
        reopened.close()


def test_schema_version_recorded_and_migrations_not_rerun(db_path: Path) -> None:
    s = SQLiteAuditStore(db_path)
    s.start()
    [v1] = s.schema_versions()
    assert v1["version"] == 1 == len(MIGRATIONS)
    assert s.health()["schema_version"] == 1
    s.close()

    again = SQLiteAuditStore(db_path)
    again.start()  # the v1 CREATE TABLEs would fail if they ran twice
    assert again.schema_versions() == [v1]
    again.close()

    # a new migration is applied once, on top of v1
    v2 = Migration(2, "add note table", ("CREATE TABLE note (id INTEGER PRIMARY KEY, text TEXT)",))
    for _ in range(2):
        upgraded = SQLiteAuditStore(db_path, migrations=(*MIGRATIONS, v2))
        upgraded.start()
        assert [r["version"] for r in upgraded.schema_versions()] == [1, 2]
        upgraded.close()

    # old code refuses a newer database instead of writing into it
    with pytest.raises(RuntimeError, match="newer"):
        SQLiteAuditStore(db_path).start()
    with pytest.raises(ValueError):
        SQLiteAuditStore(db_path, migrations=(v2,))


# --------------------------------------------------------------------------------------------
# analytics
# --------------------------------------------------------------------------------------------


def test_analytics_on_a_scripted_dataset(store: SQLiteAuditStore) -> None:
    # rule-a v1: 5 cards shown -> 2 accepted, 2 overridden (reasons: 2x "dup"... see below), 1 no feedback
    store.record_evaluation(evaluation("e1", [card("a1", "rule-a"), card("a2", "rule-a"), card("b1", "rule-b")]))
    store.record_evaluation(evaluation("e2", [card("a3", "rule-a"), card("a4", "rule-a"), card("a5", "rule-a")]))
    # rule-a under a newer pack version is its own group
    store.record_evaluation(evaluation("e3", [card("a6", "rule-a", "1.1.0")]))
    # shadow cards are never shown
    store.record_evaluation(evaluation("e4", [card("s1", "rule-a", shadow=True)]))
    # a retry of e2 returning the same (deterministic) card uuids does not double count
    store.record_evaluation(evaluation("e2", [card("a3", "rule-a")]))
    # another service
    store.record_evaluation(evaluation("e5", [card("x1", "rule-a")], service_id="other-service"))

    store.record_feedback([
        fb("a1", "accepted", accepted=["a1-s1"]),
        fb("a2", "overridden", code="dup", display="Duplicate therapy"),
        fb("a3", "overridden", code="dup", display="Duplicate therapy"),
        fb("a4", "overridden", code="na", display="Not applicable", ts="2026-01-15T12:01:00Z"),
        fb("a6", "accepted"),
        fb("b1", "overridden", code="na"),
        fb("x1", "overridden"),  # no reason given
        fb("ghost", "accepted"),  # unknown card: not in analytics
    ])
    store.record_feedback([fb("a4", "accepted", ts="2026-01-15T12:02:00Z")])  # changed their mind: final = accepted
    store.record_feedback([fb("a1", "accepted", accepted=["a1-s1"])])  # duplicate post
    store.flush()

    stats = {(r["service_id"], r["pack_version"], r["rule_id"]): r for r in store.analytics()}
    assert set(stats) == {("med-alerts", "1.0.0", "rule-a"), ("med-alerts", "1.1.0", "rule-a"),
                          ("med-alerts", "1.0.0", "rule-b"), ("other-service", "1.0.0", "rule-a")}

    a = stats[("med-alerts", "1.0.0", "rule-a")]
    assert (a["cards_shown"], a["shadow_cards"], a["accepted"], a["overridden"], a["no_feedback"]) == (5, 1, 2, 2, 1)
    assert a["acceptance_rate"] == pytest.approx(0.5)
    assert a["override_reasons"] == [{"system": SNOMED, "code": "dup", "display": "Duplicate therapy", "count": 2}]
    assert a["pack_id"] == "pack-main"

    a11 = stats[("med-alerts", "1.1.0", "rule-a")]
    assert (a11["cards_shown"], a11["accepted"], a11["overridden"], a11["acceptance_rate"]) == (1, 1, 0, 1.0)

    b = stats[("med-alerts", "1.0.0", "rule-b")]
    assert (b["cards_shown"], b["accepted"], b["overridden"], b["acceptance_rate"]) == (1, 0, 1, 0.0)
    assert b["override_reasons"] == [{"system": SNOMED, "code": "na", "display": None, "count": 1}]

    x = stats[("other-service", "1.0.0", "rule-a")]
    assert (x["overridden"], x["override_reasons"], x["acceptance_rate"]) == (1, [], 0.0)


def test_analytics_since_filters_on_when_the_card_was_shown(store: SQLiteAuditStore) -> None:
    store.record_evaluation(evaluation("old", [card("o1")], received_at=T0 - timedelta(days=10)))
    store.record_evaluation(evaluation("new", [card("n1"), card("n2")], received_at=T0))
    store.record_feedback([fb("o1", "accepted"), fb("n1", "overridden", code="c")])
    store.flush()
    [everything] = store.analytics()
    assert (everything["cards_shown"], everything["accepted"], everything["overridden"]) == (3, 1, 1)
    [recent] = store.analytics(since=T0 - timedelta(days=1))
    assert (recent["cards_shown"], recent["accepted"], recent["overridden"], recent["no_feedback"]) == (2, 0, 1, 1)
    assert recent["acceptance_rate"] == 0.0
    assert store.analytics(since=T0 + timedelta(seconds=1)) == []


# --------------------------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------------------------


def _process_writer(path: str, tag: str, n: int, go: object) -> None:
    """Runs in a spawned child process: one store (own writer thread) on the shared file."""
    s = SQLiteAuditStore(path, batch_size=50, flush_interval=0.01)
    s.start()
    go.wait(30)  # type: ignore[attr-defined]
    for i in range(n):
        s.record_evaluation(evaluation(f"{tag}-{i}", [card(f"{tag}-card-{i}")]))
        s.record_evaluation(evaluation("shared-hook-instance"))
        if i % 10 == 0:
            s.record_feedback([fb(f"{tag}-card-{i}", "accepted"), fb("shared-card", "accepted", ts=f"{tag}-{i}")])
    s.close()


def test_two_processes_writing_concurrently_lose_nothing(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    n = 1500
    procs = [ctx.Process(target=_process_writer, args=(str(db_path), tag, n, go)) for tag in ("p1", "p2")]
    for p in procs:
        p.start()
    time.sleep(0.5)
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]

    s = SQLiteAuditStore(db_path)
    s.start()
    try:
        counts = s.counts()
        assert counts["evaluation"] == 2 * n * 2
        assert counts["card"] == 2 * n
        assert counts["feedback"] == 2 * (n // 10) * 2
        assert counts["audit_reject"] == 0
        attempts = [e["attempt"] for e in s.evaluations(limit=None) if e["hook_instance"] == "shared-hook-instance"]
        assert sorted(attempts) == list(range(1, 2 * n + 1))  # unique, gap-free across both processes
        assert all(r["known_card"] for r in s.feedback(limit=None) if r["card_uuid"] != "shared-card")
    finally:
        s.close()
    assert not list(db_path.parent.glob("*.spill-*"))


def test_record_evaluation_does_not_block_while_writer_is_paused(store: SQLiteAuditStore) -> None:
    store.pause_writer()
    done = threading.Event()

    def produce() -> None:
        for i in range(2000):
            store.record_evaluation(evaluation(f"p-{i}", [card(f"pc-{i}")]))
        store.record_feedback([fb("pc-1", "accepted")])
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(30)
    assert done.is_set(), "record_evaluation blocked while the writer was paused"
    health = store.health()
    assert health["paused"] is True and health["queue_depth"] == 2001
    assert store.counts()["evaluation"] == 0
    with pytest.raises(TimeoutError):
        store.flush(timeout=0.2)

    store.resume_writer()
    store.flush()
    assert store.counts()["evaluation"] == 2000
    assert store.feedback()[0]["known_card"] is True
    assert store.health()["queue_depth"] == 0


# --------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------


def test_write_failure_is_retried_and_reported(store: SQLiteAuditStore, caplog: pytest.LogCaptureFixture) -> None:
    failing = threading.Event()
    failing.set()
    attempts: list[int] = []

    def fault() -> None:
        attempts.append(1)
        if failing.is_set():
            raise sqlite3.OperationalError("attempt to write a readonly database (injected)")

    store.set_fault_hook(fault)
    with caplog.at_level(logging.WARNING, logger="cds.audit"):
        store.record_evaluation(evaluation("während-fehler", [card("f1")]))
        store.record_feedback([fb("f1", "accepted")])
        with pytest.raises(TimeoutError):
            store.flush(timeout=0.3)
        health = store.health()
        assert health["ok"] is False and health["writer_alive"] is True
        assert health["consecutive_failures"] >= 2 and health["queue_depth"] == 2
        assert "readonly database (injected)" in health["last_error"]
        assert store.counts()["evaluation"] == 0

        failing.clear()
        store.flush(timeout=10)
    assert any(r.name == "cds.audit" and "injected" in r.getMessage() for r in caplog.records)

    health = store.health()
    assert health["ok"] is True and health["consecutive_failures"] == 0
    assert health["write_failures"] == len(attempts) - 1 >= 2
    assert "injected" in health["last_error"]  # the last error stays visible after recovery
    assert store.counts()["evaluation"] == 1
    assert store.feedback()[0]["known_card"] is True  # order kept across the retries


def test_real_sqlite_lock_error_is_retried(db_path: Path) -> None:
    """A genuine SQLite write error, not an injected one: another connection holds the write lock."""
    s = SQLiteAuditStore(db_path, busy_timeout=0.05, retry_initial=0.01, retry_max=0.05)
    s.start()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # nobody else may write now
    try:
        s.record_evaluation(evaluation("locked"))
        deadline = time.monotonic() + 10
        while s.health()["write_failures"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        health = s.health()
        assert health["write_failures"] >= 2 and health["writer_alive"] is True
        assert "database is locked" in (health["last_error"] or "")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    s.flush(timeout=10)
    assert s.counts()["evaluation"] == 1
    s.close()


def test_bad_record_is_rejected_without_blocking_the_queue(store: SQLiteAuditStore) -> None:
    store.pause_writer()  # so the three records land in one batch
    store.record_evaluation(evaluation("good-1"))
    store.record_evaluation(dataclasses.replace(evaluation("bad"), service_id=None))  # type: ignore[arg-type]
    store.record_evaluation(evaluation("good-2"))
    store.resume_writer()
    store.flush()
    counts = store.counts()
    assert (counts["evaluation"], counts["audit_reject"]) == (2, 1)
    health = store.health()
    assert health["rejected"] == 1 and "IntegrityError" in health["last_error"]
    with sqlite3.connect(store.path) as conn:
        kind, payload = conn.execute("SELECT kind, payload FROM audit_reject").fetchone()
    assert kind == "evaluation" and '"hook_instance": "bad"' in payload


def test_close_spills_to_a_file_if_the_database_stays_unwritable(db_path: Path) -> None:
    s = SQLiteAuditStore(db_path, retry_initial=0.01, retry_max=0.05)
    s.start()

    def always_fail() -> None:
        raise sqlite3.OperationalError("disk I/O error (injected)")

    s.set_fault_hook(always_fail)
    for i in range(20):
        s.record_evaluation(evaluation(f"s-{i}", [card(f"sc-{i}")]))
    s.record_feedback([fb("sc-0", "overridden", code="x")])
    s.close(timeout=0.5)
    s.record_evaluation(evaluation("after-close"))  # never raises; spilled too
    spill = s.health()["spill_path"]
    assert spill is not None and s.health()["spilled"] == 22
    assert raw_count(db_path, "evaluation") == 0

    fresh = SQLiteAuditStore(db_path)
    fresh.start()
    assert fresh.replay_spill(spill) == 22
    fresh.flush()
    counts = fresh.counts()
    assert (counts["evaluation"], counts["card"], counts["feedback"]) == (21, 20, 1)
    assert fresh.feedback()[0]["known_card"] is True
    fresh.close()


# --------------------------------------------------------------------------------------------
# no secrets
# --------------------------------------------------------------------------------------------

_SECRET_WORDS = ("token", "authorization", "secret", "password", "bearer", "jwt", "credential", "access")


def test_models_and_tables_have_no_token_fields(store: SQLiteAuditStore) -> None:
    names = {f.name for model in (PackRef, CardRecord, EvaluationRecord, FeedbackItem, FeedbackResult)
             for f in dataclasses.fields(model)}
    with sqlite3.connect(store.path) as conn:
        for table in ("evaluation", "evaluation_pack", "card", "feedback", "audit_reject"):
            names |= {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    assert not [n for n in names if any(w in n.lower() for w in _SECRET_WORDS)]


def test_health_shape(db_path: Path, store: SQLiteAuditStore) -> None:
    store.record_evaluation(evaluation("h", [card("hc")]))
    store.flush()
    h = store.health()
    assert h["db_path"] == str(db_path)
    assert h["queue_depth"] == 0 and h["evaluations_written"] == 1
    assert h["rows_written"] == 1 + 2 + 1  # evaluation + 2 packs + 1 card
    assert h["last_error"] is None and h["ok"] is True


# --------------------------------------------------------------------------------------------
# measurements (printed, never asserted: run with -s to see them)
# --------------------------------------------------------------------------------------------


def test_measure_enqueue_cost_and_writer_throughput(tmp_path: Path) -> None:
    recs = [evaluation(f"m-{i}", [card(f"m-{i}-a"), card(f"m-{i}-b", "rule-b")]) for i in range(20000)]
    s = SQLiteAuditStore(tmp_path / "measure.db")
    s.start()
    try:
        s.pause_writer()
        t = time.perf_counter()
        for r in recs:
            s.record_evaluation(r)
        paused_us = (time.perf_counter() - t) / len(recs) * 1e6

        t = time.perf_counter()
        s.resume_writer()
        s.flush(timeout=120)
        elapsed = time.perf_counter() - t
        rows = s.health()["rows_written"]

        more = [dataclasses.replace(r, hook_instance=r.hook_instance + "-x") for r in recs]
        t = time.perf_counter()
        for r in more:  # the writer is busy at the same time
            s.record_evaluation(r)
        busy_us = (time.perf_counter() - t) / len(more) * 1e6
        s.flush(timeout=120)
    finally:
        s.close()
    print(
        f"\n[audit] record_evaluation: {paused_us:.2f} us/call (writer idle), {busy_us:.2f} us/call (writer busy)"
        f"\n[audit] writer: {len(recs) / elapsed:,.0f} evaluations/s = {rows / elapsed:,.0f} rows/s "
        f"(1 evaluation + 2 packs + 2 cards each, batch_size=200)"
    )
