"""HTTP API (thin): CDS Hooks discovery, service calls and feedback, plus operations endpoints.

Flow per call: authenticate → parse and validate → resolve prefetch/FHIR data (context) →
:func:`cds.pipeline.evaluate` (engine → cards) → answer → audit (off the request path).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import signal
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cds.api.auth import AuthError, ClientIdentity
from cds.api.errors import operation_outcome, validation_issues
from cds.api.observability import configure_logging
from cds.audit.models import CardRecord, EvaluationRecord, FeedbackItem, PackRef
from cds.context.prefetch import PreconditionFailed
from cds.hooks.models import CONTEXT_MODELS, FeedbackRequest, HookRequest
from cds.pipeline import evaluate
from cds.settings import Settings
from cds.state import AppState, load_or_raise

log = logging.getLogger("cds.api")
MAX_BODY = 5 * 1024 * 1024
LOCALE_EXT = "org.cdsrules.locale"
NOW_EXT = "org.cdsrules.now"
EXPLAIN_EXT = "org.cdsrules.explain"


def create_app(settings: Settings, *, state: AppState | None = None, watch: bool = False, workers: int = 1) -> FastAPI:
    configure_logging(settings.log_level)
    if state is None:
        state = AppState(settings, load_or_raise(settings), workers=workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, state.reload))
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests) or no signals on this platform
        watcher = asyncio.create_task(state.watch()) if watch else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            await state.aclose()

    app = FastAPI(
        title="CDS rules service",
        version="0.1.0",
        description="CDS Hooks 2.0.1 service evaluating versioned clinical rule packs.",
        lifespan=lifespan,
    )
    app.state.cds = state
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )

    @app.exception_handler(RequestValidationError)
    async def _rv(request: Request, exc: RequestValidationError) -> JSONResponse:
        return operation_outcome(400, [("invalid", str(e.get("msg"))) for e in exc.errors()][:20])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 401:
            return Response(status_code=401)
        return operation_outcome(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return operation_outcome(500, "internal error; the incident is logged")

    def audience(request: Request) -> str:
        base = settings.public_base_url
        if base:
            return base.rstrip("/") + request.url.path
        return str(request.url.replace(query="", fragment=""))

    async def authenticate(request: Request) -> ClientIdentity | Response:
        try:
            return await state.verifier.verify(request.headers.get("authorization"), audience(request))
        except AuthError as e:
            log.warning("client authentication failed", extra={"detail": e.reason, "path": request.url.path})
            return Response(status_code=401)
        except Exception:  # e.g. the replay cache's database: our fault, not the client's
            log.exception("client authentication could not be completed", extra={"path": request.url.path})
            return operation_outcome(503, "authentication temporarily unavailable")

    async def read_json(request: Request) -> Any | Response:
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", "application/fhir+json", ""):
            return operation_outcome(415, f"Content-Type must be application/json, not {ctype}")
        body = await request.body()
        if len(body) > MAX_BODY:
            return operation_outcome(413, f"request body larger than {MAX_BODY} bytes")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return operation_outcome(400, f"body is not valid JSON: {e}")

    # ------------------------------------------------------------------ discovery

    @app.get("/cds-services", tags=["CDS Hooks"], summary="Discovery")
    async def discovery(request: Request) -> Response:
        ident = await authenticate(request)
        if isinstance(ident, Response):
            return ident
        return JSONResponse(state.ruleset.services.discovery())

    # ------------------------------------------------------------------ service call

    @app.post(
        "/cds-services/{service_id}",
        tags=["CDS Hooks"],
        summary="Call a CDS service",
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}},
    )
    async def call_service(service_id: str, request: Request) -> Response:
        t0 = time.perf_counter()
        received = datetime.now(timezone.utc)
        ident = await authenticate(request)
        if isinstance(ident, Response):
            return ident
        ruleset = state.ruleset  # one snapshot for the whole call
        service = ruleset.services.get(service_id)
        if service is None:
            return operation_outcome(404, f"no CDS service with id {service_id!r}")
        raw = await read_json(request)
        if isinstance(raw, Response):
            return raw
        audit: dict[str, Any] = {"service": service_id, "ident": ident, "received": received, "t0": t0}
        if not isinstance(raw, dict):
            return finish(audit, None, operation_outcome(400, "body must be a JSON object"), "bad-request")
        try:
            req = HookRequest.model_validate(raw)
        except ValidationError as e:
            return finish(audit, raw, operation_outcome(400, validation_issues(e)), "bad-request")
        audit["request"] = req
        if req.hook not in service.hooks:
            return finish(
                audit, raw, operation_outcome(400, f"service {service_id!r} does not handle hook {req.hook!r} (handles: {', '.join(service.hooks)})"), "bad-request"
            )
        try:
            ctx_model = CONTEXT_MODELS[req.hook].model_validate(req.context)
        except ValidationError as e:
            return finish(audit, raw, operation_outcome(400, validation_issues(e, "context.")), "bad-request")
        try:
            data = await state.resolver.resolve(req, service)
        except PreconditionFailed as e:
            for _ in e.problems:
                state.metrics.fhir.labels("failed").inc()
            issues = [("not-found", f"prefetch key {k!r}: {why}") for k, why in e.problems.items()]
            return finish(audit, raw, operation_outcome(412, issues, expression=[f"prefetch.{k}" for k in e.problems]), "precondition-failed")
        for r in data.values():
            state.metrics.fhir.labels(r.status).inc()
        ext = req.extension or {}
        locale = _locale(ext.get(LOCALE_EXT)) or _locale(ident.client.locale if ident.client else None) or service.locale or settings.default_locale
        now = received
        if settings.allow_now_override and isinstance(ext.get(NOW_EXT), str):
            try:
                now = datetime.fromisoformat(ext[NOW_EXT].replace("Z", "+00:00"))
            except ValueError:
                return finish(audit, raw, operation_outcome(400, f"extension {NOW_EXT} is not an ISO date-time"), "bad-request")
        resources = [res for r in data.values() for res in r.resources]
        gaps = [f"prefetch key {k!r}: {r.status}{' (' + r.reason + ')' if r.reason else ''}" for k, r in data.items() if r.status in ("null", "error", "unavailable")]
        result = evaluate(
            ruleset,
            service,
            hook=req.hook,
            context=ctx_model.model_dump(mode="json"),
            resources=resources,
            now=now,
            locale=locale,
            explain=ext.get(EXPLAIN_EXT) is True,
            gaps=gaps,
        )
        body = result.response.wire()
        audit["result"] = result
        for card, f in result.cards:
            state.metrics.cards.labels(service_id, f.rule.id, card.indicator).inc()
        return finish(audit, raw, JSONResponse(body), "ok")

    def finish(audit: dict[str, Any], raw: Any, resp: Response, outcome: str) -> Response:
        duration = (time.perf_counter() - audit["t0"]) * 1000
        service_id = audit["service"]
        req: HookRequest | None = audit.get("request")
        hook = req.hook if req else (raw.get("hook") if isinstance(raw, dict) and isinstance(raw.get("hook"), str) else "?")
        hook_instance = req.hookInstance if req else (
            raw.get("hookInstance") if isinstance(raw, dict) and isinstance(raw.get("hookInstance"), str) else None
        )
        ident: ClientIdentity = audit["ident"]
        result = audit.get("result")
        state.metrics.requests.labels(service_id, hook[:40], str(resp.status_code)).inc()
        state.metrics.latency.labels(service_id, str(resp.status_code)).observe(duration / 1000)
        ctx = req.context if req else {}
        detail = None
        if resp.status_code >= 400 and isinstance(resp, JSONResponse):
            try:
                detail = "; ".join(i.get("diagnostics", "") for i in orjson.loads(resp.body)["issue"])[:1000]
            except (ValueError, KeyError, TypeError):
                detail = None
        rec = EvaluationRecord(
            hook_instance=(hook_instance or "(none)")[:256],
            service_id=service_id,
            hook=hook[:64],
            client_iss=ident.iss,
            tenant=ident.tenant,
            patient_ref=_ref("Patient", ctx.get("patientId")),
            user_ref=ctx.get("userId") if isinstance(ctx.get("userId"), str) else None,
            encounter_ref=_ref("Encounter", ctx.get("encounterId")),
            packs=[PackRef(p.id, p.version, p.content_hash, sh) for p, sh in (result.packs if result else [])],
            cards=_card_records(result),
            status=resp.status_code,
            outcome=outcome,
            detail=detail,
            duration_ms=round(duration, 3),
            received_at=audit["received"],
        )
        state.audit.record_evaluation(rec)
        log.info(
            "cds call",
            extra={
                "request_id": hook_instance, "service": service_id, "hook": hook, "status": resp.status_code,
                "duration_ms": round(duration, 3), "cards": len(rec.cards), "client": ident.iss, "tenant": ident.tenant,
                "outcome": outcome,
            },
        )
        return resp

    # ------------------------------------------------------------------ feedback

    @app.post("/cds-services/{service_id}/feedback", tags=["CDS Hooks"], summary="Card feedback")
    async def feedback(service_id: str, request: Request) -> Response:
        ident = await authenticate(request)
        if isinstance(ident, Response):
            return ident
        if state.ruleset.services.get(service_id) is None:
            return operation_outcome(404, f"no CDS service with id {service_id!r}")
        raw = await read_json(request)
        if isinstance(raw, Response):
            return raw
        try:
            fb = FeedbackRequest.model_validate(raw)
        except ValidationError as e:
            return operation_outcome(400, validation_issues(e))
        now = datetime.now(timezone.utc)
        items = [
            FeedbackItem.from_cds(service_id, e.model_dump(mode="json", exclude_none=True), client_iss=ident.iss, tenant=ident.tenant, received_at=now)
            for e in fb.feedback
        ]
        state.audit.record_feedback(items)
        for e in fb.feedback:
            state.metrics.feedback.labels(service_id, e.outcome).inc()
        return JSONResponse({})

    # ------------------------------------------------------------------ operations

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> Response:
        body = state.readiness()
        return JSONResponse(body, status_code=200)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload", tags=["operations"])
    async def reload(request: Request) -> Response:
        if not _admin_ok(request, settings):
            return Response(status_code=401)
        status = await asyncio.to_thread(state.reload)
        return JSONResponse(status.__dict__, status_code=200 if status.ok else 422)

    return app


def _admin_ok(request: Request, settings: Settings) -> bool:
    if settings.admin_token_sha256:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return False
        digest = hashlib.sha256(auth[7:].strip().encode()).hexdigest()
        return hmac.compare_digest(digest, settings.admin_token_sha256.lower())
    host = request.client.host if request.client else ""
    return host in ("127.0.0.1", "::1", "localhost")


def _locale(v: Any) -> str | None:
    return v if v in ("nb", "en") else None


def _ref(kind: str, v: Any) -> str | None:
    return f"{kind}/{v}" if isinstance(v, str) and v else None


def _card_records(result: Any) -> list[CardRecord]:
    if result is None:
        return []
    out = []
    for cards, shadow in ((result.cards, False), (result.shadow_cards, True)):
        for card, f in cards:
            out.append(
                CardRecord(
                    uuid=card.uuid,
                    rule_id=f.rule.id,
                    pack_id=f.pack.id,
                    pack_version=f.pack.version,
                    indicator=card.indicator,
                    summary=card.summary,
                    suggestion_uuids=[s.uuid for s in card.suggestions or []],
                    shadow=shadow,
                )
            )
    return out
