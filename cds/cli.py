"""The ``cds`` command: serve, services, packs (validate/list/diff), test, explain, audit."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cds.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    over: dict[str, Any] = {}
    for name in ("hooks_dir", "rules_dir", "knowledge_dir"):
        v = getattr(args, name, None)
        if v:
            over[name] = Path(v)
    return load_settings(**over)


def _load(settings: Settings) -> Any:
    from cds.engine.registry import load_ruleset

    rs, problems = load_ruleset(settings.hooks_dir, settings.rules_dir, settings.knowledge_dir)
    return rs, problems


def _print_problems(problems: list[Any]) -> None:
    for p in sorted(problems):
        print(p, file=sys.stderr)


class _NotLoaded(Exception):
    pass


def _ruleset(settings: Settings) -> Any:
    """The validated rule set, or the problems printed and the command failed (exit 1)."""
    rs, problems = _load(settings)
    if rs is None:
        _print_problems(problems)
        raise _NotLoaded
    return rs


# ------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings(args)
    rs, problems = _load(settings)
    if rs is None:
        print("the rule set does not validate; not starting:", file=sys.stderr)
        _print_problems(problems)
        return 1
    env = {
        "CDS_HOOKS_DIR": str(settings.hooks_dir),
        "CDS_RULES_DIR": str(settings.rules_dir),
        "CDS_KNOWLEDGE_DIR": str(settings.knowledge_dir),
        "CDSSERVE_WATCH": "1" if args.reload_packs else "0",
        "CDSSERVE_WORKERS": str(args.workers),
    }
    os.environ.update(env)
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cds-metrics-")
    uvicorn.run(
        "cds.api.asgi:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    )
    return 0


# ------------------------------------------------------------------ services / packs


def cmd_services(args: argparse.Namespace) -> int:
    rs = _ruleset(_settings(args))
    print(json.dumps(rs.services.discovery(), indent=2, ensure_ascii=False))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rs, problems = _load(settings)
    errors = [p for p in problems if p.severity == "error"]
    _print_problems(problems)
    if errors:
        print(f"{len(errors)} error(s); the rule set would NOT be loaded", file=sys.stderr)
        return 1
    n = sum(len(p.rules) for p in rs.all_packs())
    print(f"ok: {len(rs.all_packs())} pack version(s), {n} rules, {len(rs.services.services)} services")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rs = _ruleset(_settings(args))
    now = datetime.now(timezone.utc)
    print(f"{'pack':32} {'version':9} {'status':8} {'effective':24} {'rules':>5}  hash")
    for p in sorted(rs.all_packs(), key=lambda p: (p.id, p.version)):
        m = p.manifest
        eff = f"{m.effective.start}..{m.effective.end or ''}"
        live = "" if m.effective.start <= now.date() and (m.effective.end is None or now.date() < m.effective.end) else " (not now)"
        print(f"{p.id:32} {p.version:9} {m.status:8} {eff + live:24} {len(p.rules):>5}  {p.content_hash[:19]}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from cds.engine.diff import diff_packs

    rs = _ruleset(_settings(args))
    try:
        a, b = (_find_pack(rs, s) for s in (args.a, args.b))
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    print(diff_packs(a, b))
    return 0


def _find_pack(rs: Any, spec: str) -> Any:
    pid, _, ver = spec.partition("@")
    versions = rs.packs.get(pid, {})
    if ver in versions:
        return versions[ver]
    raise KeyError(f"no pack {spec!r} (write id@version; loaded: {', '.join(p.key for p in rs.all_packs())})")


# ------------------------------------------------------------------ test / explain


def cmd_test(args: argparse.Namespace) -> int:
    from cds.testing.suite import coverage_text, junit_xml, run

    settings = _settings(args)
    rs = _ruleset(settings)
    if args.request:
        return _run_request(rs, Path(args.request), args.service, settings, explain=False)
    reports, seconds = run(rs, [Path(p) for p in args.paths])
    total = failed = 0
    for rep in reports:
        print(f"\n{rep.pack.key}  ({rep.pack.dir})")
        for p in rep.problems:
            failed += 1
            total += 1
            print(f"  ERROR {p}")
        for r in rep.results:
            total += 1
            if r.passed:
                if args.verbose:
                    print(f"  ok    {r.case.file.name}: {r.case.name}")
            else:
                failed += 1
                print(f"  FAIL  {r.case.file.name}:{r.case.line}: {r.case.name}")
                for f in r.failures:
                    print("        " + f.replace("\n", "\n        "))
        cov = rep.coverage
        if cov is not None:
            print("  " + coverage_text(cov).replace("\n", "\n  "))
            if not cov.ok:
                failed += 1
                total += 1
                print(f"  FAIL  coverage below the pack's minimum of {cov.minimum:.0f}%")
    if args.junit:
        junit_xml(reports, Path(args.junit))
    print(f"\n{total - failed} passed, {failed} failed in {seconds:.2f}s ({len(reports)} pack version(s))")
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rs = _ruleset(settings)
    return _run_request(rs, Path(args.request), args.service, settings, explain=True)


def _run_request(rs: Any, path: Path, service_id: str | None, settings: Settings, *, explain: bool) -> int:
    """Run a captured CDS Hooks request through the service (prefetch, FHIR fallback, engine)."""
    import httpx

    from cds.context.fhir import FhirClient
    from cds.context.prefetch import DataResolver, PreconditionFailed
    from cds.hooks.models import CONTEXT_MODELS, HookRequest
    from cds.pipeline import evaluate

    raw = json.loads(path.read_text(encoding="utf-8"))
    req = HookRequest.model_validate(raw)
    svc = rs.services.get(service_id) if service_id else next((s for s in rs.services.services.values() if req.hook in s.hooks), None)
    if svc is None:
        print(f"no service {'named ' + service_id if service_id else 'for hook ' + req.hook}", file=sys.stderr)
        return 2
    ctx = CONTEXT_MODELS[req.hook].model_validate(req.context)

    async def resolve() -> Any:
        async with httpx.AsyncClient(timeout=settings.fhir.timeout_seconds) as http:
            return await DataResolver(FhirClient(http, settings.fhir.max_pages), settings.fhir).resolve(req, svc)

    try:
        data = asyncio.run(resolve())
    except PreconditionFailed as e:
        print(f"412 Precondition Failed: {e}", file=sys.stderr)
        return 1
    ext = req.extension or {}
    now = datetime.now(timezone.utc)
    if isinstance(ext.get("org.cdsrules.now"), str):
        now = datetime.fromisoformat(ext["org.cdsrules.now"].replace("Z", "+00:00"))
    locale = ext.get("org.cdsrules.locale") if ext.get("org.cdsrules.locale") in ("nb", "en") else (svc.locale or settings.default_locale)
    ev = evaluate(
        rs, svc, hook=req.hook, context=ctx.model_dump(mode="json"),
        resources=[r for k in data.values() for r in k.resources], now=now, locale=locale, explain=explain,
    )
    body = ev.response.wire()
    if explain:
        for t in ev.traces:
            print(f"rule {t.rule} ({t.pack}): {t.candidates} candidate(s), {t.fired} fired")
            for e in t.evaluations:
                subj = ", ".join(f"{k}={v}" for k, v in e.items() if k in ("item", "a", "b", "row"))
                if "error" in e:
                    print(f"   ERROR {subj}: {e['error']}")
                    continue
                print(f"   {'FIRED' if e['fired'] else 'no   '} {subj}  when={e['when']} severity={e['severity']}")
                for k, v in e.get("let", {}).items():
                    print(f"         let.{k} = {v!r}")
                for k, v in e.get("reads", {}).items():
                    print(f"         {k} = {v!r}")
        print()
    for c in body["cards"]:
        print(f"[{c['indicator'].upper()}] {c['summary']}")
        for s in c.get("suggestions", []):
            print(f"    → {s['label']}")
    if not body["cards"]:
        print("(no cards)")
    if getattr(_run_request, "json", False):
        print(json.dumps(body, indent=2, ensure_ascii=False))
    return 0


# ------------------------------------------------------------------ audit


def cmd_audit(args: argparse.Namespace) -> int:
    from cds.audit.sqlite import SQLiteAuditStore

    settings = _settings(args)
    store = SQLiteAuditStore(settings.audit.path)
    store.start()
    try:
        if args.what == "analytics":
            rows = store.analytics()
        elif args.what == "feedback":
            rows = store.feedback(limit=args.limit)
        else:
            rows = store.evaluations(limit=args.limit)
        print(json.dumps(rows, indent=2, default=str, ensure_ascii=False))
    finally:
        store.close()
    return 0


def cmd_import_fest(args: argparse.Namespace) -> int:
    from cds.knowledge.fest import FestError, import_fest

    try:
        summary = import_fest(Path(args.file), Path(args.out))
    except FestError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cds", description="CDS Hooks rules service")
    ap.add_argument("--hooks-dir", dest="hooks_dir")
    ap.add_argument("--rules-dir", dest="rules_dir")
    ap.add_argument("--knowledge-dir", dest="knowledge_dir")
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--reload-packs", action="store_true", help="watch hooks/, rules/, knowledge/ and reload on change")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("services", help="print what discovery returns")
    s.set_defaults(fn=cmd_services)

    packs = sub.add_parser("packs", help="rule packs").add_subparsers(dest="packs_cmd", required=True)
    s = packs.add_parser("validate", help="validate every pack, knowledge table and service (file:line:col)")
    s.set_defaults(fn=cmd_validate)
    s = packs.add_parser("list", help="list loaded pack versions")
    s.set_defaults(fn=cmd_list)
    s = packs.add_parser("diff", help="rules and knowledge rows changed between two pack versions")
    s.add_argument("a", help="id@version")
    s.add_argument("b", help="id@version")
    s.set_defaults(fn=cmd_diff)

    s = sub.add_parser("test", help="run pack test suites (default: all of rules/)")
    s.add_argument("paths", nargs="*")
    s.add_argument("--junit", help="write JUnit XML here")
    s.add_argument("--request", help="run one captured CDS Hooks request JSON and print the cards")
    s.add_argument("--service", help="service id for --request (default: the first for its hook)")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(fn=cmd_test)

    s = sub.add_parser("explain", help="why did (or didn't) each rule fire for this request?")
    s.add_argument("request")
    s.add_argument("--service")
    s.set_defaults(fn=cmd_explain)

    s = sub.add_parser("audit", help="read the audit store")
    s.add_argument("what", choices=["evaluations", "feedback", "analytics"])
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(fn=cmd_audit)

    kn = sub.add_parser("knowledge", help="knowledge tables").add_subparsers(dest="kn_cmd", required=True)
    s = kn.add_parser("import-fest", help="convert FEST's interaction catalogue (XML) into knowledge tables")
    s.add_argument("file")
    s.add_argument("--out", default="knowledge/medication/fest", help="folder for the generated tables")
    s.set_defaults(fn=cmd_import_fest)

    args = ap.parse_args(argv)
    try:
        return int(args.fn(args))
    except _NotLoaded:
        return 1


if __name__ == "__main__":
    sys.exit(main())
