"""Run pack suites: results, rule and knowledge-row coverage, JUnit XML."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from cds.engine.loader import LoadedPack
from cds.engine.registry import RuleSet
from cds.testing.cases import CaseResult, load_cases, run_case
from cds.yamlio import Problem


@dataclass
class Coverage:
    pack: str
    rules_total: int
    rules_covered: int
    missing_positive: list[str]  # rules with no case where they fire
    missing_negative: list[str]  # rules with no case asserting they do not fire
    rows_total: int
    rows_covered: int
    uncovered_rows: list[str]  # "table:line (id)"
    minimum: float | None

    @property
    def rule_pct(self) -> float:
        return 100.0 if not self.rules_total else 100.0 * self.rules_covered / self.rules_total

    @property
    def row_pct(self) -> float:
        return 100.0 if not self.rows_total else 100.0 * self.rows_covered / self.rows_total

    @property
    def ok(self) -> bool:
        return self.minimum is None or (self.rule_pct >= self.minimum and self.row_pct >= self.minimum)


@dataclass
class PackReport:
    pack: LoadedPack
    results: list[CaseResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    coverage: Coverage | None = None


def select_packs(ruleset: RuleSet, paths: list[Path]) -> list[LoadedPack]:
    packs = ruleset.all_packs()
    if not paths:
        return sorted(packs, key=lambda p: (p.id, p.version))
    chosen = []
    for p in packs:
        for path in paths:
            rp = path.resolve()
            if rp == p.dir.resolve() or p.dir.resolve() in rp.parents or rp in p.dir.resolve().parents:
                chosen.append(p)
                break
    return sorted(chosen, key=lambda p: (p.id, p.version))


def run_pack(ruleset: RuleSet, pack: LoadedPack, only_file: Path | None = None) -> PackReport:
    rep = PackReport(pack)
    for f in pack.test_files:
        if only_file is not None and f.resolve() != only_file.resolve():
            continue
        cases, probs = load_cases(f)
        rep.problems.extend(probs)
        for c in cases:
            rep.results.append(run_case(ruleset, pack, c))
    rep.coverage = coverage(pack, rep.results)
    return rep


def coverage(pack: LoadedPack, results: list[CaseResult]) -> Coverage:
    positive: set[str] = set()
    negative: set[str] = set()
    rows: set[tuple[str, int]] = set()
    for r in results:
        if not r.passed:
            continue
        positive |= r.fired_rules
        rows |= r.fired_rows
        if r.case.expect.exhaustive:
            for rule in pack.rules:
                if r.case.hook in rule.defn.hooks and rule.id not in r.fired_rules:
                    negative.add(rule.id)
    ids = [r.id for r in pack.rules]
    covered = [i for i in ids if i in positive and i in negative]
    all_rows: list[tuple[str, int, str]] = []
    for t in sorted(pack.tables.values(), key=lambda t: t.id):  # every declared table: joined or looked up
        for row, line in zip(t.rows, t.lines):
            all_rows.append((t.id, line, str(row.get("id") or "")))
    uncovered = [f"{t}:{line}" + (f" ({rid})" if rid else "") for t, line, rid in all_rows if (t, line) not in rows]
    return Coverage(
        pack=pack.key,
        rules_total=len(ids),
        rules_covered=len(covered),
        missing_positive=[i for i in ids if i not in positive],
        missing_negative=[i for i in ids if i not in negative],
        rows_total=len(all_rows),
        rows_covered=len(all_rows) - len(uncovered),
        uncovered_rows=uncovered,
        minimum=pack.manifest.min_coverage,
    )


def junit_xml(reports: list[PackReport], path: Path) -> None:
    root = ET.Element("testsuites")
    total = fails = 0
    for rep in reports:
        suite = ET.SubElement(root, "testsuite", name=rep.pack.key)
        n = f = 0
        t_sum = 0.0
        for r in rep.results:
            n += 1
            t_sum += r.seconds
            tc = ET.SubElement(suite, "testcase", classname=f"{rep.pack.key}.{r.case.file.stem}", name=r.case.name, time=f"{r.seconds:.4f}", file=str(r.case.file), line=str(r.case.line))
            if not r.passed:
                f += 1
                fail = ET.SubElement(tc, "failure", message=r.failures[0][:200])
                fail.text = "\n".join(r.failures)
        for p in rep.problems:
            n += 1
            f += 1
            tc = ET.SubElement(suite, "testcase", classname=f"{rep.pack.key}.load", name=f"{Path(p.file).name}:{p.line}")
            ET.SubElement(tc, "error", message=p.message[:200]).text = str(p)
        cov = rep.coverage
        if cov is not None and cov.minimum is not None:
            n += 1
            tc = ET.SubElement(suite, "testcase", classname=f"{rep.pack.key}.coverage", name="minimum coverage")
            if not cov.ok:
                f += 1
                ET.SubElement(tc, "failure", message=f"coverage below {cov.minimum}%").text = coverage_text(cov)
        suite.set("tests", str(n))
        suite.set("failures", str(f))
        suite.set("errors", "0")
        suite.set("time", f"{t_sum:.4f}")
        total += n
        fails += f
    root.set("tests", str(total))
    root.set("failures", str(fails))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def coverage_text(cov: Coverage) -> str:
    lines = [
        f"{cov.pack}: rules {cov.rules_covered}/{cov.rules_total} ({cov.rule_pct:.0f}%), "
        f"knowledge rows {cov.rows_covered}/{cov.rows_total} ({cov.row_pct:.0f}%)"
        + (f", minimum {cov.minimum:.0f}%" if cov.minimum is not None else "")
    ]
    for r in cov.missing_positive:
        lines.append(f"  rule {r}: no case where it fires")
    for r in cov.missing_negative:
        lines.append(f"  rule {r}: no case asserting it does not fire")
    for row in cov.uncovered_rows[:50]:
        lines.append(f"  row {row}: never fires in any case")
    if len(cov.uncovered_rows) > 50:
        lines.append(f"  … and {len(cov.uncovered_rows) - 50} more rows")
    return "\n".join(lines)


def run(ruleset: RuleSet, paths: list[Path]) -> tuple[list[PackReport], float]:
    t0 = time.perf_counter()
    reports = [run_pack(ruleset, p) for p in select_packs(ruleset, paths)]
    return reports, time.perf_counter() - t0
