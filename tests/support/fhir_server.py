"""A real FHIR R4 server on loopback for end-to-end tests, started by the test run itself.

The server is Medplum's FHIR engine (``@medplum/fhir-router`` ``FhirRouter`` +
``MemoryRepository``, 5.2.13) behind a small ``node:http`` wrapper in
``tests/fhir_server/server.mjs``, run by the Node 22 binary that the npm package ``node``
installs into ``tests/fhir_server/node_modules`` (the machine's own Node is too old).

Use it through the pytest plugin in this module::

    # tests/conftest.py
    pytest_plugins = ["tests.support.fhir_server"]

    def test_something(fhir_server):          # session-scoped, shared by all tests
        fhir_server.reset()
        fhir_server.load([{"resourceType": "Patient", "id": "p1"}])
        ... point the service under test at fhir_server.base_url ...
        assert fhir_server.requests()[0]["authorization"] == "Bearer abc"

or ``fresh_fhir_server`` (same server, but reset before the test). When Node/npm cannot be
made to work the fixtures fail loudly when ``CI`` is set, and otherwise skip with a banner
in the terminal summary, so FHIR-backed tests never vanish silently.

Fixture loading (``load``) and the control calls send ``X-Test-Control: 1``: the server
does not log them in ``requests()`` and fault injection (``fail``/``delay``) ignores them.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import httpx
import pytest

SERVER_DIR = Path(__file__).resolve().parent.parent / "fhir_server"
MIN_NODE = (22, 18)
CONTROL_HEADERS = {"X-Test-Control": "1", "Accept": "application/fhir+json"}
FHIR_JSON = "application/fhir+json"

__all__ = ["FhirTestServer", "FhirServerUnavailable", "fhir_server", "fresh_fhir_server"]


class FhirServerUnavailable(RuntimeError):
    """Node/npm or the server itself could not be made to work on this machine."""


def _ci_is_set() -> bool:
    value = os.environ.get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def _node_version(node: Path) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        return tuple(int(p) for p in out.lstrip("v").split(".")[:3])
    except ValueError:
        return None


class _InstallLock:
    """Cross-process lock so parallel test processes (xdist) do not run `npm ci` together."""

    def __init__(self, directory: Path) -> None:
        digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"cds-fhir-server-install-{digest}.lock"
        self._fh = None

    def __enter__(self) -> "_InstallLock":
        self._fh = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._fh is not None
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        except ImportError:  # pragma: no cover
            pass
        self._fh.close()


class FhirTestServer:
    """Owns one test FHIR server process: install, start, control, stop."""

    def __init__(
        self,
        *,
        server_dir: Path = SERVER_DIR,
        host: str = "127.0.0.1",
        port: int = 0,
        install_timeout: float = 600.0,
        start_timeout: float = 60.0,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.server_dir = Path(server_dir)
        self.host = host
        self._requested_port = port  # 0 = any free port
        self.install_timeout = install_timeout
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)  # more server.mjs options, e.g. --no-split-search-params
        self._proc: subprocess.Popen[str] | None = None
        self._stderr_file: Any = None
        self._client: httpx.Client | None = None
        self._port: int | None = None
        # measurements, for reports and debugging
        self.install_seconds: float | None = None
        self.start_seconds: float | None = None

    # ------------------------------------------------------------------ install
    def _lock_packages(self, path: Path) -> dict[str, Any] | None:
        try:
            packages = json.loads(path.read_text())["packages"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        packages.pop("", None)  # the root project: only in package-lock.json
        return packages

    def node_binary(self) -> Path:
        """The Node >= 22.18 that runs the server: $CDS_TEST_NODE, else the npm package's."""
        override = os.environ.get("CDS_TEST_NODE")
        if override:
            return Path(override)
        return self.server_dir / "node_modules" / "node" / "bin" / "node"

    def _node_ok(self) -> tuple[bool, tuple[int, ...] | None]:
        node = self.node_binary()
        version = _node_version(node) if node.exists() else None
        return (version is not None and version[:2] >= MIN_NODE), version

    def _packages_current(self) -> bool:
        # npm ci writes node_modules/.package-lock.json last; it equals the lock file's
        # packages exactly when node_modules is complete and current.
        wanted = self._lock_packages(self.server_dir / "package-lock.json")
        have = self._lock_packages(self.server_dir / "node_modules" / ".package-lock.json")
        return wanted is not None and have == wanted

    def _npm_ci(self) -> str:
        npm = shutil.which("npm")
        if npm is None:
            raise FhirServerUnavailable(
                "`npm` is not on PATH; it is needed once to install the test FHIR server "
                f"into {self.server_dir}/node_modules (apt-get install npm, or any Node >= 18)."
            )
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=self.server_dir,
                capture_output=True,
                text=True,
                timeout=self.install_timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise FhirServerUnavailable(
                f"`npm ci` in {self.server_dir} timed out after {self.install_timeout:.0f}s"
            ) from exc
        except OSError as exc:
            raise FhirServerUnavailable(f"cannot run {npm}: {exc}") from exc
        self.install_seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise FhirServerUnavailable(
                f"`npm ci` in {self.server_dir} failed (exit {proc.returncode}):\n"
                + (proc.stdout[-2000:] + proc.stderr[-4000:]).strip()
            )
        return proc.stderr

    def ensure_installed(self) -> Path:
        """Run `npm ci` when node_modules is missing or stale vs the lock file (or the Node
        binary it installs is missing); return the Node binary to run the server with."""
        if not (self.server_dir / "package-lock.json").is_file():
            raise FhirServerUnavailable(f"{self.server_dir}/package-lock.json is missing")
        override = os.environ.get("CDS_TEST_NODE")
        with _InstallLock(self.server_dir):
            npm_log = None
            if not self._packages_current() or (not override and not self._node_ok()[0]):
                npm_log = self._npm_ci()
            ok, version = self._node_ok()
            if not ok:
                node = self.node_binary()
                if override:
                    raise FhirServerUnavailable(
                        f"CDS_TEST_NODE={override} is not a Node >= {MIN_NODE[0]}.{MIN_NODE[1]} "
                        f"binary (version: {version})"
                    )
                raise FhirServerUnavailable(
                    f"after `npm ci`, {node} is missing or too old (version: {version}); the npm "
                    "package `node` installs its binary from a preinstall script: was it blocked "
                    "(npm allowScripts / --ignore-scripts)?\n" + (npm_log or "")[-2000:]
                )
        return self.node_binary()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FhirTestServer":
        if self._proc is not None:
            return self
        node = self.ensure_installed()
        self._stderr_file = tempfile.TemporaryFile(mode="w+t", prefix="fhir-server-stderr-")
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                [
                    str(node),
                    str(self.server_dir / "server.mjs"),
                    "--host",
                    self.host,
                    "--port",
                    str(self._requested_port),
                    "--exit-on-stdin-close",
                    *self.extra_args,
                ],
                cwd=self.server_dir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr_file,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            raise FhirServerUnavailable(f"cannot execute {node}: {exc}") from exc

        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream: Any) -> None:  # drain stdout forever so the pipe never fills
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self._proc.stdout,), daemon=True).start()
        deadline = started + self.start_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail_start(f"no LISTENING line within {self.start_timeout:.0f}s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._fail_start("the server exited before it was ready")
            assert line is not None
            if line.startswith("LISTENING "):
                self._port = int(line.split()[1])
                break
        self.start_seconds = time.monotonic() - started
        self._client = httpx.Client(timeout=30.0)
        return self

    def _fail_start(self, why: str) -> None:
        stderr = self._read_stderr()
        self.stop()
        raise FhirServerUnavailable(f"test FHIR server did not start: {why}\n--- stderr ---\n{stderr}")

    def _read_stderr(self) -> str:
        if self._stderr_file is None:
            return ""
        try:
            self._stderr_file.seek(0)
            return self._stderr_file.read()[-4000:]
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin:
                    proc.stdin.close()
            except OSError:
                pass
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        self._port = None

    def __enter__(self) -> "FhirTestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ------------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FhirTestServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """FHIR base URL at the root: http://127.0.0.1:PORT (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url_with_path(self) -> str:
        """Same server, base URL with a path (http://127.0.0.1:PORT/fhir/R4): catches URL
        joining that drops the base path."""
        return f"{self.base_url}/fhir/R4"

    # ------------------------------------------------------------------ control
    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("FhirTestServer is not started")
        return self._client

    def _control(self, method: str, path: str, json: Any = None) -> httpx.Response:
        resp = self.client.request(method, self.base_url + path, json=json, headers=CONTROL_HEADERS)
        if resp.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {resp.status_code}: {resp.text[:2000]}")
        return resp

    def reset(self) -> None:
        """Empty the repository, the request log and any fault injection."""
        self._control("POST", "/$reset")

    def load(self, resources: Iterable[dict[str, Any]]) -> None:
        """Store resources in one transaction: PUT for those with an id, POST otherwise.

        A Bundle of type transaction or batch in the list is posted as it is.
        Not logged in requests(); not affected by fail()/delay().
        """
        entries = []
        for res in resources:
            rtype = res.get("resourceType")
            if not rtype:
                raise ValueError(f"resource without resourceType: {res!r}")
            if rtype == "Bundle" and res.get("type") in ("transaction", "batch"):
                self._post_bundle(res)
                continue
            if res.get("id"):
                req = {"method": "PUT", "url": f"{rtype}/{res['id']}"}
            else:
                req = {"method": "POST", "url": rtype}
            entries.append({"resource": res, "request": req})
        if entries:
            self._post_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries})

    def _post_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        resp = self.client.post(
            self.base_url,
            json=bundle,
            headers={**CONTROL_HEADERS, "Content-Type": FHIR_JSON},
        )
        if resp.status_code >= 400:
            raise AssertionError(f"loading fixtures failed: {resp.status_code}: {resp.text[:4000]}")
        result = resp.json()
        for entry in result.get("entry", []):
            status = str(entry.get("response", {}).get("status", "200"))
            if not status.startswith("2"):
                raise AssertionError(f"loading fixtures failed: entry status {status}: {entry}")
        return result

    def requests(self) -> list[dict[str, Any]]:
        """The FHIR requests received since the last reset/clear, oldest first.

        Each: seq, method, url (path+query as received, incl. any /fhir/R4 prefix), path
        (prefix stripped), query (dict, repeated keys joined by ','), authorization_present,
        authorization (raw header value or None), accept, content_type, started_ms, status,
        duration_ms.
        """
        return self._control("GET", "/$requests").json()

    def clear_requests(self) -> None:
        self._control("POST", "/$requests/clear")

    def fail(self, status: int, count: int = 1, *, match: str | None = None, delay_ms: int = 0) -> None:
        """The next `count` FHIR requests (whose path+query contains `match`, if given)
        answer `status` with an OperationOutcome."""
        body: dict[str, Any] = {"status": status, "count": count, "delay_ms": delay_ms}
        if match:
            body["match"] = match
        self._control("POST", "/$fail", body)

    def delay(self, ms: int, count: int | None = None, *, match: str | None = None) -> None:
        """Delay responses by `ms`: the next `count` requests, or all until clear_faults()."""
        body: dict[str, Any] = {"delay_ms": ms}
        if count is not None:
            body["count"] = count
        if match:
            body["match"] = match
        self._control("POST", "/$fail", body)

    def clear_faults(self) -> None:
        self._control("POST", "/$fail", {})


