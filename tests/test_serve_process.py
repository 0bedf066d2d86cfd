"""`cds serve` as an operator runs it: a real process, several workers, a config file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from tests.support.jwt_keys import es384_key, jwks, make_token
from tests.support.live import repo_copy

ISS = "https://ehr.process.test"
KID = "k1"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _start(root: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    config = {
        "auth": {"clients": [{"iss": ISS, "jwks": jwks((es384_key("proc"), KID)), "locale": "en"}]},
        "audit": {"path": str(root / "var" / "audit.sqlite")},
        "log_level": "WARNING",
    }
    (root / "cds.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["CDS_CONFIG_FILE"] = str(root / "cds.yaml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cds.cli", "serve", "--port", str(port), *args],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "cds serve exited")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("cds serve did not become ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return repo_copy(tmp_path)


def _call(base: str, token: str, hook_instance: str) -> httpx.Response:
    body = {
        "hook": "order-sign", "hookInstance": hook_instance,
        "context": {"userId": "Practitioner/1", "patientId": "p1", "draftOrders": {"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "MedicationRequest", "id": "x", "status": "draft", "medicationCodeableConcept": {"text": "Mystery drops"}}}]}},
        "prefetch": {"patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"}, "medications": None, "weight": None},
    }
    return httpx.post(base + "/cds-services/demo-medication-check", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_two_workers_share_replay_protection_and_metrics(root: Path) -> None:
    proc, base = _start(root, "--workers", "2")
    try:
        aud = base + "/cds-services/demo-medication-check"
        key = es384_key("proc")
        codes = []
        for i in range(6):
            tok = make_token(key, iss=ISS, aud=aud, kid=KID)
            codes.append(_call(base, tok, f"call-{i}").status_code)
            codes.append(_call(base, tok, f"replay-{i}").status_code)  # same token again: any worker must refuse it
        assert codes == [200, 401] * 6
        m = httpx.get(base + "/metrics").text
        assert 'cds_requests_total{hook="order-sign",service="demo-medication-check",status="200"} 6.0' in m
    finally:
        _stop(proc)
    # the audit file has every call, written by both workers, none lost on shutdown
    import sqlite3

    con = sqlite3.connect(root / "var" / "audit.sqlite")
    n = con.execute("select count(*) from evaluation").fetchone()[0]
    assert n == 6
    blob = (root / "var" / "audit.sqlite").read_bytes()
    assert b"eyJ" not in blob


def test_reload_packs_watches_the_folders(root: Path) -> None:
    proc, base = _start(root, "--reload-packs")
    try:
        key = es384_key("proc")
        aud = base + "/cds-services/demo-medication-check"
        first = _call(base, make_token(key, iss=ISS, aud=aud, kid=KID), "a").json()
        assert first["cards"][0]["summary"].startswith("Interaction check incomplete")
        cards = root / "rules/demo/showcase-1.1/cards.yaml"
        cards.write_text(cards.read_text().replace("Interaction check incomplete:", "Check incomplete:"), encoding="utf-8")
        deadline = time.time() + 20
        summary = ""
        while time.time() < deadline:
            summary = _call(base, make_token(key, iss=ISS, aud=aud, kid=KID), f"b{time.time()}").json()["cards"][0]["summary"]
            if summary.startswith("Check incomplete:"):
                break
            time.sleep(0.5)
        assert summary.startswith("Check incomplete:")
        # a broken edit is rejected; the running set keeps serving
        cards.write_text(cards.read_text().replace("summary:", "sumary:", 1), encoding="utf-8")
        deadline = time.time() + 20
        ready: dict = {}
        while time.time() < deadline:
            ready = httpx.get(base + "/readyz").json()
            if ready["status"] == "degraded":
                break
            time.sleep(0.5)
        assert ready["status"] == "degraded" and any("sumary" in p for p in ready["lastReload"]["problems"])
        again = _call(base, make_token(key, iss=ISS, aud=aud, kid=KID), "c").json()
        assert again["cards"][0]["summary"].startswith("Check incomplete:")
    finally:
        _stop(proc)


def test_sighup_reloads(root: Path) -> None:
    proc, base = _start(root)
    try:
        before = httpx.get(base + "/readyz").json()["ruleSetLoadedAt"]
        time.sleep(1.1)
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.time() + 15
        after = before
        while time.time() < deadline and after == before:
            time.sleep(0.3)
            after = httpx.get(base + "/readyz").json()["ruleSetLoadedAt"]
        assert after != before
        assert proc.poll() is None
    finally:
        _stop(proc)


def test_refuses_to_start_on_a_broken_rule_set(root: Path) -> None:
    rules = root / "rules/demo/showcase-1.1/rules.yaml"
    rules.write_text(rules.read_text().replace("severity: info", "severity: infoo", 1), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "cds.cli", "serve", "--port", str(_free_port())], cwd=root, capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith("CDS_")})
    assert r.returncode == 1
    assert "rules/demo/showcase-1.1/rules.yaml:" in r.stderr and "not starting" in r.stderr
