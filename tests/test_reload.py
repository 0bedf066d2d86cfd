"""Pack reload over real HTTP: uvicorn on loopback serving a private copy of hooks/, rules/ and
knowledge/, called with really signed JWTs (tests.support.live).

A valid change goes live on ``POST /admin/reload``; a broken one is refused with its
``file:line:col`` while the running rule set keeps answering and ``/readyz`` says ``degraded``;
new pack versions load side by side with the old; retired, draft and not-yet-effective versions
are loaded but never fire.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from cds.testing.fixtures import draft_orders, patient_resources
from tests.support.live import LiveService, repo_copy, test_settings

PID = "pt-reload"
PROV = "org.cdsrules.provenance"
EVAL = "org.cdsrules.evaluation"
CHECK = "demo-medication-check"  # packs: demo.showcase >=1.1,<2
CHECK_V1 = "demo-medication-check-v1"  # packs: demo.showcase 1.0.0
REVIEW = "demo-medication-review"  # patient-view, demo.showcase >=1.1,<2
P10 = "rules/demo/showcase-1.0"
P11 = "rules/demo/showcase-1.1"
P12 = "rules/demo/showcase-1.2"
SUMMARY_11 = 'en: "Interaction: {{ a.name }} + {{ b.name }} – avoid"'


# ---------------------------------------------------------------- requests


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources), "entry": [{"resource": r} for r in resources]}


def _request(hook: str = "order-sign") -> dict[str, Any]:
    """A 60-year-old on azathioprine; febuxostat ordered (order-sign) or both already active
    (patient-view). Every prefetch key any demo service asks for is sent."""
    now = _now()
    meds = [{"id": "aza", "atc": "L04AX01", "text": "Azathioprine 50 mg"}]
    order = {"id": "febu", "atc": "M04AA03", "text": "Febuxostat 80 mg"}
    if hook == "patient-view":
        meds.append(order)
    res = patient_resources({"id": PID, "age": "60y", "sex": "female", "medications": meds}, now)
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PID},
        "prefetch": {
            "patient": next(r for r in res if r["resourceType"] == "Patient"),
            "medications": _bundle([r for r in res if r["resourceType"] == "MedicationRequest"]),
            "weight": _bundle([]),
        },
    }
    if hook != "patient-view":
        body["context"]["draftOrders"] = draft_orders([order], patient_id=PID, now=now)
    return body


def call(svc: LiveService, service_id: str, hook: str = "order-sign") -> dict[str, Any]:
    r = svc.post(f"/cds-services/{service_id}", _request(hook))
    assert r.status_code == 200, r.text
    return r.json()


def packs_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["id"], p["version"]) for p in body["extension"][EVAL]["packs"]]


def interaction_summary(body: dict[str, Any]) -> str:
    [card] = [c for c in body["cards"] if c["extension"][PROV]["rule"] == "interaction"]
    assert card["indicator"] == "critical"
    return card["summary"]


def reload(svc: LiveService, headers: dict[str, str] | None = None) -> Any:
    return svc.post("/admin/reload", None, auth=False, headers=headers)


def readyz(svc: LiveService) -> dict[str, Any]:
    r = svc.get("/readyz", auth=False)
    assert r.status_code == 200
    return r.json()


# ---------------------------------------------------------------- a service on a repo copy


class Live:
    def __init__(self, root: Path, svc: LiveService) -> None:
        self.root = root
        self.svc = svc

    def path(self, rel: str) -> Path:
        return self.root / rel

    def replace(self, rel: str, old: str, new: str) -> None:
        p = self.path(rel)
        text = p.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{rel}: expected exactly one {old!r}"
        p.write_text(text.replace(old, new), encoding="utf-8")

    def line_col(self, rel: str, needle: str) -> tuple[int, int]:
        text = self.path(rel).read_text(encoding="utf-8")
        i = text.index(needle)
        return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1

    def new_version(self, version: str, *, summary: str | None = None, manifest: dict[str, str] | None = None) -> None:
        """Copy showcase-1.1 to showcase-<version> side by side, as an author would."""
        dest = self.path(f"rules/demo/showcase-{version.rsplit('.', 1)[0]}")
        shutil.copytree(self.path(P11), dest)
        rel = str(dest.relative_to(self.root))
        self.replace(f"{rel}/pack.yaml", "version: 1.1.0\n", f"version: {version}\n")
        for old, new in (manifest or {}).items():
            self.replace(f"{rel}/pack.yaml", old, new)
        if summary is not None:
            self.replace(f"{rel}/cards.yaml", SUMMARY_11, f'en: "{summary}"')


def _start(tmp_path: Path, **settings: Any) -> Iterator[Live]:
    root = repo_copy(tmp_path / "repo")
    svc = LiveService(test_settings(root, **settings)).start()
    try:
        yield Live(root, svc)
    finally:
        svc.stop()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    yield from _start(tmp_path)


ADMIN_TOKEN = "reload-" + uuid.uuid4().hex


@pytest.fixture
def live_with_admin_token(tmp_path: Path) -> Iterator[Live]:
    yield from _start(tmp_path, admin_token_sha256=hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest())


# ---------------------------------------------------------------- (a) a valid change


def test_valid_change_goes_live_on_reload(live: Live) -> None:
    svc = live.svc
    before = call(svc, CHECK)
    assert interaction_summary(before).startswith("Interaction: ")
    [(pid, ver)] = packs_of(before)
    assert (pid, ver) == ("demo.showcase", "1.1.0")
    hash_before = before["extension"][EVAL]["packs"][0]["hash"]

    live.replace(f"{P11}/cards.yaml", SUMMARY_11, 'en: "Serious interaction: {{ a.name }} + {{ b.name }} – avoid both"')
    # nothing changes until the reload is asked for (no file watching in this service)
    assert interaction_summary(call(svc, CHECK)).startswith("Interaction: ")

    r = reload(svc)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    assert body["problems"] == []
    assert {"demo.showcase@1.0.0", "demo.showcase@1.1.0"} <= set(body["packs"])

    after = call(svc, CHECK)
    summary = interaction_summary(after)
    assert summary.startswith("Serious interaction: ") and summary.endswith(" – avoid both")
    assert packs_of(after) == [("demo.showcase", "1.1.0")]
    assert after["extension"][EVAL]["packs"][0]["hash"] != hash_before  # the audit can tell them apart
    # the same pack serves the patient-view service too
    assert interaction_summary(call(svc, REVIEW, "patient-view")).startswith("Serious interaction: ")

    ready = readyz(svc)
    assert ready["status"] == "ready"
    assert ready["lastReload"]["ok"] is True


# ---------------------------------------------------------------- (b) a broken change


def test_broken_change_is_refused_and_the_old_rules_keep_serving(live: Live) -> None:
    svc = live.svc
    before = call(svc, CHECK)
    old_summary = interaction_summary(before)
    old_packs = before["extension"][EVAL]["packs"]

    rules = f"{P11}/rules.yaml"
    live.replace(rules, 'when: {"!": {var: item.identified}}', 'when: {"nicht": {var: item.identified}}')
    line, col = live.line_col(rules, 'when: {"nicht"')
    # a valid edit in the same reload must not leak through either
    live.replace(f"{P11}/cards.yaml", SUMMARY_11, 'en: "Edited: {{ a.name }} + {{ b.name }}"')

    r = reload(svc)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["ok"] is False
    where = f"{live.path(rules)}:{line}:{col}: error: JSON Logic: unknown operator `nicht`"
    assert where in body["problems"], body["problems"]

    after = call(svc, CHECK)
    assert interaction_summary(after) == old_summary
    assert after["extension"][EVAL]["packs"] == old_packs  # same version, same content hash

    ready = readyz(svc)
    assert ready["status"] == "degraded"
    assert ready["lastReload"]["ok"] is False
    assert where in ready["lastReload"]["problems"]
    assert {"demo.showcase@1.0.0", "demo.showcase@1.1.0"} <= set(ready["packs"])  # still serving

    # fix it: the next reload succeeds, picks up the valid edit, and readiness recovers
    live.replace(rules, 'when: {"nicht": {var: item.identified}}', 'when: {"!": {var: item.identified}}')
    r = reload(svc)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    assert interaction_summary(call(svc, CHECK)).startswith("Edited: ")
    ready = readyz(svc)
    assert ready["status"] == "ready"
    assert ready["lastReload"]["ok"] is True and ready["lastReload"]["problems"] == []


def test_broken_knowledge_table_is_refused_with_its_csv_line(live: Live) -> None:
    svc = live.svc
    old_summary = interaction_summary(call(svc, CHECK))
    csv_path = live.path("knowledge/demo/interaction-pairs.csv")
    text = csv_path.read_text(encoding="utf-8")
    csv_path.write_text(text.replace(",1,xanthine", ",9,xanthine", 1), encoding="utf-8")
    r = reload(svc)
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert any(p.startswith(f"{csv_path}:2:4: error: relevance: '9' is not one of") for p in problems), problems
    assert any("checksum mismatch" in p for p in problems), problems
    assert interaction_summary(call(svc, CHECK)) == old_summary
    assert readyz(svc)["status"] == "degraded"


# ---------------------------------------------------------------- (c) versions side by side


def test_new_pack_version_side_by_side(live: Live) -> None:
    svc = live.svc
    assert packs_of(call(svc, CHECK)) == [("demo.showcase", "1.1.0")]
    live.new_version("1.2.0", summary="Interaction (pack 1.2): {{ a.name }} + {{ b.name }} – avoid")

    r = reload(svc)
    assert r.status_code == 200, r.text
    assert {"demo.showcase@1.0.0", "demo.showcase@1.1.0", "demo.showcase@1.2.0"} <= set(r.json()["packs"])

    newest = call(svc, CHECK)  # range >=1.1,<2 → the highest active version
    assert packs_of(newest) == [("demo.showcase", "1.2.0")]
    assert interaction_summary(newest).startswith("Interaction (pack 1.2): ")
    card = next(c for c in newest["cards"] if c["extension"][PROV]["rule"] == "interaction")
    assert (card["extension"][PROV]["pack"], card["extension"][PROV]["packVersion"]) == ("demo.showcase", "1.2.0")

    pinned = call(svc, CHECK_V1)  # pinned to 1.0.0
    assert packs_of(pinned) == [("demo.showcase", "1.0.0")]
    assert interaction_summary(pinned).startswith("Drug interaction: ")

    assert packs_of(call(svc, REVIEW, "patient-view")) == [("demo.showcase", "1.2.0")]
    assert "demo.showcase@1.2.0" in readyz(svc)["packs"]


# ---------------------------------------------------------------- (d) admin token


def test_reload_needs_the_admin_token_when_one_is_configured(live_with_admin_token: Live) -> None:
    svc = live_with_admin_token.svc
    assert reload(svc).status_code == 401  # loopback alone is not enough any more
    assert reload(svc, {"Authorization": "Bearer wrong-token"}).status_code == 401
    assert reload(svc, {"Authorization": ADMIN_TOKEN}).status_code == 401  # not a bearer token
    # a CDS client's JWT is not an admin token either
    assert reload(svc, {"Authorization": f"Bearer {svc.token('/admin/reload')}"}).status_code == 401
    r = reload(svc, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True


def test_reload_without_admin_token_is_refused_to_remote_clients(live: Live) -> None:
    # uvicorn trusts X-Forwarded-For from loopback (a reverse proxy): the client is then remote
    r = reload(live.svc, {"X-Forwarded-For": "203.0.113.7"})
    assert r.status_code == 401
    assert readyz(live.svc)["lastReload"]["ok"] is True


# ---------------------------------------------------------------- (e) versions that must not fire


@pytest.mark.parametrize(
    "manifest",
    [
        {"status: active\n": "status: retired\n"},
        {"status: active\n": "status: draft\n"},
        {"from: 2026-01-01\n": "from: 2099-01-01\n"},
    ],
    ids=["retired", "draft", "effective-in-the-future"],
)
def test_inactive_newer_version_is_loaded_but_skipped(live: Live, manifest: dict[str, str]) -> None:
    svc = live.svc
    live.new_version("1.2.0", summary="Interaction (pack 1.2): {{ a.name }} + {{ b.name }} – avoid", manifest=manifest)
    r = reload(svc)
    assert r.status_code == 200, r.text
    assert "demo.showcase@1.2.0" in r.json()["packs"]  # loaded ...
    assert "demo.showcase@1.2.0" in readyz(svc)["packs"]

    body = call(svc, CHECK)  # ... but resolve() falls back to the next matching version
    assert packs_of(body) == [("demo.showcase", "1.1.0")]
    assert interaction_summary(body).startswith("Interaction: ")
    assert "skipped" not in body["extension"][EVAL]


@pytest.mark.parametrize(
    "manifest",
    [
        {"status: active\n": "status: retired\n"},
        {"from: 2025-01-01\n": "from: 2099-01-01\n"},
        {"from: 2025-01-01\n": "from: 2025-01-01\n  to: 2025-07-01\n"},
    ],
    ids=["retired", "effective-in-the-future", "effective-period-ended"],
)
def test_inactive_pinned_version_never_fires_and_is_reported(live: Live, manifest: dict[str, str]) -> None:
    svc = live.svc
    assert packs_of(call(svc, CHECK_V1)) == [("demo.showcase", "1.0.0")]
    for old, new in manifest.items():
        live.replace(f"{P10}/pack.yaml", old, new)
    r = reload(svc)
    assert r.status_code == 200, r.text
    assert "demo.showcase@1.0.0" in r.json()["packs"]

    body = call(svc, CHECK_V1)  # nothing else matches the pin 1.0.0
    assert body["cards"] == []
    ext = body["extension"][EVAL]
    assert ext["packs"] == []
    assert ext["skipped"] == [{"id": "demo.showcase", "version": "1.0.0", "reason": "no active, effective version at this time"}]
    # the other services are unaffected
    assert packs_of(call(svc, CHECK)) == [("demo.showcase", "1.1.0")]
