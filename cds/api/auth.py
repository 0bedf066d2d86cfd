"""Authentication of CDS Clients by the signed JWT they send (CDS Hooks 2.0.1 "Trusting CDS Clients").

Order of checks (nothing in the token is trusted before its signature is verified):

1. ``Authorization: Bearer <compact JWS>``; the header is decoded without being trusted.
2. ``alg`` in {ES384, RS384}; ``typ`` == "JWT"; ``kid`` present; no ``crit``/``b64``.
3. ``iss`` (unverified) names a configured :class:`TrustedClient`.
4. A ``jku`` header must be on that client's allow-list (exact match); otherwise reject with
   no HTTP request at all.
5. Key by ``kid``: the client's inline JWK Set first, else the allow-listed ``jku`` (cached).
6. Key type must fit ``alg`` (EC P-384 for ES384, RSA >= 2048 bits for RS384); verify signature.
7. Claims: ``aud``, ``exp``, ``iat``, lifetime, ``nbf``, ``tenant``, then ``jti`` replay.

:class:`AuthError` messages are for server logs only; they never contain the token.
Callers answer a bare 401.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

ALLOWED_ALGS: frozenset[str] = frozenset({"ES384", "RS384"})
_REGISTRIES = {alg: jws.JWSRegistry(algorithms=[alg], strict_check_header=False) for alg in ALLOWED_ALGS}
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_TOKEN_CHARS = 8192
_MAX_JTI_CHARS = 256
_MIN_RSA_BITS = 2048
_MAX_JWKS_BYTES = 64 * 1024
_MAX_JWKS_KEYS = 50
_JWKS_CONTENT_TYPES = ("application/json", "application/jwk-set+json")
_PUBLIC_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e")}
# A fresh cached JWK Set is refetched for an unknown kid only if it is at least this old, so
# tokens with made-up kids cannot turn every request into an outbound fetch.
_UNKNOWN_KID_REFETCH_SECONDS = 10.0


class TrustedClient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iss: str
    jwks: dict | None = None  # inline public JWK Set {"keys": [...]}
    jku: list[str] = []  # allow-listed JWK Set URLs (exact string match)
    tenants: list[str] | None = None  # if set, `tenant` must be present and listed
    locale: str | None = None
    name: str | None = None


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    clients: list[TrustedClient] = []
    leeway_seconds: int = 60
    max_token_lifetime_seconds: int = 3600
    jwks_cache_ttl_seconds: int = 3600
    jwks_fetch_timeout_seconds: float = 3.0


@dataclass(frozen=True)
class ClientIdentity:
    iss: str
    tenant: str | None
    jti: str
    kid: str
    client: TrustedClient | None  # None only when auth is disabled


class AuthError(Exception):
    """Authentication failed. ``reason`` is a stable short code; the message is for logs only."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class ReplayCache(Protocol):
    def check_and_store(self, iss: str, jti: str, exp: float, now: float) -> bool:
        """Store (iss, jti) until ``exp`` (epoch seconds). True if new, False if already seen."""
        ...


class MemoryReplayCache:
    """Per-process replay cache. When full of unexpired entries it fails closed (returns False)."""

    def __init__(self, max_entries: int = 100_000, purge_interval_seconds: float = 60.0) -> None:
        self._entries: dict[tuple[str, str], float] = {}
        self._max = max_entries
        self._purge_interval = purge_interval_seconds
        self._last_purge = float("-inf")
        self._lock = threading.Lock()

    def check_and_store(self, iss: str, jti: str, exp: float, now: float) -> bool:
        key = (iss, jti)
        with self._lock:
            if now - self._last_purge >= self._purge_interval or len(self._entries) >= self._max:
                self._entries = {k: e for k, e in self._entries.items() if e >= now}
                self._last_purge = now
            seen = self._entries.get(key)
            if seen is not None and seen >= now:
                return False
            if seen is None and len(self._entries) >= self._max:
                logger.warning("JWT replay cache full (%d entries); rejecting token", self._max)
                return False
            self._entries[key] = exp
            return True

    def __len__(self) -> int:
        return len(self._entries)


