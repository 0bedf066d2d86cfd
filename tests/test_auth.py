"""Client JWT authentication (cds.api.auth) with really signed tokens.

Every negative test starts from a token that the same verifier accepts and changes one thing,
and asserts the specific ``AuthError.reason``, so removing any single check makes a test fail.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st
from pydantic import ValidationError

from cds.api.auth import (
    AuthError,
    AuthSettings,
    ClientIdentity,
    JWTVerifier,
    MemoryReplayCache,
    ReplayCache,
    SQLiteReplayCache,
    TrustedClient,
)
from tests.support.jwt_keys import (
    OMIT,
    SPEC_EXAMPLE_AUD,
    SPEC_EXAMPLE_EXP,
    SPEC_EXAMPLE_IAT,
    SPEC_EXAMPLE_ISS,
    SPEC_EXAMPLE_JKU,
    SPEC_EXAMPLE_PUBLIC_JWKS,
    SPEC_EXAMPLE_TENANT,
    SPEC_EXAMPLE_TOKEN,
    b64url,
    compact,
    ec_key,
    es384_key,
    hmac_token,
    hs256_token,
    jwks,
    make_token,
    public_jwk,
    rs384_key,
    spec_example_key,
    unsigned_token,
)

pytestmark = pytest.mark.anyio

ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/patient-view-rules"
ES_KID, RS_KID = "es-1", "rs-1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, now: float | None = None) -> None:
        self.now = float(int(time.time()) if now is None else now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class NoNetwork:
    """An httpx.AsyncClient whose transport records requests and never touches the network."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self._handle))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(500)


def inline_client(**kw: Any) -> TrustedClient:
    base: dict[str, Any] = {
        "iss": ISS,
        "jwks": jwks((es384_key(), ES_KID), (rs384_key(), RS_KID)),
        "name": "Test EHR",
        "locale": "en-GB",
    }
    base.update(kw)
    return TrustedClient(**base)


def make_verifier(
    clients: list[TrustedClient] | None = None,
    *,
    http: httpx.AsyncClient | None = None,
    clock: Callable[[], float] | None = None,
    replay: ReplayCache | None = None,
    **settings: Any,
) -> JWTVerifier:
    auth = AuthSettings(clients=[inline_client()] if clients is None else clients, **settings)
    return JWTVerifier(
        auth,
        http or NoNetwork().client,
        replay or MemoryReplayCache(),
        clock=clock or time.time,
    )


def es_token(**kw: Any) -> str:
    args: dict[str, Any] = {"iss": ISS, "aud": AUD, "kid": ES_KID}
    args.update(kw)
    return make_token(args.pop("key", es384_key()), **args)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def _payload(token: str) -> str:
    segment = token.split(".")[1]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()


async def rejected(verifier: JWTVerifier, header: str | None, audience: str = AUD) -> AuthError:
    with pytest.raises(AuthError) as info:
        await verifier.verify(header, audience)
    return info.value


# --------------------------------------------------------------------------- accepted tokens


async def test_valid_es384_token_passes() -> None:
    token = es_token(jti="jti-es", tenant="t-1")
    identity = await make_verifier().verify(bearer(token), AUD)
    assert identity == ClientIdentity(iss=ISS, tenant="t-1", jti="jti-es", kid=ES_KID, client=inline_client())
    assert identity.client is not None and identity.client.locale == "en-GB"
    assert token not in repr(identity)


async def test_valid_rs384_token_passes() -> None:
    token = make_token(rs384_key(), iss=ISS, aud=AUD, kid=RS_KID, alg="RS384", jti="jti-rs")
    identity = await make_verifier().verify(bearer(token), AUD)
    assert (identity.iss, identity.kid, identity.jti, identity.tenant) == (ISS, RS_KID, "jti-rs", None)


async def test_bearer_scheme_is_case_insensitive() -> None:
    await make_verifier().verify(f"bearer  {es_token()} ", AUD)


async def test_aud_array_containing_endpoint_passes() -> None:
    await make_verifier().verify(bearer(es_token(aud=["https://other.example/x", AUD])), AUD)


# --------------------------------------------------------------------------- time claims


async def test_expired_token_rejected_but_leeway_honoured() -> None:
    clock = FakeClock()
    verifier = make_verifier(clock=clock)
    now = int(clock.now)
    err = await rejected(verifier, bearer(es_token(iat=now - 300, exp=now - 61)))
    assert err.reason == "expired"
    await verifier.verify(bearer(es_token(iat=now - 300, exp=now - 30)), AUD)  # within 60 s leeway


