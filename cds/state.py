"""Explicit application state: settings, the live rule set, and the services around it.

No module globals: :func:`cds.api.app.create_app` builds one :class:`AppState` and hangs it on
``app.state.cds``. Reload builds a new :class:`RuleSet` and swaps one reference.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from cds.api.auth import JWTVerifier, MemoryReplayCache, ReplayCache, SQLiteReplayCache
from cds.api.observability import Metrics
from cds.audit.sqlite import SQLiteAuditStore
from cds.audit.store import AuditStore
from cds.context.fhir import FhirClient
from cds.context.prefetch import DataResolver
from cds.engine.registry import RuleSet, load_ruleset
from cds.settings import Settings
from cds.yamlio import Problem

log = logging.getLogger("cds.state")


class RuleSetError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{sum(p.severity == 'error' for p in problems)} problem(s) in the rule set")
        self.problems = problems


@dataclass
class ReloadStatus:
    ok: bool
    at: str
    problems: list[str] = field(default_factory=list)
    packs: list[str] = field(default_factory=list)


def load_or_raise(settings: Settings) -> RuleSet:
    rs, problems = load_ruleset(settings.hooks_dir, settings.rules_dir, settings.knowledge_dir)
    if rs is None:
        raise RuleSetError(problems)
    return rs


def tree_signature(*dirs: Path) -> tuple[tuple[str, float, int], ...]:
    sig = []
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.rglob("*")):
                if p.is_file():
                    st = p.stat()
                    sig.append((str(p), st.st_mtime, st.st_size))
    return tuple(sig)


class AppState:
    def __init__(self, settings: Settings, ruleset: RuleSet, *, audit: AuditStore | None = None, workers: int = 1) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.metrics = Metrics()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.fhir.timeout_seconds),
            limits=httpx.Limits(max_connections=settings.fhir.max_connections, max_keepalive_connections=20),
            follow_redirects=False,
        )
        self.audit: AuditStore = audit or SQLiteAuditStore(settings.audit.path)
        settings.audit.path.parent.mkdir(parents=True, exist_ok=True)
        replay: ReplayCache
        if workers > 1:
            replay = SQLiteReplayCache(Path(str(settings.audit.path) + ".jti"))
        else:
            replay = MemoryReplayCache()
        self.verifier = JWTVerifier(settings.auth, self.http, replay)
        self.resolver = DataResolver(FhirClient(self.http, settings.fhir.max_pages), settings.fhir)
        self.last_reload = ReloadStatus(ok=True, at=_now(), packs=[p.key for p in ruleset.all_packs()])
        self._reload_lock = threading.Lock()
        self.started = time.time()

    def start(self) -> None:
        self.audit.start()
        if not self.settings.auth.enabled:
            log.warning("client authentication is DISABLED (CDS_AUTH__ENABLED=false): development use only")

    async def aclose(self) -> None:
        await self.http.aclose()
        self.audit.close()

    def reload(self) -> ReloadStatus:
        """Validate the whole new rule set first; swap only if it has no errors."""
        with self._reload_lock:
            try:
                new = load_or_raise(self.settings)
            except RuleSetError as e:
                self.last_reload = ReloadStatus(False, _now(), [str(p) for p in e.problems if p.severity == "error"])
                self.metrics.reloads.labels("failed").inc()
                log.error("pack reload rejected; the running rule set keeps serving", extra={"detail": self.last_reload.problems[:20]})
                return self.last_reload
            except Exception as e:  # an unexpected loader bug must not take the service down
                self.last_reload = ReloadStatus(False, _now(), [f"internal error during reload: {type(e).__name__}: {e}"])
                self.metrics.reloads.labels("failed").inc()
                log.exception("pack reload crashed; the running rule set keeps serving")
                return self.last_reload
            self.ruleset = new  # atomic reference swap: in-flight requests keep the old set
            self.last_reload = ReloadStatus(True, _now(), packs=[p.key for p in new.all_packs()])
            self.metrics.reloads.labels("ok").inc()
            log.info("rule set reloaded", extra={"packs": self.last_reload.packs})
            return self.last_reload

    async def watch(self, interval: float = 2.0) -> None:
        """--reload-packs: poll hooks/, rules/ and knowledge/ and reload on change."""
        s = self.settings
        sig = tree_signature(s.hooks_dir, s.rules_dir, s.knowledge_dir)
        while True:
            await asyncio.sleep(interval)
            new = tree_signature(s.hooks_dir, s.rules_dir, s.knowledge_dir)
            if new != sig:
                sig = new
                await asyncio.to_thread(self.reload)

    def readiness(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.last_reload.ok else "degraded",
            "packs": [p.key for p in self.ruleset.all_packs()],
            "services": sorted(self.ruleset.services.services),
            "ruleSetLoadedAt": self.ruleset.loaded_at.isoformat(),
            "lastReload": self.last_reload.__dict__,
            "audit": self.audit.health(),
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
