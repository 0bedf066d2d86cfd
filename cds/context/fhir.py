"""Async FHIR R4 client for prefetch fallback (httpx, pooled, deadline-bound).

Only ever sends the client's bearer token to the ``fhirServer`` it came with: searchset ``next``
links that point elsewhere are not followed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx


class FhirError(Exception):
    """A fetch that failed; ``reason`` is safe to return to the client (no token inside)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FhirTarget:
    base: str
    token: str | None  # never logged

    def __repr__(self) -> str:
        return f"FhirTarget(base={self.base!r}, token={'***' if self.token else None})"


class FhirClient:
    def __init__(self, http: httpx.AsyncClient, max_pages: int = 10) -> None:
        self._http = http
        self._max_pages = max_pages

    async def get(self, target: FhirTarget, relative: str) -> dict[str, Any]:
        """GET ``{base}/{relative}``; follows searchset ``next`` links up to ``max_pages``."""
        url = f"{target.base}/{relative.lstrip('/')}"
        first = await self._get_json(target, url)
        if first.get("resourceType") != "Bundle":
            return first
        entries = list(first.get("entry") or [])
        page = first
        for _ in range(self._max_pages - 1):
            nxt = next((lk.get("url") for lk in page.get("link") or [] if lk.get("relation") == "next"), None)
            if not nxt:
                break
            if not str(nxt).startswith(target.base + "/") and not str(nxt).startswith(target.base + "?"):
                raise FhirError("searchset next link points outside fhirServer; not followed")
            page = await self._get_json(target, str(nxt))
            if page.get("resourceType") != "Bundle":
                raise FhirError("next page is not a Bundle")
            entries.extend(page.get("entry") or [])
        else:
            if any(lk.get("relation") == "next" for lk in page.get("link") or []):
                raise FhirError(f"more than {self._max_pages} pages of results")
        merged = dict(first)
        merged["entry"] = entries
        merged.pop("link", None)
        return merged

    async def _get_json(self, target: FhirTarget, url: str) -> dict[str, Any]:
        headers = {"Accept": "application/fhir+json"}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        try:
            resp = await self._http.get(url, headers=headers, follow_redirects=False)
        except httpx.TimeoutException as e:
            raise FhirError("FHIR server timed out") from e
        except httpx.HTTPError as e:
            raise FhirError(f"FHIR server unreachable ({type(e).__name__})") from e
        except asyncio.CancelledError:
            raise
        if resp.status_code == 404:
            return {"resourceType": "_NotFound"}
        if resp.status_code >= 400:
            raise FhirError(f"FHIR server answered HTTP {resp.status_code}")
        try:
            body = resp.json()
        except ValueError as e:
            raise FhirError("FHIR server answered with invalid JSON") from e
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirError("FHIR server answered with something that is not a FHIR resource")
        if body["resourceType"] == "OperationOutcome":
            raise FhirError("FHIR server answered with an OperationOutcome")
        return body
