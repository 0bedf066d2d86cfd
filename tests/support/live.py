"""A real CDS service on a loopback port (uvicorn in a thread), plus a client that signs a
fresh ES384 JWT for every call, as an EHR does."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from cds.api.app import create_app
from cds.api.auth import AuthSettings, TrustedClient
from cds.hooks.conformance import check_discovery, check_response
from cds.settings import AuditSettings, FhirSettings, Settings
from tests.support.jwt_keys import es384_key, jwks, make_token

REPO = Path(__file__).resolve().parents[2]
CLIENT_ISS = "https://ehr.test.example"
KID = "ehr-test-key"


def repo_copy(dest: Path) -> Path:
    """A private copy of hooks/, rules/ and knowledge/ (tests may break it on purpose)."""
    for d in ("hooks", "rules", "knowledge"):
        shutil.copytree(REPO / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def make_settings(root: Path, **over: Any) -> Settings:
    key = es384_key("ehr")
    base: dict[str, Any] = dict(
        hooks_dir=root / "hooks",
        rules_dir=root / "rules",
        knowledge_dir=root / "knowledge",
        audit=AuditSettings(path=root / "audit.sqlite"),
        auth=AuthSettings(clients=[TrustedClient(iss=CLIENT_ISS, jwks=jwks((key, KID)), locale="en")]),
        fhir=FhirSettings(timeout_seconds=2.0, allowed_servers=["*"], open_servers=[]),
        log_level="WARNING",
    )
    base.update(over)
    return Settings(**base)


make_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, even when imported
test_settings = make_settings  # the name other test modules import


class LiveService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.http = httpx.Client(timeout=10)
        self.key = es384_key("ehr")

    @property
    def state(self) -> Any:
        return self.app.state.cds

    def start(self) -> LiveService:
        self.thread.start()
        deadline = time.time() + 15
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.http.close()

    def token(self, path: str, **kw: Any) -> str:
        return make_token(self.key, iss=CLIENT_ISS, aud=self.base_url + path, kid=KID, **kw)

    def get(self, path: str, *, auth: bool = True, headers: dict[str, str] | None = None) -> httpx.Response:
        h = dict(headers or {})
        if auth:
            h["Authorization"] = f"Bearer {self.token(path)}"
        return _checked(path, self.http.get(self.base_url + path, headers=h))

    def post(self, path: str, body: Any = None, *, content: bytes | None = None, auth: bool = True, headers: dict[str, str] | None = None) -> httpx.Response:
        h = {"Content-Type": "application/json", **(headers or {})}
        if auth:
            h["Authorization"] = f"Bearer {self.token(path)}"
        if content is not None:
            return _checked(path, self.http.post(self.base_url + path, content=content, headers=h))
        return _checked(path, self.http.post(self.base_url + path, json=body, headers=h))


def _checked(path: str, r: httpx.Response) -> httpx.Response:
    """Every response the suite receives is checked against the CDS Hooks 2.0.1 schema and
    invariants (cards, discovery) or the error contract (OperationOutcome, bare 401)."""
    if r.status_code == 200 and path == "/cds-services":
        problems = check_discovery(r.json())
        assert not problems, problems
    elif r.status_code == 200 and path.startswith("/cds-services/") and not path.endswith("/feedback"):
        problems = check_response(r.json())
        assert not problems, problems
    elif r.status_code == 401:
        assert r.content == b"", "401 must be bare"
    elif r.status_code >= 400 and path.startswith("/cds-services"):
        assert r.json()["resourceType"] == "OperationOutcome", r.text
    return r
