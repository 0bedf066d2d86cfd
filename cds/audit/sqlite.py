"""SQLite implementation of the audit store.

Design
------
* The request path only appends to an in-memory FIFO (one uncontended lock + ``SimpleQueue.put``).
* One background writer thread per process drains the queue in batches; each batch is one
  ``BEGIN IMMEDIATE ... COMMIT`` transaction. FIFO order is preserved, so a card written earlier
  is visible to the feedback that follows it.
* Several processes (uvicorn workers) may share the file: WAL mode + ``busy_timeout`` serialise
  their writers; a lock timeout is just another transient error.
* Transient errors (``OperationalError``: locked, read-only, I/O, disk full, ...) never kill the
  writer: the batch is kept and retried with exponential backoff; ``health()`` reports it.
  A record that cannot be written for data reasons (e.g. a NOT NULL violation) is isolated with
  savepoints and kept verbatim in ``audit_reject`` so it cannot block the queue.
* ``close()`` writes everything queued. Only if the database stays unwritable past the timeout
  are the remaining records appended to a JSON-lines *spill* file next to the database
  (``replay_spill()`` re-enqueues them) -- a queued record is never silently dropped.
* Durability: ``synchronous=NORMAL`` in WAL mode survives process crashes; an OS crash or power
  loss may roll back the last few committed transactions (SQLite's documented trade-off).

Test hooks: ``pause_writer()`` / ``resume_writer()`` and ``set_fault_hook()``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cds.audit.models import EvaluationRecord, FeedbackItem, FeedbackResult, to_utc_iso, utc_now

__all__ = ["MIGRATIONS", "Migration", "SQLiteAuditStore", "feedback_dedup_key"]

logger = logging.getLogger("cds.audit")


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. Versions are 1, 2, 3, ... and each is applied exactly once."""

    version: int
    name: str
    statements: tuple[str, ...]


_V1_STATEMENTS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE evaluation (
        id            INTEGER PRIMARY KEY,
        hook_instance TEXT    NOT NULL,
        attempt       INTEGER NOT NULL,          -- 1, 2, ... for client retries of a hookInstance
        service_id    TEXT    NOT NULL,
        hook          TEXT    NOT NULL,
        client_iss    TEXT,
        tenant        TEXT,
        patient_ref   TEXT,
        user_ref      TEXT,
        encounter_ref TEXT,
        status        INTEGER NOT NULL,
        outcome       TEXT    NOT NULL,
        detail        TEXT,
        duration_ms   REAL    NOT NULL,
        received_at   TEXT    NOT NULL,          -- UTC ISO 8601, fixed width
        written_at    TEXT    NOT NULL,
        writer_pid    INTEGER NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX ux_evaluation_hook_instance ON evaluation (hook_instance, attempt)",
    "CREATE INDEX ix_evaluation_received_at ON evaluation (received_at)",
    "CREATE INDEX ix_evaluation_service ON evaluation (service_id, received_at)",
    """
    CREATE TABLE evaluation_pack (
        evaluation_id INTEGER NOT NULL REFERENCES evaluation (id) ON DELETE CASCADE,
        position      INTEGER NOT NULL,
        pack_id       TEXT    NOT NULL,
        version       TEXT    NOT NULL,
        content_hash  TEXT    NOT NULL,
        shadow        INTEGER NOT NULL,
        PRIMARY KEY (evaluation_id, position)
    )
    """,
    "CREATE INDEX ix_evaluation_pack_pack ON evaluation_pack (pack_id, version)",
    """
    CREATE TABLE card (
        id               INTEGER PRIMARY KEY,
        evaluation_id    INTEGER NOT NULL REFERENCES evaluation (id) ON DELETE CASCADE,
        position         INTEGER NOT NULL,
        uuid             TEXT    NOT NULL,
        service_id       TEXT    NOT NULL,       -- denormalised for per-service/rule analytics
        rule_id          TEXT    NOT NULL,
        pack_id          TEXT    NOT NULL,
        pack_version     TEXT    NOT NULL,
        indicator        TEXT    NOT NULL,
        summary          TEXT    NOT NULL,
        suggestion_uuids TEXT    NOT NULL,       -- JSON array
        shadow           INTEGER NOT NULL
    )
    """,
    "CREATE INDEX ix_card_uuid ON card (uuid)",
    "CREATE INDEX ix_card_evaluation ON card (evaluation_id)",
    "CREATE INDEX ix_card_service_rule ON card (service_id, rule_id, pack_version)",
    """
    CREATE TABLE feedback (
        id                   INTEGER PRIMARY KEY,
        dedup_key            TEXT    NOT NULL,   -- sha256 of the identifying fields, see feedback_dedup_key
        service_id           TEXT    NOT NULL,
        card_uuid            TEXT    NOT NULL,
        outcome              TEXT    NOT NULL,
        accepted_suggestions TEXT    NOT NULL,   -- JSON array, sorted
        reason_system        TEXT,
        reason_code          TEXT,
        reason_display       TEXT,
        user_comment         TEXT,
        outcome_timestamp    TEXT    NOT NULL,
        client_iss           TEXT,
        tenant               TEXT,
        received_at          TEXT    NOT NULL,
        written_at           TEXT    NOT NULL,
        known_card           INTEGER NOT NULL    -- was the card uuid known when this row was written
    )
    """,
    "CREATE UNIQUE INDEX ux_feedback_dedup ON feedback (dedup_key)",
    "CREATE INDEX ix_feedback_card_uuid ON feedback (card_uuid)",
    "CREATE INDEX ix_feedback_received_at ON feedback (received_at)",
    """
    CREATE TABLE audit_reject (
        id         INTEGER PRIMARY KEY,
        kind       TEXT NOT NULL,                -- 'evaluation' | 'feedback'
        payload    TEXT NOT NULL,                -- the record as JSON (best effort)
        error      TEXT NOT NULL,
        written_at TEXT NOT NULL
    )
    """,
)

