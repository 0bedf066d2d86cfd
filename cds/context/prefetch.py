"""Where patient data comes from: the request's prefetch, else the EHR's FHIR server.

For each prefetch key a service declares (CDS Hooks 2.0.1 §Prefetch):
present with data → use it; present as ``null`` → no data (never refetched);
an OperationOutcome → a fetch error; absent → GET it from ``fhirServer``.
Required data that cannot be had is a :class:`PreconditionFailed` (HTTP 412).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from cds.context.fhir import FhirClient, FhirError, FhirTarget
from cds.hooks.models import HookRequest
from cds.hooks.services import TOKEN, ServiceDefinition
from cds.settings import FhirSettings

KeyStatus = Literal["prefetch", "fetched", "null", "error", "unavailable"]


@dataclass
class KeyResult:
    key: str
    status: KeyStatus
    resources: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None


class PreconditionFailed(Exception):
    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


def render_template(template: str, context: dict[str, Any]) -> str | None:
    """Render 2.0 prefetch tokens; None when a token cannot be resolved."""
    user = context.get("userId")
    user_type, _, user_id = (user if isinstance(user, str) else "").partition("/")
    user_tokens = {
        "userPractitionerId": user_id if user_type == "Practitioner" else None,
        "userPractitionerRoleId": user_id if user_type == "PractitionerRole" else None,
        "userPatientId": user_id if user_type == "Patient" else None,
        "userRelatedPersonId": user_id if user_type == "RelatedPerson" else None,
    }
    failed = False

    def sub(m: Any) -> str:
        nonlocal failed
        tok = m.group(1)
        if tok in user_tokens:
            val = user_tokens[tok]
        elif tok.startswith("context."):
            val = context.get(tok[len("context."):])
        else:
            val = None
        if val is None or isinstance(val, (dict, list)):
            failed = True
            return ""
        return str(val)

    out = TOKEN.sub(sub, template)
    if failed or "{{" in out or "}}" in out:
        return None  # an unresolved or malformed token is never sent to the FHIR server
    return out


def resources_of(value: Any) -> list[dict[str, Any]]:
    """A resource or a Bundle → list of resources (Bundle entries flattened)."""
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        return [
            e["resource"]
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            and isinstance(e["resource"].get("resourceType"), str)
        ]
    if value.get("resourceType") == "_NotFound":
        return []
    return [value] if isinstance(value.get("resourceType"), str) else []


def _allowed(url: str, prefixes: list[str]) -> bool:
    return any(p == "*" or url == p.rstrip("/") or url.startswith(p.rstrip("/") + "/") for p in prefixes)


class DataResolver:
    def __init__(self, client: FhirClient, settings: FhirSettings) -> None:
        self._client = client
        self._settings = settings

    def _target(self, req: HookRequest) -> tuple[FhirTarget | None, str]:
        if not req.fhirServer:
            return None, "no fhirServer in the request"
        if req.fhirAuthorization is not None:
            if not _allowed(req.fhirServer, self._settings.allowed_servers):
                return None, "fhirServer is not on this service's allow-list"
            return FhirTarget(req.fhirServer, req.fhirAuthorization.access_token), ""
        if _allowed(req.fhirServer, self._settings.open_servers):
            return FhirTarget(req.fhirServer, None), ""
        return None, "no fhirAuthorization, and fhirServer is not an allow-listed open server"

    async def resolve(self, req: HookRequest, service: ServiceDefinition) -> dict[str, KeyResult]:
        prefetch = req.prefetch or {}
        results: dict[str, KeyResult] = {}
        to_fetch: dict[str, str] = {}
        for key, spec in service.prefetch.items():
            if key in prefetch:
                val = prefetch[key]
                if val is None:
                    results[key] = KeyResult(key, "null")
                elif isinstance(val, dict) and val.get("resourceType") == "OperationOutcome":
                    results[key] = KeyResult(key, "error", reason="the client's prefetch reported an error")
                elif isinstance(val, dict) and isinstance(val.get("resourceType"), str):
                    results[key] = KeyResult(key, "prefetch", resources_of(val))
                else:
                    results[key] = KeyResult(key, "error", reason="prefetch value is not a FHIR resource")
                continue
            rendered = render_template(spec.template, req.context)
            if rendered is None:
                results[key] = KeyResult(key, "unavailable", reason="prefetch template has an unresolved token")
            else:
                to_fetch[key] = rendered
        if to_fetch:
            target, why = self._target(req)
            if target is None:
                for key in to_fetch:
                    results[key] = KeyResult(key, "unavailable", reason=why)
            else:
                await self._fetch_all(target, to_fetch, results)
        missing = {
            k: r.reason or r.status
            for k, r in results.items()
            if r.status in ("error", "unavailable") and service.prefetch[k].required
        }
        if missing:
            raise PreconditionFailed(missing)
        return results

    async def _fetch_all(
        self, target: FhirTarget, to_fetch: dict[str, str], results: dict[str, KeyResult]
    ) -> None:
        async def one(key: str, rel: str) -> KeyResult:
            try:
                return KeyResult(key, "fetched", resources_of(await self._client.get(target, rel)))
            except FhirError as e:
                return KeyResult(key, "error", reason=e.reason)

        tasks = {k: asyncio.ensure_future(one(k, rel)) for k, rel in to_fetch.items()}
        done, pending = await asyncio.wait(tasks.values(), timeout=self._settings.timeout_seconds)
        for t in pending:
            t.cancel()
        for key, task in tasks.items():
            if task in done and not task.cancelled() and task.exception() is None:
                results[key] = task.result()
            else:
                results[key] = KeyResult(key, "error", reason="FHIR fetch deadline exceeded")