async def test_iat_in_future_beyond_leeway_rejected() -> None:
    clock = FakeClock()
    verifier = make_verifier(clock=clock)
    now = int(clock.now)
    err = await rejected(verifier, bearer(es_token(iat=now + 120, exp=now + 420)))
    assert err.reason == "iat_in_future"
    await verifier.verify(bearer(es_token(iat=now + 30, exp=now + 330)), AUD)


async def test_token_lifetime_longer_than_max_rejected() -> None:
    clock = FakeClock()
    now = int(clock.now)
    verifier = make_verifier(clock=clock, max_token_lifetime_seconds=600)
    err = await rejected(verifier, bearer(es_token(iat=now, exp=now + 601)))
    assert err.reason == "lifetime_too_long"
    await verifier.verify(bearer(es_token(iat=now, exp=now + 600)), AUD)


async def test_exp_far_in_future_rejected_even_with_plausible_iat() -> None:
    clock = FakeClock()
    now = int(clock.now)
    err = await rejected(make_verifier(clock=clock), bearer(es_token(iat=now, exp=now + 86_400 * 365)))
    assert err.reason == "lifetime_too_long"


async def test_nbf_in_future_rejected() -> None:
    clock = FakeClock()
    now = int(clock.now)
    token = es_token(iat=now, exp=now + 300, extra_claims={"nbf": now + 120})
    assert (await rejected(make_verifier(clock=clock), bearer(token))).reason == "not_yet_valid"


# --------------------------------------------------------------------------- aud / iss / tenant / jti


@pytest.mark.parametrize(
    "aud",
    [
        "https://cds.example.org/cds-services/other-service",
        AUD + "/",
        AUD.upper(),
        ["https://cds.example.org/cds-services"],
        [],
    ],
)
async def test_wrong_aud_rejected(aud: Any) -> None:
    assert (await rejected(make_verifier(), bearer(es_token(aud=aud)))).reason == "aud_mismatch"


async def test_unknown_iss_rejected() -> None:
    token = es_token(iss="https://evil.example.org")
    assert (await rejected(make_verifier(), bearer(token))).reason == "unknown_iss"


async def test_replayed_jti_rejected_on_second_use() -> None:
    verifier = make_verifier()
    token = es_token()
    await verifier.verify(bearer(token), AUD)
    assert (await rejected(verifier, bearer(token))).reason == "replay"
    # a different token reusing the jti is a replay too; a fresh jti is fine
    same_jti = es_token(jti=json.loads(_payload(token))["jti"])
    assert (await rejected(verifier, bearer(same_jti))).reason == "replay"
    await verifier.verify(bearer(es_token()), AUD)


async def test_replay_entry_kept_until_exp_plus_leeway() -> None:
    calls: list[tuple[str, str, float, float]] = []

    class Spy:
        def check_and_store(self, iss: str, jti: str, exp: float, now: float) -> bool:
            calls.append((iss, jti, exp, now))
            return True

    clock = FakeClock()
    now = int(clock.now)
    token = es_token(jti="j", iat=now, exp=now + 300)
    await make_verifier(clock=clock, replay=Spy()).verify(bearer(token), AUD)
    assert calls == [(ISS, "j", now + 300 + 60, clock.now)]


async def test_tenant_allow_list() -> None:
    verifier = make_verifier([inline_client(tenants=["hospital-a"])])
    assert (await verifier.verify(bearer(es_token(tenant="hospital-a")), AUD)).tenant == "hospital-a"
    assert (await rejected(verifier, bearer(es_token(tenant="hospital-b")))).reason == "tenant_not_allowed"
    assert (await rejected(verifier, bearer(es_token()))).reason == "tenant_not_allowed"


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "jti"])
async def test_missing_required_claim_rejected(claim: str) -> None:
    err = await rejected(make_verifier(), bearer(es_token(extra_claims={claim: OMIT})))
    assert err.reason == "missing_claim"
    assert str(err) == f"missing_claim: {claim}"


@pytest.mark.parametrize(
    "claims",
    [{"exp": "soon"}, {"exp": True}, {"iat": None}, {"aud": 42}, {"aud": [AUD, 1]}, {"jti": ""},
     {"jti": 7}, {"jti": "x" * 300}, {"tenant": ["a"]}, {"iss": ["x"]}],
)
async def test_badly_typed_claim_rejected(claims: dict[str, Any]) -> None:
    assert (await rejected(make_verifier(), bearer(es_token(extra_claims=claims)))).reason == "bad_claim"


# --------------------------------------------------------------------------- header checks