MIGRATIONS: Final[tuple[Migration, ...]] = (Migration(1, "initial audit schema", _V1_STATEMENTS),)


def _check_migrations(migrations: Sequence[Migration]) -> None:
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise ValueError(f"migration versions must be {expected}, got {[m.version for m in migrations]}")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_EVAL: Final = "evaluation"
_FEEDBACK: Final = "feedback"
_STOP: Final = object()  # queue sentinel, put by close()

def _is_transient(exc: BaseException) -> bool:
    """Errors of the database/environment (retry the batch) vs errors of one record (isolate it).

    Transient: OperationalError (locked, busy, read-only, I/O, disk full, ...), a bare
    DatabaseError (e.g. corruption) and InternalError. Record errors: IntegrityError,
    InterfaceError/ProgrammingError (unbindable value), and non-sqlite errors raised while
    serialising the record (TypeError, AttributeError, ...).
    """
    if isinstance(exc, sqlite3.OperationalError | MemoryError):
        return True
    return type(exc) in (sqlite3.DatabaseError, sqlite3.InternalError)


def feedback_dedup_key(item: FeedbackItem) -> str:
    """Identity of a feedback item: reposting the same item yields the same key."""
    canonical = json.dumps(
        [
            item.card_uuid,
            item.outcome,
            item.outcome_timestamp,
            sorted(item.accepted_suggestions),
            item.reason_system,
            item.reason_code,
            item.user_comment,
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _Ticket:
    """Lets ``record_feedback_wait`` see the per-item results once the batch has committed."""

    __slots__ = ("done", "results")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.results: list[FeedbackResult] = []


@dataclass(slots=True)
class _FeedbackJob:
    items: tuple[FeedbackItem, ...]
    ticket: _Ticket | None = None


_QueueItem = tuple[int, str, Any]  # (sequence number, kind, EvaluationRecord | _FeedbackJob)


@dataclass(slots=True)
class _BatchStats:
    evaluations: int = 0
    packs: int = 0
    cards: int = 0
    feedback: int = 0
    duplicates: int = 0
    unknown_cards: int = 0
    rejected: int = 0
    tickets: list[tuple[_Ticket, list[FeedbackResult]]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.evaluations + self.packs + self.cards + self.feedback + self.rejected


def _record_json(kind: str, payload: Any) -> dict[str, Any]:
    if kind == _EVAL:
        return {"kind": _EVAL, "record": payload.to_dict()}
    return {"kind": _FEEDBACK, "items": [item.to_dict() for item in payload.items]}


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class SQLiteAuditStore:
    """Audit store backed by one SQLite file (shareable by several processes)."""

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 200,
        flush_interval: float = 0.05,
        *,
        busy_timeout: float = 5.0,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        close_timeout: float = 30.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        _check_migrations(migrations)
        self._path = Path(path)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._busy_timeout = busy_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._close_timeout = close_timeout
        self._migrations = tuple(migrations)
        self._schema_version: int | None = None
        self._fault_hook: Callable[[], None] | None = None
        self._init_runtime_state()
        self_ref = weakref.ref(self)

        def _at_exit() -> None:
            store = self_ref()
            if store is not None:
                store.close()

        def _after_fork() -> None:
            store = self_ref()
            if store is not None:
                store._init_runtime_state()

        self._atexit_hook = _at_exit
        atexit.register(_at_exit)  # a clean interpreter exit writes whatever is still queued
        os.register_at_fork(after_in_child=_after_fork)

    def _init_runtime_state(self) -> None:
        """(Re)initialise everything that belongs to one process. Also run in a forked child:
        the parent's queue stays the parent's job, the child must call ``start()`` itself."""
        self._lock = threading.Lock()  # guards (_seq, queue order, _closed)
        self._state_lock = threading.RLock()  # guards start/close
        self._cond = threading.Condition(threading.Lock())  # signals written progress
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._kick = threading.Event()  # cut the batching wait short (flush/close)
        self._resume = threading.Event()  # test hook: cleared = writer paused
        self._resume.set()
        self._abandon = threading.Event()  # set by close() when the db stays unwritable
        self._spill_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._seq = 0  # last sequence number handed out
        self._written_seq = 0  # last sequence number committed
        self._flush_target = 0
        self._pid = os.getpid()
        self._stats: Counter[str] = Counter()
        self._last_error: str | None = None
        self._last_error_at: str | None = None
        self._last_write_at: str | None = None
        self._consecutive_failures = 0
        self._spill_path: Path | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> SQLiteAuditStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        with self._state_lock:
            if self._closed:
                raise RuntimeError("audit store is closed")
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is not None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("audit db %s: could not enable WAL (journal_mode=%s)", self._path, mode)
            self._schema_version = self._migrate(conn)
        finally:
            conn.close()
        self._thread = threading.Thread(target=self._run, name="cds-audit-writer", daemon=True)
        self._thread.start()
        logger.info("audit store started: %s (schema v%s)", self._path, self._schema_version)

    def _migrate(self, conn: sqlite3.Connection) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current: int = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            latest = len(self._migrations)
            if current > latest:
                raise RuntimeError(
                    f"audit db {self._path} has schema v{current}, newer than this code (v{latest})"
                )
            for migration in self._migrations[current:]:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, to_utc_iso(utc_now())),
                )
                logger.info("audit db %s: applied migration v%d (%s)", self._path, migration.version, migration.name)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return max(current, latest)

    def flush(self, timeout: float = 5.0) -> None:
        with self._lock:
            target = self._seq
        if self._written_seq >= target:
            return
        thread = self._thread
        if thread is None:
            raise RuntimeError("audit store not started: call start() before flush()")
        with self._cond:
            self._flush_target = max(self._flush_target, target)
        self._kick.set()
        with self._cond:
            self._cond.wait_for(lambda: self._written_seq >= target or not thread.is_alive(), timeout)
        if self._written_seq >= target:
            return
        if not thread.is_alive():
            raise RuntimeError(f"audit writer stopped; unwritten records went to {self._spill_path}")
        raise TimeoutError(
            f"audit flush timed out after {timeout}s: {target - self._written_seq} queued records "
            f"not yet written (last error: {self._last_error})"
        )

    def close(self, timeout: float | None = None) -> None:
        timeout = self._close_timeout if timeout is None else timeout
        with self._state_lock:
            if self._closed:
                return
            if self._thread is None and self._seq > self._written_seq:
                try:  # records were queued before start(): write them rather than lose them
                    self._start_locked()
                except Exception:
                    logger.exception("audit store %s could not start on close", self._path)
            with self._lock:
                self._closed = True
                if self._thread is not None:
                    self._q.put(_STOP)
            atexit.unregister(self._atexit_hook)
            thread = self._thread
            if thread is None:
                leftovers = self._drain()
                if leftovers:
                    self._spill(leftovers, "store closed before it could start")
                return
            self._resume.set()
            self._kick.set()
            thread.join(timeout)
            if thread.is_alive():
                logger.error(
                    "audit writer could not finish within %.1fs (last error: %s); spilling the queue",
                    timeout,
                    self._last_error,
                )
                self._abandon.set()
                thread.join(max(5.0, self._retry_max + 1.0))
            with self._cond:
                self._cond.notify_all()
            logger.info("audit store closed: %s (%s)", self._path, dict(self._stats))

    # ---------------------------------------------------------------- request path

    def record_evaluation(self, rec: EvaluationRecord) -> None:
        try:
            with self._lock:
                if not self._closed:
                    self._seq += 1
                    self._q.put((self._seq, _EVAL, rec))
                    return
            self._spill([(0, _EVAL, rec)], "record_evaluation after close")
        except Exception:  # never raise into the request path
            logger.exception("audit: could not enqueue evaluation")

    def record_feedback(self, items: list[FeedbackItem]) -> None:
        self._enqueue_feedback(_FeedbackJob(tuple(items)))

    def record_feedback_wait(self, items: list[FeedbackItem], timeout: float = 5.0) -> list[FeedbackResult]:
        """Like ``record_feedback`` but waits for the write and reports per-item results.

        Items not written within ``timeout`` come back as ``stored=False, known_card=None``
        (they stay queued and will still be written).
        """
        job = _FeedbackJob(tuple(items), _Ticket())
        self._enqueue_feedback(job)
        assert job.ticket is not None
        if job.ticket.done.wait(timeout):
            return list(job.ticket.results)
        return [FeedbackResult(card_uuid=item.card_uuid, stored=False, known_card=None) for item in items]

    def _enqueue_feedback(self, job: _FeedbackJob) -> None:
        if not job.items:
            if job.ticket is not None:
                job.ticket.done.set()
            return
        try:
            with self._lock:
                if not self._closed:
                    self._seq += 1
                    self._q.put((self._seq, _FEEDBACK, job))
                    return
            self._spill([(0, _FEEDBACK, job)], "record_feedback after close")
            if job.ticket is not None:  # spilled, not written: report "not stored / unknown"
                job.ticket.results = [FeedbackResult(card_uuid=i.card_uuid, stored=False) for i in job.items]
                job.ticket.done.set()
        except Exception:
            logger.exception("audit: could not enqueue feedback")

    # ---------------------------------------------------------------- test hooks

    def pause_writer(self) -> None:
        """Test hook: the writer stops before its next write (records keep being enqueued)."""
        self._resume.clear()

    def resume_writer(self) -> None:
        """Test hook: undo :meth:`pause_writer`."""
        self._resume.set()

    def set_fault_hook(self, hook: Callable[[], None] | None) -> None:
        """Test hook: called inside every write transaction just before COMMIT; raise to fail it."""
        self._fault_hook = hook

    # ---------------------------------------------------------------- writer thread

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _run(self) -> None:
        batch: list[_QueueItem] = []
        try:
            while True:
                item = self._q.get()
                if item is _STOP:
                    return
                batch = [item]
                stop = self._collect(batch)
                if not self._write_with_retry(batch):
                    self._spill(batch + self._drain(), "database unwritable at close")
                    batch = []
                    return
                batch = []
                if stop:
                    return
        except BaseException:  # a bug here must not lose the queue
            logger.critical("audit writer crashed", exc_info=True)
            self._spill(batch + self._drain(), "audit writer crashed")
        finally:
            if self._conn is not None:
                try:
                    self._conn.close()
                except sqlite3.Error:
                    pass
                self._conn = None
            with self._cond:
                self._cond.notify_all()

    def _collect(self, batch: list[_QueueItem]) -> bool:
        """Fill ``batch`` up to batch_size, waiting at most flush_interval. True if STOP was seen."""
        deadline = time.monotonic() + self._flush_interval
        while True:
            while len(batch) < self._batch_size:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    return True
                batch.append(item)
            if len(batch) >= self._batch_size or self._closed or self._flush_target > self._written_seq:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._kick.wait(remaining)
            self._kick.clear()

    def _drain(self) -> list[_QueueItem]:
        items: list[_QueueItem] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return items
            if item is not _STOP:
                items.append(item)

    def _write_with_retry(self, batch: list[_QueueItem]) -> bool:
        """Write ``batch`` until it succeeds. False only if close() gave up on the database."""
        delay = self._retry_initial
        isolate = False
        while True:
            self._resume.wait()
            if self._abandon.is_set():
                return False
            try:
                stats = self._write_batch(batch, isolate)
            except Exception as exc:
                transient = _is_transient(exc)
                self._note_failure(exc, len(batch), transient)
                if transient:
                    self._drop_connection()
                elif not isolate:
                    isolate = True  # retry at once, record by record, rejecting the bad ones
                    continue
                self._abandon.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self._note_success(batch, stats)
            return True

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _write_batch(self, batch: list[_QueueItem], isolate: bool) -> _BatchStats:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        stats = _BatchStats()
        written_at = to_utc_iso(utc_now())
        conn.execute("BEGIN IMMEDIATE")
        try:
            for _seq, kind, payload in batch:
                if kind == _EVAL:
                    self._write_record(conn, isolate, stats, written_at, _EVAL, payload)
                    continue
                results = [
                    self._write_record(conn, isolate, stats, written_at, _FEEDBACK, item)
                    or FeedbackResult(card_uuid=str(getattr(item, "card_uuid", "")), stored=False)
                    for item in payload.items
                ]
                if payload.ticket is not None:
                    stats.tickets.append((payload.ticket, results))
            if self._fault_hook is not None:
                self._fault_hook()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return stats

    def _write_record(
        self,
        conn: sqlite3.Connection,
        isolate: bool,
        stats: _BatchStats,
        written_at: str,
        kind: str,
        record: Any,
    ) -> FeedbackResult | None:
        """Write one evaluation or feedback item. With ``isolate`` the record gets its own
        savepoint, and a record-level error moves it to ``audit_reject`` (returns None)."""
        if kind == _EVAL:
            def write() -> FeedbackResult | None:
                self._write_evaluation(conn, record, written_at, stats)
                return None
        else:
            def write() -> FeedbackResult | None:
                return self._write_feedback(conn, record, written_at, stats)
        if not isolate:
            return write()
        conn.execute("SAVEPOINT audit_record")
        try:
            result = write()
        except Exception as exc:
            if _is_transient(exc):
                raise
            conn.execute("ROLLBACK TO audit_record")
            conn.execute("RELEASE audit_record")
            self._reject(conn, kind, record, exc, written_at, stats)
            return None
        conn.execute("RELEASE audit_record")
        return result

    def _reject(
        self, conn: sqlite3.Connection, kind: str, record: Any, exc: Exception, written_at: str, stats: _BatchStats
    ) -> None:
        try:
            payload = json.dumps(record.to_dict(), default=str, ensure_ascii=False)
        except Exception:
            payload = json.dumps({"repr": repr(record)})
        error = f"{type(exc).__name__}: {exc}"
        logger.error("audit: rejected an unwritable %s record (%s); kept in audit_reject", kind, error)
        conn.execute(
            "INSERT INTO audit_reject (kind, payload, error, written_at) VALUES (?, ?, ?, ?)",
            (kind, payload, error, written_at),
        )
        stats.rejected += 1

    @staticmethod
    def _write_evaluation(conn: sqlite3.Connection, rec: EvaluationRecord, written_at: str, stats: _BatchStats) -> None:
        cur = conn.execute(
            "INSERT INTO evaluation (hook_instance, attempt, service_id, hook, client_iss, tenant,"
            " patient_ref, user_ref, encounter_ref, status, outcome, detail, duration_ms,"
            " received_at, written_at, writer_pid)"
            " VALUES (?, (SELECT COALESCE(MAX(attempt), 0) + 1 FROM evaluation WHERE hook_instance = ?),"
            " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.hook_instance,
                rec.hook_instance,
                rec.service_id,
                rec.hook,
                rec.client_iss,
                rec.tenant,
                rec.patient_ref,
                rec.user_ref,
                rec.encounter_ref,
                int(rec.status),
                rec.outcome,
                rec.detail,
                float(rec.duration_ms),
                to_utc_iso(rec.received_at),
                written_at,
                os.getpid(),
            ),
        )
        evaluation_id = cur.lastrowid
        if rec.packs:
            conn.executemany(
                "INSERT INTO evaluation_pack (evaluation_id, position, pack_id, version, content_hash, shadow)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(evaluation_id, i, p.id, p.version, p.content_hash, int(p.shadow)) for i, p in enumerate(rec.packs)],
            )
        if rec.cards:
            conn.executemany(
                "INSERT INTO card (evaluation_id, position, uuid, service_id, rule_id, pack_id, pack_version,"
                " indicator, summary, suggestion_uuids, shadow) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        evaluation_id,
                        i,
                        c.uuid,
                        rec.service_id,
                        c.rule_id,
                        c.pack_id,
                        c.pack_version,
                        c.indicator,
                        c.summary,
                        json.dumps(list(c.suggestion_uuids)),
                        int(c.shadow),
                    )
                    for i, c in enumerate(rec.cards)
                ],
            )
        stats.evaluations += 1
        stats.packs += len(rec.packs)
        stats.cards += len(rec.cards)

    @staticmethod
    def _write_feedback(
        conn: sqlite3.Connection, item: FeedbackItem, written_at: str, stats: _BatchStats
    ) -> FeedbackResult:
        known = bool(conn.execute("SELECT EXISTS (SELECT 1 FROM card WHERE uuid = ?)", (item.card_uuid,)).fetchone()[0])
        cur = conn.execute(
            "INSERT INTO feedback (dedup_key, service_id, card_uuid, outcome, accepted_suggestions,"
            " reason_system, reason_code, reason_display, user_comment, outcome_timestamp,"
            " client_iss, tenant, received_at, written_at, known_card)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (dedup_key) DO NOTHING",
            (
                feedback_dedup_key(item),
                item.service_id,
                item.card_uuid,
                item.outcome,
                json.dumps(sorted(item.accepted_suggestions)),
                item.reason_system,
                item.reason_code,
                item.reason_display,
                item.user_comment,
                item.outcome_timestamp,
                item.client_iss,
                item.tenant,
                to_utc_iso(item.received_at),
                written_at,
                int(known),
            ),
        )
        stored = cur.rowcount == 1
        if stored:
            stats.feedback += 1
            if not known:
                stats.unknown_cards += 1
        else:
            stats.duplicates += 1
        return FeedbackResult(card_uuid=item.card_uuid, stored=stored, known_card=known)

    def _note_success(self, batch: list[_QueueItem], stats: _BatchStats) -> None:
        now = to_utc_iso(utc_now())
        counters = self._stats
        counters["batches_written"] += 1
        counters["rows_written"] += stats.rows
        counters["evaluations_written"] += stats.evaluations
        counters["cards_written"] += stats.cards
        counters["feedback_written"] += stats.feedback
        counters["feedback_duplicates"] += stats.duplicates
        counters["feedback_unknown_card"] += stats.unknown_cards
        counters["rejected"] += stats.rejected
        if self._consecutive_failures:
            logger.warning("audit writes recovered after %d failed attempts", self._consecutive_failures)
        self._consecutive_failures = 0
        self._last_write_at = now
        for ticket, results in stats.tickets:
            ticket.results = results
            ticket.done.set()
        with self._cond:
            self._written_seq = batch[-1][0]
            self._cond.notify_all()

    def _note_failure(self, exc: Exception, batch_len: int, transient: bool) -> None:
        self._stats["write_failures"] += 1
        self._consecutive_failures += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._last_error_at = to_utc_iso(utc_now())
        log = logger.warning if transient and self._consecutive_failures > 1 else logger.error
        log(
            "audit write of %d queued records failed (attempt %d, %s); will retry: %s",
            batch_len,
            self._consecutive_failures,
            "retrying with backoff" if transient else "isolating bad records",
            self._last_error,
            exc_info=self._consecutive_failures == 1,
        )

    # ---------------------------------------------------------------- spill (last resort)

    def _spill(self, items: list[_QueueItem], reason: str) -> None:
        if not items:
            return
        path = self._path.with_name(f"{self._path.name}.spill-{os.getpid()}.jsonl")
        with self._spill_lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    for _seq, kind, payload in items:
                        fh.write(json.dumps(_record_json(kind, payload), default=str, ensure_ascii=False) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                self._spill_path = path
                self._stats["spilled"] += len(items)
                logger.error(
                    "audit: %d records spilled to %s (%s); replay with replay_spill()", len(items), path, reason
                )
            except Exception:
                logger.critical("audit: could not spill %d records (%s); dumping them to the log", len(items), reason)
                for _seq, kind, payload in items:
                    logger.critical("audit unwritten record: %r", payload)

    def replay_spill(self, path: str | Path) -> int:
        """Re-enqueue the records of a spill file; returns how many. Delete the file after flush()."""
        count = 0
        with Path(path).open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                data = json.loads(line)
                if data["kind"] == _EVAL:
                    self.record_evaluation(EvaluationRecord.from_dict(data["record"]))
                else:
                    self.record_feedback([FeedbackItem.from_dict(i) for i in data["items"]])
                count += 1
        return count

    # ---------------------------------------------------------------- queries

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if not self._path.exists():
            raise FileNotFoundError(f"audit db {self._path} does not exist (start() creates it)")
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA query_only = ON")
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _limit(limit: int | None) -> int:
        return -1 if limit is None else int(limit)

    def evaluations(self, limit: int | None = 100, service_id: str | None = None) -> list[dict[str, Any]]:
        where = "WHERE service_id = ?" if service_id is not None else ""
        params: tuple[Any, ...] = ((service_id,) if service_id is not None else ()) + (self._limit(limit),)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT e.*, (SELECT COUNT(*) FROM card c WHERE c.evaluation_id = e.id) AS card_count"
                f" FROM evaluation e {where} ORDER BY e.id DESC LIMIT ?",
                params,
            ).fetchall()
            packs: dict[int, list[dict[str, Any]]] = {}
            for p in conn.execute(
                f"SELECT * FROM evaluation_pack WHERE evaluation_id IN"
                f" (SELECT id FROM evaluation {where} ORDER BY id DESC LIMIT ?) ORDER BY evaluation_id, position",
                params,
            ):
                packs.setdefault(p["evaluation_id"], []).append({
                    "id": p["pack_id"],
                    "version": p["version"],
                    "content_hash": p["content_hash"],
                    "shadow": bool(p["shadow"]),
                })
        return [dict(r) | {"packs": packs.get(r["id"], [])} for r in rows]

    def cards_for(self, hook_instance: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT c.uuid, c.rule_id, c.pack_id, c.pack_version, c.indicator, c.summary,"
                " c.suggestion_uuids, c.shadow, c.position, e.id AS evaluation_id, e.hook_instance,"
                " e.attempt, e.service_id, e.received_at"
                " FROM card c JOIN evaluation e ON e.id = c.evaluation_id"
                " WHERE e.hook_instance = ? ORDER BY e.attempt, c.position",
                (hook_instance,),
            ).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["suggestion_uuids"] = json.loads(d["suggestion_uuids"])
            d["shadow"] = bool(d["shadow"])
            out.append(d)
        return out

    def feedback(self, limit: int | None = 1000) -> list[dict[str, Any]]:
        """Most recent first. ``known_card`` is as decided when the row was written; the link
        (``hook_instance``, ``rule_id``, ...) is resolved at query time, so it also shows a card
        that was written after its feedback (e.g. by another worker process)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT f.id, f.service_id, f.card_uuid, f.outcome, f.accepted_suggestions,"
                " f.reason_system, f.reason_code, f.reason_display, f.user_comment, f.outcome_timestamp,"
                " f.client_iss, f.tenant, f.received_at, f.written_at, f.known_card,"
                " e.hook_instance, e.attempt, c.rule_id, c.pack_id, c.pack_version"
                " FROM feedback f"
                " LEFT JOIN card c ON c.id = (SELECT MIN(c2.id) FROM card c2 WHERE c2.uuid = f.card_uuid)"
                " LEFT JOIN evaluation e ON e.id = c.evaluation_id"
                " ORDER BY f.id DESC LIMIT ?",
                (self._limit(limit),),
            ).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["accepted_suggestions"] = json.loads(d["accepted_suggestions"])
            d["known_card"] = bool(d["known_card"])
            out.append(d)
        return out

    def analytics(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Per (service, pack, pack version, rule), counting distinct cards shown since ``since``.

        A card's outcome is its *latest* feedback (a user who changed their mind counts once, as
        their final decision). ``acceptance_rate`` = accepted / (accepted + overridden), None if
        no feedback. ``override_reasons`` counts the reasons of cards whose final outcome is an
        override. Shadow cards (never shown) are only counted in ``shadow_cards``.
        """
        since_iso = to_utc_iso(since) if since is not None else None
        with self._read() as conn:
            rows = conn.execute(
                """
                WITH shown AS (
                    SELECT DISTINCT e.service_id, c.pack_id, c.pack_version, c.rule_id, c.uuid, c.shadow
                    FROM card c JOIN evaluation e ON e.id = c.evaluation_id
                    WHERE (:since IS NULL OR e.received_at >= :since)
                ),
                latest AS (
                    SELECT card_uuid, outcome, reason_system, reason_code, reason_display FROM (
                        SELECT f.*, ROW_NUMBER() OVER (PARTITION BY f.card_uuid ORDER BY f.id DESC) AS rn
                        FROM feedback f WHERE f.card_uuid IN (SELECT uuid FROM shown)
                    ) WHERE rn = 1
                )
                SELECT s.service_id, s.pack_id, s.pack_version, s.rule_id, s.shadow,
                       l.outcome, l.reason_system, l.reason_code, l.reason_display
                FROM shown s LEFT JOIN latest l ON l.card_uuid = s.uuid
                """,
                {"since": since_iso},
            ).fetchall()
        groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        reasons: dict[tuple[str, str, str, str], Counter[tuple[str | None, str | None]]] = {}
        displays: dict[tuple[str | None, str | None], str | None] = {}
        for r in rows:
            key = (r["service_id"], r["pack_id"], r["pack_version"], r["rule_id"])
            g = groups.get(key)
            if g is None:
                g = groups[key] = {
                    "service_id": key[0], "pack_id": key[1], "pack_version": key[2], "rule_id": key[3],
                    "cards_shown": 0, "shadow_cards": 0, "accepted": 0, "overridden": 0, "no_feedback": 0,
                }
                reasons[key] = Counter()
            if r["shadow"]:
                g["shadow_cards"] += 1
                continue
            g["cards_shown"] += 1
            if r["outcome"] == "accepted":
                g["accepted"] += 1
            elif r["outcome"] == "overridden":
                g["overridden"] += 1
                if r["reason_code"] is not None or r["reason_system"] is not None:
                    reason = (r["reason_system"], r["reason_code"])
                    reasons[key][reason] += 1
                    displays.setdefault(reason, r["reason_display"])
            else:
                g["no_feedback"] += 1
        out = []
        for key in sorted(groups):
            g = groups[key]
            decided = g["accepted"] + g["overridden"]
            g["acceptance_rate"] = g["accepted"] / decided if decided else None
            g["override_reasons"] = [
                {"system": system, "code": code, "display": displays.get((system, code)), "count": n}
                for (system, code), n in sorted(reasons[key].items(), key=lambda kv: (-kv[1], str(kv[0])))
            ]
            out.append(g)
        return out

    def counts(self) -> dict[str, int]:
        """Row count of every audit table (for tests, the CLI and health checks)."""
        with self._read() as conn:
            return {
                table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
                for table in ("evaluation", "evaluation_pack", "card", "feedback", "audit_reject")
            }

    def schema_versions(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM schema_version ORDER BY version")]

    def health(self) -> dict[str, Any]:
        thread = self._thread
        alive = thread is not None and thread.is_alive()
        return {
            "ok": alive and self._consecutive_failures == 0 and not self._abandon.is_set(),
            "db_path": str(self._path),
            "schema_version": self._schema_version,
            "started": thread is not None,
            "writer_alive": alive,
            "paused": not self._resume.is_set(),
            "closed": self._closed,
            "queue_depth": self._seq - self._written_seq,
            "enqueued": self._seq,
            "rows_written": self._stats["rows_written"],
            "evaluations_written": self._stats["evaluations_written"],
            "cards_written": self._stats["cards_written"],
            "feedback_written": self._stats["feedback_written"],
            "feedback_duplicates": self._stats["feedback_duplicates"],
            "feedback_unknown_card": self._stats["feedback_unknown_card"],
            "rejected": self._stats["rejected"],
            "batches_written": self._stats["batches_written"],
            "write_failures": self._stats["write_failures"],
            "consecutive_failures": self._consecutive_failures,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "last_write_at": self._last_write_at,
            "spilled": self._stats["spilled"],
            "spill_path": str(self._spill_path) if self._spill_path else None,
        }
