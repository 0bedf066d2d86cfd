"""The loaded rule set: services + every pack version + code maps, as one immutable snapshot.

A reload builds a whole new :class:`RuleSet` and validates everything first; only a set with
no errors replaces the running one (an atomic reference swap in the app state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from functools import lru_cache

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from cds.context.codes import CodeMaps
from cds.context.patient import ContextBuilder
from cds.engine.knowledge import KnowledgeCache
from cds.engine.loader import LoadedPack, load_pack
from cds.hooks.services import PackPin, ServiceCatalog, load_services
from cds.yamlio import Problem


@dataclass
class RuleSet:
    services: ServiceCatalog
    packs: dict[str, dict[str, LoadedPack]]
    code_maps: CodeMaps
    builder: ContextBuilder
    warnings: list[Problem] = field(default_factory=list)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def all_packs(self) -> list[LoadedPack]:
        return [p for versions in self.packs.values() for p in versions.values()]

    def __post_init__(self) -> None:
        # per pack id: (version, pack), newest first — parsed once per snapshot, not per request
        self._ordered: dict[str, list[tuple[Version, LoadedPack]]] = {
            pid: sorted(((Version(v), p) for v, p in versions.items()), key=lambda t: t[0], reverse=True)
            for pid, versions in self.packs.items()
        }

    def candidates(self, pin: PackPin) -> list[LoadedPack]:
        spec = _specifier(pin.version)
        return [p for v, p in self._ordered.get(pin.id, []) if v in spec]

    def resolve(self, pin: PackPin, now: datetime) -> LoadedPack | None:
        """Highest version matching the pin that is active (or draft, if allowed) at ``now``."""
        today = now.date()
        for p in self.candidates(pin):
            m = p.manifest
            if m.status == "retired" or (m.status == "draft" and not pin.allow_draft):
                continue
            if today < m.effective.start or (m.effective.end is not None and today >= m.effective.end):
                continue
            return p
        return None


@lru_cache(maxsize=1024)
def _specifier(version: str) -> SpecifierSet:
    return PackPin(id="_", version=version).specifier


def find_pack_dirs(rules_dir: Path) -> list[Path]:
    return sorted(p.parent for p in rules_dir.rglob("pack.yaml"))


def load_ruleset(hooks_dir: Path, rules_dir: Path, knowledge_dir: Path) -> tuple[RuleSet | None, list[Problem]]:
    """Load and validate everything; returns (None, problems) if anything is an error."""
    problems: list[Problem] = []
    cache = KnowledgeCache(knowledge_dir)
    code_maps, errs = CodeMaps.load(cache)
    problems.extend(errs)
    packs: dict[str, dict[str, LoadedPack]] = {}
    if not rules_dir.is_dir():
        problems.append(Problem(str(rules_dir), 1, 1, "rules directory not found"))
    for d in find_pack_dirs(rules_dir) if rules_dir.is_dir() else []:
        pack, errs = load_pack(d, cache)
        problems.extend(errs)
        if pack is None:
            continue
        if pack.version in packs.get(pack.id, {}):
            problems.append(Problem(str(d / "pack.yaml"), 1, 1, f"{pack.key} is also defined in {packs[pack.id][pack.version].dir}"))
            continue
        packs.setdefault(pack.id, {})[pack.version] = pack
    services, errs = load_services(hooks_dir)
    problems.extend(errs)
    for sid, svc in services.services.items():
        for i, pin in enumerate(svc.packs):
            versions = packs.get(pin.id, {})
            if not any(Version(v) in pin.specifier for v in versions):
                problems.append(
                    services.docs[sid].problem(
                        ["packs", i, "version" if pin.id in packs else "id"],
                        f"service {sid!r}: no loaded version of pack {pin.id!r} matches {pin.version!r}",
                    )
                )
    if any(p.severity == "error" for p in problems):
        return None, problems
    rs = RuleSet(services, packs, code_maps, ContextBuilder(code_maps), warnings=problems)
    return rs, problems