# ---------------------------------------------------------------------- pytest plugin
_UNAVAILABLE: list[str] = []


def _unavailable_message(exc: BaseException) -> str:
    return (
        "The FHIR-backed tests could not run: the test FHIR server (Medplum on Node 22, "
        f"{SERVER_DIR}) is unavailable.\n{exc}\n"
        "Fix: make `npm` work and reach the npm registry once (it runs `npm ci` in "
        "tests/fhir_server), or set CDS_TEST_NODE to a Node >= 22.18 binary."
    )


@pytest.fixture(scope="session")
def fhir_server() -> Iterable[FhirTestServer]:
    """A started test FHIR server shared by the whole session (call reset() yourself)."""
    server = FhirTestServer()
    try:
        server.start()
    except FhirServerUnavailable as exc:
        message = _unavailable_message(exc)
        if _ci_is_set():
            pytest.fail("CI is set, so this is an error, not a skip.\n" + message, pytrace=False)
        if message not in _UNAVAILABLE:
            _UNAVAILABLE.append(message)
            print("\n" + "!" * 30 + " FHIR SERVER UNAVAILABLE " + "!" * 30 + "\n" + message, file=sys.stderr)
        pytest.skip("FHIR SERVER UNAVAILABLE (see the banner in the summary): " + str(exc).splitlines()[0])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_fhir_server(fhir_server: FhirTestServer) -> FhirTestServer:
    """The session's server, reset (empty repository, log and faults) before the test."""
    fhir_server.reset()
    return fhir_server


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not _UNAVAILABLE:
        return
    tr = terminalreporter
    tr.write_sep("!", "FHIR SERVER UNAVAILABLE: FHIR-backed tests were SKIPPED", red=True, bold=True)
    for message in _UNAVAILABLE:
        tr.write_line(message, red=True)
    tr.write_line("(With CI set these tests fail instead of skipping.)", red=True)
