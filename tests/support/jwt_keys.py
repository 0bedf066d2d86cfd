"""Test keys and really-signed CDS Hooks client JWTs.

    from tests.support.jwt_keys import es384_key, rs384_key, jwks, make_token

    key = es384_key()                                    # cached P-384 private key (joserfc ECKey)
    client_jwks = jwks((key, "kid-1"))                   # {"keys": [public JWK with kid]}
    token = make_token(key, iss="https://ehr.example", aud="https://cds.example/cds-services",
                       kid="kid-1")                      # ES384, iat=now, exp=iat+300, random jti
    headers = {"Authorization": f"Bearer {token}"}

Pass ``OMIT`` as a value (``iat=OMIT``, ``extra_claims={"jti": OMIT}``,
``extra_header={"typ": OMIT}``) to leave a member out entirely.

The CDS Hooks spec's own example (section "Security and Safety" > "JWT Example" of CDS Hooks
2.0 / 2.0.1) is reproduced in the ``SPEC_EXAMPLE_*`` constants, copied verbatim from the spec
text. Its key pair is public and it expired on 2015-01-29 (exp 1422568860): a verifier must
reject it. The signature has been checked to verify with the published public key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from functools import lru_cache
from typing import Any, Final

from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "OMIT",
    "b64url",
    "compact",
    "ec_key",
    "es384_key",
    "hmac_token",
    "hs256_token",
    "jwks",
    "make_token",
    "public_jwk",
    "rs384_key",
    "SPEC_EXAMPLE_AUD",
    "SPEC_EXAMPLE_ISS",
    "SPEC_EXAMPLE_JKU",
    "SPEC_EXAMPLE_KID",
    "SPEC_EXAMPLE_PRIVATE_JWK",
    "SPEC_EXAMPLE_PUBLIC_JWKS",
    "SPEC_EXAMPLE_TENANT",
    "SPEC_EXAMPLE_TOKEN",
    "spec_example_key",
    "unsigned_token",
]


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()

Key = ECKey | RSAKey


@lru_cache(maxsize=None)
def ec_key(crv: str = "P-384", name: str = "default") -> ECKey:
    """A cached EC private key; different ``name`` values give different keys."""
    return ECKey.generate_key(crv, private=True)


def es384_key(name: str = "default") -> ECKey:
    return ec_key("P-384", name)


@lru_cache(maxsize=None)
def rs384_key(name: str = "default", bits: int = 2048) -> RSAKey:
    return RSAKey.generate_key(bits, private=True)


def public_jwk(key: Key, kid: str, **members: Any) -> dict[str, Any]:
    """The public JWK of ``key`` with ``kid`` plus optional members (``alg``, ``use``...)."""
    data: dict[str, Any] = dict(key.as_dict(private=False))
    data.update(kid=kid, **members)
    return data


def jwks(*entries: tuple[Key, str] | dict[str, Any]) -> dict[str, Any]:
    """A public JWK Set from ``(key, kid)`` pairs or ready JWK dicts."""
    return {"keys": [e if isinstance(e, dict) else public_jwk(e[0], e[1]) for e in entries]}


def b64url(data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _without_omitted(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not OMIT}


def _build(
    *, alg: str, kid: str | None | _Omit, iss: Any, aud: Any, exp: Any, iat: Any, jti: Any,
    tenant: Any, jku: str | None, extra_header: dict[str, Any] | None, extra_claims: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    now = int(time.time())
    iat = now if iat is None else iat
    if exp is None:
        exp = (iat if isinstance(iat, (int, float)) else now) + 300
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": OMIT if kid is None else kid}
    if jku is not None:
        header["jku"] = jku
    header.update(extra_header or {})
    claims: dict[str, Any] = {
        "iss": iss, "aud": aud, "exp": exp, "iat": iat,
        "jti": str(uuid.uuid4()) if jti is None else jti,
    }
    if tenant is not None:
        claims["tenant"] = tenant
    claims.update(extra_claims or {})
    return _without_omitted(header), _without_omitted(claims)


def make_token(
    key: Key,
    *,
    iss: Any,
    aud: Any,
    kid: str | None,
    alg: str = "ES384",
    exp: Any = None,
    iat: Any = None,
    jti: Any = None,
    tenant: Any = None,
    jku: str | None = None,
    extra_header: dict[str, Any] | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> str:
    """A compact JWS really signed with ``key`` using ``alg`` (any alg joserfc can sign with).

    Defaults: ``iat`` = now, ``exp`` = ``iat`` + 300 (like the Sandbox), ``jti`` = random UUID.
    ``kid=None`` or ``OMIT`` leaves ``kid`` out of the header.
    """
    header, claims = _build(
        alg=alg, kid=kid, iss=iss, aud=aud, exp=exp, iat=iat, jti=jti, tenant=tenant, jku=jku,
        extra_header=extra_header, extra_claims=extra_claims,
    )
    # Sign the JWS signing input directly with joserfc's algorithm implementation, so tests can
    # send headers a well-behaved library would refuse to produce (e.g. an unknown ``crit``).
    signing_input = f"{b64url(header)}.{b64url(claims)}"
    signature = jws.JWSRegistry.algorithms[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64url(signature)}"


def compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """Assemble a compact JWS from raw parts (no signing)."""
    return f"{b64url(header)}.{b64url(claims)}.{b64url(signature)}"


def unsigned_token(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """An ``alg: none`` token (unsecured JWS, empty signature)."""
    return compact(header or {"alg": "none", "typ": "JWT", "kid": "none"}, claims)


def hmac_token(secret: bytes, header: dict[str, Any], claims: dict[str, Any], digest: str = "sha256") -> str:
    """HMAC over the JWS signing input, e.g. with a public key's bytes as the secret
    (the classic RS/ES -> HS algorithm-confusion attack). ``digest``: sha256 (HS256), sha384..."""
    signing_input = f"{b64url(header)}.{b64url(claims)}"
    mac = hmac.new(secret, signing_input.encode(), getattr(hashlib, digest)).digest()
    return f"{signing_input}.{b64url(mac)}"


def hs256_token(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    return hmac_token(secret, header, claims, "sha256")


# --- CDS Hooks 2.0.1 spec, "Trusting CDS Clients" > "JWT Example" (verbatim) -------------------

SPEC_EXAMPLE_KID: Final = "example-kid"
SPEC_EXAMPLE_ISS: Final = "https://fhir-ehr.example.com/"
SPEC_EXAMPLE_AUD: Final = "https://cds.example.org/cds-services/some-service"
SPEC_EXAMPLE_JKU: Final = "https://fhir-ehr.example.com/jwk_uri"
SPEC_EXAMPLE_TENANT: Final = "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"
SPEC_EXAMPLE_EXP: Final = 1422568860
SPEC_EXAMPLE_IAT: Final = 1311280970

SPEC_EXAMPLE_PUBLIC_JWKS: Final[dict[str, Any]] = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "example-kid",
            "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
            "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
            "alg": "ES384",
        }
    ]
}

SPEC_EXAMPLE_PRIVATE_JWK: Final[dict[str, Any]] = {
    "kty": "EC",
    "d": "SeFXUXda8UomZ8GFUl7HH_Oi15rIbfMcsWj9ecIsDR8kLbqsEz2CGNgwy_IcILxy",
    "use": "sig",
    "crv": "P-384",
    "kid": "example-kid",
    "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
    "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
    "alg": "ES384",
}

# header {"alg":"ES384","typ":"JWT","kid":"example-kid","jku":"https://fhir-ehr.example.com/jwk_uri"}
# payload {"iss":"https://fhir-ehr.example.com/","aud":"https://cds.example.org/cds-services/some-service",
#          "exp":1422568860,"iat":1311280970,"jti":"ee22b021-e1b7-4611-ba5b-8eec6a33ac1e",
#          "tenant":"2ddd6c3a-8e9a-44c6-a305-52111ad302a2"}
SPEC_EXAMPLE_TOKEN: Final = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGlyLWVoci5l"
    "eGFtcGxlLmNvbS9qd2tfdXJpIn0"
    ".eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIsImF1ZCI6Imh0dHBzOi8vY2RzLmV4YW1wbGUub3JnL2Nk"
    "cy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0MjI1Njg4NjAsImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUyMmIw"
    "MjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNhYzFlIiwidGVuYW50IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFh"
    "ZDMwMmEyIn0"
    ".d1WfLjGRKlcWB94l9do4cM8REXeYJLL6SGUBO8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vX"
    "WEIYTdjooZdooCSDf2L8-i4awdoUwiEb"
)


def spec_example_key() -> ECKey:
    """The spec's (public!) example private key, to sign further tokens as that example client."""
    return ECKey.import_key(SPEC_EXAMPLE_PRIVATE_JWK)