async def test_alg_none_rejected() -> None:
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "exp": now + 300, "iat": now, "jti": "n"}
    for alg in ("none", "None", "NONE"):
        token = unsigned_token(claims, {"alg": alg, "typ": "JWT", "kid": ES_KID})
        assert (await rejected(make_verifier(), bearer(token))).reason == "alg_not_allowed"


@pytest.mark.parametrize("alg", ["HS256", "HS384"])
@pytest.mark.parametrize("kid", [ES_KID, RS_KID])
async def test_hmac_with_public_key_as_secret_rejected(alg: str, kid: str) -> None:
    """The classic alg-confusion attack: HMAC keyed with the verifier's public key bytes."""
    key = es384_key() if kid == ES_KID else rs384_key()
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "exp": now + 300, "iat": now, "jti": "hs"}
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    secrets = [key.as_pem(private=False), json.dumps(public_jwk(key, kid)).encode()]
    for secret in secrets:
        token = hmac_token(secret, header, claims, "sha256" if alg == "HS256" else "sha384")
        assert (await rejected(make_verifier(), bearer(token))).reason == "alg_not_allowed"
    # The same MAC relabelled as ES384 is just a bad signature.
    token = hs256_token(secrets[0], {**header, "alg": "ES384" if kid == ES_KID else "RS384"}, claims)
    assert (await rejected(make_verifier(), bearer(token))).reason == "bad_signature"


@pytest.mark.parametrize(
    ("alg", "key_factory"),
    [
        ("ES256", lambda: ec_key("P-256")),
        ("RS256", rs384_key),
        ("PS384", rs384_key),
        ("ES512", lambda: ec_key("P-521")),
    ],
)
async def test_other_asymmetric_algs_rejected(alg: str, key_factory: Callable[[], Any]) -> None:
    key = key_factory()
    verifier = make_verifier([inline_client(jwks=jwks((key, "k")))])
    token = make_token(key, iss=ISS, aud=AUD, kid="k", alg=alg)
    assert (await rejected(verifier, bearer(token))).reason == "alg_not_allowed"


async def test_missing_kid_rejected() -> None:
    assert (await rejected(make_verifier(), bearer(es_token(kid=None)))).reason == "missing_kid"
    assert (await rejected(make_verifier(), bearer(es_token(kid="")))).reason == "missing_kid"


@pytest.mark.parametrize("typ", [OMIT, "JOSE", "jwt", "at+jwt"])
async def test_missing_or_wrong_typ_rejected(typ: Any) -> None:
    token = es_token(extra_header={"typ": typ})
    assert (await rejected(make_verifier(), bearer(token))).reason == "bad_typ"


@pytest.mark.parametrize("extra", [{"crit": ["exp"], "exp": 1}, {"b64": False}, {"b64": True}])
async def test_crit_and_b64_headers_rejected(extra: dict[str, Any]) -> None:
    token = es_token(extra_header=extra)
    assert (await rejected(make_verifier(), bearer(token))).reason == "unsupported_header"


async def test_unknown_kid_rejected() -> None:
    assert (await rejected(make_verifier(), bearer(es_token(kid="nope")))).reason == "unknown_kid"


# --------------------------------------------------------------------------- keys and signatures


async def test_signature_by_other_key_with_trusted_kid_rejected() -> None:
    token = es_token(key=es384_key("attacker"))
    assert (await rejected(make_verifier(), bearer(token))).reason == "bad_signature"


async def test_tampered_payload_rejected() -> None:
    token = es_token(tenant="a")
    header, _, signature = token.split(".")
    good = json.loads(_payload(token))
    forged = f"{header}.{b64url({**good, 'tenant': 'b'})}.{signature}"
    assert (await rejected(make_verifier(), bearer(forged))).reason == "bad_signature"


@pytest.mark.parametrize(
    ("alg", "jwk"),
    [
        ("RS384", lambda: public_jwk(es384_key(), "k")),  # RS384 header, EC key
        ("ES384", lambda: public_jwk(rs384_key(), "k")),  # ES384 header, RSA key
        ("ES384", lambda: public_jwk(ec_key("P-256"), "k")),  # wrong curve
        ("RS384", lambda: public_jwk(rs384_key("small", 1024), "k")),  # too short
        ("ES384", lambda: public_jwk(es384_key(), "k", alg="ES256")),  # JWK alg differs
        ("ES384", lambda: public_jwk(es384_key(), "k", use="enc")),
        ("ES384", lambda: public_jwk(es384_key(), "k", key_ops=["encrypt"])),
    ],
)
@pytest.mark.filterwarnings("ignore:Key size should be:joserfc.errors.SecurityWarning")
async def test_key_must_fit_alg(alg: str, jwk: Callable[[], dict[str, Any]]) -> None:
    verifier = make_verifier([inline_client(jwks={"keys": [jwk()]})])
    signer = es384_key() if alg == "ES384" else rs384_key()
    token = make_token(signer, iss=ISS, aud=AUD, kid="k", alg=alg)
    assert (await rejected(verifier, bearer(token))).reason == "key_mismatch"