class SQLiteReplayCache:
    """Replay cache shared by several worker processes through one SQLite file."""

    def __init__(self, path: str | Path, purge_interval_seconds: float = 60.0) -> None:
        self._conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS jwt_replay (iss TEXT NOT NULL, jti TEXT NOT NULL, "
            "exp REAL NOT NULL, PRIMARY KEY (iss, jti)) WITHOUT ROWID"
        )
        self._conn.execute("CREATE INDEX IF NOT EXISTS jwt_replay_exp ON jwt_replay (exp)")
        self._purge_interval = purge_interval_seconds
        self._last_purge = float("-inf")
        self._lock = threading.Lock()

    def check_and_store(self, iss: str, jti: str, exp: float, now: float) -> bool:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # write lock now: the check-and-insert is atomic
            try:
                if now - self._last_purge >= self._purge_interval:
                    self._conn.execute("DELETE FROM jwt_replay WHERE exp < ?", (now,))
                    self._last_purge = now
                else:  # a stale row for this very key must not count as a replay
                    self._conn.execute(
                        "DELETE FROM jwt_replay WHERE iss = ? AND jti = ? AND exp < ?", (iss, jti, now)
                    )
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO jwt_replay (iss, jti, exp) VALUES (?, ?, ?)", (iss, jti, exp)
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass(frozen=True)
class _Jwk:
    kid: str
    key: ECKey | RSAKey  # public part only
    alg: Any
    use: Any
    key_ops: Any


@dataclass(frozen=True)
class _CachedJwks:
    keys: dict[str, _Jwk]
    fetched_at: float


class _FetchError(Exception):
    pass


def _safe(value: object) -> str:
    """Short printable form of an attacker-controlled value for log messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate JSON member")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _loads(raw: bytes | str) -> Any:
    return json.loads(raw, object_pairs_hook=_strict_object, parse_constant=_reject_constant)


def _b64_json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = _loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AuthError("malformed", f"{what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise AuthError("malformed", f"{what} is not a JSON object")
    return value


def _bearer_token(authorization: str | None) -> str:
    if not isinstance(authorization, str) or not authorization.strip():
        raise AuthError("missing_authorization")
    parts = authorization.split()
    if parts[0].lower() != "bearer":
        raise AuthError("bad_scheme", "Authorization scheme is not Bearer")
    if len(parts) != 2 or len(parts[1]) > _MAX_TOKEN_CHARS or not _TOKEN_RE.fullmatch(parts[1]):
        raise AuthError("malformed", "bearer value is not a compact JWS")
    return parts[1]


def _parse_jwk(item: Any) -> _Jwk:
    if not isinstance(item, dict):
        raise ValueError("JWK is not an object")
    kid, kty = item.get("kid"), item.get("kty")
    if not isinstance(kid, str) or not kid:
        raise ValueError("JWK has no kid")
    members = _PUBLIC_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError(f"JWK {kid!r}: unsupported kty {_safe(kty)}")
    try:  # import only the public members, whatever else the set contains
        public = {m: item[m] for m in members}
        key: ECKey | RSAKey = (ECKey if kty == "EC" else RSAKey).import_key(public)
    except Exception as exc:  # the JOSE library rejected the key material
        raise ValueError(f"JWK {kid!r}: invalid key ({type(exc).__name__})") from None
    return _Jwk(kid, key, item.get("alg"), item.get("use"), item.get("key_ops"))


def _parse_jwks(data: Any, *, strict: bool) -> dict[str, _Jwk]:
    """Index a JWK Set by kid. ``strict`` (configuration) raises on any bad key; fetched sets skip them."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set")
    if len(data["keys"]) > _MAX_JWKS_KEYS:
        raise ValueError("JWK Set has too many keys")
    index: dict[str, _Jwk] = {}
    ambiguous: set[str] = set()
    for item in data["keys"]:
        try:
            jwk = _parse_jwk(item)
        except ValueError as exc:
            if strict:
                raise
            logger.warning("ignoring JWK: %s", exc)
            continue
        if jwk.kid in index:
            ambiguous.add(jwk.kid)
        index[jwk.kid] = jwk
    if ambiguous and strict:
        raise ValueError(f"duplicate kid(s) in JWK Set: {sorted(ambiguous)}")
    for kid in ambiguous:  # a kid MUST be unique in the set; never guess between keys
        logger.warning("ignoring duplicate kid %s in JWK Set", _safe(kid))
        del index[kid]
    return index


