"""pytest collects every pack's test cases as test items (one case = one test), and one
coverage item per pack (fails when the pack's ``min_coverage`` is not met)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from cds.engine.loader import LoadedPack
from cds.engine.registry import RuleSet, load_ruleset
from cds.testing.cases import Case, load_cases, run_case
from cds.testing.suite import coverage_text, run_pack
from cds.yamlio import Problem

_KEY = pytest.StashKey[tuple[RuleSet | None, list[Problem]]]()


def _ruleset(config: pytest.Config) -> tuple[RuleSet | None, list[Problem]]:
    if _KEY not in config.stash:
        root = Path(str(config.rootpath))
        config.stash[_KEY] = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    return config.stash[_KEY]


def _pack_for(config: pytest.Config, pack_dir: Path) -> tuple[LoadedPack | None, RuleSet | None, list[Problem]]:
    rs, problems = _ruleset(config)
    if rs is None:
        return None, None, problems
    for p in rs.all_packs():
        if p.dir.resolve() == pack_dir.resolve():
            return p, rs, []
    return None, rs, [p for p in problems if Path(p.file).resolve().is_relative_to(pack_dir.resolve())]


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix != ".yaml":
        return None
    if file_path.name == "pack.yaml":
        return PackFile.from_parent(parent, path=file_path)
    if (file_path.parent.parent / "pack.yaml").exists() and file_path.parent.name == "tests":
        return CaseFile.from_parent(parent, path=file_path)
    return None


class LoadFailure(Exception):
    pass


class _ProblemItem(pytest.Item):
    def __init__(self, *, problems: list[Problem], **kw: Any) -> None:
        super().__init__(**kw)
        self.problems = problems

    def runtest(self) -> None:
        raise LoadFailure("\n".join(str(p) for p in self.problems) or "the rule set did not load")

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, self.name


class CaseFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        pack, rs, problems = _pack_for(self.config, self.path.parent.parent)
        if pack is None or rs is None:
            yield _ProblemItem.from_parent(self, name="pack did not load", problems=problems)
            return
        cases, problems = load_cases(self.path)
        for p in problems:
            yield _ProblemItem.from_parent(self, name=f"line {p.line}", problems=[p])
        seen: dict[str, int] = {}
        for c in cases:
            name = c.name
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name} #{seen[name]}"
            yield CaseItem.from_parent(self, name=name, case=c, pack=pack, ruleset=rs)


class CaseFailure(Exception):
    pass


class CaseItem(pytest.Item):
    def __init__(self, *, case: Case, pack: LoadedPack, ruleset: RuleSet, **kw: Any) -> None:
        super().__init__(**kw)
        self.case = case
        self.pack = pack
        self.ruleset = ruleset

    def runtest(self) -> None:
        r = run_case(self.ruleset, self.pack, self.case)
        if not r.passed:
            raise CaseFailure("\n".join(f"  - {f}" for f in r.failures))

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, CaseFailure):
            return f"{self.pack.key} · {self.case.file.name}:{self.case.line} · {self.case.name}\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.case.line - 1, f"{self.pack.key}: {self.case.name}"


class PackFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        pack, rs, problems = _pack_for(self.config, self.path.parent)
        if pack is None or rs is None:
            yield _ProblemItem.from_parent(self, name="pack validates", problems=problems)
            return
        yield CoverageItem.from_parent(self, name="coverage", pack=pack, ruleset=rs)


class CoverageItem(pytest.Item):
    def __init__(self, *, pack: LoadedPack, ruleset: RuleSet, **kw: Any) -> None:
        super().__init__(**kw)
        self.pack = pack
        self.ruleset = ruleset

    def runtest(self) -> None:
        rep = run_pack(self.ruleset, self.pack)
        cov = rep.coverage
        assert cov is not None
        if not cov.ok:
            raise CaseFailure(coverage_text(cov))

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        return f"coverage below the pack's min_coverage:\n{excinfo.value}"

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.pack.key}: coverage"