async def test_jwk_with_matching_alg_use_and_key_ops_passes() -> None:
    jwk = public_jwk(es384_key(), "k", alg="ES384", use="sig", key_ops=["verify"])
    verifier = make_verifier([inline_client(jwks={"keys": [jwk]})])
    await verifier.verify(bearer(es_token(kid="k")), AUD)


def test_bad_inline_configuration_fails_fast() -> None:
    with pytest.raises(ValueError, match="duplicate trusted client"):
        make_verifier([inline_client(), inline_client()])
    with pytest.raises(ValueError, match="unsupported kty"):
        make_verifier([inline_client(jwks={"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]})])
    with pytest.raises(ValueError, match="duplicate kid"):
        make_verifier([inline_client(jwks=jwks((es384_key(), "d"), (rs384_key(), "d")))])
    with pytest.raises(ValidationError):
        AuthSettings(clients=[], surprise=True)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TrustedClient(iss=ISS, jwks_uri="https://x")  # type: ignore[call-arg]


# --------------------------------------------------------------------------- Authorization header


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_authorization"),
        ("", "missing_authorization"),
        ("   ", "missing_authorization"),
        ("Basic dXNlcjpwYXNz", "bad_scheme"),
        ("Token abc.def.ghi", "bad_scheme"),
        ("Bearer", "malformed"),
        ("Bearer a.b.c d", "malformed"),
        ("Bearer not-a-jwt", "malformed"),
        ("Bearer a.b", "malformed"),
        ("Bearer a.b.c.d.e", "malformed"),
        ("Bearer eyJ.eyJ.sig", "malformed"),
        ("Bearer " + b64url("[1]") + "." + b64url("{}") + ".x", "malformed"),
        ("Bearer " + b64url('{"alg":"ES384","alg":"none"}') + "." + b64url("{}") + ".x", "malformed"),
        ("Bearer " + b64url('{"alg":NaN}') + "." + b64url("{}") + ".x", "malformed"),
        ("Bearer " + "A" * 9000 + ".B.C", "malformed"),
    ],
)
async def test_bad_authorization_header_rejected(header: str | None, reason: str) -> None:
    assert (await rejected(make_verifier(), header)).reason == reason


async def test_oversized_but_validly_signed_token_rejected() -> None:
    token = es_token(extra_claims={"padding": "x" * 9000})
    assert (await rejected(make_verifier(), bearer(token))).reason == "malformed"


async def test_garbage_payload_after_valid_header_rejected() -> None:
    header = b64url({"alg": "ES384", "typ": "JWT", "kid": ES_KID})
    for payload in ("!!!!", b64url("[[[[" * 2000), b64url(b"\xff\xfe"), b64url('"str"')):
        assert (await rejected(make_verifier(), f"Bearer {header}.{payload}.sig")).reason == "malformed"


async def test_disabled_auth_returns_anonymous_without_looking_at_header() -> None:
    verifier = make_verifier(enabled=False)
    expected = ClientIdentity(iss="anonymous", tenant=None, jti="", kid="", client=None)
    assert await verifier.verify(None, AUD) == expected
    assert await verifier.verify("Basic garbage", AUD) == expected


# --------------------------------------------------------------------------- jku handling


async def test_jku_not_allow_listed_rejected_without_any_http_request() -> None:
    net = NoNetwork()
    client = inline_client(jku=["https://ehr.example.org/jwks.json"])
    verifier = make_verifier([client], http=net.client)
    for jku in ("https://evil.example/jwks.json", "https://ehr.example.org/jwks.json?x=1",
                "https://EHR.example.org/jwks.json", "http://127.0.0.1:1/jwks"):
        # unknown kid (would need a fetch) and known inline kid (would not): both refused
        for kid in ("fresh-kid", ES_KID):
            err = await rejected(verifier, bearer(es_token(kid=kid, jku=jku)))
            assert err.reason == "jku_not_allowed"
    assert net.requests == []


async def test_non_string_jku_rejected() -> None:
    token = es_token(extra_header={"jku": ["https://ehr.example.org/jwks.json"]})
    assert (await rejected(make_verifier(), bearer(token))).reason == "jku_not_allowed"


async def test_allow_listed_jku_with_inline_kid_needs_no_fetch() -> None:
    net = NoNetwork()
    jku = "https://ehr.example.org/jwks.json"
    verifier = make_verifier([inline_client(jku=[jku])], http=net.client)
    await verifier.verify(bearer(es_token(jku=jku)), AUD)
    assert net.requests == []


@dataclass
class Route:
    status: int = 200
    content_type: str = "application/json"
    body: bytes | None = None  # None: the server's current JWK Set
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class JwksServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _JwksHandler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.reset()

    def reset(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.routes: dict[str, Route] = {"/jwks": Route()}
        self.hits: list[str] = []

    def count(self, path: str = "/jwks") -> int:
        return self.hits.count(path)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # e.g. broken pipe after a client-side timeout


class _JwksHandler(BaseHTTPRequestHandler):
    server: JwksServer

    def do_GET(self) -> None:  # noqa: N802
        self.server.hits.append(self.path)
        route = self.server.routes.get(self.path, Route(status=404, body=b""))
        if route.delay:
            time.sleep(route.delay)
        body = json.dumps(self.server.jwks).encode() if route.body is None else route.body
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def _jwks_server_instance() -> Iterator[JwksServer]:
    server = JwksServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def jwks_server(_jwks_server_instance: JwksServer) -> JwksServer:
    _jwks_server_instance.reset()
    return _jwks_server_instance


REMOTE_ISS = "https://remote-ehr.example.org"


def remote_setup(
    server: JwksServer, http: httpx.AsyncClient, clock: FakeClock, path: str = "/jwks", **settings: Any
) -> tuple[JWTVerifier, str]:
    jku = server.base + path
    client = TrustedClient(iss=REMOTE_ISS, jku=[jku])
    return make_verifier([client], http=http, clock=clock, **settings), jku


def remote_token(clock: FakeClock, jku: str, kid: str, key: Any = None) -> str:
    now = int(clock.now)
    return make_token(key or es384_key(), iss=REMOTE_ISS, aud=AUD, kid=kid, jku=jku, iat=now, exp=now + 300)


async def test_jku_fetch_real_server_cache_and_rotation(jwks_server: JwksServer) -> None:
    key_a, key_b = es384_key("a"), rs384_key("b")
    jwks_server.jwks = jwks((key_a, "a"))
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        verifier, jku = remote_setup(jwks_server, http, clock)

        identity = await verifier.verify(bearer(remote_token(clock, jku, "a", key_a)), AUD)
        assert (identity.iss, identity.kid) == (REMOTE_ISS, "a")
        assert jwks_server.count() == 1

        # cached by kid: same kid again, no new fetch
        await verifier.verify(bearer(remote_token(clock, jku, "a", key_a)), AUD)
        assert jwks_server.count() == 1

        # rotation: the client now publishes only key b; an unknown kid causes exactly one refetch
        jwks_server.jwks = jwks((key_b, "b"))
        clock.advance(30)
        token_b = make_token(key_b, iss=REMOTE_ISS, aud=AUD, kid="b", alg="RS384", jku=jku,
                             iat=int(clock.now), exp=int(clock.now) + 300)
        assert (await verifier.verify(bearer(token_b), AUD)).kid == "b"
        assert jwks_server.count() == 2

        # a kid that is still unknown after the refetch: one refetch at most per verify...
        clock.advance(30)
        err = await rejected(verifier, bearer(remote_token(clock, jku, "ghost")))
        assert (err.reason, jwks_server.count()) == ("unknown_kid", 3)
        # ...and none at all while the set is only seconds old (made-up kids can't force fetches)
        clock.advance(5)
        err = await rejected(verifier, bearer(remote_token(clock, jku, "ghost-2")))
        assert (err.reason, jwks_server.count()) == ("unknown_kid", 3)
        # the old key a is gone from the set now
        err = await rejected(verifier, bearer(remote_token(clock, jku, "a", key_a)))
        assert err.reason == "unknown_kid"


async def test_jku_cache_ttl_expiry_refetches(jwks_server: JwksServer) -> None:
    jwks_server.jwks = jwks((es384_key(), "a"))
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        verifier, jku = remote_setup(jwks_server, http, clock, jwks_cache_ttl_seconds=600)
        await verifier.verify(bearer(remote_token(clock, jku, "a")), AUD)
        clock.advance(599)
        await verifier.verify(bearer(remote_token(clock, jku, "a")), AUD)
        assert jwks_server.count() == 1
        clock.advance(1)
        await verifier.verify(bearer(remote_token(clock, jku, "a")), AUD)
        assert jwks_server.count() == 2


async def test_concurrent_cold_cache_fetches_once(jwks_server: JwksServer) -> None:
    jwks_server.jwks = jwks((es384_key(), "a"))
    jwks_server.routes["/jwks"].delay = 0.1
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        verifier, jku = remote_setup(jwks_server, http, clock)
        tokens = [remote_token(clock, jku, "a") for _ in range(10)]
        identities = await asyncio.gather(*(verifier.verify(bearer(t), AUD) for t in tokens))
    assert len({i.jti for i in identities}) == 10
    assert jwks_server.count() == 1


@pytest.mark.parametrize(
    ("route", "settings"),
    [
        (Route(status=404, body=b"{}"), {}),
        (Route(status=500), {}),
        (Route(content_type="text/html"), {}),
        (Route(body=b"not json"), {}),
        (Route(body=b'{"keys": "nope"}'), {}),
        (Route(body=b"[" * 5000), {}),
        (Route(body=b'{"keys": []' + b" " * 70_000 + b"}"), {}),
        (Route(delay=1.0), {"jwks_fetch_timeout_seconds": 0.2}),
    ],
)
async def test_jku_fetch_failures_rejected(
    jwks_server: JwksServer, route: Route, settings: dict[str, Any]
) -> None:
    jwks_server.jwks = jwks((es384_key(), "a"))
    jwks_server.routes["/bad"] = route
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        verifier, jku = remote_setup(jwks_server, http, clock, path="/bad", **settings)
        err = await rejected(verifier, bearer(remote_token(clock, jku, "a")))
    assert err.reason == "jwks_unavailable"


async def test_jku_redirect_is_not_followed(jwks_server: JwksServer) -> None:
    jwks_server.jwks = jwks((es384_key(), "a"))
    for status in (301, 302, 307, 308):
        jwks_server.hits.clear()
        location = {"Location": jwks_server.base + "/jwks"}
        jwks_server.routes["/moved"] = Route(status=status, body=b"", headers=location)
        clock = FakeClock()
        async with httpx.AsyncClient(trust_env=False, follow_redirects=True) as http:
            verifier, jku = remote_setup(jwks_server, http, clock, path="/moved")
            err = await rejected(verifier, bearer(remote_token(clock, jku, "a")))
        assert err.reason == "jwks_unavailable"
        assert jwks_server.hits == ["/moved"]


async def test_fetched_set_ignores_unusable_keys(jwks_server: JwksServer) -> None:
    """Symmetric ('oct') or malformed keys in a fetched set are skipped, never used."""
    secret = b"shared-secret"
    jwks_server.jwks = {"keys": [
        {"kty": "oct", "kid": "h", "k": b64url(secret)},
        {"kty": "EC", "kid": "broken", "crv": "P-384", "x": "AAAA", "y": "AAAA"},
        "not-an-object",
        public_jwk(es384_key(), "a"),
    ]}
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        verifier, jku = remote_setup(jwks_server, http, clock)
        await verifier.verify(bearer(remote_token(clock, jku, "a")), AUD)
        now = int(clock.now)
        claims = {"iss": REMOTE_ISS, "aud": AUD, "exp": now + 300, "iat": now, "jti": "h"}
        for alg, reason in (("HS256", "alg_not_allowed"), ("ES384", "unknown_kid")):
            token = hs256_token(secret, {"alg": alg, "typ": "JWT", "kid": "h", "jku": jku}, claims)
            assert (await rejected(verifier, bearer(token))).reason == reason
        token = remote_token(clock, jku, "broken")
        assert (await rejected(verifier, bearer(token))).reason == "unknown_kid"


async def test_fetched_set_with_duplicate_kid_is_ambiguous(jwks_server: JwksServer) -> None:
    """kid MUST be unique in a JWK Set; a duplicated kid is never guessed between."""
    jwks_server.jwks = jwks((es384_key("x"), "dup"), (es384_key(), "dup"), (es384_key(), "ok"))
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        verifier, jku = remote_setup(jwks_server, http, clock)
        await verifier.verify(bearer(remote_token(clock, jku, "ok")), AUD)
        assert (await rejected(verifier, bearer(remote_token(clock, jku, "dup")))).reason == "unknown_kid"


# --------------------------------------------------------------------------- the spec's example


def spec_verifier(clock: FakeClock, **settings: Any) -> tuple[JWTVerifier, NoNetwork]:
    net = NoNetwork()
    client = TrustedClient(iss=SPEC_EXAMPLE_ISS, jwks=SPEC_EXAMPLE_PUBLIC_JWKS, jku=[SPEC_EXAMPLE_JKU],
                           tenants=[SPEC_EXAMPLE_TENANT])
    return make_verifier([client], http=net.client, clock=clock, **settings), net


async def test_spec_example_token_rejected_as_expired() -> None:
    verifier, net = spec_verifier(FakeClock())
    err = await rejected(verifier, bearer(SPEC_EXAMPLE_TOKEN), SPEC_EXAMPLE_AUD)
    assert err.reason == "expired"
    assert net.requests == []


async def test_spec_example_token_signature_is_genuine() -> None:
    """Positive control: at a time before its exp (and with a lifetime limit large enough for
    its 3.5-year exp - iat) the spec token verifies, so it is rejected above only for time."""
    clock = FakeClock(SPEC_EXAMPLE_EXP - 100)
    verifier, _ = spec_verifier(clock, max_token_lifetime_seconds=SPEC_EXAMPLE_EXP - SPEC_EXAMPLE_IAT)
    identity = await verifier.verify(bearer(SPEC_EXAMPLE_TOKEN), SPEC_EXAMPLE_AUD)
    assert (identity.kid, identity.tenant) == ("example-kid", SPEC_EXAMPLE_TENANT)
    # and with our default lifetime limit it would fail on lifetime even then
    verifier, _ = spec_verifier(FakeClock(SPEC_EXAMPLE_EXP - 100))
    err = await rejected(verifier, bearer(SPEC_EXAMPLE_TOKEN), SPEC_EXAMPLE_AUD)
    assert err.reason == "lifetime_too_long"


async def test_spec_example_key_signs_fresh_tokens() -> None:
    clock = FakeClock()
    verifier, _ = spec_verifier(clock)
    token = make_token(spec_example_key(), iss=SPEC_EXAMPLE_ISS, aud=SPEC_EXAMPLE_AUD, kid="example-kid",
                       jku=SPEC_EXAMPLE_JKU, tenant=SPEC_EXAMPLE_TENANT, iat=int(clock.now))
    await verifier.verify(bearer(token), SPEC_EXAMPLE_AUD)


# --------------------------------------------------------------------------- no token leaks


async def test_auth_error_and_logs_never_contain_the_token(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    now = int(clock.now)
    verifier = make_verifier(clock=clock)
    used = es_token()
    await verifier.verify(bearer(used), AUD)
    tokens = [
        used,  # replay
        es_token(iat=now - 900, exp=now - 600),
        es_token(aud="https://elsewhere.example"),
        es_token(key=es384_key("attacker")),
        es_token(iss="https://evil.example"),
        es_token(kid="unknown"),
        es_token(extra_claims={"jti": OMIT}),
        SPEC_EXAMPLE_TOKEN,
    ]
    errors = [await rejected(verifier, bearer(t)) for t in tokens]
    async with httpx.AsyncClient(trust_env=False) as http:
        jwks_server.routes["/jwks"] = Route(status=500)
        remote, jku = remote_setup(jwks_server, http, clock)
        token = remote_token(clock, jku, "a")
        tokens.append(token)
        errors.append(await rejected(remote, bearer(token)))
    assert [e.reason for e in errors] == [
        "replay", "expired", "aud_mismatch", "bad_signature", "unknown_iss", "unknown_kid",
        "missing_claim", "unknown_iss", "jwks_unavailable",
    ]
    for token, err in zip(tokens, errors):
        text = f"{err!s} {err!r} {err.args!r} {err.__cause__!r}"
        for part in (token, *token.split(".")):
            assert part not in text
            assert part not in caplog.text


# --------------------------------------------------------------------------- property


_b64_segments = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(["alg", "typ", "kid", "jku", "crit", "b64", "iss", "aud", "exp", "iat", "jti"]),
            inner, max_size=6),
        max_leaves=12,
    ).map(lambda v: b64url(json.dumps(v))),
)
_headers = st.one_of(
    st.none(),
    st.text(),
    st.text().map(lambda s: "Bearer " + s),
    st.tuples(_b64_segments, _b64_segments, _b64_segments).map(lambda p: "Bearer " + ".".join(p)),
    st.fixed_dictionaries({
        "alg": st.sampled_from(["ES384", "RS384", "none", "HS256", "ES256"]),
        "typ": st.sampled_from(["JWT", "jwt", None]),
        "kid": st.sampled_from([ES_KID, RS_KID, "x", None, 3]),
        "jku": st.sampled_from([None, "http://127.0.0.1:9/jwks", []]),
    }).flatmap(lambda h: st.tuples(st.just(h), _b64_segments)).map(
        lambda hp: f"Bearer {b64url({k: v for k, v in hp[0].items() if v is not None})}.{hp[1]}.c2ln"
    ),
)


@hyp_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_headers)
def test_arbitrary_authorization_header_only_raises_auth_error(header: str | None) -> None:
    clients = [inline_client(jku=["http://127.0.0.1:9/jwks"])]

    async def attempt() -> None:
        net = NoNetwork()
        verifier = make_verifier(clients, http=net.client)
        try:
            await verifier.verify(header, AUD)
        except AuthError as err:
            token = (header or "").partition(" ")[2].strip()
            if len(token) >= 24:
                assert token not in str(err)
        else:
            pytest.fail("an arbitrary header was accepted")

    asyncio.run(attempt())


