"""Errors as FHIR OperationOutcome bodies (CDS Hooks 3.0 recommends them for non-2xx)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

FHIR_JSON = "application/fhir+json"


def operation_outcome(status: int, issues: list[tuple[str, str]] | str, *, expression: list[str] | None = None) -> JSONResponse:
    """``issues``: (code, diagnostics) pairs, or one diagnostics string."""
    if isinstance(issues, str):
        code = {400: "invalid", 404: "not-found", 412: "not-found", 413: "too-costly", 415: "not-supported", 503: "transient"}.get(
            status, "exception"
        )
        issues = [(code, issues)]
    body: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": code, "diagnostics": diag, **({"expression": expression} if expression else {})}
            for code, diag in issues
        ],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def validation_issues(e: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in e.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "body")
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "required field missing"
        out.append(("required" if err["type"] == "missing" else "invalid", f"{where}: {msg}"))
    return out[:50]