def _check_key_fits(jwk: _Jwk, alg: str) -> None:
    if jwk.alg is not None and jwk.alg != alg:
        raise AuthError("key_mismatch", f"kid {_safe(jwk.kid)} is for alg {_safe(jwk.alg)}, token says {alg}")
    if jwk.use is not None and jwk.use != "sig":
        raise AuthError("key_mismatch", f"kid {_safe(jwk.kid)} has use {_safe(jwk.use)}")
    if jwk.key_ops is not None and (not isinstance(jwk.key_ops, list) or "verify" not in jwk.key_ops):
        raise AuthError("key_mismatch", f"kid {_safe(jwk.kid)} key_ops exclude verify")
    key = jwk.key
    if alg == "ES384":
        ok = isinstance(key, ECKey) and key.curve_name == "P-384"
    else:
        ok = isinstance(key, RSAKey) and key.public_key.key_size >= _MIN_RSA_BITS
    if not ok:
        raise AuthError("key_mismatch", f"kid {_safe(jwk.kid)} is not a valid key for {alg}")


def _claim(claims: dict[str, Any], name: str) -> Any:
    if name not in claims:
        raise AuthError("missing_claim", name)
    return claims[name]


def _number_claim(claims: dict[str, Any], name: str) -> float:
    value = _claim(claims, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthError("bad_claim", f"{name} is not a number")
    return value


class JWTVerifier:
    """Verifies CDS Client JWTs. Configuration errors (bad inline JWK Set, duplicate iss) raise
    ValueError here, at start-up, rather than on the first request."""

    def __init__(
        self,
        settings: AuthSettings,
        http: httpx.AsyncClient,
        replay: ReplayCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._http = http
        self._replay = replay
        self._clock = clock
        self._clients: dict[str, TrustedClient] = {}
        self._inline: dict[str, dict[str, _Jwk]] = {}
        for client in settings.clients:
            if client.iss in self._clients:
                raise ValueError(f"duplicate trusted client iss {client.iss!r}")
            self._clients[client.iss] = client
            inline = client.jwks
            self._inline[client.iss] = _parse_jwks(inline, strict=True) if inline is not None else {}
        self._jwks_cache: dict[str, _CachedJwks] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def verify(self, authorization_header: str | None, audience: str) -> ClientIdentity:
        """``audience``: the externally visible URL of the endpoint called. Raises AuthError."""
        if not self._settings.enabled:
            return ClientIdentity(iss="anonymous", tenant=None, jti="", kid="", client=None)
        token = _bearer_token(authorization_header)
        header_b64, payload_b64, _ = token.split(".")
        header = _b64_json_object(header_b64, "JWT header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
            raise AuthError("alg_not_allowed", f"alg {_safe(alg)}")
        if header.get("typ") != "JWT":
            raise AuthError("bad_typ", f"typ {_safe(header.get('typ'))}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("missing_kid")
        if "crit" in header or "b64" in header:
            raise AuthError("unsupported_header", "crit/b64 header parameters are not supported")
        claims = _b64_json_object(payload_b64, "JWT payload")
        iss = _claim(claims, "iss")
        if not isinstance(iss, str):
            raise AuthError("bad_claim", "iss is not a string")
        client = self._clients.get(iss)
        if client is None:
            raise AuthError("unknown_iss", f"iss {_safe(iss)}")
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or jku not in client.jku):
            raise AuthError("jku_not_allowed", f"jku {_safe(jku)} for iss {_safe(iss)}")
        jwk = await self._find_key(client, kid, jku)
        _check_key_fits(jwk, alg)
        try:
            jws.deserialize_compact(token, jwk.key, registry=_REGISTRIES[alg])
        except Exception:  # any failure inside the JOSE library means "not verified"
            raise AuthError("bad_signature", f"iss {_safe(iss)} kid {_safe(kid)}") from None
        return self._check_claims(claims, client, kid, audience, self._clock())

    def _check_claims(
        self, claims: dict[str, Any], client: TrustedClient, kid: str, audience: str, now: float
    ) -> ClientIdentity:
        leeway = self._settings.leeway_seconds
        aud = _claim(claims, "aud")
        if isinstance(aud, str):
            aud_ok = aud == audience
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            aud_ok = audience in aud
        else:
            raise AuthError("bad_claim", "aud is not a string or array of strings")
        if not aud_ok:
            raise AuthError("aud_mismatch", f"aud {_safe(aud)}, expected {audience!r}")
        exp = _number_claim(claims, "exp")
        iat = _number_claim(claims, "iat")
        if exp <= now - leeway:
            raise AuthError("expired", f"exp {exp} <= now {now:.0f} - leeway {leeway}")
        if iat > now + leeway:
            raise AuthError("iat_in_future", f"iat {iat} > now {now:.0f} + leeway {leeway}")
        # With the iat check above this also bounds exp to now + leeway + max lifetime.
        if exp - iat > self._settings.max_token_lifetime_seconds:
            raise AuthError("lifetime_too_long", f"exp - iat = {exp - iat}")
        if "nbf" in claims and _number_claim(claims, "nbf") > now + leeway:
            raise AuthError("not_yet_valid", "nbf is in the future")
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthError("bad_claim", "tenant is not a string")
        if client.tenants is not None and tenant not in client.tenants:
            raise AuthError("tenant_not_allowed", f"tenant {_safe(tenant)} for iss {_safe(client.iss)}")
        jti = _claim(claims, "jti")
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_CHARS:
            raise AuthError("bad_claim", "jti is not a non-empty string of sane length")
        if not self._replay.check_and_store(client.iss, jti, float(exp) + leeway, now):
            raise AuthError("replay", f"jti {_safe(jti)} already seen for iss {_safe(client.iss)}")
        return ClientIdentity(iss=client.iss, tenant=tenant, jti=jti, kid=kid, client=client)

    async def _find_key(self, client: TrustedClient, kid: str, jku: str | None) -> _Jwk:
        jwk = self._inline[client.iss].get(kid)
        if jwk is None and jku is not None:
            jwk = await self._jku_key(jku, kid)
        if jwk is None:
            raise AuthError("unknown_kid", f"kid {_safe(kid)} for iss {_safe(client.iss)}")
        return jwk

    async def _jku_key(self, jku: str, kid: str) -> _Jwk | None:
        ttl = self._settings.jwks_cache_ttl_seconds
        entry = self._jwks_cache.get(jku)
        if entry is not None and self._clock() - entry.fetched_at < ttl and kid in entry.keys:
            return entry.keys[kid]
        async with self._locks.setdefault(jku, asyncio.Lock()):
            entry = self._jwks_cache.get(jku)  # another task may have refreshed it meanwhile
            now = self._clock()
            if entry is not None and now - entry.fetched_at < ttl:
                if kid in entry.keys:
                    return entry.keys[kid]
                if now - entry.fetched_at < _UNKNOWN_KID_REFETCH_SECONDS:
                    return None
            entry = _CachedJwks(await self._fetch_jwks(jku), now)
            self._jwks_cache[jku] = entry
            return entry.keys.get(kid)

    async def _fetch_jwks(self, jku: str) -> dict[str, _Jwk]:
        timeout = self._settings.jwks_fetch_timeout_seconds
        body = bytearray()
        try:
            async with asyncio.timeout(timeout):
                async with self._http.stream(
                    "GET",
                    jku,
                    headers={"Accept": "application/jwk-set+json, application/json"},
                    timeout=timeout,
                    follow_redirects=False,  # never: a redirect could point anywhere
                ) as resp:
                    if resp.status_code != 200:
                        raise _FetchError(f"HTTP status {resp.status_code}")
                    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if ctype not in _JWKS_CONTENT_TYPES:
                        raise _FetchError(f"content type {_safe(ctype)}")
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > _MAX_JWKS_BYTES:
                            raise _FetchError("response too large")
            return _parse_jwks(_loads(bytes(body)), strict=False)
        except (_FetchError, httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, TimeoutError,
                ValueError, RecursionError) as exc:
            logger.warning("JWK Set fetch from %s failed: %s", jku, str(exc) or type(exc).__name__)
            raise AuthError("jwks_unavailable", f"{jku}: {type(exc).__name__}") from None