# --------------------------------------------------------------------------- replay caches


def test_memory_replay_cache_expiry_and_bound() -> None:
    cache = MemoryReplayCache(max_entries=2, purge_interval_seconds=60)
    assert cache.check_and_store("i", "a", exp=100, now=0)
    assert not cache.check_and_store("i", "a", exp=100, now=50)
    assert cache.check_and_store("other-iss", "a", exp=100, now=50)  # keyed by (iss, jti)
    assert not cache.check_and_store("i", "b", exp=100, now=50)  # full of live entries: fail closed
    assert cache.check_and_store("i", "a", exp=300, now=101)  # expired entries purged, jti usable
    assert cache.check_and_store("i", "b", exp=300, now=101)
    assert len(cache) == 2


def test_memory_replay_cache_expired_entry_between_purges_is_not_a_replay() -> None:
    cache = MemoryReplayCache(purge_interval_seconds=1e9)
    assert cache.check_and_store("i", "a", exp=100, now=0)
    assert not cache.check_and_store("i", "a", exp=100, now=100)
    assert cache.check_and_store("i", "a", exp=300, now=101)
    assert not cache.check_and_store("i", "a", exp=300, now=102)


def test_memory_replay_cache_is_thread_safe() -> None:
    cache = MemoryReplayCache()
    results: list[bool] = []
    barrier = threading.Barrier(32)

    def worker() -> None:
        barrier.wait()
        results.append(cache.check_and_store("i", "same", exp=1e12, now=1.0))

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 31 + [True]


def test_sqlite_replay_cache_shared_between_workers(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite"
    worker_1, worker_2 = SQLiteReplayCache(path), SQLiteReplayCache(str(path))
    try:
        assert worker_1.check_and_store("i", "a", exp=100, now=0)
        assert not worker_2.check_and_store("i", "a", exp=100, now=10)
        assert not worker_1.check_and_store("i", "a", exp=100, now=10)
        assert worker_2.check_and_store("i2", "a", exp=100, now=10)
        assert worker_2.check_and_store("i", "a", exp=200, now=101)  # expired row does not block
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        worker_1.close()
        worker_2.close()


def test_sqlite_replay_cache_stale_row_between_purges_is_not_a_replay(tmp_path: Path) -> None:
    cache = SQLiteReplayCache(tmp_path / "r.sqlite", purge_interval_seconds=1e9)
    try:
        assert cache.check_and_store("i", "a", exp=100, now=0)  # first call purges, next not for ages
        assert not cache.check_and_store("i", "a", exp=100, now=100)
        assert cache.check_and_store("i", "a", exp=300, now=101)
        assert not cache.check_and_store("i", "a", exp=300, now=102)
    finally:
        cache.close()


def test_sqlite_replay_cache_purges_expired_rows(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite"
    cache = SQLiteReplayCache(path, purge_interval_seconds=60)
    try:
        for n in range(5):
            assert cache.check_and_store("i", f"j{n}", exp=50, now=0)
        assert cache.check_and_store("i", "late", exp=500, now=100)  # >= 60 s since last purge
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT jti FROM jwt_replay").fetchall() == [("late",)]
    finally:
        cache.close()


def test_sqlite_replay_cache_thread_safe(tmp_path: Path) -> None:
    cache = SQLiteReplayCache(tmp_path / "r.sqlite")
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(cache.check_and_store("i", "same", exp=1e12, now=1.0))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    assert sorted(results) == [False] * 15 + [True]


async def test_replay_detected_across_workers_with_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite"
    caches = [SQLiteReplayCache(path), SQLiteReplayCache(path)]
    try:
        workers = [make_verifier(replay=c) for c in caches]
        token = es_token()
        await workers[0].verify(bearer(token), AUD)
        assert (await rejected(workers[1], bearer(token))).reason == "replay"
    finally:
        for c in caches:
            c.close()
